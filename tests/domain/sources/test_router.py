"""The /sources API (admin only), on both databases, polling a real local feed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.clock import FrozenClock
from app.config import Settings
from app.db import Database
from app.main import create_app
from app.seed.loader import seed
from tests.collectors.feed_server import Answer, FeedServer, feed_server, rss
from tests.factories import Keys, invalid_fields, make_pledge, problem

API = "/api/v1"


def source_body(url: str = "https://news.example.org/feed.xml", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "example-wire",
        "name": "Example Wire",
        "kind": "rss",
        "url": url,
        "pledges": ["us-cn-test-pledge"],
        "match": {"any": ["Xi"]},
        "source_type": "independent",
        "reliability": "high",
    }
    body.update(overrides)
    return body


@pytest.fixture
def admin(client: TestClient, keys: Keys) -> dict[str, str]:
    make_pledge(client, keys)
    return keys["admin"]


def test_create_read_list_update_delete(client: TestClient, admin: dict[str, str]) -> None:
    created = client.post(f"{API}/sources", json=source_body(), headers=admin)
    assert created.status_code == 201, created.text
    assert created.headers["location"] == f"{API}/sources/example-wire"
    body = created.json()
    assert body["enabled"] is True
    assert body["trusted"] is False
    assert body["every_minutes"] == 60
    assert body["match"] == {"any": ["Xi"], "all": [], "none": []}
    assert body["consecutive_failures"] == 0
    assert body["last_success_at"] is None

    assert client.get(f"{API}/sources/example-wire", headers=admin).json() == body
    listed = client.get(f"{API}/sources", headers=admin).json()
    assert [s["id"] for s in listed["items"]] == ["example-wire"]
    assert listed["next_cursor"] is None

    patched = client.patch(
        f"{API}/sources/example-wire", json={"enabled": False, "every_minutes": 5}, headers=admin
    )
    assert patched.status_code == 200, patched.text
    assert (patched.json()["enabled"], patched.json()["every_minutes"]) == (False, 5)

    assert client.delete(f"{API}/sources/example-wire", headers=admin).status_code == 204
    problem(client.get(f"{API}/sources/example-wire", headers=admin), 404)


def test_sources_are_for_admins_only(client: TestClient, keys: Keys, admin: dict[str, str]) -> None:
    assert client.get(f"{API}/sources").status_code == 401
    for role in ("viewer", "collector", "analyst"):
        problem(client.get(f"{API}/sources", headers=keys[role]), 403)
        problem(client.post(f"{API}/sources", json=source_body(), headers=keys[role]), 403)


def test_an_existing_id_is_409(client: TestClient, admin: dict[str, str]) -> None:
    assert client.post(f"{API}/sources", json=source_body(), headers=admin).status_code == 201
    problem(client.post(f"{API}/sources", json=source_body(), headers=admin), 409)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"url": "ftp://files.example.org/feed"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"kind": "atom-ish"}, "kind"),
        ({"pledges": ["no-such-pledge"]}, "pledges[0]"),
        ({"pledges": []}, "pledges"),
        ({"every_minutes": 0}, "every_minutes"),
        ({"source_type": "rumour"}, "source_type"),
        ({"match": {"some": ["x"]}}, "match.some"),
        ({"kind": "json", "mapping": None}, "mapping"),
        ({"kind": "json", "mapping": {"title": "headline"}}, "mapping"),
        ({"kind": "csv", "mapping": {"date": "day"}}, "mapping"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_a_bad_source_is_422_naming_the_field(
    client: TestClient, admin: dict[str, str], overrides: dict[str, Any], field: str
) -> None:
    response = client.post(f"{API}/sources", json=source_body(**overrides), headers=admin)
    assert any(name == field or name.startswith(field) for name in invalid_fields(response))
    assert client.get(f"{API}/sources", headers=admin).json()["items"] == []


@pytest.fixture
def feeds() -> Iterator[FeedServer]:
    with feed_server() as running:
        yield running


@pytest.fixture
def loopback_client(db_url: str, clock: FrozenClock, database: Database) -> Iterator[TestClient]:
    """The app allowed to poll feeds on 127.0.0.1, as tests (and only tests) need."""
    with database.transaction() as session:
        seed(session, clock)
    settings = Settings(
        database_url=db_url,
        log_json=False,
        log_level="WARNING",
        allow_private_source_hosts=True,
        scheduler_enabled=False,
    )
    with TestClient(create_app(settings, clock=clock, database=database)) as client:
        yield client


def test_run_now_polls_and_records_the_run(
    loopback_client: TestClient, keys: Keys, feeds: FeedServer
) -> None:
    admin = keys["admin"]
    feeds.answers["/feed"] = Answer(
        body=rss(("Biden and Xi talk", "A call.", "Tue, 02 Apr 2024 18:00:00 GMT"))
    )
    body = source_body(feeds.url("/feed"), pledges=["us-cn-leader-calls-more-often"])
    assert loopback_client.post(f"{API}/sources", json=body, headers=admin).status_code == 201

    started = loopback_client.post(f"{API}/sources/example-wire/run", headers=admin)

    assert started.status_code == 202, started.text
    assert started.json()["outcome"] == "running"
    runs = loopback_client.get(f"{API}/sources/example-wire/runs", headers=admin).json()["items"]
    assert [(r["id"], r["outcome"], r["evidence_added"]) for r in runs] == [
        (started.json()["id"], "ok", 1)
    ]
    source = loopback_client.get(f"{API}/sources/example-wire", headers=admin).json()
    assert source["last_success_at"] is not None


def test_runs_are_newest_first_and_paginated(
    loopback_client: TestClient, keys: Keys, feeds: FeedServer, clock: FrozenClock
) -> None:
    admin = keys["admin"]
    feeds.answers["/feed"] = Answer(status=500, body=b"down")
    body = source_body(feeds.url("/feed"), pledges=["us-cn-leader-calls-more-often"])
    loopback_client.post(f"{API}/sources", json=body, headers=admin)
    ids = [
        loopback_client.post(f"{API}/sources/example-wire/run", headers=admin).json()["id"]
        for _ in range(3)
    ]
    first = loopback_client.get(
        f"{API}/sources/example-wire/runs", params={"limit": 2}, headers=admin
    ).json()
    rest = loopback_client.get(
        f"{API}/sources/example-wire/runs",
        params={"limit": 2, "cursor": first["next_cursor"]},
        headers=admin,
    ).json()
    assert [r["id"] for r in first["items"] + rest["items"]] == list(reversed(ids))
    assert rest["next_cursor"] is None
    assert all(r["outcome"] == "failed" and "500" in r["error"] for r in first["items"])
    source = loopback_client.get(f"{API}/sources/example-wire", headers=admin).json()
    assert source["consecutive_failures"] == 3


def test_sources_example_file_is_valid_and_disabled(database: Database, clock: FrozenClock) -> None:
    from pathlib import Path

    from app.domain.sources.service import list_sources, load_sources_file

    with database.transaction() as session:
        seed(session, clock)
        created = load_sources_file(
            session, Path(__file__).resolve().parents[3] / "sources.example.yaml", now=clock.now()
        )
        assert created
        items, _ = list_sources(session, limit=100, cursor=None)
        again = load_sources_file(
            session, Path(__file__).resolve().parents[3] / "sources.example.yaml", now=clock.now()
        )
    assert again == []
    assert {s.id for s in items} == set(created)
    assert all(not s.enabled for s in items)


def test_the_sources_file_setting_creates_its_sources_at_start_up(
    db_url: str, database: Database, clock: FrozenClock, keys: Keys
) -> None:
    from pathlib import Path

    with database.transaction() as session:
        seed(session, clock)
    settings = Settings(
        database_url=db_url,
        log_json=False,
        log_level="WARNING",
        scheduler_enabled=False,
        sources_file=Path(__file__).resolve().parents[3] / "sources.example.yaml",
    )
    with TestClient(create_app(settings, clock=clock, database=database)) as client:
        listed = client.get(f"{API}/sources", headers=keys["admin"]).json()["items"]
    assert "us-state-press-releases" in {source["id"] for source in listed}
    assert not any(source["enabled"] for source in listed)
