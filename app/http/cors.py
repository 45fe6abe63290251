"""Cross-origin reads for dashboards in browsers, and cross-origin writes for listed origins.

Two policies, which is why this is not Starlette's CORSMiddleware (one policy for all):

- **Public reads** (``GET``/``HEAD`` of ``/status``, ``/events``, badges, pledges, their
  evidence and history, evidence items, the ledger, and the OpenAPI document) may be read
  by every origin: ``Access-Control-Allow-Origin: *``, never with credentials (an API
  key is a header the page sends, not a cookie). The same on every such answer whether
  or not the request named an origin, so that a cache never keeps a copy without it.
- **Everything else** (writes, and reads that need a role) only from the origins listed in
  ``PLEDGEWATCH_CORS_WRITE_ORIGINS``: the answer names that origin (``Vary: Origin``).
  A preflight from an origin not listed is refused (``403``, no allow headers), so the
  browser never sends the request.

The headers a page may read (``Access-Control-Expose-Headers``) include the ETag (a
dashboard polls with ``If-None-Match``), Location, Retry-After, the rate-limit fields,
the request id and the ledger headers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from app.http.security import answer_headers
from app.problems import problem_response

_READ_METHODS = frozenset({"GET", "HEAD"})
ALLOWED_REQUEST_HEADERS = (
    "Authorization, Content-Type, If-None-Match, If-Match, Idempotency-Key, Last-Event-ID, "
    "X-Request-ID"
)
EXPOSED_HEADERS = (
    "ETag, Location, Retry-After, RateLimit, RateLimit-Policy, X-Request-ID, "
    "X-Pledgewatch-Ledger-Length, X-Pledgewatch-Ledger-Head, Idempotent-Replayed"
)
# Browsers keep a preflight's answer at most this long (Chromium caps it at two hours).
MAX_AGE_SECONDS = 7200


def public_reads(api_prefix: str) -> re.Pattern[str]:
    """The paths every origin may read."""
    prefix = re.escape(api_prefix)
    return re.compile(
        rf"^(?:/openapi\.json|{prefix}/(?:"
        r"status(?:/[^/]+/badge\.svg)?"
        r"|events"
        r"|pledges(?:/[^/]+(?:/(?:evidence|history))?)?"
        r"|evidence/[^/]+"
        r"|ledger(?:/.*)?"
        r"))$"
    )


def _headers(pairs: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.encode(), value.encode("latin-1")) for name, value in pairs]


class CorsMiddleware:
    """Answers preflights and adds the CORS headers, per the two policies above (mounted
    inside :class:`~app.http.security.SecurityHeadersMiddleware`, which sends them)."""

    def __init__(self, app: ASGIApp, *, api_prefix: str, write_origins: Iterable[str]) -> None:
        self.app = app
        self.public = public_reads(api_prefix)
        self.write_origins = frozenset(write_origins)
        self.public_headers = _headers(
            [
                ("access-control-allow-origin", "*"),
                ("access-control-expose-headers", EXPOSED_HEADERS),
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if method in _READ_METHODS and self.public.match(scope["path"]):
            answer_headers(scope).extend(self.public_headers)
            await self.app(scope, receive, send)
            return
        origin = requested_method = None
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value.decode("latin-1")
            elif name == b"access-control-request-method":
                requested_method = value.decode("latin-1")
        if origin is None:
            await self.app(scope, receive, send)
            return
        if method == "OPTIONS" and requested_method is not None:
            await self._preflight(scope, origin, requested_method.upper(), receive, send)
            return
        if origin.lower() in self.write_origins:
            answer_headers(scope).extend(self._listed(origin))
        await self.app(scope, receive, send)

    def _listed(self, origin: str) -> list[tuple[bytes, bytes]]:
        return _headers(
            [
                ("access-control-allow-origin", origin),
                ("access-control-expose-headers", EXPOSED_HEADERS),
                ("vary", "Origin"),
            ]
        )

    async def _preflight(
        self, scope: Scope, origin: str, requested_method: str, receive: Receive, send: Send
    ) -> None:
        """A browser asks whether it may send ``requested_method`` to this path from ``origin``."""
        if requested_method in _READ_METHODS and self.public.match(scope["path"]):
            allow_origin, methods = "*", "GET, HEAD"
        elif origin.lower() in self.write_origins:
            allow_origin, methods = origin, "GET, HEAD, POST, PUT, PATCH, DELETE"
        else:
            response = problem_response(
                403,
                "Origin not allowed",
                f"cross-origin {requested_method} requests to this path are allowed only from "
                "the origins in PLEDGEWATCH_CORS_WRITE_ORIGINS",
                slug="cors-origin-not-allowed",
                headers={"Vary": "Origin"},
            )
            await response(scope, receive, send)
            return
        headers = _headers(
            [
                ("access-control-allow-origin", allow_origin),
                ("access-control-allow-methods", methods),
                ("access-control-allow-headers", ALLOWED_REQUEST_HEADERS),
                ("access-control-max-age", str(MAX_AGE_SECONDS)),
                ("vary", "Origin"),
            ]
        )
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
