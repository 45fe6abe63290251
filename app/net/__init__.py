"""The one safe outbound HTTP client, below the domains: it imports none of them.

Collectors fetch feeds and webhooks post deliveries through it, each app (or scheduler
process) sharing one ``SafeFetcher`` built in its lifespan. What it guards and where:

- ``guard.py``: which addresses a URL may reach, judged after DNS (no private, loopback or
  link-local address unless allowed or exempt), on every redirect too;
- ``client.py``: ``SafeFetcher``, connecting to the vetted addresses only, with timeouts,
  retries and backoff on 5xx and network errors, conditional GET, a User-Agent, a size cap;
- ``decode.py``: Content-Encoding decoded a step at a time, so the cap holds on decoded bytes;
- ``errors.py``: ``FetchError``, one sentence fit for a run's or a delivery's record.
"""

from app.net.client import FetchResult, PostResult, SafeFetcher
from app.net.errors import FetchError
from app.net.guard import Resolver, check_public_url, system_resolver

__all__ = [
    "FetchError",
    "FetchResult",
    "PostResult",
    "Resolver",
    "SafeFetcher",
    "check_public_url",
    "system_resolver",
]
