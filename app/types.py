"""Field types shared by every schema: strings the databases can store, dates that can be true."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, Strict, StringConstraints

# PostgreSQL text cannot hold NUL, and neither database can hold a lone UTF-16
# surrogate; both are refused up front so that SQLite and PostgreSQL agree.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _storable(value: str) -> str:
    match = _UNSTORABLE.search(value)
    if match is not None:
        code = ord(match.group())
        what = "NUL character" if code == 0 else f"unpaired surrogate U+{code:04X}"
        raise ValueError(f"contains a {what} at position {match.start()}, which cannot be stored")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only whitespace")
    return value


StorableStr = Annotated[str, AfterValidator(_storable)]
"""Any string at all, kept byte for byte, except what no database can store."""

RequiredText = Annotated[StorableStr, AfterValidator(_not_blank)]

SLUG_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,98}[a-z0-9])?$"
Slug = Annotated[str, StringConstraints(pattern=SLUG_PATTERN)]

PARTY_PATTERN = r"^[A-Z]{2}$"
PartyCode = Annotated[str, StringConstraints(pattern=PARTY_PATTERN)]
TOPIC_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,39}$"
Topic = Annotated[str, StringConstraints(pattern=TOPIC_PATTERN)]

EARLIEST = date(1900, 1, 1)


def _no_numbers(value: Any) -> Any:
    # Pydantic would read a number as a Unix timestamp; the schema says a string.
    if isinstance(value, (int, float)):
        raise ValueError("must be a string in ISO 8601 form, not a number")
    return value


def _date_only_as_utc_midnight(value: Any) -> Any:
    # Jobs often know only the day something happened; a bare date means its start, UTC.
    if isinstance(value, str) and len(value) == 10 and value[4:5] == "-":
        try:
            return datetime.combine(date.fromisoformat(value), time(0), tzinfo=UTC)
        except ValueError:
            return value
    if isinstance(value, date) and not isinstance(value, datetime):
        return datetime.combine(value, time(0), tzinfo=UTC)
    return value


def _aware_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        value = value.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+14:00 has no UTC date
        raise ValueError("is out of range once converted to UTC") from None
    if value.date() < EARLIEST:
        raise ValueError(f"must not be before {EARLIEST.isoformat()}")
    return value


def _plausible_date(value: date) -> date:
    if value < EARLIEST:
        raise ValueError(f"must not be before {EARLIEST.isoformat()}")
    return value


UTCTimestamp = Annotated[
    datetime,
    BeforeValidator(_date_only_as_utc_midnight),
    BeforeValidator(_no_numbers),
    AfterValidator(_aware_utc),
]
"""An RFC 3339 datetime (or a bare date, meaning 00:00 UTC); naive values are UTC."""

PlausibleDate = Annotated[date, BeforeValidator(_no_numbers), AfterValidator(_plausible_date)]

StrictCount = Annotated[int, Strict()]
"""An integer in the body: not a boolean, not a float, not a numeric string."""

PageLimit = Annotated[int, Field(ge=1, le=500)]
