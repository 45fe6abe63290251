"""The verify service: one run shared by every requester, stopped when they have all gone.

The verification itself is replaced by one that moves a page only when the test lets
it, so every interleaving here is decided by the test, not by timing.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

import pytest

from app.clock import FrozenClock
from app.domain.ledger.service import Checkpoint, Head, Verdict
from app.domain.ledger.verifier import LedgerVerifier, VerifyCancelled
from tests.conftest import NOW

WAIT = 10.0
H1 = Head(3, "a" * 64)
H2 = Head(4, "b" * 64)


class SteppedLedger:
    """A verification of ``pages`` pages that takes each page only when ``step`` is called."""

    def __init__(self, pages: int = 3) -> None:
        self.pages = pages
        self.head = H1
        self.failure: Exception | None = None
        self.started = 0
        self.pages_done = 0
        self.active = 0
        self.most_active = 0
        self._steps = threading.Semaphore(0)
        self._lock = threading.Lock()

    def step(self, pages: int = 1) -> None:
        for _ in range(pages):
            self._steps.release()

    def run(self, checkpoint: Checkpoint) -> Verdict:
        with self._lock:
            self.started += 1
            self.active += 1
            self.most_active = max(self.most_active, self.active)
            head = self.head  # the run's snapshot
        try:
            for _ in range(self.pages):
                checkpoint()
                assert self._steps.acquire(timeout=WAIT), "the test never let this page go"
                self.pages_done += 1
            if self.failure is not None:
                raise self.failure
            return Verdict(ok=True, length=head.length, head=head.hash, recorded=head)
        finally:
            with self._lock:
                self.active -= 1


def verifier_on(ledger: SteppedLedger, clock: FrozenClock) -> LedgerVerifier:
    return LedgerVerifier(ledger.run, clock=clock, reuse_seconds=600)


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait for ``condition`` (set by the verification's thread) without a fixed sleep."""
    async with asyncio.timeout(WAIT):
        while not condition():
            await asyncio.sleep(0.002)


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def verify_threads() -> int:
    return sum(thread.name.startswith("ledger-verify") for thread in threading.enumerate())


def test_concurrent_requesters_share_one_run_and_hold_no_thread_while_waiting() -> None:
    ledger = SteppedLedger()
    verifier = verifier_on(ledger, FrozenClock(NOW))

    async def scenario() -> None:
        requests = [asyncio.create_task(verifier.verdict(H1)) for _ in range(40)]
        await eventually(lambda: verifier.waiters == 40)
        # Forty requesters and one thread: the run's own.
        assert verify_threads() == 1
        assert ledger.started == 1
        ledger.step(ledger.pages)
        verdicts = await asyncio.gather(*requests)
        assert all(verdict is verdicts[0] for verdict in verdicts)
        assert verdicts[0] is not None
        assert verdicts[0].recorded == H1
        assert verifier.outcomes == {"ok": 1}
        assert not verifier.running

    run(scenario)
    assert ledger.most_active == 1


def test_a_verdict_is_reused_while_the_head_stays_and_the_window_lasts() -> None:
    ledger = SteppedLedger(pages=1)
    clock = FrozenClock(NOW)
    verifier = verifier_on(ledger, clock)

    async def scenario() -> None:
        ledger.step()
        first = await verifier.verdict(H1)
        assert verifier.reusable(H1) is first
        assert await verifier.verdict(H1) is first
        assert ledger.started == 1

        # The head moved: a new run, for the new head.
        ledger.head = H2
        ledger.step()
        second = await verifier.verdict(H2)
        assert second is not None
        assert second.recorded == H2
        assert verifier.reusable(H1) is None
        assert ledger.started == 2

        # Same head, but the kept verdict is too old: verified again.
        clock.advance(timedelta(seconds=600))
        assert verifier.reusable(H2) is None
        ledger.step()
        assert await verifier.verdict(H2) is not second
        assert ledger.started == 3

    run(scenario)


def test_the_run_stops_at_its_next_page_when_every_requester_has_left() -> None:
    ledger = SteppedLedger(pages=5)
    verifier = verifier_on(ledger, FrozenClock(NOW))

    async def scenario() -> None:
        first_gone, second_gone = asyncio.Event(), asyncio.Event()
        first = asyncio.create_task(verifier.verdict(H1, until=first_gone.wait()))
        second = asyncio.create_task(verifier.verdict(H1, until=second_gone.wait()))
        await eventually(lambda: verifier.waiters == 2)

        first_gone.set()
        assert await first is None
        # Someone still waits: the run goes on.
        ledger.step()
        await eventually(lambda: ledger.pages_done == 1)
        assert verifier.running

        second_gone.set()
        assert await second is None
        assert verifier.waiters == 0
        # Let the page it is on finish: at the next checkpoint it stops.
        ledger.step()
        await eventually(lambda: not verifier.running)
        assert verifier.outcomes == {"cancelled": 1}
        assert ledger.pages_done == 2
        assert verifier.reusable(H1) is None

    run(scenario)
    assert ledger.active == 0
    assert ledger.started == 1


def test_a_requester_arriving_before_the_run_stops_keeps_it_going() -> None:
    ledger = SteppedLedger(pages=2)
    verifier = verifier_on(ledger, FrozenClock(NOW))

    async def scenario() -> None:
        gone = asyncio.Event()
        leaving = asyncio.create_task(verifier.verdict(H1, until=gone.wait()))
        await eventually(lambda: verifier.waiters == 1)
        gone.set()
        assert await leaving is None
        # The run has been told to stop but is still on its page: a newcomer joins it.
        staying = asyncio.create_task(verifier.verdict(H1))
        await eventually(lambda: verifier.waiters == 1)
        ledger.step(2)
        verdict = await staying
        assert verdict is not None
        assert verdict.ok
        assert verifier.outcomes == {"ok": 1}

    run(scenario)
    assert ledger.started == 1


def test_a_run_stopped_before_a_newcomer_joined_is_followed_by_one_new_run() -> None:
    ledger = SteppedLedger(pages=2)
    verifier = verifier_on(ledger, FrozenClock(NOW))

    async def scenario() -> None:
        gone = asyncio.Event()
        leaving = asyncio.create_task(verifier.verdict(H1, until=gone.wait()))
        await eventually(lambda: verifier.waiters == 1)
        gone.set()
        assert await leaving is None
        ledger.step()
        await eventually(lambda: not verifier.running)
        ledger.step(2)
        verdict = await verifier.verdict(H1)
        assert verdict is not None
        assert verdict.ok
        assert verifier.outcomes == {"cancelled": 1, "ok": 1}

    run(scenario)
    assert ledger.started == 2
    assert ledger.most_active == 1


def test_a_run_that_began_before_a_write_is_followed_by_one_for_the_new_head() -> None:
    ledger = SteppedLedger(pages=1)
    verifier = verifier_on(ledger, FrozenClock(NOW))

    async def scenario() -> None:
        early = asyncio.create_task(verifier.verdict(H1))
        await eventually(lambda: ledger.started == 1)
        ledger.head = H2  # a write committed after the run took its snapshot
        late = asyncio.create_task(verifier.verdict(H2))
        await eventually(lambda: verifier.waiters == 2)
        ledger.step()
        early_verdict = await early
        assert early_verdict is not None
        assert early_verdict.recorded == H1
        await eventually(lambda: ledger.started == 2)
        ledger.step()
        late_verdict = await late
        assert late_verdict is not None
        assert late_verdict.recorded == H2

    run(scenario)
    # One after the other, never two at once.
    assert ledger.most_active == 1


def test_a_failed_run_fails_its_requesters_and_the_next_request_runs_again() -> None:
    ledger = SteppedLedger(pages=1)
    ledger.failure = RuntimeError("the database went away")
    verifier = verifier_on(ledger, FrozenClock(NOW))

    async def scenario() -> None:
        requests = [asyncio.create_task(verifier.verdict(H1)) for _ in range(3)]
        await eventually(lambda: verifier.waiters == 3)
        ledger.step()
        for request in requests:
            with pytest.raises(RuntimeError, match="went away"):
                await request
        assert verifier.outcomes == {"failed": 1}
        ledger.failure = None
        ledger.step()
        verdict = await verifier.verdict(H1)
        assert verdict is not None
        assert verdict.ok

    run(scenario)


def test_closing_stops_the_run_under_way() -> None:
    ledger = SteppedLedger(pages=3)
    closed: list[str] = []
    verifier = LedgerVerifier(
        ledger.run,
        clock=FrozenClock(NOW),
        reuse_seconds=600,
        on_close=lambda: closed.append("connection"),
    )

    async def scenario() -> None:
        request = asyncio.create_task(verifier.verdict(H1))
        await eventually(lambda: verifier.waiters == 1)
        closing = asyncio.create_task(verifier.close())
        await asyncio.sleep(0)  # close() has told the run to stop, and waits for it
        ledger.step()
        await closing
        with pytest.raises(VerifyCancelled):
            await request

    run(scenario)
    assert verifier.outcomes == {"cancelled": 1}
    assert closed == ["connection"]


def test_a_pause_between_pages_ends_as_soon_as_nobody_waits() -> None:
    ledger = SteppedLedger(pages=2)
    # An hour between pages: only the stop can end the pause in this test's lifetime.
    verifier = LedgerVerifier(
        ledger.run, clock=FrozenClock(NOW), reuse_seconds=600, pause_seconds=3600
    )

    async def scenario() -> None:
        gone = asyncio.Event()
        request = asyncio.create_task(verifier.verdict(H1, until=gone.wait()))
        await eventually(lambda: verifier.waiters == 1)
        gone.set()
        assert await request is None
        await eventually(lambda: not verifier.running)

    run(scenario)
    assert verifier.outcomes == {"cancelled": 1}
    assert ledger.pages_done == 0


async def _never() -> None:
    await asyncio.Event().wait()


def test_the_watch_for_a_leaving_client_ends_with_the_answer() -> None:
    ledger = SteppedLedger(pages=1)
    verifier = verifier_on(ledger, FrozenClock(NOW))

    async def scenario() -> None:
        ledger.step()
        assert await verifier.verdict(H1, until=_never()) is not None
        await asyncio.sleep(0)
        # No task is left behind waiting for a client that has had its answer.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert others == []

    run(scenario)
