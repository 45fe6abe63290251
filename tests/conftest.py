"""Fixtures: every database test runs on SQLite and on PostgreSQL, each on a migrated schema.

Isolation: SQLite tests get a fresh copy of a migrated file; PostgreSQL tests get
their worker's own database, emptied before each test.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app.clock import FrozenClock
from app.config import Settings
from app.db import Database
from app.domain.keys.service import create_key
from app.main import create_app
from app.migrate import upgrade
from bench.run import scratch_postgres as bench_scratch_postgres

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/pledgewatch_test"
NOW = datetime(2025, 1, 15, 12, 0, tzinfo=UTC)
ROLES = ("viewer", "collector", "analyst", "admin")


def _postgres_admin_url() -> str:
    return os.environ.get("PLEDGEWATCH_TEST_POSTGRES_URL", DEFAULT_PG)


def _postgres_problem() -> str | None:
    url = make_url(_postgres_admin_url()).set(database="postgres")
    engine = create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as error:
        return f"PostgreSQL at {url.render_as_string(hide_password=True)} is unreachable: {error}"
    finally:
        engine.dispose()
    return None


@contextmanager
def scratch_postgres(name: str) -> Iterator[str]:
    """A new, empty PostgreSQL database ``name`` (dropped first if left over), dropped after."""
    with bench_scratch_postgres(_postgres_admin_url(), name) as url:
        yield url


def postgres_database_name(purpose: str) -> str:
    # One database per test process: parallel workers (and parallel runs) never share one.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return f"{make_url(_postgres_admin_url()).database}_{purpose}{worker}_{os.getpid()}"


@pytest.fixture(scope="session")
def postgres_template_url() -> Iterator[str]:
    """This worker's own PostgreSQL database, migrated to head."""
    problem = _postgres_problem()
    if problem is not None:
        if os.environ.get("PLEDGEWATCH_REQUIRE_POSTGRES"):
            pytest.fail(problem)
        pytest.skip(f"PostgreSQL tests skipped: {problem}")
    with scratch_postgres(postgres_database_name("")) as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


def _empty_postgres(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        tables = [
            row[0]
            for row in conn.execute(
                text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                    "AND tablename <> 'alembic_version'"
                )
            )
        ]
        conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        conn.execute(text("INSERT INTO revision (id, value) VALUES (1, 0)"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database of the test's backend."""
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        target = tmp_path / "pledgewatch.db"
        shutil.copyfile(template, target)
        return f"sqlite:///{target}"
    url: str = request.getfixturevalue("postgres_template_url")
    _empty_postgres(url)
    return url


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    db = Database(db_url, pool_size=5)
    yield db
    db.dispose()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(NOW)


@pytest.fixture
def settings(db_url: str) -> Settings:
    # API tests must not start schedulers; tests/scheduler starts its own.
    return Settings(
        database_url=db_url, log_json=False, log_level="WARNING", scheduler_enabled=False
    )


@pytest.fixture
def client(settings: Settings, clock: FrozenClock, database: Database) -> Iterator[TestClient]:
    app = create_app(settings, clock=clock, database=database)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def keys(database: Database, clock: FrozenClock) -> dict[str, dict[str, str]]:
    """Authorization headers for one key of each role, named after the role."""
    headers = {}
    with database.transaction() as session:
        for role in ROLES:
            secret = create_key(session, name=role, role=role, now=clock.now())
            headers[role] = {"Authorization": f"Bearer {secret}"}
    return headers
