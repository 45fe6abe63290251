"""The edge's settings as values: rate-limit budgets, proxy networks and origins.

Parsed here, with nothing of the web stack imported, because ``Settings`` validates them
whenever it is made (every ``pledgewatch`` command) and a bad value must stop the process
at start-up naming the setting.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Network, IPv6Network, ip_network

from limits import RateLimitItem, parse_many

Network = IPv4Network | IPv6Network
_ORIGIN = re.compile(r"^https?://[^/\s?#@]+$")


def parse_budget(text: str) -> RateLimitItem:
    """One rate limit in the ``limits`` notation (``"600/minute"``); ``ValueError`` if not."""
    try:
        items = parse_many(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a rate limit such as '600/minute'") from None
    if len(items) != 1:
        raise ValueError(f"{text!r}: give one rate limit per budget, such as '600/minute'")
    return items[0]


def parse_networks(text: str) -> tuple[Network, ...]:
    """Comma-separated addresses or CIDR blocks; ``ValueError`` names a bad one."""
    networks = []
    for part in (piece.strip() for piece in text.split(",")):
        if not part:
            continue
        try:
            networks.append(ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{part!r} is not an IP address or CIDR block") from None
    return tuple(networks)


def parse_origins(text: str) -> frozenset[str]:
    """Comma-separated origins (``https://host[:port]``), lower-cased; ``ValueError`` if not."""
    origins = set()
    for part in (piece.strip().rstrip("/").lower() for piece in text.split(",")):
        if not part:
            continue
        if not _ORIGIN.match(part):
            raise ValueError(
                f"{part!r} is not an origin such as https://dashboard.example.org "
                "(a scheme and a host, no path; '*' is not allowed for writes)"
            )
        origins.add(part)
    return frozenset(origins)
