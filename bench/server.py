"""Start ``pledgewatch serve`` (or any server) in its own process, as users run it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pledgewatch_command() -> str:
    """The ``pledgewatch`` script installed next to this interpreter."""
    script = Path(sys.executable).parent / "pledgewatch"
    if not script.exists():
        raise FileNotFoundError(f"{script} is missing: install the project (make install)")
    return str(script)


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident set (VmHWM) so far, in KiB; 0 once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


@dataclass
class Server:
    """A running server process."""

    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _peak_kib: int = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    def peak_rss_mib(self) -> float:
        """The highest resident memory the process has had since it started."""
        self._peak_kib = max(self._peak_kib, peak_rss_kib(self.pid))
        return self._peak_kib / 1024

    def kill(self) -> None:
        """Stop it at once (it may be busy with a request it would otherwise finish first)."""
        self.peak_rss_mib()
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def log_tail(self, characters: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-characters:]
        except OSError:
            return ""


# wrk drives each server from one address at thousands of requests a second, far past any
# budget a deployment gives one client. The servers keep rate limiting on (each request
# spends a window, as in production) with budgets counted per second that the load never
# spends: a window then holds at most a second of one address's requests. Target 9 runs
# servers with the default budgets and with rate limits off.
UNSPENT_BUDGETS = {
    f"PLEDGEWATCH_RATE_LIMIT_{budget}": "1000000/second"
    for budget in ("ANONYMOUS_READS", "KEY_READS", "WRITES", "EXPENSIVE_READS")
}
RATE_LIMITS = {
    "unspent": {"PLEDGEWATCH_RATE_LIMITS_ENABLED": "true", **UNSPENT_BUDGETS},
    "default": {"PLEDGEWATCH_RATE_LIMITS_ENABLED": "true"},
    "off": {"PLEDGEWATCH_RATE_LIMITS_ENABLED": "false"},
}


@contextmanager
def pledgewatch_server(
    database_url: str,
    log_path: Path,
    *,
    workers: int = 1,
    rate_limits: str = "unspent",
    extra_env: Mapping[str, str] = {},
) -> Iterator[Server]:
    """``pledgewatch serve`` on ``database_url`` in bench mode, with the scheduler off, and
    rate limits as ``rate_limits`` says (a key of :data:`RATE_LIMITS`)."""
    port = free_port()
    env = {
        "PLEDGEWATCH_DATABASE_URL": database_url,
        "PLEDGEWATCH_SCHEDULER_ENABLED": "false",
        "PLEDGEWATCH_BENCH_MODE": "true",
        **RATE_LIMITS[rate_limits],
        **extra_env,
    }
    command = [
        pledgewatch_command(),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    with running(command, f"http://127.0.0.1:{port}", "/healthz", log_path, env) as server:
        yield server


@contextmanager
def running(
    command: Sequence[str],
    base_url: str,
    ready_path: str,
    log_path: Path,
    env: Mapping[str, str],
    *,
    timeout: float = 60,
) -> Iterator[Server]:
    """Start ``command``, wait until ``ready_path`` answers 200, stop it afterwards."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own commands
            list(command),
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        server = Server(base_url=base_url, process=process, log_path=log_path)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    if httpx.get(base_url + ready_path, timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{command[0]} did not start:\n{server.log_tail()}")
                time.sleep(0.1)
            yield server
        finally:
            server.peak_rss_mib()
            _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)
