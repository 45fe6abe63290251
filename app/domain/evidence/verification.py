"""How sure we are: grade the accepted evidence that agrees with a pledge's status."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

AGREEING_STANCES: dict[str, frozenset[str]] = {
    "not_yet_rated": frozenset({"supports", "undermines"}),
    "in_progress": frozenset({"supports"}),
    "compromise": frozenset({"supports"}),
    "kept": frozenset({"supports"}),
    "stalled": frozenset({"undermines"}),
    "broken": frozenset({"undermines"}),
}
NOT_INDEPENDENT = frozenset({"pledger_official", "analyst_note"})


@dataclass(frozen=True, slots=True)
class SourceCount:
    """Accepted links from one source with one stance (a row of ``source_tally``)."""

    stance: str
    source_type: str
    reliability: str
    source_name: str
    links: int
    targets_met: int = 0


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
