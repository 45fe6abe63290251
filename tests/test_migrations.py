"""The schema comes from Alembic alone: it goes up and down, and it matches the models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from app.migrate import downgrade, head_revision, upgrade
from app.models import Base


@pytest.fixture
def empty_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """An empty database; on PostgreSQL the worker's database, migrated back up afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    url: str = request.getfixturevalue("postgres_template_url")
    downgrade(url, "base")
    yield url
    upgrade(url)


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_to_head_and_back_to_base(empty_url: str) -> None:
    assert _tables(empty_url) == set()
    upgrade(empty_url)
    assert _tables(empty_url) == set(Base.metadata.tables)
    engine = create_engine(empty_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == (
            head_revision()
        )
        assert conn.execute(text("SELECT value FROM revision WHERE id = 1")).scalar() == 0
    engine.dispose()
    downgrade(empty_url, "base")
    assert _tables(empty_url) == set()


def test_models_and_migrations_agree(empty_url: str) -> None:
    upgrade(empty_url)
    engine = create_engine(empty_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            differences = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert differences == [], f"models and migrations disagree: {differences}"


def test_constraint_names_follow_the_convention(empty_url: str) -> None:
    upgrade(empty_url)
    engine = create_engine(empty_url)
    try:
        inspector = inspect(engine)
        for table in Base.metadata.tables:
            pk = inspector.get_pk_constraint(table)["name"]
            if pk is not None:  # SQLite does not keep primary key names
                assert pk == f"pk_{table}"
            for unique in inspector.get_unique_constraints(table):
                assert unique["name"] is not None
                assert unique["name"].startswith(f"uq_{table}_")
    finally:
        engine.dispose()
