"""Admission to the database, awaited on the event loop instead of in worker threads.

Sync handlers run in a bounded thread pool. If threads could block waiting for a
pool connection or for SQLite's single write lock, the request holding the lock
might find no thread left to finish in, and everything would stall until
timeouts. So a request first waits here, asynchronously, for a connection slot
and (on SQLite) for the writer's turn; a thread is only taken once it can run.

Two rules keep the gates from ever wedging the process:

- **One admission at a time per task.** A task that holds a slot and asks for a
  second one waits for itself once every slot is held the same way (twenty
  ``/events`` requests did exactly that). The gates remember each task's admission
  (a context variable, which worker threads and child tasks inherit) and refuse a
  second one with ``NestedAdmission``: a programming error, logged and raised in
  tests and in production alike, never a hang.
- **Every wait is bounded.** Beyond ``queue_max`` requests waiting, or after
  ``queue_timeout_seconds`` of waiting, a request is refused with ``DatabaseBusy``
  (``503`` with ``Retry-After``): overload is shed instead of queued without end.
  The process's own background readers (one task each) pass ``background=True``:
  they are neither counted nor refused, since shedding them would relieve nothing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import anyio

from app.errors import DatabaseBusy
from app.metrics import DB_ADMISSIONS_REFUSED

log = logging.getLogger("pledgewatch.gates")

# What a refused request is told to wait before retrying.
RETRY_AFTER_SECONDS = 2


class NestedAdmission(RuntimeError):
    """A task holding a database admission asked for another one (a programming error)."""


@dataclass(slots=True)
class Admission:
    """One task's hold on a database slot, while ``active``.

    Child tasks and worker threads started while it is held inherit it (context
    variables are copied); ``active`` turns false when it is released, so that a task
    started under it and outliving it is not taken for its holder.
    """

    write: bool
    active: bool = True


_current: ContextVar[Admission | None] = ContextVar("pledgewatch_admission", default=None)


def current_admission() -> Admission | None:
    """The admission the current task (or thread) holds, if any."""
    admission = _current.get()
    return admission if admission is not None and admission.active else None


def adopt(admission: Admission | None) -> Admission | None:
    """Make ``admission``, held by a helper task on this task's (or thread's) behalf, its
    own; returns what it held before, to adopt back when done.

    A keyed POST's admission is held by a task of the idempotency middleware (released
    once the answer is stored, possibly from another task), a feed poll's by a task on the
    event loop for the poll's thread; adopting it refuses nesting there too, and lets
    audits see the connection as admitted. It lapses when the holder releases it.
    """
    before = _current.get()
    _current.set(admission)
    return before


def refuse_nesting(wanted: str) -> None:
    """Raise ``NestedAdmission`` (logged) if this task holds an admission: for what waits for
    a database slot, here or in another task on this one's behalf (``wanted`` names it)."""
    if current_admission() is None:
        return
    message = (
        f"a task holding a database admission asked for {wanted}: it would wait for itself "
        "once every slot is held that way; release the first one before asking again (or "
        "do the work inside it)"
    )
    log.error(message, stack_info=True)
    raise NestedAdmission(message)


class DatabaseGates:
    """One per app: ``connections`` slots, a single writer's turn on SQLite, bounded waits.

    ``queue_max`` and ``queue_timeout_seconds`` of None leave the waits unbounded.
    """

    def __init__(
        self,
        *,
        connections: int,
        single_writer: bool,
        queue_max: int | None = None,
        queue_timeout_seconds: float | None = None,
        retry_after_seconds: int = RETRY_AFTER_SECONDS,
    ) -> None:
        self._connections = anyio.Semaphore(connections)
        self._writer = anyio.Lock() if single_writer else None
        self._queue_max = queue_max
        self._queue_timeout = queue_timeout_seconds
        self._retry_after = retry_after_seconds
        self._waiting = 0

    @property
    def waiting(self) -> int:
        """Requests waiting for admission now (background readers not counted)."""
        return self._waiting

    @property
    def queue_timeout_seconds(self) -> float | None:
        return self._queue_timeout

    @asynccontextmanager
    async def admit(self, *, write: bool, background: bool = False) -> AsyncIterator[None]:
        """Hold a connection slot (and on SQLite, for a write, the writer's turn).

        Raises ``NestedAdmission`` when this task already holds one, and ``DatabaseBusy``
        when the wait would be, or has been, too long (never for ``background``).
        """
        refuse_nesting("another")
        lock = self._writer if write else None
        if not self._enter_now(lock):
            await self._wait_to_enter(lock, background=background)
        admission = Admission(write=write)
        token = _current.set(admission)
        try:
            yield
        finally:
            admission.active = False
            if lock is not None:
                lock.release()
            self._connections.release()
            # Released from another context than the one that entered (a generator finalised
            # elsewhere), the reset fails: ``active`` is already false, which is what counts.
            with contextlib.suppress(ValueError):
                _current.reset(token)

    def busy(self, detail: str) -> DatabaseBusy:
        """The error a request is refused with when the database is too busy to wait for."""
        return DatabaseBusy(detail, retry_after_seconds=self._retry_after)

    def _enter_now(self, lock: anyio.Lock | None) -> bool:
        """Take the slot (and the writer's turn) if nobody waits for them; else take nothing."""
        if lock is not None:
            try:
                lock.acquire_nowait()
            except anyio.WouldBlock:
                return False
        try:
            self._connections.acquire_nowait()
        except anyio.WouldBlock:
            if lock is not None:
                lock.release()
            return False
        return True

    async def _wait_to_enter(self, lock: anyio.Lock | None, *, background: bool) -> None:
        if not background and self._queue_max is not None and self._waiting >= self._queue_max:
            DB_ADMISSIONS_REFUSED.labels("queue_full").inc()
            raise self.busy(
                f"the database is busy: {self._waiting} requests already wait for it; "
                f"retry in {self._retry_after} s"
            )
        deadline = None if background else self._queue_timeout
        if not background:
            self._waiting += 1
        try:
            with anyio.fail_after(deadline):
                if lock is not None:
                    await lock.acquire()
                try:
                    await self._connections.acquire()
                except BaseException:
                    if lock is not None:
                        lock.release()
                    raise
        except TimeoutError:
            DB_ADMISSIONS_REFUSED.labels("timeout").inc()
            raise self.busy(
                f"the database is busy: waited {self._queue_timeout:g} s for it; "
                f"retry in {self._retry_after} s"
            ) from None
        finally:
            if not background:
                self._waiting -= 1
