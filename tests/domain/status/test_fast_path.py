"""The dashboards' poll of ``/status``, answered before routing from the known revision:
the same answers as the full path, never stale for writes made in this process."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import update

from app.clock import FrozenClock
from app.config import Settings
from app.db import Database
from app.domain.status import service as status_service
from app.domain.status.models import Revision
from app.domain.status.revision import claim_revision
from app.domain.status.view_cache import RevisionWatch
from app.main import create_app
from tests.factories import Keys, make_pledge

API = "/api/v1"
IDENTITY = {"Accept-Encoding": "identity"}


def outcome_count(outcome: str) -> float:
    return REGISTRY.get_sample_value("pledgewatch_status_view_total", {"outcome": outcome}) or 0.0


def status_requests(code: str) -> float:
    labels = {"method": "GET", "route": f"{API}/status", "status": code}
    return REGISTRY.get_sample_value("pledgewatch_http_requests_total", labels) or 0.0


def test_polls_are_answered_from_memory_with_the_full_paths_headers(
    client: TestClient, keys: Keys
) -> None:
    make_pledge(client, keys)
    built = client.get(f"{API}/status", headers=IDENTITY)
    watch: RevisionWatch = client.app.state.revision_watch  # type: ignore[attr-defined]
    assert watch.current() is not None
    cached_before, not_modified_before = outcome_count("cached"), outcome_count("not_modified")
    counted_before = status_requests("304")

    again = client.get(f"{API}/status", headers=IDENTITY)
    unchanged = client.get(
        f"{API}/status", headers={**IDENTITY, "If-None-Match": built.headers["etag"]}
    )

    assert outcome_count("cached") == cached_before + 1
    assert outcome_count("not_modified") == not_modified_before + 1
    # Logged and counted under the route's template, like a routed request.
    assert status_requests("304") == counted_before + 1
    assert again.content == built.content
    for name in (
        "etag",
        "cache-control",
        "vary",
        "content-type",
        "x-pledgewatch-ledger-length",
        "x-pledgewatch-ledger-head",
    ):
        assert again.headers[name] == built.headers[name], name
    assert again.headers["x-request-id"]
    assert unchanged.status_code == 304
    assert unchanged.headers["etag"] == built.headers["etag"]
    assert (
        unchanged.headers["x-pledgewatch-ledger-head"] == built.headers["x-pledgewatch-ledger-head"]
    )


def test_a_write_through_the_api_is_seen_by_the_next_poll(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys, "first-pledge")
    etag = client.get(f"{API}/status").headers["etag"]
    assert client.get(f"{API}/status", headers={"If-None-Match": etag}).status_code == 304

    make_pledge(client, keys, "second-pledge")
    after = client.get(f"{API}/status", headers={"If-None-Match": etag})

    assert after.status_code == 200
    assert [row["id"] for row in after.json()["pledges"]] == ["first-pledge", "second-pledge"]


def test_any_writer_committing_in_this_process_makes_the_revision_unknown(
    client: TestClient, keys: Keys, database: Database
) -> None:
    make_pledge(client, keys)
    etag = client.get(f"{API}/status").headers["etag"]
    watch: RevisionWatch = client.app.state.revision_watch  # type: ignore[attr-defined]
    assert watch.current() is not None

    # A writer outside the app (the scheduler in this process, a script): it claims the
    # revision first, as every writer does.
    with database.transaction() as session:
        version = claim_revision(session)
        session.execute(update(Revision).where(Revision.id == 1).values(value=version))
    assert watch.current() is None

    after = client.get(f"{API}/status", headers={"If-None-Match": etag})
    assert after.status_code == 200
    assert after.json()["revision"] == version


def test_a_read_overtaken_by_a_write_is_not_kept() -> None:
    watch = RevisionWatch(poll_seconds=1)
    generation = watch.generation
    watch.invalidate()  # a write committed while the state was being read

    watch.offer((1, 1, "a" * 64), generation)
    assert watch.current() is None

    watch.offer((2, 2, "b" * 64), watch.generation)
    assert watch.current() == (2, 2, "b" * 64)


def test_a_key_takes_the_full_path_and_a_bad_one_is_refused(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    etag = client.get(f"{API}/status").headers["etag"]

    bad = client.get(
        f"{API}/status", headers={"If-None-Match": etag, "Authorization": "Bearer pw_nonsense"}
    )
    good = client.get(f"{API}/status", headers={"If-None-Match": etag, **keys["viewer"]})

    assert bad.status_code == 401
    assert good.status_code == 304


def test_queries_take_the_full_path(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    client.get(f"{API}/status")

    refused = client.get(f"{API}/status", params={"kind": "nonsense"})
    filtered = client.get(f"{API}/status", params={"kind": "concern"})

    assert refused.status_code == 422
    assert filtered.status_code == 200
    assert filtered.json()["pledges"] == []


@contextmanager
def client_with(
    db_url: str, clock: FrozenClock, database: Database, **overrides: Any
) -> Iterator[TestClient]:
    """A test client of an app whose settings differ from the suite's by ``overrides``."""
    settings = Settings(
        database_url=db_url,
        log_json=False,
        log_level="WARNING",
        scheduler_enabled=False,
        **overrides,
    )
    with TestClient(create_app(settings, clock=clock, database=database)) as test_client:
        yield test_client


@pytest.fixture
def private_client(db_url: str, clock: FrozenClock, database: Database) -> Iterator[TestClient]:
    with client_with(db_url, clock, database, public_read=False) as test_client:
        yield test_client


def test_private_reads_are_never_answered_without_a_key(
    private_client: TestClient, keys: Keys
) -> None:
    first = private_client.get(f"{API}/status", headers=keys["viewer"])
    assert first.status_code == 200

    anonymous = private_client.get(
        f"{API}/status", headers={"If-None-Match": first.headers["etag"]}
    )

    assert anonymous.status_code == 401


# --- past views: built a few at a time ---------------------------------------------------


@pytest.fixture
def one_build_client(db_url: str, clock: FrozenClock, database: Database) -> Iterator[TestClient]:
    with client_with(db_url, clock, database, status_builds=1) as test_client:
        yield test_client


def test_past_views_are_built_no_more_than_the_build_slots_at_once(
    one_build_client: TestClient, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_pledge(one_build_client, keys)
    building = 0
    most = 0
    lock = threading.Lock()
    real_dashboard = status_service.dashboard

    def slow_dashboard(*args: Any, **kwargs: Any) -> Any:
        nonlocal building, most
        with lock:
            building += 1
            most = max(most, building)
        try:
            time.sleep(0.05)
            return real_dashboard(*args, **kwargs)
        finally:
            with lock:
                building -= 1

    monkeypatch.setattr(status_service, "dashboard", slow_dashboard)

    def ask(day: int) -> int:
        response = one_build_client.get(
            f"{API}/status", params={"as_of": f"2024-05-{day:02d}T10:00:00Z"}
        )
        return int(response.status_code)

    with ThreadPoolExecutor(max_workers=6) as pool:
        codes = list(pool.map(ask, range(1, 7)))

    assert codes == [200] * 6
    assert most == 1
