"""Admission to the database, awaited on the event loop instead of in worker threads.

Sync handlers run in a bounded thread pool. If threads could block waiting for a
pool connection or for SQLite's single write lock, the request holding the lock
might find no thread left to finish in, and everything would stall until
timeouts. So a request first waits here, asynchronously, for a connection slot
and (on SQLite) for the writer's turn; a thread is only taken once it can run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio


class DatabaseGates:
    def __init__(self, *, connections: int, single_writer: bool) -> None:
        self._connections = anyio.Semaphore(connections)
        self._writer = anyio.Lock() if single_writer else None

    @asynccontextmanager
    async def admit(self, *, write: bool) -> AsyncIterator[None]:
        if write and self._writer is not None:
            async with self._writer, self._connections:
                yield
        else:
            async with self._connections:
                yield
