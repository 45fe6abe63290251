"""Secrets in URLs against a real ``pledgewatch serve``: its whole log, and its export."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.collectors.feed_server import Answer, feed_server
from tests.e2e.conftest import running_server
from tests.factories import PLEDGE_ID, Keys, pledge_body

pytestmark = pytest.mark.slow

USER, PASSWORD, TOKEN = "alice-feeds", "s3cret-pass", "tok-qz-77"
HOOK_PATH = "/services/T0/B0/hook-path-q?channel=ops"


def _ok(response: httpx.Response) -> Any:
    assert response.status_code in (200, 201, 202), response.text
    return response.json()


def _runs(api: str, keys: Keys) -> list[dict[str, Any]]:
    page = _ok(httpx.get(f"{api}/sources/leaky/runs", headers=keys["admin"], timeout=10))
    items: list[dict[str, Any]] = page["items"]
    return items


def test_a_real_server_keeps_url_secrets_out_of_its_log_and_public_export(
    db_url: str, keys: Keys, tmp_path: Path
) -> None:
    log_path = tmp_path / "server.log"
    settings = {"PLEDGEWATCH_ALLOW_PRIVATE_SOURCE_HOSTS": "true", "PLEDGEWATCH_LOG_LEVEL": "INFO"}
    with feed_server() as feeds, running_server(db_url, log_path, settings) as base:
        api = f"{base}/api/v1"
        path = f"/feed.xml?token={TOKEN}"
        feeds.answers[path] = Answer(status=503, body=b"down")
        source_url = feeds.base.replace("://", f"://{USER}:{PASSWORD}@") + path
        webhook_url = f"http://127.0.0.1:9{HOOK_PATH}"
        _ok(httpx.post(f"{api}/pledges", json=pledge_body(), headers=keys["analyst"], timeout=10))
        source = {
            "id": "leaky",
            "name": "A feed behind a password",
            "kind": "rss",
            "url": source_url,
            "pledges": [PLEDGE_ID],
            "source_type": "independent",
        }
        _ok(httpx.post(f"{api}/sources", json=source, headers=keys["admin"], timeout=10))
        hook = {"url": webhook_url, "events": ["status.changed"]}
        _ok(httpx.post(f"{api}/webhooks", json=hook, headers=keys["admin"], timeout=10))
        _ok(httpx.post(f"{api}/sources/leaky/run", headers=keys["admin"], timeout=10))
        deadline = time.monotonic() + 60
        while _runs(api, keys)[0]["outcome"] == "running":
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)
        (run,) = _runs(api, keys)
        exports = {
            role: httpx.get(f"{api}/export", headers=keys[role] if role else None, timeout=30).text
            for role in (None, "viewer", "admin")
        }

    assert run["outcome"] == "failed"
    assert source_url in run["error"], "the admin sees what failed"
    for role in (None, "viewer"):
        assert json.loads(exports[role])["scope"] == "public"
        for secret in (USER, PASSWORD, TOKEN, "hook-path-q"):
            assert secret not in exports[role], (role, secret)
    for secret in (USER, PASSWORD, TOKEN, "hook-path-q"):
        assert secret in exports["admin"]

    log = log_path.read_text()
    for secret in (USER, PASSWORD, TOKEN):
        assert secret not in log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    (logged_run,) = [line for line in lines if line["message"] == "source run"]
    assert f"http://***@127.0.0.1:{feeds.base.rsplit(':', 1)[1]}" in logged_run["error"]
    assert "/feed.xml?token=***" in logged_run["error"]
