"""The per-app machinery behind ``/events``: wake-ups, the ledger poll, stream slots, and the
pull-based reader each stream runs. No HTTP here.

Streams never receive pushed events. Each one reads the ledger itself, one page at a
time, and only after it has handed on the previous page: a client that stops reading
stops its reader, so a slow client costs at most one page of memory, and a stream
that resumes from an old ``Last-Event-ID`` reads the same pages a live one would.

What the broadcaster shares is only the news that the ledger may have grown:

- commits in this process announce themselves at once (a ledger listener, called
  in the committing thread, hands over to the event loop);
- commits by other processes (other API processes on one PostgreSQL, the
  ``pledgewatch scheduler``, operators' commands) are noticed by reading the
  ledger's head: one query per process every ``events_poll_seconds`` while any
  stream is open, not one per client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import anyio
import anyio.to_thread
from sqlalchemy.exc import SQLAlchemyError

from app.db import Database
from app.domain.events.service import EVENT_KINDS, Event, read_events
from app.domain.ledger.service import Head, add_listener, read_head, remove_listener
from app.errors import DomainError
from app.gates import DatabaseGates
from app.metrics import SSE_STREAMS, SSE_STREAMS_REFUSED

log = logging.getLogger("pledgewatch.events")

# Events read from the database at once for one stream: all the memory a stream holds
# beyond what the server's socket buffers take.
PAGE_SIZE = 100


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


async def _first_of(changed: asyncio.Event, stop: anyio.Event | None) -> None:
    """Wait until the ledger may have changed or the stream must stop."""
    if stop is None:
        await changed.wait()
        return
    waits = {asyncio.ensure_future(changed.wait()), asyncio.ensure_future(stop.wait())}
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()


class EventBroadcaster:
    """One per app: wakes the app's streams when the ledger may have grown; counts streams.

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
    ) -> None:
        self._database = database
        self._gates = gates
        self._poll_seconds = poll_seconds
        self._max_streams = max_streams
        self._retry_after_seconds = retry_after_seconds
        self.page_size = page_size
        self._streams = 0
        self._closed = False
        # Replaced on every change: a stream takes the current one before it reads, so a
        # change during its read sets the event it is about to wait on (no lost wake-up).
        self._changed = asyncio.Event()
        self._streams_open = asyncio.Event()
        # Commits announced by this process's ledger listener; never compared with a head,
        # because the listener hears commits to every database this process writes.
        self._announced = 0
        # The head of this app's database as the last poll read it.
        self._polled_head: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poller: asyncio.Task[None] | None = None
        self._poll_failing = False

    @property
    def streams(self) -> int:
        """How many streams are open now."""
        return self._streams

    @property
    def closed(self) -> bool:
        return self._closed

    async def start(self) -> None:
        """Listen to this process's commits and start polling the ledger's head."""
        self._loop = asyncio.get_running_loop()
        add_listener(self._on_commit)
        self._poller = asyncio.create_task(self._poll_forever(), name="events-ledger-poll")

    async def stop(self) -> None:
        """End every open stream and stop listening and polling."""
        self._closed = True
        remove_listener(self._on_commit)
        self._notify()
        if self._poller is not None:
            self._poller.cancel()
            # wait() rather than await: the poller's own cancellation is expected and must
            # not be raised here, while a cancellation of stop() itself still is.
            await asyncio.wait([self._poller])
            self._poller = None

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the ``max_streams`` stream slots, or raise ``TooManyStreams``."""
        if self._streams >= self._max_streams:
            SSE_STREAMS_REFUSED.inc()
            raise TooManyStreams(self._max_streams, self._retry_after_seconds)
        self._streams += 1
        SSE_STREAMS.inc()
        self._streams_open.set()
        try:
            yield
        finally:
            self._streams -= 1
            SSE_STREAMS.dec()
            if self._streams == 0:
                self._streams_open.clear()

    async def current_head(self) -> int:
        """The ledger's committed length now: where a stream with no resume point starts."""
        async with self._gates.admit(write=False):
            return await anyio.to_thread.run_sync(self._read_head)

    async def follow(
        self,
        *,
        after: int,
        kinds: Collection[str] = EVENT_KINDS,
        stop: anyio.Event | None = None,
    ) -> AsyncIterator[Event]:
        """Every event of ``kinds`` with ``seq`` greater than ``after``, in order, then each
        new one as it is committed, until the broadcaster stops or ``stop`` is set.

        Pull-based: the next page is read only when the consumer has taken every event
        of the previous one.
        """
        scanned = after
        announced_seen: int | None = None
        page_was_full = True  # nothing is read yet: read before waiting
        while not self._closed and not (stop is not None and stop.is_set()):
            changed = self._changed
            polled = self._polled_head
            if (
                page_was_full
                or announced_seen != self._announced
                or (polled is not None and polled > scanned)
            ):
                announced_seen = self._announced
                try:
                    page = await self._read_page(scanned, kinds)
                except SQLAlchemyError as error:
                    # The stream ends as a stream ends; the client reconnects after the
                    # retry delay and resumes from its Last-Event-ID once the database is back.
                    log.warning("events stream ended: cannot read the ledger: %s", error)
                    return
                for event in page.events:
                    yield event
                scanned = max(scanned, page.scanned_through)
                # A full page may have more behind it; read on without waiting.
                page_was_full = len(page.events) == self.page_size
                if page_was_full:
                    continue
            await _first_of(changed, stop)

    async def poll_once(self) -> None:
        """Read the ledger's head once; wake the streams if it moved since the last read."""
        async with self._gates.admit(write=False):
            length = await anyio.to_thread.run_sync(self._read_head)
        if length != self._polled_head:
            self._polled_head = length
            self._notify()

    def _on_commit(self, head: Head) -> None:
        # Called in the committing thread (a worker thread, or the loop's own thread).
        loop = self._loop
        if loop is None or self._closed:
            return
        # A closed loop means the app is gone, and its streams with it.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._announce)

    def _announce(self) -> None:
        self._announced += 1
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _poll_forever(self) -> None:
        while not self._closed:
            await self._streams_open.wait()
            try:
                await self.poll_once()
            except Exception as error:
                # The database may be restarting: the poll must outlive that, and anything
                # else, or every stream would go deaf to other processes' writes. One warning
                # per outage, not one per poll.
                if not self._poll_failing:
                    log.warning("cannot read the ledger head: %s", error)
                self._poll_failing = True
            else:
                if self._poll_failing:
                    log.info("reading the ledger head again")
                self._poll_failing = False
            await asyncio.sleep(self._poll_seconds)

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
