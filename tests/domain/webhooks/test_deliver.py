"""Delivering webhooks to a real local receiver, on both databases, driven by a frozen clock.

The receiver checks every signature and fails the first attempts on request; the
clock is advanced past each backoff, and what the API records is compared with
what the receiver saw.
"""

from __future__ import annotations

import base64
import json
import threading
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.clock import FrozenClock
from app.config import Settings
from app.db import Database
from app.domain.ledger.models import LedgerEntry
from app.domain.ledger.service import read_head
from app.domain.webhooks import deliver, signing
from app.domain.webhooks.models import WebhookDelivery
from app.net import SafeFetcher
from app.scheduler.jobs import DELIVER, SchedulerContext, register_jobs, run_once
from app.scheduler.models import JobRun
from app.scheduler.service import build_scheduler
from tests.domain.webhooks.receiver import Receiver, Reply, standard_check
from tests.factories import PLEDGE_ID, Keys, evidence_body, make_pledge

API = "/api/v1"
# A reply the sender gives up waiting for (the settings' timeout is 0.5 s).
TOO_SLOW = Reply(status=503, delay=1.5)


def no_jitter() -> float:
    return 0.0


def subscribe(
    client: TestClient, keys: Keys, receiver: Receiver, path: str, **fields: Any
) -> dict[str, Any]:
    """Subscribe the receiver's ``path`` with a secret of its own; the created webhook.

    The receiver turns its secret into ``whsec_`` form itself, as the README tells the
    receivers of subscriptions made before the Standard Webhooks headers to do.
    """
    secret = f"a secret for {path} that is long enough"
    receiver.secrets[path] = "whsec_" + base64.b64encode(secret.encode()).decode()
    response = client.post(
        f"{API}/webhooks",
        json={"url": receiver.url(path), "secret": secret, **fields},
        headers=keys["admin"],
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    assert created["secret"] == receiver.secrets[path], "shown once, in whsec_ form"
    return created


def add_evidence(client: TestClient, keys: Keys, n: int) -> None:
    response = client.post(
        f"{API}/pledges/{PLEDGE_ID}/evidence",
        json={**evidence_body(n), "stance": "supports"},
        headers=keys["collector"],
    )
    assert response.status_code == 201, response.text


def change_status(client: TestClient, keys: Keys, status: str) -> None:
    response = client.post(
        f"{API}/pledges/{PLEDGE_ID}/status",
        json={"status": status, "reason": f"now {status}"},
        headers=keys["analyst"],
    )
    assert response.status_code == 201, response.text


def deliveries(client: TestClient, keys: Keys, webhook_id: int) -> list[dict[str, Any]]:
    """Every delivery of a webhook, following the pages (two at a time, to use the cursor)."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        response = client.get(
            f"{API}/webhooks/{webhook_id}/deliveries", params=params, headers=keys["admin"]
        )
        assert response.status_code == 200, response.text
        page = response.json()
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def event_seqs(database: Database, kinds: tuple[str, ...], after: int = 0) -> list[int]:
    with database.transaction(write=False) as session:
        return list(
            session.scalars(
                select(LedgerEntry.seq)
                .where(LedgerEntry.kind.in_(kinds), LedgerEntry.seq > after)
                .order_by(LedgerEntry.seq)
            )
        )


def ledger_length(database: Database) -> int:
    with database.transaction(write=False) as session:
        return read_head(session).length


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


def run(
    database: Database, fetcher: SafeFetcher, clock: FrozenClock, settings: Settings
) -> deliver.RunReport:
    return deliver.run(database, fetcher, clock, settings, jitter=no_jitter)


def test_failed_attempts_are_retried_with_backoff_until_one_succeeds_and_never_again(
    client: TestClient,
    keys: Keys,
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    receiver: Receiver,
    fetcher: SafeFetcher,
) -> None:
    make_pledge(client, keys)
    add_evidence(client, keys, 0)  # before the subscription: never delivered
    webhook = subscribe(client, keys, receiver, "/hook")
    subscribed = ledger_length(database)
    receiver.failures["/hook"] = [Reply(status=500), TOO_SLOW]
    add_evidence(client, keys, 1)
    change_status(client, keys, "in_progress")
    add_evidence(client, keys, 2)
    wanted = event_seqs(database, ("evidence.added", "status.changed"), after=subscribed)
    assert len(wanted) == 3

    # First attempts: 500. Retried after base * 2^0 = 30 s.
    first = clock.now()
    report = deliver.run(database, fetcher, clock, settings)
    assert (report.queued, report.delivered, report.retrying, report.failed) == (3, 0, 3, 0)
    recorded = deliveries(client, keys, webhook["id"])
    assert [item["seq"] for item in recorded] == sorted(wanted, reverse=True), "newest first"
    for item in recorded:
        assert item["state"] == "pending"
        assert item["attempts"] == 1
        assert item["last_status_code"] == 500
        assert "500" in item["last_error"]
        # Jitter only ever adds, up to a quarter.
        due = at(item["next_attempt_at"])
        assert first + timedelta(seconds=30) <= due <= first + timedelta(seconds=37.5)
        assert item["delivered_at"] is None

    # Nothing is due before the backoff has passed.
    clock.advance(timedelta(seconds=29))
    assert run(database, fetcher, clock, settings) == deliver.RunReport()
    assert len(receiver.on("/hook")) == 3

    # Second attempts: no answer within the timeout. Retried after 60 s more.
    clock.advance(timedelta(seconds=9))
    second = clock.now()
    assert run(database, fetcher, clock, settings).retrying == 3
    for item in deliveries(client, keys, webhook["id"]):
        assert item["attempts"] == 2
        assert item["last_status_code"] is None
        assert "did not answer within 0.5 s" in item["last_error"]
        assert at(item["next_attempt_at"]) == second + timedelta(seconds=60)

    # Third attempts succeed.
    clock.advance(timedelta(seconds=60))
    third = clock.now()
    assert run(database, fetcher, clock, settings).delivered == 3
    for item in deliveries(client, keys, webhook["id"]):
        assert item["state"] == "delivered"
        assert item["attempts"] == 3
        assert item["last_status_code"] == 200
        assert item["last_error"] is None
        assert item["next_attempt_at"] is None
        assert at(item["delivered_at"]) == third

    # Delivered is final: later runs send nothing more.
    for _ in range(3):
        clock.advance(timedelta(hours=1))
        assert run(database, fetcher, clock, settings) == deliver.RunReport()

    seen = receiver.on("/hook")
    assert len(seen) == 9
    assert all(item.signature_ok for item in seen)
    assert all(item.standard_ok for item in seen), [item.standard_error for item in seen]
    # Every attempt is signed anew: the same webhook-id (the delivery's), its own timestamp.
    for attempt in seen:
        assert attempt.headers["webhook-id"] == attempt.delivery_id
    stamps = Counter(attempt.headers["webhook-timestamp"] for attempt in seen)
    assert stamps == {str(int(when.timestamp())): 3 for when in (first, second, third)}
    accepted = receiver.accepted("/hook")
    assert sorted(item.document["seq"] for item in accepted) == wanted
    by_id = Counter(item.delivery_id for item in accepted)
    assert set(by_id.values()) == {1}
    assert set(by_id) == {item["id"] for item in deliveries(client, keys, webhook["id"])}
    # Every attempt of a delivery sends the very same bytes.
    for delivery_id in by_id:
        assert len({item.body for item in seen if item.delivery_id == delivery_id}) == 1


def test_a_delivery_carries_its_event_its_id_a_timestamp_and_a_signature(
    client: TestClient,
    keys: Keys,
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    receiver: Receiver,
    fetcher: SafeFetcher,
) -> None:
    make_pledge(client, keys)
    webhook = subscribe(client, keys, receiver, "/hook")
    subscribed = ledger_length(database)
    change_status(client, keys, "in_progress")
    run(database, fetcher, clock, settings)

    (received,) = receiver.on("/hook")
    headers, document = received.headers, received.document
    assert received.signature_ok
    assert received.standard_ok, received.standard_error
    secret = "a secret for /hook that is long enough"
    assert headers["x-pledgewatch-signature"] == signing.signature(secret, received.body)
    timestamp = int(clock.now().timestamp())
    assert headers["webhook-id"] == document["delivery_id"]
    assert headers["webhook-timestamp"] == str(timestamp)
    assert headers["webhook-signature"] == signing.standard_signature(
        secret, document["delivery_id"], timestamp, received.body
    )
    assert headers["webhook-signature"].startswith("v1,")
    assert headers["x-pledgewatch-event"] == "status.changed" == document["event"]
    assert headers["x-pledgewatch-delivery"] == document["delivery_id"]
    assert headers["x-pledgewatch-attempt"] == "1"
    assert at(headers["x-pledgewatch-timestamp"].replace("Z", "+00:00")) == clock.now()
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"].startswith("Pledgewatch/")
    assert document["webhook_id"] == webhook["id"]
    assert at(document["created_at"]) == clock.now()
    assert document["subject"].startswith("status_change:")
    assert document["data"]["pledge_id"] == PLEDGE_ID
    assert document["data"]["to_status"] == "in_progress"
    (seq,) = event_seqs(database, ("status.changed",), after=subscribed)
    assert document["seq"] == seq
    assert json.loads(received.body) == document


def test_a_retry_keeps_its_webhook_id_and_is_signed_with_a_fresh_timestamp(
    client: TestClient,
    keys: Keys,
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    receiver: Receiver,
    fetcher: SafeFetcher,
) -> None:
    make_pledge(client, keys)
    subscribe(client, keys, receiver, "/hook")
    receiver.failures["/hook"] = [Reply(status=500)]
    change_status(client, keys, "in_progress")
    assert run(database, fetcher, clock, settings).retrying == 1
    # Retried well after the verifier's five minutes of tolerance.
    clock.advance(timedelta(minutes=10))
    assert run(database, fetcher, clock, settings).delivered == 1

    first, retry = receiver.on("/hook")
    assert (first.status, retry.status) == (500, 200)
    assert first.body == retry.body
    assert first.headers["webhook-id"] == retry.headers["webhook-id"] == retry.delivery_id
    assert int(retry.headers["webhook-timestamp"]) - int(first.headers["webhook-timestamp"]) == 600
    assert first.headers["webhook-signature"] != retry.headers["webhook-signature"]
    # Each verified when it came; the first attempt's signature, replayed now, would not.
    assert (first.standard_error, retry.standard_error) == (None, None)
    assert standard_check(receiver.secrets["/hook"], first.body, first.headers) == (
        "Message timestamp too old"
    )
    assert standard_check(receiver.secrets["/hook"], retry.body, retry.headers) is None


def test_after_the_last_attempt_a_delivery_fails_and_is_not_tried_again(
    client: TestClient,
    keys: Keys,
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    receiver: Receiver,
    fetcher: SafeFetcher,
) -> None:
    make_pledge(client, keys)
    webhook = subscribe(client, keys, receiver, "/down")
    receiver.failures["/down"] = [Reply(status=502)] * 10
    change_status(client, keys, "in_progress")

    for attempt in range(1, settings.webhook_max_attempts + 1):
        report = run(database, fetcher, clock, settings)
        (item,) = deliveries(client, keys, webhook["id"])
        assert item["attempts"] == attempt
        if attempt < settings.webhook_max_attempts:
            assert report.retrying == 1
            delay = timedelta(seconds=30 * 2 ** (attempt - 1))
            assert at(item["next_attempt_at"]) == clock.now() + delay
            clock.advance(delay)
    assert report.failed == 1
    assert item["state"] == "failed"
    assert item["next_attempt_at"] is None
    assert item["last_status_code"] == 502

    clock.advance(timedelta(days=30))
    assert run(database, fetcher, clock, settings) == deliver.RunReport()
    assert len(receiver.on("/down")) == settings.webhook_max_attempts


def test_a_redirect_is_a_failed_attempt_and_is_not_followed(
    client: TestClient,
    keys: Keys,
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    receiver: Receiver,
    fetcher: SafeFetcher,
) -> None:
    make_pledge(client, keys)
    webhook = subscribe(client, keys, receiver, "/moved")
    receiver.secrets["/elsewhere"] = receiver.secrets["/moved"]
    receiver.failures["/moved"] = [Reply(status=307, location=receiver.url("/elsewhere"))]
    change_status(client, keys, "in_progress")

    assert run(database, fetcher, clock, settings).retrying == 1
    (item,) = deliveries(client, keys, webhook["id"])
    assert item["last_status_code"] == 307
    assert "redirects are not followed" in item["last_error"]
    assert receiver.on("/elsewhere") == []


def test_a_subscription_gets_only_its_events(
    client: TestClient,
    keys: Keys,
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    receiver: Receiver,
    fetcher: SafeFetcher,
) -> None:
    make_pledge(client, keys)
    subscribe(client, keys, receiver, "/all")
    subscribe(client, keys, receiver, "/status", events=["status.changed"])
    subscribe(client, keys, receiver, "/proposals", events=["proposal.created"])
    add_evidence(client, keys, 1)
    change_status(client, keys, "in_progress")
    add_evidence(client, keys, 2)
    change_status(client, keys, "stalled")

    assert run(database, fetcher, clock, settings).delivered == 6
    assert [item.document["event"] for item in receiver.on("/status")] == ["status.changed"] * 2
    assert sorted(item.document["event"] for item in receiver.on("/all")) == (
        ["evidence.added"] * 2 + ["status.changed"] * 2
    )
    assert receiver.on("/proposals") == []


def test_the_target_is_checked_again_before_every_attempt(
    client: TestClient,
    keys: Keys,
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    receiver: Receiver,
) -> None:
    """Created while private hosts were allowed; by delivery time they are not (as if the
    name now resolved to a private address): the attempt is refused, never sent."""
    make_pledge(client, keys)
    webhook = subscribe(client, keys, receiver, "/hook")
    change_status(client, keys, "in_progress")
    guarded = SafeFetcher(allow_private=False, clock=clock)
    try:
        assert run(database, guarded, clock, settings).retrying == 1
    finally:
        guarded.close()
    (item,) = deliveries(client, keys, webhook["id"])
    assert item["state"] == "pending"
    assert item["last_status_code"] is None
    assert "loopback" in item["last_error"]
    assert "refused" in item["last_error"]
    assert receiver.on("/hook") == []


def test_deleting_a_webhook_stops_its_deliveries(
    client: TestClient,
    keys: Keys,
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    receiver: Receiver,
    fetcher: SafeFetcher,
) -> None:
    make_pledge(client, keys)
    webhook = subscribe(client, keys, receiver, "/hook")
    receiver.failures["/hook"] = [Reply(status=500)]
    change_status(client, keys, "in_progress")
    assert run(database, fetcher, clock, settings).retrying == 1

    deleted = client.delete(f"{API}/webhooks/{webhook['id']}", headers=keys["admin"])
    assert deleted.status_code == 204
    change_status(client, keys, "stalled")
    clock.advance(timedelta(hours=1))
    assert run(database, fetcher, clock, settings) == deliver.RunReport()
    assert len(receiver.on("/hook")) == 1
    with database.transaction(write=False) as session:
        assert session.scalars(select(WebhookDelivery)).all() == []
    gone = client.get(f"{API}/webhooks/{webhook['id']}/deliveries", headers=keys["admin"])
    assert gone.status_code == 404


def test_two_runs_at_once_never_send_a_delivery_twice(
    client: TestClient,
    keys: Keys,
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    receiver: Receiver,
) -> None:
    make_pledge(client, keys)
    subscribe(client, keys, receiver, "/hook")
    subscribe(client, keys, receiver, "/other", events=["evidence.added"])
    # A slow receiver widens the window in which two runs could both send one delivery.
    receiver.failures["/hook"] = [Reply(status=200, delay=0.05)]
    subscribed = ledger_length(database)
    for n in range(12):
        add_evidence(client, keys, n)
    wanted = event_seqs(database, ("evidence.added",), after=subscribed)

    contenders = 2
    start = threading.Barrier(contenders)
    reports: list[deliver.RunReport] = []
    errors: list[BaseException] = []

    def contend() -> None:
        fetcher = SafeFetcher(allow_private=True, clock=clock)
        try:
            start.wait()
            reports.append(run(database, fetcher, clock, settings))
        except BaseException as error:
            errors.append(error)
        finally:
            fetcher.close()

    threads = [threading.Thread(target=contend) for _ in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []

    assert len(reports) == contenders
    assert sum(report.queued for report in reports) == 24
    assert sum(report.delivered for report in reports) == 24
    for path in ("/hook", "/other"):
        seen = receiver.on(path)
        assert all(item.signature_ok and item.standard_ok for item in seen)
        assert Counter(item.delivery_id for item in seen).most_common(1)[0][1] == 1
        assert sorted(item.document["seq"] for item in seen) == wanted
    with database.transaction(write=False) as session:
        assert len(session.scalars(select(WebhookDelivery.id)).all()) == 24


def test_of_two_runs_that_read_a_due_delivery_only_one_claims_it(
    client: TestClient,
    keys: Keys,
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    receiver: Receiver,
) -> None:
    make_pledge(client, keys)
    subscribe(client, keys, receiver, "/hook")
    change_status(client, keys, "in_progress")
    deliver.queue(database, clock.now())
    (due,) = deliver._due(database, clock.now())
    (seen_by_other_run,) = deliver._due(database, clock.now())

    claim = deliver._claim(database, due, clock.now(), settings)
    assert claim is not None
    assert claim.attempt == 1
    assert deliver._claim(database, seen_by_other_run, clock.now(), settings) is None
    # Claimed, it is no longer due to anyone until its lease ends.
    assert deliver._due(database, clock.now()) == []
    clock.advance(deliver.claim_lease(settings))
    assert [row.attempts for row in deliver._due(database, clock.now())] == [1]


def test_a_claim_left_by_a_stopped_process_is_retried_once_it_expires(
    client: TestClient,
    keys: Keys,
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    receiver: Receiver,
    fetcher: SafeFetcher,
) -> None:
    """At least once: an attempt whose process died is made again after its lease."""
    make_pledge(client, keys)
    webhook = subscribe(client, keys, receiver, "/hook")
    change_status(client, keys, "in_progress")
    deliver.queue(database, clock.now())
    lease = deliver.claim_lease(settings)
    with database.transaction() as session:
        (delivery,) = session.scalars(select(WebhookDelivery)).all()
        # What a claim leaves behind when its process dies before the attempt ends.
        delivery.attempts = 1
        delivery.next_attempt_at = clock.now() + lease

    clock.advance(lease - timedelta(seconds=1))
    assert run(database, fetcher, clock, settings) == deliver.RunReport()
    clock.advance(timedelta(seconds=1))
    assert run(database, fetcher, clock, settings).delivered == 1
    (item,) = deliveries(client, keys, webhook["id"])
    assert (item["state"], item["attempts"]) == ("delivered", 2)
    assert len(receiver.on("/hook")) == 1


def test_a_last_attempt_that_never_reported_back_fails_the_delivery(
    client: TestClient,
    keys: Keys,
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    receiver: Receiver,
    fetcher: SafeFetcher,
) -> None:
    make_pledge(client, keys)
    webhook = subscribe(client, keys, receiver, "/hook")
    change_status(client, keys, "in_progress")
    deliver.queue(database, clock.now())
    with database.transaction() as session:
        (delivery,) = session.scalars(select(WebhookDelivery)).all()
        delivery.attempts = settings.webhook_max_attempts
        delivery.next_attempt_at = clock.now()

    assert run(database, fetcher, clock, settings).failed == 1
    (item,) = deliveries(client, keys, webhook["id"])
    assert item["state"] == "failed"
    assert "did not finish" in item["last_error"]
    assert receiver.on("/hook") == []


@pytest.mark.parametrize(("attempts", "seconds"), [(1, 30), (2, 60), (3, 120), (8, 3840)])
def test_the_backoff_doubles_and_jitter_only_adds_up_to_a_quarter(
    attempts: int, seconds: int
) -> None:
    settings = Settings(webhook_retry_base_seconds=30)
    nominal = timedelta(seconds=seconds)
    assert deliver.retry_delay(attempts, settings, no_jitter) == nominal
    assert deliver.retry_delay(attempts, settings, lambda: 0.999) < nominal * 1.25


def test_the_backoff_stops_growing() -> None:
    settings = Settings(webhook_retry_base_seconds=30)
    assert deliver.retry_delay(10_000, settings, no_jitter) == deliver.MAX_RETRY_DELAY


def test_the_deliver_job_runs_every_tick_without_a_job_run_row(
    client: TestClient,
    keys: Keys,
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    receiver: Receiver,
    fetcher: SafeFetcher,
) -> None:
    """Every few seconds: the per-delivery claims, not a row per tick, keep it to one send."""
    from app.collectors.collect import CollectContext
    from app.scheduler.jobs import deliver as deliver_job

    make_pledge(client, keys)
    subscribe(client, keys, receiver, "/hook")
    change_status(client, keys, "in_progress")
    context = SchedulerContext(
        settings=settings,
        database=database,
        clock=clock,
        holder="here",
        collect_context=CollectContext(database=database, fetcher=fetcher, clock=clock),
    )
    tick = clock.now()
    assert run_once(context, DELIVER, tick, deliver_job)
    assert run_once(context, DELIVER, tick, deliver_job)
    assert len(receiver.on("/hook")) == 1
    with database.transaction(write=False) as session:
        assert session.scalars(select(JobRun)).all() == []

    scheduler = build_scheduler(database)
    scheduler.start(paused=True)
    try:
        register_jobs(scheduler, context)
        job = scheduler.get_job(DELIVER)
        assert job.trigger.interval == timedelta(seconds=settings.deliver_every_seconds)
        assert job.func is deliver_job
    finally:
        scheduler.shutdown(wait=False)
