"""Which client a request comes from, for per-address budgets.

The peer of the connection, unless it is one of the proxies listed in
``PLEDGEWATCH_TRUSTED_PROXIES``: then the address those proxies recorded in
``X-Forwarded-For``, read from the right (the hop our proxy appended) past any other
trusted proxy. A client can write anything at the left of that header, so nothing left
of the first untrusted hop is believed. IPv6 clients are counted by their /64: one
host is usually given a whole /64, and could otherwise take a fresh address per request.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from ipaddress import IPv6Address, ip_address, ip_network

from starlette.types import Scope

from app.http.values import Network

_INVALID, _VALID, _TRUSTED = object(), object(), object()


def group(address: str) -> str:
    """The budget's name for ``address``: IPv4 as is, IPv6 by its /64 (or the IPv4 it maps)."""
    if ":" not in address:
        return address
    try:
        parsed = ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


class ClientAddresses:
    """Finds a request's client address, believing ``X-Forwarded-For`` only from ``trusted``.

    Whether an address is one, and a trusted one, is remembered (for the most recent
    addresses): parsing it costs microseconds, and every request behind a proxy asks it
    two or three times.
    """

    def __init__(self, trusted: Iterable[Network] = ()) -> None:
        self.trusted = tuple(trusted)
        self._kind = functools.lru_cache(maxsize=65536)(self._kind_of)

    def of(self, scope: Scope) -> str:
        client = scope.get("client")
        peer = str(client[0]) if client else "unknown"
        if self.trusted and self._is_trusted(peer):
            peer = self._forwarded_for(scope, peer)
        return group(peer)

    def _is_trusted(self, address: str) -> bool:
        return self._kind(address) is _TRUSTED

    def _kind_of(self, address: str) -> object:
        try:
            parsed = ip_address(address)
        except ValueError:
            return _INVALID
        return _TRUSTED if any(parsed in network for network in self.trusted) else _VALID

    def _forwarded_for(self, scope: Scope, peer: str) -> str:
        hops = [
            hop.strip()
            for name, value in scope["headers"]
            if name == b"x-forwarded-for"
            for hop in value.decode("latin-1").split(",")
        ]
        client = peer
        for hop in reversed(hops):
            kind = self._kind(hop)
            if kind is _INVALID:
                # A garbled chain: the last hop we could read (a trusted proxy) stands for it.
                break
            client = hop
            if kind is _VALID:
                break
        return client
