"""What the fault scenarios share: a prepared database, a server that can be killed and
restarted on its port, memory samples, and the table each scenario prints.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from bench.server import free_port, pledgewatch_command

API = "/api/v1"


def say(message: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the database ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """A migrated, seeded database, the key the scenario writes with, the seed's pledges."""

    database_url: str
    backend: str
    api_key: str
    pledge_ids: tuple[str, ...]


def prepare(database_url: str, *, role: str = "collector") -> Target:
    """Migrate ``database_url``, load the seed article's pledges, make a key of ``role``."""
    from app.clock import SystemClock
    from app.db import Database
    from app.domain.keys.service import create_key
    from app.domain.pledges.models import Pledge
    from app.migrate import upgrade
    from app.seed.loader import seed

    upgrade(database_url)
    database = Database(database_url, pool_size=1)
    try:
        with database.transaction() as session:
            seed(session, SystemClock())
            secret = create_key(
                session, name=f"faults-{time.time_ns()}", role=role, now=SystemClock().now()
            )
            pledges = tuple(session.scalars(select(Pledge.id).order_by(Pledge.id)))
    finally:
        database.dispose()
    return Target(
        database_url=database_url,
        backend=database.dialect,
        api_key=secret,
        pledge_ids=pledges,
    )


@contextmanager
def scratch_database(
    backend: str, work_dir: Path, name: str, postgres_url: str | None
) -> Iterator[str]:
    """An empty database of ``backend`` for one scenario, removed afterwards."""
    if backend == "sqlite":
        path = work_dir / f"{name}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        yield f"sqlite:///{path}"
        return
    from bench.run import scratch_postgres

    if not postgres_url:
        raise ScenarioSkipped("no PostgreSQL URL given")
    with scratch_postgres(postgres_url, f"pledgewatch_{name}_{os.getpid()}") as url:
        yield url


class ScenarioSkipped(RuntimeError):
    """The scenario cannot run here (no PostgreSQL, no initdb): reported, not failed."""


def ledger_verified(database_url: str) -> tuple[bool, str]:
    """``pledgewatch ledger verify`` on ``database_url``, as an operator runs it."""
    result = subprocess.run(  # noqa: S603 - our own command
        [pledgewatch_command(), "ledger", "verify"],
        env={**os.environ, "PLEDGEWATCH_DATABASE_URL": database_url, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    message = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
    return result.returncode == 0, message


# --- the server -----------------------------------------------------------------------------


class RestartableServer:
    """``pledgewatch serve`` on a fixed port: started, SIGKILLed and started again there."""

    def __init__(self, database_url: str, log_path: Path, env: Mapping[str, str] = {}) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = {
            **os.environ,
            "PLEDGEWATCH_DATABASE_URL": database_url,
            "PLEDGEWATCH_SCHEDULER_ENABLED": "false",
            "PLEDGEWATCH_LOG_LEVEL": "WARNING",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        log_path.unlink(missing_ok=True)  # this run's log only (restarts append to it)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 60) -> float:
        """Start it and wait until /healthz answers; returns the seconds that took."""
        started = time.monotonic()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our own command
                [pledgewatch_command(), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.base_url}/healthz", timeout=2).status_code == 200:
                    return time.monotonic() - started
            if self.process.poll() is not None or time.monotonic() - started > timeout:
                raise RuntimeError(f"the server did not start:\n{self.log_tail()}")
            time.sleep(0.05)

    def sigkill(self) -> None:
        """SIGKILL: no shutdown, no cleanup, whatever it was doing."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.sigkill()

    def error_lines(self) -> list[str]:
        """Log lines at level error (tracebacks of unhandled exceptions among them)."""
        return [line for line in self.log_tail(None).splitlines() if '"level": "error"' in line]

    def log_tail(self, characters: int | None = 3000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text if characters is None else text[-characters:]


@contextmanager
def serving(
    database_url: str, log_path: Path, env: Mapping[str, str] = {}
) -> Iterator[RestartableServer]:
    server = RestartableServer(database_url, log_path, env)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def rss_mib(pid: int) -> float:
    """The process's resident memory now (VmRSS), in MiB; 0 once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# --- items ----------------------------------------------------------------------------------


def evidence_item(run: str, number: int, pledge_ids: tuple[str, ...]) -> dict[str, Any]:
    """A new evidence item, unique to ``run`` and ``number``, linked to one seed pledge."""
    published = datetime(2024, 1, 1, tzinfo=UTC).timestamp() + number * 60
    return {
        "title": f"Fault-harness item {run}-{number}",
        "url": f"https://faults.example.org/{run}/{number}",
        "summary": f"Item {number} of fault run {run}.",
        "published_at": datetime.fromtimestamp(published, UTC).isoformat().replace("+00:00", "Z"),
        "source_name": "Fault Wire",
        "source_type": "independent",
        "reliability": "medium",
        "links": [{"pledge_id": pledge_ids[number % len(pledge_ids)], "stance": "supports"}],
    }


# --- the report -----------------------------------------------------------------------------


@dataclass
class Report:
    """One scenario's figures (in order) and the invariants it checked."""

    title: str
    figures: dict[str, Any] = field(default_factory=dict)
    broken: list[str] = field(default_factory=list)
    skipped: str | None = None

    def check(self, holds: bool, invariant: str) -> None:
        if not holds:
            self.broken.append(invariant)

    @property
    def ok(self) -> bool:
        return not self.broken

    def render(self) -> str:
        lines = [self.title, "-" * len(self.title)]
        if self.skipped is not None:
            lines.append(f"  not run: {self.skipped}")
            return "\n".join(lines)
        width = max((len(name) for name in self.figures), default=10)
        for name, value in self.figures.items():
            lines.append(f"  {name:<{width}}  {_shown(value)}")
        verdict = "ok" if self.ok else "BROKEN: " + "; ".join(self.broken)
        lines.append(f"  {'invariants':<{width}}  {verdict}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "figures": self.figures,
            "broken": self.broken,
            "skipped": self.skipped,
        }


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict):
        return ", ".join(f"{key}: {_shown(count)}" for key, count in value.items()) or "none"
    return str(value)
