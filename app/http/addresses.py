"""Which client a request comes from, for per-address budgets.

The peer of the connection, unless it is one of the proxies listed in
``PLEDGEWATCH_TRUSTED_PROXIES``: then the address those proxies recorded in
``X-Forwarded-For``, read from the right (the hop our proxy appended) past any other
trusted proxy. A client can write anything at the left of that header, so nothing left
of the first untrusted hop is believed. IPv6 clients are counted by their /64: one
host is usually given a whole /64, and could otherwise take a fresh address per request.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv6Address, ip_address, ip_network

from starlette.types import Scope

from app.http.values import Network


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
    """Finds a request's client address, believing ``X-Forwarded-For`` only from ``trusted``."""

    def __init__(self, trusted: Iterable[Network] = ()) -> None:
        self.trusted = tuple(trusted)

    def of(self, scope: Scope) -> str:
        client = scope.get("client")
        peer = str(client[0]) if client else "unknown"
        if self.trusted and self._is_trusted(peer):
            peer = self._forwarded_for(scope, peer)
        return group(peer)

    def _is_trusted(self, address: str) -> bool:
        try:
            parsed = ip_address(address)
        except ValueError:
            return False
        return any(parsed in network for network in self.trusted)

    def _forwarded_for(self, scope: Scope, peer: str) -> str:
        hops = [
            hop.strip()
            for name, value in scope["headers"]
            if name == b"x-forwarded-for"
            for hop in value.decode("latin-1").split(",")
        ]
        client = peer
        for hop in reversed(hops):
            try:
                ip_address(hop)
            except ValueError:
                # A garbled chain: the last hop we could read (a trusted proxy) stands for it.
                break
            client = hop
            if not self._is_trusted(hop):
                break
        return client
