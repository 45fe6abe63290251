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


def test_rows_older_than_the_ledger_are_adopted_so_an_upgraded_database_verifies(
    empty_url: str,
) -> None:
    from app.db import Database
    from app.domain.ledger.service import verify

    upgrade(empty_url, "0002")
    engine = create_engine(empty_url)
    moment = "2024-04-02 18:00:00"
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO pledge (id, title, text, kind, made_on, verification_criteria, "
                "review_every_days, status, status_since, verification, evidence_count, "
                "unreviewed_count, version, created_at, updated_at, created_by) VALUES "
                "('old-pledge', 'An old pledge', 'Text.', 'commitment', '2023-11-15', 'Criteria.', "
                f"30, 'not_yet_rated', '{moment}', 'unverified', 0, 1, 1, '{moment}', "
                f"'{moment}', 'seed')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO pledge_topic (pledge_id, topic, position) "
                "VALUES ('old-pledge', 'narcotics', 0)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO status_change (pledge_id, from_status, to_status, effective_at, "
                "recorded_at, actor, reason, evidence_ids) VALUES ('old-pledge', NULL, "
                f"'not_yet_rated', '{moment}', '{moment}', 'seed', 'Recorded.', '[]')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO evidence (title, url, url_key, summary, published_at, source_name, "
                "source_type, reliability, content_hash, collected_by, recorded_at) VALUES "
                f"('Item', NULL, NULL, 'Summary.', '{moment}', 'Wire', 'independent', 'high', "
                f"'{'a' * 64}', 'seed', '{moment}')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO evidence_link (evidence_id, pledge_id, stance, review, linked_by, "
                f"created_at, published_at) VALUES (1, 'old-pledge', 'supports', 'unreviewed', "
                f"'seed', '{moment}', '{moment}')"
            )
        )
    engine.dispose()

    upgrade(empty_url)

    database = Database(empty_url, pool_size=1)
    try:
        with database.transaction(write=False) as session:
            verdict = verify(session)
            subjects = [
                row[0]
                for row in session.execute(text("SELECT subject FROM ledger_entry ORDER BY seq"))
            ]
    finally:
        database.dispose()
    assert verdict.ok, verdict.problems
    assert subjects == ["pledge:old-pledge", "status_change:1", "evidence:1", "link:1"]


def test_the_summaries_behind_as_of_are_made_from_the_links_on_upgrade(empty_url: str) -> None:
    import random

    from app.db import Database
    from app.domain.evidence.service import ingest
    from app.domain.pledges.schemas import PledgeCreate
    from app.domain.pledges.service import create_pledge
    from tests.conftest import NOW
    from tests.domain.evidence.test_timeline import PLEDGES, random_draft, summaries_snapshot
    from tests.factories import pledge_body

    upgrade(empty_url)
    rng = random.Random(4)
    database = Database(empty_url, pool_size=1)
    try:
        with database.transaction() as session:
            for pledge_id in PLEDGES:
                create_pledge(
                    session,
                    PledgeCreate.model_validate(pledge_body(id=pledge_id)),
                    actor="key:analyst",
                    now=NOW,
                )
            drafts = [random_draft(rng, n, NOW, spread_days=300) for n in range(40)]
            ingest(session, drafts, actor="key:analyst", accepted=True, now=NOW)
        with database.transaction(write=False) as session:
            kept = summaries_snapshot(session)
        database.dispose()
        assert kept["months"]
        assert kept["grades"]

        downgrade(empty_url, "0003")
        assert not {"evidence_month", "grade_dates"} & _tables(empty_url)
        upgrade(empty_url)

        with database.transaction(write=False) as session:
            assert summaries_snapshot(session) == kept
    finally:
        database.dispose()
