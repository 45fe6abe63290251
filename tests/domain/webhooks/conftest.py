"""Fixtures of the webhook tests: a receiver on loopback, and an app allowed to reach it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import standardwebhooks.webhooks

from app.clock import FrozenClock
from app.config import Settings
from app.net import SafeFetcher
from tests.domain.webhooks.receiver import Receiver, clocked_datetime, webhook_receiver


@pytest.fixture
def settings(db_url: str) -> Settings:
    """Webhooks may target 127.0.0.1 (the receiver), and an attempt times out quickly."""
    return Settings(
        database_url=db_url,
        log_json=False,
        log_level="WARNING",
        scheduler_enabled=False,
        allow_private_source_hosts=True,
        webhook_timeout_seconds=0.5,
        webhook_max_attempts=4,
        webhook_retry_base_seconds=30,
    )


@pytest.fixture
def receiver(clock: FrozenClock, monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    """A receiver whose Standard Webhooks verifier lives on the test's clock."""
    monkeypatch.setattr(standardwebhooks.webhooks, "datetime", clocked_datetime(clock))
    with webhook_receiver() as running:
        yield running


@pytest.fixture
def fetcher(clock: FrozenClock) -> Iterator[SafeFetcher]:
    """The shared outbound client, allowed (like the settings) to reach loopback."""
    client = SafeFetcher(allow_private=True, clock=clock)
    yield client
    client.close()
