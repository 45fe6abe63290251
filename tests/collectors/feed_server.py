"""A real HTTP server on 127.0.0.1 whose answers a test sets, for collector tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/rss+xml"
    etag: str | None = None
    delay: float = 0.0
    location: str | None = None


@dataclass
class FeedServer:
    base: str
    answers: dict[str, Answer] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"{self.base}{path}"


@contextmanager
def feed_server() -> Iterator[FeedServer]:
    state = FeedServer(base="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append((self.path, dict(self.headers)))
            answer = state.answers.get(self.path, Answer(status=404, body=b"not here"))
            if answer.delay:
                time.sleep(answer.delay)
            if answer.etag is not None and self.headers.get("If-None-Match") == answer.etag:
                self.send_response(304)
                self.send_header("ETag", answer.etag)
                self.end_headers()
                return
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            if answer.etag is not None:
                self.send_header("ETag", answer.etag)
            if answer.location is not None:
                self.send_header("Location", answer.location)
            self.end_headers()
            self.wfile.write(answer.body)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def rss(*items: tuple[str, str, str]) -> bytes:
    """An RSS 2.0 document of (title, description, RFC 822 date) items."""
    entries = "".join(
        f"<item><title>{title}</title><link>https://news.example.org/{index}</link>"
        f"<description>{summary}</description><pubDate>{date}</pubDate></item>"
        for index, (title, summary, date) in enumerate(items)
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel>'
        f"<title>Test feed</title><link>https://news.example.org/</link>{entries}"
        "</channel></rss>"
    ).encode()
