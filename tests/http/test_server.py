"""``pledgewatch serve`` against clients that send their headers slowly or endlessly, and
against ordinary ones: a real server process for each of uvicorn's two HTTP/1.1 parsers."""

from __future__ import annotations

import itertools
import select
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.e2e.conftest import running_server

API = "/api/v1"
HEADER_TIMEOUT = 1.0
MAX_HEADER_BYTES = 4096
# How long a cut-off may take here at most: the deadline plus a loaded machine's delays.
GENEROUS = 30.0


@pytest.fixture(scope="module", params=["httptools", "h11"])
def server(
    request: pytest.FixtureRequest,
    sqlite_template: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, int]]:
    """(host, port) of a server with a one-second header deadline and a 4 KiB header bound."""
    folder = tmp_path_factory.mktemp(f"server-{request.param}")
    shutil.copyfile(sqlite_template, folder / "pledgewatch.db")
    settings = {
        "PLEDGEWATCH_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "PLEDGEWATCH_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
        "PLEDGEWATCH_SSE_HEARTBEAT_SECONDS": "0.2",
    }
    with running_server(
        f"sqlite:///{folder / 'pledgewatch.db'}",
        folder / "server.log",
        settings,
        options=["--http", str(request.param)],
    ) as base:
        parts = urlsplit(base)
        assert parts.hostname is not None
        assert parts.port is not None
        yield parts.hostname, parts.port


@pytest.fixture
def connection(server: tuple[str, int]) -> Iterator[socket.socket]:
    with socket.create_connection(server, timeout=GENEROUS) as sock:
        yield sock


def until_closed(sock: socket.socket, pieces: Iterator[bytes], every: float = 0.1) -> bytes:
    """Send one of ``pieces`` every ``every`` seconds until the server closes the connection;
    what it sent meanwhile. Fails if it is still open after ``GENEROUS`` seconds."""
    received = b""
    deadline = time.monotonic() + GENEROUS
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], every)
        if readable:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk
            continue
        piece = next(pieces, None)
        if piece is None:
            continue
        try:
            sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            return received
    raise AssertionError(f"still open after {GENEROUS} s; received {received[:200]!r}")


def header_lines() -> Iterator[bytes]:
    return (f"X-Slow-{n}: still typing\r\n".encode() for n in itertools.count())


def read_answer(sock: socket.socket) -> tuple[bytes, bytes]:
    """One whole answer (with Content-Length) from ``sock``: (head, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return head, body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode()


def test_a_client_sending_its_headers_slowly_is_cut_off(connection: socket.socket) -> None:
    connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
    # A header line every tenth of a second: never idle, never done.
    assert until_closed(connection, header_lines()) == b""


def test_a_connection_that_sends_nothing_is_cut_off(connection: socket.socket) -> None:
    assert until_closed(connection, iter(())) == b""


def test_the_next_request_on_a_kept_alive_connection_is_bounded_too(
    connection: socket.socket,
) -> None:
    connection.sendall(get("/healthz"))
    head, _ = read_answer(connection)
    assert head.startswith(b"HTTP/1.1 200")
    # uvicorn stops its keep-alive timer at the first byte of the next request.
    connection.sendall(b"GET /healthz HTTP/1.1\r\n")
    assert until_closed(connection, header_lines()) == b""


def test_headers_past_the_bound_are_refused_with_431(connection: socket.socket) -> None:
    connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
    long_lines = (f"X-Big-{n}: {'x' * 1000}\r\n".encode() for n in range(1000))
    answer = until_closed(connection, long_lines, every=0.01)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"application/problem+json" in answer
    assert b'"status":431' in answer


def test_ordinary_requests_and_headers_under_the_bound_are_served(
    connection: socket.socket,
) -> None:
    headers = "".join(f"X-Fine-{n}: {'y' * 100}\r\n" for n in range(25))  # about 3 KiB
    connection.sendall(f"GET /healthz HTTP/1.1\r\nHost: test\r\n{headers}\r\n".encode())
    head, body = read_answer(connection)
    assert head.startswith(b"HTTP/1.1 200")
    assert body == b'{"status":"ok"}'
    # Idle between requests for longer than the header deadline (uvicorn's keep-alive
    # timeout, 5 s, governs idle connections): the next request is served all the same.
    time.sleep(HEADER_TIMEOUT * 1.5)
    connection.sendall(get(f"{API}/pledges"))
    head, _ = read_answer(connection)
    assert head.startswith(b"HTTP/1.1 200")


def test_a_stream_outlives_the_header_deadline(connection: socket.socket) -> None:
    connection.sendall(get(f"{API}/events"))
    data = b""
    # Heartbeats come every 0.2 s: eight of them take longer than the deadline.
    while data.count(b"\r\n: ping") + data.count(b"\n: ping") < 8:
        chunk = connection.recv(65536)
        assert chunk, data[-500:]
        data += chunk
    head = data.partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 200")
    # Streams carry the edge's headers like every answer.
    assert b"x-content-type-options: nosniff" in head
    assert b"access-control-allow-origin: *" in head
    assert b'ratelimit-policy: "expensive"' in head


def test_no_answer_names_the_server(connection: socket.socket) -> None:
    for path in ("/healthz", f"{API}/pledges/nobody", f"{API}/status"):
        connection.sendall(get(path))
        head, _ = read_answer(connection)
        assert b"\r\nserver:" not in head.lower(), head
    # Not even uvicorn's own answer to a request it cannot parse.
    connection.sendall(b"NOT HTTP AT ALL\r\n\r\n")
    answer = until_closed(connection, iter(()))
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert b"\r\nserver:" not in answer.lower(), answer
