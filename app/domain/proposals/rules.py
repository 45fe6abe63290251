"""The status rules, and ``evaluate``: the scheduled job that applies them to every pledge.

Rules are data: each has a name, and whatever it does is recorded under
``rule:<name>`` with the evidence it relied on. Rules set the non-final
statuses (``in_progress``, ``stalled``) themselves, through the same
``change_status`` as analysts, so history, verification and versions stay
right; final verdicts (``kept``, ``broken``) are only proposed.

An analyst's change outranks the rules. A rule never moves a pledge away from
a status an analyst set unless accepted evidence the rule relies on arrived
after the analyst recorded that change (the analyst cannot have weighed it).
Rules only ever add a change later than the pledge's current one, so they never
rewrite the past either.

Evaluation is set-based: pledges are read in chunks, and each rule finds its
candidates in a chunk with one or two statements, whatever the chunk's size,
without taking any lock. Only the pledges some rule would act on are then
changed, a small batch per transaction under the revision lock (looking again
first), so the API's writers wait at most one small batch. A pledge that
actually changes costs the statements of its own status change; evaluating
again when nothing is new writes nothing and locks nothing.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import Table, func, select, update
from sqlalchemy.orm import Session, aliased

from app.db import Database
from app.domain.evidence.models import Evidence, EvidenceLink
from app.domain.evidence.service import refresh_verification, tallied_sources
from app.domain.evidence.verification import NOT_INDEPENDENT, grade
from app.domain.keys.service import rule_principal
from app.domain.ledger.service import record
from app.domain.pledges.models import Pledge
from app.domain.pledges.service import FINAL_STATUSES, start_of
from app.domain.proposals.models import Proposal
from app.domain.status.models import StatusChange
from app.domain.status.revision import claim_revision, publish_revision
from app.domain.status.service import PlannedChange, apply_planned_changes
from app.metrics import PROPOSALS, RULE_CHANGES, STATUS_CHANGES

log = logging.getLogger("pledgewatch.rules")

# Pledges read per (lock-free) pass, and pledges changed per write transaction: a batch of
# changes holds the revision lock, so it is kept small enough to be a blink for the API.
CHUNK_SIZE = 500
WRITE_BATCH = 25
# StatusChangeIn accepts at most 100 evidence ids; a rule records the first 100 it relied on.
MAX_EVIDENCE_IDS = 100

STARTS_PROGRESS = "supporting-evidence-starts-progress"
STALLS = "no-support-stalls"
DUE_DATE_PASSED = "due-date-passed"
SOURCES_UNDERMINE = "independent-sources-undermine"


@dataclass(frozen=True, slots=True)
class PledgeState:
    """What the rules read about one pledge."""

    id: str
    status: str
    status_since: datetime
    verification: str
    due_on: date | None
    review_every_days: int
    # When an analyst recorded the change that set the current status; None when a rule set
    # it, or when it is the pledge's first entry (recording a pledge is not an assessment).
    analyst_recorded_at: datetime | None


@dataclass(frozen=True, slots=True)
class Action:
    """What a rule would do to one pledge: a status change, or a proposal."""

    pledge_id: str
    status: str
    reason: str
    evidence_ids: tuple[int, ...]
    # Status changes: when the change took effect (backdated to the evidence or the deadline).
    effective_at: datetime | None = None
    # Proposals: since when the grounds have held. A proposal decided (confirmed or dismissed)
    # after that, which relied on the same evidence or more, is not made again.
    grounds_since: datetime | None = None


Planner = Callable[[Session, Sequence[PledgeState], datetime], list[Action]]


@dataclass(frozen=True, slots=True)
class Rule:
    """A named status rule: ``plan`` lists what it would do to some pledges, changing nothing."""

    name: str
    description: str
    proposes: bool  # True: final verdicts, only proposed; False: applied as status changes
    plan: Planner


@dataclass(slots=True)
class EvaluationReport:
    """What one evaluation did."""

    pledges: int = 0
    chunks: int = 0  # read passes
    batches: int = 0  # write transactions
    changes: dict[str, int] = field(default_factory=dict)  # by rule
    proposals: dict[str, int] = field(default_factory=dict)  # by rule
    skipped: int = 0  # changes refused by change_status (logged); the next run tries again
    regraded: int = 0  # pledges whose stored verification had drifted from their evidence

    @property
    def total_changes(self) -> int:
        return sum(self.changes.values())

    @property
    def total_proposals(self) -> int:
        return sum(self.proposals.values())


# --- what the rules read --------------------------------------------------------------------

# When a link became accepted: its review, or its creation when it was accepted from the start.
_ARRIVED = func.coalesce(EvidenceLink.reviewed_at, EvidenceLink.created_at)


def _arrived_after(arrived: datetime, state: PledgeState) -> bool:
    """May a rule rely on evidence accepted at ``arrived`` to move this pledge?"""
    return state.analyst_recorded_at is None or arrived > state.analyst_recorded_at


def load_states(session: Session, pledge_ids: Sequence[str]) -> list[PledgeState]:
    """The pledges with the change behind each one's current status: one statement."""
    current_change = (
        select(StatusChange.id)
        .where(StatusChange.pledge_id == Pledge.id)
        .order_by(
            StatusChange.effective_at.desc(),
            StatusChange.recorded_at.desc(),
            StatusChange.id.desc(),
        )
        .limit(1)
        .correlate(Pledge)
        .scalar_subquery()
    )
    rows = session.execute(
        select(
            Pledge.id,
            Pledge.status,
            Pledge.status_since,
            Pledge.verification,
            Pledge.due_on,
            Pledge.review_every_days,
            StatusChange.actor,
            StatusChange.from_status,
            StatusChange.recorded_at,
        )
        .outerjoin(StatusChange, StatusChange.id == current_change)
        .where(Pledge.id.in_(pledge_ids))
        .order_by(Pledge.id)
    )
    return [
        PledgeState(
            id=row.id,
            status=row.status,
            status_since=row.status_since,
            verification=row.verification,
            due_on=row.due_on,
            review_every_days=row.review_every_days,
            analyst_recorded_at=_analyst_time(row.actor, row.from_status, row.recorded_at),
        )
        for row in rows
    ]


def _analyst_time(
    actor: str | None, from_status: str | None, recorded_at: datetime | None
) -> datetime | None:
    if actor is None or from_status is None or not actor.startswith("key:"):
        return None
    return recorded_at


def _day(moment: datetime) -> str:
    return moment.astimezone(UTC).date().isoformat()


# --- the rules -------------------------------------------------------------------------------


def plan_starts_progress(
    session: Session, states: Sequence[PledgeState], now: datetime
) -> list[Action]:
    """Accepted ``supports`` evidence on a ``not_yet_rated`` or ``stalled`` pledge -> in_progress.

    Only evidence of something that happened after the pledge took its current
    status counts: what was known when it stalled cannot restart it. The change
    takes effect when the first such item was published.
    """
    targets = {s.id: s for s in states if s.status in ("not_yet_rated", "stalled")}
    if not targets:
        return []
    relied: dict[str, list[tuple[int, datetime]]] = defaultdict(list)
    for row in session.execute(
        select(
            EvidenceLink.pledge_id,
            EvidenceLink.evidence_id,
            EvidenceLink.published_at,
            _ARRIVED.label("arrived"),
        )
        .join(Pledge, Pledge.id == EvidenceLink.pledge_id)
        .where(
            EvidenceLink.pledge_id.in_(list(targets)),
            EvidenceLink.review == "accepted",
            EvidenceLink.stance == "supports",
            EvidenceLink.published_at > Pledge.status_since,
        )
        .order_by(EvidenceLink.pledge_id, EvidenceLink.published_at, EvidenceLink.evidence_id)
    ):
        if _arrived_after(row.arrived, targets[row.pledge_id]):
            relied[row.pledge_id].append((row.evidence_id, row.published_at))
    actions = []
    for pledge_id, items in relied.items():
        state = targets[pledge_id]
        first = items[0][1]
        since = "was recorded" if state.status == "not_yet_rated" else "stalled"
        actions.append(
            Action(
                pledge_id=pledge_id,
                status="in_progress",
                reason=f"Accepted supporting evidence published since the pledge {since}: "
                f"{len(items)} item(s), the first published on {_day(first)}.",
                evidence_ids=tuple(evidence_id for evidence_id, _ in items[:MAX_EVIDENCE_IDS]),
                effective_at=min(first, now),
            )
        )
    return actions


def plan_stalls(session: Session, states: Sequence[PledgeState], now: datetime) -> list[Action]:
    """``in_progress`` with no accepted ``supports`` evidence for twice ``review_every_days``
    -> stalled, from the day the silence reached that length.

    The silence counts from the latest supporting item's publication, or from
    when the pledge became in_progress if that is later.
    """
    # A pledge cannot have been silent longer than it has been in progress.
    targets = {
        s.id: s
        for s in states
        if s.status == "in_progress"
        and s.status_since + timedelta(days=2 * s.review_every_days) <= now
    }
    if not targets:
        return []
    other = aliased(EvidenceLink)
    latest_published = (
        select(func.max(other.published_at))
        .where(
            other.pledge_id == EvidenceLink.pledge_id,
            other.review == "accepted",
            other.stance == "supports",
        )
        .correlate(EvidenceLink)
        .scalar_subquery()
    )
    latest: dict[str, tuple[int, datetime, datetime]] = {}
    for row in session.execute(
        select(
            EvidenceLink.pledge_id,
            EvidenceLink.evidence_id,
            EvidenceLink.published_at,
            _ARRIVED.label("arrived"),
        )
        .where(
            EvidenceLink.pledge_id.in_(list(targets)),
            EvidenceLink.review == "accepted",
            EvidenceLink.stance == "supports",
            EvidenceLink.published_at == latest_published,
        )
        .order_by(EvidenceLink.pledge_id, EvidenceLink.evidence_id)
    ):
        latest[row.pledge_id] = (row.evidence_id, row.published_at, row.arrived)
    actions = []
    for pledge_id, state in targets.items():
        last = latest.get(pledge_id)
        # An analyst's in_progress stands until support they had not seen arrives and then ends.
        if state.analyst_recorded_at is not None and (
            last is None or not _arrived_after(last[2], state)
        ):
            continue
        quiet_since = max(last[1], state.status_since) if last else state.status_since
        window = 2 * state.review_every_days
        stalled_at = quiet_since + timedelta(days=window)
        if stalled_at > now:
            continue
        if last is not None:
            reason = (
                f"No accepted supporting evidence for {window} days (twice the review "
                f"interval); the last was published on {_day(last[1])}."
            )
        else:
            reason = (
                f"No accepted supporting evidence in the {window} days (twice the review "
                f"interval) since the pledge became in_progress on {_day(state.status_since)}."
            )
        actions.append(
            Action(
                pledge_id=pledge_id,
                status="stalled",
                reason=reason,
                evidence_ids=(last[0],) if last else (),
                effective_at=stalled_at,
            )
        )
    return actions


def plan_due_date_passed(
    session: Session, states: Sequence[PledgeState], now: datetime
) -> list[Action]:
    """``due_on`` passed without ``kept`` -> propose broken."""
    today = now.date()
    return [
        Action(
            pledge_id=s.id,
            status="broken",
            reason=f"The pledge was due on {s.due_on.isoformat()} and is not kept "
            f"(it is {s.status}).",
            evidence_ids=(),
            grounds_since=start_of(s.due_on + timedelta(days=1)),
        )
        for s in states
        if s.due_on is not None and s.due_on < today and s.status not in FINAL_STATUSES
    ]


def plan_sources_undermine(
    session: Session, states: Sequence[PledgeState], now: datetime
) -> list[Action]:
    """Accepted ``undermines`` evidence from two independent sources -> propose broken.

    Independent: any source type but the pledger's own statements and analysts'
    notes; two sources: two distinct source names.
    """
    targets = [s.id for s in states if s.status not in FINAL_STATUSES]
    if not targets:
        return []
    by_source: dict[str, dict[str, list[int]]] = defaultdict(dict)
    for row in session.execute(
        select(EvidenceLink.pledge_id, EvidenceLink.evidence_id, Evidence.source_name)
        .join(Evidence, Evidence.id == EvidenceLink.evidence_id)
        .where(
            EvidenceLink.pledge_id.in_(targets),
            EvidenceLink.review == "accepted",
            EvidenceLink.stance == "undermines",
            Evidence.source_type.not_in(NOT_INDEPENDENT),
        )
        .order_by(EvidenceLink.pledge_id, EvidenceLink.published_at, EvidenceLink.evidence_id)
    ):
        by_source[row.pledge_id].setdefault(row.source_name, []).append(row.evidence_id)
    actions = []
    for pledge_id, sources in by_source.items():
        if len(sources) < 2:
            continue
        # Every source's first item before the rest, so a capped list still shows them all.
        firsts = [ids[0] for ids in sources.values()]
        rest = sorted(i for ids in sources.values() for i in ids[1:])
        names = sorted(sources)
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        actions.append(
            Action(
                pledge_id=pledge_id,
                status="broken",
                reason=f"Accepted undermining evidence from {len(names)} independent sources: "
                f"{shown}.",
                evidence_ids=tuple((sorted(firsts) + rest)[:MAX_EVIDENCE_IDS]),
                grounds_since=datetime.min.replace(tzinfo=UTC),
            )
        )
    return actions


RULES: tuple[Rule, ...] = (
    Rule(
        STARTS_PROGRESS,
        "Accepted supporting evidence on a not_yet_rated or stalled pledge: in_progress.",
        proposes=False,
        plan=plan_starts_progress,
    ),
    Rule(
        STALLS,
        "In progress with no accepted supporting evidence for twice review_every_days: stalled.",
        proposes=False,
        plan=plan_stalls,
    ),
    Rule(
        DUE_DATE_PASSED,
        "due_on passed without kept: propose broken.",
        proposes=True,
        plan=plan_due_date_passed,
    ),
    Rule(
        SOURCES_UNDERMINE,
        "Accepted undermining evidence from two independent sources: propose broken.",
        proposes=True,
        plan=plan_sources_undermine,
    ),
)


# --- applying them ---------------------------------------------------------------------------


def _not_yet_proposed(session: Session, rule: Rule, actions: list[Action]) -> list[Action]:
    """Drop proposals already open, or already decided on the same grounds.

    There is at most one open proposal per pledge and rule, and an analyst's
    dismissal sticks until the rule has new grounds: evidence the decided
    proposal did not have, or (for dates) grounds that arose after it.
    """
    if not actions:
        return []
    earlier: dict[str, list[Proposal]] = defaultdict(list)
    for proposal in session.scalars(
        select(Proposal).where(
            Proposal.pledge_id.in_([a.pledge_id for a in actions]), Proposal.rule == rule.name
        )
    ):
        earlier[proposal.pledge_id].append(proposal)
    fresh = []
    for action in actions:
        grounds_since = action.grounds_since or datetime.min.replace(tzinfo=UTC)
        if not any(
            p.state == "open"
            or (
                p.proposed_status == action.status
                and p.created_at >= grounds_since
                and set(action.evidence_ids) <= set(p.evidence_ids)
            )
            for p in earlier[action.pledge_id]
        ):
            fresh.append(action)
    return fresh


def _plan(
    session: Session, rule: Rule, states: Sequence[PledgeState], now: datetime
) -> list[Action]:
    actions = rule.plan(session, states, now)
    return _not_yet_proposed(session, rule, actions) if rule.proposes else actions


def _apply(
    session: Session, rule: Rule, actions: list[Action], now: datetime, report: EvaluationReport
) -> list[Action]:
    """Carry out ``actions``; the ones done are returned (to be counted once committed)."""
    if rule.proposes:
        proposals = [
            Proposal(
                pledge_id=action.pledge_id,
                rule=rule.name,
                proposed_status=action.status,
                reason=action.reason,
                evidence_ids=list(action.evidence_ids),
                created_at=now,
                state="open",
            )
            for action in actions
        ]
        session.add_all(proposals)
        session.flush()
        record(session, "proposal.created", [proposal.id for proposal in proposals], now=now)
        return actions
    # All of a rule's changes in a batch go in together (a few statements, not a few per
    # pledge); one that can no longer be made (say, the pledge was changed meanwhile in a way
    # the rule did not foresee) is skipped and logged, never the whole evaluation.
    by_pledge = {action.pledge_id: action for action in actions}
    made, refused = apply_planned_changes(
        session,
        [
            PlannedChange(
                pledge_id=action.pledge_id,
                to_status=action.status,
                effective_at=action.effective_at or now,
                reason=action.reason,
                evidence_ids=tuple(action.evidence_ids),
            )
            for action in actions
        ],
        actor=rule_principal(rule.name).actor,
        now=now,
    )
    for change, why in refused:
        report.skipped += 1
        log.warning(
            "rule change skipped",
            extra={"rule": rule.name, "pledge_id": change.pledge_id, "error": why},
        )
    return [by_pledge[change.pledge_id] for change in made]


def _verification_drift(session: Session, states: Sequence[PledgeState]) -> list[str]:
    """Pledges whose stored verification no longer matches their accepted evidence.

    Every write keeps verification current, so this finds nothing unless
    something went around the services; evaluate is the safety net.
    """
    sources = tallied_sources(session, [s.id for s in states])
    return [s.id for s in states if grade(s.status, sources.get(s.id, [])) != s.verification]


@dataclass(slots=True)
class _BatchResult:
    changes: list[tuple[str, Action]] = field(default_factory=list)
    proposals: list[tuple[str, Action]] = field(default_factory=list)
    regraded: int = 0


def pending_work(session: Session, pledge_ids: Sequence[str], now: datetime) -> list[str]:
    """Which of ``pledge_ids`` some rule would act on (or whose verification drifted).

    Read-only and set-based: each rule looks at all of them in one or two
    statements, and nothing is locked, so the common answer ("none") costs the
    API's writers nothing.
    """
    states = load_states(session, pledge_ids)
    wanted = set(_verification_drift(session, states))
    for rule in RULES:
        wanted.update(action.pledge_id for action in _plan(session, rule, states, now))
    return sorted(wanted)


def apply_rules(
    session: Session, pledge_ids: Sequence[str], now: datetime, report: EvaluationReport
) -> _BatchResult:
    """Apply every rule, in order, to ``pledge_ids``; flush only.

    It first takes the revision lock that every writer takes, then looks again:
    what it does rests on what is committed, never on a read that an analyst's
    concurrent change has overtaken.
    """
    result = _BatchResult()
    claim_revision(session)
    states = load_states(session, pledge_ids)
    for rule in RULES:
        actions = _plan(session, rule, states, now)
        if not actions:
            continue
        done = _apply(session, rule, actions, now, report)
        if rule.proposes:
            result.proposals.extend((rule.name, action) for action in done)
        elif done:
            result.changes.extend((rule.name, action) for action in done)
            # The next rule sees the statuses this one set (in_progress may now stall).
            states = load_states(session, pledge_ids)
    drifted = _verification_drift(session, states)
    if drifted:
        refresh_verification(session, drifted)
        table: Table = Pledge.__table__  # type: ignore[assignment]
        session.execute(
            update(table).where(table.c.id.in_(drifted)).values(version=claim_revision(session))
        )
        publish_revision(session)
        result.regraded = len(drifted)
    return result


def _end_transaction(session: Session, *, commit: bool) -> None:
    if commit:
        session.commit()
    else:
        session.rollback()
    # Loaded rows are dropped, so memory stays flat however many pledges (the revision claim
    # ends with the transaction by itself).
    session.expunge_all()


def _count(report: EvaluationReport, result: _BatchResult) -> None:
    for rule_name, action in result.changes:
        report.changes[rule_name] = report.changes.get(rule_name, 0) + 1
        RULE_CHANGES.labels(rule_name, action.status).inc()
        STATUS_CHANGES.labels(action.status).inc()
    for rule_name, _ in result.proposals:
        report.proposals[rule_name] = report.proposals.get(rule_name, 0) + 1
        PROPOSALS.labels(rule_name, "created").inc()
    report.regraded += result.regraded


def evaluate(
    session: Session,
    now: datetime,
    *,
    chunk_size: int = CHUNK_SIZE,
    write_batch: int = WRITE_BATCH,
) -> EvaluationReport:
    """Apply the status rules to every pledge; the ``evaluate`` job.

    Pledges are read ``chunk_size`` at a time, without locks, to find those a
    rule would act on; those are then changed ``write_batch`` pledges per
    transaction, so the API's writers never wait for more than one small batch.
    It owns its transactions (it commits): give it a write session with no work
    of its own pending (``database.session(write=True)``; inside
    ``database.transaction()`` works too). Running it again with nothing new
    changes nothing.
    """
    started = time.monotonic()
    report = EvaluationReport()
    after = ""
    while True:
        try:
            pledge_ids = list(
                session.scalars(
                    select(Pledge.id).where(Pledge.id > after).order_by(Pledge.id).limit(chunk_size)
                )
            )
            pending = pending_work(session, pledge_ids, now) if pledge_ids else []
        finally:
            # A read: end it at once (on SQLite a write session's transaction holds the lock).
            _end_transaction(session, commit=False)
        if not pledge_ids:
            break
        for start in range(0, len(pending), write_batch):
            try:
                result = apply_rules(session, pending[start : start + write_batch], now, report)
            except BaseException:
                _end_transaction(session, commit=False)
                raise
            _end_transaction(session, commit=True)
            # Counted once committed, so the metrics never count what was rolled back.
            _count(report, result)
            report.batches += 1
        report.pledges += len(pledge_ids)
        report.chunks += 1
        after = pledge_ids[-1]
    log.info(
        "rules evaluated",
        extra={
            "pledges": report.pledges,
            "chunks": report.chunks,
            "batches": report.batches,
            "changes": report.changes,
            "proposals": report.proposals,
            "skipped": report.skipped,
            "regraded": report.regraded,
            "seconds": round(time.monotonic() - started, 3),
        },
    )
    return report


def run_evaluation(database: Database, now: datetime) -> EvaluationReport:
    """``evaluate`` on a session of its own: what the scheduler's job calls."""
    session = database.session(write=True)
    try:
        return evaluate(session, now)
    finally:
        session.close()
