"""Opaque cursors for keyset pagination: every list answers ``{"items", "next_cursor"}``."""

from __future__ import annotations

import base64
import binascii
import json
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
