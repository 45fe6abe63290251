"""uvicorn as ``pledgewatch serve`` runs it: no ``server`` header, and a bound on request headers.

uvicorn bounds how long an idle keep-alive connection may wait between requests
(``timeout_keep_alive``), but not how long a client may take to send a request's
headers: its protocols cancel the keep-alive timer at the first byte received, and a
new connection has no timer at all. A client that opens connections and sends a
header line now and then (slow-loris) holds each one open for ever. The protocols
below start a deadline when a connection is made and when the first byte of a later
request arrives, stop it when that request's headers are complete, and close the
connection when it passes; they also refuse headers that grow past a size bound
(``431``) instead of buffering them. Idle keep-alive connections stay uvicorn's to close.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from prometheus_client import Counter
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.config import Settings, get_settings
from app.problems import PROBLEM_JSON, Problem

log = logging.getLogger("pledgewatch.server")
CONNECTIONS_CUT = Counter(
    "pledgewatch_connections_cut_total",
    "Connections closed for sending request headers too slowly or too large.",
    ["reason"],
)


def _too_large_answer(limit: int) -> bytes:
    body = Problem(
        type="https://pledgewatch.dev/problems/headers-too-large",
        title="Request headers too large",
        status=431,
        detail=f"the request line and headers are over {limit} bytes",
    ).model_dump_json(exclude_none=True)
    head = (
        "HTTP/1.1 431 Request Header Fields Too Large\r\n"
        f"content-type: {PROBLEM_JSON}\r\n"
        f"content-length: {len(body)}\r\n"
        "x-content-type-options: nosniff\r\n"
        "connection: close\r\n\r\n"
    )
    return (head + body).encode("latin-1")


class HeaderDeadline:
    """The deadline and size bound on one connection's request headers (mixed into a protocol).

    While ``_awaiting_headers`` the deadline runs and received bytes count against the
    bound. Each protocol below says when a request starts (``_await_headers``) and when its
    headers are complete (``_headers_complete``).
    """

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop

    def _init_deadline(self, settings: Settings) -> None:
        self._header_timeout = settings.header_timeout_seconds
        self._max_header_bytes = settings.max_header_bytes
        self._deadline: asyncio.TimerHandle | None = None
        self._awaiting_headers = False
        self._header_bytes = 0

    def _await_headers(self) -> None:
        self._stop_deadline()
        self._awaiting_headers = True
        self._header_bytes = 0
        self._deadline = self.loop.call_later(self._header_timeout, self._headers_too_slow)

    def _headers_complete(self) -> None:
        self._awaiting_headers = False
        self._stop_deadline()

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _count_header_bytes(self, size: int) -> None:
        if self._awaiting_headers:
            self._header_bytes += size

    def _answering(self) -> bool:
        """Whether an answer to an earlier request (pipelined) is still being sent."""
        cycle = getattr(self, "cycle", None)
        return cycle is not None and not cycle.response_complete

    def _check_header_bytes(self) -> None:
        """Still no complete headers, and more bytes than the bound: refuse and close."""
        if not self._awaiting_headers or self._header_bytes <= self._max_header_bytes:
            return
        self._headers_complete()
        if self.transport.is_closing():
            return
        CONNECTIONS_CUT.labels("headers_too_large").inc()
        if self._answering():
            # An answer is on the wire: it ends first, then the connection, unread further.
            self.transport.pause_reading()
            self.cycle.keep_alive = False  # type: ignore[attr-defined]
            return
        self.transport.write(_too_large_answer(self._max_header_bytes))
        self.transport.close()

    def _headers_too_slow(self) -> None:
        self._deadline = None
        if not self._awaiting_headers or self.transport.is_closing():
            return
        self._awaiting_headers = False
        # Counted, not logged: a client opening thousands of such connections must not
        # flood the log.
        CONNECTIONS_CUT.labels("headers_too_slow").inc()
        # uvicorn's own graceful close: at once, or after an answer still being sent.
        self.shutdown()  # type: ignore[attr-defined]


class BoundedHttpToolsProtocol(HeaderDeadline, HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a size bound on request headers.

    A request starts at the parser's first callback for it (``on_message_begin``); bytes
    count from the read after that one, so the bound may be passed by one read at most.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_deadline(get_settings())

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_complete()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._count_header_bytes(len(data))
        super().data_received(data)
        self._check_header_bytes()

    def on_message_begin(self) -> None:
        # The first request's deadline runs from the connection's start.
        if not self._awaiting_headers:
            self._await_headers()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._headers_complete()
        super().on_headers_complete()


class BoundedH11Protocol(HeaderDeadline, H11Protocol):
    """uvicorn's h11 protocol with a deadline and a size bound on request headers.

    h11 keeps both sides' states: bytes that arrive while both are ``IDLE`` start a
    request, and the client's side leaves ``IDLE`` once its headers are parsed.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_deadline(get_settings())

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_complete()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        idle = self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE
        if idle and not self._awaiting_headers:
            self._await_headers()
        self._count_header_bytes(len(data))
        super().data_received(data)
        self._check_header_bytes()

    def handle_events(self) -> None:
        super().handle_events()
        if self._awaiting_headers and self.conn.their_state is not h11.IDLE:
            self._headers_complete()


def http_protocol(name: str = "auto") -> type[asyncio.Protocol]:
    """The protocol class for ``uvicorn.Config(http=...)``. Module-level classes, so that
    uvicorn can hand them to worker processes. httptools (a dependency, as uvicorn's
    ``auto`` would choose) unless ``name`` asks for h11."""
    if name == "h11":
        return BoundedH11Protocol
    if name in ("auto", "httptools"):
        return BoundedHttpToolsProtocol
    raise ValueError(f"unknown HTTP protocol {name!r}: auto, httptools or h11")


def uvicorn_options(settings: Settings, *, http: str = "auto") -> dict[str, Any]:
    """What every uvicorn the app starts is given, besides the app, host and port."""
    return {
        "http": http_protocol(http),
        # Nothing says which server (or which version of it) answers.
        "server_header": False,
        # h11's own bound is a backstop, a read (256 KiB at most) beyond ours.
        "h11_max_incomplete_event_size": settings.max_header_bytes + 256 * 1024,
        "log_config": None,
        "access_log": False,
        # X-Forwarded-For is read by the app, and only from PLEDGEWATCH_TRUSTED_PROXIES.
        "proxy_headers": False,
        # On SIGTERM, requests still under way (a long export, a wait for a database slot
        # or for a ledger verification) get this long, then the process stops regardless.
        "timeout_graceful_shutdown": settings.shutdown_grace_seconds,
    }
