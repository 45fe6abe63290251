"""What makes two evidence items the same item: the normalised URL, or the content hash."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from datetime import datetime
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_TRACKING_PARAMS = re.compile(r"^(utm_[a-z]+|fbclid|gclid|mc_cid|mc_eid)$", re.IGNORECASE)
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SPACE = re.compile(r"\s+")


def normalise_url(url: str) -> str:
    """Scheme and host lower-cased, default port, fragment and tracking parameters dropped,
    query parameters sorted, trailing slash of the path removed."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower().rstrip(".")
    if ":" in host:  # an IPv6 literal: keep its brackets, or the port would blur into it
        host = f"[{host}]"
    port = parts.port
    netloc = host if port is None or _DEFAULT_PORTS.get(scheme) == port else f"{host}:{port}"
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    path = parts.path or "/"
    if len(path) > 1:
        path = path.rstrip("/") or "/"
    query = urlencode(
        sorted(
            (k, v)
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
            if not _TRACKING_PARAMS.match(k)
        )
    )
    return urlunsplit((scheme, netloc, path, query, ""))


def url_key(url: str | None) -> str | None:
    if url is None:
        return None
    return hashlib.sha256(normalise_url(url).encode("utf-8")).hexdigest()


def _canonical_text(text: str) -> str:
    return _SPACE.sub(" ", unicodedata.normalize("NFC", text)).strip().casefold()


def content_hash(title: str, summary: str, published_at: datetime) -> str:
    """SHA-256 of what the item says and when: case and spacing do not make a new item."""
    canonical = "\n".join(
        (_canonical_text(title), _canonical_text(summary), published_at.isoformat())
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
