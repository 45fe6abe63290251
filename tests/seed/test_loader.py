"""The seed article's pledges: complete, cited exactly, and loaded idempotently."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.clock import FrozenClock
from app.db import Database
from app.domain.evidence.models import Evidence, EvidenceLink
from app.domain.ledger.models import LedgerEntry
from app.domain.ledger.service import verify
from app.domain.pledges.models import Pledge
from app.domain.status.models import Revision, StatusChange
from app.seed.loader import load_seed_file, seed

ARTICLE = Path(__file__).resolve().parents[3] / "shared" / "seed-article.txt"
REQUIRED = {
    "cn-no-election-interference-2024",
    "us-cn-military-communications",
    "us-cn-fentanyl-cooperation",
    "us-cn-leader-calls-more-often",
    "us-cn-ai-cooperation",
    "us-cn-climate-cooperation",
    "us-cn-open-lines-of-communication",
    "cn-ru-strategic-coordination-2024",
    "us-yellen-visit-china-2024",
    "us-blinken-visit-china-2024",
    "us-austin-call-china-defense-minister-2024",
    "us-concern-cn-critical-infrastructure-hacking",
    "us-concern-cn-support-russia-defense-industrial-base",
}


def _collapse(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def test_every_pledge_cites_the_article() -> None:
    data = load_seed_file()
    assert data["article"]["publisher"] == "CNN"
    assert str(data["article"]["published_on"]) == "2024-04-02"
    assert all(pledge["quote"].strip() for pledge in data["pledges"])


def test_every_quote_is_a_sentence_of_the_article() -> None:
    if not ARTICLE.exists():
        pytest.skip(f"the seed article is not beside the checkout at {ARTICLE}")
    article_text = _collapse(ARTICLE.read_text(encoding="utf-8"))
    for pledge in load_seed_file()["pledges"]:
        assert _collapse(pledge["quote"]) in article_text, pledge["id"]


def test_the_seed_covers_the_article() -> None:
    ids = {pledge["id"] for pledge in load_seed_file()["pledges"]}
    assert ids >= REQUIRED
    kinds = {pledge["kind"] for pledge in load_seed_file()["pledges"]}
    assert kinds == {"commitment", "planned_engagement", "concern"}


def _snapshot(database: Database) -> dict[str, object]:
    with database.transaction(write=False) as session:
        return {
            "pledges": session.scalar(select(func.count()).select_from(Pledge)),
            "evidence": session.scalar(select(func.count()).select_from(Evidence)),
            "links": session.scalar(select(func.count()).select_from(EvidenceLink)),
            "changes": session.scalar(select(func.count()).select_from(StatusChange)),
            "revision": session.scalar(select(Revision.value)),
            "states": sorted(
                session.execute(
                    select(Pledge.id, Pledge.status, Pledge.verification, Pledge.version)
                ).all()
            ),
        }


def test_seeding_twice_changes_nothing(database: Database, clock: FrozenClock) -> None:
    with database.transaction() as session:
        first = seed(session, clock)
    before = _snapshot(database)
    clock.advance(timedelta(days=1))
    with database.transaction() as session:
        second = seed(session, clock)
    assert first.pledges_created >= len(REQUIRED)
    assert first.status_changes > 0
    assert second.pledges_created == 0
    assert second.evidence_created == 0
    assert second.status_changes == 0
    assert _snapshot(database) == before


def test_the_seed_is_in_the_ledger_and_verifies(database: Database, clock: FrozenClock) -> None:
    with database.transaction() as session:
        report = seed(session, clock)
    with database.transaction(write=False) as session:
        verdict = verify(session)
        kinds = dict(
            session.execute(select(LedgerEntry.kind, func.count()).group_by(LedgerEntry.kind)).all()
        )
    assert verdict.ok, verdict.problems
    assert kinds == {
        "pledge.created": report.pledges_created,
        # Each pledge's first entry, and the assessments made as of the article.
        "status.changed": report.pledges_created + report.status_changes,
        "evidence.added": report.evidence_created,
        "link.made": kinds["link.made"],
    }
    assert kinds["link.made"] >= report.evidence_created


def test_seeded_assessments_as_of_the_article_date(
    client: TestClient, database: Database, clock: FrozenClock
) -> None:
    with database.transaction() as session:
        seed(session, clock)
    view = client.get("/api/v1/status", params={"as_of": "2024-04-02"}).json()
    by_id = {row["id"]: row for row in view["pledges"]}
    assert by_id["us-cn-leader-calls-more-often"]["status"] == "in_progress"
    assert by_id["us-cn-leader-calls-more-often"]["verification"] == "corroborated"
    assert by_id["cn-no-election-interference-2024"]["status"] == "not_yet_rated"
    before_call = client.get("/api/v1/status", params={"as_of": "2024-03-01"}).json()
    before = {row["id"]: row for row in before_call["pledges"]}
    assert before["us-cn-leader-calls-more-often"]["status"] == "not_yet_rated"
    # Engagements announced on the article's day did not exist before it.
    assert "us-yellen-visit-china-2024" not in before

    history = client.get("/api/v1/pledges/us-cn-leader-calls-more-often/history").json()
    assert [entry["to_status"] for entry in history["items"]] == ["not_yet_rated", "in_progress"]
    assert all(entry["reason"] for entry in history["items"])
    assert history["items"][1]["evidence_ids"]
    pledge = client.get("/api/v1/pledges/cn-no-election-interference-2024").json()
    assert pledge["source"]["publisher"] == "CNN"
    assert pledge["source"]["published_on"] == "2024-04-02"
    election_history = client.get("/api/v1/pledges/cn-no-election-interference-2024/history").json()
    assert election_history["items"][0]["reason"] != "Pledge recorded; not yet rated."
