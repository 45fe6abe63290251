"""The dated summaries ``/status?as_of=`` reads, kept with the links they summarise.

Two kinds: per pledge and month, the accepted links and their running total
(``EvidenceMonth``); per pledge and source, the earliest accepted link
(``SourceTally.first_at``), from which ``GradeDates`` follow. Ingest folds new
links in set-based; a review rebuilds the one pledge it touches from its links.
No HTTP here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    Table,
    bindparam,
    case,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.orm import Session, aliased

from app.domain.evidence.models import Evidence, EvidenceLink, EvidenceMonth, SourceTally
from app.sql import upsert

_CHUNK = 500


def month_of(moment: datetime) -> int:
    """The month ``moment`` falls in (UTC), as ``EvidenceMonth.month`` names it."""
    moment = moment.astimezone(UTC)
    return moment.year * 100 + moment.month


def month_start(month: int) -> datetime:
    """The first instant of ``month``."""
    return datetime(month // 100, month % 100, 1, tzinfo=UTC)


def add_to_months(session: Session, links: Iterable[tuple[str, datetime]]) -> None:
    """Fold newly accepted links (pledge id, published_at) into the monthly running totals.

    Three set-based steps: add each month's links to its row (a new row starts
    with a placeholder total); add them to the running total of every later row
    that already existed; then give each new row its total from the row before
    it, in ascending month order so that a new row can follow another.
    """
    groups: dict[tuple[str, int], tuple[int, datetime]] = {}
    for pledge_id, published_at in links:
        key = (pledge_id, month_of(published_at))
        count, latest = groups.get(key, (0, published_at))
        groups[key] = (count + 1, max(latest, published_at))
    if not groups:
        return
    ordered = sorted(groups.items())
    table: Table = EvidenceMonth.__table__  # type: ignore[assignment]
    statement = upsert(session, table)
    statement = statement.on_conflict_do_update(
        index_elements=["pledge_id", "month"],
        set_={
            "links": table.c.links + statement.excluded.links,
            "through": table.c.through + statement.excluded.links,
            "latest_at": case(
                (statement.excluded.latest_at > table.c.latest_at, statement.excluded.latest_at),
                else_=table.c.latest_at,
            ),
        },
    ).returning(table.c.pledge_id, table.c.month, table.c.links)
    rows = [
        {"pledge_id": p, "month": m, "links": n, "through": 0, "latest_at": latest}
        for (p, m), (n, latest) in ordered
    ]
    created: set[tuple[str, int]] = set()
    for start in range(0, len(rows), _CHUNK):
        for row in session.execute(statement, rows[start : start + _CHUNK]):
            if row.links == groups[(row.pledge_id, row.month)][0]:
                created.add((row.pledge_id, row.month))
    session.execute(
        update(table)
        .where(
            table.c.pledge_id == bindparam("p"),
            table.c.month > bindparam("m"),
        )
        .values(through=table.c.through + bindparam("n")),
        [{"p": p, "m": m, "n": n} for (p, m), (n, _latest) in ordered],
    )
    if created:
        before = aliased(EvidenceMonth)
        previous_total = (
            select(before.through)
            .where(before.pledge_id == bindparam("p"), before.month < bindparam("m"))
            .order_by(before.month.desc())
            .limit(1)
            .scalar_subquery()
        )
        session.execute(
            update(table)
            .where(table.c.pledge_id == bindparam("p"), table.c.month == bindparam("m"))
            .values(through=table.c.links + func.coalesce(previous_total, 0)),
            [{"p": p, "m": m} for (p, m) in sorted(created)],
        )


def _accepted_links(
    session: Session, pledge_ids: Sequence[str] | None
) -> Iterator[tuple[str, datetime]]:
    """Every accepted link (pledge id, published_at), a pledge's links in date order."""
    query = select(EvidenceLink.pledge_id, EvidenceLink.published_at).where(
        EvidenceLink.review == "accepted"
    )
    if pledge_ids is None:
        chunks: list[Sequence[str] | None] = [None]
    else:
        ids = sorted(set(pledge_ids))
        chunks = [ids[start : start + _CHUNK] for start in range(0, len(ids), _CHUNK)]
    for chunk in chunks:
        chunk_query = query if chunk is None else query.where(EvidenceLink.pledge_id.in_(chunk))
        result = session.execute(
            chunk_query.order_by(
                EvidenceLink.pledge_id, EvidenceLink.published_at
            ).execution_options(yield_per=10_000)
        )
        for row in result:
            yield row.pledge_id, row.published_at


def month_rows(links: Iterable[tuple[str, datetime]]) -> Iterator[dict[str, Any]]:
    """The ``EvidenceMonth`` rows that accepted links make, given each pledge's links in
    date order (pledge id, published_at): one per pledge and month, in that order."""
    current: dict[str, Any] | None = None
    total, pledge = 0, None
    for pledge_id, published_at in links:
        if pledge_id != pledge:
            pledge, total = pledge_id, 0
        month = month_of(published_at)
        total += 1
        if current is None or current["pledge_id"] != pledge_id or current["month"] != month:
            if current is not None:
                yield current
            current = {
                "pledge_id": pledge_id,
                "month": month,
                "links": 0,
                "latest_at": published_at,
            }
        current["links"] += 1
        current["through"] = total
        current["latest_at"] = max(current["latest_at"], published_at)
    if current is not None:
        yield current


def expected_months(session: Session, pledge_ids: Sequence[str]) -> Iterator[dict[str, Any]]:
    """The ``EvidenceMonth`` rows of ``pledge_ids`` as their accepted links make them now."""
    return month_rows(_accepted_links(session, pledge_ids))


def rebuild_months(session: Session, pledge_ids: Sequence[str] | None) -> None:
    """Recompute the monthly rows of ``pledge_ids`` (``None``: every pledge) from their links."""
    table: Table = EvidenceMonth.__table__  # type: ignore[assignment]
    _delete_rows(session, table, pledge_ids)
    batch: list[dict[str, Any]] = []
    for row in month_rows(_accepted_links(session, pledge_ids)):
        batch.append(row)
        if len(batch) >= 5_000:
            session.execute(insert(table), batch)
            batch = []
    if batch:
        session.execute(insert(table), batch)


def link_tallies(*conditions: ColumnElement[bool]) -> Select[*tuple[Any, ...]]:
    """Accepted links (under ``conditions``) grouped as ``source_tally`` rows.

    Columns: the tally's key (pledge, stance, source type, reliability, name), its
    links, how many meet a target, the earliest link and the earliest meeting one.
    """
    met = Evidence.target_met.is_(True)
    return (
        select(
            EvidenceLink.pledge_id,
            EvidenceLink.stance,
            Evidence.source_type,
            Evidence.reliability,
            Evidence.source_name,
            func.count(),
            func.sum(case((met, 1), else_=0)),
            func.min(EvidenceLink.published_at),
            func.min(case((met, EvidenceLink.published_at), else_=None)),
        )
        .join(Evidence, Evidence.id == EvidenceLink.evidence_id)
        .where(EvidenceLink.review == "accepted", *conditions)
        .group_by(
            EvidenceLink.pledge_id,
            EvidenceLink.stance,
            Evidence.source_type,
            Evidence.reliability,
            Evidence.source_name,
        )
    )


def tally_rows(session: Session, pledge_ids: Sequence[str] | None) -> Iterator[dict[str, Any]]:
    """The ``source_tally`` rows of ``pledge_ids`` (``None``: every pledge) as their accepted
    links make them now."""
    query = link_tallies()
    ids = None if pledge_ids is None else sorted(set(pledge_ids))
    chunks = [None] if ids is None else [ids[s : s + _CHUNK] for s in range(0, len(ids), _CHUNK)]
    columns = ("pledge_id", "stance", "source_type", "reliability", "source_name")
    for chunk in chunks:
        chunk_query = query if chunk is None else query.where(EvidenceLink.pledge_id.in_(chunk))
        for row in session.execute(chunk_query):
            yield dict(
                zip(columns, row[:5], strict=True),
                links=row[5],
                targets_met=int(row[6] or 0),
                # min() over a computed expression loses the column's type on SQLite.
                first_at=_instant(row[7]),
                first_met_at=_instant(row[8]),
            )


def rebuild_tallies(session: Session, pledge_ids: Sequence[str] | None) -> None:
    """Recompute the source tallies of ``pledge_ids`` (``None``: every pledge) from their links."""
    table: Table = SourceTally.__table__  # type: ignore[assignment]
    _delete_rows(session, table, pledge_ids)
    batch: list[dict[str, Any]] = []
    for row in tally_rows(session, pledge_ids):
        batch.append(row)
        if len(batch) >= 5_000:
            session.execute(insert(table), batch)
            batch = []
    if batch:
        session.execute(insert(table), batch)


def _instant(value: datetime | str | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _delete_rows(session: Session, table: Table, pledge_ids: Sequence[str] | None) -> None:
    if pledge_ids is None:
        session.execute(delete(table))
        return
    ids = sorted(set(pledge_ids))
    for start in range(0, len(ids), _CHUNK):
        session.execute(delete(table).where(table.c.pledge_id.in_(ids[start : start + _CHUNK])))
