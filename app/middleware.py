"""ASGI middleware: request ids and access logs, the body size cap, and idempotent POSTs."""

from __future__ import annotations

import hashlib
import logging
import re
import time
import uuid
from datetime import timedelta
from typing import Any

import anyio
import fastapi.routing
from sqlalchemy import delete
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.db import Database
from app.domain.idempotency.models import IdempotencyRecord
from app.metrics import REQUEST_LATENCY, REQUESTS
from app.problems import problem_response
from app.sql import insert_or_ignore

log = logging.getLogger("pledgewatch.access")
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestContextMiddleware:
    """Gives every request an id (``X-Request-ID`` when sane), logs one line, counts it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            template = _route_template(scope)
            # Unknown methods share one label so that clients cannot mint new series.
            method = scope["method"] if scope["method"] in _KNOWN_METHODS else "OTHER"
            REQUESTS.labels(method, template, str(status)).inc()
            REQUEST_LATENCY.labels(method, template).observe(elapsed)
            log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                    "actor": scope.get("state", {}).get("actor"),
                },
            )


def _route_template(scope: Scope) -> str:
    """The matched route's full path template (``/api/v1/pledges/{pledge_id}``), or "unmatched".

    Metrics are labelled with it, never with the concrete path, so that their number stays
    bounded. FastAPI >= 0.16x keeps included routes as they were declared (without the
    router's prefix) in ``scope["route"]``; the prefixed template comes from the app's routes.
    """
    route = scope.get("route")
    if route is None:
        return "unmatched"
    # Routes are fixed once the app is built: find each one's template once, not per request.
    known = _TEMPLATES.get(id(route))
    if known is not None and known[0] is route:
        return known[1]
    template = str(getattr(route, "path", None) or "unmatched")
    iter_route_contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    if iter_route_contexts is not None and "app" in scope:
        for context in iter_route_contexts(scope["app"].routes):
            if context.original_route is route and context.path_format:
                template = str(context.path_format)
                break
    # Keyed by identity (routes compare by value and are not hashable); the route is kept
    # with its template so that an id is never reused for another route.
    _TEMPLATES[id(route)] = (route, template)
    return template


_TEMPLATES: dict[int, tuple[object, str]] = {}


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app an already-read body once, then defers to the client."""
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class _TooLarge(Exception):
    pass


def _too_large(limit: int) -> Any:
    return problem_response(
        413,
        "Payload too large",
        f"the request body is over {limit} bytes",
        slug="payload-too-large",
        errors=[{"field": "body", "message": f"must not be over {limit} bytes"}],
    )


class BodyLimitMiddleware:
    """Refuses bodies over ``limit`` bytes with 413, whether announced or streamed."""

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _too_large(self.limit)(scope, receive, send)
            return
        if declared is None:
            await self._buffered(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _too_large(self.limit)(scope, receive, send)

    async def _buffered(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A body without Content-Length (chunked) is read and counted here, then handed on
        whole: an overflow raised inside the app would surface as the framework's 400."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await _too_large(self.limit)(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, replaying(b"".join(chunks), receive), send)


class IdempotencyMiddleware:
    """Makes every ``POST`` with an ``Idempotency-Key`` safe to retry.

    The same key and body replay the first response; the same key with another
    body is a 422; a retry while the first is still running is a 409. Keys are
    scoped to the credentials that sent them and kept ``ttl`` long. A 5xx is not
    kept, so the retry runs again.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._last_purge = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        key = _header(scope, b"idempotency-key")
        if key is None:
            await self.app(scope, receive, send)
            return
        if not (1 <= len(key) <= 255) or not key.isascii() or not key.isprintable():
            await problem_response(
                422,
                "Invalid input",
                "Idempotency-Key must be 1 to 255 printable ASCII characters",
                slug="validation",
                errors=[
                    {
                        "field": "Idempotency-Key",
                        "message": "must be 1 to 255 printable ASCII characters",
                    }
                ],
            )(scope, receive, send)
            return

        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break

        state = scope["app"].state
        database: Database = state.database
        now = state.clock.now()
        ttl = timedelta(hours=state.settings.idempotency_ttl_hours)
        stale = timedelta(seconds=state.settings.idempotency_stale_seconds)
        credential = _header(scope, b"authorization") or ""
        record_scope = hashlib.sha256(credential.encode("latin-1")).hexdigest()
        digest = hashlib.sha256()
        for part in (
            scope["method"],
            scope["path"],
            scope.get("query_string", b"").decode("latin-1"),
        ):
            digest.update(part.encode("utf-8", "surrogateescape") + b"\0")
        digest.update(body)
        request_hash = digest.hexdigest()

        def claim() -> IdempotencyRecord | None:
            """None when this request now owns the key; else the record that blocks it."""
            with database.transaction() as session:
                inserted = session.execute(
                    insert_or_ignore(session, IdempotencyRecord).values(
                        scope=record_scope,
                        key=key,
                        request_hash=request_hash,
                        state="in_progress",
                        created_at=now,
                    )
                ).rowcount  # type: ignore[attr-defined]
                if inserted:
                    return None
                record = session.get_one(IdempotencyRecord, (record_scope, key))
                expired = record.created_at < now - ttl
                abandoned = record.state == "in_progress" and record.created_at < now - stale
                if expired or (abandoned and record.request_hash == request_hash):
                    record.request_hash = request_hash
                    record.state = "in_progress"
                    record.created_at = now
                    record.response_status = None
                    record.response_body = None
                    record.response_headers = None
                    return None
                session.expunge(record)
                return record

        gates = state.gates
        async with gates.admit(write=True):
            blocking = await anyio.to_thread.run_sync(claim)
        if blocking is not None:
            await self._answer_blocked(blocking, request_hash, scope, receive, send)
            return

        captured_status = 500
        captured_headers: list[list[str]] = []
        chunks: list[bytes] = []
        replay_receive = replaying(body, receive)

        async def capturing_send(message: Message) -> None:
            nonlocal captured_status, captured_headers
            if message["type"] == "http.response.start":
                captured_status = message["status"]
                captured_headers = [
                    [k.decode("latin-1"), v.decode("latin-1")]
                    for k, v in message.get("headers", [])
                    if k.lower() not in (b"content-length", b"x-request-id")
                ]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, replay_receive, capturing_send)
        finally:

            def finish() -> None:
                with database.transaction() as session:
                    record = session.get(IdempotencyRecord, (record_scope, key))
                    if record is None:
                        return
                    if captured_status >= 500:
                        session.delete(record)
                        return
                    record.state = "done"
                    record.response_status = captured_status
                    record.response_headers = captured_headers
                    record.response_body = b"".join(chunks)

            async with gates.admit(write=True):
                await anyio.to_thread.run_sync(finish)
            await self._maybe_purge(gates, database, now - ttl)

    async def _answer_blocked(
        self,
        record: IdempotencyRecord,
        request_hash: str,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        if record.request_hash != request_hash:
            response = problem_response(
                422,
                "Idempotency-Key reused",
                "this Idempotency-Key was used with a different request; use a new key",
                slug="idempotency-key-reused",
                errors=[
                    {"field": "Idempotency-Key", "message": "was used with a different request"}
                ],
            )
        elif record.state != "done" or record.response_status is None:
            response = problem_response(
                409,
                "Request in progress",
                "the first request with this Idempotency-Key is still running; retry shortly",
                slug="idempotency-in-progress",
                headers={"Retry-After": "1"},
            )
        else:
            headers = [
                (k.encode("latin-1"), v.encode("latin-1")) for k, v in record.response_headers or []
            ]
            body = record.response_body or b""
            headers.append((b"content-length", str(len(body)).encode()))
            headers.append((b"idempotent-replayed", b"true"))
            await send(
                {
                    "type": "http.response.start",
                    "status": record.response_status,
                    "headers": headers,
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await response(scope, receive, send)

    async def _maybe_purge(self, gates: Any, database: Database, before: Any) -> None:
        # Expired keys are swept at most once a minute per process, off the request path's locks.
        if time.monotonic() - self._last_purge < 60:
            return
        self._last_purge = time.monotonic()

        def purge() -> None:
            with database.transaction() as session:
                session.execute(
                    delete(IdempotencyRecord).where(IdempotencyRecord.created_at < before)
                )

        async with gates.admit(write=True):
            await anyio.to_thread.run_sync(purge)
