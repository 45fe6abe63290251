"""Small portable SQL helpers for the two databases we support."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def insert_or_ignore(session: Session, table: Any) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` for the session's database.

    Both SQLite and PostgreSQL skip a row that would break any unique
    constraint, which is how concurrent posts of one item become one row.
    ``rowcount`` tells whether the row went in (1) or was skipped (0):
    ``preserve_rowcount`` is needed for that, or psycopg reports -1.
    """
    dialect = session.get_bind().dialect.name
    module = postgresql if dialect == "postgresql" else sqlite
    return module.insert(table).on_conflict_do_nothing().execution_options(preserve_rowcount=True)


def upsert(session: Session, table: Any) -> Any:
    """A dialect ``insert`` whose ``on_conflict_do_update`` the caller completes."""
    dialect = session.get_bind().dialect.name
    module = postgresql if dialect == "postgresql" else sqlite
    return module.insert(table)
