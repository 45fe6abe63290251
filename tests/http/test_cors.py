"""Dashboards on other origins read the public API; only listed origins may write."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.clock import FrozenClock
from app.config import Settings
from app.db import Database
from app.main import create_app
from tests.factories import PLEDGE_ID, Keys, evidence_body, make_pledge, pledge_body

API = "/api/v1"
DASHBOARD = "https://dashboard.example.net"
ADMIN_ORIGIN = "https://admin.example.org"
EXPOSED = {
    "etag",
    "location",
    "retry-after",
    "ratelimit",
    "ratelimit-policy",
    "x-request-id",
    "x-pledgewatch-ledger-length",
    "x-pledgewatch-ledger-head",
}


@pytest.fixture
def cors_client(settings: Settings, clock: FrozenClock, database: Database) -> Iterator[TestClient]:
    listed = settings.model_copy(
        update={"cors_write_origins": f"{ADMIN_ORIGIN}, https://ops.example.org"}
    )
    app = create_app(listed, clock=clock, database=database)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def exposed(response: httpx.Response) -> set[str]:
    value = response.headers.get("access-control-expose-headers", "")
    return {name.strip().lower() for name in value.split(",") if name.strip()}


def allow_headers(response: httpx.Response) -> list[str]:
    return [name for name in response.headers if name.startswith("access-control-allow-")]


def test_a_dashboard_on_another_origin_reads_status_and_its_etag(
    cors_client: TestClient, keys: Keys
) -> None:
    make_pledge(cors_client, keys)
    first = cors_client.get(f"{API}/status", headers={"Origin": DASHBOARD})
    # The poll that follows is answered before routing (the fast path): the same headers.
    poll = cors_client.get(
        f"{API}/status", headers={"Origin": DASHBOARD, "If-None-Match": first.headers["etag"]}
    )
    assert first.status_code == 200
    assert poll.status_code == 304
    for response in (first, poll):
        assert response.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in response.headers
        assert exposed(response) >= EXPOSED, response.headers


def test_every_public_read_is_open_to_every_origin(cors_client: TestClient, keys: Keys) -> None:
    make_pledge(cors_client, keys)
    item = cors_client.post(
        f"{API}/pledges/{PLEDGE_ID}/evidence",
        json=evidence_body(stance="supports"),
        headers=keys["collector"],
    )
    assert item.status_code == 201, item.text
    paths = [
        f"{API}/status",
        f"{API}/status/{PLEDGE_ID}/badge.svg",
        f"{API}/pledges",
        f"{API}/pledges/{PLEDGE_ID}",
        f"{API}/pledges/{PLEDGE_ID}/evidence",
        f"{API}/pledges/{PLEDGE_ID}/history",
        f"{API}/evidence/{item.json()['id']}",
        f"{API}/ledger",
        f"{API}/ledger/verify",
        "/openapi.json",
    ]
    for path in paths:
        response = cors_client.get(path, headers={"Origin": DASHBOARD})
        assert response.status_code == 200, (path, response.text)
        assert response.headers["access-control-allow-origin"] == "*", path
        # The same without an Origin, so that no cache keeps a copy without it.
        plain = cors_client.get(path)
        assert plain.headers["access-control-allow-origin"] == "*", path


def test_a_preflight_for_a_public_read_is_answered(cors_client: TestClient) -> None:
    response = cors_client.options(
        f"{API}/events",
        headers={
            "Origin": DASHBOARD,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "last-event-id, authorization",
        },
    )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "*"
    assert "GET" in response.headers["access-control-allow-methods"]
    allowed = {
        h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")
    }
    assert {
        "authorization",
        "content-type",
        "if-none-match",
        "if-match",
        "idempotency-key",
        "last-event-id",
    } <= allowed
    assert int(response.headers["access-control-max-age"]) > 0
    assert response.headers["x-content-type-options"] == "nosniff"


def test_a_write_preflight_from_an_unlisted_origin_gets_no_allow_headers(
    cors_client: TestClient,
) -> None:
    for method, path in [("POST", f"{API}/pledges"), ("GET", f"{API}/sources")]:
        response = cors_client.options(
            path,
            headers={
                "Origin": DASHBOARD,
                "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert response.status_code == 403, (method, path)
        assert allow_headers(response) == [], response.headers


def test_a_listed_origin_may_write(cors_client: TestClient, keys: Keys) -> None:
    preflight = cors_client.options(
        f"{API}/pledges",
        headers={
            "Origin": ADMIN_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == ADMIN_ORIGIN
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "Origin" in preflight.headers["vary"]

    created = cors_client.post(
        f"{API}/pledges", json=pledge_body(), headers={**keys["analyst"], "Origin": ADMIN_ORIGIN}
    )
    assert created.status_code == 201
    assert created.headers["access-control-allow-origin"] == ADMIN_ORIGIN
    assert "Origin" in created.headers["vary"]
    assert "location" in exposed(created)


def test_an_unlisted_origins_write_answer_is_not_readable(
    cors_client: TestClient, keys: Keys
) -> None:
    response = cors_client.post(
        f"{API}/pledges", json=pledge_body(), headers={**keys["analyst"], "Origin": DASHBOARD}
    )
    assert "access-control-allow-origin" not in response.headers
    sources = cors_client.get(f"{API}/sources", headers={**keys["admin"], "Origin": DASHBOARD})
    assert sources.status_code == 200
    assert "access-control-allow-origin" not in sources.headers


def test_without_listed_origins_no_write_is_allowed_cross_origin(client: TestClient) -> None:
    response = client.options(
        f"{API}/pledges",
        headers={"Origin": ADMIN_ORIGIN, "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code == 403
    assert allow_headers(response) == []


def test_an_options_request_that_is_no_preflight_is_still_405(cors_client: TestClient) -> None:
    assert cors_client.options(f"{API}/pledges").status_code == 405


@pytest.mark.parametrize("origins", ["*", "https://admin.example.org/path", "admin.example.org"])
def test_write_origins_must_be_origins(origins: str) -> None:
    with pytest.raises(ValidationError, match="cors_write_origins"):
        Settings(cors_write_origins=origins)
