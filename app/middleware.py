"""ASGI middleware: request ids and access logs, the body size cap, and idempotent POSTs."""

from __future__ import annotations

import logging
import re
import time
import uuid
from datetime import timedelta
from functools import partial
from typing import Any

import anyio
import fastapi.routing
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.domain.idempotency import service as idempotency
from app.domain.idempotency.handover import IdempotencyContext, Stage, attach
from app.domain.idempotency.service import StoredAnswer
from app.metrics import REQUEST_LATENCY, REQUESTS
from app.problems import problem_response

log = logging.getLogger("pledgewatch.access")
_idempotency_log = logging.getLogger("pledgewatch.idempotency")
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

    Here the key is only checked for form, the body read and hashed, and the answer held
    back: the key is claimed by the request's transaction (``get_session``, after
    authentication; app/domain/idempotency/handover.py), and the answer is stored in that
    transaction and committed before it is sent. So an answer that left was kept, and a
    retry is answered with it byte for byte. An answer that changed nothing (a 4xx) is kept
    in a short transaction of its own, when the request was authenticated; a 5xx is not kept.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

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
        body = await _read_body(receive)
        if body is None:
            return  # the client went away
        digest = idempotency.request_hash(
            scope["method"], scope["path"], scope.get("query_string", b"").decode("latin-1"), body
        )
        failure: Exception | None = None
        async with anyio.create_task_group() as holders:
            context = IdempotencyContext(key=key, request_hash=digest, holders=holders)
            attach(scope, context)
            answer = _HeldAnswer(scope, context, send)
            try:
                await self.app(scope, replaying(body, receive), answer.send)
            except Exception as error:  # re-raised below, outside the task group
                failure = error
            finally:
                with anyio.CancelScope(shield=True):
                    if context.pending:
                        await anyio.to_thread.run_sync(context.abandon)
                    await context.release()
        if failure is not None:
            raise failure


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body (its size is capped by BodyLimitMiddleware, outside this one)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


# Answers that depend on the moment, not on the request: never kept for a key.
_NEVER_KEPT = frozenset({401, 429})


class _HeldAnswer:
    """Holds a keyed POST's answer back until it is kept, then lets it go."""

    def __init__(self, scope: Scope, context: IdempotencyContext, send: Send) -> None:
        self._scope = scope
        self._context = context
        self._send = send
        self._start: Message | None = None
        self._chunks: list[bytes] = []

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self._start = message
            return
        if message["type"] == "http.response.body" and self._start is not None:
            self._chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            await self._settle_and_deliver()
            return
        await self._send(message)

    async def _settle_and_deliver(self) -> None:
        start = self._start
        assert start is not None
        status: int = start["status"]
        body = b"".join(self._chunks)
        answer = StoredAnswer.of_response(status, list(start.get("headers", [])), body)
        context = self._context
        if context.pending:
            try:
                await anyio.to_thread.run_sync(context.commit, answer if status < 500 else None)
            except Exception:
                _idempotency_log.exception(
                    "an answer could not be committed", extra=self._log_extra()
                )
                await context.release()
                await _not_saved()(self._scope, _no_receive, self._send)
                return
        await context.release()
        if context.stage is not Stage.SETTLED and status < 500 and status not in _NEVER_KEPT:
            await self._keep_alone(answer)
        await self._send(start)
        await self._send({"type": "http.response.body", "body": body, "more_body": False})

    async def _keep_alone(self, answer: StoredAnswer) -> None:
        """Keep the answer of an authenticated request that changed nothing."""
        context = self._context
        # Claimed keys know their owner; a request refused before its transaction (a role
        # too low) is known by the actor that authentication noted.
        actor = self._scope.get("state", {}).get("actor")
        authenticated = isinstance(actor, str) and actor.startswith("key:")
        owner = context.owner or (idempotency.owner_of(actor) if authenticated else None)
        if owner is None:
            return  # anonymous: nothing is kept for it
        state = self._scope["app"].state
        keep = partial(
            context.keep_alone,
            state.database,
            owner=owner,
            answer=answer,
            now=state.clock.now(),
            ttl=timedelta(hours=state.settings.idempotency_ttl_hours),
        )
        try:
            async with state.gates.admit(write=True):
                await anyio.to_thread.run_sync(keep)
        except Exception:
            # The answer is still right (nothing changed); only its replay is lost.
            _idempotency_log.warning(
                "an answer could not be kept for its key", exc_info=True, extra=self._log_extra()
            )

    def _log_extra(self) -> dict[str, Any]:
        return {"request_id": self._scope.get("state", {}).get("request_id")}


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def _not_saved() -> Any:
    return problem_response(
        503,
        "Not saved",
        "the change could not be saved with its answer; retry with the same Idempotency-Key",
        slug="not-saved",
        headers={"Retry-After": "1"},
    )
