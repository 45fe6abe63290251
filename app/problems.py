"""RFC 9457 problem details: the one way errors leave the service."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

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


def _domain(request: Request, exc: Exception) -> Response:
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


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(DomainError, _domain)
    app.add_exception_handler(StarletteHTTPException, _http)
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


READ_ERRORS = (400, 401, 403, 422)
WRITE_ERRORS = (400, 401, 403, 409, 413, 422)
