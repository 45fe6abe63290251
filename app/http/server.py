"""uvicorn as ``pledgewatch serve`` runs it: no ``server`` header, and a bound on request headers.

uvicorn bounds how long an idle keep-alive connection may wait between requests
(``timeout_keep_alive``), but not how long a client may take to send a request's
headers: its protocols cancel the keep-alive timer at the first byte received, and a
new connection has no timer at all. A client that opens connections and sends a
header line now and then (slow-loris) holds each one open for ever. The protocols
below arm a deadline whenever the connection waits for a request's headers (on
connection and after each answer) and close the connection when it passes; they also
refuse headers that grow past a size bound (``431``) instead of buffering them.
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
    """The deadline and size bound for one connection's request headers (mixed into a protocol).

    ``_awaiting_headers`` is true from the moment the connection may start a request until
    that request's headers are complete; only then does the deadline run and received
    bytes count against the bound.
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

    def _headers_over_bound(self) -> bool:
        """Still no complete headers, and more bytes than the bound: refuse and close."""
        if not self._awaiting_headers or self._header_bytes <= self._max_header_bytes:
            return False
        self._stop_deadline()
        self._awaiting_headers = False
        if not self.transport.is_closing():
            CONNECTIONS_CUT.labels("headers_too_large").inc()
            self.transport.write(_too_large_answer(self._max_header_bytes))
            self.transport.close()
        return True

    def _headers_too_slow(self) -> None:
        self._deadline = None
        if self._awaiting_headers and not self.transport.is_closing():
            # Counted, not logged: a client opening thousands of such connections must not
            # flood the log.
            CONNECTIONS_CUT.labels("headers_too_slow").inc()
            log.debug("closed a connection that sent no complete request headers in time")
            self.transport.close()


class BoundedHttpToolsProtocol(HeaderDeadline, HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a size bound on request headers.

    The connection may start a new request once the previous one has been both received
    whole (its body too) and answered; httptools tells each of those apart.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_deadline(get_settings())
        self._request_received = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_complete()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._count_header_bytes(len(data))
        super().data_received(data)
        self._headers_over_bound()

    def on_message_begin(self) -> None:
        self._request_received = False
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._headers_complete()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._request_received = True
        super().on_message_complete()
        # Answered before its body was all in (a 413, say): the next request starts now.
        if self.cycle is not None and self.cycle.response_complete and not self.pipeline:
            self._await_headers()

    def on_response_complete(self) -> None:
        # A pipelined request already has its headers; it runs next.
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        if self._request_received and not pipelined and not self.transport.is_closing():
            self._await_headers()


class BoundedH11Protocol(HeaderDeadline, H11Protocol):
    """uvicorn's h11 protocol with a deadline and a size bound on request headers.

    h11 keeps both sides' states: the connection waits for a request's headers while
    both are ``IDLE``, and the client's side leaves ``IDLE`` once its headers are parsed.
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
        self._headers_over_bound()

    def handle_events(self) -> None:
        super().handle_events()
        waiting = self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE
        if self._awaiting_headers and self.conn.their_state is not h11.IDLE:
            self._headers_complete()
        elif waiting and not self._awaiting_headers and not self.transport.is_closing():
            self._await_headers()


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
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "log_config": None,
        "access_log": False,
        # X-Forwarded-For is read by the app, and only from PLEDGEWATCH_TRUSTED_PROXIES.
        "proxy_headers": False,
    }
