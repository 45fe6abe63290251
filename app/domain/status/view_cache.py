"""The rendered ``/status`` bodies, kept per revision so that polling costs no rebuild.

Each body is also kept gzip-compressed once a client asks for it: a version is
compressed once, however many dashboards poll it. :class:`RevisionWatch` keeps the
revision the bodies are keyed by, so that a poll needs no database read.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import date

from sqlalchemy import event
from sqlalchemy.orm import Session

from app.domain.status.schemas import StatusQuery
from app.logs import LogThrottle


def status_etag(revision: int, today: date, query: StatusQuery) -> str:
    """The ETag of a ``/status`` answer: known from the revision without building the body.

    The day is part of it because ``overdue`` turns true with the calendar.
    """
    shape = query.model_dump_json(exclude_none=True).encode()
    digest = hashlib.sha256(shape).hexdigest()[:12]
    return f'"r{revision}-{today.strftime("%Y%m%d")}-{digest}"'


# Level 6 (zlib's default): most of level 9's ratio on JSON for a fraction of its time.
GZIP_LEVEL = 6
GZIP_ETAG_SUFFIX = "-gzip"


def gzip_etag(etag: str) -> str:
    """The ETag of the gzip-coded body of the answer whose identity ETag is ``etag``.

    A strong ETag names one sequence of bytes, so the compressed body gets its own
    (RFC 9110, 8.8.3); If-None-Match is then compared with the ETag of the coding that
    the request would be answered in.
    """
    return etag[:-1] + GZIP_ETAG_SUFFIX + '"'


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether ``Accept-Encoding`` allows gzip (listed, or by ``*``, with a q above 0)."""
    if not accept_encoding:
        return False
    wildcard: bool | None = None
    for item in accept_encoding.split(","):
        coding, _, params = item.strip().partition(";")
        coding = coding.strip().lower()
        if coding not in ("gzip", "x-gzip", "*"):
            continue
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if coding == "*":
            wildcard = quality > 0
        else:
            return quality > 0
    return bool(wildcard)


class _Entry:
    __slots__ = ("body", "gzipped")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.gzipped: bytes | None = None


def _size(entry: _Entry) -> int:
    return len(entry.body) + (len(entry.gzipped) if entry.gzipped is not None else 0)


class StatusViewCache:
    """A small thread-safe LRU of rendered bodies (and their gzip coding) by ETag.

    Bounded by entries and by bytes (bodies and their codings together): each past
    ``as_of`` a client asks for is a body of its own, and a run of distinct dates
    must not grow the process by hundreds of bodies. The newest entry is always kept.
    """

    def __init__(self, capacity: int, max_bytes: int | None = None) -> None:
        self._capacity = capacity
        self._max_bytes = max_bytes
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def size_bytes(self) -> int:
        """The bytes held now: every cached body and gzip coding."""
        return self._bytes

    def get(self, etag: str) -> bytes | None:
        with self._lock:
            entry = self._entries.get(etag)
            if entry is None:
                return None
            self._entries.move_to_end(etag)
            return entry.body

    def put(self, etag: str, body: bytes) -> None:
        with self._lock:
            replaced = self._entries.pop(etag, None)
            if replaced is not None:
                self._bytes -= _size(replaced)
            self._entries[etag] = _Entry(body)
            self._bytes += len(body)
            self._evict()

    def _evict(self) -> None:
        while len(self._entries) > 1 and (
            len(self._entries) > self._capacity
            or (self._max_bytes is not None and self._bytes > self._max_bytes)
        ):
            _etag, oldest = self._entries.popitem(last=False)
            self._bytes -= _size(oldest)

    def gzipped(self, etag: str, body: bytes) -> bytes:
        """``body`` (the one cached under ``etag``) gzip-compressed, compressed only once.

        Two requests may both compress a version that is new to them; the second result
        is simply dropped. ``mtime=0`` keeps the bytes the same for the same body.
        """
        with self._lock:
            entry = self._entries.get(etag)
            if entry is not None and entry.gzipped is not None:
                return entry.gzipped
        compressed = gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
        with self._lock:
            entry = self._entries.get(etag)
            if entry is not None and entry.body is body:
                if entry.gzipped is None:
                    entry.gzipped = compressed
                    self._bytes += len(compressed)
                    self._entries.move_to_end(etag)
                    self._evict()
                return entry.gzipped
        return compressed


# Set by claim_revision in every transaction that may move the revision (every writer
# claims it before touching anything else; see app.domain.status.revision).
_CLAIMED = "pledgewatch.revision"
_watches: weakref.WeakSet[RevisionWatch] = weakref.WeakSet()


@event.listens_for(Session, "after_commit")
def _writer_committed(session: Session) -> None:
    # The claim is still in session.info here (it is forgotten when the transaction ends).
    if _CLAIMED in session.info:
        for watch in list(_watches):
            watch.invalidate()


RevisionState = tuple[int, int, str]
"""The revision, the ledger's length and its head hash."""


class RevisionWatch:
    """The revision and ledger head as last read, so that polling ``/status`` reads nothing.

    A write committed in this process makes the state unknown at once (the next
    ``/status`` reads it again), so a client always sees its own writes. A write by
    another process (another worker, the scheduler) is seen by the next poll, every
    ``poll_seconds``, or by the next request that has to read anyway.
    """

    def __init__(self, poll_seconds: float) -> None:
        self.poll_seconds = poll_seconds
        self._state: RevisionState | None = None
        self._generation = 0
        self._lock = threading.Lock()
        self._etags: dict[tuple[int, date], str] = {}
        _watches.add(self)

    @property
    def generation(self) -> int:
        """Take it before reading the state from the database; hand it back to ``offer``."""
        return self._generation

    def current(self) -> RevisionState | None:
        """The state known to be current, or None when it has to be read."""
        return self._state

    def invalidate(self) -> None:
        with self._lock:
            self._generation += 1
            self._state = None

    def offer(self, state: RevisionState, generation: int) -> None:
        """Keep ``state``, read after ``generation`` was taken, unless a write came since."""
        with self._lock:
            if generation == self._generation:
                self._state = state

    def etag(self, revision: int, today: date) -> str:
        """The ETag of the unfiltered ``/status`` now (memoised: it is asked for per poll)."""
        key = (revision, today)
        etag = self._etags.get(key)
        if etag is None:
            etag = status_etag(revision, today, StatusQuery())
            if len(self._etags) > 64:
                self._etags.clear()
            self._etags[key] = etag
        return etag

    async def poll(self, read: Callable[[], Awaitable[RevisionState]]) -> None:
        """Read the state every ``poll_seconds`` until cancelled (errors: retried next time)."""
        log = logging.getLogger("pledgewatch.status")
        # Polled ten times a second: an outage is reported once a minute, not each time.
        throttle = LogThrottle()
        while True:
            generation = self._generation
            try:
                self.offer(await read(), generation)
            except Exception:  # a database hiccup must not end the polling
                throttle.failed(log, "read", "reading the revision failed; retrying", exc_info=True)
                self.invalidate()
            else:
                throttle.recovered(log, "read", "reading the revision again")
            await asyncio.sleep(self.poll_seconds)
