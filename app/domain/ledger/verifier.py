"""One ledger verification at a time per process, shared by all who ask, dropped when none do.

A verification reads the whole ledger and every row it vouches for: minutes, at a
few hundred thousand entries. It must never tie up what ordinary requests need,
so it runs in a thread of its own (not the request thread pool), on a connection
of its own (outside the request pool and the database gates), a page at a time.
Requesters wait on the event loop, holding no thread and no database slot. Those
who ask while a run is under way join it (single flight); when the last of them
leaves, the run stops at its next page. A finished verdict is kept for the ledger
head it verified, and given at once to later requests while the head stays there.
No HTTP here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.clock import Clock
from app.db import Database
from app.domain.ledger.service import Checkpoint, Head, Verdict, verify_database
from app.metrics import LEDGER_VERIFY_RUNNING, LEDGER_VERIFY_RUNS, LEDGER_VERIFY_WAITERS

log = logging.getLogger("pledgewatch.ledger")

RunVerification = Callable[[Checkpoint], Verdict]
"""Verifies the ledger, calling the checkpoint between pages (which may raise to stop it)."""


class VerifyCancelled(Exception):
    """Raised at a checkpoint: nobody waits for this verification any more."""


@dataclass(eq=False)
class _Run:
    number: int
    outcome: asyncio.Future[Verdict]
    stop: threading.Event = field(default_factory=threading.Event)
    waiters: int = 0


class LedgerVerifier:
    """Runs verifications for requests: single flight, cancellable, kept per ledger head."""

    def __init__(
        self,
        run: RunVerification,
        *,
        clock: Clock,
        reuse_seconds: float,
        pause_seconds: float = 0.0,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._verify = run
        self._clock = clock
        self._reuse_seconds = reuse_seconds
        self._pause_seconds = pause_seconds
        self._on_close = on_close
        self._running: _Run | None = None
        self._kept: tuple[Verdict, datetime] | None = None
        self._started = 0
        self._closed = False
        # How each run ended (ok, not_ok, cancelled, failed): what tests and logs look at.
        self.outcomes: Counter[str] = Counter()

    @classmethod
    def on_database(
        cls, url: str, *, clock: Clock, reuse_seconds: float, pause_seconds: float = 0.0
    ) -> LedgerVerifier:
        """A verifier with its own engine on ``url`` (one connection, outside the request
        pool); an in-memory SQLite URL would be another, empty, database."""
        database = Database(url, pool_size=1)

        def run(checkpoint: Checkpoint) -> Verdict:
            return verify_database(database, checkpoint=checkpoint)

        return cls(
            run,
            clock=clock,
            reuse_seconds=reuse_seconds,
            pause_seconds=pause_seconds,
            on_close=database.dispose,
        )

    @property
    def running(self) -> bool:
        return self._running is not None

    @property
    def waiters(self) -> int:
        """Requests waiting for the run under way."""
        return self._running.waiters if self._running is not None else 0

    def reusable(self, head: Head) -> Verdict | None:
        """The kept verdict, if it verified ``head`` recently enough to be given again."""
        if self._kept is None:
            return None
        verdict, at = self._kept
        if verdict.recorded != head:
            return None
        if (self._clock.now() - at).total_seconds() >= self._reuse_seconds:
            return None
        return verdict

    async def verdict(
        self, head: Head, *, until: Awaitable[object] | None = None
    ) -> Verdict | None:
        """A verdict of the ledger at ``head`` or later; None if ``until`` came first.

        ``until`` completes when the requester is gone (its client disconnected): it
        then stops waiting, and the run stops if nobody else waits for it. A run that
        began before this call and ends at another head is not taken: the next one is.
        """
        gone = asyncio.ensure_future(until) if until is not None else None
        try:
            arrived = self._started
            while True:
                kept = self.reusable(head)
                if kept is not None:
                    return kept
                run = self._running or self._start()
                try:
                    verdict = await self._wait(run, gone)
                except VerifyCancelled:
                    if self._closed:
                        raise
                    # It stopped (its waiters had left) before this call's joining took
                    # effect: start another.
                    continue
                if verdict is None or run.number > arrived or verdict.recorded == head:
                    return verdict
        finally:
            if gone is not None:
                gone.cancel()

    async def close(self, timeout: float = 5.0) -> None:
        """Stop the run under way (waiting at most ``timeout`` for it) and let go of the
        connection. Requests still waiting get an error."""
        self._closed = True
        run = self._running
        if run is not None:
            run.stop.set()
            with contextlib.suppress(Exception, TimeoutError):
                await asyncio.wait_for(asyncio.shield(run.outcome), timeout)
        if self._on_close is not None:
            self._on_close()

    def _start(self) -> _Run:
        if self._closed:
            raise RuntimeError("the ledger verifier is closed")
        loop = asyncio.get_running_loop()
        self._started += 1
        run = _Run(number=self._started, outcome=loop.create_future())
        self._running = run
        LEDGER_VERIFY_RUNNING.set(1)
        thread = threading.Thread(
            target=self._execute,
            args=(run, loop),
            name=f"ledger-verify-{run.number}",
            daemon=True,
        )
        thread.start()
        return run

    async def _wait(self, run: _Run, gone: asyncio.Future[object] | None) -> Verdict | None:
        run.waiters += 1
        LEDGER_VERIFY_WAITERS.inc()
        if not self._closed:
            # Joining a run whose waiters all left a moment ago keeps it going, unless it
            # has already stopped (then the outcome says VerifyCancelled).
            run.stop.clear()
        try:
            if gone is None:
                return await asyncio.shield(run.outcome)
            waited: set[asyncio.Future[Any]] = {run.outcome, gone}
            await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
            return run.outcome.result() if run.outcome.done() else None
        finally:
            run.waiters -= 1
            LEDGER_VERIFY_WAITERS.dec()
            if run.waiters == 0 and not run.outcome.done():
                run.stop.set()

    def _checkpoint(self, run: _Run) -> Checkpoint:
        pause = self._pause_seconds

        def checkpoint() -> None:
            if run.stop.is_set() or (pause > 0 and run.stop.wait(pause)):
                raise VerifyCancelled

        return checkpoint

    def _execute(self, run: _Run, loop: asyncio.AbstractEventLoop) -> None:
        """The run, in its own thread; its outcome is handed back to the event loop."""
        outcome: Verdict | BaseException
        try:
            outcome = self._verify(self._checkpoint(run))
        except BaseException as error:  # handed to the waiters, who raise it
            outcome = error
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
            loop.call_soon_threadsafe(self._settle, run, outcome)

    def _settle(self, run: _Run, outcome: Verdict | BaseException) -> None:
        self._running = None
        LEDGER_VERIFY_RUNNING.set(0)
        if isinstance(outcome, Verdict):
            name = "ok" if outcome.ok else "not_ok"
            self._kept = (outcome, self._clock.now())
            run.outcome.set_result(outcome)
        else:
            name = "cancelled" if isinstance(outcome, VerifyCancelled) else "failed"
            run.outcome.set_exception(outcome)
            run.outcome.exception()  # retrieved: an outcome nobody waits for is no error
            if name == "failed":
                log.error("ledger verification failed", exc_info=outcome)
            else:
                log.info("ledger verification stopped: nobody waits for it any more")
        self.outcomes[name] += 1
        LEDGER_VERIFY_RUNS.labels(name).inc()
