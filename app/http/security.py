"""Security headers on every answer: errors, 304s, the /status fast path and streams included.

The API answers JSON, which a browser should never render, sniff into another type,
frame or refer onwards from, so every answer says so. The interactive docs (``/docs``,
``/redoc``) are HTML pages that load Swagger UI and ReDoc from a CDN and start them with
an inline script; they get a policy that allows exactly that (their inline scripts by
hash, computed from the pages FastAPI renders). A header a route sets itself (the
badge's own policy, a ``Cache-Control: no-store``) is never replaced.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Mapping

from fastapi import FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# JSON is never a document: it may load nothing and be framed by nobody.
API_POLICY = "default-src 'none'; frame-ancestors 'none'"

_COMMON = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    # For browsers older than CSP's frame-ancestors.
    (b"x-frame-options", b"DENY"),
)

# Where Swagger UI and ReDoc come from (FastAPI's defaults), and what they use once loaded:
# the OpenAPI document and "try it out" requests (same origin), inline styles and data:
# images (both UIs), Google Fonts and a search worker made from a blob: URL (ReDoc).
_CDN = "https://cdn.jsdelivr.net"
_DOCS_POLICY = (
    "default-src 'none'; "
    "script-src {scripts}; "
    f"style-src {_CDN} https://fonts.googleapis.com 'unsafe-inline'; "
    f"img-src 'self' data: {_CDN} https://fastapi.tiangolo.com; "
    "font-src https://fonts.gstatic.com; "
    "connect-src 'self'; "
    "worker-src blob:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def script_hashes(html: str) -> list[str]:
    """CSP sources (``'sha256-…'``) for each inline ``<script>`` of ``html``."""
    return [
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for body in _INLINE_SCRIPT.findall(html)
    ]


def _docs_policy(html: str) -> str:
    return _DOCS_POLICY.format(scripts=" ".join([_CDN, *script_hashes(html)]))


def docs_policies(app: FastAPI) -> dict[str, str]:
    """The policy of each docs page of ``app``, from the very pages FastAPI serves there.

    Rendered as FastAPI's own routes render them (without a root path: ``serve`` sets
    none); tests/http/test_security.py checks the served pages against these policies.
    """
    policies: dict[str, str] = {}
    if app.openapi_url and app.docs_url:
        page = get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=app.swagger_ui_oauth2_redirect_url,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters=app.swagger_ui_parameters,
        )
        policies[app.docs_url] = _docs_policy(bytes(page.body).decode())
        if app.swagger_ui_oauth2_redirect_url:
            redirect = get_swagger_ui_oauth2_redirect_html()
            policies[app.swagger_ui_oauth2_redirect_url] = _docs_policy(
                bytes(redirect.body).decode()
            )
    if app.openapi_url and app.redoc_url:
        page = get_redoc_html(openapi_url=app.openapi_url, title=f"{app.title} - ReDoc")
        policies[app.redoc_url] = _docs_policy(bytes(page.body).decode())
    return policies


def _header_set(policy: str) -> tuple[tuple[bytes, bytes], ...]:
    return ((b"content-security-policy", policy.encode("latin-1")), *_COMMON)


_NAMES = frozenset({b"content-security-policy", *(name for name, _ in _COMMON)})


def with_missing(
    headers: Iterable[tuple[bytes, bytes]], extra: tuple[tuple[bytes, bytes], ...]
) -> list[tuple[bytes, bytes]]:
    """``headers`` plus each of ``extra`` whose name they do not already carry."""
    listed = list(headers)
    # Most answers set none of them. (ASGI header names are lower-case.)
    present = {name for name, _ in listed}
    if present.isdisjoint(_NAMES):
        listed.extend(extra)
        return listed
    listed.extend(header for header in extra if header[0] not in present)
    return listed


ANSWER_HEADERS = "pledgewatch.answer_headers"


def answer_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    """The headers the edge adds to this request's answer, whoever makes the answer.

    The CORS and rate-limit middleware (inside this one) add theirs here rather than each
    wrapping ``send`` again: every layer of wrapping costs each request, and a dashboard's
    poll is answered in a few dozen microseconds.
    """
    headers: list[tuple[bytes, bytes]] = scope[ANSWER_HEADERS]
    return headers


class SecurityHeadersMiddleware:
    """Adds the security headers to every HTTP answer that does not set them itself, and the
    headers inner middleware put in :func:`answer_headers`.

    ``page_policies`` maps paths of HTML pages to their own Content-Security-Policy;
    every other answer gets :data:`API_POLICY`.
    """

    def __init__(self, app: ASGIApp, *, page_policies: Mapping[str, str] | None = None) -> None:
        self.app = app
        self.api_headers = _header_set(API_POLICY)
        self.page_headers = {
            path: _header_set(policy) for path, policy in (page_policies or {}).items()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        security = self.page_headers.get(scope["path"], self.api_headers)
        added: list[tuple[bytes, bytes]] = []
        scope[ANSWER_HEADERS] = added

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = with_missing(message.get("headers", ()), security)
                headers.extend(added)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def api_security_headers() -> dict[str, str]:
    """The API's security headers as a plain mapping, for answers made outside the middleware
    (the 500 that Starlette's outermost error handler sends)."""
    return {name.decode(): value.decode() for name, value in _header_set(API_POLICY)}
