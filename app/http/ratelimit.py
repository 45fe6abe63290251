"""Rate limits: budgets per client address and per API key, checked before any database work.

Each request falls in one budget (or none: health, readiness and metrics are never
limited):

- ``read``: reads without a key, per client address (:mod:`app.http.addresses`);
- ``key-read``: reads with a key, per key;
- ``write``: every other method, per key (per address without one);
- ``expensive``: reads that cost far more than a page: ``/status`` as of a past moment
  (``as_of``, ``known_at``), ``/ledger/verify``, ``/export`` and opening ``/events``.

A key is known by the SHA-256 of the presented ``Authorization`` value: limiting must
come before authentication, which may read the database. So that made-up keys cannot
buy fresh budgets, every ``401`` a presented key earns counts against its address's
``bad-key`` budget, and a spent one refuses that address's keyed requests.

Budgets are moving windows (the ``limits`` library) kept in memory by each process. A
refused request is a ``429`` problem with ``Retry-After`` and the ``RateLimit`` and
``RateLimit-Policy`` fields of draft-ietf-httpapi-ratelimit-headers-10 (structured
fields: ``RateLimit-Policy: "read";q=1200;w=60`` and ``RateLimit: "read";r=0;t=12``).
Every answer of a limited request carries ``RateLimit-Policy``; all but the ``read``
budget's also carry ``RateLimit`` (what remains): a dashboard's poll of ``/status``
(a ``read``) must cost one window check and no more.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from limits import RateLimitItem
from limits.storage import MemoryStorage
from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.http.addresses import ClientAddresses
from app.http.security import answer_headers
from app.http.values import parse_budget, parse_networks
from app.problems import PROBLEM_JSON, problem_response

if TYPE_CHECKING:
    from app.config import Settings

EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_PAST_PARAMETERS = frozenset({"as_of", "known_at"})
DRAFT = "draft-ietf-httpapi-ratelimit-headers-10"

REFUSED = Counter(
    "pledgewatch_rate_limited_total", "Requests refused with 429, by budget.", ["budget"]
)


@dataclass(frozen=True)
class Budget:
    """One budget: its name in the RateLimit fields, and its limit."""

    name: str
    limit: RateLimitItem
    policy: tuple[bytes, bytes] = field(init=False)

    def __post_init__(self) -> None:
        value = f'"{self.name}";q={self.limit.amount};w={self.window}'
        object.__setattr__(self, "policy", (b"ratelimit-policy", value.encode()))

    @property
    def quota(self) -> int:
        return int(self.limit.amount)

    @property
    def window(self) -> int:
        return int(self.limit.get_expiry())

    def key(self, partition: str) -> str:
        """The storage key of ``partition``'s window in this budget."""
        return f"{self.name}/{partition}"

    def state_header(self, remaining: int, reset_in: int) -> tuple[bytes, bytes]:
        return (b"ratelimit", f'"{self.name}";r={remaining};t={reset_in}'.encode())


class PacedMemoryStorage(MemoryStorage):
    """``limits``' in-memory storage, sweeping expired entries once a second.

    The library sweeps every key's window on a new timer thread 10 ms after any hit, for
    as long as hits come. The sweep visits every client seen within the window: with
    10,000 of them it took 20 to 50 ms here, so under steady traffic the sweeper would
    hold the GIL most of the time. Swept once a second, a window keeps at most a second
    of expired entries beyond its limit, which changes no answer: the window is read by
    time, not by length. The library's sweep also leaves an emptied window's key behind
    (limits 5.8.0), so every client ever seen would stay in memory, and in every sweep;
    this one drops them.
    """

    SWEEP_SECONDS = 1.0

    def __init__(self) -> None:
        super().__init__()
        # The library starts a first sweep at once; the first hit schedules a paced one.
        self.timer.cancel()
        self._sweep_due = False

    def sweep(self) -> None:
        """Drop expired entries, then the windows left empty."""
        # First: a hit made while this sweep runs schedules the next one.
        self._sweep_due = False
        getattr(self, "_MemoryStorage__expire_events")()  # noqa: B009 - a mangled name
        for key in [key for key, entries in list(self.events.items()) if not entries]:
            with self.locks[key]:
                if not self.events.get(key):
                    self.events.pop(key, None)
                    self.locks.pop(key, None)

    def _MemoryStorage__schedule_expiry(self) -> None:
        # Overrides the library's private scheduling hook (name-mangled in MemoryStorage),
        # called on every hit: a flag, not the library's Thread.is_alive(), says whether a
        # sweep is due. tests/http/test_ratelimit.py checks that this hook is the one called.
        if self._sweep_due:
            return
        self._sweep_due = True
        self.timer = threading.Timer(self.SWEEP_SECONDS, self.sweep)
        self.timer.daemon = True
        self.timer.start()


def _asks_for_the_past(query_string: bytes) -> bool:
    if not query_string:
        return False
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    return any(name in _PAST_PARAMETERS for name, _ in pairs)


class RateLimits:
    """The budgets of one process and the moving windows that spend them."""

    def __init__(self, settings: Settings, *, api_prefix: str) -> None:
        # The storage's moving-window interface is used directly (MovingWindowRateLimiter
        # makes the same two calls, with a longer key built on every hit).
        self.storage = PacedMemoryStorage()
        self.addresses = ClientAddresses(parse_networks(settings.trusted_proxies))
        self.anonymous_reads = Budget("read", parse_budget(settings.rate_limit_anonymous_reads))
        self.key_reads = Budget("key-read", parse_budget(settings.rate_limit_key_reads))
        self.writes = Budget("write", parse_budget(settings.rate_limit_writes))
        self.expensive = Budget("expensive", parse_budget(settings.rate_limit_expensive_reads))
        self.bad_keys = Budget("bad-key", parse_budget(settings.rate_limit_bad_keys))
        self._status_path = f"{api_prefix}/status"
        self._expensive_paths = frozenset(
            f"{api_prefix}{path}" for path in ("/ledger/verify", "/export", "/events")
        )

    def budget_for(self, scope: Scope, *, keyed: bool) -> Budget | None:
        """The budget a request spends, or None when it is never limited."""
        path = scope["path"]
        if path in EXEMPT_PATHS:
            return None
        if scope["method"] not in _READ_METHODS:
            return self.writes
        if path in self._expensive_paths or (
            path == self._status_path and _asks_for_the_past(scope["query_string"])
        ):
            return self.expensive
        return self.key_reads if keyed else self.anonymous_reads

    def spend(self, budget: Budget, partition: str) -> bool:
        """Take one request from ``partition``'s window of ``budget``; False when it is spent."""
        return self.storage.acquire_entry(budget.key(partition), budget.quota, budget.window)

    def spent(self, budget: Budget, partition: str) -> bool:
        return self.state(budget, partition)[0] <= 0

    def state(self, budget: Budget, partition: str) -> tuple[int, int]:
        """(requests remaining, seconds until the window frees one more)."""
        started, used = self.storage.get_moving_window(
            budget.key(partition), budget.quota, budget.window
        )
        # The window still holds an entry at exactly ``window`` seconds: one second more.
        reset_in = math.floor(started + budget.window - time.time()) + 1
        return max(budget.quota - used, 0), max(reset_in, 0)

    def close(self) -> None:
        self.storage.reset()
        # The storage sweeps expired entries on a timer thread; it need not run again.
        self.storage.timer.cancel()


def _key_partition(credential: bytes) -> str:
    return "key:" + hashlib.sha256(credential).hexdigest()[:32]


class RateLimitMiddleware:
    """Spends each request's budget before it reaches anything that reads the database.

    Mounted outside the body limit and idempotency middleware (they read bodies and the
    database) and inside the security and CORS headers (so that a browser can read a 429),
    whose middleware sends its RateLimit fields (:func:`~app.http.security.answer_headers`).
    The budgets live in ``app.state.rate_limits``, made in the lifespan.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limits: RateLimits = scope["app"].state.rate_limits
        credential = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                credential = value
                break
        budget = limits.budget_for(scope, keyed=credential is not None)
        if budget is None:
            await self.app(scope, receive, send)
            return
        address = "address:" + limits.addresses.of(scope)
        if credential is None:
            partition = address
        elif limits.spent(limits.bad_keys, address):
            await self._refuse(limits, limits.bad_keys, address, scope, receive, send)
            return
        else:
            partition = _key_partition(credential)
        if not limits.spend(budget, partition):
            await self._refuse(limits, budget, partition, scope, receive, send)
            return
        headers = answer_headers(scope)
        headers.append(budget.policy)
        if credential is None:
            if budget is not limits.anonymous_reads:
                headers.append(budget.state_header(*limits.state(budget, partition)))
            await self.app(scope, receive, send)
            return
        headers.append(budget.state_header(*limits.state(budget, partition)))

        async def send_counting_bad_keys(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                limits.spend(limits.bad_keys, address)
            await send(message)

        await self.app(scope, receive, send_counting_bad_keys)

    @staticmethod
    async def _refuse(
        limits: RateLimits,
        budget: Budget,
        partition: str,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        REFUSED.labels(budget.name).inc()
        _, reset_in = limits.state(budget, partition)
        retry_after = max(reset_in, 1)
        response = problem_response(
            429,
            "Too many requests",
            f"the {budget.name} budget ({budget.quota} requests in {budget.window} s) is spent; "
            f"retry in {retry_after} s",
            slug="rate-limited",
            headers={
                "Retry-After": str(retry_after),
                "RateLimit": budget.state_header(0, retry_after)[1].decode(),
                "RateLimit-Policy": budget.policy[1].decode(),
            },
        )
        await response(scope, receive, send)


def document_rate_limits(schema: dict[str, Any], api_prefix: str) -> None:
    """Add the ``429`` answer to every operation under ``api_prefix`` of an OpenAPI schema."""
    answer = {
        "description": "Too many requests: a rate-limit budget is spent (see Retry-After).",
        "headers": {
            "Retry-After": {
                "description": "Seconds until the budget allows another request.",
                "schema": {"type": "integer"},
            },
            "RateLimit": {
                "description": f"What remains of the budget ({DRAFT}).",
                "schema": {"type": "string"},
            },
            "RateLimit-Policy": {
                "description": f"The budget: quota and window in seconds ({DRAFT}).",
                "schema": {"type": "string"},
            },
        },
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    for path, operations in schema.get("paths", {}).items():
        if not path.startswith(api_prefix):
            continue
        for operation in operations.values():
            if isinstance(operation, dict) and "responses" in operation:
                operation["responses"].setdefault("429", answer)
