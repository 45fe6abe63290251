"""app.db: instants come back zoned in UTC, whatever form SQLite stored them in."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.dialects import postgresql, sqlite

from app.db import UTCDateTime, utc_from_sqlite_text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-04-02 18:00:00.000000", datetime(2024, 4, 2, 18, tzinfo=UTC)),
        ("2024-04-02 18:00:00.123456", datetime(2024, 4, 2, 18, 0, 0, 123456, tzinfo=UTC)),
        ("2024-04-02 18:00:00", datetime(2024, 4, 2, 18, tzinfo=UTC)),
        ("2024-04-02T18:00:00.5", datetime(2024, 4, 2, 18, 0, 0, 500000, tzinfo=UTC)),
        # Not the stored form: left to the general parser.
        ("2024-04-02", None),
        ("2024-04-02T18:00:00+02:00", None),
        ("not a date at all", None),
    ],
)
def test_the_stored_form_is_read_as_utc(text: str, expected: datetime | None) -> None:
    assert utc_from_sqlite_text(text) == expected
    if expected is not None:
        assert utc_from_sqlite_text(text).tzinfo is UTC  # type: ignore[union-attr]


def _reader(dialect: Any) -> Callable[[Any], Any]:
    read = UTCDateTime().dialect_impl(dialect).result_processor(dialect, None)
    assert read is not None
    return read


def test_every_form_sqlite_may_return_comes_back_zoned() -> None:
    read = _reader(sqlite.dialect())
    assert read("2024-04-02 18:00:00.000000") == datetime(2024, 4, 2, 18, tzinfo=UTC)
    assert read("2024-04-02") == datetime(2024, 4, 2, tzinfo=UTC)
    assert read("2024-04-02T18:00:00+02:00") == datetime(2024, 4, 2, 16, tzinfo=UTC)
    assert read(None) is None


def test_postgresql_keeps_the_general_path() -> None:
    read = _reader(postgresql.dialect())  # type: ignore[no-untyped-call]
    east = datetime.fromisoformat("2024-04-02T20:00:00+02:00")
    assert read(east) == datetime(2024, 4, 2, 18, tzinfo=UTC)
    assert read(east).tzinfo is UTC
