"""The /webhooks API (admin only), on both databases: subscriptions, secrets, the SSRF guard."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.clock import FrozenClock
from app.config import Settings
from app.db import Database
from app.domain.events.service import EVENT_KINDS
from app.domain.ledger.models import LedgerEntry
from app.domain.ledger.service import verify
from app.domain.webhooks.models import Webhook
from app.main import create_app
from tests.factories import Keys, invalid_fields, problem

API = "/api/v1"
# A public address, given literally so that no test depends on DNS; nothing is sent to it.
PUBLIC_URL = "https://8.8.8.8/hooks/pledgewatch"


def create(client: TestClient, keys: Keys, **body: Any) -> dict[str, Any]:
    response = client.post(
        f"{API}/webhooks", json={"url": PUBLIC_URL, **body}, headers=keys["admin"]
    )
    assert response.status_code == 201, response.text
    assert response.headers["location"] == f"{API}/webhooks/{response.json()['id']}"
    created: dict[str, Any] = response.json()
    return created


def test_create_read_list_delete(client: TestClient, keys: Keys, clock: FrozenClock) -> None:
    admin = keys["admin"]
    created = create(client, keys, description="The situation room")
    assert created["url"] == PUBLIC_URL
    assert created["events"] == list(EVENT_KINDS)
    assert created["description"] == "The situation room"
    assert created["created_by"] == "key:admin"
    assert created["created_at"].startswith(clock.now().date().isoformat())
    # A strong secret is made when none is given, and shown this once, in whsec_ form.
    assert created["secret"].startswith("whsec_")
    assert len(base64.b64decode(created["secret"].removeprefix("whsec_"))) >= 40

    shown = {key: value for key, value in created.items() if key != "secret"}
    assert client.get(f"{API}/webhooks/{created['id']}", headers=admin).json() == shown
    listed = client.get(f"{API}/webhooks", headers=admin).json()
    assert listed == {"items": [shown], "next_cursor": None}
    deliveries = client.get(f"{API}/webhooks/{created['id']}/deliveries", headers=admin)
    assert deliveries.json() == {"items": [], "next_cursor": None}

    assert client.delete(f"{API}/webhooks/{created['id']}", headers=admin).status_code == 204
    problem(client.get(f"{API}/webhooks/{created['id']}", headers=admin), 404)
    problem(client.delete(f"{API}/webhooks/{created['id']}", headers=admin), 404)
    assert client.get(f"{API}/webhooks", headers=admin).json()["items"] == []


def test_a_given_secret_and_events_are_kept(
    client: TestClient, keys: Keys, database: Database
) -> None:
    secret = "correct horse battery staple"
    created = create(client, keys, secret=secret, events=["proposal.created", "status.changed"])
    # Shown in whsec_ form: the base64 of the secret's UTF-8, the key of both signatures.
    assert created["secret"] == "whsec_Y29ycmVjdCBob3JzZSBiYXR0ZXJ5IHN0YXBsZQ=="
    assert base64.b64decode(created["secret"].removeprefix("whsec_")) == secret.encode()
    assert created["events"] == ["proposal.created", "status.changed"]
    with database.transaction(write=False) as session:
        stored = session.get(Webhook, created["id"])
        assert stored is not None
        assert stored.secret == secret


@pytest.mark.parametrize(
    "text", ["a secret kept from before, ünïcode", "秘" * 128, "sixteen chars!!!"]
)
def test_a_whsec_secret_is_taken_as_the_key_it_holds(
    client: TestClient, keys: Keys, database: Database, text: str
) -> None:
    shown = "whsec_" + base64.b64encode(text.encode()).decode()
    created = create(client, keys, secret=shown)
    assert created["secret"] == shown, "the same whsec_ comes back"
    with database.transaction(write=False) as session:
        stored = session.get(Webhook, created["id"])
        assert stored is not None
        assert stored.secret == text
    # Without its padding, as Standard Webhooks libraries accept it, it is the same secret.
    again = create(client, keys, secret=shown.rstrip("="))
    assert again["secret"] == shown


def test_the_answer_holding_the_secret_is_never_cached(client: TestClient, keys: Keys) -> None:
    response = client.post(f"{API}/webhooks", json={"url": PUBLIC_URL}, headers=keys["admin"])
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"


def test_creating_and_deleting_are_in_the_ledger_and_it_verifies(
    client: TestClient, keys: Keys, database: Database
) -> None:
    created = create(client, keys)
    assert (
        client.delete(f"{API}/webhooks/{created['id']}", headers=keys["admin"]).status_code == 204
    )
    with database.transaction(write=False) as session:
        entries = session.execute(
            select(LedgerEntry.kind, LedgerEntry.subject).order_by(LedgerEntry.seq)
        ).all()
        assert [tuple(entry) for entry in entries][-2:] == [
            ("webhook.created", f"webhook:{created['id']}"),
            ("webhook.deleted", f"webhook:{created['id']}"),
        ]
        assert verify(session).ok


def test_the_list_pages(client: TestClient, keys: Keys) -> None:
    ids = [create(client, keys)["id"] for _ in range(3)]
    first = client.get(f"{API}/webhooks", params={"limit": 2}, headers=keys["admin"]).json()
    assert [item["id"] for item in first["items"]] == ids[:2]
    rest = client.get(
        f"{API}/webhooks",
        params={"limit": 2, "cursor": first["next_cursor"]},
        headers=keys["admin"],
    ).json()
    assert [item["id"] for item in rest["items"]] == ids[2:]
    assert rest["next_cursor"] is None


BAD_INPUT: list[tuple[dict[str, Any], str]] = [
    ({"url": "ftp://hooks.example.org/x"}, "url"),
    ({"url": "not a url"}, "url"),
    ({"url": None}, "url"),
    ({"url": "https://" + "a" * 2100 + ".org/"}, "url"),
    # Host names that the resolver itself refuses (a label over 63 characters, an empty one).
    ({"url": "https://" + "a" * 100 + ".org/"}, "url"),
    ({"url": "https://hooks..example.org/"}, "url"),
    ({"events": []}, "events"),
    ({"events": ["pledge.created"]}, "events[0]"),
    ({"events": ["status.changed", "status.changed"]}, "events"),
    ({"events": "status.changed"}, "events"),
    ({"events": [7]}, "events[0]"),
    ({"secret": "too short"}, "secret"),
    ({"secret": "x" * 129}, "secret"),
    ({"secret": " " * 20}, "secret"),
    ({"secret": 1234567890123456789}, "secret"),
    # A whsec_ secret must hold UTF-8 text of a secret's length, in base64.
    ({"secret": "whsec_" + base64.b64encode(bytes(range(128, 160))).decode()}, "secret"),
    ({"secret": "whsec_" + base64.b64encode(b"short").decode()}, "secret"),
    ({"secret": "whsec_" + base64.b64encode(b"\x00" * 20).decode()}, "secret"),
    ({"secret": "whsec_not*base64*at*all*"}, "secret"),
    ({"secret": "whsec_" + base64.b64encode(("x" * 129).encode()).decode()}, "secret"),
    ({"secret": "whsec_" + "A" * 700}, "secret"),
    ({"description": 5}, "description"),
    ({"description": "nul \x00 inside"}, "description"),
    ({"colour": "blue"}, "colour"),
]


def test_bad_input_is_a_422_naming_the_field(client: TestClient, keys: Keys) -> None:
    for overrides, field in BAD_INPUT:
        response = client.post(
            f"{API}/webhooks", json={"url": PUBLIC_URL, **overrides}, headers=keys["admin"]
        )
        assert field in invalid_fields(response), overrides
    assert client.get(f"{API}/webhooks", headers=keys["admin"]).json()["items"] == []


def test_a_missing_url_is_a_422_naming_it(client: TestClient, keys: Keys) -> None:
    response = client.post(f"{API}/webhooks", json={}, headers=keys["admin"])
    assert "url" in invalid_fields(response)


def test_bad_paths_and_queries_are_422s(client: TestClient, keys: Keys) -> None:
    for path, params, field in [
        ("/webhooks/abc", {}, "webhook_id"),
        ("/webhooks/0", {}, "webhook_id"),
        ("/webhooks/99999999999", {}, "webhook_id"),
        ("/webhooks", {"cursor": "bm90LW91cnM"}, "cursor"),
        ("/webhooks", {"limit": 501}, "limit"),
    ]:
        response = client.get(f"{API}{path}", params=params, headers=keys["admin"])
        assert field in invalid_fields(response), path


def test_a_tampered_deliveries_cursor_is_a_422(client: TestClient, keys: Keys) -> None:
    from app.pagination import encode_cursor

    created = create(client, keys)
    for cursor in (encode_cursor(2**70), encode_cursor("seven"), encode_cursor(-1)):
        response = client.get(
            f"{API}/webhooks/{created['id']}/deliveries",
            params={"cursor": cursor},
            headers=keys["admin"],
        )
        assert invalid_fields(response) == ["cursor"]


def test_unknown_webhooks_are_404s(client: TestClient, keys: Keys) -> None:
    problem(client.get(f"{API}/webhooks/41", headers=keys["admin"]), 404)
    problem(client.get(f"{API}/webhooks/41/deliveries", headers=keys["admin"]), 404)
    problem(client.delete(f"{API}/webhooks/41", headers=keys["admin"]), 404)


def test_only_admins_may_touch_webhooks(client: TestClient, keys: Keys) -> None:
    create(client, keys)
    for method, path in [
        ("GET", "/webhooks"),
        ("POST", "/webhooks"),
        ("GET", "/webhooks/1"),
        ("DELETE", "/webhooks/1"),
        ("GET", "/webhooks/1/deliveries"),
    ]:
        body = {"url": PUBLIC_URL} if method == "POST" else None
        anonymous = client.request(method, f"{API}{path}", json=body)
        problem(anonymous, 401)
        assert anonymous.headers["www-authenticate"] == "Bearer"
        for role in ("viewer", "collector", "analyst"):
            problem(client.request(method, f"{API}{path}", json=body, headers=keys[role]), 403)
    assert len(client.get(f"{API}/webhooks", headers=keys["admin"]).json()["items"]) == 1


@pytest.fixture
def guarded_client(db_url: str, clock: FrozenClock, database: Database) -> Iterator[TestClient]:
    """The app as deployed: private hosts are not allowed."""
    settings = Settings(
        database_url=db_url,
        log_json=False,
        log_level="WARNING",
        scheduler_enabled=False,
        allow_private_source_hosts=False,
    )
    with TestClient(create_app(settings, clock=clock, database=database)) as client:
        yield client


def test_private_targets_are_refused_at_creation(guarded_client: TestClient, keys: Keys) -> None:
    for url in [
        "http://127.0.0.1:8000/hook",
        "http://localhost/hook",
        "http://[::1]/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/hook",
    ]:
        response = guarded_client.post(f"{API}/webhooks", json={"url": url}, headers=keys["admin"])
        body = problem(response, 422, "url")
        assert "cannot receive webhooks" in body["detail"], url
    assert guarded_client.get(f"{API}/webhooks", headers=keys["admin"]).json()["items"] == []


def test_a_public_target_is_accepted_when_private_hosts_are_not(
    guarded_client: TestClient, keys: Keys
) -> None:
    response = guarded_client.post(
        f"{API}/webhooks", json={"url": PUBLIC_URL}, headers=keys["admin"]
    )
    assert response.status_code == 201, response.text


def test_the_events_offered_are_those_of_the_event_stream(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()["components"]["schemas"]["WebhookCreate"]
    assert schema["properties"]["events"]["items"]["enum"] == list(EVENT_KINDS)
