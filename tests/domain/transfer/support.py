"""A Pledgewatch holding every kind of state, and everything its API shows of it.

Shared by the export and import tests (HTTP, services and the command line).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.clock import FrozenClock
from app.collectors.collect import CollectContext, collect_source
from app.config import Settings
from app.db import Database
from app.domain.keys.service import create_key
from app.domain.proposals.rules import run_evaluation
from app.domain.sources.schemas import SourceCreate
from app.domain.sources.service import create_source, start_run
from app.domain.webhooks.schemas import WebhookCreate
from app.domain.webhooks.service import create_webhook
from app.main import create_app
from app.migrate import upgrade
from app.net import SafeFetcher
from app.seed.loader import seed
from tests.collectors.feed_server import Answer, feed_server
from tests.conftest import NOW, ROLES, postgres_database_name, scratch_postgres
from tests.factories import Keys, evidence_body, pledge_body

API = "/api/v1"
PLEDGE = "us-cn-transfer-test"
# Any string at all is a title: markup, quotes, a formula, emoji, right-to-left text.
AWKWARD_TITLE = "=HYPERLINK(\"http://evil.example\") <b>&amp;</b> 'quoted' 🚀 — ünïcode עברית"
WEBHOOK_SECRET = "whsec-test-0123456789abcdef"
INDICATOR = Path(__file__).parents[2] / "collectors" / "feeds" / "indicator.csv"


@dataclass
class Instance:
    """One Pledgewatch on one database, as a client sees it."""

    url: str
    client: TestClient
    database: Database
    keys: Keys
    clock: FrozenClock

    @property
    def backend(self) -> str:
        return "sqlite" if self.url.startswith("sqlite") else "postgresql"

    def get(self, path: str, role: str | None = None, **params: Any) -> Any:
        response = self.client.get(
            f"{API}{path}", params=params, headers=self.keys[role] if role else None
        )
        assert response.status_code == 200, response.text
        return response.json()


@contextmanager
def open_instance(
    url: str, clock: FrozenClock, *, key_prefix: str = "", public_read: bool = True
) -> Iterator[Instance]:
    """The app on ``url`` with one key per role (keys are not state: import ignores them)."""
    database = Database(url, pool_size=5)
    settings = Settings(
        database_url=url,
        log_json=False,
        log_level="WARNING",
        scheduler_enabled=False,
        public_read=public_read,
    )
    try:
        keys: Keys = {}
        with database.transaction() as session:
            for role in ROLES:
                name = f"{key_prefix}{role}"
                secret = create_key(session, name=name, role=role, now=clock.now())
                keys[role] = {"Authorization": f"Bearer {secret}"}
        app = create_app(settings, clock=clock, database=database)
        with TestClient(app, raise_server_exceptions=False) as client:
            yield Instance(url, client, database, keys, clock)
    finally:
        database.dispose()


@contextmanager
def empty_database(backend: str, request: pytest.FixtureRequest, name: str) -> Iterator[str]:
    """A new database of ``backend``, migrated to head and holding nothing (any fixture scope)."""
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
        target = factory.mktemp(name) / f"{name}.db"
        shutil.copyfile(template, target)
        yield f"sqlite:///{target}"
        return
    # Skips (or fails, when PostgreSQL is required) like every PostgreSQL test.
    request.getfixturevalue("postgres_template_url")
    with scratch_postgres(postgres_database_name(name)) as url:
        upgrade(url)
        yield url


def _post(instance: Instance, path: str, body: Any, role: str = "analyst") -> Any:
    response = instance.client.post(f"{API}{path}", json=body, headers=instance.keys[role])
    assert response.status_code in (200, 201, 202), response.text
    return response.json()


def add_webhook(instance: Instance, url: str, secret: str = WEBHOOK_SECRET) -> int:
    """A subscription made by the webhooks service (its target resolves to a public address)."""
    with instance.database.transaction() as session:
        hook = create_webhook(
            session,
            WebhookCreate(
                url=url,
                events=["status.changed", "evidence.added"],
                description="Ops dashboard ✓",
                secret=secret,
            ),
            actor="key:admin",
            now=instance.clock.now(),
            allow_private=False,
            resolve=lambda _host, _port: ["93.184.215.14"],
        )
        return hook.id


def populate(instance: Instance) -> None:
    """Every kind of row there is: the seed article, evidence reviewed every way, analysts'
    and rules' status changes, proposals open and decided, sources (one polled from a real
    local feed, one deleted), a source run, and a webhook."""
    clock = instance.clock
    with instance.database.transaction() as session:
        seed(session, clock)
    clock.advance(timedelta(minutes=3))
    _post(
        instance,
        "/pledges",
        pledge_body(id=PLEDGE, title=AWKWARD_TITLE, topics=["narcotics", "trade"]),
    )
    _post(instance, f"/pledges/{PLEDGE}/evidence", evidence_body(101, stance="supports"))
    unreviewed = _post(
        instance,
        f"/pledges/{PLEDGE}/evidence",
        evidence_body(102, stance="undermines", source_name="Other Wire"),
        role="collector",
    )
    rejected = _post(
        instance,
        f"/pledges/{PLEDGE}/evidence",
        evidence_body(103, stance="context", summary="Nothing to see."),
        role="collector",
    )
    clock.advance(timedelta(hours=1))
    _post(
        instance,
        f"/evidence/{rejected['id']}/review",
        {"pledge_id": PLEDGE, "review": "rejected", "note": "Off topic."},
    )
    _post(
        instance,
        f"/pledges/{PLEDGE}/status",
        {
            "status": "in_progress",
            "reason": "Working group met.",
            "effective_at": "2024-06-01T08:30:00.123456Z",
        },
    )
    response = instance.client.patch(
        f"{API}/pledges/{PLEDGE}", json={"venue": "Woodside, CA"}, headers=instance.keys["analyst"]
    )
    assert response.status_code == 200, response.text
    assert unreviewed["id"] > 0

    # A real poll of a real (local) CSV feed: dataset observations with values, a run, an ETag.
    with feed_server() as server:
        server.answers["/indicator.csv"] = Answer(
            body=INDICATOR.read_bytes(), content_type="text/csv", etag='"v1"'
        )
        with instance.database.transaction() as session:
            create_source(
                session,
                SourceCreate.model_validate(
                    {
                        "id": "soybean-series",
                        "name": "Soybean purchases",
                        "kind": "csv",
                        "url": server.url("/indicator.csv"),
                        "pledges": [PLEDGE],
                        "source_type": "dataset",
                        "reliability": "high",
                        "trusted": True,
                        "mapping": {
                            "date": "date",
                            "value": "soybean_purchases_mt",
                            "target": 10.25,
                            "direction": "at_least",
                        },
                    }
                ),
                now=clock.now(),
            )
        fetcher = SafeFetcher(allow_private=True, clock=clock, retries=1, sleep=lambda _: None)
        try:
            result = collect_source(
                CollectContext(database=instance.database, fetcher=fetcher, clock=clock),
                "soybean-series",
            )
        finally:
            fetcher.close()
    assert result is not None
    clock.advance(timedelta(minutes=10))

    rss_source = {
        "id": "example-wire",
        "name": "Example Wire",
        "kind": "rss",
        "url": "https://news.example.org/feed.xml",
        "pledges": [PLEDGE],
        "match": {"any": ["Xi"], "none": ["opinion"]},
        "source_type": "independent",
        "reliability": "medium",
    }
    _post(instance, "/sources", rss_source, role="admin")
    response = instance.client.patch(
        f"{API}/sources/example-wire", json={"every_minutes": 15}, headers=instance.keys["admin"]
    )
    assert response.status_code == 200, response.text
    _post(instance, "/sources", {**rss_source, "id": "short-lived"}, role="admin")
    response = instance.client.delete(f"{API}/sources/short-lived", headers=instance.keys["admin"])
    assert response.status_code == 204, response.text
    with instance.database.transaction() as session:
        start_run(session, "example-wire", now=clock.now())

    # The rules: progress and stalls applied, final verdicts proposed (due dates have passed).
    clock.advance(timedelta(days=1))
    run_evaluation(instance.database, clock.now())
    proposals = instance.get("/proposals", "analyst", limit=500)["items"]
    assert len(proposals) >= 2, proposals
    _post(instance, f"/proposals/{proposals[0]['id']}/confirm", {"note": "Agreed."})
    _post(instance, f"/proposals/{proposals[1]['id']}/dismiss", {"note": "Not yet."})
    add_webhook(instance, "https://hooks.example.org/pledgewatch?channel=ops")
    clock.advance(timedelta(minutes=1))


def _pages(instance: Instance, path: str, role: str | None = None, **params: Any) -> list[Any]:
    items: list[Any] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        page = instance.get(path, role, **query)
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def observe(instance: Instance) -> dict[str, Any]:
    """What the API shows of the state: must be identical after export and import."""
    client = instance.client
    status = client.get(f"{API}/status")
    assert status.status_code == 200, status.text
    view = status.json()
    view.pop("generated_at")
    seen: dict[str, Any] = {
        "status": view,
        "status_etag": status.headers["etag"],
        "status_as_of": instance.get("/status", as_of="2024-06-30", known_at="2025-01-15"),
        "ledger": _pages(instance, "/ledger", limit=1000),
        "verify": instance.get("/ledger/verify"),
        "proposals": _pages(instance, "/proposals", "analyst", limit=500),
        "sources": _pages(instance, "/sources", "admin"),
        "webhooks": _pages(instance, "/webhooks", "admin"),
        "review_queue": _pages(instance, "/review-queue", "analyst"),
    }
    assert seen["verify"]["ok"] is True, seen["verify"]
    for pledge in _pages(instance, "/pledges", limit=500):
        pledge_id = pledge["id"]
        seen[f"pledge {pledge_id}"] = pledge
        seen[f"history {pledge_id}"] = _pages(instance, f"/pledges/{pledge_id}/history")
        seen[f"evidence {pledge_id}"] = _pages(instance, f"/pledges/{pledge_id}/evidence")
        badge = client.get(f"{API}/status/{pledge_id}/badge.svg")
        seen[f"badge {pledge_id}"] = (badge.headers["etag"], badge.text)
    for source in seen["sources"]:
        seen[f"runs {source['id']}"] = _pages(instance, f"/sources/{source['id']}/runs", "admin")
    return seen


@dataclass
class Exported:
    """A populated database's export, what its API showed, and when (its clock then)."""

    backend: str
    document: dict[str, Any]
    seen: dict[str, Any]
    at: datetime


def export_populated(backend: str, request: pytest.FixtureRequest) -> Exported:
    """Populate a new database of ``backend``, observe it and export it as an admin."""
    clock = FrozenClock(NOW)
    with empty_database(backend, request, "source") as url, open_instance(url, clock) as source:
        populate(source)
        return Exported(backend, export_document(source), observe(source), clock.now())


def export_document(instance: Instance, role: str = "admin") -> dict[str, Any]:
    response = instance.client.get(f"{API}/export", headers=instance.keys[role])
    assert response.status_code == 200, response.text
    document: dict[str, Any] = json.loads(response.content)
    return document
