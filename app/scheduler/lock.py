"""The leader lock: only the process that holds it runs scheduled jobs.

APScheduler 3 cannot share a job store between processes, so a second scheduler
started by mistake (or an API replica left with the scheduler on) must wait, and
take over when the first dies. PostgreSQL gives that for free with a session
advisory lock: the server drops it the moment the holder's connection goes away,
SIGKILL included. SQLite has no sessions to outlive, so there the lock is a lease
row that its holder renews and anyone may take once it has expired.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import socket
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Connection, create_engine, delete, event, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from app.clock import Clock, SystemClock
from app.collectors.admission import Admission, no_admission
from app.db import Database
from app.logs import LogThrottle
from app.scheduler.models import SchedulerLease
from app.sql import insert_or_ignore

log = logging.getLogger("pledgewatch.scheduler")

LOCK_NAME = "scheduler"
# pg_try_advisory_lock takes one bigint; derive it from the name so that it is
# stable across releases and unlikely to collide with anyone else's key.
ADVISORY_KEY = int.from_bytes(
    hashlib.sha256(b"pledgewatch:" + LOCK_NAME.encode()).digest()[:8], "big", signed=True
)


class LeaderLock(Protocol):
    """What the scheduler service needs from a lock, whatever the database."""

    holder: str

    def try_acquire(self) -> bool:
        """Take the lock if it is free (or already ours); never waits."""
        ...

    def renew(self) -> bool:
        """Confirm (and for a lease, extend) the lock; False when it has been lost."""
        ...

    def release(self) -> None:
        """Give the lock up so that a waiting process takes over at once."""
        ...


def make_holder() -> str:
    """A name for this process that is unique and says where it runs (host:pid:random)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def holder_pid(holder: str) -> int:
    """The process id in a name made by ``make_holder``."""
    return int(holder.rsplit(":", 2)[1])


class AdvisoryLock:
    """A PostgreSQL session advisory lock held on a connection of its own.

    The connection is outside every pool, so that nothing else ever uses it (or
    returns it to a pool with the lock still held), and it runs in autocommit so
    that holding the lock never means holding a transaction open.
    """

    def __init__(self, url: str, *, holder: str, key: int = ADVISORY_KEY) -> None:
        self.holder = holder
        self._key = key
        # TCP keepalives: a server that vanished without closing the socket is
        # noticed within seconds, not after the kernel's two-hour default.
        self._engine = create_engine(
            url,
            poolclass=NullPool,
            isolation_level="AUTOCOMMIT",
            connect_args={
                "connect_timeout": 5,
                "keepalives": 1,
                "keepalives_idle": 5,
                "keepalives_interval": 2,
                "keepalives_count": 3,
                "application_name": f"pledgewatch-scheduler {holder}"[:63],
            },
        )
        self._conn: Connection | None = None
        self._held = False
        # Followers try every few seconds: a database that is down is reported once a minute.
        self._throttle = LogThrottle()

    def try_acquire(self) -> bool:
        if self._held:
            return self.renew()
        try:
            if self._conn is None:
                self._conn = self._engine.connect()
            got = bool(
                self._conn.execute(
                    text("SELECT pg_try_advisory_lock(:key)"), {"key": self._key}
                ).scalar_one()
            )
        except SQLAlchemyError as error:
            self._throttle.failed(log, "reach", "leader lock: cannot reach the database: %s", error)
            self._drop_connection()
            return False
        self._throttle.recovered(log, "reach", "leader lock: the database answers again")
        self._held = got
        return got

    def renew(self) -> bool:
        if not self._held or self._conn is None:
            return False
        # A session lock lives exactly as long as its connection, so a connection
        # that still answers means the lock is still ours.
        try:
            self._conn.execute(text("SELECT 1"))
        except SQLAlchemyError as error:
            log.warning("leader lock lost with its connection: %s", error)
            self._drop_connection()
            return False
        return True

    def release(self) -> None:
        if self._conn is not None and self._held:
            # If the connection is gone, so is the lock.
            with contextlib.suppress(SQLAlchemyError):
                self._conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
        self._drop_connection()
        self._engine.dispose()

    def backend_pid(self) -> int | None:
        """The server process of the lock's connection (tests end it to show what follows)."""
        if self._conn is None:
            return None
        return int(self._conn.execute(text("SELECT pg_backend_pid()")).scalar_one())

    def _drop_connection(self) -> None:
        self._held = False
        if self._conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._conn.invalidate()
                self._conn.close()
            self._conn = None


class LeaseLock:
    """A lease row in ``scheduler_lease``: renewed by its holder, taken once expired.

    Each step is one conditional statement, so two processes racing for an
    expired lease cannot both win, on SQLite or PostgreSQL.
    """

    def __init__(
        self,
        database: Database,
        *,
        holder: str,
        lease_seconds: float,
        clock: Clock | None = None,
        name: str = LOCK_NAME,
        owns_database: bool = False,
        admission: Admission = no_admission,
    ) -> None:
        self.holder = holder
        self.name = name
        self._database = database
        self._owns_database = owns_database
        # In `serve`, the lease's writes queue at the API's gates with every other writer:
        # SQLite's own waiting is not first come, first served, and writers that hand the
        # lock on back to back (a poll's chunks, API writes) could starve a renewal.
        self._admission = admission
        self._ttl = timedelta(seconds=lease_seconds)
        self._clock = clock or SystemClock()
        self._throttle = LogThrottle()
        self.held_until: datetime | None = None

    def try_acquire(self) -> bool:
        now = self._clock.now()
        expires = now + self._ttl
        try:
            with self._admission(write=True), self._database.transaction() as session:
                inserted = session.execute(
                    insert_or_ignore(session, SchedulerLease).values(
                        name=self.name, holder=self.holder, expires_at=expires
                    )
                ).rowcount  # type: ignore[attr-defined]
                taken = inserted
                if not taken:
                    # Ours already (renewing), or expired: take it over.
                    claim = (
                        update(SchedulerLease)
                        .where(
                            SchedulerLease.name == self.name,
                            (SchedulerLease.holder == self.holder)
                            | (SchedulerLease.expires_at <= now),
                        )
                        .values(holder=self.holder, expires_at=expires)
                        .execution_options(preserve_rowcount=True)
                    )
                    taken = session.execute(claim).rowcount  # type: ignore[attr-defined]
        except SQLAlchemyError as error:
            self._throttle.failed(
                log, "reach", "leader lease: cannot reach the database: %s", error
            )
            return False
        self._throttle.recovered(log, "reach", "leader lease: the database answers again")
        self.held_until = expires if taken else None
        return bool(taken)

    def renew(self) -> bool:
        if self.held_until is None:
            return False
        now = self._clock.now()
        expires = now + self._ttl
        try:
            with self._admission(write=True), self._database.transaction() as session:
                renewed = session.execute(
                    update(SchedulerLease)
                    .where(SchedulerLease.name == self.name, SchedulerLease.holder == self.holder)
                    .values(expires_at=expires)
                    .execution_options(preserve_rowcount=True)
                ).rowcount  # type: ignore[attr-defined]
        except SQLAlchemyError as error:
            # Nobody may take the lease before it expires, so it stays ours until
            # then even if this renewal could not be written.
            self._throttle.failed(log, "renew", "leader lease: renewal failed: %s", error)
            if self.held_until is not None and self._clock.now() < self.held_until:
                return True
            self.held_until = None
            return False
        self._throttle.recovered(log, "renew", "leader lease: renewed again")
        self.held_until = expires if renewed else None
        return bool(renewed)

    def release(self) -> None:
        self.held_until = None
        try:
            with self._admission(write=True), self._database.transaction() as session:
                session.execute(
                    delete(SchedulerLease).where(
                        SchedulerLease.name == self.name, SchedulerLease.holder == self.holder
                    )
                )
        except SQLAlchemyError as error:
            log.warning("leader lease: release failed (it will expire): %s", error)
        if self._owns_database:
            self._database.dispose()


def leader_lock(
    database: Database,
    *,
    holder: str,
    lease_seconds: float,
    clock: Clock | None = None,
    admission: Admission = no_admission,
) -> LeaderLock:
    """The right lock for ``database``: an advisory lock on PostgreSQL, a lease on SQLite.

    Either holds a connection of its own: renewing the lock must never wait for a pool
    connection that twenty job threads (or the API) hold. A lease's writes take their turn
    through ``admission`` (the app's gates in ``serve``).
    """
    if database.dialect == "postgresql":
        return AdvisoryLock(database.url, holder=holder)
    return LeaseLock(
        lease_database(database.url, lease_seconds),
        holder=holder,
        lease_seconds=lease_seconds,
        clock=clock,
        owns_database=True,
        admission=admission,
    )


def lease_database(url: str, lease_seconds: float) -> Database:
    """An SQLite database handle for the lease alone, whose writes give up waiting for the
    write lock after a third of a lease (the renewal interval).

    The default 30 s wait would outlast the lease: a renewal stuck behind other writers
    must fail, and be tried again at the next interval while the lease still runs, rather
    than hang past its expiry.
    """
    lease_db = Database(url, pool_size=1)
    busy_ms = max(1, int(lease_seconds * 1000 / 3))

    @event.listens_for(lease_db.engine, "connect")
    def _short_wait(dbapi_connection: Any, _record: Any) -> None:
        # Runs after the engine's own set-up, so this busy_timeout is the one in force.
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.close()

    return lease_db
