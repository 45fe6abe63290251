"""Who a presented API key belongs to, answered from memory for a few seconds at a time.

Authentication runs before a request is admitted to the database (app/deps.py), so it
must never wait for a database slot while holding one: a lookup the cache cannot answer
takes its own short read, released before the request's own transaction begins. The
cache also spares the database one query per request for clients that poll.

A revoked key stops working in this process at once (``forget``) and in every other
process within ``ttl_seconds``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

import anyio.to_thread

from app.db import Database
from app.domain.keys.service import Principal, authenticate, hash_key
from app.gates import DatabaseGates

# Answers kept at once: enough for every real client; a flood of made-up keys only
# evicts other made-up keys' answers.
MAX_ENTRIES = 10_000


class KeyDirectory:
    """One per app: the principal for each presented secret, cached ``ttl_seconds``."""

    def __init__(
        self,
        *,
        database: Database,
        gates: DatabaseGates,
        ttl_seconds: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._database = database
        self._gates = gates
        self._ttl = ttl_seconds
        self._monotonic = monotonic
        self._answers: OrderedDict[str, tuple[float, Principal | None]] = OrderedDict()

    async def principal_for(self, secret: str) -> Principal | None:
        """The key's principal, or None when the key is unknown or revoked."""
        key_hash = hash_key(secret)
        cached = self._answers.get(key_hash)
        now = self._monotonic()
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        async with self._gates.admit(write=False):
            principal = await anyio.to_thread.run_sync(self._look_up, secret)
        self._remember(key_hash, principal)
        return principal

    def forget(self, key_hash: str | None = None) -> None:
        """Drop one cached answer (by the key's hash), or all of them."""
        if key_hash is None:
            self._answers.clear()
        else:
            self._answers.pop(key_hash, None)

    def _look_up(self, secret: str) -> Principal | None:
        with self._database.transaction(write=False) as session:
            return authenticate(session, secret)

    def _remember(self, key_hash: str, principal: Principal | None) -> None:
        self._answers[key_hash] = (self._monotonic(), principal)
        self._answers.move_to_end(key_hash)
        while len(self._answers) > MAX_ENTRIES:
            self._answers.popitem(last=False)
