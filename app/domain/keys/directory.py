"""Who a presented API key belongs to, answered from memory for a few seconds at a time.

Authentication runs before a request is admitted to the database (app/deps.py), so it
must never wait for a database slot while holding one: a lookup the cache cannot answer
takes its own short read, released before the request's own transaction begins. The
cache also spares the database one query per request for clients that poll.

A revoked or rotated key stops working in this process at once (``forget``, called once
the change is committed) and in every other process within ``ttl_seconds``. Expiry needs
no refresh: the cached answer holds ``expires_at``, compared with the clock at every use.

Uses are noted in memory and written as ``last_used_at`` at most once per
``flush_every_seconds`` (all keys in one UPDATE, in a short write transaction of its own),
rather than one write per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime

import anyio
import anyio.to_thread

from app.clock import Clock, SystemClock
from app.db import Database
from app.domain.keys.service import Credential, Principal, find_credential, hash_key, record_uses
from app.gates import DatabaseGates

# Answers kept at once: enough for every real client; a flood of made-up keys only
# evicts other made-up keys' answers.
MAX_ENTRIES = 10_000
# How often the background task looks whether the uses are due to be written.
_TICK_SECONDS = 5.0
# Shutdown waits this long at most to write the last uses (the database may be down).
_FINAL_FLUSH_SECONDS = 3.0
log = logging.getLogger("pledgewatch.keys")


class KeyDirectory:
    """One per app: the credential for each presented secret, cached ``ttl_seconds``."""

    def __init__(
        self,
        *,
        database: Database,
        gates: DatabaseGates,
        clock: Clock | None = None,
        ttl_seconds: float = 2.0,
        flush_every_seconds: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._database = database
        self._gates = gates
        self._clock = clock or SystemClock()
        self._ttl = ttl_seconds
        self._flush_every = flush_every_seconds
        self._monotonic = monotonic
        self._answers: OrderedDict[str, tuple[float, Credential | None]] = OrderedDict()
        # Bumped by every forget: a lookup that began before it must not cache its answer,
        # which may predate the change that made us forget.
        self._generation = 0
        self._uses: dict[int, datetime] = {}
        self._last_flush = monotonic()
        self._flusher: asyncio.Task[None] | None = None

    async def principal_for(self, secret: str) -> Principal | None:
        """The key's principal, or None when the key is unknown, revoked or expired."""
        credential = await self._credential(hash_key(secret))
        if credential is None:
            return None
        now = self._clock.now()
        if not credential.valid_at(now):
            return None
        previous = self._uses.get(credential.key_id)
        if previous is None or previous < now:
            self._uses[credential.key_id] = now
        return credential.principal

    def forget(self, key_hash: str | None = None) -> None:
        """Drop one cached answer (by the key's hash), or all of them."""
        self._generation += 1
        if key_hash is None:
            self._answers.clear()
        else:
            self._answers.pop(key_hash, None)

    async def _credential(self, key_hash: str) -> Credential | None:
        cached = self._answers.get(key_hash)
        if cached is not None and self._monotonic() - cached[0] < self._ttl:
            return cached[1]
        generation = self._generation
        async with self._gates.admit(write=False):
            credential = await anyio.to_thread.run_sync(self._look_up, key_hash)
        if generation == self._generation:
            self._remember(key_hash, credential)
        return credential

    def _look_up(self, key_hash: str) -> Credential | None:
        with self._database.transaction(write=False) as session:
            return find_credential(session, key_hash)

    def _remember(self, key_hash: str, credential: Credential | None) -> None:
        self._answers[key_hash] = (self._monotonic(), credential)
        self._answers.move_to_end(key_hash)
        while len(self._answers) > MAX_ENTRIES:
            self._answers.popitem(last=False)

    # --- last use ----------------------------------------------------------------------

    async def flush_due(self) -> bool:
        """Write the noted uses if ``flush_every_seconds`` have passed since the last write.

        True when a write was made. At most one UPDATE per interval, whatever the traffic.
        """
        if not self._uses or self._monotonic() - self._last_flush < self._flush_every:
            return False
        await self.flush()
        return True

    async def flush(self, *, abandon_on_cancel: bool = False) -> None:
        """Write the noted uses now, in one short write transaction admitted like any other.

        Never inside a request's transaction, and holding no slot while it waits for one.
        If the write fails, the uses are kept for the next attempt. ``abandon_on_cancel``
        lets a cancelled caller go while the write finishes (or fails) on its own thread.
        """
        uses, self._uses = self._uses, {}
        self._last_flush = self._monotonic()
        if not uses:
            return
        try:
            async with self._gates.admit(write=True):
                await anyio.to_thread.run_sync(
                    self._write_uses, uses, abandon_on_cancel=abandon_on_cancel
                )
        except BaseException:
            for key_id, at in uses.items():
                if self._uses.get(key_id, at) <= at:
                    self._uses[key_id] = at
            raise

    def _write_uses(self, uses: dict[int, datetime]) -> None:
        with self._database.transaction() as session:
            record_uses(session, uses)

    async def start(self) -> None:
        """Write noted uses in the background, about once per ``flush_every_seconds``."""
        self._flusher = asyncio.create_task(self._flush_forever(), name="keys-last-used")

    async def stop(self) -> None:
        """Stop the background task and write the uses noted since its last write."""
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.wait([self._flusher])
            self._flusher = None
        # Shutdown must end within seconds even if the database does not answer.
        with anyio.move_on_after(_FINAL_FLUSH_SECONDS):
            try:
                await self.flush(abandon_on_cancel=True)
            except Exception:
                log.warning("could not record the keys' last use at shutdown", exc_info=True)

    async def _flush_forever(self) -> None:
        while True:
            await anyio.sleep(min(_TICK_SECONDS, self._flush_every))
            try:
                await self.flush_due()
            except Exception:
                # At most once per interval: the failed uses wait for the next one.
                log.warning("could not record the keys' last use; will retry", exc_info=True)
