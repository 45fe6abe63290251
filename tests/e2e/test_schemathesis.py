"""Hostile input from the app's own OpenAPI schema, against a real server, all checks.

Schemathesis generates valid and invalid requests for every operation; each
answer must match the documented status codes, content types and schemas, and
nothing may be a 500.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from app.clock import SystemClock
from app.config import Settings
from app.db import Database
from app.domain.keys.service import create_key
from app.main import create_app
from app.migrate import upgrade
from app.seed.loader import seed
from tests.conftest import postgres_database_name, scratch_postgres
from tests.e2e.conftest import running_server
from tests.long_tests import long_test

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


# --- the long run: at least 10,000 generated requests per database ---------------------------
#
# In the long tier only (make test-long: PLEDGEWATCH_LONG_TESTS=1), about ten minutes per
# database on two cores. Hypothesis stops early on operations whose inputs it has exhausted
# (few or no parameters), so each operation is asked for three times an even share, and the
# requests actually sent are counted.
LONG_RUN_CASES = int(os.environ.get("PLEDGEWATCH_FUZZ_CASES", "10000"))
_OPERATIONS = sum(1 for _ in schema.get_all_operations())
_sent: Counter[str] = Counter()
checks.load_all_checks()
# Every check Schemathesis has, named rather than left to its defaults.
ALL_CHECKS = [check for check in checks.CHECKS.get_all() if not checks.is_check_class(check)]


@long_test
@pytest.mark.slow
@pytest.mark.xdist_group("fuzz-long")
@schema.parametrize()
@settings(
    max_examples=math.ceil(LONG_RUN_CASES / _OPERATIONS * 3),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_long_run_answers_every_generated_request_as_documented(
    case: schemathesis.Case[Any], fuzz_target: tuple[str, str], request: pytest.FixtureRequest
) -> None:
    base_url, key = fuzz_target
    _sent[request.node.callspec.params["fuzz_target"]] += 1
    case.call_and_validate(
        base_url=base_url,
        headers={"Authorization": f"Bearer {key}"},
        checks=ALL_CHECKS,
    )


@long_test
@pytest.mark.slow
@pytest.mark.xdist_group("fuzz-long")
def test_long_run_sent_enough_requests(
    fuzz_target: tuple[str, str], request: pytest.FixtureRequest
) -> None:
    backend = request.node.callspec.params["fuzz_target"]
    if not _sent[backend]:
        pytest.skip("the long run's cases did not run in this process (deselected)")
    print(f"{_sent[backend]:,} generated requests on {backend}, each answer checked")
    assert _sent[backend] >= LONG_RUN_CASES, (
        f"{_sent[backend]} requests on {backend}; raise the per-operation examples"
    )
