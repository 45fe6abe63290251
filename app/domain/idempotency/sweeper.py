"""Expired Idempotency-Keys swept once a minute, by a task of the app's own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta
from functools import partial

import anyio

from app.clock import Clock
from app.db import Database
from app.domain.idempotency.service import purge_expired
from app.gates import DatabaseGates

log = logging.getLogger("pledgewatch.idempotency")
# Keys deleted per transaction: a sweep after a long pause never holds the writer for long.
SWEEP_CHUNK = 1000


class ExpiredKeySweeper:
    """Deletes keys older than ``ttl`` every ``every_seconds``, off every request's path.

    Each chunk is its own short transaction, admitted like a request's (one slot, taken
    only while nothing else is held).
    """

    def __init__(
        self,
        *,
        database: Database,
        gates: DatabaseGates,
        clock: Clock,
        ttl: timedelta,
        every_seconds: float = 60.0,
    ) -> None:
        self._database = database
        self._gates = gates
        self._clock = clock
        self._ttl = ttl
        self._every = every_seconds
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="idempotency-sweeper")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def sweep(self) -> int:
        """Delete every expired key now; the number deleted."""
        before = self._clock.now() - self._ttl
        deleted = 0
        while True:
            async with self._gates.admit(write=True):
                chunk = await anyio.to_thread.run_sync(partial(self._purge_chunk, before))
            deleted += chunk
            if chunk < SWEEP_CHUNK:
                return deleted

    def _purge_chunk(self, before: datetime) -> int:
        with self._database.transaction() as session:
            return purge_expired(session, before=before, limit=SWEEP_CHUNK)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            try:
                await self.sweep()
            except Exception:
                # Once per interval at most; the keys are swept on the next turn.
                log.warning("expired Idempotency-Keys could not be swept", exc_info=True)
