"""How sure we are: grade the accepted evidence that agrees with a pledge's status."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

AGREEING_STANCES: dict[str, frozenset[str]] = {
    "not_yet_rated": frozenset({"supports", "undermines"}),
    "in_progress": frozenset({"supports"}),
    "compromise": frozenset({"supports"}),
    "kept": frozenset({"supports"}),
    "stalled": frozenset({"undermines"}),
    "broken": frozenset({"undermines"}),
}
NOT_INDEPENDENT = frozenset({"pledger_official", "analyst_note"})
GRADED_STANCES: frozenset[str] = frozenset().union(*AGREEING_STANCES.values())
"""The stances that can agree with some status: links of any other (context) never count."""


@dataclass(frozen=True, slots=True)
class SourceCount:
    """Accepted links from one source with one stance (a row of ``source_tally``)."""

    stance: str
    source_type: str
    reliability: str
    source_name: str
    links: int
    targets_met: int = 0
    # The earliest publication among the links, and among those meeting a target.
    first_at: datetime | None = None
    first_met_at: datetime | None = None


def grade(status: str, sources: Iterable[SourceCount]) -> str:
    """The verification level of a pledge with ``status``, given its accepted sources.

    ``verified``: two or more distinct independent sources of high reliability, or a
    dataset observation that meets the pledge's target;
    ``corroborated``: at least one independent source; ``claimed``: only the
    pledging party's own statements; ``unverified``: nothing that agrees.
    """
    agreeing = [
        s for s in sources if s.links > 0 and s.stance in AGREEING_STANCES.get(status, frozenset())
    ]
    independent = [s for s in agreeing if s.source_type not in NOT_INDEPENDENT]
    strong_names = {s.source_name for s in independent if s.reliability == "high"}
    if len(strong_names) >= 2:
        return "verified"
    if any(s.source_type == "dataset" and s.targets_met > 0 for s in agreeing):
        return "verified"
    if independent:
        return "corroborated"
    if any(s.source_type == "pledger_official" for s in agreeing):
        return "claimed"
    return "unverified"


def agreeing_key(status: str) -> str:
    """The name of the stances that agree with ``status``: the key of its ``GradeDates`` row."""
    return "+".join(sorted(AGREEING_STANCES[status]))


AGREEING_KEYS: dict[str, frozenset[str]] = {
    agreeing_key(status): stances for status, stances in AGREEING_STANCES.items()
}
"""Each distinct set of agreeing stances, by its key."""


@dataclass(frozen=True, slots=True)
class LevelDates:
    """When the evidence agreeing with one set of stances first reached each level.

    Levels only rise, so the grade as of a moment is the highest level reached by then:
    ``/status?as_of=`` applies that rule in SQL over the kept ``GradeDates``.
    """

    claimed_at: datetime | None = None
    corroborated_at: datetime | None = None
    verified_at: datetime | None = None


def level_dates(stances: frozenset[str], sources: Iterable[SourceCount]) -> LevelDates:
    """When :func:`grade` first gives each level, for the links agreeing by ``stances``.

    Each condition of :func:`grade` only becomes true as links accumulate, so it
    holds from one date on: the first agreeing link of the pledging party
    (claimed), of an independent source (corroborated), and the earlier of the
    second distinct strong independent source's first link and the first
    dataset observation meeting the target (verified).
    """
    agreeing = [
        s for s in sources if s.links > 0 and s.stance in stances and s.first_at is not None
    ]
    claimed = _earliest(s.first_at for s in agreeing if s.source_type == "pledger_official")
    independent = [s for s in agreeing if s.source_type not in NOT_INDEPENDENT]
    corroborated = _earliest(s.first_at for s in independent)
    first_by_strong_name: dict[str, datetime] = {}
    for source in independent:
        if source.reliability == "high" and source.first_at is not None:
            known = first_by_strong_name.get(source.source_name)
            if known is None or source.first_at < known:
                first_by_strong_name[source.source_name] = source.first_at
    strong_dates = sorted(first_by_strong_name.values())
    second_strong = strong_dates[1] if len(strong_dates) >= 2 else None
    target_met = _earliest(
        s.first_met_at for s in agreeing if s.source_type == "dataset" and s.targets_met > 0
    )
    return LevelDates(
        claimed_at=claimed,
        corroborated_at=corroborated,
        verified_at=_earliest((second_strong, target_met)),
    )


def _earliest(dates: Iterable[datetime | None]) -> datetime | None:
    return min((d for d in dates if d is not None), default=None)
