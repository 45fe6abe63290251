"""A private PostgreSQL server (initdb in a temporary directory, its own port) that the
outage scenario may stop and start: the machine's shared server is never touched.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from bench.faults_common import ScenarioSkipped
from bench.server import free_port


def postgres_bindir() -> Path | None:
    """Where initdb and pg_ctl are: ``PLEDGEWATCH_PG_BIN``, else the newest Debian install."""
    configured = os.environ.get("PLEDGEWATCH_PG_BIN")
    if configured:
        return Path(configured)
    installs = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    found = [path for path in installs if (path / "initdb").exists()]
    return found[-1] if found else None


class PrivatePostgres:
    """One PostgreSQL server of our own; ``stop`` and ``start`` are a real restart."""

    def __init__(self, bindir: Path, base: Path) -> None:
        self.bindir = bindir
        self.base = base
        self.data = base / "data"
        self.log = base / "postgres.log"
        self.port = free_port()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *command: str) -> None:
        prefix: list[str] = []
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root: as the postgres user, as Debian installs it.
            prefix = ["runuser", "-u", "postgres", "--"]
        subprocess.run(  # noqa: S603 - PostgreSQL's own tools, our arguments
            [*prefix, *command], check=True, capture_output=True, timeout=120
        )

    def init(self) -> None:
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
            "--no-instructions",
        )

    def start(self) -> None:
        """Start and wait until it accepts connections."""
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c shared_buffers=32MB -c max_connections=60"
        )
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            "60",
            "-o",
            options,
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop it (``fast``: open sessions are terminated, as a restart does)."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started private server, stopped and removed afterwards."""
    bindir = postgres_bindir()
    if bindir is None:
        raise ScenarioSkipped("no PostgreSQL server binaries (initdb) on this machine")
    base = Path(tempfile.mkdtemp(prefix="pledgewatch-pg-"))
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(base)
            raise ScenarioSkipped("running as root and there is no postgres user") from None
        os.chown(base, owner.pw_uid, owner.pw_gid)
    server = PrivatePostgres(bindir, base)
    try:
        server.init()
        server.start()
        yield server
    finally:
        with suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            server.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)
