"""The one canonical JSON form that every hash in the ledger is taken over.

Writers and the verifier must produce the same bytes for the same row, on
SQLite and PostgreSQL alike, so every value is reduced to plain JSON first:
datetimes to RFC 3339 in UTC with microseconds, dates to ISO, keys sorted,
no whitespace, and non-ASCII escaped (so any string, even one with lone
surrogates, has exactly one encoding).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any

# The hash before the first ledger entry.
GENESIS = "0" * 64


def plain(value: Any) -> Any:
    """``value`` reduced to JSON types, the same way whichever database it was read from."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


def _plain_default(value: Any) -> Any:
    # What json cannot encode itself, reduced as plain() does; everything else it encodes
    # natively (dicts, lists, tuples), without a walk over the value in Python first.
    if isinstance(value, datetime | date | Mapping):
        return plain(value)
    raise TypeError(f"{type(value).__name__} is not part of a ledger payload")


_ENCODER = json.JSONEncoder(
    sort_keys=True,
    separators=(",", ":"),
    ensure_ascii=True,
    allow_nan=False,
    default=_plain_default,
)


def canonical_json(value: Any) -> bytes:
    """The canonical bytes of ``value``: the JSON of :func:`plain` of it."""
    return _ENCODER.encode(value).encode("ascii")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def payload_hash(payload: Mapping[str, Any] | None) -> str:
    """The hash of a row as written (``None`` for a row that was deleted)."""
    return sha256_hex(canonical_json(payload))


def entry_hash(
    prev_hash: str, *, seq: int, at: datetime, kind: str, subject: str, payload_digest: str
) -> str:
    """sha256(prev_hash + canonical JSON of the entry): each entry seals the one before."""
    entry = {
        "seq": seq,
        "at": at,
        "kind": kind,
        "subject": subject,
        "payload_hash": payload_digest,
    }
    return sha256_hex(prev_hash.encode("ascii") + canonical_json(entry))
