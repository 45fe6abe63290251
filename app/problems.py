"""RFC 9457 problem details: the one way errors leave the service."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.domain.idempotency.service import Replay
from app.errors import DomainError, field_errors
from app.http.security import api_security_headers

PROBLEM_JSON = "application/problem+json"
_BASE = "https://pledgewatch.dev/problems/"
log = logging.getLogger("pledgewatch.errors")


class FieldError(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None


def problem_response(
    status: int,
    title: str,
    detail: str,
    *,
    slug: str,
    errors: Sequence[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = Problem(
        type=_BASE + slug,
        title=title,
        status=status,
        detail=detail,
        errors=[FieldError(**e) for e in errors] if errors is not None else None,
    )
    return Response(
        body.model_dump_json(exclude_none=True),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


_SOURCES = ("body", "query", "path", "header", "cookie")


def _without_source(error: dict[str, Any]) -> dict[str, Any]:
    # FastAPI prefixes each location with where the value came from; clients name the field.
    loc = list(error.get("loc", ()))
    if len(loc) > 1 and loc[0] in _SOURCES:
        loc = loc[1:]
    return {**error, "loc": tuple(loc)}


def _malformed(message: str) -> Response:
    return problem_response(
        400,
        "Malformed JSON",
        "the request body is not valid JSON",
        slug="malformed-json",
        errors=[{"field": "body", "message": message}],
    )


def _validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    for item in exc.errors():
        if item.get("type") == "json_invalid":
            ctx = item.get("ctx") or {}
            return _malformed(f"is not valid JSON: {ctx.get('error', 'malformed')}")
    errors = field_errors((_without_source(item) for item in exc.errors()), whole="body")
    fields = ", ".join(dict.fromkeys(e["field"] for e in errors))
    return problem_response(
        422, "Invalid input", f"invalid: {fields}", slug="validation", errors=errors
    )


def _domain(request: Request | None, exc: Exception) -> Response:
    assert isinstance(exc, DomainError)
    return problem_response(
        exc.status,
        exc.title,
        exc.detail,
        slug=exc.type_suffix,
        errors=exc.errors,
        headers=exc.headers or None,
    )


def _http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    titles = {404: "Not found", 405: "Method not allowed"}
    detail = exc.detail if isinstance(exc.detail, str) else "request refused"
    headers = dict(exc.headers) if exc.headers else {}
    if exc.status_code == 405:
        # FastAPI makes one route per method; Allow must list every route's methods.
        allowed = _allowed_methods(request)
        headers["Allow"] = ", ".join(allowed)
        detail = f"{request.method} is not allowed here; allowed: {', '.join(allowed)}"
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"nothing is served at {request.url.path}"
    if exc.status_code == 400 and detail == "There was an error parsing the body":
        # FastAPI's answer to a body json.loads cannot take: not UTF-8, or nested too deep.
        return _malformed("is not valid UTF-8 JSON")
    return problem_response(
        exc.status_code,
        titles.get(exc.status_code, "Request refused"),
        detail,
        slug=f"http-{exc.status_code}",
        headers=headers or None,
    )


# The database cannot answer now, through no fault of the request: the client should retry.
RETRY_AFTER_SECONDS = 3
# PostgreSQL SQLSTATE classes of that kind: connection exception, insufficient resources,
# operator intervention (shutdown, restart, a cancelled statement), system (I/O) error.
# Others (constraint violations, program limits, deadlocks) are the request's or ours.
_PG_UNAVAILABLE_CLASSES = frozenset({"08", "53", "57", "58"})
# SQLite's primary result codes of that kind: busy past the busy timeout ("database is
# locked"), a locked table, a file that cannot be opened, an I/O error, a full disk.
_SQLITE_UNAVAILABLE_CODES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
    }
)


def database_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` says the database cannot answer now (down, restarting, unreachable,
    out of connections, or busy past its timeout), not that the request or the code is wrong.
    """
    if isinstance(exc, PoolTimeout):
        return True
    cause: BaseException | None = exc
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        cause = exc.orig
    if isinstance(cause, psycopg.OperationalError):
        sqlstate = cause.sqlstate
        # No SQLSTATE: the connection itself failed (refused, reset, closed by the server).
        return sqlstate is None or sqlstate[:2] in _PG_UNAVAILABLE_CLASSES
    if isinstance(cause, sqlite3.OperationalError):
        code = getattr(cause, "sqlite_errorcode", None)
        if code is not None:
            return code & 0xFF in _SQLITE_UNAVAILABLE_CODES
        return "database is locked" in str(cause)
    return False


class _QuietLog:
    """Logs a repeated warning once per ``interval`` seconds, with how many were held back."""

    def __init__(self, interval: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last = -interval
        self._held_back = 0

    def warning(self, message: str, *, error: BaseException) -> None:
        with self._lock:
            now = self._clock()
            if now - self._last < self.interval:
                self._held_back += 1
                return
            self._last, held_back, self._held_back = now, self._held_back, 0
        # The driver's own message: SQLAlchemy's would add the statement and its parameters.
        cause = error.orig if isinstance(error, DBAPIError) else error
        log.warning(
            message,
            extra={"error": f"{type(cause).__name__}: {cause}"[:300], "held_back": held_back},
        )


_unavailable_log = _QuietLog(interval=10.0)


def _unavailable(exc: BaseException, request_id: str | None = None) -> Response:
    # During an outage every request fails alike: one line per interval, not one per request.
    _unavailable_log.warning("database unavailable; answering 503", error=exc)
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    if request_id:
        headers["X-Request-ID"] = request_id
    return problem_response(
        503,
        "Service unavailable",
        f"the database is unavailable just now; retry in {RETRY_AFTER_SECONDS} seconds",
        slug="database-unavailable",
        headers=headers,
    )


class DatabaseUnavailableMiddleware:
    """Answers 503 for the database errors of the middleware inside it (idempotency keys),
    and a problem for its domain errors (a 503 when the gates shed its admission).

    Without it they would reach Starlette's outermost handler, which re-raises after its
    answer: uvicorn then logs a traceback per request and closes the client's keep-alive
    connection. Mounted inside the access log, so that those 503s are logged and counted.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except DomainError as error:
            if started:
                raise
            await _domain(None, error)(scope, receive, send)
        except Exception as error:
            if started or not database_unavailable(error):
                raise
            await _unavailable(error)(scope, receive, send)


async def _database_unavailable(request: Request, exc: Exception) -> Response:
    # Async: during an outage no worker thread is taken to say so.
    if not database_unavailable(exc):
        raise exc  # any other database error is a defect: _unexpected logs it as one
    return _unavailable(exc)


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> list[str]:
    # Included routers are not flat routes with ``methods``: ask every route whether it
    # would fully match this path with each method instead.
    return [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in request.app.router.routes
        )
    ]


def _unexpected(request: Request, exc: Exception) -> Response:
    # This handler answers outside every middleware (Starlette's ServerErrorMiddleware), so
    # the request id is added here; it runs in a worker thread, so exc_info is passed.
    request_id = request.scope.get("state", {}).get("request_id")
    if database_unavailable(exc):
        # Raised by a middleware's own transaction (outside the exception middleware).
        return _unavailable(exc, request_id)
    log.error(
        "unhandled error",
        exc_info=exc,
        extra={"path": request.url.path, "request_id": request_id},
    )
    # For the same reason, the security headers every other answer gets from the middleware.
    headers = api_security_headers()
    if request_id:
        headers["X-Request-ID"] = request_id
    return problem_response(
        500,
        "Internal error",
        "the service failed; the request id in X-Request-ID identifies it in the logs",
        slug="internal",
        headers=headers,
    )


def _replay(request: Request, exc: Exception) -> Response:
    # The first answer to this Idempotency-Key, exactly as it was (its own headers included).
    assert isinstance(exc, Replay)
    answer = exc.answer
    response = Response(answer.body, status_code=answer.status)
    response.raw_headers = [
        *((name.encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers),
        (b"content-length", str(len(answer.body)).encode()),
        (b"idempotent-replayed", b"true"),
    ]
    return response


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(Replay, _replay)
    app.add_exception_handler(DomainError, _domain)
    app.add_exception_handler(StarletteHTTPException, _http)
    # Inside the middleware (access log, metrics and idempotency see the 503); what the
    # middleware itself raises reaches _unexpected, which answers the same way.
    app.add_exception_handler(DBAPIError, _database_unavailable)
    app.add_exception_handler(PoolTimeout, _database_unavailable)
    app.add_exception_handler(Exception, _unexpected)


_DESCRIPTIONS = {
    304: "Not modified: the ETag given in If-None-Match is current.",
    400: "Malformed JSON.",
    401: "No API key, or an unknown one (WWW-Authenticate: Bearer).",
    403: "The API key's role is too low.",
    404: "No such id.",
    409: "Conflict (an id that exists, a status change that is not one, "
    "or an Idempotency-Key still in progress).",
    412: "If-Match names a version that is no longer current.",
    413: "The request body is over 1 MiB.",
    422: "Invalid input: each bad field is named in errors.",
    503: "The database is unavailable just now; retry after Retry-After seconds.",
}


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the errors a route can answer."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        if code == 304:
            out[code] = {"description": _DESCRIPTIONS[code]}
            continue
        out[code] = {
            "description": _DESCRIPTIONS[code],
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
    return out


# 503: every route that reads or writes the database answers it while the database is down.
READ_ERRORS = (400, 401, 403, 422, 503)
WRITE_ERRORS = (400, 401, 403, 409, 413, 422, 503)
