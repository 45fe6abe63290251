"""The generator writes a database the service accepts as its own (small sizes only)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.config import Settings
from app.db import Database
from app.domain.evidence.models import Evidence, EvidenceLink, SourceTally
from app.domain.evidence.service import refresh_verification
from app.domain.ledger.models import LedgerEntry
from app.domain.ledger.service import read_head, verify_database
from app.domain.pledges.models import Pledge
from app.domain.status.models import Revision, StatusChange
from app.domain.status.service import status_at
from app.main import create_app
from bench.generate import Size, generate

SMALL = Size(pledges=12, evidence=400, status_changes=60)


@pytest.fixture
def generated(db_url: str) -> Iterator[Database]:
    report = generate(db_url, SMALL, seed=3, workers=0)
    assert report.ledger_length > SMALL.evidence
    database = Database(db_url, pool_size=2)
    yield database
    database.dispose()


def test_the_ledger_verifies_and_its_head_is_the_revisions(generated: Database) -> None:
    verdict = verify_database(generated)

    assert verdict.ok, verdict.problems[:5]
    with generated.transaction(write=False) as session:
        head = read_head(session)
        kinds = Counter(session.scalars(select(LedgerEntry.kind)))
        last = session.execute(
            select(LedgerEntry.seq, LedgerEntry.hash).order_by(LedgerEntry.seq.desc()).limit(1)
        ).one()
        revision = session.get_one(Revision, 1)
    assert (head.length, head.hash) == (last.seq, last.hash) == (verdict.length, verdict.head)
    assert kinds["pledge.created"] == SMALL.pledges
    assert kinds["status.changed"] == SMALL.status_changes
    assert kinds["evidence.added"] == SMALL.evidence
    assert kinds["link.made"] >= SMALL.evidence
    assert kinds["link.reviewed"] > 0
    assert revision.value >= head.length


def test_the_sizes_are_the_ones_asked_for(generated: Database) -> None:
    with generated.transaction(write=False) as session:
        assert session.scalar(select(func.count()).select_from(Pledge)) == SMALL.pledges
        assert session.scalar(select(func.count()).select_from(Evidence)) == SMALL.evidence
        assert (
            session.scalar(select(func.count()).select_from(StatusChange)) == SMALL.status_changes
        )
        per_item = Counter(session.scalars(select(EvidenceLink.evidence_id)))
    assert set(per_item.values()) <= {1, 2, 3}
    assert len(per_item) == SMALL.evidence


def test_every_derived_column_is_what_the_service_would_keep(generated: Database) -> None:
    now = datetime.now(UTC)
    with generated.transaction(write=False) as session:
        pledges = session.scalars(select(Pledge)).all()
        for pledge in pledges:
            assert pledge.status == status_at(session, pledge.id, now)
            accepted = session.execute(
                select(func.count(), func.max(EvidenceLink.published_at)).where(
                    EvidenceLink.pledge_id == pledge.id, EvidenceLink.review == "accepted"
                )
            ).one()
            unreviewed = session.scalar(
                select(func.count()).where(
                    EvidenceLink.pledge_id == pledge.id, EvidenceLink.review == "unreviewed"
                )
            )
            assert (pledge.evidence_count, pledge.last_evidence_at) == tuple(accepted)
            assert pledge.unreviewed_count == unreviewed
        tallies = {
            (t.pledge_id, t.stance, t.source_type, t.reliability, t.source_name): (
                t.links,
                t.targets_met,
            )
            for t in session.scalars(select(SourceTally))
        }
        counted = {
            tuple(row[:5]): (row.links, row.met)
            for row in session.execute(
                select(
                    EvidenceLink.pledge_id,
                    EvidenceLink.stance,
                    Evidence.source_type,
                    Evidence.reliability,
                    Evidence.source_name,
                    func.count().label("links"),
                    func.sum(
                        func.coalesce(Evidence.target_met, False).cast(type_=Evidence.id.type)
                    ).label("met"),
                )
                .join(Evidence, Evidence.id == EvidenceLink.evidence_id)
                .where(EvidenceLink.review == "accepted")
                .group_by(
                    EvidenceLink.pledge_id,
                    EvidenceLink.stance,
                    Evidence.source_type,
                    Evidence.reliability,
                    Evidence.source_name,
                )
            )
        }
        assert tallies == counted
        grades = {p.id: p.verification for p in pledges}
    # Regrading from the tallies changes nothing: the stored grades are the service's.
    with generated.session(write=True) as session:
        refresh_verification(session, list(grades))
        session.flush()
        assert {p.id: p.verification for p in session.scalars(select(Pledge))} == grades
        session.rollback()


def test_the_api_serves_it(generated: Database, db_url: str) -> None:
    settings = Settings(
        database_url=db_url, log_json=False, log_level="WARNING", scheduler_enabled=False
    )
    with TestClient(create_app(settings, database=generated)) as client:
        now = client.get("/api/v1/status")
        past = client.get(
            "/api/v1/status",
            params={"as_of": (datetime.now(UTC) - timedelta(days=900)).date().isoformat()},
        )
        history = client.get("/api/v1/pledges/bench-pledge-00000/history")
        evidence = client.get("/api/v1/evidence/1")

    assert now.status_code == 200
    view = now.json()
    assert len(view["pledges"]) == SMALL.pledges
    assert sum(view["counts"].values()) == SMALL.pledges
    assert view["ledger"]["length"] == int(now.headers["x-pledgewatch-ledger-length"])
    assert past.status_code == 200
    assert history.status_code == 200
    assert history.json()["items"][0]["to_status"] == "not_yet_rated"
    assert evidence.status_code == 200
    assert evidence.json()["links"]


def test_new_writes_through_the_api_continue_the_chain(generated: Database, db_url: str) -> None:
    """Ids and sequences go on after the generated rows (PostgreSQL: the sequences were set)."""
    from app.domain.keys.service import create_key

    with generated.transaction() as session:
        key = create_key(session, name="analyst", role="analyst", now=datetime.now(UTC))
    settings = Settings(
        database_url=db_url, log_json=False, log_level="WARNING", scheduler_enabled=False
    )
    with TestClient(create_app(settings, database=generated)) as client:
        added = client.post(
            "/api/v1/evidence",
            json={
                "title": "After the generator",
                "url": "https://example.org/after",
                "published_at": "2024-01-01T00:00:00Z",
                "source_name": "Wire Service 1",
                "source_type": "independent",
                "reliability": "high",
                "links": [{"pledge_id": "bench-pledge-00001", "stance": "supports"}],
            },
            headers={"Authorization": f"Bearer {key}"},
        )
        current = client.get("/api/v1/pledges/bench-pledge-00002").json()["status"]
        wanted = "stalled" if current == "in_progress" else "in_progress"
        changed = client.post(
            "/api/v1/pledges/bench-pledge-00002/status",
            json={"status": wanted, "reason": "Looked again.", "reopen": True},
            headers={"Authorization": f"Bearer {key}"},
        )

    assert added.status_code == 201, added.text
    assert added.json()["id"] == SMALL.evidence + 1
    assert changed.status_code == 201, changed.text
    assert verify_database(generated).ok
