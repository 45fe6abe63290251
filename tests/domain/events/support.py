"""Reading Server-Sent Events in tests: a parser of the wire format, and a driver that
plays the server's side of one request against the app's ASGI callable, so that a test
controls when the "socket" accepts data (backpressure) and when the client leaves."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

from starlette.types import ASGIApp, Message

TIMEOUT = 10.0


@dataclass
class SseMessage:
    """One message of an event stream (a block of lines ended by a blank line)."""

    id: str | None = None
    event: str | None = None
    data_lines: list[str] = field(default_factory=list)
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    @property
    def data(self) -> str | None:
        return "\n".join(self.data_lines) if self.data_lines else None

    @property
    def is_event(self) -> bool:
        """Whether a browser would dispatch it: only messages with data are events."""
        return self.data is not None

    def document(self) -> dict[str, Any]:
        assert self.data is not None, self
        body: dict[str, Any] = json.loads(self.data)
        return body


def parse_lines(lines: Iterable[str]) -> Iterator[SseMessage]:
    """Messages from the lines of a stream (line ends already removed), as they complete."""
    message = SseMessage()
    touched = False
    for line in lines:
        if line == "":
            if touched:
                yield message
            message, touched = SseMessage(), False
            continue
        touched = True
        if line.startswith(":"):
            message.comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            message.id = value
        elif name == "event":
            message.event = value
        elif name == "data":
            message.data_lines.append(value)
        elif name == "retry":
            message.retry = int(value)


class AsgiStream:
    """One GET against an ASGI app, read as a client would read an event stream.

    ``accepting`` plays the socket: while it is cleared, the app's ``send`` of a body
    chunk waits, exactly as uvicorn's ``send`` waits while the transport is paused
    because the client does not read.
    """

    def __init__(
        self,
        app: ASGIApp,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        method: str = "GET",
    ) -> None:
        self._app = app
        self._scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": urlencode(params or {}).encode(),
            "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.ended = False
        self.chunks_sent = 0
        self.accepting = asyncio.Event()
        self.accepting.set()
        # Called after each body chunk the "socket" accepted, as the app hands it over.
        self.on_chunk: Callable[[], None] | None = None
        self._text = ""
        self._arrived = asyncio.Event()
        self._started = asyncio.Event()
        self._requested = False
        self._leave = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsgiStream:
        self._task = asyncio.create_task(self._run())
        started = asyncio.create_task(self._started.wait())
        await asyncio.wait({self._task, started}, timeout=TIMEOUT, return_when="FIRST_COMPLETED")
        started.cancel()
        if self._task.done():
            self._task.result()
        assert self.status is not None, "the app did not answer"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.leave()

    async def leave(self) -> None:
        """Disconnect, as a client closing its socket, and wait for the app to finish."""
        self._leave.set()
        self.accepting.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, TIMEOUT)

    async def finished(self) -> None:
        """Wait until the app has returned on its own (the stream ended)."""
        assert self._task is not None
        await asyncio.wait_for(asyncio.shield(self._task), TIMEOUT)

    async def _run(self) -> None:
        await self._app(self._scope, self._receive, self._send)

    async def _receive(self) -> Message:
        if not self._requested:
            self._requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._leave.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
            self._started.set()
            return
        if message["type"] != "http.response.body":
            return
        await self.accepting.wait()
        if self._leave.is_set():
            return
        self.chunks_sent += 1
        self._text += message.get("body", b"").decode()
        if self.on_chunk is not None:
            self.on_chunk()
        if not message.get("more_body", False):
            self.ended = True
        self._arrived.set()

    def body(self) -> str:
        """What has arrived so far (for answers that are not streams)."""
        return self._text

    async def next_message(self, timeout: float = TIMEOUT) -> SseMessage:
        """The next complete message; fails if none comes within ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while True:
                block, separator, rest = self._text.partition("\n\n")
                if separator:
                    self._text = rest
                    return next(parse_lines([*block.split("\n"), ""]))
                if self.ended:
                    raise EOFError("the stream ended")
                self._arrived.clear()
                await self._arrived.wait()

    async def next_events(self, count: int, timeout: float = TIMEOUT) -> list[SseMessage]:
        """The next ``count`` events, skipping messages that are not events (pings)."""
        found: list[SseMessage] = []
        async with asyncio.timeout(timeout):
            while len(found) < count:
                message = await self.next_message(timeout)
                if message.is_event:
                    found.append(message)
        return found
