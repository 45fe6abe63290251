"""Security headers on every answer, whoever makes it; the docs pages' own policy."""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import Response
from fastapi.testclient import TestClient

from app.clock import FrozenClock
from app.config import Settings
from app.db import Database
from app.http.security import API_POLICY, script_hashes
from app.main import create_app
from tests.factories import PLEDGE_ID, Keys, make_pledge, pledge_body

API = "/api/v1"
SECURITY = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


def assert_secured(response: httpx.Response, policy: str = API_POLICY) -> None:
    for name, value in {**SECURITY, "content-security-policy": policy}.items():
        assert response.headers.get_list(name) == [value], (response.url, name, response.headers)


@pytest.fixture
def app_client(settings: Settings, clock: FrozenClock, database: Database) -> Iterator[TestClient]:
    """A client of an app with test routes that make answers the routers do not."""
    app = create_app(settings, clock=clock, database=database)

    def boom() -> None:
        raise RuntimeError("kaboom")

    def own_headers() -> Response:
        return Response(
            b"{}",
            media_type="application/json",
            headers={
                "Cache-Control": "no-store",
                "Content-Security-Policy": "sandbox",
                "X-Frame-Options": "SAMEORIGIN",
            },
        )

    app.add_api_route("/boom-for-test", boom)
    app.add_api_route("/own-headers-for-test", own_headers)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def test_every_kind_of_answer_carries_the_security_headers(
    app_client: TestClient, keys: Keys
) -> None:
    client = app_client
    make_pledge(client, keys)
    created = client.post(f"{API}/pledges", json=pledge_body(id="other"), headers=keys["admin"])
    built = client.get(f"{API}/status")
    # The revision is known, so the next polls are answered before routing (StatusFastPath).
    assert client.app.state.revision_watch.current() is not None  # type: ignore[attr-defined]
    answers = {
        "200": client.get(f"{API}/pledges"),
        "201": created,
        "fast-path 200": client.get(f"{API}/status"),
        "fast-path 304": client.get(
            f"{API}/status", headers={"If-None-Match": built.headers["etag"]}
        ),
        "routed 304": client.get(
            f"{API}/pledges/{PLEDGE_ID}",
            headers={"If-None-Match": client.get(f"{API}/pledges/{PLEDGE_ID}").headers["etag"]},
        ),
        "401": client.post(f"{API}/pledges", json=pledge_body()),
        "404": client.get(f"{API}/pledges/nobody"),
        "405": client.delete(f"{API}/status"),
        "413": client.post(f"{API}/pledges", content=b"x" * (1024 * 1024 + 1)),
        "422": client.get(f"{API}/status", params={"as_of": "not a date"}),
        "500": client.get("/boom-for-test"),
        "healthz": client.get("/healthz"),
        "metrics": client.get("/metrics"),
        "openapi": client.get("/openapi.json"),
    }
    assert answers["fast-path 304"].status_code == 304
    assert answers["routed 304"].status_code == 304
    assert answers["500"].status_code == 500
    for name, response in answers.items():
        assert response.status_code < 500 or name == "500", (name, response.text)
        assert_secured(response)


def test_a_routes_own_headers_are_kept_not_replaced(app_client: TestClient) -> None:
    response = app_client.get("/own-headers-for-test")
    assert response.headers.get_list("cache-control") == ["no-store"]
    assert response.headers.get_list("content-security-policy") == ["sandbox"]
    assert response.headers.get_list("x-frame-options") == ["SAMEORIGIN"]
    # The ones it does not set are added.
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


def test_the_badge_keeps_its_own_policy_once(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    badge = client.get(f"{API}/status/{PLEDGE_ID}/badge.svg")
    assert badge.status_code == 200
    assert badge.headers.get_list("content-security-policy") == ["default-src 'none'"]
    assert badge.headers.get_list("x-content-type-options") == ["nosniff"]
    assert badge.headers["x-frame-options"] == "DENY"


def directive(policy: str, name: str) -> list[str]:
    for part in policy.split(";"):
        words = part.split()
        if words and words[0] == name:
            return words[1:]
    raise AssertionError(f"no {name} in {policy}")


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/docs/oauth2-redirect"])
def test_the_docs_pages_policy_allows_what_the_page_loads_and_no_more(
    client: TestClient, path: str
) -> None:
    page = client.get(path)
    assert page.status_code == 200
    policy = page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert directive(policy, "default-src") == ["'none'"]
    assert directive(policy, "frame-ancestors") == ["'none'"]
    scripts = directive(policy, "script-src")
    assert "'unsafe-inline'" not in scripts
    assert "'unsafe-eval'" not in scripts
    # Each inline script of the page as served runs (by its hash), each external one loads.
    for inline in script_hashes(page.text):
        assert inline in scripts, (path, inline)
    for source in re.findall(r'<script src="([^"]+)"', page.text):
        assert origin_of(source) in scripts, source
    for sheet in re.findall(r'<link[^>]*rel="stylesheet"[^>]*>', page.text):
        href = re.search(r'href="([^"]+)"', sheet)
        assert href is not None
        assert origin_of(href.group(1)) in directive(policy, "style-src"), sheet
    # The OpenAPI document (and "try it out") are fetched from this origin.
    assert "'self'" in directive(policy, "connect-src")


def test_an_injected_inline_script_would_not_match_the_docs_policy(client: TestClient) -> None:
    policy = client.get("/docs").headers["content-security-policy"]
    [injected] = script_hashes("<script>alert(document.domain)</script>")
    assert injected not in directive(policy, "script-src")
