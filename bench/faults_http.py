"""A lean HTTP/1.1 client on asyncio streams, for offering load faster than it is answered.

A general client such as httpx builds full request and response objects; at ten times
what the server sustains, on the same two cores, it would be the bottleneck and the load
would not be offered. Here a request is bytes built in advance and an answer is its status
line and headers (the body is read and dropped), over keep-alive connections that are
opened as needed up to a cap.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    retry_after: bool
    seconds: float


class ClientCapped(Exception):
    """Every connection the client may open is waiting for an answer: not sent."""


def build_request(
    method: str, path: str, host: str, *, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name:
            headers[name.strip().lower()] = value.strip()
    if b"content-length" in headers:
        await reader.readexactly(int(headers[b"content-length"]))
    elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status, headers


@dataclass
class Pool:
    """Keep-alive connections to one server, at most ``cap`` of them open at once."""

    host: str
    port: int
    cap: int
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = field(default_factory=list)
    open: int = 0

    async def send(self, raw: bytes, timeout: float) -> Answer:
        """Send ``raw`` and wait for the answer (TimeoutError, OSError or ClientCapped)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        reused = bool(self.idle)
        connection = self.idle.pop() if reused else await self._connect(timeout)
        try:
            status, headers = await asyncio.wait_for(self._exchange(connection, raw), timeout)
        except (asyncio.IncompleteReadError, ConnectionError) as error:
            self._close(connection)
            if not reused:
                raise ConnectionError(str(error)) from error
            # The server may have closed an idle connection: once more, on a new one.
            connection = await self._connect(timeout)
            try:
                status, headers = await asyncio.wait_for(self._exchange(connection, raw), timeout)
            except BaseException:
                self._close(connection)
                raise
        except BaseException:
            self._close(connection)
            raise
        if headers.get(b"connection", b"").lower() == b"close":
            self._close(connection)
        else:
            self.idle.append(connection)
        return Answer(status, b"retry-after" in headers, loop.time() - started)

    async def _connect(self, timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.open >= self.cap:
            raise ClientCapped
        self.open += 1
        try:
            return await asyncio.wait_for(asyncio.open_connection(self.host, self.port), timeout)
        except BaseException:
            self.open -= 1
            raise

    @staticmethod
    async def _exchange(
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter], raw: bytes
    ) -> tuple[int, dict[bytes, bytes]]:
        reader, writer = connection
        writer.write(raw)
        await writer.drain()
        return await _read_answer(reader)

    def _close(self, connection: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self.open -= 1
        with contextlib.suppress(OSError, RuntimeError):
            connection[1].transport.abort()

    def close(self) -> None:
        while self.idle:
            self._close(self.idle.pop())
