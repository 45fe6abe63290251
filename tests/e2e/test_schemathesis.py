"""Hostile input from the app's own OpenAPI schema, against a real server, all checks.

Schemathesis generates valid and invalid requests for every operation; each
answer must match the documented status codes, content types and schemas, and
nothing may be a 500.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app.clock import SystemClock
from app.config import Settings
from app.db import Database
from app.domain.keys.service import create_key
from app.main import create_app
from app.migrate import upgrade
from app.seed.loader import seed
from tests.e2e.conftest import free_port

schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())


def _prepare(url: str) -> str:
    upgrade(url)
    database = Database(url, pool_size=1)
    try:
        with database.transaction() as session:
            seed(session, SystemClock())
            return create_key(session, name="fuzzer", role="admin", now=SystemClock().now())
    finally:
        database.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fuzz_target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """A seeded database of each kind, a real server on it, and an admin key."""
    folder = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    admin_engine = None
    if request.param == "sqlite":
        url = f"sqlite:///{folder / 'fuzz.db'}"
    else:
        base: str = request.getfixturevalue("postgres_template_url")
        parsed = make_url(base)
        name = f"{parsed.database}_fuzz"
        admin_engine = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin_engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = parsed.set(database=name).render_as_string(hide_password=False)
    key = _prepare(url)
    port = free_port()
    log_path = folder / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
            env={
                **os.environ,
                "PLEDGEWATCH_DATABASE_URL": url,
                "PLEDGEWATCH_SCHEDULER_ENABLED": "false",
                "PLEDGEWATCH_LOG_LEVEL": "WARNING",
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base_url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(log_path.read_text()[-2000:])
                time.sleep(0.1)
            yield base_url, key
        finally:
            process.terminate()
            process.wait(timeout=10)
            if admin_engine is not None:
                with admin_engine.connect() as conn:
                    conn.execute(
                        text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
                    )
                admin_engine.dispose()
    server_errors = [
        line for line in log_path.read_text().splitlines() if '"level": "error"' in line
    ]
    assert server_errors == [], server_errors[:3]


@schema.parametrize()
@settings(
    max_examples=int(os.environ.get("PLEDGEWATCH_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_answers_every_generated_request_as_documented(
    case: schemathesis.Case[Any], fuzz_target: tuple[str, str]
) -> None:
    base_url, key = fuzz_target
    case.call_and_validate(base_url=base_url, headers={"Authorization": f"Bearer {key}"})
