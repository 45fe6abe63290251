"""PostgreSQL goes away under a running server and comes back: 503s meanwhile, then service.

The machine's PostgreSQL is shared, so it is never stopped here: the server reaches its
own scratch database through a proxy in this process (bench/faults_proxy.py), and the
proxy is cut (every connection dropped, new ones refused) and restored. The server is
never restarted: its pool must drop the broken connections by itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from app.clock import SystemClock
from app.db import Database
from app.domain.keys.service import create_key
from app.migrate import upgrade
from bench.faults_proxy import CuttableProxy, cuttable_proxy
from tests.conftest import postgres_database_name, scratch_postgres
from tests.e2e.conftest import running_server
from tests.factories import PROBLEM, pledge_body

pytestmark = pytest.mark.slow
API = "/api/v1"


@pytest.fixture
def proxied_server(
    postgres_template_url: str, tmp_path: Path
) -> Iterator[tuple[str, CuttableProxy, dict[str, str], Path]]:
    """A server on a scratch database behind a proxy: (base URL, proxy, auth header, log)."""
    with scratch_postgres(postgres_database_name("outage")) as direct_url:
        upgrade(direct_url)
        database = Database(direct_url, pool_size=1)
        try:
            with database.transaction() as session:
                now = SystemClock().now()
                secret = create_key(session, name="analyst", role="analyst", now=now)
        finally:
            database.dispose()
        target = make_url(direct_url)
        with cuttable_proxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
            proxied = target.set(host="127.0.0.1", port=proxy.port)
            log_path = tmp_path / "server.log"
            with running_server(
                proxied.render_as_string(hide_password=False), log_path
            ) as base_url:
                yield base_url, proxy, {"Authorization": f"Bearer {secret}"}, log_path


def _assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, (response.request.url, response.text)
    assert response.headers["content-type"] == PROBLEM
    assert int(response.headers["retry-after"]) > 0
    assert response.json()["status"] == 503


def _until_answered(client: httpx.Client, path: str, deadline: float) -> httpx.Response:
    """GET ``path`` until it is not a 503 (the pool reconnecting), or the deadline passes."""
    while True:
        response = client.get(path)
        if response.status_code != 503 or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


def test_postgresql_cut_and_restored_under_a_running_server(
    proxied_server: tuple[str, CuttableProxy, dict[str, str], Path],
) -> None:
    base_url, proxy, auth, log_path = proxied_server
    statuses: list[int] = []
    with httpx.Client(base_url=base_url, timeout=30) as client:
        created = client.post(f"{API}/pledges", json=pledge_body(), headers=auth)
        assert created.status_code == 201, created.text
        pledge = f"{API}/pledges/{pledge_body()['id']}"
        assert client.get(pledge).status_code == 200
        assert client.get("/readyz").status_code == 200

        proxy.cut()
        during = [client.get(pledge) for _ in range(5)]
        during += [client.get(f"{API}/pledges", params={"limit": 5}) for _ in range(3)]
        during += [
            client.post(
                f"{API}/pledges",
                json=pledge_body(id="us-cn-written-during-the-outage"),
                headers={**auth, "Idempotency-Key": "during-the-outage"},
            )
            for _ in range(3)
        ]
        ready_during = client.get("/readyz")
        alive_during = client.get("/healthz")
        for response in during:
            _assert_unavailable(response)
        assert ready_during.status_code == 503
        assert "database" in ready_during.json()["reason"]
        assert alive_during.status_code == 200  # the process is up: nobody should restart it

        proxy.restore()
        deadline = time.monotonic() + 30
        after = _until_answered(client, pledge, deadline)
        assert after.status_code == 200, after.text
        # The key's 503 was not kept: the retry runs now, once.
        retried = client.post(
            f"{API}/pledges",
            json=pledge_body(id="us-cn-written-during-the-outage"),
            headers={**auth, "Idempotency-Key": "during-the-outage"},
        )
        assert retried.status_code == 201, retried.text
        assert _until_answered(client, "/readyz", deadline).status_code == 200
        statuses = [r.status_code for r in (*during, after, retried)]
    assert 500 not in statuses
    errors = [line for line in log_path.read_text().splitlines() if '"level": "error"' in line]
    assert errors == [], errors[:3]
