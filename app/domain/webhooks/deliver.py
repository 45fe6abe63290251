"""Webhook delivery, with the ledger as the outbox: the ``deliver`` job.

A run does two things. It *queues*: for each subscription, the events recorded
in the ledger since its ``queued_through`` become ``webhook_delivery`` rows,
each holding the exact bytes that every attempt sends and signs. It *sends*:
the deliveries that are due are claimed one by one in the database, POSTed
outside any transaction, a few at a time, and each attempt's outcome is
recorded; a failure is retried after ``base * 2^(attempts - 1)`` seconds plus
up to a quarter more (jitter), until ``webhook_max_attempts``.

What a receiver can rely on: an event is delivered until one attempt succeeds,
and never again after that; no delivery is ever being sent twice at once. If a
process dies during an attempt, the attempt is made again once its claim
expires, so a receiver may see a delivery twice: it deduplicates on the
delivery id (``X-Pledgewatch-Delivery`` and ``webhook-id``, also in the body).
Deliveries may arrive out of order (retries); ``seq`` gives the order. Every
attempt is signed anew (``signing.py``): the body and the id stay, the
timestamp is the attempt's own.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from sqlalchemy import ColumnElement, select, update
from sqlalchemy.exc import SQLAlchemyError

from app.clock import Clock
from app.config import Settings
from app.db import Database
from app.domain.events.service import Event, read_events
from app.domain.ledger.canonical import plain
from app.domain.ledger.service import read_head
from app.domain.webhooks.models import Webhook, WebhookDelivery
from app.domain.webhooks.signing import signed_headers
from app.metrics import WEBHOOK_ATTEMPTS, WEBHOOK_QUEUED
from app.net import FetchError, SafeFetcher
from app.sql import insert_or_ignore

log = logging.getLogger("pledgewatch.webhooks")

EVENT_HEADER = "X-Pledgewatch-Event"
DELIVERY_HEADER = "X-Pledgewatch-Delivery"
TIMESTAMP_HEADER = "X-Pledgewatch-Timestamp"
ATTEMPT_HEADER = "X-Pledgewatch-Attempt"

# Events queued per subscription per run; a subscription further behind catches up next run.
QUEUE_BATCH = 500
# Due deliveries taken per round, and sent at once at most.
SEND_BATCH = 100
CONCURRENCY = 8
# A run starts no new round after this long, so that the next tick (or a scheduler that
# is stopping) never waits long for it; what is left is due and taken next run.
RUN_BUDGET_SECONDS = 60.0
# The wait before a retry grows no longer than this, however many attempts are allowed.
MAX_RETRY_DELAY = timedelta(hours=6)
JITTER = 0.25

Jitter = Callable[[], float]
"""A number in [0, 1): how far into the jitter window a retry is put."""

_system_random = random.SystemRandom()


@dataclass(frozen=True, slots=True)
class RunReport:
    """What one run did: deliveries queued, and attempts by outcome."""

    queued: int = 0
    delivered: int = 0
    retrying: int = 0
    failed: int = 0


@dataclass(frozen=True, slots=True)
class _Due:
    id: str
    attempts: int


@dataclass(frozen=True, slots=True)
class _Claim:
    delivery_id: str
    webhook_id: int
    seq: int
    event: str
    attempt: int  # the number of this attempt: 1 for the first
    body: bytes
    url: str
    secret: str


def retry_delay(attempts: int, settings: Settings, jitter: Jitter) -> timedelta:
    """How long after failed attempt number ``attempts`` the next one is made.

    Never sooner than ``base * 2^(attempts - 1)`` (receivers that failed together do not
    all come back together, yet none is retried earlier than documented).
    """
    exponent = min(max(attempts - 1, 0), 32)
    nominal = min(
        settings.webhook_retry_base_seconds * 2**exponent, MAX_RETRY_DELAY.total_seconds()
    )
    return timedelta(seconds=nominal * (1 + JITTER * jitter()))


def claim_lease(settings: Settings) -> timedelta:
    """How long a claimed attempt keeps its delivery from anyone else.

    Connecting, sending and waiting for the answer are each bounded by the timeout; a fourth
    covers waiting for a per-host connection slot, and a minute more a slow DNS answer. An
    attempt that outlives its lease (its process died) is made again.
    """
    return timedelta(seconds=settings.webhook_timeout_seconds * 4 + 60)


def delivery_body(delivery_id: str, webhook_id: int, event: Event, created_at: datetime) -> str:
    """The JSON document POSTed (and signed) for one event to one subscription."""
    document = {
        "delivery_id": delivery_id,
        "webhook_id": webhook_id,
        **event.document(),
        "created_at": plain(created_at),
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=True)


def run(
    database: Database,
    fetcher: SafeFetcher,
    clock: Clock,
    settings: Settings,
    *,
    jitter: Jitter = _system_random.random,
) -> RunReport:
    """Queue the new events of every subscription, then send what is due; report the counts."""
    queued = queue(database, clock.now())
    delivered = retrying = failed = 0
    started = time.monotonic()
    with ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="deliver") as pool:
        while True:
            due = _due(database, clock.now())
            outcomes = list(
                pool.map(
                    lambda item: _attempt(database, fetcher, clock, settings, item, jitter), due
                )
            )
            delivered += outcomes.count("delivered")
            retrying += outcomes.count("retry")
            failed += outcomes.count("failed")
            if len(due) < SEND_BATCH or time.monotonic() - started > RUN_BUDGET_SECONDS:
                break
    return RunReport(queued=queued, delivered=delivered, retrying=retrying, failed=failed)


def queue(database: Database, now: datetime) -> int:
    """Turn each subscription's new events into deliveries; return how many were queued."""
    with database.transaction(write=False) as session:
        head = read_head(session).length
        behind = list(
            session.scalars(
                select(Webhook.id).where(Webhook.queued_through < head).order_by(Webhook.id)
            )
        )
    queued = 0
    for webhook_id in behind:
        try:
            queued += _queue_one(database, webhook_id, now)
        except SQLAlchemyError:
            # One subscription failing to queue must not hold up the others.
            log.exception("webhook events not queued", extra={"webhook_id": webhook_id})
    return queued


def _queue_one(database: Database, webhook_id: int, now: datetime) -> int:
    with database.transaction() as session:
        # The row lock makes concurrent runs queue one subscription one after the other (and
        # a deletion wait for the queueing to end); SQLite's writers are serialised anyway.
        webhook = session.scalars(
            select(Webhook).where(Webhook.id == webhook_id).with_for_update()
        ).one_or_none()
        if webhook is None:
            return 0
        # The head is read before the events: the cursor may then move past entries that are
        # not events (or not this subscription's), never past an event not yet read.
        head = read_head(session).length
        if webhook.queued_through >= head:
            return 0
        events = read_events(
            session, after=webhook.queued_through, limit=QUEUE_BATCH, kinds=webhook.events
        )
        rows = []
        for event in events:
            delivery_id = str(uuid.uuid4())
            rows.append(
                {
                    "id": delivery_id,
                    "webhook_id": webhook.id,
                    "seq": event.seq,
                    "event": event.kind,
                    "body": delivery_body(delivery_id, webhook.id, event, now),
                    "state": "pending",
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                }
            )
        if rows:
            # (webhook_id, seq) is unique: an event is never queued twice for one subscription.
            session.execute(insert_or_ignore(session, WebhookDelivery), rows)
        if len(events) == QUEUE_BATCH:
            webhook.queued_through = events[-1].seq
        else:
            # Commits append to the ledger in seq order, so what is visible is a prefix of it.
            webhook.queued_through = max(head, events[-1].seq if events else head)
    WEBHOOK_QUEUED.inc(len(rows))
    return len(rows)


def _due(database: Database, now: datetime) -> list[_Due]:
    with database.transaction(write=False) as session:
        rows = session.execute(
            select(WebhookDelivery.id, WebhookDelivery.attempts)
            .where(WebhookDelivery.state == "pending", WebhookDelivery.next_attempt_at <= now)
            .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
            .limit(SEND_BATCH)
        ).all()
    return [_Due(id=row.id, attempts=row.attempts) for row in rows]


def _attempt(
    database: Database,
    fetcher: SafeFetcher,
    clock: Clock,
    settings: Settings,
    due: _Due,
    jitter: Jitter,
) -> str:
    """Claim, send and record one attempt; the outcome (``skipped`` if another took it)."""
    if due.attempts >= settings.webhook_max_attempts:
        return _give_up(database, due, clock.now())
    claim = _claim(database, due, clock.now(), settings)
    if claim is None:
        return "skipped"
    sent_at = clock.now()
    headers = {
        "Content-Type": "application/json",
        EVENT_HEADER: claim.event,
        DELIVERY_HEADER: claim.delivery_id,
        TIMESTAMP_HEADER: sent_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
        ATTEMPT_HEADER: str(claim.attempt),
        **signed_headers(claim.secret, claim.delivery_id, int(sent_at.timestamp()), claim.body),
    }
    status: int | None = None
    error: str | None = None
    try:
        answer = fetcher.post(
            claim.url, claim.body, headers=headers, timeout=settings.webhook_timeout_seconds
        )
    except FetchError as failure:
        error = str(failure)
    except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, OSError, ValueError) as failure:
        # Whatever the network throws fails this attempt, never the run.
        log.exception("unexpected webhook delivery failure", extra={"webhook_id": claim.webhook_id})
        error = f"posting to {claim.url} failed: {type(failure).__name__}: {failure}"
    else:
        status = answer.status_code
        if not 200 <= status < 300:
            error = f"{claim.url} answered {status} {answer.reason}".strip()
            if 300 <= status < 400:
                error += " (redirects are not followed)"
    outcome = _record(database, claim, status, error, clock.now(), settings, jitter)
    log.info(
        "webhook delivery attempt",
        extra={
            "webhook_id": claim.webhook_id,
            "delivery_id": claim.delivery_id,
            "seq": claim.seq,
            "attempt": claim.attempt,
            "outcome": outcome,
            "status_code": status,
            "error": error,
        },
    )
    return outcome


def _unchanged_since_read(due: _Due, now: datetime) -> tuple[ColumnElement[bool], ...]:
    # The attempt count is the claim's token: it changes with every claim, so of two runs
    # that read the same row, one updates it and the other finds nothing to update.
    return (
        WebhookDelivery.id == due.id,
        WebhookDelivery.state == "pending",
        WebhookDelivery.attempts == due.attempts,
        WebhookDelivery.next_attempt_at <= now,
    )


def _give_up(database: Database, due: _Due, now: datetime) -> str:
    """Fail a delivery whose last allowed attempt was claimed and never reported back."""
    with database.transaction() as session:
        ended = session.execute(
            update(WebhookDelivery)
            .where(*_unchanged_since_read(due, now))
            .values(
                state="failed",
                next_attempt_at=None,
                last_error="the last attempt did not finish (its process stopped)",
            )
            .execution_options(preserve_rowcount=True)
        ).rowcount  # type: ignore[attr-defined]
    if not ended:
        return "skipped"
    WEBHOOK_ATTEMPTS.labels("failed").inc()
    log.warning(
        "webhook delivery failed: its last attempt never finished", extra={"delivery_id": due.id}
    )
    return "failed"


def _claim(database: Database, due: _Due, now: datetime, settings: Settings) -> _Claim | None:
    """Take ``due`` for one attempt, unless another run took it since it was read."""
    with database.transaction() as session:
        claimed = session.execute(
            update(WebhookDelivery)
            .where(*_unchanged_since_read(due, now))
            .values(attempts=due.attempts + 1, next_attempt_at=now + claim_lease(settings))
            .execution_options(preserve_rowcount=True)
        ).rowcount  # type: ignore[attr-defined]
        if not claimed:
            return None
        row = session.execute(
            select(
                WebhookDelivery.webhook_id,
                WebhookDelivery.seq,
                WebhookDelivery.event,
                WebhookDelivery.body,
                Webhook.url,
                Webhook.secret,
            )
            .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
            .where(WebhookDelivery.id == due.id)
        ).one()
    return _Claim(
        delivery_id=due.id,
        webhook_id=row.webhook_id,
        seq=row.seq,
        event=row.event,
        attempt=due.attempts + 1,
        body=row.body.encode("utf-8"),
        url=row.url,
        secret=row.secret,
    )


def _record(
    database: Database,
    claim: _Claim,
    status: int | None,
    error: str | None,
    now: datetime,
    settings: Settings,
    jitter: Jitter,
) -> str:
    """Write the outcome of ``claim``'s attempt; return it (delivered, retry or failed)."""
    if error is None:
        outcome = "delivered"
        values: dict[str, object] = {
            "state": "delivered",
            "last_status_code": status,
            "last_error": None,
            "next_attempt_at": None,
            "delivered_at": now,
        }
    elif claim.attempt >= settings.webhook_max_attempts:
        outcome = "failed"
        values = {
            "state": "failed",
            "last_status_code": status,
            "last_error": error,
            "next_attempt_at": None,
        }
    else:
        outcome = "retry"
        values = {
            "last_status_code": status,
            "last_error": error,
            "next_attempt_at": now + retry_delay(claim.attempt, settings, jitter),
        }
    with database.transaction() as session:
        recorded = session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == claim.delivery_id,
                WebhookDelivery.state == "pending",
                WebhookDelivery.attempts == claim.attempt,
            )
            .values(**values)
            .execution_options(preserve_rowcount=True)
        ).rowcount  # type: ignore[attr-defined]
    if not recorded:
        # The webhook was deleted meanwhile, or this attempt outlived its lease and another
        # run has taken the delivery over.
        log.warning(
            "webhook attempt outcome not recorded",
            extra={"delivery_id": claim.delivery_id, "outcome": outcome},
        )
    WEBHOOK_ATTEMPTS.labels(outcome).inc()
    return outcome
