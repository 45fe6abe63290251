"""Verifying what readers are shown but no ledger entry records: the derived state.

A pledge row keeps its current status, verification and evidence counters, so that
reads never scan history; ``source_tally``, ``evidence_month`` and ``grade_dates``
keep the summaries that verification and ``/status?as_of=`` are answered from
(``overdue`` is worked out on each read from the status and ``last_evidence_at``).
None of them is a fact: each follows from the status history and the accepted
links, which the ledger vouches for. So each is recomputed here with the services'
own functions and every row that differs is named, a page of pledges at a time:
a fixed number of set-based statements per page, and memory bounded by the page.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.domain.evidence.models import EvidenceMonth, GradeDates, SourceTally
from app.domain.evidence.service import LinkCounts, link_counts
from app.domain.evidence.timeline import expected_months, tally_rows
from app.domain.evidence.verification import AGREEING_KEYS, SourceCount, grade
from app.domain.evidence.verification import level_dates as dates_reached
from app.domain.ledger.service import Problem
from app.domain.pledges.models import Pledge
from app.domain.status.service import current_statuses

PAGE = 200
"""Pledges checked per page (between two checkpoints)."""

_TALLY_KEY = ("stance", "source_type", "reliability", "source_name")
_TALLY_VALUES = ("links", "targets_met", "first_at", "first_met_at")
_MONTH_VALUES = ("links", "through", "latest_at")
_DATES = ("claimed_at", "corroborated_at", "verified_at")
_NO_DATES = (None, None, None)


def verify_derived(
    session: Session,
    problems: list[Problem],
    *,
    checkpoint: Callable[[], None],
    limit: int,
) -> None:
    """Recompute every pledge's derived state and summaries; add a problem per difference.

    Stops once ``problems`` holds ``limit``; ``checkpoint`` is called before each page.
    """
    last: str | None = None
    while len(problems) < limit:
        checkpoint()
        query = select(
            Pledge.id,
            Pledge.status,
            Pledge.status_since,
            Pledge.verification,
            Pledge.evidence_count,
            Pledge.unreviewed_count,
            Pledge.last_evidence_at,
        ).order_by(Pledge.id)
        if last is not None:
            query = query.where(Pledge.id > last)
        page = session.execute(query.limit(PAGE)).all()
        if not page:
            return
        _check_page(session, page, problems)
        last = page[-1].id


def _check_page(session: Session, page: Sequence[Any], problems: list[Problem]) -> None:
    ids = [row.id for row in page]
    statuses = current_statuses(session, ids)
    counts = link_counts(session, ids)
    tallies: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    sources: dict[str, list[SourceCount]] = defaultdict(list)
    for tally in tally_rows(session, ids):
        values = tuple(tally[name] for name in _TALLY_VALUES)
        key = tuple(tally[name] for name in _TALLY_KEY)
        tallies[(tally["pledge_id"], *key)] = values
        sources[tally["pledge_id"]].append(SourceCount(*key, *values))
    for row in page:
        counted = counts.get(row.id, LinkCounts())
        _check_pledge(row, statuses.get(row.id), counted, sources, problems)
    _check_tallies(session, ids, tallies, problems)
    _check_grade_dates(session, ids, sources, problems)
    _check_months(session, ids, problems)


def _problem(pledge_id: str, reason: str) -> Problem:
    return Problem(seq=None, subject=f"pledge:{pledge_id}", reason=reason)


def _check_pledge(
    row: Any,
    current: tuple[str, datetime] | None,
    counts: LinkCounts,
    sources: Mapping[str, list[SourceCount]],
    problems: list[Problem],
) -> None:
    """The pledge row's kept state against its history and its links."""
    found: list[str] = []
    if current is None:
        found.append(f"status is {row.status!r} but it has no status history")
    else:
        status, since = current
        if row.status != status:
            found.append(f"status is {row.status!r} but its history says {status!r}")
        if row.status_since != since:
            found.append(
                f"status_since is {_shown(row.status_since)} but its history says {_shown(since)}"
            )
        level = grade(status, sources.get(row.id, []))
        if row.verification != level:
            found.append(
                f"verification is {row.verification!r} but its accepted evidence grades {level!r}"
            )
    for column, kept, made in (
        ("evidence_count", row.evidence_count, counts.accepted),
        ("unreviewed_count", row.unreviewed_count, counts.unreviewed),
        ("last_evidence_at", row.last_evidence_at, counts.last_accepted_at),
    ):
        if kept != made:
            found.append(f"{column} is {_shown(kept)} but its links make {_shown(made)}")
    problems.extend(_problem(row.id, reason) for reason in found)


def _check_tallies(
    session: Session,
    ids: list[str],
    made: Mapping[tuple[Any, ...], tuple[Any, ...]],
    problems: list[Problem],
) -> None:
    columns = [SourceTally.pledge_id, *(SourceTally.__table__.c[name] for name in _TALLY_KEY)]
    values = [SourceTally.__table__.c[name] for name in _TALLY_VALUES]
    kept = {
        tuple(row[: len(columns)]): tuple(row[len(columns) :])
        for row in session.execute(select(*columns, *values).where(SourceTally.pledge_id.in_(ids)))
    }
    for key, kept_values, made_values in _differences(kept, made):
        label = "source_tally (" + ", ".join(repr(part) for part in key[1:]) + ")"
        problems.append(
            _problem(key[0], _difference(label, _TALLY_VALUES, kept_values, made_values))
        )


def _check_grade_dates(
    session: Session,
    ids: list[str],
    sources: Mapping[str, list[SourceCount]],
    problems: list[Problem],
) -> None:
    kept: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for row in session.execute(
        select(
            GradeDates.pledge_id,
            GradeDates.agreeing,
            GradeDates.claimed_at,
            GradeDates.corroborated_at,
            GradeDates.verified_at,
        ).where(GradeDates.pledge_id.in_(ids))
    ):
        dates = tuple(row[2:])
        # A row of no dates says what a missing row says: no level reached yet.
        if dates != _NO_DATES or row.agreeing not in AGREEING_KEYS:
            kept[(row.pledge_id, row.agreeing)] = dates
    made: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for pledge_id in ids:
        for agreeing, stances in AGREEING_KEYS.items():
            reached = dates_reached(stances, sources.get(pledge_id, []))
            dates = (reached.claimed_at, reached.corroborated_at, reached.verified_at)
            if dates != _NO_DATES:
                made[(pledge_id, agreeing)] = dates
    for key, kept_values, made_values in _differences(kept, made):
        label = f"grade_dates ({key[1]!r})"
        problems.append(_problem(key[0], _difference(label, _DATES, kept_values, made_values)))


def _check_months(session: Session, ids: list[str], problems: list[Problem]) -> None:
    kept = {
        (row[0], row[1]): tuple(row[2:])
        for row in session.execute(
            select(
                EvidenceMonth.pledge_id,
                EvidenceMonth.month,
                EvidenceMonth.links,
                EvidenceMonth.through,
                EvidenceMonth.latest_at,
            ).where(EvidenceMonth.pledge_id.in_(ids))
        )
    }
    made = {
        (row["pledge_id"], row["month"]): tuple(row[name] for name in _MONTH_VALUES)
        for row in expected_months(session, ids)
    }
    for key, kept_values, made_values in _differences(kept, made):
        label = f"evidence_month {key[1]}"
        problems.append(
            _problem(key[0], _difference(label, _MONTH_VALUES, kept_values, made_values))
        )


Row = tuple[Any, ...]


def _differences(
    kept: Mapping[Row, Row], made: Mapping[Row, Row]
) -> Iterable[tuple[Row, Row | None, Row | None]]:
    """Each key whose kept row differs from the row the facts make (None: no such row)."""
    differing = [key for key, values in made.items() if kept.get(key) != values]
    differing.extend(key for key in kept if key not in made)
    for key in sorted(differing, key=lambda key: tuple(map(str, key))):
        yield key, kept.get(key), made.get(key)


def _difference(label: str, names: tuple[str, ...], kept: Row | None, made: Row | None) -> str:
    if kept is None:
        return f"{label} is missing; its accepted links make {_values(names, made)}"
    if made is None:
        return f"{label} says {_values(names, kept)} but no accepted link makes it"
    return f"{label} says {_values(names, kept)} but its accepted links make {_values(names, made)}"


def _values(names: tuple[str, ...], values: Row | None) -> str:
    return ", ".join(
        f"{name}={_shown(value)}" for name, value in zip(names, values or (), strict=True)
    )


def _shown(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return repr(value) if isinstance(value, str) else str(value)
