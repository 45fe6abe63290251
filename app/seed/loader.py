"""Loads the seed article's pledges, evidence and assessments from YAML.

Running it twice changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy.orm import Session

from app.clock import Clock
from app.domain.evidence.schemas import EvidenceFields, LinkIn
from app.domain.evidence.service import ingest, make_draft
from app.domain.keys.service import Principal
from app.domain.pledges.models import Pledge
from app.domain.pledges.schemas import PledgeCreate, PledgeSource
from app.domain.pledges.service import SEED_ACTOR, create_pledge
from app.domain.status.schemas import StatusChangeIn
from app.domain.status.service import change_status

SEED_FILE = Path(__file__).with_name("article.yaml")
SEED_PRINCIPAL = Principal(name="seed", role="analyst")


@dataclass
class SeedReport:
    pledges_created: int = 0
    pledges_existing: int = 0
    evidence_created: int = 0
    evidence_existing: int = 0
    status_changes: int = 0


def load_seed_file(path: Path = SEED_FILE) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        data: dict[str, Any] = yaml.safe_load(handle)
    return data


def seed(session: Session, clock: Clock, *, data: dict[str, Any] | None = None) -> SeedReport:
    """Create the seed pledges that do not exist yet, their evidence and the analyst's assessment.

    Pledges already present are left exactly as they are (an analyst may have
    moved on from the seed's view); evidence is deduplicated as always.
    """
    data = data or load_seed_file()
    article = data["article"]
    now = clock.now()
    report = SeedReport()
    created: set[str] = set()

    for entry in data["pledges"]:
        if session.get(Pledge, entry["id"]) is not None:
            report.pledges_existing += 1
            continue
        assessment = entry.get("assessment") or {}
        unrated = assessment.get("status", "not_yet_rated") == "not_yet_rated"
        pledge = create_pledge(
            session,
            PledgeCreate(
                id=entry["id"],
                title=entry["title"],
                text=entry["text"],
                kind=entry["kind"],
                made_by=entry["made_by"],
                made_to=entry.get("made_to") or [],
                made_on=entry["made_on"],
                venue=entry.get("venue"),
                topics=entry.get("topics") or [],
                source=PledgeSource(
                    title=article["title"],
                    url=article.get("url"),
                    publisher=article["publisher"],
                    published_on=article["published_on"],
                    quote=entry["quote"],
                ),
                verification_criteria=entry["verification_criteria"],
                due_on=entry.get("due_on"),
                review_every_days=entry.get("review_every_days", 30),
            ),
            actor=SEED_ACTOR,
            now=now,
            unrated_because=assessment.get("reason") if unrated else None,
        )
        created.add(pledge.id)
        report.pledges_created += 1

    keys: dict[str, int] = {}
    drafts = []
    for item in data["evidence"]:
        fields = EvidenceFields(**{k: v for k, v in item.items() if k not in ("key", "links")})
        links = [LinkIn(pledge_id=link["pledge"], stance=link["stance"]) for link in item["links"]]
        drafts.append(make_draft(fields, links, now=now, tolerance=timedelta(0)))
    outcomes = ingest(session, drafts, actor=SEED_PRINCIPAL.actor, accepted=True, now=now)
    for item, outcome in zip(data["evidence"], outcomes, strict=True):
        keys[item["key"]] = outcome.evidence_id
        if outcome.created:
            report.evidence_created += 1
        else:
            report.evidence_existing += 1

    for entry in data["pledges"]:
        assessment = entry.get("assessment") or {}
        status = assessment.get("status", "not_yet_rated")
        if entry["id"] not in created or status == "not_yet_rated":
            continue
        change_status(
            session,
            entry["id"],
            StatusChangeIn(
                status=status,
                reason=assessment["reason"],
                evidence_ids=[keys[key] for key in assessment.get("evidence") or []],
                effective_at=assessment["effective_at"],
            ),
            principal=SEED_PRINCIPAL,
            if_match=None,
            now=now,
            tolerance=timedelta(0),
        )
        report.status_changes += 1
    session.flush()
    return report
