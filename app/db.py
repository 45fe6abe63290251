"""Engine, sessions and the declarative base shared by every domain package."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, DateTime, Engine, MetaData, create_engine, event
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeDecorator

# Constraint names are part of the schema Alembic compares and migrates; a fixed
# convention keeps them identical on SQLite and PostgreSQL and across revisions.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    SQLite has no zone-aware type, so values are stored as naive UTC there and
    given their zone back on the way out; comparisons stay correct because every
    value is in the same zone and format.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; give a zone")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)
        general = super().result_processor(dialect, coltype)

        def from_sqlite(value: Any) -> datetime | None:
            if isinstance(value, str):
                parsed = utc_from_sqlite_text(value)
                if parsed is not None:
                    return parsed
            return general(value) if general is not None else value

        return from_sqlite


def utc_from_sqlite_text(value: str) -> datetime | None:
    """A datetime as SQLite stores it ("2024-04-02 18:00:00.000000", naive UTC), zoned.

    One C call: several times cheaper than parsing and then replacing the zone, and a
    ``/status?as_of=`` or a batch of evidence reads thousands of these. None when
    ``value`` is not in that form.
    """
    if len(value) < 19 or value[10] not in " T":
        return None
    try:
        parsed = datetime.fromisoformat(value + "+00:00")
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


# A PostgreSQL server that does not answer a connection attempt within this long is
# unavailable (the request answers 503) rather than a reason to hang a request.
PG_CONNECT_TIMEOUT_SECONDS = 5
# How long an SQLite writer waits for the write lock before "database is locked" (a 503).
SQLITE_BUSY_SECONDS = 30.0


def build_engine(
    url: str, *, pool_size: int = 10, sqlite_busy_seconds: float = SQLITE_BUSY_SECONDS
) -> Engine:
    """Make the engine for ``url``, with the SQLite settings a concurrent server needs."""
    if not is_sqlite(url):
        # pool_pre_ping: a pooled connection that a database restart broke is found on
        # checkout and replaced (with every older one), so the service recovers on its own.
        return create_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=True,
            connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_SECONDS},
        )

    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": sqlite_busy_seconds},
        pool_size=pool_size,
        max_overflow=pool_size,
    )
    busy_ms = int(sqlite_busy_seconds * 1000)

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module so that BEGIN is ours.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        # A writer must take the write lock up front: a deferred transaction that
        # read first and then writes can fail with SQLITE_BUSY without waiting.
        if conn.get_execution_options().get("sqlite_immediate"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")

    return engine


class Database:
    """The engine and the two session factories: one for reads, one for writes."""

    def __init__(
        self, url: str, *, pool_size: int = 10, sqlite_busy_seconds: float = SQLITE_BUSY_SECONDS
    ) -> None:
        self.url = url
        self.engine = build_engine(
            url, pool_size=pool_size, sqlite_busy_seconds=sqlite_busy_seconds
        )
        self.dialect = self.engine.dialect.name
        # Health checks connect on their own: under load every pooled connection may be
        # busy, and "does the database answer" must not wait for one of them.
        self._probe_engine = create_engine(
            url,
            poolclass=NullPool,
            connect_args={"timeout": 5}
            if is_sqlite(url)
            else {"connect_timeout": PG_CONNECT_TIMEOUT_SECONDS},
        )
        write_bind = self.engine.execution_options(sqlite_immediate=True)
        self._readers = sessionmaker(bind=self.engine, expire_on_commit=False)
        self._writers = sessionmaker(bind=write_bind, expire_on_commit=False)

    def session(self, *, write: bool) -> Session:
        return (self._writers if write else self._readers)()

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Session]:
        """One unit of work: commit when the block ends, roll back on error."""
        session = self.session(write=write)
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def probe(self) -> Connection:
        """A new connection of its own, for a health check (close it, or use ``with``)."""
        return self._probe_engine.connect()

    def dispose(self) -> None:
        self.engine.dispose()
        self._probe_engine.dispose()
