"""A keyed POST's idempotency state, passed from the middleware to the request's transaction
and back.

The middleware makes one ``IdempotencyContext`` per ``POST`` with an ``Idempotency-Key`` and
puts it in the request's scope. ``get_session`` (after authentication) claims the key inside
the request's transaction and, instead of committing, hands the transaction back: the
middleware stores the answer in it, commits, and only then lets the answer leave. The
request's database admission is held for it until that commit.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, MutableMapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from sqlalchemy.orm import Session

from app.db import Database
from app.domain.idempotency import service
from app.domain.idempotency.models import IdempotencyRecord
from app.domain.idempotency.service import StoredAnswer
from app.gates import Admission, current_admission

_SCOPE_STATE_KEY = "idempotency"


class Stage(enum.Enum):
    # The request has not reached its transaction (or is anonymous: keys are not claimed).
    UNCLAIMED = "unclaimed"
    # Claimed; the transaction waits, uncommitted, for the answer to be stored in it.
    PENDING = "pending"
    # Claimed, then the request failed: its transaction, claim included, was rolled back.
    ROLLED_BACK = "rolled_back"
    # Nothing more to keep: the key answered (a replay, or a 409/422 about the key), or the
    # answer was committed with the request's effect.
    SETTLED = "settled"


@dataclass(frozen=True, slots=True)
class KeyRules:
    """How long keys live, and when an unfinished legacy claim may be taken over."""

    ttl: timedelta
    stale: timedelta


@dataclass
class IdempotencyContext:
    key: str
    request_hash: str
    holders: TaskGroup
    stage: Stage = Stage.UNCLAIMED
    owner: str | None = None
    _session: Session | None = None
    _record: IdempotencyRecord | None = None
    _release: anyio.Event = field(default_factory=anyio.Event)
    _released: anyio.Event | None = None

    # --- the request's admission --------------------------------------------------------------

    async def hold(self, admission: AbstractAsyncContextManager[Any]) -> Admission | None:
        """Enter the request's database admission and keep it until ``release``; returns
        the admission, for the request's task to adopt (``gates.adopt``).

        It is held by a task of its own: the answer may be settled from another task than
        the one that was admitted, and a lock is released by the task that holds it.
        """
        released = anyio.Event()
        self._released = released

        async def keep(
            *, task_status: TaskStatus[Admission | None] = anyio.TASK_STATUS_IGNORED
        ) -> None:
            try:
                async with admission:
                    task_status.started(current_admission())
                    await self._release.wait()
            finally:
                released.set()

        held: Admission | None = await self.holders.start(keep)
        return held

    async def release(self) -> None:
        """Give the admission back (idempotent); returns once it is given back."""
        self._release.set()
        if self._released is not None:
            await self._released.wait()

    @property
    def pending(self) -> bool:
        return self.stage is Stage.PENDING

    # --- the request's transaction (get_session) ------------------------------------------

    def claimed_transaction(
        self, database: Database, *, actor: str, now: datetime, rules: KeyRules
    ) -> Iterator[Session]:
        """The request's transaction with the key claimed in it; handed back uncommitted.

        Raises what ``service.claim`` raises (a replay, a 409, a 422) before yielding.
        """
        self.owner = service.owner_of(actor)
        session = database.session(write=True)
        try:
            self._record = service.claim(
                session,
                owner=self.owner,
                key=self.key,
                request_hash=self.request_hash,
                now=now,
                ttl=rules.ttl,
                stale=rules.stale,
            )
        except BaseException as refusal:
            answered = isinstance(refusal, service.Replay | service.KeyRefusal)
            self.stage = Stage.SETTLED if answered else Stage.ROLLED_BACK
            _close(session, rollback=True)
            raise
        try:
            yield session
        except BaseException:
            self.stage = Stage.ROLLED_BACK
            _close(session, rollback=True)
            raise
        self._session = session
        self.stage = Stage.PENDING

    # --- the middleware's side ------------------------------------------------------------

    def commit(self, answer: StoredAnswer | None) -> None:
        """Store ``answer`` (None: give the key up) with the request's effect and commit.

        Blocking: call it in a worker thread. The transaction is closed either way; an error
        means nothing of the request was committed (or, if the connection broke during the
        commit, that it may have been: the stored answer is then replayed on retry).
        """
        session, record = self._session, self._record
        assert session is not None
        assert record is not None
        self._session = None
        self.stage = Stage.ROLLED_BACK
        try:
            service.settle(session, record, answer)
            session.commit()
            self.stage = Stage.SETTLED
        finally:
            _close(session, rollback=self.stage is not Stage.SETTLED)

    def abandon(self) -> None:
        """Roll back a transaction still waiting for its answer (the request failed)."""
        session, self._session = self._session, None
        if session is not None:
            self.stage = Stage.ROLLED_BACK
            _close(session, rollback=True)

    def keep_alone(
        self, database: Database, *, owner: str, answer: StoredAnswer, now: datetime, ttl: timedelta
    ) -> bool:
        """Keep the answer of a request that changed nothing, in a transaction of its own."""
        with database.transaction() as session:
            return service.settle_alone(
                session,
                owner=owner,
                key=self.key,
                request_hash=self.request_hash,
                now=now,
                ttl=ttl,
                answer=answer,
            )


def _close(session: Session, *, rollback: bool) -> None:
    try:
        if rollback:
            session.rollback()
    finally:
        session.close()


def attach(scope: MutableMapping[str, Any], context: IdempotencyContext) -> None:
    scope.setdefault("state", {})[_SCOPE_STATE_KEY] = context


def context_of(scope: MutableMapping[str, Any]) -> IdempotencyContext | None:
    """The request's idempotency context: only a ``POST`` with a valid key has one."""
    context = scope.get("state", {}).get(_SCOPE_STATE_KEY)
    return context if isinstance(context, IdempotencyContext) else None
