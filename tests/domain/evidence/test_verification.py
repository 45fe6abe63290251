"""verification.grade: how sure we are, from the accepted sources that agree with the status.

Unit tests of ``grade`` first, then the same rules seen through the API, where rejected
links must count for nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.evidence.verification import (
    AGREEING_KEYS,
    AGREEING_STANCES,
    LevelDates,
    SourceCount,
    agreeing_key,
    grade,
    level_dates,
)
from tests.factories import evidence_body, pledge_body

Keys = dict[str, dict[str, str]]

STATUSES = ("not_yet_rated", "in_progress", "stalled", "compromise", "kept", "broken")
SOURCE_TYPES = (
    "pledger_official",
    "counterpart_official",
    "independent",
    "dataset",
    "analyst_note",
)
INDEPENDENT_TYPES = ("counterpart_official", "independent", "dataset")
LEVELS = ("unverified", "claimed", "corroborated", "verified")


def src(
    name: str,
    *,
    stance: str = "supports",
    source_type: str = "independent",
    reliability: str = "high",
    links: int = 1,
) -> SourceCount:
    return SourceCount(
        stance=stance,
        source_type=source_type,
        reliability=reliability,
        source_name=name,
        links=links,
    )


# --- every level ------------------------------------------------------------------------------


def test_nothing_is_unverified() -> None:
    for status in STATUSES:
        assert grade(status, []) == "unverified"


def test_pledger_official_alone_is_claimed() -> None:
    assert grade("in_progress", [src("White House", source_type="pledger_official")]) == "claimed"


def test_several_pledger_statements_are_still_only_claimed() -> None:
    sources = [
        src("White House", source_type="pledger_official", links=5),
        src("State Department", source_type="pledger_official", links=3),
    ]
    assert grade("kept", sources) == "claimed"


@pytest.mark.parametrize("source_type", INDEPENDENT_TYPES)
@pytest.mark.parametrize("reliability", ["low", "medium", "high"])
def test_one_independent_source_corroborates(source_type: str, reliability: str) -> None:
    sources = [src("Wire", source_type=source_type, reliability=reliability)]
    assert grade("in_progress", sources) == "corroborated"


def test_independent_outranks_pledger_claims() -> None:
    sources = [
        src("White House", source_type="pledger_official"),
        src("Wire", source_type="independent", reliability="low"),
    ]
    assert grade("in_progress", sources) == "corroborated"


def test_two_distinct_high_independent_sources_verify() -> None:
    sources = [src("Reuters"), src("Xinhua", source_type="counterpart_official")]
    assert grade("in_progress", sources) == "verified"


def test_dataset_counts_as_independent_for_verified() -> None:
    sources = [src("UN Comtrade", source_type="dataset"), src("Reuters")]
    assert grade("kept", sources) == "verified"


def test_one_source_many_links_is_not_verified() -> None:
    assert grade("in_progress", [src("Reuters", links=50)]) == "corroborated"


def test_same_name_with_different_types_is_one_source() -> None:
    sources = [src("Reuters", source_type="independent"), src("Reuters", source_type="dataset")]
    assert grade("in_progress", sources) == "corroborated"


def test_two_sources_need_high_reliability_to_verify() -> None:
    assert grade("in_progress", [src("A"), src("B", reliability="medium")]) == "corroborated"
    assert (
        grade("in_progress", [src("A", reliability="medium"), src("B", reliability="medium")])
        == "corroborated"
    )
    assert grade("in_progress", [src("A", reliability="low"), src("B", reliability="low")]) == (
        "corroborated"
    )


def test_three_high_sources_verify() -> None:
    assert grade("kept", [src("A"), src("B"), src("C")]) == "verified"


# --- agreeing stances, status by status -------------------------------------------------------


@pytest.mark.parametrize("status", ["in_progress", "compromise", "kept"])
def test_supports_agrees_with_positive_statuses(status: str) -> None:
    assert grade(status, [src("A"), src("B")]) == "verified"
    assert grade(status, [src("A", stance="undermines"), src("B", stance="undermines")]) == (
        "unverified"
    )


@pytest.mark.parametrize("status", ["stalled", "broken"])
def test_undermines_agrees_with_negative_statuses(status: str) -> None:
    assert grade(status, [src("A", stance="undermines"), src("B", stance="undermines")]) == (
        "verified"
    )
    assert grade(status, [src("A"), src("B")]) == "unverified"


def test_either_stance_agrees_with_not_yet_rated() -> None:
    assert grade("not_yet_rated", [src("A")]) == "corroborated"
    assert grade("not_yet_rated", [src("A", stance="undermines")]) == "corroborated"
    assert grade("not_yet_rated", [src("A"), src("B", stance="undermines")]) == "verified"


@pytest.mark.parametrize("status", STATUSES)
def test_context_never_agrees(status: str) -> None:
    sources = [
        src("A", stance="context"),
        src("B", stance="context"),
        src("WH", stance="context", source_type="pledger_official"),
    ]
    assert grade(status, sources) == "unverified"


def test_disagreeing_sources_do_not_lift_the_grade() -> None:
    sources = [
        src("WH", source_type="pledger_official"),
        src("A", stance="undermines"),
        src("B", stance="undermines"),
    ]
    assert grade("in_progress", sources) == "claimed"
    assert grade("broken", sources) == "verified"


def test_unknown_status_grades_nothing() -> None:
    assert grade("no_such_status", [src("A"), src("B")]) == "unverified"


def test_agreeing_stances_table_matches_the_design() -> None:
    assert {
        "not_yet_rated": frozenset({"supports", "undermines"}),
        "in_progress": frozenset({"supports"}),
        "compromise": frozenset({"supports"}),
        "kept": frozenset({"supports"}),
        "stalled": frozenset({"undermines"}),
        "broken": frozenset({"undermines"}),
    } == AGREEING_STANCES


# --- what does not count ----------------------------------------------------------------------


def test_zero_link_sources_are_ignored() -> None:
    # A tally row whose links were all rejected drops to 0 and must count for nothing.
    assert grade("in_progress", [src("A", links=0), src("B", links=0)]) == "unverified"
    assert grade("in_progress", [src("A"), src("B", links=0)]) == "corroborated"
    assert (
        grade("in_progress", [src("WH", source_type="pledger_official", links=0)]) == "unverified"
    )


def test_negative_link_counts_are_ignored() -> None:
    assert grade("in_progress", [src("A", links=-1), src("B", links=-3)]) == "unverified"


def test_analyst_note_is_not_independent() -> None:
    assert grade("in_progress", [src("Desk", source_type="analyst_note")]) == "unverified"
    notes = [
        src("Desk A", source_type="analyst_note"),
        src("Desk B", source_type="analyst_note"),
    ]
    assert grade("in_progress", notes) == "unverified"
    assert grade("in_progress", [*notes, src("A")]) == "corroborated"


def test_analyst_note_with_pledger_claims_is_claimed() -> None:
    sources = [src("Desk", source_type="analyst_note"), src("WH", source_type="pledger_official")]
    assert grade("in_progress", sources) == "claimed"


def test_pledger_official_is_not_independent_even_when_high() -> None:
    sources = [
        src("White House", source_type="pledger_official"),
        src("State Department", source_type="pledger_official"),
        src("Reuters"),
    ]
    assert grade("in_progress", sources) == "corroborated"


_sources = st.lists(
    st.builds(
        SourceCount,
        stance=st.sampled_from(["supports", "undermines", "context"]),
        source_type=st.sampled_from(SOURCE_TYPES),
        reliability=st.sampled_from(["low", "medium", "high"]),
        source_name=st.sampled_from(["A", "B", "C", "WH"]),
        links=st.integers(min_value=0, max_value=3),
    ),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(status=st.sampled_from(STATUSES), sources=_sources)
def test_grade_depends_only_on_agreeing_counted_sources(
    status: str, sources: list[SourceCount]
) -> None:
    level = grade(status, sources)
    assert level in LEVELS
    agreeing = [s for s in sources if s.links > 0 and s.stance in AGREEING_STANCES[status]]
    assert grade(status, agreeing) == level
    assert grade(status, list(reversed(sources))) == level
    # More agreeing evidence never lowers the grade.
    more = [*sources, src("Extra", stance=next(iter(sorted(AGREEING_STANCES[status]))))]
    assert LEVELS.index(grade(status, more)) >= LEVELS.index(level)


# --- through the API: accepted links only -----------------------------------------------------


def _pledge(client: TestClient, keys: Keys, pledge_id: str = "us-cn-test-pledge") -> None:
    response = client.post(
        "/api/v1/pledges", json=pledge_body(id=pledge_id), headers=keys["analyst"]
    )
    assert response.status_code == 201, response.text


def _verification(client: TestClient, pledge_id: str = "us-cn-test-pledge") -> str:
    response = client.get(f"/api/v1/pledges/{pledge_id}")
    assert response.status_code == 200, response.text
    level: str = response.json()["verification"]
    return level


def _add(client: TestClient, headers: dict[str, str], n: int, **fields: Any) -> int:
    body = evidence_body(n, stance=fields.pop("stance", "supports"), **fields)
    response = client.post("/api/v1/pledges/us-cn-test-pledge/evidence", json=body, headers=headers)
    assert response.status_code == 201, response.text
    evidence_id: int = response.json()["id"]
    return evidence_id


def _review(client: TestClient, keys: Keys, evidence_id: int, review: str) -> None:
    response = client.post(
        f"/api/v1/evidence/{evidence_id}/review",
        json={"pledge_id": "us-cn-test-pledge", "review": review},
        headers=keys["analyst"],
    )
    assert response.status_code == 200, response.text
    assert response.json()["review"] == review


def test_api_new_pledge_is_unverified(client: TestClient, keys: Keys) -> None:
    _pledge(client, keys)
    assert _verification(client) == "unverified"


def test_api_unreviewed_links_do_not_count(client: TestClient, keys: Keys) -> None:
    _pledge(client, keys)
    _add(client, keys["collector"], 1, source_name="Reuters")
    _add(client, keys["collector"], 2, source_name="AP")
    assert _verification(client) == "unverified"


def test_api_levels_follow_accepted_evidence(client: TestClient, keys: Keys) -> None:
    _pledge(client, keys)
    _add(client, keys["analyst"], 1, source_type="pledger_official", source_name="White House")
    assert _verification(client) == "claimed"
    _add(client, keys["analyst"], 2, source_type="analyst_note", source_name="Desk")
    assert _verification(client) == "claimed"
    _add(client, keys["analyst"], 3, source_name="Reuters")
    assert _verification(client) == "corroborated"
    _add(client, keys["analyst"], 4, source_name="Reuters")
    assert _verification(client) == "corroborated"
    _add(client, keys["analyst"], 5, source_name="AP", reliability="medium")
    assert _verification(client) == "corroborated"
    _add(client, keys["analyst"], 6, source_name="AFP")
    assert _verification(client) == "verified"


def test_api_rejected_links_count_for_nothing(client: TestClient, keys: Keys) -> None:
    _pledge(client, keys)
    first = _add(client, keys["analyst"], 1, source_name="Reuters")
    second = _add(client, keys["analyst"], 2, source_name="AFP")
    assert _verification(client) == "verified"
    _review(client, keys, second, "rejected")
    assert _verification(client) == "corroborated"
    _review(client, keys, first, "rejected")
    assert _verification(client) == "unverified"
    pledge = client.get("/api/v1/pledges/us-cn-test-pledge").json()
    assert pledge["evidence_count"] == 0
    _review(client, keys, first, "accepted")
    assert _verification(client) == "corroborated"


def test_api_accepting_a_collectors_link_regrades(client: TestClient, keys: Keys) -> None:
    _pledge(client, keys)
    evidence_id = _add(client, keys["collector"], 1, source_name="Reuters")
    assert _verification(client) == "unverified"
    _review(client, keys, evidence_id, "accepted")
    assert _verification(client) == "corroborated"


def test_api_context_links_do_not_count(client: TestClient, keys: Keys) -> None:
    _pledge(client, keys)
    _add(client, keys["analyst"], 1, source_name="Reuters", stance="context")
    _add(client, keys["analyst"], 2, source_name="AFP", stance="context")
    assert _verification(client) == "unverified"


def test_api_status_change_regrades_against_the_new_status(client: TestClient, keys: Keys) -> None:
    _pledge(client, keys)
    _add(client, keys["analyst"], 1, source_name="Reuters", stance="undermines")
    _add(client, keys["analyst"], 2, source_name="AFP", stance="undermines")
    assert _verification(client) == "verified"  # not_yet_rated: either stance agrees
    changed = client.post(
        "/api/v1/pledges/us-cn-test-pledge/status",
        json={"status": "in_progress", "reason": "talks resumed"},
        headers=keys["analyst"],
    )
    assert changed.status_code == 201, changed.text
    # in_progress agrees only with supports: the undermining sources no longer count.
    assert _verification(client) == "unverified"


# --- the grade as of a moment (what /status?as_of= reads) ----------------------------------

_DAY0 = datetime(2024, 1, 1, tzinfo=UTC)
_links = st.lists(
    st.tuples(
        st.sampled_from(("supports", "undermines", "context")),
        st.sampled_from(SOURCE_TYPES),
        st.sampled_from(("low", "medium", "high")),
        st.sampled_from(("A", "B", "C")),
        st.integers(min_value=0, max_value=30),  # days after _DAY0
        st.booleans(),  # meets a target (counted for datasets only)
    ),
    max_size=12,
)


def _tallied(links: list[tuple[str, str, str, str, int, bool]]) -> list[SourceCount]:
    """Links folded into tallies with their earliest dates, as the service keeps them."""
    tallies: dict[tuple[str, str, str, str], list[Any]] = {}
    for stance, source_type, reliability, name, day, meets_target in links:
        at = _DAY0 + timedelta(days=day)
        met = meets_target and source_type == "dataset"
        tally = tallies.setdefault((stance, source_type, reliability, name), [0, 0, None, None])
        tally[0] += 1
        tally[1] += int(met)
        tally[2] = at if tally[2] is None else min(tally[2], at)
        if met:
            tally[3] = at if tally[3] is None else min(tally[3], at)
    return [SourceCount(*key, *values) for key, values in tallies.items()]


def _level_at(dates: LevelDates, moment: datetime) -> str:
    """The rule the as_of query applies in SQL: the highest level reached by ``moment``."""
    for level, reached in (
        ("verified", dates.verified_at),
        ("corroborated", dates.corroborated_at),
        ("claimed", dates.claimed_at),
    ):
        if reached is not None and reached <= moment:
            return level
    return "unverified"


@settings(max_examples=400, deadline=None)
@given(status=st.sampled_from(STATUSES), links=_links, day=st.integers(min_value=-1, max_value=31))
def test_the_grade_as_of_a_day_is_the_grade_of_the_links_published_by_then(
    status: str, links: list[tuple[str, str, str, str, int, bool]], day: int
) -> None:
    moment = _DAY0 + timedelta(days=day)
    dates = level_dates(AGREEING_STANCES[status], _tallied(links))
    published_by_then = [link for link in links if link[4] <= day]
    assert _level_at(dates, moment) == grade(status, _tallied(published_by_then))
    # And with every link in, the dates give today's grade.
    assert _level_at(dates, _DAY0 + timedelta(days=400)) == grade(status, _tallied(links))


def test_each_status_reads_the_dates_of_its_own_agreeing_stances() -> None:
    assert agreeing_key("in_progress") == agreeing_key("kept") == "supports"
    assert agreeing_key("broken") == "undermines"
    assert agreeing_key("not_yet_rated") == "supports+undermines"
    assert set(AGREEING_KEYS) == {"supports", "undermines", "supports+undermines"}
