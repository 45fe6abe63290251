"""Webhooks end to end: ``pledgewatch serve`` with its scheduler delivers to a real receiver."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.domain.webhooks.receiver import Receiver, Reply, webhook_receiver
from tests.e2e.conftest import running_server
from tests.factories import PLEDGE_ID, Keys, pledge_body

pytestmark = pytest.mark.slow


def serving_with_scheduler(database_url: str, log_path: Path) -> AbstractContextManager[str]:
    """``pledgewatch serve`` with the scheduler on, delivering every half second."""
    return running_server(
        database_url,
        log_path,
        {
            "PLEDGEWATCH_SCHEDULER_ENABLED": "true",
            "PLEDGEWATCH_ALLOW_PRIVATE_SOURCE_HOSTS": "true",
            "PLEDGEWATCH_DELIVER_EVERY_SECONDS": "0.5",
            "PLEDGEWATCH_WEBHOOK_RETRY_BASE_SECONDS": "1",
            "PLEDGEWATCH_WEBHOOK_TIMEOUT_SECONDS": "2",
        },
    )


def wait_for(condition: Callable[[], bool], seconds: float, log_path: Path) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, log_path.read_text()[-3000:]
        time.sleep(0.1)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with webhook_receiver() as running:
        yield running


def test_the_scheduler_delivers_signed_events_and_retries_a_failure(
    db_url: str, keys: Keys, receiver: Receiver, tmp_path: Path
) -> None:
    log_path = tmp_path / "server.log"
    with serving_with_scheduler(db_url, log_path) as base:
        api = f"{base}/api/v1"
        created = httpx.post(
            f"{api}/pledges", json=pledge_body(), headers=keys["analyst"], timeout=10
        )
        assert created.status_code == 201, created.text
        hook = httpx.post(
            f"{api}/webhooks",
            json={"url": receiver.url("/hook"), "events": ["status.changed"]},
            headers=keys["admin"],
            timeout=10,
        )
        assert hook.status_code == 201, hook.text
        assert hook.headers["cache-control"] == "no-store"
        webhook = hook.json()
        assert webhook["secret"].startswith("whsec_")
        receiver.secrets["/hook"] = webhook["secret"]
        receiver.failures["/hook"] = [Reply(status=500)]

        changed = httpx.post(
            f"{api}/pledges/{PLEDGE_ID}/status",
            json={"status": "in_progress", "reason": "talks began"},
            headers=keys["analyst"],
            timeout=10,
        )
        assert changed.status_code == 201, changed.text

        def deliveries() -> list[dict[str, Any]]:
            page = httpx.get(
                f"{api}/webhooks/{webhook['id']}/deliveries", headers=keys["admin"], timeout=10
            ).json()
            items: list[dict[str, Any]] = page["items"]
            return items

        wait_for(lambda: [d["state"] for d in deliveries()] == ["delivered"], 30, log_path)
        (delivery,) = deliveries()

    assert delivery["state"] == "delivered"
    assert delivery["attempts"] == 2
    assert delivery["last_status_code"] == 200
    seen = receiver.on("/hook")
    assert [item.status for item in seen] == [500, 200]
    assert all(item.signature_ok for item in seen)
    # The Standard Webhooks verifier, on the real clock, accepts both attempts; the retry
    # keeps the delivery's webhook-id and is signed for its own timestamp.
    assert [item.standard_error for item in seen] == [None, None]
    assert {item.delivery_id for item in seen} == {delivery["id"]}
    assert {item.headers["webhook-id"] for item in seen} == {delivery["id"]}
    # The retry is due a second (PLEDGEWATCH_WEBHOOK_RETRY_BASE_SECONDS) after the first
    # attempt ended, so its timestamp is a later second.
    first, retry = (int(item.headers["webhook-timestamp"]) for item in seen)
    assert retry > first
    assert seen[1].document["data"]["to_status"] == "in_progress"
