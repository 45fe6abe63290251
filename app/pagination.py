"""Opaque cursors for keyset pagination: every list answers ``{"items", "next_cursor"}``."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from app.errors import InvalidInput

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


def encode_cursor(*key: Any) -> str:
    raw = json.dumps(list(key), separators=(",", ":"), default=str).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None, arity: int) -> list[Any] | None:
    """The sort key a cursor stands for, or a 422 naming ``cursor`` if it is not one of ours."""
    if cursor is None:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        key = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error):
        raise InvalidInput("cursor", "is not a cursor this service gave out") from None
    if not isinstance(key, list) or len(key) != arity:
        raise InvalidInput("cursor", "is not a cursor this service gave out")
    if any(not isinstance(part, (str, int)) or isinstance(part, bool) for part in key):
        raise InvalidInput("cursor", "is not a cursor this service gave out")
    return key


_NOT_OURS = "is not a cursor this service gave out"


def cursor_id(value: Any) -> int:
    """A row id from a decoded cursor; a tampered one is a 422, never a database error."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 2_147_483_647:
        raise InvalidInput("cursor", _NOT_OURS)
    return value


def cursor_time(value: Any) -> datetime:
    """A zone-aware UTC instant from a decoded cursor, or a 422 naming ``cursor``."""
    try:
        parsed = datetime.fromisoformat(str(value))
        if parsed.tzinfo is None:
            raise ValueError("naive")
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidInput("cursor", _NOT_OURS) from None


def etag_matches(etag: str, if_none_match: str | None) -> bool:
    """True when ``If-None-Match`` names ``etag`` (weakly) or is ``*``."""
    if if_none_match is None:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags
