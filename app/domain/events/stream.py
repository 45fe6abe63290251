"""The per-app machinery behind ``/events``: one reader of new events for the whole process,
a shared buffer of recent events, stream slots, and the pull-based reader each stream runs.
No HTTP here.

How a change reaches the streams:

- commits in this process announce themselves at once (a ledger listener, called in
  the committing thread, hands over to the event loop); commits by other processes
  (other API processes on one PostgreSQL, the ``pledgewatch scheduler``, operators'
  commands) are found by polling: every ``events_poll_seconds`` while any stream is open;
- either way the broadcaster's reader task reads the new events once, page by page, for
  every stream of the process, into a buffer of the most recent ones
  (``buffer_events`` at most), and wakes the streams;
- each stream takes from that buffer the events after its own position, one at a time
  and only once its client has taken the previous one, skipping the kinds it does not
  want: nothing is copied per stream.

A stream the buffer does not reach back to (one resuming from an old ``Last-Event-ID``,
or a client so slow that the buffer has moved past it) reads pages itself, one at a
time, each only once the previous one is sent, until it has caught up with the buffer.
So a slow client costs at most one page of memory, a stream that resumes reads the
same events a live one received, and no wake-up is lost: a stream clears its waker
before it looks at the buffer, and every change to the buffer sets every waker.

No stream holds a database slot while it waits: the reader task and a stream reading a
page of its own each take one for the length of one short read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from bisect import bisect_right
from collections.abc import AsyncGenerator, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import anyio
import anyio.to_thread
from sqlalchemy.exc import SQLAlchemyError

from app.db import Database
from app.domain.events.service import EVENT_KINDS, Event, read_events
from app.domain.ledger.service import Head, add_listener, read_head, remove_listener
from app.errors import DatabaseBusy, DomainError
from app.gates import DatabaseGates, refuse_nesting
from app.metrics import SSE_STREAMS, SSE_STREAMS_REFUSED

log = logging.getLogger("pledgewatch.events")

# Events read from the database at once: by the reader task for every stream, or by one
# stream that is behind, for itself (all the memory such a stream holds beyond what the
# server's socket buffers take).
PAGE_SIZE = 100
# The recent events kept for every stream of the process (shared, not per stream).
BUFFER_EVENTS = 10 * PAGE_SIZE


class TooManyStreams(DomainError):
    """Every stream slot of this process is taken."""

    status = 503
    title = "Service unavailable"
    type_suffix = "too-many-streams"

    def __init__(self, limit: int, retry_after_seconds: int) -> None:
        super().__init__(
            f"this server already serves {limit} event streams; retry later or poll "
            "/api/v1/ledger instead",
            headers={"Retry-After": str(retry_after_seconds)},
        )


@dataclass(frozen=True, slots=True)
class Page:
    """Events read for one stream, and how far the ledger was read to find them."""

    events: list[Event]
    scanned_through: int


class RecentEvents:
    """Every event with a ``seq`` in ``(floor, read_through]``, in order, at most
    ``capacity`` of them: the oldest are dropped (and ``floor`` raised) to make room.

    Before the first read, ``read_through`` is None and the buffer covers nothing.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.floor = 0
        self.read_through: int | None = None
        self._events: list[Event] = []
        self._seqs: list[int] = []

    def __len__(self) -> int:
        return len(self._events)

    def covers(self, position: int) -> bool:
        """Whether every event after ``position`` that has been read is here."""
        return self.read_through is not None and position >= self.floor

    def next_after(self, position: int) -> Event | None:
        """The first buffered event with a ``seq`` greater than ``position``, if any."""
        index = bisect_right(self._seqs, position)
        return self._events[index] if index < len(self._events) else None

    def restart(self, head: int) -> None:
        """Forget everything: the buffer covers what comes after ``head``."""
        self._events.clear()
        self._seqs.clear()
        self.floor = head
        self.read_through = head

    def extend(self, events: list[Event], read_through: int) -> None:
        """Add ``events`` (all after ``read_through`` so far), read up to ``read_through``."""
        self._events.extend(events)
        self._seqs.extend(event.seq for event in events)
        self.read_through = read_through
        excess = len(self._events) - self.capacity
        if excess > 0:
            self.floor = self._seqs[excess - 1]
            del self._events[:excess]
            del self._seqs[:excess]


async def _set_when(stop: anyio.Event, waker: asyncio.Event) -> None:
    await stop.wait()
    waker.set()


class EventBroadcaster:
    """One per app: reads new events once for all of the app's streams, hands them out,
    counts streams.

    Built and started in the app's lifespan, stopped when the app stops (which also ends
    every stream still open).
    """

    def __init__(
        self,
        *,
        database: Database,
        gates: DatabaseGates,
        poll_seconds: float,
        max_streams: int,
        retry_after_seconds: int = 10,
        page_size: int = PAGE_SIZE,
        buffer_events: int = BUFFER_EVENTS,
    ) -> None:
        self._database = database
        self._gates = gates
        self._poll_seconds = poll_seconds
        self._max_streams = max_streams
        self._retry_after_seconds = retry_after_seconds
        self.page_size = page_size
        self.recent = RecentEvents(buffer_events)
        self._streams = 0
        self._followers = 0
        self._closed = False
        # One per following stream: set on every change to the buffer (and on stop).
        self._wakers: set[asyncio.Event] = set()
        # Set while the reader task has work: a stream follows, or a head is wanted.
        self._reader_wanted = asyncio.Event()
        # Set when the reader should read now rather than at its next poll.
        self._news = asyncio.Event()
        # Completed with the head read by the next round; shared by everyone who asks
        # for the head meanwhile (a burst of new streams costs one read, not one each).
        self._next_round: asyncio.Future[int] | None = None
        # Rounds never overlap (the reader task's and those run by hand, as tests do).
        self._round_lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader: asyncio.Task[None] | None = None
        self._poll_failing = False

    @property
    def streams(self) -> int:
        """How many streams are open now."""
        return self._streams

    @property
    def closed(self) -> bool:
        return self._closed

    async def start(self) -> None:
        """Listen to this process's commits and start the reader task."""
        self._loop = asyncio.get_running_loop()
        add_listener(self._on_commit)
        self._reader = asyncio.create_task(self._read_forever(), name="events-reader")

    async def stop(self) -> None:
        """End every open stream and stop listening and reading."""
        self._closed = True
        remove_listener(self._on_commit)
        self._wake_streams()
        pending, self._next_round = self._next_round, None
        if pending is not None and not pending.done():
            pending.set_exception(self._gates.busy("the server is stopping"))
        if self._reader is not None:
            self._reader.cancel()
            # wait() rather than await: the reader's own cancellation is expected and must
            # not be raised here, while a cancellation of stop() itself still is.
            await asyncio.wait([self._reader])
            self._reader = None

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the ``max_streams`` stream slots, or raise ``TooManyStreams``."""
        if self._streams >= self._max_streams:
            SSE_STREAMS_REFUSED.inc()
            raise TooManyStreams(self._max_streams, self._retry_after_seconds)
        self._streams += 1
        SSE_STREAMS.inc()
        try:
            yield
        finally:
            self._streams -= 1
            SSE_STREAMS.dec()

    async def current_head(self) -> int:
        """The ledger's committed length now: where a stream with no resume point starts.

        Read by the reader task's next round, which every caller until then shares.
        Bounded like any admission: ``DatabaseBusy`` when the database is too busy.
        """
        # The reader task takes a slot for this: waiting for it while holding one is nesting.
        refuse_nesting("the ledger's head")
        if self._reader is None:
            # Not started (a broadcaster driven by hand): read it here.
            async with self._gates.admit(write=False):
                return await anyio.to_thread.run_sync(self._read_head)
        if self._next_round is None:
            self._next_round = asyncio.get_running_loop().create_future()
            # Retrieved here so that a round nobody waits for any more fails quietly.
            self._next_round.add_done_callback(_retrieve)
        round_done = self._next_round
        self._reader_wanted.set()
        self._news.set()
        try:
            with anyio.fail_after(self._gates.queue_timeout_seconds):
                return await asyncio.shield(round_done)
        except TimeoutError:
            raise self._gates.busy(
                "the database is busy: the ledger's head was not read in time"
            ) from None

    async def follow(
        self,
        *,
        after: int,
        kinds: Collection[str] = EVENT_KINDS,
        stop: anyio.Event | None = None,
    ) -> AsyncGenerator[Event, None]:
        """Every event of ``kinds`` with ``seq`` greater than ``after``, in order, then each
        new one as it is committed, until the broadcaster stops or ``stop`` is set.

        Pull-based: the next event is taken (or the next page read) only when the
        consumer has taken the previous one.
        """
        wanted = frozenset(kinds)
        waker = asyncio.Event()
        watcher = asyncio.create_task(_set_when(stop, waker)) if stop is not None else None
        self._wakers.add(waker)
        self._followers += 1
        self._reader_wanted.set()
        position = after
        # Whether this stream's own last read reached the head (its page was not full).
        caught_up = False
        try:
            while not self._closed and not (stop is not None and stop.is_set()):
                # Cleared before looking: any change from now on sets it again.
                waker.clear()
                recent = self.recent
                if recent.covers(position):
                    event = recent.next_after(position)
                    if event is None:
                        position = max(position, recent.read_through or position)
                        await waker.wait()
                        continue
                    position = event.seq
                    if event.kind in wanted:
                        yield event
                    continue
                if caught_up and recent.read_through is None:
                    # Read up to the head; the reader task has not read yet: wait for it.
                    await waker.wait()
                    continue
                try:
                    page = await self._read_page(position, wanted)
                except (SQLAlchemyError, DatabaseBusy) as error:
                    # The stream ends as a stream ends; the client reconnects after the
                    # retry delay and resumes from its Last-Event-ID.
                    log.warning("events stream ended: cannot read the ledger: %s", error)
                    return
                for event in page.events:
                    yield event
                position = max(position, page.scanned_through)
                caught_up = len(page.events) < self.page_size
        finally:
            self._wakers.discard(waker)
            self._followers -= 1
            if watcher is not None:
                watcher.cancel()

    async def poll_once(self) -> int:
        """One round of the reader: read what the ledger gained since the last round (once,
        for every stream), wake the streams if it gained events; the head it read."""
        async with self._round_lock:
            waiting, self._next_round = self._next_round, None
            try:
                return await self._read_new(waiting)
            except BaseException as error:
                if waiting is not None and not waiting.done():
                    failure = (
                        error
                        if isinstance(error, Exception)
                        else self._gates.busy("the ledger's head could not be read")
                    )
                    waiting.set_exception(failure)
                raise

    async def _read_new(self, waiting: asyncio.Future[int] | None) -> int:
        while True:
            after = self.recent.read_through
            # With no stream to hand them to, events far behind the head are not worth reading.
            reach = self.recent.capacity if self._followers == 0 else None
            async with self._gates.admit(write=False, background=True):
                head, events = await anyio.to_thread.run_sync(self._read_round, after, reach)
            if waiting is not None:
                if not waiting.done():
                    waiting.set_result(head)
                waiting = None
            if events is None:
                self.recent.restart(head)
                self._wake_streams()
                return head
            full = len(events) == self.page_size
            last = events[-1].seq if events else head
            through = last if full else max(head, last)
            self.recent.extend(events, through)
            if events:
                self._wake_streams()
            if not full:
                return head

    def _read_round(self, after: int | None, reach: int | None) -> tuple[int, list[Event] | None]:
        """The head, and the next page of events after ``after``; no page (None) when the
        buffer must start afresh at the head: nothing read yet, the ledger shorter than
        before (a database restored), or more than ``reach`` entries behind the head."""
        with self._database.transaction(write=False) as session:
            head = read_head(session).length
            if after is None or head < after or (reach is not None and head - after > reach):
                return head, None
            if head == after:
                return head, []
            return head, read_events(session, after=after, limit=self.page_size, kinds=EVENT_KINDS)

    def _on_commit(self, head: Head) -> None:
        # Called in the committing thread (a worker thread, or the loop's own thread).
        loop = self._loop
        if loop is None or self._closed:
            return
        # A closed loop means the app is gone, and its streams with it.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._news.set)

    def _wake_streams(self) -> None:
        for waker in self._wakers:
            waker.set()

    async def _read_forever(self) -> None:
        while not self._closed:
            await self._reader_wanted.wait()
            self._news.clear()
            try:
                await self.poll_once()
            except Exception as error:
                # The database may be restarting: the reader must outlive that, and anything
                # else, or every stream would go deaf. One warning per outage, not per poll.
                if not self._poll_failing:
                    log.warning("cannot read the ledger head: %s", error)
                self._poll_failing = True
            else:
                if self._poll_failing:
                    log.info("reading the ledger head again")
                self._poll_failing = False
            if self._followers == 0 and self._next_round is None:
                self._reader_wanted.clear()
            # Until this process commits, someone wants the head, or the next poll is due.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._news.wait(), self._poll_seconds)

    def _read_head(self) -> int:
        with self._database.transaction(write=False) as session:
            return read_head(session).length

    async def _read_page(self, after: int, kinds: Collection[str]) -> Page:
        def read() -> Page:
            with self._database.transaction(write=False) as session:
                # The head first: every entry up to it is committed, so a page that is not
                # full has seen all of them (entries commit in seq order, under one lock).
                head = read_head(session).length
                events = read_events(session, after=after, limit=self.page_size, kinds=kinds)
            if len(events) == self.page_size:
                return Page(events, events[-1].seq)
            last = events[-1].seq if events else after
            return Page(events, max(head, last))

        async with self._gates.admit(write=False):
            return await anyio.to_thread.run_sync(read)


def _retrieve(future: asyncio.Future[int]) -> None:
    if not future.cancelled():
        future.exception()
