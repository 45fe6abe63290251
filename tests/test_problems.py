"""app.problems: a database that cannot answer now is a 503 with Retry-After, never a 500.

Down, restarting, unreachable, out of connections, or (SQLite) locked past the busy
timeout: the client is told to retry. Any other database error stays a 500 (a defect).
A real PostgreSQL cut under a running server is tests/e2e/test_faults.py's.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from psycopg import errors as pg
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.types import ASGIApp, Receive, Scope, Send

from app.clock import FrozenClock
from app.config import Settings
from app.db import Database
from app.domain.keys.service import create_key
from app.errors import DatabaseBusy
from app.main import create_app
from app.middleware import RequestContextMiddleware
from app.problems import (
    RETRY_AFTER_SECONDS,
    DatabaseUnavailableMiddleware,
    _QuietLog,
    install,
)
from tests.conftest import NOW
from tests.factories import PROBLEM, pledge_body, problem


def _sqlite_error(message: str, code: int) -> sqlite3.OperationalError:
    error = sqlite3.OperationalError(message)
    error.sqlite_errorcode = code
    return error


def _wrapped(orig: Exception, *, invalidated: bool = False) -> DBAPIError:
    """What SQLAlchemy raises for a driver error: its class of the same name, ``orig`` inside."""
    wrapper = DBAPIError.instance(
        "SELECT 1", {}, orig, type(orig), connection_invalidated=invalidated
    )
    assert isinstance(wrapper, DBAPIError)
    return wrapper


UNAVAILABLE: dict[str, Callable[[], Exception]] = {
    "postgresql refuses connections": lambda: _wrapped(
        psycopg.OperationalError("connection failed: Connection refused")
    ),
    "postgresql shuts down": lambda: _wrapped(
        pg.AdminShutdown("terminating connection due to administrator command")
    ),
    "postgresql is starting up": lambda: _wrapped(
        pg.CannotConnectNow("the database system is starting up")
    ),
    "postgresql has too many clients": lambda: _wrapped(
        pg.TooManyConnections("sorry, too many clients already")
    ),
    "a connection broken mid-request": lambda: _wrapped(
        psycopg.InterfaceError("the connection is closed"), invalidated=True
    ),
    "the pool has no connection to give": lambda: PoolTimeout(
        "QueuePool limit of size 10 overflow 10 reached, connection timed out, timeout 30.00"
    ),
    "sqlite is locked past its busy timeout": lambda: _wrapped(
        _sqlite_error("database is locked", sqlite3.SQLITE_BUSY)
    ),
    "sqlite cannot open its file": lambda: _wrapped(
        _sqlite_error("unable to open database file", sqlite3.SQLITE_CANTOPEN)
    ),
    "a driver error that escaped SQLAlchemy": lambda: psycopg.OperationalError(
        "server closed the connection unexpectedly"
    ),
}

DEFECTS: dict[str, Callable[[], Exception]] = {
    "a constraint violation": lambda: IntegrityError(
        "INSERT", {}, sqlite3.IntegrityError("UNIQUE constraint failed: pledge.id")
    ),
    "sqlite: a missing table": lambda: _wrapped(
        _sqlite_error("no such table: pledge", sqlite3.SQLITE_ERROR)
    ),
    "postgresql: a statement over a program limit": lambda: _wrapped(
        pg.ProgramLimitExceeded("index row size exceeds btree maximum")
    ),
    "postgresql: a deadlock": lambda: _wrapped(pg.DeadlockDetected("deadlock detected")),
}


def _app_raising(
    make_error: Callable[[], Exception], *, in_middleware: bool = False, guarded: bool = True
) -> FastAPI:
    app = FastAPI()
    install(app)

    @app.get("/boom")
    def boom() -> None:
        raise make_error()

    if in_middleware:

        class Raising:
            """A middleware's own transaction failing (as the idempotency claim's would)."""

            def __init__(self, inner: ASGIApp) -> None:
                self.inner = inner

            async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
                if scope["type"] == "http":
                    raise make_error()
                await self.inner(scope, receive, send)

        app.add_middleware(Raising)
        if guarded:
            app.add_middleware(DatabaseUnavailableMiddleware)
    app.add_middleware(RequestContextMiddleware)
    return app


def _assert_unavailable(response: object) -> None:
    body = problem(response, 503)  # type: ignore[arg-type]
    assert body["type"].endswith("/database-unavailable")
    assert response.headers["retry-after"] == str(RETRY_AFTER_SECONDS)  # type: ignore[attr-defined]
    assert response.headers["x-request-id"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("make_error", UNAVAILABLE.values(), ids=UNAVAILABLE.keys())
def test_a_database_that_cannot_answer_is_503_with_retry_after(
    make_error: Callable[[], Exception],
) -> None:
    error = make_error()
    assert isinstance(error, (OperationalError, PoolTimeout, DBAPIError, psycopg.Error))
    with TestClient(_app_raising(make_error), raise_server_exceptions=False) as client:
        _assert_unavailable(client.get("/boom"))


@pytest.mark.parametrize("guarded", [True, False], ids=["guarded", "last resort"])
@pytest.mark.parametrize("make_error", UNAVAILABLE.values(), ids=UNAVAILABLE.keys())
def test_it_is_503_when_a_middleware_meets_it_too(
    make_error: Callable[[], Exception], guarded: bool
) -> None:
    """Mounted outside such a middleware, the guard answers; without it, the 500 handler."""
    app = _app_raising(make_error, in_middleware=True, guarded=guarded)
    with TestClient(app, raise_server_exceptions=guarded) as client:
        _assert_unavailable(client.get("/boom"))


def test_a_middleware_shed_by_the_gates_answers_their_503_problem() -> None:
    """The gates refuse a middleware's own admission (the idempotency middleware keeping a
    4xx answer) as they refuse a request's: 503 with Retry-After, never a 500."""
    app = _app_raising(
        lambda: DatabaseBusy("too many requests wait for the database", retry_after_seconds=2),
        in_middleware=True,
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom")
    assert problem(response, 503)["type"].endswith("/database-busy")
    assert response.headers["retry-after"] == "2"


@pytest.mark.parametrize("make_error", DEFECTS.values(), ids=DEFECTS.keys())
def test_the_guard_lets_other_errors_through(make_error: Callable[[], Exception]) -> None:
    app = _app_raising(make_error, in_middleware=True)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/boom").status_code == 500


@pytest.mark.parametrize("make_error", DEFECTS.values(), ids=DEFECTS.keys())
def test_other_database_errors_stay_500(make_error: Callable[[], Exception]) -> None:
    with TestClient(_app_raising(make_error), raise_server_exceptions=False) as client:
        response = client.get("/boom")
    assert response.status_code == 500
    assert response.headers["content-type"] == PROBLEM
    assert "retry-after" not in response.headers


def test_an_outage_is_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    quiet = _QuietLog(interval=10.0, clock=lambda: now[0])
    error = _wrapped(psycopg.OperationalError("connection refused"))
    with caplog.at_level("WARNING", logger="pledgewatch.errors"):
        for _ in range(50):
            quiet.warning("database unavailable", error=error)
        now[0] += 10.0
        quiet.warning("database unavailable", error=error)
    records = [r for r in caplog.records if r.name == "pledgewatch.errors"]
    assert len(records) == 2
    assert records[1].held_back == 49  # type: ignore[attr-defined]
    # The driver's message only: SQLAlchemy's would carry the statement and its parameters.
    assert "SELECT 1" not in records[0].error  # type: ignore[attr-defined]


# --- the real thing on SQLite: another process holds the write lock ---------------------------


@pytest.fixture
def locked_sqlite(sqlite_template: Path, tmp_path: Path) -> Iterator[tuple[TestClient, str, str]]:
    """The app on a SQLite file whose writers give up after 50 ms; (client, key, file)."""
    target = tmp_path / "locked.db"
    shutil.copyfile(sqlite_template, target)
    url = f"sqlite:///{target}"
    database = Database(url, pool_size=2, sqlite_busy_seconds=0.05)
    with database.transaction() as session:
        secret = create_key(session, name="analyst", role="analyst", now=NOW)
    settings = Settings(
        database_url=url, log_json=False, log_level="WARNING", scheduler_enabled=False
    )
    app = create_app(settings, clock=FrozenClock(NOW), database=database)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, secret, str(target)
    database.dispose()


def test_sqlite_locked_past_its_busy_timeout_is_503_and_clears(
    locked_sqlite: tuple[TestClient, str, str],
) -> None:
    client, secret, path = locked_sqlite
    auth = {"Authorization": f"Bearer {secret}"}
    client.get("/api/v1/pledges", headers=auth)  # the key is known before the lock is taken
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's long write transaction
    try:
        plain = client.post("/api/v1/pledges", json=pledge_body(), headers=auth)
        keyed = client.post(
            "/api/v1/pledges",
            json=pledge_body(),
            headers={**auth, "Idempotency-Key": "while-locked"},
        )
        read = client.get("/api/v1/pledges")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    _assert_unavailable(plain)
    _assert_unavailable(keyed)
    assert read.status_code == 200  # readers are not blocked by a writer (WAL)
    retried = client.post(
        "/api/v1/pledges", json=pledge_body(), headers={**auth, "Idempotency-Key": "while-locked"}
    )
    assert retried.status_code == 201, retried.text
