"""Admission to the database: one slot per task at most, and every wait bounded."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from app.clock import FrozenClock
from app.config import Settings
from app.db import Database
from app.errors import DatabaseBusy
from app.gates import DatabaseGates, NestedAdmission, current_admission
from app.main import create_app
from tests.factories import problem

WAIT = 10.0


class Holder:
    """Holds one admission in its own task until released."""

    def __init__(self, gates: DatabaseGates, *, write: bool = False) -> None:
        self.admitted = asyncio.Event()
        self._release = asyncio.Event()
        self.task = asyncio.create_task(self._hold(gates, write))

    async def _hold(self, gates: DatabaseGates, write: bool) -> None:
        async with gates.admit(write=write):
            self.admitted.set()
            await self._release.wait()

    async def release(self) -> None:
        self._release.set()
        await asyncio.wait_for(self.task, WAIT)


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        while not condition():
            await asyncio.sleep(0.005)


async def admitted_once(gates: DatabaseGates, *, write: bool = False) -> str:
    async with gates.admit(write=write):
        return "admitted"


# --- one admission per task ---------------------------------------------------------------------


def test_a_task_holding_a_slot_that_asks_for_another_is_refused_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gates = DatabaseGates(connections=2, single_writer=False)

    async def scenario() -> None:
        async with gates.admit(write=False):
            await gates.admit(write=False).__aenter__()

    with pytest.raises(NestedAdmission, match="asked for another"):
        asyncio.run(scenario())
    assert "asked for another" in caplog.text
    assert caplog.records[-1].levelno == logging.ERROR


def test_nesting_is_refused_even_with_one_slot_where_it_would_wait_for_ever() -> None:
    gates = DatabaseGates(connections=1, single_writer=True)

    async def scenario() -> None:
        async with gates.admit(write=True), asyncio.timeout(WAIT), gates.admit(write=False):
            pass

    with pytest.raises(NestedAdmission):
        asyncio.run(scenario())


def test_a_child_task_started_under_an_admission_may_not_take_another() -> None:
    gates = DatabaseGates(connections=2, single_writer=False)

    async def scenario() -> None:
        async with gates.admit(write=False):
            await asyncio.create_task(admitted_once(gates))

    with pytest.raises(NestedAdmission):
        asyncio.run(scenario())


def test_admissions_one_after_another_and_after_release_are_fine() -> None:
    gates = DatabaseGates(connections=1, single_writer=True)

    async def scenario() -> tuple[list[str], bool, bool]:
        results = [await admitted_once(gates, write=True) for _ in range(3)]
        async with gates.admit(write=False):
            held = current_admission() is not None
            # Started while the admission is held, run after it is released.
            later = asyncio.create_task(admitted_once(gates))
        results.append(await later)
        return results, held, current_admission() is None

    results, held, released = asyncio.run(scenario())

    assert results == ["admitted"] * 4
    assert held
    assert released


def test_worker_threads_see_the_admission_of_the_task_that_started_them() -> None:
    gates = DatabaseGates(connections=1, single_writer=False)

    async def scenario() -> tuple[bool, bool]:
        async with gates.admit(write=True):
            inside = await asyncio.to_thread(lambda: current_admission() is not None)
        outside = await asyncio.to_thread(lambda: current_admission() is None)
        return inside, outside

    assert asyncio.run(scenario()) == (True, True)


# --- bounded waits --------------------------------------------------------------------------------


def test_beyond_the_queue_bound_a_request_is_refused_at_once() -> None:
    gates = DatabaseGates(connections=1, single_writer=False, queue_max=1)

    async def scenario() -> tuple[DatabaseBusy, str]:
        holder = Holder(gates)
        await holder.admitted.wait()
        queued = asyncio.create_task(admitted_once(gates))
        await until(lambda: gates.waiting == 1)
        with pytest.raises(DatabaseBusy) as refused:
            await admitted_once(gates)
        await holder.release()
        return refused.value, await asyncio.wait_for(queued, WAIT)

    refused, queued = asyncio.run(scenario())

    assert refused.status == 503
    assert int(refused.headers["Retry-After"]) > 0
    assert "1 requests already wait" in refused.detail
    assert queued == "admitted"
    assert gates.waiting == 0


def test_a_request_that_waits_too_long_is_refused() -> None:
    gates = DatabaseGates(connections=1, single_writer=True, queue_timeout_seconds=0.05)

    async def scenario() -> tuple[type[BaseException], str, int]:
        holder = Holder(gates, write=True)
        await holder.admitted.wait()
        # A writer waits for the writer's turn, a reader for the one slot.
        with pytest.raises(DatabaseBusy) as refused_writer:
            await admitted_once(gates, write=True)
        with pytest.raises(DatabaseBusy):
            await admitted_once(gates)
        waiting_after = gates.waiting
        await holder.release()
        # Nothing was left held by the refused ones.
        return refused_writer.type, await admitted_once(gates, write=True), waiting_after

    refused, after, waiting = asyncio.run(scenario())

    assert refused is DatabaseBusy
    assert after == "admitted"
    assert waiting == 0


def test_background_readers_are_neither_counted_nor_refused() -> None:
    gates = DatabaseGates(
        connections=1, single_writer=False, queue_max=1, queue_timeout_seconds=0.05
    )

    async def background() -> str:
        async with gates.admit(write=False, background=True):
            return "admitted"

    async def scenario() -> tuple[int, str]:
        holder = Holder(gates)
        await holder.admitted.wait()
        waiting = asyncio.create_task(background())
        # Longer than the timeout, and it is not counted as waiting.
        await asyncio.sleep(0.2)
        counted = gates.waiting
        await holder.release()
        return counted, await asyncio.wait_for(waiting, WAIT)

    assert asyncio.run(scenario()) == (0, "admitted")


def test_a_cancelled_wait_is_no_longer_counted() -> None:
    gates = DatabaseGates(connections=1, single_writer=True, queue_max=5)

    async def scenario() -> tuple[int, str]:
        holder = Holder(gates, write=True)
        await holder.admitted.wait()
        queued = asyncio.create_task(admitted_once(gates, write=True))
        await until(lambda: gates.waiting == 1)
        queued.cancel()
        await asyncio.wait([queued])
        left = gates.waiting
        await holder.release()
        return left, await admitted_once(gates, write=True)

    assert asyncio.run(scenario()) == (0, "admitted")


# --- through the app ------------------------------------------------------------------------------


@asynccontextmanager
async def serving(
    settings: Settings, clock: FrozenClock, database: Database, **overrides: object
) -> AsyncIterator[tuple[httpx.AsyncClient, DatabaseGates]]:
    app = create_app(settings.model_copy(update=overrides), clock=clock, database=database)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http, app.state.gates


async def holding_every_slot(gates: DatabaseGates, slots: int) -> list[Holder]:
    holders = [Holder(gates) for _ in range(slots)]
    for holder in holders:
        await asyncio.wait_for(holder.admitted.wait(), WAIT)
    return holders


def test_a_request_beyond_the_queue_bound_is_a_503_with_retry_after(
    settings: Settings, clock: FrozenClock, database: Database
) -> None:
    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with serving(settings, clock, database, db_pool_size=1, db_queue_max=1) as (
            http,
            gates,
        ):
            holders = await holding_every_slot(gates, 2)
            queued = asyncio.create_task(http.get("/api/v1/pledges"))
            await until(lambda: gates.waiting == 1)
            refused = await http.get("/api/v1/pledges")
            for holder in holders:
                await holder.release()
            return refused, await asyncio.wait_for(queued, WAIT)

    refused, queued = asyncio.run(scenario())

    body = problem(refused, 503)
    assert body["type"].endswith("/database-busy")
    assert int(refused.headers["Retry-After"]) > 0
    assert queued.status_code == 200


def test_a_request_waiting_too_long_for_the_database_is_a_503(
    settings: Settings, clock: FrozenClock, database: Database
) -> None:
    async def scenario() -> httpx.Response:
        async with serving(
            settings, clock, database, db_pool_size=1, db_queue_timeout_seconds=0.05
        ) as (http, gates):
            holders = await holding_every_slot(gates, 2)
            try:
                return await http.get("/api/v1/ledger")
            finally:
                for holder in holders:
                    await holder.release()

    refused = asyncio.run(scenario())

    problem(refused, 503)
    assert int(refused.headers["Retry-After"]) > 0
