"""The events broadcaster and the pull-based reader of each stream, on both databases."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.clock import FrozenClock
from app.db import Database
from app.domain.events import stream as stream_module
from app.domain.events.service import Event, read_events
from app.domain.events.stream import EventBroadcaster, TooManyStreams
from app.domain.ledger.models import LedgerEntry
from app.domain.ledger.service import read_head
from app.domain.pledges.schemas import PledgeCreate
from app.domain.pledges.service import create_pledge
from app.gates import DatabaseGates
from tests.factories import pledge_body

WAIT = 10.0
# Long enough never to tick during a test: wake-ups must come from where the test says.
NEVER = 3600.0


def write_pledges(database: Database, clock: FrozenClock, *ids: str) -> None:
    """Record pledges in one transaction; each one's history starts with a status.changed."""
    with database.transaction() as session:
        for pledge_id in ids:
            create_pledge(
                session,
                PledgeCreate(**pledge_body(id=pledge_id)),
                actor="key:test",
                now=clock.now(),
            )


def status_seqs(database: Database) -> list[int]:
    with database.transaction(write=False) as session:
        return list(
            session.scalars(
                select(LedgerEntry.seq)
                .where(LedgerEntry.kind == "status.changed")
                .order_by(LedgerEntry.seq)
            )
        )


def make_broadcaster(database: Database, **overrides: Any) -> EventBroadcaster:
    options: dict[str, Any] = {"poll_seconds": NEVER, "max_streams": 10, **overrides}
    return EventBroadcaster(
        database=database, gates=DatabaseGates(connections=4, single_writer=False), **options
    )


@asynccontextmanager
async def started(broadcaster: EventBroadcaster) -> AsyncIterator[EventBroadcaster]:
    await broadcaster.start()
    try:
        yield broadcaster
    finally:
        await broadcaster.stop()


class Follower:
    """Consumes ``follow`` in a task, as a stream's response would."""

    def __init__(self, broadcaster: EventBroadcaster, after: int, **options: Any) -> None:
        self.events: list[Event] = []
        self._arrived = asyncio.Event()
        self._task = asyncio.create_task(self._consume(broadcaster.follow(after=after, **options)))

    async def _consume(self, events: AsyncIterator[Event]) -> None:
        async for event in events:
            self.events.append(event)
            self._arrived.set()

    async def until(self, count: int) -> list[Event]:
        async with asyncio.timeout(WAIT):
            while len(self.events) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.events

    async def ended(self) -> None:
        await asyncio.wait_for(self._task, WAIT)

    def cancel(self) -> None:
        self._task.cancel()


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every page the broadcaster's streams read from the database."""
    sizes: list[int] = []
    real = read_events

    def counting(session: Session, *, after: int, limit: int, kinds: Collection[str]) -> Any:
        events = real(session, after=after, limit=limit, kinds=kinds)
        sizes.append(len(events))
        return events

    monkeypatch.setattr(stream_module, "read_events", counting)
    return sizes


async def until_pages(reads: list[int], count: int) -> None:
    """Wait until the streams have read ``count`` pages (so a write cannot race a first read)."""
    async with asyncio.timeout(WAIT):
        while len(reads) < count:
            await asyncio.sleep(0.005)


def test_a_stream_replays_what_is_after_its_start_then_follows_in_order(
    database: Database, clock: FrozenClock
) -> None:
    write_pledges(database, clock, "p-1", "p-2", "p-3")
    first, *rest = status_seqs(database)

    async def scenario() -> list[Event]:
        async with started(make_broadcaster(database)) as broadcaster:
            follower = Follower(broadcaster, after=first)
            await follower.until(2)
            # Written by this process: its ledger listener wakes the stream, no poll runs.
            await asyncio.to_thread(write_pledges, database, clock, "p-4")
            events = await follower.until(3)
            follower.cancel()
            return events

    events = asyncio.run(scenario())

    assert [event.seq for event in events] == [*rest, status_seqs(database)[-1]]
    assert [event.data["pledge_id"] for event in events] == ["p-2", "p-3", "p-4"]
    assert {event.kind for event in events} == {"status.changed"}


def test_writes_this_process_did_not_announce_are_found_by_the_poll(
    database: Database, clock: FrozenClock, reads: list[int]
) -> None:
    # Never started: no ledger listener, as for a write made by another process.
    broadcaster = make_broadcaster(database)

    async def scenario() -> tuple[int, list[Event]]:
        follower = Follower(broadcaster, after=0)
        await until_pages(reads, 1)
        await asyncio.to_thread(write_pledges, database, clock, "elsewhere")
        await asyncio.sleep(0.05)
        unseen = len(follower.events)
        await broadcaster.poll_once()
        events = await follower.until(1)
        follower.cancel()
        return unseen, events

    unseen, events = asyncio.run(scenario())

    assert unseen == 0
    assert [event.data["pledge_id"] for event in events] == ["elsewhere"]


def test_a_change_is_read_once_per_stream_even_when_the_poll_sees_it_too(
    database: Database, clock: FrozenClock, reads: list[int]
) -> None:
    async def scenario() -> list[int]:
        async with started(make_broadcaster(database)) as broadcaster:
            follower = Follower(broadcaster, after=0)
            await until_pages(reads, 1)
            await asyncio.to_thread(write_pledges, database, clock, "once")
            await follower.until(1)
            pages_before_polls = len(reads)
            # The poll now reads a head the stream has already read through.
            await broadcaster.poll_once()
            await broadcaster.poll_once()
            await asyncio.sleep(0.05)
            follower.cancel()
            return reads[pages_before_polls:]

    assert asyncio.run(scenario()) == []


def test_a_stream_reads_page_by_page_and_each_event_once(
    database: Database, clock: FrozenClock, reads: list[int]
) -> None:
    write_pledges(database, clock, *(f"p-{n}" for n in range(10)))

    async def scenario() -> list[Event]:
        broadcaster = make_broadcaster(database, page_size=3)
        follower = Follower(broadcaster, after=0)
        events = await follower.until(10)
        follower.cancel()
        return events

    events = asyncio.run(scenario())

    assert [event.seq for event in events] == status_seqs(database)
    assert reads == [3, 3, 3, 1]


def test_the_kinds_filter_skips_other_events(database: Database, clock: FrozenClock) -> None:
    write_pledges(database, clock, "a", "b")

    async def scenario() -> tuple[list[Event], list[Event]]:
        broadcaster = make_broadcaster(database)
        wanted = Follower(broadcaster, after=0, kinds=("status.changed",))
        unwanted = Follower(broadcaster, after=0, kinds=("proposal.created",))
        events = await wanted.until(2)
        await asyncio.sleep(0.05)
        wanted.cancel()
        unwanted.cancel()
        return events, unwanted.events

    events, unwanted = asyncio.run(scenario())

    assert len(events) == 2
    assert unwanted == []


def test_the_head_is_polled_only_while_a_stream_is_open(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    polls: list[int] = []
    real = read_head

    def counting(session: Session) -> Any:
        polls.append(1)
        return real(session)

    monkeypatch.setattr(stream_module, "read_head", counting)

    async def scenario() -> tuple[int, int]:
        async with started(make_broadcaster(database, poll_seconds=0.01)) as broadcaster:
            await asyncio.sleep(0.2)
            idle = len(polls)
            with broadcaster.slot():
                async with asyncio.timeout(WAIT):
                    while len(polls) < 3:
                        await asyncio.sleep(0.01)
            return idle, len(polls)

    idle, busy = asyncio.run(scenario())

    assert idle == 0
    assert busy >= 3


def test_slots_are_limited_and_given_back(database: Database) -> None:
    broadcaster = make_broadcaster(database, max_streams=2)

    with broadcaster.slot(), broadcaster.slot():
        assert broadcaster.streams == 2
        with pytest.raises(TooManyStreams) as refused, broadcaster.slot():
            pass
    assert broadcaster.streams == 0
    with broadcaster.slot():
        assert broadcaster.streams == 1

    assert refused.value.status == 503
    assert int(refused.value.headers["Retry-After"]) > 0


def test_stopping_the_broadcaster_ends_its_streams(database: Database) -> None:
    async def scenario() -> bool:
        broadcaster = make_broadcaster(database)
        await broadcaster.start()
        follower = Follower(broadcaster, after=0)
        await asyncio.sleep(0.05)
        await broadcaster.stop()
        await follower.ended()
        return broadcaster.closed

    assert asyncio.run(scenario())


def test_a_stream_ends_quietly_when_the_database_cannot_be_read(
    database: Database, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def failing(session: Session, **_: Any) -> Any:
        raise OperationalError("SELECT", {}, Exception("the server is restarting"))

    monkeypatch.setattr(stream_module, "read_events", failing)
    caplog.set_level(logging.WARNING, logger="pledgewatch.events")

    async def scenario() -> list[Event]:
        follower = Follower(make_broadcaster(database), after=0)
        await follower.ended()
        return follower.events

    assert asyncio.run(scenario()) == []
    assert "cannot read the ledger" in caplog.text


def test_the_poll_survives_a_failing_database(
    database: Database, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    attempts: list[int] = []
    real = read_head

    def flaky(session: Session) -> Any:
        attempts.append(1)
        if len(attempts) <= 3:
            raise OperationalError("SELECT", {}, Exception("the server is restarting"))
        return real(session)

    monkeypatch.setattr(stream_module, "read_head", flaky)
    caplog.set_level(logging.WARNING, logger="pledgewatch.events")

    async def scenario() -> None:
        async with started(make_broadcaster(database, poll_seconds=0.01)) as broadcaster:
            with broadcaster.slot():
                async with asyncio.timeout(WAIT):
                    while len(attempts) < 6:
                        await asyncio.sleep(0.01)

    asyncio.run(scenario())

    # One warning for the outage, not one per failed poll.
    assert caplog.text.count("cannot read the ledger head") == 1
