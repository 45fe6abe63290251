"""Hostile input from the app's own OpenAPI schema, against a real server, all checks.

Schemathesis generates valid and invalid requests for every operation; each
answer must match the documented status codes, content types and schemas, and
nothing may be a 500.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from app.clock import SystemClock
from app.config import Settings
from app.db import Database
from app.domain.keys.service import create_key
from app.main import create_app
from app.migrate import upgrade
from app.seed.loader import seed
from tests.conftest import postgres_database_name, scratch_postgres
from tests.e2e.conftest import running_server

# /events answers 200 with a stream that never ends, and call_and_validate would wait for its
# end: tests/e2e/test_events.py sends it the same generated requests and reads each 200 only
# up to its first message.
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi()).exclude(
    path="/api/v1/events"
)


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
    log_path = folder / "server.log"
    with ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{folder / 'fuzz.db'}"
        else:
            # The template fixture skips (or fails, in CI) when PostgreSQL is unreachable.
            request.getfixturevalue("postgres_template_url")
            url = stack.enter_context(scratch_postgres(postgres_database_name("fuzz")))
        key = _prepare(url)
        with running_server(url, log_path) as base_url:
            yield base_url, key
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
