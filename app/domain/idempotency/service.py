"""Idempotency-Key rules: claim a key, settle it with its answer, replay it, purge old keys.

A key belongs to the principal that sent it (``owner_of``) and names one request (its
method, path, query and body: ``request_hash``). A key is claimed inside the transaction
that makes the request's effect and settled in that same transaction, so a committed
effect always has its answer stored and an answer is never stored without its effect.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, text, tuple_
from sqlalchemy.orm import Session

from app.domain.idempotency.models import IdempotencyRecord
from app.errors import DomainError

IN_PROGRESS = "in_progress"
DONE = "done"
# The largest answer kept for replay. Real answers are far smaller (a batch of 1,000 items
# each wrong in every field answers 0.8 MB); the largest we could provoke within the 1 MiB
# body limit is 7.1 MiB (1,000 items each naming ~100 unknown fields). An answer over this
# is not kept, so that one odd answer cannot bloat the table (its retry then runs again).
MAX_STORED_BODY_BYTES = 8 * 1024 * 1024
# Headers that describe one delivery rather than the answer; a replay gets its own.
_PER_DELIVERY_HEADERS = frozenset({"content-length", "x-request-id", "date", "server"})
_PER_DELIVERY_PREFIXES = ("ratelimit", "x-ratelimit")


class KeyRefusal(DomainError):
    """The key, not the request, decided the answer (it is not kept for the key)."""


class IdempotencyKeyReused(KeyRefusal):
    status = 422
    title = "Idempotency-Key reused"
    type_suffix = "idempotency-key-reused"

    def __init__(self) -> None:
        super().__init__(
            "this Idempotency-Key was used with a different request; use a new key",
            errors=[{"field": "Idempotency-Key", "message": "was used with a different request"}],
        )


class RequestInProgress(KeyRefusal):
    status = 409
    title = "Request in progress"
    type_suffix = "idempotency-in-progress"

    def __init__(self) -> None:
        super().__init__(
            "the first request with this Idempotency-Key is still running; retry shortly",
            headers={"Retry-After": "1"},
        )


class AnswerWithheld(KeyRefusal):
    """The first request succeeded, but its answer showed a secret once and was not kept."""

    status = 409
    title = "Answer not kept"
    type_suffix = "idempotency-answer-withheld"

    def __init__(self, first_status: int, location: str | None) -> None:
        where = f" ({location})" if location else ""
        super().__init__(
            f"the first request with this Idempotency-Key succeeded with {first_status}{where}, "
            "but its answer held a secret that is shown only once and never stored; if it was "
            "lost, rotate the key or replace the webhook",
            headers={"Location": location} if location else None,
        )


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """A response as kept for replay: status, the headers that belong to it, and the body."""

    status: int
    headers: list[list[str]]
    body: bytes

    @classmethod
    def of_response(
        cls, status: int, raw_headers: list[tuple[bytes, bytes]], body: bytes
    ) -> StoredAnswer:
        headers = [
            [name.decode("latin-1"), value.decode("latin-1")]
            for name, value in raw_headers
            if not _per_delivery(name.decode("latin-1").lower())
        ]
        return cls(status=status, headers=headers, body=body)

    @property
    def holds_secret(self) -> bool:
        """An answer marked ``no-store`` (a new API key, a webhook's secret): its body must
        never rest in the database, so only its status and headers are kept."""
        return any(
            name.lower() == "cache-control" and "no-store" in value.lower()
            for name, value in self.headers
        )

    @property
    def location(self) -> str | None:
        return next((value for name, value in self.headers if name.lower() == "location"), None)


def _per_delivery(name: str) -> bool:
    return name in _PER_DELIVERY_HEADERS or name.startswith(_PER_DELIVERY_PREFIXES)


class Replay(Exception):
    """The key was settled by an earlier request: answer with its stored answer."""

    def __init__(self, answer: StoredAnswer) -> None:
        super().__init__(f"replay of a {answer.status} answer")
        self.answer = answer


def owner_of(actor: str) -> str:
    """The scope a key is kept under: the principal (``key:<name>``), not its secret.

    A key's name outlives its secret (``keys rotate`` keeps the name; names are never
    reused), so a client that retries with its rotated secret still gets its replay.
    """
    return hashlib.sha256(actor.encode("utf-8", "surrogatepass")).hexdigest()


def request_hash(method: str, path: str, query: str, body: bytes) -> str:
    """What makes two requests "the same request" for a key: method, path, query and body."""
    digest = hashlib.sha256()
    for part in (method, path, query):
        digest.update(part.encode("utf-8", "surrogateescape") + b"\0")
    digest.update(body)
    return digest.hexdigest()


def _try_lock(session: Session, owner: str, key: str) -> bool:
    """PostgreSQL: take this key's transaction lock if nobody holds it, without waiting.

    A first request holds it until it commits, so a concurrent retry is told 409 at once
    instead of blocking behind the first request's uncommitted row. SQLite needs none: its
    writers take turns (the request's transaction began with BEGIN IMMEDIATE).
    """
    if session.get_bind().dialect.name != "postgresql":
        return True
    seed = hashlib.sha256(f"idempotency\0{owner}\0{key}".encode("utf-8", "surrogatepass"))
    lock_id = int.from_bytes(seed.digest()[:8], "big", signed=True)
    taken = session.scalar(text("SELECT pg_try_advisory_xact_lock(:id)"), {"id": lock_id})
    return bool(taken)


def find(session: Session, owner: str, key: str) -> IdempotencyRecord | None:
    """The key's record as committed, if there is one."""
    return session.get(IdempotencyRecord, (owner, key))


def claim(
    session: Session,
    *,
    owner: str,
    key: str,
    request_hash: str,
    now: datetime,
    ttl: timedelta,
    stale: timedelta,
) -> IdempotencyRecord:
    """Claim ``key`` in the session's transaction and return its record, to settle later.

    Raises ``Replay`` when the key was settled for this request, ``IdempotencyKeyReused``
    (422) when it was used for another request, ``RequestInProgress`` (409) when a request
    holding it is still running. A key older than ``ttl`` is free again; an ``in_progress``
    record older than ``stale`` (left committed by versions that settled after answering)
    is taken over by a retry of the same request.
    """
    if not _try_lock(session, owner, key):
        raise RequestInProgress
    record = find(session, owner, key)
    if record is None:
        record = IdempotencyRecord(
            scope=owner, key=key, request_hash=request_hash, state=IN_PROGRESS, created_at=now
        )
        session.add(record)
        session.flush()
        return record
    expired = record.created_at < now - ttl
    abandoned = record.state == IN_PROGRESS and record.created_at < now - stale
    if expired or (abandoned and record.request_hash == request_hash):
        _reset(record, request_hash, now)
        session.flush()
        return record
    if record.request_hash != request_hash:
        raise IdempotencyKeyReused
    if record.state != DONE or record.response_status is None:
        raise RequestInProgress
    raise Replay(_answer_of(record))


def settle(session: Session, record: IdempotencyRecord, answer: StoredAnswer | None) -> None:
    """Store ``answer`` in the claimed ``record``; ``None`` (a 5xx, or an answer too big to
    keep) gives the key up instead, so that a retry runs again."""
    if answer is None or len(answer.body) > MAX_STORED_BODY_BYTES:
        session.delete(record)
    else:
        record.state = DONE
        record.response_status = answer.status
        record.response_headers = answer.headers
        # A secret is shown once: its answer is remembered as given, never kept to replay.
        record.response_body = b"" if answer.holds_secret else answer.body
    session.flush()


def settle_alone(
    session: Session,
    *,
    owner: str,
    key: str,
    request_hash: str,
    now: datetime,
    ttl: timedelta,
    answer: StoredAnswer,
) -> bool:
    """Keep the answer of a request that changed nothing (a 4xx), in a transaction of its own.

    Only when the key is free: a key settled or held by another request keeps its answer.
    True when the answer was kept.
    """
    if len(answer.body) > MAX_STORED_BODY_BYTES or not _try_lock(session, owner, key):
        return False
    record = find(session, owner, key)
    if record is None:
        record = IdempotencyRecord(scope=owner, key=key, created_at=now)
        session.add(record)
    elif record.created_at < now - ttl:
        record.created_at = now
    else:
        return False
    record.request_hash = request_hash
    settle(session, record, answer)
    return True


def purge_expired(session: Session, *, before: datetime, limit: int = 1000) -> int:
    """Delete up to ``limit`` keys created before ``before``; the number deleted."""
    expired = session.execute(
        select(IdempotencyRecord.scope, IdempotencyRecord.key)
        .where(IdempotencyRecord.created_at < before)
        .limit(limit)
    ).all()
    if not expired:
        return 0
    session.execute(
        delete(IdempotencyRecord).where(
            tuple_(IdempotencyRecord.scope, IdempotencyRecord.key).in_(
                [(row.scope, row.key) for row in expired]
            )
        )
    )
    return len(expired)


def _reset(record: IdempotencyRecord, request_hash: str, now: datetime) -> None:
    record.request_hash = request_hash
    record.state = IN_PROGRESS
    record.created_at = now
    record.response_status = None
    record.response_headers = None
    record.response_body = None


def _answer_of(record: IdempotencyRecord) -> StoredAnswer:
    assert record.response_status is not None
    answer = StoredAnswer(
        status=record.response_status,
        headers=record.response_headers or [],
        body=record.response_body or b"",
    )
    if answer.holds_secret:
        raise AnswerWithheld(answer.status, answer.location)
    return answer
