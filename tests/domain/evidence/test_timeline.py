"""The dated summaries behind ``/status?as_of=``: kept in step with the links, whatever happens.

Two oracles. Rebuilding the summaries from the links must give exactly what ingest
and review kept incrementally; and ``as_of`` read from the summaries must give the
rows that counting and grading the links themselves gives (``known_at`` now).
"""

from __future__ import annotations

import contextlib
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.clock import FrozenClock
from app.db import Database
from app.domain.evidence.models import EvidenceMonth, GradeDates, SourceTally
from app.domain.evidence.schemas import EvidenceCreate
from app.domain.evidence.service import (
    Draft,
    ingest,
    make_draft,
    rebuild_summaries,
    review_link,
)
from app.domain.evidence.timeline import month_of, month_start
from app.domain.keys.service import Principal
from app.domain.pledges.schemas import PledgeCreate
from app.domain.pledges.service import create_pledge
from app.domain.status.schemas import StatusChangeIn, StatusQuery
from app.domain.status.service import change_status, dashboard
from app.errors import Conflict
from tests.factories import pledge_body

ANALYST = Principal(name="analyst", role="analyst")
PLEDGES = ("p-one", "p-two", "p-three")
# Few names and many repeats: tallies are hit again and again, first dates move back.
SOURCES = (
    ("White House", "pledger_official", "high"),
    ("Reuters", "independent", "high"),
    ("AP", "independent", "high"),
    ("Blog", "independent", "low"),
    ("MOFA", "counterpart_official", "medium"),
    ("CBP data", "dataset", "high"),
    ("Desk note", "analyst_note", "medium"),
)
START = datetime(2023, 11, 15, tzinfo=UTC)


def test_months_are_named_and_started_in_utc() -> None:
    moment = datetime(2024, 3, 1, 0, 30, tzinfo=UTC)
    assert month_of(moment) == 202403
    east = moment.astimezone(UTC).replace(tzinfo=UTC) - timedelta(hours=1)
    assert month_of(east) == 202402
    assert month_start(202402) == datetime(2024, 2, 1, tzinfo=UTC)
    assert month_start(month_of(datetime(2024, 12, 31, 23, 59, tzinfo=UTC))) == datetime(
        2024, 12, 1, tzinfo=UTC
    )


def summaries_snapshot(session: Session) -> dict[str, set[tuple[Any, ...]]]:
    return {
        "tallies": {
            (
                t.pledge_id,
                t.stance,
                t.source_type,
                t.reliability,
                t.source_name,
                t.links,
                t.targets_met,
                t.first_at,
                t.first_met_at,
            )
            for t in session.scalars(select(SourceTally))
            if t.links > 0
        },
        "months": {
            (m.pledge_id, m.month, m.links, m.through, m.latest_at)
            for m in session.scalars(select(EvidenceMonth))
        },
        "grades": {
            (g.pledge_id, g.agreeing, g.claimed_at, g.corroborated_at, g.verified_at)
            for g in session.scalars(select(GradeDates))
        },
    }


def random_draft(rng: random.Random, n: int, now: datetime, *, spread_days: int) -> Draft:
    name, source_type, reliability = rng.choice(SOURCES)
    published_at = START + timedelta(
        days=rng.randrange(spread_days), hours=rng.randrange(24), minutes=rng.randrange(60)
    )
    linked = rng.sample(PLEDGES, rng.randint(1, len(PLEDGES)))
    data = EvidenceCreate.model_validate(
        {
            "title": f"Item {n}",
            "url": f"https://example.org/{n}",
            "summary": f"Item {n} happened.",
            "published_at": published_at.isoformat(),
            "source_name": name,
            "source_type": source_type,
            "reliability": reliability,
            "links": [
                {"pledge_id": p, "stance": rng.choice(("supports", "supports", "undermines"))}
                for p in linked
            ],
        }
    )
    draft = make_draft(data, data.links, now=now, tolerance=timedelta(0))
    if source_type == "dataset":
        draft.observed_value = float(n)
        draft.target_met = rng.random() < 0.5
    return draft


def _check(database: Database, clock: FrozenClock, rng: random.Random) -> None:
    now = clock.now()
    with database.transaction() as session:
        kept = summaries_snapshot(session)
        rebuild_summaries(session, None)
        session.flush()
        assert summaries_snapshot(session) == kept
        session.rollback()
    moments = [START - timedelta(days=1), now] + [
        START + timedelta(days=rng.randrange(500), seconds=rng.randrange(86400)) for _ in range(12)
    ]
    # Month boundaries, where the running total and the month's own links meet.
    moments += [month_start(202403), month_start(202403) - timedelta(microseconds=1)]
    with database.transaction(write=False) as session:
        for moment in moments:
            summarised = dashboard(session, StatusQuery(as_of=moment), now=now)
            counted = dashboard(session, StatusQuery(as_of=moment, known_at=now), now=now)
            assert summarised.pledges == counted.pledges, moment
            assert summarised.counts == counted.counts


def test_as_of_from_the_summaries_equals_counting_the_links(
    database: Database, clock: FrozenClock
) -> None:
    rng = random.Random(20261127)
    with database.transaction() as session:
        for pledge_id in PLEDGES:
            create_pledge(
                session,
                PledgeCreate.model_validate(pledge_body(id=pledge_id, made_on="2023-11-15")),
                actor="key:analyst",
                now=clock.now(),
            )
    made: list[tuple[int, str]] = []
    serial = 0
    for round_number in range(6):
        clock.advance(timedelta(hours=1))
        with database.transaction() as session:
            drafts = []
            for _ in range(25):
                serial += 1
                drafts.append(random_draft(rng, serial, clock.now(), spread_days=400))
            # A repeat of an earlier item: deduplicated, perhaps newly linked.
            drafts.append(drafts[0])
            outcomes = ingest(
                session,
                drafts,
                actor="key:analyst",
                accepted=round_number % 3 != 2,
                now=clock.now(),
            )
            made += [(o.evidence_id, link.pledge_id) for o in outcomes for link in o.links]
        clock.advance(timedelta(minutes=5))
        with database.transaction() as session:
            for evidence_id, pledge_id in rng.sample(made, 6):
                review_link(
                    session,
                    evidence_id,
                    pledge_id=pledge_id,
                    review=rng.choice(("accepted", "rejected", "accepted")),
                    note=None,
                    principal=ANALYST,
                    now=clock.now(),
                )
        # A change that is no change is refused (Conflict): fine, the next round tries again.
        with contextlib.suppress(Conflict), database.transaction() as session:
            change_status(
                session,
                rng.choice(PLEDGES),
                StatusChangeIn(
                    status=rng.choice(("in_progress", "stalled", "compromise")),
                    reason="the evidence says so",
                    effective_at=START + timedelta(days=rng.randrange(400)),
                ),
                principal=ANALYST,
                if_match=None,
                now=clock.now(),
                tolerance=timedelta(0),
            )
        _check(database, clock, rng)
