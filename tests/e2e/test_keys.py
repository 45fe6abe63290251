"""Revocation and rotation across processes: two servers on one database, both databases.

Each server caches who a key belongs to for a couple of seconds. The server that revokes
or rotates a key refuses the old secret at once; the other must do so within a few
seconds, whether the change came through the API or the command line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import running_server
from tests.factories import Keys

pytestmark = pytest.mark.slow

API = "/api/v1"
# Well past the caches' 2 s: a server that has not caught up by then never will.
DEADLINE_SECONDS = 15.0


@pytest.fixture
def two_servers(db_url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    with (
        running_server(db_url, tmp_path / "a.log") as first,
        running_server(db_url, tmp_path / "b.log") as second,
    ):
        yield first, second


def _status(base: str, secret: str) -> int:
    """A public read made with the key: 200 while the key is good, 401 once it is not."""
    response = httpx.get(
        f"{base}{API}/pledges", headers={"Authorization": f"Bearer {secret}"}, timeout=10
    )
    return response.status_code


def _seconds_until_refused(base: str, secret: str) -> float:
    started = time.monotonic()
    while True:
        status = _status(base, secret)
        if status == 401:
            return time.monotonic() - started
        assert status == 200, status
        if time.monotonic() - started > DEADLINE_SECONDS:
            pytest.fail(f"{base} still accepts the key after {DEADLINE_SECONDS} s")
        time.sleep(0.05)


def test_a_key_revoked_or_rotated_through_one_server_is_refused_by_the_other(
    two_servers: tuple[str, str], keys: Keys
) -> None:
    first, second = two_servers
    secrets = {}
    for name in ("revoked", "rotated"):
        created = httpx.post(
            f"{first}{API}/keys", json={"name": name, "role": "collector"}, headers=keys["admin"]
        )
        assert created.status_code == 201, created.text
        secrets[name] = created.json()["secret"]
        # Both servers now hold the key's answer in their caches.
        assert _status(first, secrets[name]) == _status(second, secrets[name]) == 200

    revoked = httpx.post(f"{first}{API}/keys/revoked/revoke", headers=keys["admin"])
    assert revoked.status_code == 200, revoked.text
    assert _status(first, secrets["revoked"]) == 401, "at once where it was revoked"
    _seconds_until_refused(second, secrets["revoked"])

    rotated = httpx.post(f"{first}{API}/keys/rotated/rotate", headers=keys["admin"])
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["secret"]
    assert _status(first, secrets["rotated"]) == 401, "at once where it was rotated"
    assert _status(second, new) == 200, "the new key works everywhere at once"
    _seconds_until_refused(second, secrets["rotated"])


def test_a_key_revoked_from_the_command_line_is_refused_by_every_server(
    two_servers: tuple[str, str], keys: Keys, db_url: str
) -> None:
    secret = keys["collector"]["Authorization"].removeprefix("Bearer ")
    for base in two_servers:
        assert _status(base, secret) == 200

    env = {**os.environ, "PLEDGEWATCH_DATABASE_URL": db_url}
    revoked = subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "revoke", "collector"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert revoked.returncode == 0, revoked.stderr
    for base in two_servers:
        _seconds_until_refused(base, secret)
