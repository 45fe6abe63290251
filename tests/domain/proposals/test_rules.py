"""The status rules, run by ``evaluate`` against real databases with a frozen clock.

The clock starts at 2025-01-15T12:00Z; pledges are made on 2023-11-15 and
reviewed every 30 days unless a test says otherwise, so "stalled" means 60
days without accepted supporting evidence.
"""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from app.clock import FrozenClock
from app.db import Database
from app.domain.keys.service import Principal, rule_principal
from app.domain.pledges.models import Pledge
from app.domain.proposals.models import Proposal
from app.domain.proposals.rules import RULES
from app.domain.proposals.rules import evaluate as evaluate_in
from app.domain.status.models import Revision, StatusChange
from tests.domain.proposals.support import (
    DUE,
    STALLS,
    STARTS,
    UNDERMINE,
    add_evidence,
    evaluate,
    history,
    iso,
    new_pledge,
    pledge,
    proposals,
    review,
    set_status,
    when,
)
from tests.factories import Keys

P = "rule-test-pledge"


def _rule_changes(rule: str, status: str) -> float:
    value = REGISTRY.get_sample_value(
        "pledgewatch_rule_status_changes_total", {"rule": rule, "to_status": status}
    )
    return value or 0.0


def test_rules_are_data_with_names() -> None:
    assert [rule.name for rule in RULES] == [STARTS, STALLS, DUE, UNDERMINE]
    assert [rule.proposes for rule in RULES] == [False, False, True, True]
    assert rule_principal(STALLS).actor == f"rule:{STALLS}"
    assert rule_principal(STALLS).role is None
    assert Principal(name="alice", role="analyst").actor == "key:alice"


# --- supporting-evidence-starts-progress ---------------------------------------------------


def test_accepted_support_starts_progress_as_the_rule_with_its_evidence(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    new_pledge(client, keys, P)
    first = add_evidence(client, keys, P, published_at="2024-12-20T09:00:00Z")
    second = add_evidence(client, keys, P, published_at="2025-01-02T09:00:00Z")
    before = pledge(client, P)
    counted = _rule_changes(STARTS, "in_progress")

    report = evaluate(database, clock)

    assert report.changes == {STARTS: 1}
    assert _rule_changes(STARTS, "in_progress") == counted + 1
    assert report.proposals == {}
    last = history(client, P)[-1]
    assert last["actor"] == f"rule:{STARTS}"
    assert last["from_status"] == "not_yet_rated"
    assert last["to_status"] == "in_progress"
    assert last["evidence_ids"] == [first, second]
    # It took effect when the first supporting item was published; it was recorded now.
    assert when(last["effective_at"]) == when("2024-12-20T09:00:00Z")
    assert when(last["recorded_at"]) == clock.now()
    assert "2024-12-20" in last["reason"]
    after = pledge(client, P)
    assert after["status"] == "in_progress"
    assert when(after["status_since"]) == when("2024-12-20T09:00:00Z")
    assert after["verification"] == "corroborated"
    assert after["version"] > before["version"]


def test_only_accepted_support_counts(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    new_pledge(client, keys, P)
    waiting = add_evidence(client, keys, P, role="collector")  # starts unreviewed
    add_evidence(client, keys, P, stance="context")
    add_evidence(client, keys, P, stance="undermines", source_name="Other Wire")
    assert evaluate(database, clock).changes == {}

    review(client, keys, waiting, P, "rejected")
    assert evaluate(database, clock).changes == {}
    assert pledge(client, P)["status"] == "not_yet_rated"

    clock.advance(timedelta(minutes=5))
    review(client, keys, waiting, P, "accepted")
    assert evaluate(database, clock).changes == {STARTS: 1}
    assert history(client, P)[-1]["evidence_ids"] == [waiting]


# --- no-support-stalls ---------------------------------------------------------------------


def test_silence_for_twice_the_review_interval_stalls(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    new_pledge(client, keys, P)
    item = add_evidence(client, keys, P, published_at="2025-01-10T00:00:00Z")
    assert evaluate(database, clock).changes == {STARTS: 1}

    # 59 days after the last support: not yet.
    clock.set(when("2025-03-10T12:00:00Z"))
    assert evaluate(database, clock).changes == {}
    assert pledge(client, P)["status"] == "in_progress"

    clock.set(when("2025-03-12T00:00:00Z"))
    report = evaluate(database, clock)

    assert report.changes == {STALLS: 1}
    last = history(client, P)[-1]
    assert last["actor"] == f"rule:{STALLS}"
    assert (last["from_status"], last["to_status"]) == ("in_progress", "stalled")
    assert last["evidence_ids"] == [item]  # the last support it relied on
    assert when(last["effective_at"]) == when("2025-03-11T00:00:00Z")  # 60 days after it
    assert "60 days" in last["reason"]
    assert pledge(client, P)["status"] == "stalled"


def test_old_support_starts_and_stalls_in_one_evaluation_with_true_dates(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    new_pledge(client, keys, P, review_every_days=10)
    item = add_evidence(client, keys, P, published_at="2024-06-01T00:00:00Z")

    report = evaluate(database, clock)

    assert report.changes == {STARTS: 1, STALLS: 1}
    steps = [(h["to_status"], h["actor"], h["effective_at"]) for h in history(client, P)]
    assert steps == [
        ("not_yet_rated", "key:analyst", "2023-11-15T00:00:00Z"),
        ("in_progress", f"rule:{STARTS}", "2024-06-01T00:00:00Z"),
        ("stalled", f"rule:{STALLS}", "2024-06-21T00:00:00Z"),
    ]
    assert history(client, P)[-1]["evidence_ids"] == [item]


def test_a_stalled_pledge_restarts_only_on_support_published_after_it_stalled(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    new_pledge(client, keys, P, review_every_days=10)
    add_evidence(client, keys, P, published_at="2024-06-01T00:00:00Z")
    evaluate(database, clock)
    assert pledge(client, P)["status"] == "stalled"  # since 2024-06-21

    clock.advance(timedelta(hours=1))
    add_evidence(client, keys, P, published_at="2024-06-10T00:00:00Z")  # old news, late
    assert evaluate(database, clock).changes == {}

    fresh = add_evidence(client, keys, P, published_at="2025-01-14T00:00:00Z")
    assert evaluate(database, clock).changes == {STARTS: 1}
    last = history(client, P)[-1]
    assert (last["from_status"], last["to_status"]) == ("stalled", "in_progress")
    assert last["evidence_ids"] == [fresh]


# --- an analyst's change outranks the rules ------------------------------------------------


def test_a_rule_never_undoes_an_analysts_change(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    new_pledge(client, keys, P)
    add_evidence(client, keys, P, published_at="2024-12-20T00:00:00Z")
    evaluate(database, clock)
    assert pledge(client, P)["status"] == "in_progress"

    # The analyst disagrees with the rule and sets it back, weighing the same evidence.
    clock.advance(timedelta(hours=1))
    set_status(client, keys, P, "not_yet_rated")
    for _ in range(3):
        clock.advance(timedelta(days=1))
        assert evaluate(database, clock).changes == {}
    assert pledge(client, P)["status"] == "not_yet_rated"
    assert history(client, P)[-1]["actor"] == "key:analyst"


def test_evidence_accepted_after_an_analysts_change_is_new_to_the_rules(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    new_pledge(client, keys, P)
    seen = add_evidence(client, keys, P, role="collector", published_at="2024-12-20T00:00:00Z")
    clock.advance(timedelta(minutes=1))
    set_status(client, keys, P, "stalled", effective_at="2024-06-01T00:00:00Z")
    clock.advance(timedelta(minutes=1))
    # Accepted only after the analyst's change, so the analyst cannot have weighed it.
    review(client, keys, seen, P, "accepted")
    assert evaluate(database, clock).changes == {STARTS: 1}
    assert history(client, P)[-1]["evidence_ids"] == [seen]


def test_an_analysts_stall_stands_until_new_evidence_arrives(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    new_pledge(client, keys, P)
    add_evidence(client, keys, P, published_at="2024-09-01T00:00:00Z")
    clock.advance(timedelta(minutes=1))
    set_status(client, keys, P, "stalled", effective_at="2024-06-01T00:00:00Z")
    clock.advance(timedelta(minutes=1))
    assert evaluate(database, clock).changes == {}
    assert pledge(client, P)["status"] == "stalled"

    clock.advance(timedelta(days=1))
    newer = add_evidence(client, keys, P, published_at="2025-01-15T00:00:00Z")
    assert evaluate(database, clock).changes == {STARTS: 1}
    last = history(client, P)[-1]
    assert last["evidence_ids"] == [newer]  # only what the analyst had not weighed


def test_an_analysts_in_progress_is_not_stalled_by_silence(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    new_pledge(client, keys, P)
    add_evidence(client, keys, P, published_at="2024-12-01T00:00:00Z")
    set_status(client, keys, P, "in_progress")
    clock.advance(timedelta(days=200))
    assert evaluate(database, clock).changes == {}
    assert pledge(client, P)["status"] == "in_progress"
    assert pledge(client, P)["overdue"] is True  # flagged for staff instead

    # Support the analyst had not seen, then silence: now the rule may stall it.
    add_evidence(client, keys, P, published_at=iso(clock.now() - timedelta(days=1)))
    clock.advance(timedelta(days=61))
    assert evaluate(database, clock).changes == {STALLS: 1}


# --- final verdicts are only proposed ------------------------------------------------------


def test_due_date_passed_proposes_broken_and_changes_nothing(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    new_pledge(client, keys, P, due_on="2024-11-15")
    new_pledge(client, keys, "due-later", due_on="2025-01-15")  # due today: not passed yet
    before = pledge(client, P)

    report = evaluate(database, clock)

    assert report.proposals == {DUE: 1}
    assert report.changes == {}
    [proposal] = proposals(client, keys)
    assert proposal["pledge_id"] == P
    assert proposal["rule"] == DUE
    assert proposal["proposed_status"] == "broken"
    assert proposal["state"] == "open"
    assert proposal["evidence_ids"] == []
    assert "2024-11-15" in proposal["reason"]
    after = pledge(client, P)
    assert after["status"] == "not_yet_rated"
    assert after["version"] == before["version"]  # a proposal is not a change of the pledge
    assert len(history(client, P)) == 1

    clock.advance(timedelta(days=1))
    assert evaluate(database, clock).proposals == {DUE: 1}
    assert {p["pledge_id"] for p in proposals(client, keys)} == {P, "due-later"}


def test_a_kept_pledge_is_not_proposed_broken(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    new_pledge(client, keys, P, due_on="2024-11-15")
    set_status(client, keys, P, "kept")
    add_evidence(client, keys, P, stance="undermines", source_name="Wire A")
    add_evidence(client, keys, P, stance="undermines", source_name="Wire B")
    assert evaluate(database, clock).proposals == {}
    assert proposals(client, keys) == []


def test_two_independent_sources_undermining_propose_broken(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    new_pledge(client, keys, P)
    first = add_evidence(client, keys, P, stance="undermines", source_name="Wire A")
    add_evidence(
        client, keys, P, stance="undermines", source_name="Ministry", source_type="pledger_official"
    )
    add_evidence(
        client, keys, P, stance="undermines", source_name="Desk", source_type="analyst_note"
    )
    add_evidence(client, keys, P, stance="undermines", source_name="Wire A")  # same source again
    assert evaluate(database, clock).proposals == {}

    second = add_evidence(
        client, keys, P, stance="undermines", source_name="Stats Office", source_type="dataset"
    )
    report = evaluate(database, clock)

    assert report.proposals == {UNDERMINE: 1}
    [proposal] = proposals(client, keys)
    assert proposal["rule"] == UNDERMINE
    assert proposal["proposed_status"] == "broken"
    assert proposal["evidence_ids"][:2] == [first, second]  # one from each source first
    assert len(proposal["evidence_ids"]) == 3
    assert "Stats Office" in proposal["reason"]
    assert "Wire A" in proposal["reason"]
    assert "Ministry" not in proposal["reason"]
    assert pledge(client, P)["status"] == "not_yet_rated"


def test_rules_never_set_a_final_status(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    new_pledge(client, keys, P, due_on="2024-06-01", review_every_days=5)
    add_evidence(client, keys, P, published_at="2024-03-01T00:00:00Z")
    add_evidence(client, keys, P, stance="undermines", source_name="Wire A")
    add_evidence(client, keys, P, stance="undermines", source_name="Wire B")
    for _ in range(3):
        evaluate(database, clock)
        clock.advance(timedelta(days=30))
    rule_targets = {h["to_status"] for h in history(client, P) if h["actor"].startswith("rule:")}
    assert rule_targets == {"in_progress", "stalled"}
    assert {p["rule"] for p in proposals(client, keys)} == {DUE, UNDERMINE}


# --- idempotence and scale -----------------------------------------------------------------


def _snapshot(database: Database) -> tuple[object, ...]:
    with database.transaction(write=False) as session:
        return (
            session.scalar(select(func.count()).select_from(StatusChange)),
            session.scalar(select(func.count()).select_from(Proposal)),
            session.scalar(select(Revision.value)),
            tuple(session.execute(select(Pledge.id, Pledge.status, Pledge.version)).all()),
        )


def _busy_scene(client: TestClient, keys: Keys) -> None:
    """Pledges for every rule at once."""
    new_pledge(client, keys, "a-starts")
    add_evidence(client, keys, "a-starts", published_at="2025-01-10T00:00:00Z")
    new_pledge(client, keys, "b-stalls", review_every_days=10)
    add_evidence(client, keys, "b-stalls", published_at="2024-10-01T00:00:00Z")
    new_pledge(client, keys, "c-due", due_on="2024-12-31")
    new_pledge(client, keys, "d-undermined")
    add_evidence(client, keys, "d-undermined", stance="undermines", source_name="Wire A")
    add_evidence(client, keys, "d-undermined", stance="undermines", source_name="Wire B")
    new_pledge(client, keys, "e-quiet")


def test_evaluating_again_changes_nothing(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    _busy_scene(client, keys)
    first = evaluate(database, clock)
    assert first.changes == {STARTS: 2, STALLS: 1}
    assert first.proposals == {DUE: 1, UNDERMINE: 1}
    state = _snapshot(database)

    second = evaluate(database, clock)

    assert second.changes == {}
    assert second.proposals == {}
    assert second.pledges == 5
    assert _snapshot(database) == state


def test_one_open_proposal_per_pledge_and_rule_however_often_evaluate_runs(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    _busy_scene(client, keys)
    for _ in range(4):
        evaluate(database, clock)
        clock.advance(timedelta(hours=6))
        # New grounds for the open undermining proposal change nothing while it is open.
        add_evidence(client, keys, "d-undermined", stance="undermines", source_name="Wire C")
    open_ = proposals(client, keys, state="open")
    assert sorted((p["pledge_id"], p["rule"]) for p in open_) == [
        ("c-due", DUE),
        ("d-undermined", UNDERMINE),
    ]


def test_chunks_of_any_size_give_the_same_result(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    _busy_scene(client, keys)
    session = database.session(write=True)
    try:
        report = evaluate_in(session, clock.now(), chunk_size=2)
    finally:
        session.close()
    assert report.chunks == 3
    assert report.pledges == 5
    assert report.changes == {STARTS: 2, STALLS: 1}
    assert report.proposals == {DUE: 1, UNDERMINE: 1}
    assert [pledge(client, p)["status"] for p in ("a-starts", "b-stalls", "e-quiet")] == [
        "in_progress",
        "stalled",
        "not_yet_rated",
    ]


def test_evaluate_recomputes_a_drifted_verification(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    new_pledge(client, keys, P)
    add_evidence(client, keys, P, stance="undermines")
    assert pledge(client, P)["verification"] == "corroborated"
    with database.transaction() as session:  # something went around the services
        session.get_one(Pledge, P).verification = "verified"
    before = pledge(client, P)["version"]

    report = evaluate(database, clock)

    assert report.regraded == 1
    after = pledge(client, P)
    assert after["verification"] == "corroborated"
    assert after["version"] > before
    assert evaluate(database, clock).regraded == 0
