"""Load shedding: past a bound of requests in flight, a new one is refused at once.

At ten times the rate the database can serve, every request that gets as far as its
handler costs the event loop a dependency walk and an exception before the gates
(app/gates.py) refuse it, and the loop falls behind the sockets: answers, 503s and
health probes alike stop arriving. Counting requests in flight here, before any of that,
refuses the excess with a precomputed ``503`` for a few microseconds each, so the loop
keeps up with what it can serve and says no to the rest while the client still listens.

Health and readiness probes and metrics are never shed (they must tell the truth under
load), nor ``/events`` streams, which live long and have a cap of their own.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from app.metrics import REQUESTS_SHED
from app.problems import problem_response

# What a shed client is told to wait: about the time the requests in flight take to drain.
RETRY_AFTER_SECONDS = 1


class LoadShedMiddleware:
    """Refuses requests beyond ``max_in_flight`` at once with ``503`` and ``Retry-After``."""

    def __init__(self, app: ASGIApp, *, max_in_flight: int, exempt: Iterable[str]) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.exempt = frozenset(exempt)
        self.in_flight = 0
        self._refusal = problem_response(
            503,
            "Service unavailable",
            f"this server already works on {max_in_flight} requests; retry after "
            f"{RETRY_AFTER_SECONDS} s",
            slug="overloaded",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            REQUESTS_SHED.inc()
            await self._refusal(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
