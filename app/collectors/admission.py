"""Admission to the database for work done in threads, alongside the API's requests.

A request waits at the app's gates (app/gates.py) before it takes a connection: on
SQLite for the single writer's turn too. A feed poll runs in a scheduler thread of
the same process (``pledgewatch serve``) or in a background task; if its chunks
wrote without queueing at the same gates, an API write admitted meanwhile would wait
for SQLite's lock inside its thread instead, behind writers the gates never saw.
``LoopAdmission`` queues a thread's transaction at the very gates, on the app's
event loop, and holds its turn until the transaction ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Protocol

from app.gates import Admission as GatesAdmission
from app.gates import adopt, current_admission

# How often a waiting thread looks whether the loop gave up on its request (shutdown).
_CHECK_SECONDS = 1.0


class Admission(Protocol):
    """Waits for a turn to use the database; the turn lasts as long as the block."""

    def __call__(self, *, write: bool) -> AbstractContextManager[None]: ...


@contextlib.contextmanager
def no_admission(*, write: bool) -> Iterator[None]:
    """The turn of a process without gates (``pledgewatch scheduler``): at once."""
    yield


class Gates(Protocol):
    """The app's gates (app/gates.py ``DatabaseGates``), as far as admission needs them."""

    def admit(self, *, write: bool) -> AbstractAsyncContextManager[None]: ...


class LoopAdmission:
    """Admission at ``gates`` for threads other than the event loop's own."""

    def __init__(self, gates: Gates, loop: asyncio.AbstractEventLoop) -> None:
        self._gates = gates
        self._loop = loop

    async def _hold(
        self,
        write: bool,
        admitted: threading.Event,
        done: asyncio.Event,
        held: list[GatesAdmission | None],
    ) -> None:
        async with self._gates.admit(write=write):
            held.append(current_admission())
            admitted.set()
            await done.wait()

    @contextlib.contextmanager
    def __call__(self, *, write: bool) -> Iterator[None]:
        admitted = threading.Event()
        done = asyncio.Event()
        held: list[GatesAdmission | None] = []
        hold = self._hold(write, admitted, done, held)
        try:
            holding = asyncio.run_coroutine_threadsafe(hold, self._loop)
        except RuntimeError:  # the loop is closed: no turn will ever come
            hold.close()
            raise
        try:
            while not admitted.wait(_CHECK_SECONDS):
                if holding.done():
                    holding.result()  # raises why the turn never came (the loop closed)
                    raise RuntimeError("the database gates let go before admitting")
        except BaseException:
            holding.cancel()
            raise
        before = adopt(held[0])
        try:
            yield
        finally:
            adopt(before)
            # Set from the loop's own thread: asyncio primitives are not thread-safe.
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                self._loop.call_soon_threadsafe(done.set)
