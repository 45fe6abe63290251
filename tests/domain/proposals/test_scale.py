"""Evaluate over thousands of pledges: the same answers as for one, chunk by chunk.

Correctness only; how long it takes is for benchmarks, not unit tests.
"""

from __future__ import annotations

from collections import Counter
from datetime import date, datetime, timedelta

import pytest
from sqlalchemy import select

from app.clock import FrozenClock
from app.db import Database
from app.domain.evidence.schemas import EvidenceFields, LinkIn, Stance
from app.domain.evidence.service import ingest, make_draft
from app.domain.pledges.models import Pledge
from app.domain.pledges.schemas import PledgeCreate
from app.domain.pledges.service import create_pledge
from app.domain.proposals.models import Proposal
from app.domain.proposals.rules import CHUNK_SIZE, run_evaluation
from app.domain.status.models import StatusChange
from tests.domain.proposals.support import DUE, STALLS, STARTS, UNDERMINE

PLEDGES = 2_000


def _item(
    n: int, pledge_id: str, stance: Stance, published: datetime, source: str
) -> tuple[EvidenceFields, list[LinkIn]]:
    return (
        EvidenceFields(
            title=f"Scale item {n}",
            url=f"https://scale.example.org/{n}",
            published_at=published,
            source_name=source,
            source_type="independent",
            reliability="high",
        ),
        [LinkIn(pledge_id=pledge_id, stance=stance)],
    )


def _load(database: Database, now: datetime) -> None:
    """Five kinds of pledge, interleaved so that every chunk holds them all (by i % 8):
    0 fresh support (starts), 1 old support (starts, then stalls), 2 past due (proposal),
    3 undermined by two independent sources (proposal), 4-7 nothing to do."""
    items = []
    with database.transaction() as session:
        for i in range(PLEDGES):
            pledge_id = f"scale-{i:05d}"
            create_pledge(
                session,
                PledgeCreate(
                    id=pledge_id,
                    title=f"Scale pledge {i}",
                    text="The parties will do a thing.",
                    made_by=["US"],
                    made_on=date(2023, 11, 15),
                    verification_criteria="Readouts.",
                    due_on=date(2024, 11, 15) if i % 8 == 2 else None,
                ),
                actor="key:loader",
                now=now,
            )
            kind = i % 8
            if kind == 0:
                items.append(_item(2 * i, pledge_id, "supports", now - timedelta(days=5), "A"))
            elif kind == 1:
                items.append(_item(2 * i, pledge_id, "supports", now - timedelta(days=200), "A"))
            elif kind == 3:
                items.append(_item(2 * i, pledge_id, "undermines", now, "Wire A"))
                items.append(_item(2 * i + 1, pledge_id, "undermines", now, "Wire B"))
        drafts = [make_draft(f, links, now=now, tolerance=timedelta(0)) for f, links in items]
        ingest(session, drafts, actor="key:loader", accepted=True, now=now)


@pytest.mark.slow
def test_evaluate_over_two_thousand_pledges(database: Database, clock: FrozenClock) -> None:
    now = clock.now()
    _load(database, now - timedelta(hours=1))

    report = run_evaluation(database, now)

    each = PLEDGES // 8  # pledges of each kind that rules act on
    assert report.pledges == PLEDGES
    assert report.chunks == PLEDGES // CHUNK_SIZE
    assert report.changes == {STARTS: 2 * each, STALLS: each}
    assert report.proposals == {DUE: each, UNDERMINE: each}
    assert report.skipped == 0
    assert report.regraded == 0
    with database.transaction(write=False) as session:
        kinds = Counter(
            (min(int(pledge_id.removeprefix("scale-")) % 8, 4), status)
            for pledge_id, status in session.execute(select(Pledge.id, Pledge.status))
        )
        assert kinds == {
            (0, "in_progress"): each,
            (1, "stalled"): each,
            (2, "not_yet_rated"): each,
            (3, "not_yet_rated"): each,
            (4, "not_yet_rated"): 4 * each,
        }
        actors = Counter(session.scalars(select(StatusChange.actor)))
        assert actors == {
            "key:loader": PLEDGES,
            f"rule:{STARTS}": 2 * each,
            f"rule:{STALLS}": each,
        }
        open_proposals = Counter(
            (int(pledge_id.removeprefix("scale-")) % 8, rule)
            for pledge_id, rule in session.execute(
                select(Proposal.pledge_id, Proposal.rule).where(Proposal.state == "open")
            )
        )
        assert open_proposals == {(2, DUE): each, (3, UNDERMINE): each}
        # Verification was regraded on each new status (stalled agrees with undermining only).
        graded = Counter(
            (row.status, row.verification)
            for row in session.execute(select(Pledge.status, Pledge.verification))
        )
        assert graded == {
            ("in_progress", "corroborated"): each,
            ("stalled", "unverified"): each,
            ("not_yet_rated", "verified"): each,  # two independent high-reliability sources
            ("not_yet_rated", "unverified"): 5 * each,
        }

    again = run_evaluation(database, now)
    assert again.pledges == PLEDGES
    assert again.changes == {}
    assert again.proposals == {}
    assert again.regraded == 0
    assert again.batches == 0  # nothing to do: nothing locked, nothing written
