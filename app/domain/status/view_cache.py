"""The rendered ``/status`` bodies, kept per revision so that polling costs no rebuild."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from datetime import date

from app.domain.status.schemas import StatusQuery


def status_etag(revision: int, today: date, query: StatusQuery) -> str:
    """The ETag of a ``/status`` answer: known from the revision without building the body.

    The day is part of it because ``overdue`` turns true with the calendar.
    """
    shape = query.model_dump_json(exclude_none=True).encode()
    digest = hashlib.sha256(shape).hexdigest()[:12]
    return f'"r{revision}-{today.strftime("%Y%m%d")}-{digest}"'


class StatusViewCache:
    """A small thread-safe LRU of rendered bodies by ETag."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, etag: str) -> bytes | None:
        with self._lock:
            body = self._entries.get(etag)
            if body is not None:
                self._entries.move_to_end(etag)
            return body

    def put(self, etag: str, body: bytes) -> None:
        with self._lock:
            self._entries[etag] = body
            self._entries.move_to_end(etag)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
