"""A real server process (uvicorn, as users run it) on the test's database."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# A test drives its server from one address far faster than any client would (the
# fuzzers send about a hundred requests a second with one key, valid and invalid): the
# servers keep rate limiting on with budgets no test spends. Budgets are tested in
# tests/http/test_ratelimit.py.
UNSPENT_BUDGETS = {
    f"PLEDGEWATCH_RATE_LIMIT_{budget}": "1000000/second"
    for budget in ("ANONYMOUS_READS", "KEY_READS", "WRITES", "EXPENSIVE_READS", "BAD_KEYS")
}


@contextmanager
def running_server(
    database_url: str,
    log_path: Path,
    settings: dict[str, str] | None = None,
    options: Sequence[str] = (),
) -> Iterator[str]:
    """``pledgewatch serve`` in its own process on ``database_url``; yields its base URL.

    ``settings`` are extra environment variables (the scheduler is off unless they turn it on,
    rate-limit budgets are unspent unless they set them); ``options`` are more options of
    ``serve``.
    """
    port = free_port()
    env = {
        **os.environ,
        "PLEDGEWATCH_DATABASE_URL": database_url,
        "PLEDGEWATCH_SCHEDULER_ENABLED": "false",
        "PLEDGEWATCH_LOG_LEVEL": "WARNING",
        **UNSPENT_BUDGETS,
        **(settings or {}),
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port), *options],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    raise RuntimeError("server did not start: " + log_path.read_text()[-2000:])
                time.sleep(0.1)
            yield base
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture
def live_server(db_url: str, tmp_path: Path) -> Iterator[str]:
    with running_server(db_url, tmp_path / "server.log") as base:
        yield base
