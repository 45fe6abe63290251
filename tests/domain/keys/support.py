"""Helpers for the keys' tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from app.db import Database


@contextmanager
def sql_statements(database: Database) -> Iterator[list[str]]:
    """The SQL statements sent to the database while the block runs."""
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(database.engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(database.engine, "before_cursor_execute", note)


def updates(statements: list[str]) -> int:
    """How many of ``statements`` are UPDATEs."""
    return sum(statement.lstrip().upper().startswith("UPDATE") for statement in statements)
