"""The safe fetcher against real HTTP servers on 127.0.0.1 (and injected DNS for public names).

Every server here listens on 127.0.0.1 only. Tests that need the guard to let a
request through either allow private hosts or exempt the server's host:port; the guard
alone, without connecting anywhere, is tested in test_guard.py.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib
import shutil
import socket
import ssl
import subprocess
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from app.clock import FrozenClock
from app.net import FetchError, SafeFetcher, check_public_url
from app.net.decode import STEP
from tests.net.dns import fixed_dns

Route = Callable[["Handler"], None]


@dataclass
class Seen:
    path: str
    headers: dict[str, str]


@dataclass
class LocalServer:
    """A threaded HTTP server on 127.0.0.1 whose answers are plain functions, by path."""

    routes: dict[str, Route] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    # Set at teardown so that handlers waiting on purpose stop waiting.
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    httpd: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self.httpd is not None
        return int(self.httpd.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def hits(self, path: str) -> int:
        with self.lock:
            return sum(1 for seen in self.seen if seen.path == path)


class Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        local = self.server.local
        with local.lock:
            local.seen.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}))
        route = local.routes.get(self.path)
        try:
            if route is None:
                answer(self, 404, b"no such page")
            else:
                route(self)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up on purpose (size cap, timeout)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    local: LocalServer


def answer(
    handler: BaseHTTPRequestHandler,
    status: int,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> None:
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    if "Content-Length" not in (headers or {}):
        handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _start(tls: ssl.SSLContext | None = None) -> LocalServer:
    local = LocalServer()
    httpd = _Server(("127.0.0.1", 0), Handler)
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    httpd.local = local
    local.httpd = httpd
    # A short poll interval makes shutdown (at teardown) quick.
    threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True).start()
    return local


def _stop(local: LocalServer) -> None:
    local.release.set()
    assert local.httpd is not None
    local.httpd.shutdown()
    local.httpd.server_close()


@pytest.fixture
def server() -> Iterator[LocalServer]:
    local = _start()
    yield local
    _stop(local)


@pytest.fixture
def other_server() -> Iterator[LocalServer]:
    local = _start()
    yield local
    _stop(local)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate (and its key) for feeds.example only."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=feeds.example",
            "-addext",
            "subjectAltName=DNS:feeds.example",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def tls_server(certificate: tuple[Path, Path]) -> Iterator[LocalServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    local = _start(context)
    yield local
    _stop(local)


@pytest.fixture
def trusting(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    """A client context that trusts the test certificate and nothing else."""
    return ssl.create_default_context(cafile=str(certificate[0]))


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make_fetcher(clock: FrozenClock, sleeps: list[float]) -> Iterator[Callable[..., SafeFetcher]]:
    made: list[SafeFetcher] = []

    def make(**overrides: Any) -> SafeFetcher:
        options: dict[str, Any] = {
            "allow_private": True,
            "clock": clock,
            "connect_timeout": 0.5,
            "read_timeout": 0.5,
            "backoff_base": 0.01,
            "sleep": sleeps.append,
        }
        options.update(overrides)
        fetcher = SafeFetcher(**options)
        made.append(fetcher)
        return fetcher

    yield make
    for fetcher in made:
        fetcher.close()


def fetch_count(outcome: str) -> float:
    value = REGISTRY.get_sample_value("pledgewatch_fetch_seconds_count", {"outcome": outcome})
    return value or 0.0


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- success and conditional GET -------------------------------------------------------------


def test_ok_returns_body_validators_and_time(
    server: LocalServer, make_fetcher: Callable[..., SafeFetcher], clock: FrozenClock
) -> None:
    server.routes["/feed"] = lambda h: answer(
        h,
        200,
        b"<rss/>",
        {"ETag": '"v1"', "Last-Modified": "Wed, 15 Jan 2025 11:00:00 GMT"},
    )
    before = fetch_count("ok")

    result = make_fetcher().fetch(server.url("/feed"))

    assert result.status_code == 200
    assert not result.not_modified
    assert result.body == b"<rss/>"
    assert result.etag == '"v1"'
    assert result.last_modified == "Wed, 15 Jan 2025 11:00:00 GMT"
    assert result.final_url == server.url("/feed")
    assert result.fetched_at == clock.now()
    assert 0 < result.elapsed_s < 5
    sent = server.seen[0].headers
    assert sent["user-agent"] == "Pledgewatch/0.1 (+https://pledgewatch.dev)"
    assert sent["host"] == f"127.0.0.1:{server.port}"
    assert "if-none-match" not in sent
    assert "if-modified-since" not in sent
    assert fetch_count("ok") == before + 1


def test_etag_gives_not_modified_with_empty_body(
    server: LocalServer, make_fetcher: Callable[..., SafeFetcher]
) -> None:
    def feed(h: BaseHTTPRequestHandler) -> None:
        if h.headers.get("If-None-Match") == '"v1"':
            answer(h, 304, headers={"ETag": '"v1"'})
        else:
            answer(h, 200, b"<rss>one</rss>", {"ETag": '"v1"'})

    server.routes["/feed"] = feed
    fetcher = make_fetcher()

    first = fetcher.fetch(server.url("/feed"))
    second = fetcher.fetch(server.url("/feed"), etag=first.etag)

    assert first.body == b"<rss>one</rss>"
    assert second.status_code == 304
    assert second.not_modified
    assert second.body == b""
    assert second.etag == '"v1"'
    assert server.seen[1].headers["if-none-match"] == '"v1"'


def test_last_modified_gives_not_modified_and_keeps_validators_sent(
    server: LocalServer, make_fetcher: Callable[..., SafeFetcher]
) -> None:
    stamp = "Wed, 15 Jan 2025 11:00:00 GMT"

    def feed(h: BaseHTTPRequestHandler) -> None:
        if h.headers.get("If-Modified-Since") == stamp:
            answer(h, 304)  # no validators repeated, as many servers do
        else:
            answer(h, 200, b"new", {"Last-Modified": stamp})

    server.routes["/feed"] = feed
    before = fetch_count("not_modified")

    result = make_fetcher().fetch(server.url("/feed"), etag='"old"', last_modified=stamp)

    assert result.not_modified
    assert result.body == b""
    assert result.last_modified == stamp
    assert result.etag == '"old"'
    sent = server.seen[0].headers
    assert sent["if-modified-since"] == stamp
    assert sent["if-none-match"] == '"old"'
    assert fetch_count("not_modified") == before + 1


def test_connection_goes_to_the_vetted_address_with_the_host_name_kept(
    server: LocalServer, make_fetcher: Callable[..., SafeFetcher]
) -> None:
    # feeds.example has no DNS record: the fetch can only succeed by connecting to the address
    # the injected resolver gave (and vetted), never by resolving the name a second time.
    resolved: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        resolved.append(host)
        return ["127.0.0.1"]

    server.routes["/feed"] = lambda h: answer(h, 200, b"ok")

    result = make_fetcher(resolve=resolve).fetch(f"http://feeds.example:{server.port}/feed")

    assert result.body == b"ok"
    assert result.final_url == f"http://feeds.example:{server.port}/feed"
    assert server.seen[0].headers["host"] == f"feeds.example:{server.port}"
    assert resolved == ["feeds.example"]


def test_https_checks_the_certificate_against_the_host_name_not_the_address(
    tls_server: LocalServer,
    make_fetcher: Callable[..., SafeFetcher],
    trusting: ssl.SSLContext,
) -> None:
    tls_server.routes["/feed"] = lambda h: answer(h, 200, b"secure")
    fetcher = make_fetcher(
        resolve=fixed_dns({"feeds.example": ["127.0.0.1"]}), ssl_context=trusting
    )

    result = fetcher.fetch(f"https://feeds.example:{tls_server.port}/feed")

    assert result.body == b"secure"
    assert result.final_url == f"https://feeds.example:{tls_server.port}/feed"
    assert tls_server.seen[0].headers["host"] == f"feeds.example:{tls_server.port}"


def test_https_certificate_of_another_name_is_refused_without_retrying(
    tls_server: LocalServer,
    make_fetcher: Callable[..., SafeFetcher],
    trusting: ssl.SSLContext,
    sleeps: list[float],
) -> None:
    tls_server.routes["/feed"] = lambda h: answer(h, 200, b"secure")
    fetcher = make_fetcher(
        resolve=fixed_dns({"other.example": ["127.0.0.1"]}), ssl_context=trusting
    )

    with pytest.raises(FetchError, match=r"TLS certificate of .* is not valid") as caught:
        fetcher.fetch(f"https://other.example:{tls_server.port}/feed")

    assert "other.example" in str(caught.value)
    assert tls_server.seen == []
    assert sleeps == []


# --- redirects --------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_redirect_chain_is_followed(
    server: LocalServer, make_fetcher: Callable[..., SafeFetcher], code: int
) -> None:
    server.routes["/a"] = lambda h: answer(h, code, headers={"Location": "/b"})  # relative
    server.routes["/b"] = lambda h: answer(h, code, headers={"Location": server.url("/c")})
    server.routes["/c"] = lambda h: answer(h, 200, b"final", {"ETag": '"c"'})

    result = make_fetcher().fetch(server.url("/a"), etag='"x"')

    assert result.body == b"final"
    assert result.final_url == server.url("/c")
    assert result.etag == '"c"'
    assert [seen.path for seen in server.seen] == ["/a", "/b", "/c"]
    assert all(seen.headers["if-none-match"] == '"x"' for seen in server.seen)


def test_exactly_max_redirects_are_followed(
    server: LocalServer, make_fetcher: Callable[..., SafeFetcher]
) -> None:
    def redirect_to(location: str) -> Route:
        return lambda h: answer(h, 302, headers={"Location": location})

    for hop in range(5):
        server.routes[f"/{hop}"] = redirect_to(f"/{hop + 1}")
    server.routes["/5"] = lambda h: answer(h, 200, b"after five")

    result = make_fetcher(max_redirects=5).fetch(server.url("/0"))

    assert result.body == b"after five"
    assert len(server.seen) == 6


def test_redirect_loop_stops_after_max_redirects(
    server: LocalServer, make_fetcher: Callable[..., SafeFetcher]
) -> None:
    server.routes["/loop"] = lambda h: answer(h, 302, headers={"Location": "/loop"})
    before = fetch_count("too_many_redirects")

    with pytest.raises(FetchError, match="redirected more than 5 times") as caught:
        make_fetcher(max_redirects=5).fetch(server.url("/loop"))

    assert caught.value.outcome == "too_many_redirects"
    assert server.hits("/loop") == 6  # the first request and five redirects, no more
    assert fetch_count("too_many_redirects") == before + 1


def test_redirect_without_location_is_an_error(
    server: LocalServer, make_fetcher: Callable[..., SafeFetcher]
) -> None:
    server.routes["/moved"] = lambda h: answer(h, 301)

    with pytest.raises(FetchError, match="answered 301 without a Location") as caught:
        make_fetcher().fetch(server.url("/moved"))

    assert caught.value.status_code == 301


def test_other_3xx_answers_are_errors(
    server: LocalServer, make_fetcher: Callable[..., SafeFetcher]
) -> None:
    server.routes["/choices"] = lambda h: answer(h, 300, b"pick one", {"Location": "/a"})

    with pytest.raises(FetchError, match="answered 300 Multiple Choices") as caught:
        make_fetcher().fetch(server.url("/choices"))

    assert caught.value.status_code == 300
    assert server.hits("/a") == 0


# --- the guard --------------------------------------------------------------------------------


def test_loopback_is_refused_without_connecting(
    server: LocalServer, make_fetcher: Callable[..., SafeFetcher], sleeps: list[float]
) -> None:
    server.routes["/feed"] = lambda h: answer(h, 200, b"secret")
    before = fetch_count("refused")

    with pytest.raises(FetchError, match="loopback address") as caught:
        make_fetcher(allow_private=False).fetch(server.url("/feed"))

    assert "private source hosts are not allowed" in str(caught.value)
    assert caught.value.outcome == "refused"
    assert server.seen == []
    assert sleeps == []  # a refusal is final, never retried
    assert fetch_count("refused") == before + 1


def test_localhost_name_is_refused_after_dns(
    server: LocalServer, make_fetcher: Callable[..., SafeFetcher]
) -> None:
    server.routes["/feed"] = lambda h: answer(h, 200, b"secret")

    with pytest.raises(FetchError, match="loopback address"):
        make_fetcher(allow_private=False).fetch(f"http://localhost:{server.port}/feed")

    assert server.seen == []


def test_exempt_host_port_is_fetched_even_when_private_is_refused(
    server: LocalServer, make_fetcher: Callable[..., SafeFetcher]
) -> None:
    server.routes["/demo/feed.xml"] = lambda h: answer(h, 200, b"demo")
    exempt = frozenset({f"127.0.0.1:{server.port}"})

    result = make_fetcher(allow_private=False, exempt_hosts=exempt).fetch(
        server.url("/demo/feed.xml")
    )

    assert result.body == b"demo"


def test_exemption_is_for_that_port_only(
    server: LocalServer, make_fetcher: Callable[..., SafeFetcher]
) -> None:
    exempt = frozenset({f"127.0.0.1:{server.port + 1}"})

    with pytest.raises(FetchError, match="loopback address"):
        make_fetcher(allow_private=False, exempt_hosts=exempt).fetch(server.url("/feed"))

    assert server.seen == []


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1:{other}/internal",
        "http://localhost:{other}/internal",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/admin",
        "http://[::1]:{other}/internal",
    ],
)
def test_redirect_to_a_private_address_is_refused(
    server: LocalServer,
    other_server: LocalServer,
    make_fetcher: Callable[..., SafeFetcher],
    target: str,
) -> None:
    # The first server stands for a public host (exempt); it redirects into the private network.
    location = target.format(other=other_server.port)
    server.routes["/feed"] = lambda h: answer(h, 302, headers={"Location": location})
    other_server.routes["/internal"] = lambda h: answer(h, 200, b"secret")
    fetcher = make_fetcher(
        allow_private=False, exempt_hosts=frozenset({f"127.0.0.1:{server.port}"})
    )

    with pytest.raises(FetchError, match="is refused") as caught:
        fetcher.fetch(server.url("/feed"))

    assert caught.value.outcome == "refused"
    assert server.hits("/feed") == 1
    assert other_server.seen == []


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "ftp://example.com/feed.xml", "gopher://example.com/", "data:,hello"],
)
def test_non_http_schemes_are_refused(make_fetcher: Callable[..., SafeFetcher], url: str) -> None:
    with pytest.raises(FetchError, match="only http and https URLs can be fetched"):
        make_fetcher().fetch(url)
    with pytest.raises(FetchError, match="only http and https URLs can be fetched"):
        check_public_url(url, allow_private=True)


def test_redirect_to_a_file_url_is_refused(
    server: LocalServer, make_fetcher: Callable[..., SafeFetcher]
) -> None:
    server.routes["/feed"] = lambda h: answer(h, 301, headers={"Location": "file:///etc/passwd"})

    with pytest.raises(FetchError, match="only http and https"):
        make_fetcher().fetch(server.url("/feed"))


# --- retries, timeouts, errors ----------------------------------------------------------------


def test_server_errors_are_retried_with_growing_jittered_backoff(
    server: LocalServer, make_fetcher: Callable[..., SafeFetcher], sleeps: list[float]
) -> None:
    def flaky(h: BaseHTTPRequestHandler) -> None:
        if server.hits("/feed") <= 2:
            answer(h, 500, b"oops")
        else:
            answer(h, 200, b"finally")

    server.routes["/feed"] = flaky

    result = make_fetcher(retries=3, backoff_base=0.01).fetch(server.url("/feed"))

    assert result.body == b"finally"
    assert server.hits("/feed") == 3
    assert len(sleeps) == 2
    assert 0 <= sleeps[0] <= 0.01
    assert 0 <= sleeps[1] <= 0.02


def test_persistent_server_error_gives_up_after_all_attempts(
    server: LocalServer, make_fetcher: Callable[..., SafeFetcher], sleeps: list[float]
) -> None:
    server.routes["/feed"] = lambda h: answer(h, 503, b"down")
    before = fetch_count("http_error")

    with pytest.raises(FetchError) as caught:
        make_fetcher(retries=2).fetch(server.url("/feed"))

    assert str(caught.value) == (
        f"{server.url('/feed')} answered 503 Service Unavailable (gave up after 3 attempts)"
    )
    assert caught.value.status_code == 503
    assert caught.value.outcome == "http_error"
    assert server.hits("/feed") == 3
    assert len(sleeps) == 2
    assert fetch_count("http_error") == before + 1


@pytest.mark.parametrize(
    ("code", "reason"),
    [(400, "Bad Request"), (404, "Not Found"), (410, "Gone"), (429, "Too Many Requests")],
)
def test_client_errors_are_not_retried(
    server: LocalServer,
    make_fetcher: Callable[..., SafeFetcher],
    sleeps: list[float],
    code: int,
    reason: str,
) -> None:
    server.routes["/feed"] = lambda h: answer(h, code, b"no")

    with pytest.raises(FetchError) as caught:
        make_fetcher(retries=3).fetch(server.url("/feed"))

    assert str(caught.value) == f"{server.url('/feed')} answered {code} {reason}"
    assert caught.value.status_code == code
    assert server.hits("/feed") == 1
    assert sleeps == []


def test_slow_server_times_out_and_is_retried(
    server: LocalServer, make_fetcher: Callable[..., SafeFetcher], sleeps: list[float]
) -> None:
    def slow(h: BaseHTTPRequestHandler) -> None:
        server.release.wait(3)  # longer than the read timeout; ends at teardown
        answer(h, 200, b"too late")

    server.routes["/slow"] = slow
    before = fetch_count("timeout")
    started = time.monotonic()

    with pytest.raises(FetchError, match="timed out") as caught:
        make_fetcher(read_timeout=0.3, retries=1).fetch(server.url("/slow"))

    assert "gave up after 2 attempts" in str(caught.value)
    assert caught.value.outcome == "timeout"
    assert time.monotonic() - started < 2.5
    assert server.hits("/slow") == 2
    assert len(sleeps) == 1
    assert fetch_count("timeout") == before + 1


def test_trickling_body_is_cut_by_the_total_timeout(
    server: LocalServer, make_fetcher: Callable[..., SafeFetcher]
) -> None:
    def trickle(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.end_headers()
        h.wfile.flush()
        while not server.release.wait(0.05):
            h.wfile.write(b"x")
            h.wfile.flush()

    server.routes["/trickle"] = trickle
    started = time.monotonic()

    with pytest.raises(FetchError, match=r"took longer than 0\.3 s in all") as caught:
        make_fetcher(read_timeout=0.5, total_timeout=0.3).fetch(server.url("/trickle"))

    assert caught.value.outcome == "timeout"
    assert time.monotonic() - started < 2


def test_refused_connection_is_retried_then_reported(
    make_fetcher: Callable[..., SafeFetcher], sleeps: list[float]
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/feed"

    with pytest.raises(FetchError, match="could not connect to") as caught:
        make_fetcher(retries=2).fetch(url)

    assert "gave up after 3 attempts" in str(caught.value)
    assert caught.value.outcome == "network_error"
    assert len(sleeps) == 2


# --- size cap ---------------------------------------------------------------------------------


def test_declared_huge_body_is_refused_before_reading(
    server: LocalServer, make_fetcher: Callable[..., SafeFetcher], sleeps: list[float]
) -> None:
    def huge(h: BaseHTTPRequestHandler) -> None:
        answer(h, 200, b"x" * 1024, {"Content-Length": str(10 * 1024 * 1024)})

    server.routes["/huge"] = huge
    before = fetch_count("too_large")

    with pytest.raises(FetchError) as caught:
        make_fetcher(max_bytes=100 * 1024).fetch(server.url("/huge"))

    assert str(caught.value) == (
        f"the answer of {server.url('/huge')} is 10.0 MiB, over the 100.0 KiB limit"
    )
    assert caught.value.outcome == "too_large"
    assert sleeps == []
    assert fetch_count("too_large") == before + 1


def test_undeclared_huge_body_is_cut_while_streaming(
    server: LocalServer, make_fetcher: Callable[..., SafeFetcher]
) -> None:
    def endless(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)  # no Content-Length: the body ends when the connection does
        h.end_headers()
        for _ in range(64):  # 4 MiB at most
            h.wfile.write(b"x" * 65536)

    server.routes["/endless"] = endless

    with pytest.raises(FetchError, match=r"is over the 100\.0 KiB limit \(stopped reading after"):
        make_fetcher(max_bytes=100 * 1024).fetch(server.url("/endless"))


def test_compressed_body_is_capped_after_decompression(
    server: LocalServer, make_fetcher: Callable[..., SafeFetcher]
) -> None:
    bomb = gzip.compress(b"\0" * (4 * 1024 * 1024))
    assert len(bomb) < 100 * 1024
    server.routes["/bomb"] = lambda h: answer(h, 200, bomb, {"Content-Encoding": "gzip"})

    with pytest.raises(FetchError, match=r"over the 100\.0 KiB limit") as caught:
        make_fetcher(max_bytes=100 * 1024).fetch(server.url("/bomb"))

    assert caught.value.outcome == "too_large"


# A real bomb: 50 MB of zeros, a few tens of KiB on the wire.
BOMB_BYTES = 50 * 1000 * 1000
FIVE_MIB = 5 * 1024 * 1024


def _zlib(level_wbits: int) -> Callable[[bytes], bytes]:
    def compress(data: bytes) -> bytes:
        packer = zlib.compressobj(9, zlib.DEFLATED, level_wbits)
        return packer.compress(data) + packer.flush()

    return compress


def _encoders() -> dict[str, Callable[[bytes], bytes]]:
    encoders: dict[str, Callable[[bytes], bytes]] = {
        "gzip": gzip.compress,
        "deflate": _zlib(zlib.MAX_WBITS),
        "raw-deflate": _zlib(-zlib.MAX_WBITS),  # sent as "deflate", as many servers do
    }
    # Optional, as in httpx: tested when installed (importlib: they may have no type stubs).
    with contextlib.suppress(ImportError):
        brotli: Any = importlib.import_module("brotli")
        encoders["br"] = brotli.compress
    with contextlib.suppress(ImportError):
        zstandard: Any = importlib.import_module("zstandard")
        encoders["zstd"] = zstandard.ZstdCompressor().compress
    return encoders


ENCODERS = _encoders()


@pytest.mark.parametrize("coding", sorted(ENCODERS))
def test_a_real_bomb_is_cut_at_the_cap_having_decoded_little_more(
    server: LocalServer, make_fetcher: Callable[..., SafeFetcher], coding: str
) -> None:
    bomb = ENCODERS[coding](b"\0" * BOMB_BYTES)
    assert len(bomb) < 100 * 1024
    header = "deflate" if coding == "raw-deflate" else coding
    server.routes["/bomb"] = lambda h: answer(h, 200, bomb, {"Content-Encoding": header})
    fetcher = make_fetcher()  # the default 5 MiB cap

    tracemalloc.start()
    try:
        with pytest.raises(FetchError) as caught:
            fetcher.fetch(server.url("/bomb"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert caught.value.outcome == "too_large", caught.value
    # Memory holds the capped body, not the 50 MB; and decoding went a step past the cap at
    # most (one brotli block more), never through the whole bomb.
    assert peak < 3 * FIVE_MIB, f"{peak / 1024 / 1024:.1f} MiB allocated at the peak"
    assert caught.value.bytes_read is not None
    assert FIVE_MIB < caught.value.bytes_read <= FIVE_MIB + 2 * STEP


def test_stacked_encodings_are_each_decoded_a_step_at_a_time(
    server: LocalServer, make_fetcher: Callable[..., SafeFetcher]
) -> None:
    # gzip of gzip: the outer layer is small, the inner one a bomb of its own.
    bomb = gzip.compress(gzip.compress(b"\0" * BOMB_BYTES))
    server.routes["/bomb"] = lambda h: answer(h, 200, bomb, {"Content-Encoding": "gzip, gzip"})

    with pytest.raises(FetchError) as caught:
        make_fetcher().fetch(server.url("/bomb"))

    assert caught.value.outcome == "too_large"
    assert caught.value.bytes_read is not None
    assert FIVE_MIB < caught.value.bytes_read <= FIVE_MIB + STEP


@pytest.mark.parametrize("coding", sorted(ENCODERS))
def test_encoded_bodies_under_the_cap_are_decoded_whole(
    server: LocalServer, make_fetcher: Callable[..., SafeFetcher], coding: str
) -> None:
    body = b"".join(b"<item>%d</item>" % n for n in range(100_000))  # 1.4 MiB, many pieces
    header = "deflate" if coding == "raw-deflate" else coding
    encoded = ENCODERS[coding](body)
    server.routes["/feed"] = lambda h: answer(h, 200, encoded, {"Content-Encoding": header})

    assert make_fetcher().fetch(server.url("/feed")).body == body


def test_only_decodable_encodings_are_asked_for_and_others_are_refused(
    server: LocalServer, make_fetcher: Callable[..., SafeFetcher]
) -> None:
    server.routes["/packed"] = lambda h: answer(
        h, 200, b"\x1f\x9d", {"Content-Encoding": "compress"}
    )

    with pytest.raises(FetchError, match=r"encoded as 'compress', which was not asked for"):
        make_fetcher(retries=0).fetch(server.url("/packed"))

    asked = server.seen[-1].headers["accept-encoding"].split(", ")
    assert asked[:2] == ["gzip", "deflate"]
    assert set(asked) <= {"gzip", "deflate", "br", "zstd"}


def test_a_corrupt_gzip_body_is_a_clear_error(
    server: LocalServer, make_fetcher: Callable[..., SafeFetcher]
) -> None:
    server.routes["/broken"] = lambda h: answer(
        h, 200, b"\x1f\x8b\x08\x00garbage-not-gzip", {"Content-Encoding": "gzip"}
    )

    with pytest.raises(FetchError, match=r"could not be decoded") as caught:
        make_fetcher(retries=0).fetch(server.url("/broken"))

    assert caught.value.outcome == "network_error"


def test_body_at_the_limit_is_kept(
    server: LocalServer, make_fetcher: Callable[..., SafeFetcher]
) -> None:
    server.routes["/exact"] = lambda h: answer(h, 200, b"y" * 4096)

    result = make_fetcher(max_bytes=4096).fetch(server.url("/exact"))

    assert result.body == b"y" * 4096


# --- per-host limit ---------------------------------------------------------------------------


def test_concurrent_fetches_of_one_host_are_bounded(
    server: LocalServer, make_fetcher: Callable[..., SafeFetcher]
) -> None:
    active = 0
    most = 0
    counting = threading.Lock()

    def busy(h: BaseHTTPRequestHandler) -> None:
        nonlocal active, most
        with counting:
            active += 1
            most = max(most, active)
        server.release.wait(0.15)
        with counting:
            active -= 1
        answer(h, 200, b"ok")

    server.routes["/busy"] = busy
    fetcher = make_fetcher(per_host_limit=2, read_timeout=2)

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda _: fetcher.fetch(server.url("/busy")), range(6)))

    assert [result.body for result in results] == [b"ok"] * 6
    assert most == 2
