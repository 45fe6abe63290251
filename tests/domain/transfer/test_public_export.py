"""Secrets in URLs stay with admins: the export of anyone else, run views, and the logs.

A source whose URL carries credentials (``user:password@``) and a token in its query, a
failed poll of it whose error repeats the URL, and a webhook: on both databases, with a
real poll of a real (local) feed server.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.clock import FrozenClock
from app.collectors.collect import CollectContext, collect_source
from app.db import Database
from app.domain.keys.service import Principal
from app.domain.sources.router import as_seen_by
from app.domain.sources.schemas import RunOut
from app.domain.transfer.service import (
    ADMIN_ONLY_TABLES,
    EXCLUDED_TABLES,
    exported_tables,
    import_document,
)
from app.domain.webhooks.schemas import WebhookCreate
from app.domain.webhooks.service import create_webhook
from app.errors import InvalidInput
from app.logs import JsonFormatter
from app.net import SafeFetcher
from tests.collectors.feed_server import Answer, feed_server
from tests.domain.transfer.support import empty_database, open_instance
from tests.factories import PLEDGE_ID, Keys, make_pledge

API = "/api/v1"
USER, PASSWORD, TOKEN = "alice-feeds", "s3cret-pass", "tok-qz-77"
WEBHOOK_URL = "https://hooks.example.org/services/T0/B0/ops?channel=ops"
# What no one but an admin may see: the source's credentials, and the webhook's URL.
SECRETS = (USER, PASSWORD, TOKEN, "hooks.example.org")
NON_ADMINS = [None, "viewer", "collector", "analyst"]
SOURCE_ID = "leaky-feed"


@dataclass
class Leaky:
    """A Pledgewatch holding secrets in URLs, and what its logs said while it polled."""

    client: TestClient
    keys: Keys
    database: Database
    source_url: str
    poll_log: str

    def export(self, role: str | None) -> tuple[str, dict[str, Any]]:
        response = self.client.get(f"{API}/export", headers=self.keys[role] if role else None)
        assert response.status_code == 200, response.text
        return response.text, json.loads(response.content)


@contextmanager
def captured_logs() -> Iterator[io.StringIO]:
    """Everything logged meanwhile, at INFO and up, as the service writes it (JSON lines)."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _poll(database: Database, clock: FrozenClock) -> str:
    """Poll the source once (its server answers 503, twice) and return the log of it."""
    fetcher = SafeFetcher(allow_private=True, clock=clock, retries=1, sleep=lambda _: None)
    try:
        with captured_logs() as buffer:
            result = collect_source(
                CollectContext(database=database, fetcher=fetcher, clock=clock), SOURCE_ID
            )
    finally:
        fetcher.close()
    assert result is not None
    assert result.outcome == "failed"
    return buffer.getvalue()


@pytest.fixture
def leaky(client: TestClient, keys: Keys, database: Database, clock: FrozenClock) -> Leaky:
    make_pledge(client, keys)
    with feed_server() as server:
        path = f"/feed.xml?token={TOKEN}"
        server.answers[path] = Answer(status=503, body=b"down")
        url = server.base.replace("://", f"://{USER}:{PASSWORD}@") + path
        created = client.post(
            f"{API}/sources",
            json={
                "id": SOURCE_ID,
                "name": "A feed behind a password",
                "kind": "rss",
                "url": url,
                "pledges": [PLEDGE_ID],
                "source_type": "independent",
            },
            headers=keys["admin"],
        )
        assert created.status_code == 201, created.text
        poll_log = _poll(database, clock)
        assert len(server.requests) == 2, "a real poll: tried, then retried"
    with database.transaction() as session:
        create_webhook(
            session,
            WebhookCreate(url=WEBHOOK_URL, secret="a webhook secret, long enough"),
            actor="key:admin",
            now=clock.now(),
            allow_private=False,
            resolve=lambda _host, _port: ["93.184.215.14"],
        )
    return Leaky(client, keys, database, url, poll_log)


def _runs(leaky: Leaky) -> list[dict[str, Any]]:
    response = leaky.client.get(f"{API}/sources/{SOURCE_ID}/runs", headers=leaky.keys["admin"])
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def test_the_failed_run_repeats_the_url_for_an_admin(leaky: Leaky) -> None:
    (run,) = _runs(leaky)
    assert run["outcome"] == "failed"
    assert leaky.source_url in run["error"], "the admin sees what failed, as configured"


@pytest.mark.parametrize("role", NON_ADMINS)
def test_a_non_admin_export_holds_no_secret_and_only_public_tables(
    leaky: Leaky, role: str | None
) -> None:
    text, document = leaky.export(role)

    for secret in SECRETS:
        assert secret not in text
    assert document["scope"] == "public"
    assert document["secrets"] == "withheld"
    assert document["excluded"] == EXCLUDED_TABLES | ADMIN_ONLY_TABLES
    assert set(ADMIN_ONLY_TABLES) == {"source", "source_run", "webhook"}
    assert list(document["tables"]) == [table.name for table in exported_tables("public")]
    assert not set(document["tables"]) & set(ADMIN_ONLY_TABLES)
    # The ledger is whole (hashes only): its entries for the source and the webhook are in it.
    verdict = leaky.client.get(f"{API}/ledger/verify").json()
    assert document["ledger"] == {"length": verdict["length"], "head": verdict["head"]}
    ledger = document["tables"]["ledger_entry"]
    subjects = [row[ledger["columns"].index("subject")] for row in ledger["rows"]]
    assert len(subjects) == verdict["length"]
    assert f"source:{SOURCE_ID}" in subjects
    assert "webhook:1" in subjects


def test_the_admin_export_is_complete(leaky: Leaky) -> None:
    text, document = leaky.export("admin")

    for secret in SECRETS:
        assert secret in text
    assert document["scope"] == "complete"
    assert document["secrets"] == "included"
    assert document["excluded"] == EXCLUDED_TABLES
    runs = document["tables"]["source_run"]
    (error,) = [row[runs["columns"].index("error")] for row in runs["rows"]]
    assert leaky.source_url in error


def test_a_public_export_is_refused_by_import_naming_its_scope(
    leaky: Leaky, backend: str, request: pytest.FixtureRequest, clock: FrozenClock
) -> None:
    _, document = leaky.export("viewer")
    with (
        empty_database(backend, request, "public") as url,
        open_instance(url, clock) as target,
    ):
        with pytest.raises(InvalidInput) as refused, target.database.transaction() as session:
            import_document(session, document)
        (error,) = refused.value.errors or []
        assert error["field"] == "scope"
        assert "public export" in error["message"]
        assert target.get("/ledger/verify")["length"] == 0, "nothing written"


def test_the_log_of_the_poll_holds_no_secret(leaky: Leaky) -> None:
    entries = [json.loads(line) for line in leaky.poll_log.splitlines()]
    for secret in (USER, PASSWORD, TOKEN):
        assert secret not in leaky.poll_log
    # The lines are there, with the URL redacted rather than left out.
    (retrying,) = [entry for entry in entries if entry["message"] == "fetch failed, retrying"]
    assert retrying["url"].endswith("/feed.xml?token=***")
    assert retrying["url"].startswith("http://***@127.0.0.1:")
    (run,) = [entry for entry in entries if entry["message"] == "source run"]
    assert "http://***@127.0.0.1:" in run["error"]
    assert "503" in run["error"]
    requests = [entry for entry in entries if entry["logger"] == "httpx"]
    assert len(requests) == 2, "httpx's own lines go through the same formatter"


@pytest.mark.parametrize("role", ["viewer", "collector", "analyst"])
def test_run_errors_are_redacted_for_anyone_but_an_admin(leaky: Leaky, role: str) -> None:
    (run,) = _runs(leaky)
    (seen,) = as_seen_by(Principal(name=role, role=role), [RunOut.model_validate(run)])
    assert seen.error is not None
    for secret in (USER, PASSWORD, TOKEN):
        assert secret not in seen.error
    assert "/feed.xml?token=***" in seen.error
    admin = Principal(name="admin", role="admin")
    assert as_seen_by(admin, [RunOut.model_validate(run)])[0].error == run["error"]
