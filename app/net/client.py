"""The one safe outbound HTTP client, shared by collectors (GET) and webhooks (POST).

Every hop is vetted after DNS by the guard (``app/net/guard.py``) and the connection is
made to a vetted address, with the host name kept for Host and TLS. Fetches follow
redirects here, one hop at a time, each target vetted the same way; they send conditional
headers, retry network errors, timeouts and 5xx answers with jittered backoff, and cap
the body by its decoded size (``app/net/decode.py``). Webhook deliveries
(``SafeFetcher.post``) go through the same guard, follow no redirects and retry nothing:
their caller records each attempt and retries later.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import httpx

from app.clock import Clock
from app.metrics import FETCH_SECONDS
from app.net.decode import ACCEPT_ENCODING, DecodeError, decoded
from app.net.errors import FetchError, RetryableError
from app.net.guard import Resolver, Target, system_resolver, vet

log = logging.getLogger("pledgewatch.fetch")

DEFAULT_USER_AGENT = "Pledgewatch/0.1 (+https://pledgewatch.dev)"
ACCEPT = (
    "application/rss+xml, application/atom+xml, application/xml;q=0.9, text/xml;q=0.9, "
    "application/json;q=0.9, text/csv;q=0.9, */*;q=0.5"
)
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
# Backoff never waits longer than this between two attempts, whatever the attempt number.
MAX_BACKOFF_SECONDS = 30.0
_E = TypeVar("_E", bound=BaseException)


@dataclass(frozen=True)
class FetchResult:
    """The final answer of a fetch, after redirects and retries."""

    status_code: int
    not_modified: bool
    body: bytes  # b"" when not modified
    etag: str | None
    last_modified: str | None
    final_url: str
    fetched_at: datetime
    elapsed_s: float


@dataclass(frozen=True)
class PostResult:
    """The answer to one POST: its status (a 3xx is returned, never followed)."""

    status_code: int
    reason: str
    elapsed_s: float


class SafeFetcher:
    """A shared, thread-safe HTTP client for collectors and webhooks (jobs run in threads).

    ``retries`` is the number of attempts after the first one. ``total_timeout`` bounds a whole
    fetch (redirects, retries and a slowly trickling body included), since ``read_timeout`` only
    bounds the wait for each chunk. ``resolve`` and ``ssl_context`` (the trusted certificates;
    None is httpx's default, certifi) exist for tests and unusual deployments.
    """

    def __init__(
        self,
        *,
        allow_private: bool,
        clock: Clock,
        user_agent: str = DEFAULT_USER_AGENT,
        connect_timeout: float = 5,
        read_timeout: float = 20,
        max_bytes: int = 5 * 1024 * 1024,
        max_redirects: int = 5,
        retries: int = 3,
        backoff_base: float = 0.5,
        per_host_limit: int = 4,
        exempt_hosts: frozenset[str] = frozenset(),
        sleep: Callable[[float], None] = time.sleep,
        total_timeout: float = 120,
        resolve: Resolver = system_resolver,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._allow_private = allow_private
        self._clock = clock
        self._user_agent = user_agent
        self._max_bytes = max_bytes
        self._max_redirects = max_redirects
        self._retries = retries
        self._backoff_base = backoff_base
        self._per_host_limit = per_host_limit
        self._exempt_hosts = exempt_hosts
        self._sleep = sleep
        self._total_timeout = total_timeout
        self._resolve = resolve
        self._random = random.SystemRandom()
        self._host_slots: dict[str, threading.BoundedSemaphore] = {}
        self._host_slots_lock = threading.Lock()
        self._client = httpx.Client(
            timeout=httpx.Timeout(
                connect=connect_timeout,
                read=read_timeout,
                write=read_timeout,
                pool=connect_timeout,
            ),
            follow_redirects=False,
            verify=ssl_context if ssl_context is not None else True,
            # Proxies from the environment would connect to hosts we never vetted.
            trust_env=False,
            # Connections are made to vetted IP addresses, with the host name given as Host and
            # SNI; a kept-alive connection could be reused for another host name on the same IP
            # with the wrong TLS name, and feeds are fetched minutes apart anyway.
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    def close(self) -> None:
        """Close the underlying connection pool."""
        self._client.close()

    def fetch(
        self, url: str, *, etag: str | None = None, last_modified: str | None = None
    ) -> FetchResult:
        """GET ``url`` with conditional headers; raise FetchError with a clear sentence if it fails.

        A 304 gives ``not_modified=True`` and an empty body, with the validators sent kept when
        the server does not repeat them.
        """
        started = time.monotonic()
        outcome = "error"
        try:
            result = self._fetch(url, etag=etag, last_modified=last_modified, started=started)
            outcome = "not_modified" if result.not_modified else "ok"
            return result
        except FetchError as error:
            outcome = error.outcome
            raise
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, OSError, ValueError) as error:
            # Whatever the network or a URL throws at us fails this fetch, never its caller.
            log.exception("unexpected fetch failure", extra={"url": url})
            outcome = "error"
            raise FetchError(
                f"fetching {url} failed: {type(error).__name__}: {error}", outcome="error"
            ) from error
        finally:
            FETCH_SECONDS.labels(outcome=outcome).observe(time.monotonic() - started)

    def post(
        self, url: str, content: bytes, *, headers: Mapping[str, str], timeout: float
    ) -> PostResult:
        """POST ``content`` to ``url`` once; raise FetchError if no answer comes.

        The target is vetted like a fetch, after DNS, and the connection made to the vetted
        address. Unlike a fetch there are no exempt hosts (they exist for feeds the service
        serves itself, not for requests it sends on a subscriber's behalf), no redirects (a
        3xx is the answer) and no retries. ``timeout`` bounds connecting, sending, and waiting
        for the answer's headers, each; the answer's body is not read.
        """
        started = time.monotonic()
        target = vet(
            url, allow_private=self._allow_private, exempt_hosts=frozenset(), resolve=self._resolve
        )
        shown = str(target.url)
        with self._slot(target.host.lower()):
            try:
                response = self._connect(
                    target,
                    {"User-Agent": self._user_agent, **headers},
                    method="POST",
                    content=content,
                    timeout=httpx.Timeout(timeout),
                )
            except httpx.ConnectTimeout as error:
                raise FetchError(f"connecting to {shown} timed out", outcome="timeout") from error
            except httpx.TimeoutException as error:
                raise FetchError(
                    f"{shown} did not answer within {timeout:g} s", outcome="timeout"
                ) from error
            except httpx.ConnectError as error:
                raise _bad_certificate(error, shown) or FetchError(
                    _could_not_connect(error, shown), outcome="network_error"
                ) from error
            except (httpx.TransportError, httpx.InvalidURL, OSError, ValueError) as error:
                raise FetchError(
                    f"posting to {shown} failed: {str(error) or type(error).__name__}",
                    outcome="network_error",
                ) from error
            try:
                return PostResult(
                    status_code=response.status_code,
                    reason=response.reason_phrase,
                    elapsed_s=time.monotonic() - started,
                )
            finally:
                response.close()

    def _fetch(
        self, url: str, *, etag: str | None, last_modified: str | None, started: float
    ) -> FetchResult:
        # Only the encodings decoded here, a step at a time (app/net/decode.py).
        headers = {
            "User-Agent": self._user_agent,
            "Accept": ACCEPT,
            "Accept-Encoding": ACCEPT_ENCODING,
        }
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        deadline = started + self._total_timeout
        current: str | httpx.URL = url
        for _hop in range(self._max_redirects + 1):
            status, response_headers, body, final = self._get_with_retries(
                current, headers, deadline
            )
            if status in REDIRECT_CODES:
                location = response_headers.get("location")
                if not location:
                    raise FetchError(
                        f"{final} answered {status} without a Location to go to",
                        outcome="http_error",
                        status_code=status,
                    )
                try:
                    current = final.join(location)
                except (httpx.InvalidURL, ValueError) as error:
                    raise FetchError(
                        f"{final} redirected to an invalid URL {location!r}: {error}",
                        outcome="invalid_url",
                        status_code=status,
                    ) from error
                continue
            not_modified = status == 304
            return FetchResult(
                status_code=status,
                not_modified=not_modified,
                body=b"" if not_modified else body,
                etag=response_headers.get("etag") or (etag if not_modified else None),
                last_modified=response_headers.get("last-modified")
                or (last_modified if not_modified else None),
                final_url=str(final),
                fetched_at=self._clock.now(),
                elapsed_s=time.monotonic() - started,
            )
        raise FetchError(
            f"{url} redirected more than {self._max_redirects} times (last to {current})",
            outcome="too_many_redirects",
        )

    def _get_with_retries(
        self, url: str | httpx.URL, headers: dict[str, str], deadline: float
    ) -> tuple[int, httpx.Headers, bytes, httpx.URL]:
        attempts = self._retries + 1
        for attempt in range(attempts):
            if time.monotonic() > deadline:
                raise FetchError(
                    f"fetching {url} took longer than {self._total_timeout:g} s in all",
                    outcome="timeout",
                )
            try:
                return self._get_once(url, headers, deadline)
            except RetryableError as error:
                if attempt + 1 >= attempts:
                    tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
                    raise FetchError(
                        f"{error} (gave up after {tries})",
                        outcome=error.outcome,
                        status_code=error.status_code,
                    ) from error
                # Full jitter: collectors that failed together do not retry together.
                ceiling = min(MAX_BACKOFF_SECONDS, self._backoff_base * 2**attempt)
                delay = self._random.uniform(0, ceiling)
                log.warning(
                    "fetch failed, retrying",
                    extra={"url": str(url), "error": str(error), "retry_in_s": round(delay, 3)},
                )
                self._sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _slot(self, host: str) -> threading.BoundedSemaphore:
        with self._host_slots_lock:
            slot = self._host_slots.get(host)
            if slot is None:
                slot = threading.BoundedSemaphore(self._per_host_limit)
                self._host_slots[host] = slot
            return slot

    def _get_once(
        self, url: str | httpx.URL, headers: dict[str, str], deadline: float
    ) -> tuple[int, httpx.Headers, bytes, httpx.URL]:
        target = vet(
            url,
            allow_private=self._allow_private,
            exempt_hosts=self._exempt_hosts,
            resolve=self._resolve,
        )
        shown = str(target.url)
        with self._slot(target.host.lower()):
            try:
                response = self._connect(target, headers)
            except httpx.TimeoutException as error:
                raise RetryableError(
                    f"connecting to {shown} timed out", outcome="timeout"
                ) from error
            except httpx.TransportError as error:
                # Asking again will not fix a certificate; other connection failures may pass.
                raise _bad_certificate(error, shown) or RetryableError(
                    _could_not_connect(error, shown), outcome="network_error"
                ) from error
            try:
                status = response.status_code
                reason = f"{status} {response.reason_phrase}".strip()
                if status >= 500:
                    raise RetryableError(
                        f"{shown} answered {reason}", outcome="http_error", status_code=status
                    )
                if status >= 400 or (
                    status >= 300 and status != 304 and status not in REDIRECT_CODES
                ):
                    raise FetchError(
                        f"{shown} answered {reason}", outcome="http_error", status_code=status
                    )
                body = self._read_body(response, shown, deadline) if status < 300 else b""
                return status, response.headers, body, target.url
            except httpx.TimeoutException as error:
                raise RetryableError(
                    f"reading the answer of {shown} timed out", outcome="timeout"
                ) from error
            except httpx.TransportError as error:
                raise RetryableError(
                    f"the connection to {shown} failed while reading: "
                    f"{str(error) or type(error).__name__}",
                    outcome="network_error",
                ) from error
            except httpx.DecodingError as error:
                raise FetchError(
                    f"the answer of {shown} could not be decoded: {error}",
                    outcome="network_error",
                ) from error
            finally:
                response.close()

    def _connect(
        self,
        target: Target,
        headers: dict[str, str],
        *,
        method: str = "GET",
        content: bytes | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> httpx.Response:
        """Send the request to the first vetted address that accepts a connection.

        Trying the next address is safe for any method: nothing was sent to the last one.
        """
        last_error: httpx.ConnectError | None = None
        for address in target.addresses:
            request = self._client.build_request(
                method,
                target.url.copy_with(host=address),
                headers={**headers, "Host": target.url.netloc.decode("ascii")},
                content=content,
                extensions={"sni_hostname": target.host},
                timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
            )
            try:
                return self._client.send(request, stream=True, follow_redirects=False)
            except httpx.ConnectError as error:
                # A host may publish an address this machine cannot reach (often IPv6).
                last_error = error
        assert last_error is not None  # there is always at least one address
        raise last_error

    def _read_body(self, response: httpx.Response, shown: str, deadline: float) -> bytes:
        limit = self._max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise FetchError(
                f"the answer of {shown} is {_size(int(declared))}, over the {_size(limit)} limit",
                outcome="too_large",
            )
        chunks: list[bytes] = []
        size = 0
        # Decoded bytes are counted, and decoded a step at a time: a small compressed body
        # cannot inflate past the cap, nor much beyond it in memory before it trips.
        encodings = response.headers.get_list("content-encoding", split_commas=True)
        try:
            for chunk in decoded(response.iter_raw(), encodings):
                size += len(chunk)
                if size > limit:
                    raise FetchError(
                        f"the answer of {shown} is over the {_size(limit)} limit "
                        f"(stopped reading after {_size(size)})",
                        outcome="too_large",
                        bytes_read=size,
                    )
                if time.monotonic() > deadline:
                    raise FetchError(
                        f"reading the answer of {shown} took longer than "
                        f"{self._total_timeout:g} s in all",
                        outcome="timeout",
                    )
                chunks.append(chunk)
        except DecodeError as error:
            raise FetchError(
                f"the answer of {shown} could not be decoded: {error}", outcome="network_error"
            ) from error
        return b"".join(chunks)


def _bad_certificate(error: Exception, shown: str) -> FetchError | None:
    """The failure to report when ``error`` comes from an invalid TLS certificate."""
    invalid = _cause(error, ssl.SSLCertVerificationError)
    if invalid is None:
        return None
    return FetchError(
        f"the TLS certificate of {shown} is not valid: {invalid.verify_message or invalid}",
        outcome="network_error",
    )


def _could_not_connect(error: Exception, shown: str) -> str:
    return f"could not connect to {shown}: {str(error) or type(error).__name__}"


def _cause(error: BaseException, kind: type[_E]) -> _E | None:
    """The first exception of type ``kind`` in ``error``'s chain of causes, if any."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _size(count: int) -> str:
    if count >= 1024 * 1024:
        return f"{count / (1024 * 1024):.1f} MiB"
    if count >= 1024:
        return f"{count / 1024:.1f} KiB"
    return f"{count} bytes"
