"""The idempotency service: claim, settle, replay, keep alone, purge; bounded records."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from app.clock import FrozenClock
from app.db import Database
from app.domain.idempotency import service
from app.domain.idempotency.models import IdempotencyRecord
from app.domain.idempotency.service import (
    IdempotencyKeyReused,
    Replay,
    RequestInProgress,
    StoredAnswer,
)

OWNER = service.owner_of("key:collector")
TTL = timedelta(hours=24)
STALE = timedelta(minutes=2)
CREATED = StoredAnswer(
    status=201, headers=[["content-type", "application/json"]], body=b'{"id": 1}'
)


def claim(database: Database, clock: FrozenClock, key: str, request_hash: str = "a" * 64) -> None:
    """Claim ``key`` and settle it with CREATED in one transaction, as a request does."""
    with database.transaction() as session:
        record = service.claim(
            session,
            owner=OWNER,
            key=key,
            request_hash=request_hash,
            now=clock.now(),
            ttl=TTL,
            stale=STALE,
        )
        service.settle(session, record, CREATED)


def claim_again(database: Database, clock: FrozenClock, key: str, request_hash: str) -> None:
    with database.transaction() as session:
        service.claim(
            session,
            owner=OWNER,
            key=key,
            request_hash=request_hash,
            now=clock.now(),
            ttl=TTL,
            stale=STALE,
        )


def stored(database: Database) -> list[IdempotencyRecord]:
    with database.transaction(write=False) as session:
        rows = list(session.scalars(select(IdempotencyRecord).order_by(IdempotencyRecord.key)))
        for row in rows:
            session.expunge(row)
        return rows


def test_a_settled_key_replays_its_answer_and_refuses_another_request(
    database: Database, clock: FrozenClock
) -> None:
    claim(database, clock, "k1")
    with pytest.raises(Replay) as replay:
        claim_again(database, clock, "k1", "a" * 64)
    assert replay.value.answer == CREATED
    with pytest.raises(IdempotencyKeyReused):
        claim_again(database, clock, "k1", "b" * 64)
    # Another principal's key of the same name is its own.
    with database.transaction() as session:
        other = service.claim(
            session,
            owner=service.owner_of("key:analyst"),
            key="k1",
            request_hash="b" * 64,
            now=clock.now(),
            ttl=TTL,
            stale=STALE,
        )
        assert other.state == service.IN_PROGRESS


def test_a_claim_rolled_back_with_its_request_leaves_the_key_free(
    database: Database, clock: FrozenClock
) -> None:
    session = database.session(write=True)
    try:
        service.claim(
            session,
            owner=OWNER,
            key="k2",
            request_hash="a" * 64,
            now=clock.now(),
            ttl=TTL,
            stale=STALE,
        )
        session.rollback()  # the request failed
    finally:
        session.close()
    assert stored(database) == []
    claim(database, clock, "k2", "b" * 64)
    assert [r.request_hash for r in stored(database)] == ["b" * 64]


def test_an_expired_key_is_claimed_afresh(database: Database, clock: FrozenClock) -> None:
    claim(database, clock, "k3")
    clock.advance(TTL + timedelta(seconds=1))
    with database.transaction() as session:
        record = service.claim(
            session,
            owner=OWNER,
            key="k3",
            request_hash="b" * 64,
            now=clock.now(),
            ttl=TTL,
            stale=STALE,
        )
        assert (record.state, record.response_status) == (service.IN_PROGRESS, None)
        assert record.created_at == clock.now()


# SQLite's writers take turns instead: a second writer waits for the first to commit.
@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_concurrent_claim_on_postgresql_is_409_at_once(
    database: Database, clock: FrozenClock
) -> None:
    first = database.session(write=True)
    try:
        service.claim(
            first,
            owner=OWNER,
            key="k4",
            request_hash="a" * 64,
            now=clock.now(),
            ttl=TTL,
            stale=STALE,
        )
        # The first transaction is open and holds the key: the second does not wait for it.
        with pytest.raises(RequestInProgress):
            claim_again(database, clock, "k4", "a" * 64)
        first.commit()
    finally:
        first.close()
    assert [r.state for r in stored(database)] == [service.IN_PROGRESS]


def test_settling_without_an_answer_gives_the_key_up(
    database: Database, clock: FrozenClock
) -> None:
    with database.transaction() as session:
        record = service.claim(
            session,
            owner=OWNER,
            key="k5",
            request_hash="a" * 64,
            now=clock.now(),
            ttl=TTL,
            stale=STALE,
        )
        service.settle(session, record, None)
    assert stored(database) == []


def test_an_answer_over_the_size_bound_is_not_kept(
    database: Database, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "MAX_STORED_BODY_BYTES", 8)
    with database.transaction() as session:
        record = service.claim(
            session,
            owner=OWNER,
            key="k6",
            request_hash="a" * 64,
            now=clock.now(),
            ttl=TTL,
            stale=STALE,
        )
        service.settle(session, record, CREATED)
    assert stored(database) == []
    with database.transaction() as session:
        kept = service.settle_alone(
            session,
            owner=OWNER,
            key="k6",
            request_hash="a" * 64,
            now=clock.now(),
            ttl=TTL,
            answer=CREATED,
        )
    assert not kept
    assert stored(database) == []


def test_settle_alone_keeps_an_answer_only_for_a_free_key(
    database: Database, clock: FrozenClock
) -> None:
    refused = StoredAnswer(status=403, headers=[], body=b"{}")

    def settle_alone(key: str) -> bool:
        with database.transaction() as session:
            return service.settle_alone(
                session,
                owner=OWNER,
                key=key,
                request_hash="c" * 64,
                now=clock.now(),
                ttl=TTL,
                answer=refused,
            )

    claim(database, clock, "settled")
    assert settle_alone("free")
    assert not settle_alone("settled")
    clock.advance(TTL + timedelta(seconds=1))
    assert settle_alone("settled")
    assert [(r.key, r.response_status, r.request_hash) for r in stored(database)] == [
        ("free", 403, "c" * 64),
        ("settled", 403, "c" * 64),
    ]


def test_a_stored_answer_leaves_out_the_headers_of_one_delivery() -> None:
    answer = StoredAnswer.of_response(
        201,
        [
            (b"content-type", b"application/json"),
            (b"content-length", b"9"),
            (b"location", b"/api/v1/evidence/1"),
            (b"x-request-id", b"abc"),
            (b"RateLimit-Remaining", b"9"),
            (b"x-ratelimit-limit", b"10"),
        ],
        b'{"id": 1}',
    )
    assert answer.headers == [
        ["content-type", "application/json"],
        ["location", "/api/v1/evidence/1"],
    ]


def test_purge_deletes_expired_keys_up_to_its_limit(database: Database, clock: FrozenClock) -> None:
    for n in range(5):
        claim(database, clock, f"old-{n}")
    clock.advance(TTL)
    claim(database, clock, "new")
    before = clock.now() - TTL + timedelta(seconds=1)
    with database.transaction() as session:
        assert service.purge_expired(session, before=before, limit=3) == 3
    with database.transaction() as session:
        assert service.purge_expired(session, before=before, limit=3) == 2
    assert [r.key for r in stored(database)] == ["new"]
