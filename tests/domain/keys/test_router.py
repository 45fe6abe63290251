"""The /keys API (admin only), on both databases: create, list, revoke, rotate, expiry."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from app.clock import FrozenClock
from app.db import Database
from app.domain.keys.directory import KeyDirectory
from app.domain.keys.service import get_key
from tests.factories import Keys, invalid_fields, problem

API = "/api/v1"
SHOWN = {
    "name",
    "role",
    "state",
    "created_at",
    "expires_at",
    "rotated_at",
    "revoked_at",
    "last_used_at",
}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def create(client: TestClient, keys: Keys, **body: Any) -> dict[str, Any]:
    response = client.post(f"{API}/keys", json=body, headers=keys["admin"])
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    created: dict[str, Any] = response.json()
    assert set(created) == SHOWN | {"secret"}
    return created


def whoami(client: TestClient, secret: str) -> int:
    """The status of a request that needs a valid key of any role (a public read with one)."""
    status: int = client.get(f"{API}/pledges", headers=bearer(secret)).status_code
    return status


def test_an_admin_creates_a_key_that_works_at_once_and_is_shown_once(
    client: TestClient, keys: Keys, clock: FrozenClock
) -> None:
    response = client.post(
        f"{API}/keys",
        json={"name": "ci job/1", "role": "collector", "expires_in": "90d"},
        headers=keys["admin"],
    )
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["location"] == f"{API}/keys/ci%20job%2F1"
    created = response.json()
    assert created["name"] == "ci job/1"
    assert created["role"] == "collector"
    assert created["state"] == "active"
    assert created["secret"].startswith("pw_")
    assert at(created["expires_at"]) == clock.now() + timedelta(days=90)
    assert whoami(client, created["secret"]) == 200

    shown = client.get(response.headers["location"], headers=keys["admin"])
    assert shown.status_code == 200, shown.text
    assert shown.json() == {k: v for k, v in created.items() if k != "secret"}


def test_the_list_is_paginated_and_never_shows_a_secret_or_a_hash(
    client: TestClient, keys: Keys, database: Database
) -> None:
    secret = create(client, keys, name="zeta", role="viewer")["secret"]
    with database.transaction(write=False) as session:
        key_hash = get_key(session, "zeta").key_hash
    names: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get(f"{API}/keys", params=params, headers=keys["admin"])
        assert page.status_code == 200, page.text
        assert set(page.json()) == {"items", "next_cursor"}
        assert secret not in page.text
        assert key_hash not in page.text
        for item in page.json()["items"]:
            assert set(item) == SHOWN
            names.append(item["name"])
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert names == ["admin", "analyst", "collector", "viewer", "zeta"]
    invalid = client.get(f"{API}/keys", params={"cursor": "bm9wZQ"}, headers=keys["admin"])
    assert invalid_fields(invalid) == ["cursor"]


@pytest.mark.parametrize("who", [None, "viewer", "collector", "analyst"])
def test_only_an_admin_manages_keys(client: TestClient, keys: Keys, who: str | None) -> None:
    headers = keys[who] if who else {}
    status = 401 if who is None else 403
    problem(client.get(f"{API}/keys", headers=headers), status)
    problem(
        client.post(f"{API}/keys", json={"name": "x", "role": "admin"}, headers=headers), status
    )
    problem(client.post(f"{API}/keys/viewer/revoke", headers=headers), status)
    problem(client.post(f"{API}/keys/viewer/rotate", headers=headers), status)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "role": "root"}, "role"),
        ({"name": "", "role": "viewer"}, "name"),
        ({"name": "tab\there", "role": "viewer"}, "name"),
        ({"name": "x" * 101, "role": "viewer"}, "name"),
        ({"name": "x", "role": "viewer", "expires_in": "soon"}, "expires_in"),
        ({"name": "x", "role": "viewer", "expires_in": "0d"}, "expires_in"),
        ({"name": "x", "role": "viewer", "expires_in": 90}, "expires_in"),
        ({"name": "x", "role": "viewer", "expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
        (
            {"name": "x", "role": "viewer", "expires_in": "1d", "expires_at": "2030-01-01"},
            "expires_at",
        ),
        ({"name": "x", "role": "viewer", "secret": "pw_mine"}, "secret"),
    ],
)
def test_bad_input_is_a_problem_naming_the_field(
    client: TestClient, keys: Keys, body: dict[str, Any], field: str
) -> None:
    response = client.post(f"{API}/keys", json=body, headers=keys["admin"])
    assert field in invalid_fields(response)
    listed = client.get(f"{API}/keys", headers=keys["admin"]).json()["items"]
    assert [item["name"] for item in listed] == ["admin", "analyst", "collector", "viewer"]


def test_a_name_in_use_is_a_409_and_the_first_key_is_untouched(
    client: TestClient, keys: Keys
) -> None:
    first = create(client, keys, name="job", role="collector")
    again = client.post(f"{API}/keys", json={"name": "job", "role": "admin"}, headers=keys["admin"])
    assert "job" in problem(again, 409)["detail"]
    assert client.get(f"{API}/keys/job", headers=keys["admin"]).json()["role"] == "collector"
    assert whoami(client, first["secret"]) == 200


def test_a_revoked_key_is_a_401_at_once_and_revoking_again_changes_nothing(
    client: TestClient, keys: Keys, clock: FrozenClock
) -> None:
    secret = create(client, keys, name="job", role="collector")["secret"]
    assert whoami(client, secret) == 200  # its answer is now cached in this process

    revoked = client.post(f"{API}/keys/job/revoke", headers=keys["admin"])
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["state"] == "revoked"
    problem(client.get(f"{API}/pledges", headers=bearer(secret)), 401)

    clock.advance(timedelta(hours=1))
    again = client.post(f"{API}/keys/job/revoke", headers=keys["admin"])
    assert again.status_code == 200
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]
    problem(client.post(f"{API}/keys/nobody/revoke", headers=keys["admin"]), 404)


def test_an_admin_cannot_revoke_the_key_it_is_using(client: TestClient, keys: Keys) -> None:
    refused = problem(client.post(f"{API}/keys/admin/revoke", headers=keys["admin"]), 409)
    assert "itself" in refused["detail"]
    assert whoami(client, keys["admin"]["Authorization"].removeprefix("Bearer ")) == 200
    # Another admin may: the service always keeps the admin who revoked.
    other = create(client, keys, name="ops", role="admin")["secret"]
    assert client.post(f"{API}/keys/admin/revoke", headers=bearer(other)).status_code == 200
    problem(client.get(f"{API}/keys", headers=keys["admin"]), 401)


def test_rotation_answers_a_new_secret_once_and_the_old_is_a_401_at_once(
    client: TestClient, keys: Keys, clock: FrozenClock
) -> None:
    old = create(client, keys, name="job", role="analyst", expires_in="30d")["secret"]
    assert whoami(client, old) == 200
    clock.advance(timedelta(days=10))

    rotated = client.post(f"{API}/keys/job/rotate", headers=keys["admin"])
    assert rotated.status_code == 200, rotated.text
    assert rotated.headers["cache-control"] == "no-store"
    new = rotated.json()["secret"]
    assert new != old
    assert rotated.json()["role"] == "analyst"
    assert at(rotated.json()["expires_at"]) == clock.now() + timedelta(days=30), (
        "a 30-day key stays a 30-day key"
    )
    problem(client.get(f"{API}/pledges", headers=bearer(old)), 401)
    assert whoami(client, new) == 200

    chosen = client.post(
        f"{API}/keys/job/rotate", json={"expires_in": "12h"}, headers=keys["admin"]
    )
    assert chosen.status_code == 200, chosen.text
    assert at(chosen.json()["expires_at"]) == clock.now() + timedelta(hours=12)
    assert "expires_in" in invalid_fields(
        client.post(f"{API}/keys/job/rotate", json={"expires_in": "1y"}, headers=keys["admin"])
    )
    problem(client.post(f"{API}/keys/nobody/rotate", headers=keys["admin"]), 404)
    client.post(f"{API}/keys/job/revoke", headers=keys["admin"])
    problem(client.post(f"{API}/keys/job/rotate", headers=keys["admin"]), 409)


def test_an_admin_may_rotate_its_own_key(client: TestClient, keys: Keys) -> None:
    rotated = client.post(f"{API}/keys/admin/rotate", headers=keys["admin"])
    assert rotated.status_code == 200, rotated.text
    problem(client.get(f"{API}/keys", headers=keys["admin"]), 401)
    assert client.get(f"{API}/keys", headers=bearer(rotated.json()["secret"])).status_code == 200


def test_an_expired_key_is_a_401_even_while_its_answer_is_cached(
    client: TestClient, keys: Keys, clock: FrozenClock
) -> None:
    secret = create(client, keys, name="temp", role="collector", expires_in="30m")["secret"]
    assert whoami(client, secret) == 200
    clock.advance(timedelta(minutes=30))
    body = problem(client.get(f"{API}/pledges", headers=bearer(secret)), 401)
    assert "expired" in body["detail"]
    listed = client.get(f"{API}/keys/temp", headers=keys["admin"]).json()
    assert listed["state"] == "expired"


def test_last_use_is_recorded_without_a_write_per_request(
    client: TestClient, keys: Keys, clock: FrozenClock
) -> None:
    secret = create(client, keys, name="poller", role="viewer")["secret"]
    for _ in range(3):
        assert whoami(client, secret) == 200
    assert client.get(f"{API}/keys/poller", headers=keys["admin"]).json()["last_used_at"] is None
    directory: KeyDirectory = client.app.state.keys  # type: ignore[attr-defined]
    assert client.portal is not None
    client.portal.call(directory.flush)
    shown = client.get(f"{API}/keys/poller", headers=keys["admin"]).json()
    assert at(shown["last_used_at"]) == clock.now()


def test_a_name_with_slashes_is_read_revoked_and_rotated_at_its_urls(
    client: TestClient, keys: Keys
) -> None:
    for name in ("team/ci/job", "team/rotate/x", "a/b"):
        create(client, keys, name=name, role="viewer")
        url = f"{API}/keys/{quote(name, safe='')}"
        assert client.get(url, headers=keys["admin"]).json()["name"] == name
        rotated = client.post(f"{url}/rotate", headers=keys["admin"])
        assert (rotated.status_code, rotated.json()["name"]) == (200, name)
        revoked = client.post(f"{url}/revoke", headers=keys["admin"])
        assert (revoked.status_code, revoked.json()["name"]) == (200, name)
    # The actions' URLs belong to the actions: GET on them is not a key's page.
    assert client.get(f"{API}/keys/a/b/revoke", headers=keys["admin"]).status_code == 405
