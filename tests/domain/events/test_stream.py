"""The events broadcaster and the pull-based reader of each stream, on both databases."""

from __future__ import annotations

import asyncio
import itertools
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
from app.domain.events.stream import EventBroadcaster, RecentEvents, TooManyStreams
from app.domain.ledger.models import LedgerEntry
from app.domain.ledger.service import read_head, remove_listener
from app.domain.pledges.schemas import PledgeCreate
from app.domain.pledges.service import create_pledge
from app.gates import DatabaseGates
from tests.conftest import NOW
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
            follower = Follower(broadcaster, after=0)
            async with asyncio.timeout(WAIT):
                while len(polls) < 3:
                    await asyncio.sleep(0.01)
            follower.cancel()
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
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    attempts: list[int] = []
    caplog.set_level(logging.WARNING, logger="pledgewatch.events")

    async def scenario() -> None:
        broadcaster = make_broadcaster(database, poll_seconds=0.01)
        real = broadcaster._read_round

        def flaky(after: int | None, reach: int | None) -> Any:
            # Only the reader's rounds fail: the stream's own first page is read as usual.
            attempts.append(1)
            if len(attempts) <= 3:
                raise OperationalError("SELECT", {}, Exception("the server is restarting"))
            return real(after, reach)

        broadcaster._read_round = flaky  # type: ignore[method-assign]
        async with started(broadcaster):
            follower = Follower(broadcaster, after=0)
            async with asyncio.timeout(WAIT):
                while len(attempts) < 6:
                    await asyncio.sleep(0.01)
            follower.cancel()

    asyncio.run(scenario())

    # One warning for the outage, not one per failed poll.
    assert caplog.text.count("cannot read the ledger head") == 1


# --- one read per process: the shared buffer of recent events -----------------------------------


def test_each_new_page_is_read_once_for_every_stream(
    database: Database, clock: FrozenClock, reads: list[int]
) -> None:
    write_pledges(database, clock, "before")

    async def scenario() -> tuple[list[list[Event]], list[int]]:
        async with started(make_broadcaster(database)) as broadcaster:
            head = await broadcaster.current_head()
            followers = [Follower(broadcaster, after=head) for _ in range(20)]
            # Every stream starts at the buffer's edge: none reads anything itself.
            await asyncio.sleep(0.05)
            assert reads == []
            await asyncio.to_thread(write_pledges, database, clock, "p-1", "p-2", "p-3")
            received = [await follower.until(3) for follower in followers]
            for follower in followers:
                follower.cancel()
            return received, list(reads)

    received, pages = asyncio.run(scenario())

    new = status_seqs(database)[1:]
    assert all([event.seq for event in events] == new for events in received)
    # One page, read by the broadcaster, for all twenty streams.
    assert pages == [3]


def test_the_kinds_filter_applies_to_the_shared_events(
    database: Database, clock: FrozenClock
) -> None:
    async def scenario() -> tuple[list[Event], list[Event]]:
        async with started(make_broadcaster(database)) as broadcaster:
            head = await broadcaster.current_head()
            wanted = Follower(broadcaster, after=head, kinds=("status.changed",))
            unwanted = Follower(broadcaster, after=head, kinds=("proposal.created",))
            await asyncio.to_thread(write_pledges, database, clock, "a", "b")
            events = await wanted.until(2)
            # The unwanted stream has seen the same buffer by now: it was woken first.
            await asyncio.sleep(0.05)
            wanted.cancel()
            unwanted.cancel()
            return events, unwanted.events

    events, unwanted = asyncio.run(scenario())

    assert [event.data["pledge_id"] for event in events] == ["a", "b"]
    assert unwanted == []


def test_a_burst_of_new_streams_reads_the_head_once_or_twice(
    database: Database, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_pledges(database, clock, "p-1", "p-2")
    heads: list[int] = []
    real = read_head

    def counting(session: Session) -> Any:
        heads.append(1)
        return real(session)

    monkeypatch.setattr(stream_module, "read_head", counting)

    async def scenario() -> list[int]:
        async with started(make_broadcaster(database)) as broadcaster:
            return await asyncio.gather(*(broadcaster.current_head() for _ in range(200)))

    answers = asyncio.run(scenario())

    assert set(answers) == {status_seqs(database)[-1]}
    # Shared: the round that was asked for, and at most one that was already running.
    assert 1 <= len(heads) <= 2


def test_the_head_is_read_after_it_was_asked_for(database: Database, clock: FrozenClock) -> None:
    async def scenario() -> tuple[int, int]:
        async with started(make_broadcaster(database)) as broadcaster:
            first = await broadcaster.current_head()
            # Written by "another process": no announcement, and no poll would come.
            remove_listener(broadcaster._on_commit)
            await asyncio.to_thread(write_pledges, database, clock, "late")
            return first, await broadcaster.current_head()

    first, second = asyncio.run(scenario())

    assert first == 0
    assert second == status_seqs(database)[-1]


def test_a_stream_behind_the_buffer_reads_pages_itself_then_joins_it(
    database: Database, clock: FrozenClock, reads: list[int]
) -> None:
    write_pledges(database, clock, *(f"old-{n}" for n in range(7)))

    async def scenario() -> tuple[list[Event], list[int], list[int]]:
        broadcaster = make_broadcaster(database, page_size=3, buffer_events=3)
        async with started(broadcaster):
            await broadcaster.current_head()
            # Resuming from the start: the buffer holds nothing that old.
            follower = Follower(broadcaster, after=0)
            await follower.until(7)
            own_pages = list(reads)
            await asyncio.to_thread(write_pledges, database, clock, "new-1", "new-2")
            events = await follower.until(9)
            follower.cancel()
            return events, own_pages, reads[len(own_pages) :]

    events, own_pages, later = asyncio.run(scenario())

    assert [event.seq for event in events] == status_seqs(database)
    assert own_pages == [3, 3, 1]
    # The new events were read once, by the broadcaster, and reached the stream from there.
    assert later == [2]


def test_a_slow_stream_the_buffer_moved_past_catches_up_one_page_at_a_time(
    database: Database, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> tuple[list[Event], list[tuple[int, int]], int]:
        broadcaster = make_broadcaster(database, page_size=3, buffer_events=4)
        # (events the stream had handed on, size of the page) at each page it read itself
        own_reads: list[tuple[int, int]] = []
        taken: list[Event] = []
        real = broadcaster._read_page

        async def counting(after: int, kinds: Collection[str]) -> Any:
            page = await real(after, kinds)
            own_reads.append((len(taken), len(page.events)))
            return page

        monkeypatch.setattr(broadcaster, "_read_page", counting)
        async with started(broadcaster):
            head = await broadcaster.current_head()
            stream = broadcaster.follow(after=head)
            # Its client reads nothing while ten events are committed: the buffer keeps
            # the last four, the stream holds nothing.
            first = asyncio.ensure_future(anext(stream))
            await asyncio.to_thread(write_pledges, database, clock, *(f"p-{n}" for n in range(10)))
            taken.append(await first)
            await broadcaster.poll_once()
            kept = len(broadcaster.recent)
            while len(taken) < 10:
                taken.append(await anext(stream))
            await stream.aclose()
            return taken, own_reads, kept

    taken, own_reads, kept = asyncio.run(scenario())

    assert [event.seq for event in taken] == status_seqs(database)
    assert kept == 4
    # Behind the buffer, the stream read for itself: a page at a time, each only once every
    # event of the one before had been handed on.
    assert own_reads
    assert all(size <= 3 for _, size in own_reads)
    for (handed, size), (handed_next, _) in itertools.pairwise(own_reads):
        assert handed_next == handed + size


def event_at(seq: int) -> Event:
    return Event(seq=seq, kind="status.changed", at=NOW, subject=f"status_change:{seq}", data={})


def test_the_buffer_keeps_the_most_recent_events_and_says_how_far_back_it_reaches() -> None:
    recent = RecentEvents(capacity=3)
    assert not recent.covers(0)

    recent.restart(10)
    recent.extend([event_at(12), event_at(13)], read_through=15)
    assert recent.covers(10)
    assert not recent.covers(9)
    assert recent.next_after(10) == event_at(12)
    assert recent.next_after(13) is None

    recent.extend([event_at(16), event_at(18)], read_through=20)

    assert len(recent) == 3
    assert recent.floor == 12
    assert not recent.covers(11)
    assert recent.next_after(12) == event_at(13)
    assert recent.read_through == 20


def test_with_no_stream_open_events_far_behind_the_head_are_not_read(
    database: Database, clock: FrozenClock, reads: list[int]
) -> None:
    async def scenario() -> tuple[int, int, int]:
        broadcaster = make_broadcaster(database, page_size=3, buffer_events=3)
        async with started(broadcaster):
            await broadcaster.current_head()
            # Nobody follows while more is written than the buffer would keep.
            await asyncio.to_thread(write_pledges, database, clock, *(f"p-{n}" for n in range(5)))
            head = await broadcaster.current_head()
            return head, len(broadcaster.recent), broadcaster.recent.floor

    head, kept, floor = asyncio.run(scenario())

    assert reads == []
    assert (kept, floor) == (0, head)
