"""The guard in front of every outbound request: which addresses a URL may reach.

URLs come from staff (sources) and subscribers (webhooks), so each request is made on
someone else's behalf. A host is resolved here, and every address it resolves to must be
globally routable (unless private hosts are allowed, or the host:port is exempt); IPv6
forms that carry an IPv4 address are judged by that address too. The caller then
connects to the vetted addresses themselves, never to the name again, so a second DNS
answer (rebinding) cannot slip a private address in between the check and the connection.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from app.net.errors import FetchError, RetryableError

# NAT64's well-known prefix carries an IPv4 address in its last 32 bits.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

Resolver = Callable[[str, int], list[str]]
"""Resolves (host, port) to the IP addresses (as strings) a connection may use, in order."""


@dataclass(frozen=True)
class Target:
    """A URL that passed the guard, and the only addresses a connection to it may use."""

    url: httpx.URL
    host: str  # the host name as written (IDNA-encoded), for Host, SNI and the per-host limit
    addresses: list[str]


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses ``socket.getaddrinfo`` gives for ``host``, without duplicates, in order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def _non_global_kind(address: str) -> str | None:
    """What kind of non-public address ``address`` is ("loopback", ...), or None if public."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return "unparsable"
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv6 forms that embed an IPv4 address reach that IPv4 address: judge it first.
        if ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            candidates.append(ip.sixtofour)
        if ip.teredo is not None:
            candidates.extend(ip.teredo)
        if ip in _NAT64:
            candidates.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    candidates.append(ip)
    for candidate in candidates:
        for kind, flagged in (
            ("loopback", candidate.is_loopback),
            ("link-local", candidate.is_link_local),
            ("multicast", candidate.is_multicast),
            ("private", candidate.is_private),
            ("reserved", not candidate.is_global),
        ):
            if flagged:
                return kind
    return None


def _parse(url: str | httpx.URL) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as error:
        raise FetchError(f"{url!r} is not a valid URL: {error}", outcome="invalid_url") from error
    if parsed.scheme not in ("http", "https"):
        raise FetchError(
            f"{str(parsed)!r} is refused: only http and https URLs can be fetched",
            outcome="refused",
        )
    if not parsed.raw_host:
        raise FetchError(f"{str(parsed)!r} has no host", outcome="invalid_url")
    return parsed


def _host_port_key(url: httpx.URL) -> str:
    host = url.raw_host.decode("ascii").lower()
    port = url.port or (443 if url.scheme == "https" else 80)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def vet(
    url: str | httpx.URL,
    *,
    allow_private: bool,
    exempt_hosts: frozenset[str],
    resolve: Resolver,
) -> Target:
    """Check ``url`` and resolve its host; the addresses returned are the only ones to use."""
    parsed = _parse(url)
    host = parsed.raw_host.decode("ascii")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        addresses = resolve(host, port)
    except socket.gaierror as error:
        # A temporary failure of the resolver is worth another try; "no such host" is not.
        error_type = RetryableError if error.errno == socket.EAI_AGAIN else FetchError
        raise error_type(
            f"could not resolve the host {host!r} of {str(parsed)!r}: {error.strerror or error}",
            outcome="network_error",
        ) from error
    except UnicodeError as error:
        # The resolver encodes the name with IDNA, which refuses empty or over-long labels.
        raise FetchError(
            f"{str(parsed)!r} has an invalid host name: {error}", outcome="invalid_url"
        ) from error
    if not addresses:
        raise FetchError(f"the host {host!r} resolved to no address", outcome="network_error")
    exempt = _host_port_key(parsed) in {entry.lower() for entry in exempt_hosts}
    if not (allow_private or exempt):
        # One private answer is enough to refuse: the connection could land on any of them.
        for address in addresses:
            kind = _non_global_kind(address)
            if kind is not None:
                where = f"is {address}" if address == host else f"{host!r} resolves to {address}"
                raise FetchError(
                    f"{str(parsed)!r} is refused: its host {where}, a {kind} address, "
                    "and private source hosts are not allowed",
                    outcome="refused",
                )
    return Target(url=parsed, host=host, addresses=addresses)


def check_public_url(
    url: str,
    *,
    allow_private: bool,
    exempt_hosts: frozenset[str] = frozenset(),
    resolve: Resolver = system_resolver,
) -> None:
    """Raise FetchError unless ``url`` is http(s) and its host resolves to public addresses only.

    ``exempt_hosts`` holds ``host:port`` entries (``[v6addr]:port`` for IPv6 literals) that may
    be private, such as the demo feed the service serves itself. The check resolves DNS, so a
    URL that passes now can fail later; fetches vet again, on every hop.
    """
    vet(url, allow_private=allow_private, exempt_hosts=exempt_hosts, resolve=resolve)
