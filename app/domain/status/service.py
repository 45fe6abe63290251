"""Status: the append-only history, changes by analysts, and the dashboard view."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from operator import itemgetter
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import (
    Date,
    Integer,
    Select,
    Table,
    and_,
    bindparam,
    case,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from app.db import UTCDateTime, utc_from_sqlite_text
from app.domain.evidence.models import EvidenceLink, EvidenceMonth, GradeDates
from app.domain.evidence.service import evidence_in_pledge, refresh_verification
from app.domain.evidence.timeline import link_tallies, month_of, month_start
from app.domain.evidence.verification import SourceCount, agreeing_key, grade
from app.domain.keys.service import Principal
from app.domain.ledger.schemas import LedgerHead
from app.domain.ledger.service import record
from app.domain.pledges.models import Pledge
from app.domain.pledges.service import (
    FINAL_STATUSES,
    bump_version,
    check_if_match,
    filter_pledges,
    get_pledge,
    is_overdue,
    start_of,
)
from app.domain.status.models import StatusChange
from app.domain.status.revision import (
    claim_revision,
    current_revision_and_head,
    publish_revision,
)
from app.domain.status.schemas import (
    StatusChangeIn,
    StatusChangeOut,
    StatusQuery,
    StatusRow,
    StatusView,
)
from app.errors import Conflict, InvalidInput
from app.pagination import cursor_id, cursor_time, decode_cursor, encode_cursor

STATUSES = ("not_yet_rated", "in_progress", "stalled", "compromise", "kept", "broken")
_LATEST_FIRST = (
    StatusChange.effective_at.desc(),
    StatusChange.recorded_at.desc(),
    StatusChange.id.desc(),
)


def start_history(
    session: Session, pledge: Pledge, *, actor: str, now: datetime, reason: str | None = None
) -> StatusChange:
    """The first entry of every history: ``not_yet_rated`` from the day the pledge was made."""
    change = StatusChange(
        pledge_id=pledge.id,
        from_status=None,
        to_status="not_yet_rated",
        effective_at=start_of(pledge.made_on),
        recorded_at=now,
        actor=actor,
        reason=reason or "Pledge recorded; not yet rated.",
        evidence_ids=[],
    )
    session.add(change)
    session.flush()
    record(session, "status.changed", [change.id], now=now)
    return change


def status_at(session: Session, pledge_id: str, at: datetime) -> str | None:
    """The status in force at ``at``, by what is recorded now."""
    return session.scalar(
        select(StatusChange.to_status)
        .where(StatusChange.pledge_id == pledge_id, StatusChange.effective_at <= at)
        .order_by(*_LATEST_FIRST)
        .limit(1)
    )


def current_statuses(
    session: Session, pledge_ids: Sequence[str]
) -> dict[str, tuple[str, datetime]]:
    """Each pledge's current status and since when, as its history says.

    The current status is the latest change by ``effective_at`` (then ``recorded_at``,
    then ``id``). Set-based, a few hundred pledges per statement; a pledge with no
    history is left out. The pledge row keeps the answer; verification checks it.
    """
    current: dict[str, tuple[str, datetime]] = {}
    ids = sorted(set(pledge_ids))
    for start in range(0, len(ids), 500):
        ranked = (
            select(
                StatusChange.pledge_id,
                StatusChange.to_status,
                StatusChange.effective_at,
                func.row_number()
                .over(partition_by=StatusChange.pledge_id, order_by=_LATEST_FIRST)
                .label("rank"),
            )
            .where(StatusChange.pledge_id.in_(ids[start : start + 500]))
            .subquery()
        )
        for row in session.execute(
            select(ranked.c.pledge_id, ranked.c.to_status, ranked.c.effective_at).where(
                ranked.c.rank == 1
            )
        ):
            current[row.pledge_id] = (row.to_status, row.effective_at)
    return current


def change_status(
    session: Session,
    pledge_id: str,
    data: StatusChangeIn,
    *,
    principal: Principal,
    if_match: str | None,
    now: datetime,
    tolerance: timedelta,
) -> StatusChange:
    """Append a status change, honouring ``If-Match``; bring the pledge's current state up to date.

    A change may be backdated (``effective_at``) but never to before the pledge
    was made nor into the future; it is compared with the status in force at
    its ``effective_at``. Leaving ``kept`` or ``broken`` needs ``reopen``.
    """
    claim_revision(session)
    pledge = get_pledge(session, pledge_id, with_lists=False)
    expected = check_if_match(pledge, if_match)
    effective_at = data.effective_at or now
    if effective_at > now + tolerance:
        raise InvalidInput("effective_at", "must not be in the future")
    effective_at = min(effective_at, now)
    if effective_at < start_of(pledge.made_on):
        raise InvalidInput(
            "effective_at", f"must not be before the pledge was made ({pledge.made_on})"
        )
    evidence_in_pledge(session, pledge_id, data.evidence_ids)
    from_status = status_at(session, pledge_id, effective_at)
    if from_status == data.status:
        raise Conflict(f"the pledge is already {data.status} at {effective_at.isoformat()}")
    if from_status in FINAL_STATUSES and not data.reopen:
        raise Conflict(
            f'the pledge is {from_status}, a final status; send "reopen": true to leave it'
        )
    change = StatusChange(
        pledge_id=pledge_id,
        from_status=from_status,
        to_status=data.status,
        effective_at=effective_at,
        recorded_at=now,
        actor=principal.actor,
        reason=data.reason,
        evidence_ids=list(data.evidence_ids),
    )
    session.add(change)
    session.flush()
    pledge.status, pledge.status_since = current_statuses(session, [pledge_id])[pledge_id]
    session.flush()
    refresh_verification(session, [pledge_id])
    bump_version(session, pledge, expected)
    record(session, "status.changed", [change.id], now=now)
    publish_revision(session)
    return change


@dataclass(frozen=True, slots=True)
class PlannedChange:
    """A status change a rule wants, later than the pledge's current status."""

    pledge_id: str
    to_status: str
    effective_at: datetime
    reason: str
    evidence_ids: tuple[int, ...] = ()


def apply_planned_changes(
    session: Session, changes: Sequence[PlannedChange], *, actor: str, now: datetime
) -> tuple[list[PlannedChange], list[tuple[PlannedChange, str]]]:
    """Record many rule changes with a fixed number of statements, whatever their number.

    Each change must come after the pledge's current status (rules only ever move a
    pledge forward), so it becomes the current status and ``from_status`` is the
    status it replaces. A change that is no change, leaves a final status, or does
    not come after the current one is not made: it is returned with the reason.
    Returns (made, refused).
    """
    version = claim_revision(session)
    if not changes:
        return [], []
    current = {
        row.id: row
        for row in session.execute(
            select(Pledge.id, Pledge.status, Pledge.status_since, Pledge.made_on).where(
                Pledge.id.in_({change.pledge_id for change in changes})
            )
        )
    }
    made: list[PlannedChange] = []
    refused: list[tuple[PlannedChange, str]] = []
    seen: set[str] = set()
    for change in changes:
        state = current.get(change.pledge_id)
        if state is None:
            refused.append((change, "no such pledge"))
        elif change.pledge_id in seen:
            refused.append((change, "a second change for the pledge in one batch"))
        elif change.to_status == state.status:
            refused.append((change, f"the pledge is already {state.status}"))
        elif state.status in FINAL_STATUSES:
            refused.append((change, f"the pledge is {state.status}, a final status"))
        elif not state.status_since <= change.effective_at <= now:
            refused.append((change, "effective_at is not between the current status and now"))
        else:
            made.append(change)
            seen.add(change.pledge_id)
    if not made:
        return made, refused
    change_ids = (
        session.execute(
            insert(StatusChange).returning(StatusChange.id, sort_by_parameter_order=True),
            [
                {
                    "pledge_id": change.pledge_id,
                    "from_status": current[change.pledge_id].status,
                    "to_status": change.to_status,
                    "effective_at": change.effective_at,
                    "recorded_at": now,
                    "actor": actor,
                    "reason": change.reason,
                    "evidence_ids": list(change.evidence_ids),
                }
                for change in made
            ],
        )
        .scalars()
        .all()
    )
    table: Table = Pledge.__table__  # type: ignore[assignment]
    session.execute(
        update(table)
        .where(table.c.id == bindparam("pid"))
        .values(status=bindparam("to"), status_since=bindparam("since"), version=version),
        [
            {"pid": change.pledge_id, "to": change.to_status, "since": change.effective_at}
            for change in made
        ],
    )
    refresh_verification(session, [change.pledge_id for change in made])
    record(session, "status.changed", list(change_ids), now=now)
    publish_revision(session)
    return made, refused


def change_out(change: StatusChange) -> StatusChangeOut:
    return StatusChangeOut(
        id=change.id,
        pledge_id=change.pledge_id,
        from_status=change.from_status,  # type: ignore[arg-type]
        to_status=change.to_status,  # type: ignore[arg-type]
        effective_at=change.effective_at,
        recorded_at=change.recorded_at,
        actor=change.actor,
        reason=change.reason,
        evidence_ids=list(change.evidence_ids),
    )


def history(
    session: Session,
    pledge_id: str,
    *,
    limit: int,
    cursor: str | None,
    known_at: datetime | None = None,
) -> tuple[list[StatusChangeOut], str | None]:
    """A pledge's status changes, oldest ``effective_at`` first.

    ``known_at`` hides what was recorded after it.
    """
    get_pledge(session, pledge_id, with_lists=False)
    query = select(StatusChange).where(StatusChange.pledge_id == pledge_id)
    if known_at is not None:
        query = query.where(StatusChange.recorded_at <= known_at)
    after = decode_cursor(cursor, 3)
    if after is not None:
        effective, recorded, change_id = (
            cursor_time(after[0]),
            cursor_time(after[1]),
            cursor_id(after[2]),
        )
        query = query.where(
            or_(
                StatusChange.effective_at > effective,
                and_(StatusChange.effective_at == effective, StatusChange.recorded_at > recorded),
                and_(
                    StatusChange.effective_at == effective,
                    StatusChange.recorded_at == recorded,
                    StatusChange.id > change_id,
                ),
            )
        )
    rows = session.scalars(
        query.order_by(StatusChange.effective_at, StatusChange.recorded_at, StatusChange.id).limit(
            limit + 1
        )
    ).all()
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor(
            last.effective_at.isoformat(), last.recorded_at.isoformat(), last.id
        )
    return [change_out(row) for row in rows[:limit]], next_cursor


def dashboard(
    session: Session,
    query: StatusQuery,
    *,
    now: datetime,
    state: tuple[int, int, str] | None = None,
) -> StatusView:
    """The status of every pledge (filtered), now or as of a past moment.

    The present is read from the pledges' kept current state and costs the same
    however long the history grows. A past moment (``as_of``) is a fixed number of
    index seeks per pledge, into the status history and the dated summaries kept
    with the evidence, however long the history. Only a past ``known_at`` (what
    we knew then: links and changes recorded since are left out) reads the links
    themselves.
    """
    revision, ledger_length, ledger_head = state or current_revision_and_head(session)
    as_of = min(query.as_of or now, now)
    known_at = min(query.known_at or now, now)
    if query.known_at is not None:
        rows = _past_rows(session, query, as_of=as_of, known_at=known_at)
    elif query.as_of is not None:
        rows = _rows_as_of(session, query, as_of=as_of)
    else:
        rows = _current_rows(session, query, now=now)
    counts = dict.fromkeys(STATUSES, 0)
    for row in rows:
        counts[row.status] += 1
    return StatusView(
        generated_at=now,
        as_of=as_of,
        known_at=known_at,
        revision=revision,
        ledger=LedgerHead(length=ledger_length, head=ledger_head),
        counts=counts,  # type: ignore[arg-type]
        pledges=rows,
    )


def _current_rows(session: Session, query: StatusQuery, *, now: datetime) -> list[StatusRow]:
    statement = filter_pledges(
        select(
            Pledge.id,
            Pledge.title,
            Pledge.kind,
            Pledge.status,
            Pledge.status_since,
            Pledge.verification,
            Pledge.evidence_count,
            Pledge.last_evidence_at,
            Pledge.due_on,
            Pledge.made_on,
            Pledge.review_every_days,
        ),  # type: ignore[arg-type]
        status=query.status,
        kind=query.kind,
        topic=query.topic,
        party=query.party,
        q=query.q,
    ).order_by(Pledge.id)
    today = now.date()
    return [
        StatusRow(
            id=row.id,
            title=row.title,
            kind=row.kind,
            status=row.status,
            status_since=row.status_since,
            verification=row.verification,
            evidence_count=row.evidence_count,
            last_evidence_at=row.last_evidence_at,
            overdue=is_overdue(
                status=row.status,
                last_evidence_at=row.last_evidence_at,
                made_on=row.made_on,
                review_every_days=row.review_every_days,
                today=today,
            ),
            due_on=row.due_on,
        )
        for row in session.execute(statement)
    ]


def _rows_as_of(session: Session, query: StatusQuery, *, as_of: datetime) -> list[StatusRow]:
    """Every pledge as of a past moment, from what we know now.

    Per pledge: the status change in force (one seek), the accepted links up to
    ``as_of`` (the running total of the month before plus the links of its own
    month) and the grade reached by then (``GradeDates``).
    """
    month = month_of(as_of)
    statement = _as_of_statement(query.kind, query.topic, query.party, query.q)
    params = {"as_of": as_of, "month": month, "month_start": month_start(month)}
    today = as_of.date()
    rows = []
    for (
        pledge_id,
        title,
        kind,
        due_on,
        made_on,
        review_every_days,
        status,
        since,
        verification,
        evidence_count,
        last_evidence_at,
    ) in _fetch_rows(session, statement, params):
        if query.status is not None and status != query.status:
            continue
        rows.append(
            {
                "id": pledge_id,
                "title": title,
                "kind": kind,
                "status": status,
                "status_since": since,
                "verification": verification,
                "evidence_count": evidence_count,
                "last_evidence_at": last_evidence_at,
                "overdue": is_overdue(
                    status=status,
                    last_evidence_at=last_evidence_at,
                    made_on=made_on,
                    review_every_days=review_every_days,
                    today=today,
                ),
                "due_on": due_on,
            }
        )
    # One validation of the whole list: a thousand separate ones cost twice as much.
    return _STATUS_ROWS.validate_python(rows)


_STATUS_ROWS = TypeAdapter(list[StatusRow])


@lru_cache(maxsize=64)
def _as_of_statement(
    kind: str | None, topic: str | None, party: str | None, q: str | None
) -> Select[Any]:
    """The as_of query for these filters, with the moment left as parameters.

    Built once per filter set: making the statement anew for every request cost
    about as much Python as reading its thousand rows.
    """
    as_of = bindparam("as_of", type_=UTCDateTime())
    month = bindparam("month", type_=Integer())
    first_instant = bindparam("month_start", type_=UTCDateTime())
    in_force = (
        select(StatusChange.id)
        .where(StatusChange.pledge_id == Pledge.id, StatusChange.effective_at <= as_of)
        .order_by(*_LATEST_FIRST)
        .limit(1)
        .correlate(Pledge)
        .scalar_subquery()
    )

    def month_before(column: Any) -> Any:
        return (
            select(column)
            .where(EvidenceMonth.pledge_id == Pledge.id, EvidenceMonth.month < month)
            .order_by(EvidenceMonth.month.desc())
            .limit(1)
            .correlate(Pledge)
            .scalar_subquery()
        )

    # The links of as_of's own month, up to as_of, for every pledge at once: one range of
    # the (review, published_at) index, about a month's links, instead of a seek per pledge.
    this_month = (
        select(
            EvidenceLink.pledge_id,
            func.count().label("links"),
            func.max(EvidenceLink.published_at).label("latest"),
        )
        .where(
            EvidenceLink.review == "accepted",
            EvidenceLink.published_at >= first_instant,
            EvidenceLink.published_at <= as_of,
        )
        .group_by(EvidenceLink.pledge_id)
        .subquery("this_month")
    )
    # The grade is worked out in the database: reading the three dates of every pledge
    # would cost more in converting them than the whole query does.
    reached = (
        select(
            case(
                *(
                    (column <= as_of, level)
                    for column, level in (
                        (GradeDates.verified_at, "verified"),
                        (GradeDates.corroborated_at, "corroborated"),
                        (GradeDates.claimed_at, "claimed"),
                    )
                ),
                else_="unverified",
            )
        )
        .where(
            GradeDates.pledge_id == Pledge.id,
            GradeDates.agreeing
            == case(
                *((StatusChange.to_status == status, agreeing_key(status)) for status in STATUSES)
            ),
        )
        .correlate(Pledge, StatusChange)
        .scalar_subquery()
    )
    return filter_pledges(
        select(
            Pledge.id,
            Pledge.title,
            Pledge.kind,
            Pledge.due_on,
            Pledge.made_on,
            Pledge.review_every_days,
            StatusChange.to_status,
            StatusChange.effective_at,
            func.coalesce(reached, "unverified").label("verification"),
            (
                func.coalesce(month_before(EvidenceMonth.through), 0)
                + func.coalesce(this_month.c.links, 0)
            ).label("evidence_count"),
            func.coalesce(this_month.c.latest, month_before(EvidenceMonth.latest_at)).label(
                "last_evidence_at"
            ),
        )
        .join(StatusChange, StatusChange.id == in_force)
        .outerjoin(this_month, this_month.c.pledge_id == Pledge.id),
        # The status filter is on the status as of then, by the caller, not on today's.
        status=None,
        kind=kind,
        topic=topic,
        party=party,
        q=q,
    ).order_by(Pledge.id)


def _fetch_rows(
    session: Session, statement: Select[Any], params: dict[str, Any]
) -> Iterable[Sequence[Any]]:
    """The rows of the as_of statement, as plain values in its column order.

    On SQLite they come back as one JSON value. Row by row, each of the thousand steps
    of the query gives up the GIL and must win it back, which waits for any other
    thread's turn (up to 5 ms): two builds at once then crawl. In one step the query
    runs start to end outside the GIL, beside another request's Python.
    """
    if session.get_bind().dialect.name != "sqlite":
        return session.execute(statement, params)
    packed = session.scalar(_packed(statement), params)
    rows: list[list[Any]] = json.loads(packed or "[]")
    # JSON gives dates and instants as SQLite stores them: text, read back here.
    readers = _readers(statement)
    for row in rows:
        for index, read in readers:
            if row[index] is not None:
                row[index] = read(row[index])
    # An aggregate keeps no promise about the order of what it gathers.
    rows.sort(key=itemgetter(0))
    return rows


@lru_cache(maxsize=64)
def _readers(statement: Select[Any]) -> tuple[tuple[int, Callable[[str], Any]], ...]:
    """Which columns of ``statement`` hold dates and instants, and how to read them."""
    readers: list[tuple[int, Callable[[str], Any]]] = []
    for index, column in enumerate(statement.selected_columns):
        if isinstance(column.type, UTCDateTime):
            readers.append((index, _instant))
        elif isinstance(column.type, Date):
            readers.append((index, date.fromisoformat))
    return tuple(readers)


@lru_cache(maxsize=64)
def _packed(statement: Select[Any]) -> Select[Any]:
    columns = statement.subquery()
    return select(func.json_group_array(func.json_array(*columns.c)))


def _instant(text: str) -> datetime:
    parsed = utc_from_sqlite_text(text)
    if parsed is None:
        raise ValueError(f"not a stored instant: {text!r}")
    return parsed


def _past_rows(
    session: Session, query: StatusQuery, *, as_of: datetime, known_at: datetime
) -> list[StatusRow]:
    latest_change = (
        select(StatusChange.id)
        .where(
            StatusChange.pledge_id == Pledge.id,
            StatusChange.effective_at <= as_of,
            StatusChange.recorded_at <= known_at,
        )
        .order_by(*_LATEST_FIRST)
        .limit(1)
        .correlate(Pledge)
        .scalar_subquery()
    )
    dated_links = and_(
        EvidenceLink.pledge_id == Pledge.id,
        EvidenceLink.review == "accepted",
        EvidenceLink.published_at <= as_of,
        EvidenceLink.created_at <= known_at,
    )
    accepted_count = select(func.count()).where(dated_links).correlate(Pledge).scalar_subquery()
    last_evidence = (
        select(func.max(EvidenceLink.published_at))
        .where(dated_links)
        .correlate(Pledge)
        .scalar_subquery()
    )
    pledges = filter_pledges(
        select(
            Pledge.id,
            Pledge.title,
            Pledge.kind,
            Pledge.due_on,
            Pledge.made_on,
            Pledge.review_every_days,
            latest_change.label("change_id"),
            accepted_count.label("accepted"),
            last_evidence.label("last_evidence_at"),
        ).where(Pledge.created_at <= known_at),
        kind=query.kind,
        topic=query.topic,
        party=query.party,
        q=query.q,
    ).order_by(Pledge.id)
    pledge_rows = [row for row in session.execute(pledges) if row.change_id is not None]
    change_ids = [row.change_id for row in pledge_rows]
    changes: dict[int, tuple[str, datetime]] = {}
    for start in range(0, len(change_ids), 500):
        for change in session.execute(
            select(StatusChange.id, StatusChange.to_status, StatusChange.effective_at).where(
                StatusChange.id.in_(change_ids[start : start + 500])
            )
        ):
            changes[change.id] = (change.to_status, change.effective_at)
    sources = _sources_as_of(session, [row.id for row in pledge_rows], as_of, known_at)
    result = []
    for row in pledge_rows:
        status, since = changes[row.change_id]
        if query.status is not None and status != query.status:
            continue
        result.append(
            StatusRow(
                id=row.id,
                title=row.title,
                kind=row.kind,
                status=status,  # type: ignore[arg-type]
                status_since=since,
                verification=grade(status, sources.get(row.id, [])),  # type: ignore[arg-type]
                evidence_count=row.accepted,
                last_evidence_at=row.last_evidence_at,
                overdue=is_overdue(
                    status=status,
                    last_evidence_at=row.last_evidence_at,
                    made_on=row.made_on,
                    review_every_days=row.review_every_days,
                    today=as_of.date(),
                ),
                due_on=row.due_on,
            )
        )
    return result


def _sources_as_of(
    session: Session, pledge_ids: Sequence[str], as_of: datetime, known_at: datetime
) -> dict[str, list[SourceCount]]:
    sources: dict[str, list[SourceCount]] = defaultdict(list)
    if not pledge_ids:
        return sources
    statement = link_tallies(
        EvidenceLink.published_at <= as_of, EvidenceLink.created_at <= known_at
    )
    wanted = set(pledge_ids)
    for (
        pledge_id,
        stance,
        source_type,
        reliability,
        name,
        links,
        met,
        *_earliest,
    ) in session.execute(statement):
        if pledge_id in wanted:
            sources[pledge_id].append(
                SourceCount(stance, source_type, reliability, name, links, int(met or 0))
            )
    return sources
