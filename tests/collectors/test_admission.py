"""A thread's transaction takes its turn at the app's gates, on the event loop, and keeps it
for the whole block: while it holds the writer's turn, no other writer is admitted."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest

from app.collectors.admission import LoopAdmission
from app.gates import DatabaseGates


class RecordingGates:
    """One writer at a time, like the app's gates on SQLite, saying who waits."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.writes: list[bool] = []
        self.waiting = threading.Semaphore(0)  # released once per admission that must wait

    @asynccontextmanager
    async def admit(self, *, write: bool) -> AsyncIterator[None]:
        self.writes.append(write)
        if self.lock.locked():
            self.waiting.release()
        async with self.lock:
            yield


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    running = asyncio.new_event_loop()
    thread = threading.Thread(target=running.run_forever, daemon=True)
    thread.start()
    yield running
    running.call_soon_threadsafe(running.stop)
    thread.join()
    running.close()


def test_a_second_writer_waits_until_the_first_thread_s_block_has_ended(
    loop: asyncio.AbstractEventLoop,
) -> None:
    gates = RecordingGates()
    admission = LoopAdmission(gates, loop)
    events: list[str] = []
    first_inside, first_may_leave = threading.Event(), threading.Event()

    def first() -> None:
        with admission(write=True):
            events.append("first in")
            first_inside.set()
            first_may_leave.wait()
            events.append("first out")

    def second() -> None:
        with admission(write=True):
            events.append("second in")

    threads = [threading.Thread(target=first)]
    threads[0].start()
    assert first_inside.wait(30)
    threads.append(threading.Thread(target=second))
    threads[1].start()
    assert gates.waiting.acquire(timeout=30), "the second writer queues at the gates"
    assert events == ["first in"], "and is not let in while the first holds its turn"

    first_may_leave.set()
    for thread in threads:
        thread.join(30)

    assert events == ["first in", "first out", "second in"]
    assert gates.writes == [True, True]


def test_reads_ask_for_a_reader_s_turn_at_the_real_gates(
    loop: asyncio.AbstractEventLoop,
) -> None:
    gates = DatabaseGates(connections=1, single_writer=True)
    admission = LoopAdmission(gates, loop)
    entered: list[bool] = []

    for write in (False, True, False):
        with admission(write=write):
            entered.append(write)

    assert entered == [False, True, False], "each turn is given back at the end of its block"


def test_a_closed_loop_fails_the_turn_instead_of_hanging() -> None:
    closed = asyncio.new_event_loop()
    closed.close()
    admission = LoopAdmission(DatabaseGates(connections=1, single_writer=True), closed)

    with pytest.raises(RuntimeError), admission(write=True):
        pytest.fail("admitted without a loop")
