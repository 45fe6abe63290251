"""Import: an export rebuilds a new database exactly, or is refused with nothing written.

Real databases on both backends, and from SQLite to PostgreSQL (how a user
outgrows the embedded default). "Exactly" is what the API shows: /status, every
history, evidence, proposals, sources and runs, the ledger and its verification.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from app.clock import FrozenClock
from app.db import Database
from app.domain.evidence.models import Evidence
from app.domain.transfer.service import ImportReport, exported_tables, import_document
from app.domain.webhooks.models import Webhook
from app.errors import Conflict, DomainError, InvalidInput
from app.migrate import upgrade
from tests.conftest import postgres_database_name, scratch_postgres
from tests.domain.transfer.support import (
    API,
    PLEDGE,
    WEBHOOK_SECRET,
    Exported,
    Instance,
    empty_database,
    export_document,
    export_populated,
    observe,
    open_instance,
)
from tests.factories import evidence_body, pledge_body

Document = dict[str, Any]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def exported(request: pytest.FixtureRequest) -> Exported:
    """An admin's export of a fully populated database, made once per backend for the module."""
    return export_populated(request.param, request)


@pytest.fixture
def target(exported: Exported, request: pytest.FixtureRequest) -> Iterator[Instance]:
    """A second, empty database of the export's backend, its app's clock where the source's was."""
    clock = FrozenClock(exported.at)
    with (
        empty_database(exported.backend, request, "target") as url,
        open_instance(url, clock) as running,
    ):
        yield running


def load(instance: Instance, document: Any) -> ImportReport:
    with instance.database.transaction() as session:
        return import_document(session, document)


def state_rows(database: Database) -> int:
    """How many rows of state the database holds (keys are not state)."""
    with database.transaction(write=False) as session:
        return sum(
            session.execute(select(func.count()).select_from(table)).scalar_one()
            for table in exported_tables()
            if table.name != "revision"
        )


def refused(
    instance: Instance, document: Any, error: type[DomainError] = InvalidInput
) -> DomainError:
    with pytest.raises(error) as caught:
        load(instance, document)
    assert state_rows(instance.database) == 0, "nothing may be written"
    return caught.value


def field_of(error: DomainError) -> str:
    assert error.errors, error.detail
    return str(error.errors[0]["field"])


# --- the round trip --------------------------------------------------------------------------


def test_import_rebuilds_everything_the_api_shows(exported: Exported, target: Instance) -> None:
    document, before = exported.document, exported.seen

    report = load(target, document)

    assert (report.ledger.length, report.ledger.hash) == (
        before["verify"]["length"],
        before["verify"]["head"],
    )
    assert report.warnings == []
    assert report.rows == {name: len(dump["rows"]) for name, dump in document["tables"].items()}
    after = observe(target)
    assert after.keys() == before.keys()
    for key in before:
        assert after[key] == before[key], key
    # Exporting the copy gives the same rows back: nothing was lost or reshaped on the way.
    assert export_document(target)["tables"] == document["tables"]
    with target.database.transaction(write=False) as session:
        (hook,) = session.scalars(select(Webhook))
        assert hook.secret == WEBHOOK_SECRET


def test_new_writes_after_an_import_get_fresh_ids_and_the_chain_goes_on(
    exported: Exported, target: Instance
) -> None:
    # On PostgreSQL the sequences are reset past the imported ids; SQLite needs nothing.
    document, before = exported.document, exported.seen
    load(target, document)
    with target.database.transaction(write=False) as session:
        highest_evidence = session.scalar(select(func.max(Evidence.id)))
    assert highest_evidence is not None

    client, analyst = target.client, target.keys["analyst"]
    created = client.post(f"{API}/pledges", json=pledge_body(id="after-import"), headers=analyst)
    assert created.status_code == 201, created.text
    evidence = client.post(
        f"{API}/pledges/after-import/evidence",
        json=evidence_body(9001, stance="supports"),
        headers=analyst,
    )
    assert evidence.status_code == 201, evidence.text
    assert evidence.json()["id"] == highest_evidence + 1
    change = client.post(
        f"{API}/pledges/after-import/status",
        json={"status": "in_progress", "reason": "Started."},
        headers=analyst,
    )
    assert change.status_code == 201, change.text
    assert change.json()["id"] > max(item["id"] for item in before[f"history {PLEDGE}"])

    verdict = target.get("/ledger/verify")
    assert verdict["ok"] is True, verdict
    assert verdict["length"] > before["verify"]["length"]
    entries = target.get("/ledger", after=before["verify"]["length"] - 1, limit=1)["items"]
    assert entries[0]["hash"] == before["verify"]["head"], "the new entries extend the old chain"


@pytest.mark.parametrize("exported", ["sqlite"], indirect=True)
def test_a_sqlite_database_moves_to_postgresql(
    exported: Exported, request: pytest.FixtureRequest
) -> None:
    # Through JSON text, as the file a user carries from one machine to the other.
    document = json.loads(json.dumps(exported.document))
    with (
        empty_database("postgresql", request, "from_sqlite") as url,
        open_instance(url, FrozenClock(exported.at)) as target,
    ):
        load(target, document)
        after = observe(target)
    for key in exported.seen:
        assert after[key] == exported.seen[key], key


# --- refusals --------------------------------------------------------------------------------


def test_a_database_with_state_is_refused(exported: Exported, target: Instance) -> None:
    document = exported.document
    created = target.client.post(
        f"{API}/pledges", json=pledge_body(id="already-here"), headers=target.keys["analyst"]
    )
    assert created.status_code == 201, created.text
    rows = state_rows(target.database)

    with pytest.raises(Conflict) as caught:
        load(target, document)

    assert "not empty" in caught.value.detail
    assert state_rows(target.database) == rows
    assert [p["id"] for p in target.get("/pledges")["items"]] == ["already-here"]


def test_importing_twice_is_refused_the_second_time(exported: Exported, target: Instance) -> None:
    document, before = exported.document, exported.seen
    load(target, document)
    with pytest.raises(Conflict, match="not empty"):
        load(target, document)
    assert target.get("/ledger/verify") == before["verify"]


@contextmanager
def migrated_to(
    backend: str, request: pytest.FixtureRequest, revision: str | None
) -> Iterator[str]:
    """A database migrated only to ``revision`` (None: not at all)."""
    if backend == "sqlite":
        folder: Path = request.getfixturevalue("tmp_path")
        url = f"sqlite:///{folder / 'partial.db'}"
        if revision is not None:
            upgrade(url, revision)
        yield url
        return
    request.getfixturevalue("postgres_template_url")
    with scratch_postgres(postgres_database_name("partial")) as url:
        if revision is not None:
            upgrade(url, revision)
        yield url


@pytest.mark.parametrize(("revision", "message"), [(None, "no schema"), ("0002", "0002")])
def test_a_database_not_at_the_schema_head_is_refused(
    exported: Exported,
    request: pytest.FixtureRequest,
    revision: str | None,
    message: str,
) -> None:
    document = exported.document
    with migrated_to(exported.backend, request, revision) as url:
        database = Database(url, pool_size=1)
        try:
            with pytest.raises(Conflict) as caught, database.transaction() as session:
                import_document(session, document)
        finally:
            database.dispose()
    assert message in caught.value.detail
    assert "pledgewatch db upgrade" in caught.value.detail


# --- files that are not a faithful export ----------------------------------------------------


def _row(document: Document, table: str, **key: Any) -> list[Any]:
    """The row of ``table`` whose columns have the values in ``key``."""
    dump = document["tables"][table]
    positions = {name: dump["columns"].index(name) for name in key}
    for row in dump["rows"]:
        if all(row[positions[name]] == value for name, value in key.items()):
            return row  # type: ignore[no-any-return]
    raise AssertionError(f"no {table} row with {key}")


def _set(document: Document, table: str, column: str, value: Any, **key: Any) -> int:
    """Set one value of one row; returns the row's index in the file."""
    row = _row(document, table, **key)
    row[document["tables"][table]["columns"].index(column)] = value
    return document["tables"][table]["rows"].index(row)  # type: ignore[no-any-return]


def test_a_row_edited_in_the_file_is_refused_naming_the_row(
    exported: Exported, target: Instance
) -> None:
    document = exported.document
    tampered = copy.deepcopy(document)
    index = _set(tampered, "pledge", "title", "A kinder title", id=PLEDGE)

    error = refused(target, tampered)

    assert field_of(error) == "ledger"
    assert f"tables.pledge.rows[{index}] (pledge:{PLEDGE})" in error.detail
    assert "changed after export" in error.detail


def test_a_history_entry_edited_or_removed_in_the_file_is_refused(
    exported: Exported, target: Instance
) -> None:
    document = exported.document
    edited = copy.deepcopy(document)
    columns = edited["tables"]["status_change"]["columns"]
    change = edited["tables"]["status_change"]["rows"][-1]
    change[columns.index("reason")] = "Quietly rewritten."
    error = refused(target, edited)
    assert f"status_change:{change[columns.index('id')]}" in error.detail

    removed = copy.deepcopy(document)
    proposals = removed["tables"]["proposal"]
    gone = proposals["rows"].pop()
    error = refused(target, removed)
    assert f"proposal:{gone[proposals['columns'].index('id')]}" in error.detail
    assert "is gone" in error.detail


def test_a_ledger_entry_or_head_edited_in_the_file_is_refused(
    exported: Exported, target: Instance
) -> None:
    document = exported.document
    rewritten = copy.deepcopy(document)
    _set(rewritten, "ledger_entry", "kind", "pledge.edited", seq=1)
    error = refused(target, rewritten)
    assert "entry 1" in error.detail

    other_head = copy.deepcopy(document)
    other_head["ledger"]["head"] = "f" * 64
    error = refused(target, other_head)
    assert field_of(error) == "ledger"
    assert "declares" in error.detail

    cut = copy.deepcopy(document)
    cut["tables"]["ledger_entry"]["rows"].pop()
    assert field_of(refused(target, cut)) == "ledger"


MALFORMED: list[tuple[str, Callable[[Document], Any], str]] = [
    ("not an object", lambda d: [d], "document"),
    ("another format", lambda d: {**d, "format": "something-else"}, "format"),
    ("a later version", lambda d: {**d, "version": 2}, "version"),
    ("another schema", lambda d: {**d, "schema": "0002"}, "schema"),
    ("no ledger head", lambda d: {k: v for k, v in d.items() if k != "ledger"}, "ledger"),
    ("an unknown key", lambda d: {**d, "comment": "hi"}, "comment"),
    ("no tables", lambda d: {**d, "tables": []}, "tables"),
    (
        "a credentials table",
        lambda d: {**d, "tables": {**d["tables"], "api_key": {"columns": [], "rows": []}}},
        "tables.api_key",
    ),
    (
        "a table missing",
        lambda d: {**d, "tables": {k: v for k, v in d["tables"].items() if k != "evidence"}},
        "tables.evidence",
    ),
]


def _edit(table: str, column: str, value: Any) -> Callable[[Document], Document]:
    def edit(document: Document) -> Document:
        edited = copy.deepcopy(document)
        columns = edited["tables"][table]["columns"]
        edited["tables"][table]["rows"][0][columns.index(column)] = value
        return edited

    return edit


def _columns(table: str, columns: list[str]) -> Callable[[Document], Document]:
    def edit(document: Document) -> Document:
        edited = copy.deepcopy(document)
        edited["tables"][table]["columns"] = columns
        return edited

    return edit


def _short_row(document: Document) -> Document:
    edited = copy.deepcopy(document)
    edited["tables"]["pledge"]["rows"][0].pop()
    return edited


BAD_VALUES: list[tuple[str, Callable[[Document], Any], str]] = [
    ("a string id", _edit("evidence", "id", "seven"), "tables.evidence.rows[0].id"),
    ("a boolean as an integer", _edit("evidence", "id", True), "tables.evidence.rows[0].id"),
    ("an id out of range", _edit("evidence", "id", 2**40), "tables.evidence.rows[0].id"),
    (
        "a number as a boolean",
        _edit("source", "trusted", 1),
        "tables.source.rows[0].trusted",
    ),
    (
        "an impossible datetime",
        _edit("status_change", "effective_at", "2024-02-30T00:00:00+00:00"),
        "tables.status_change.rows[0].effective_at",
    ),
    (
        "a datetime without a zone",
        _edit("status_change", "effective_at", "2024-02-03T00:00:00"),
        "tables.status_change.rows[0].effective_at",
    ),
    ("a date as a number", _edit("pledge", "made_on", 20231115), "tables.pledge.rows[0].made_on"),
    ("a null title", _edit("pledge", "title", None), "tables.pledge.rows[0].title"),
    ("a NUL in a title", _edit("pledge", "title", "a\x00b"), "tables.pledge.rows[0].title"),
    (
        "a lone surrogate in a title",
        _edit("pledge", "title", "a\ud800b"),
        "tables.pledge.rows[0].title",
    ),
    (
        "an overlong hash",
        _edit("ledger_entry", "hash", "0" * 65),
        "tables.ledger_entry.rows[0].hash",
    ),
    (
        "a non-finite value",
        _edit("evidence", "observed_value", float("nan")),
        "tables.evidence.rows[0].observed_value",
    ),
    ("a row too short", _short_row, "tables.pledge.rows[0]"),
    ("an unknown column", _columns("webhook", ["id", "colour"]), "tables.webhook.columns"),
    (
        "a column missing",
        lambda d: _columns("revision", d["tables"]["revision"]["columns"][:-1])(d),
        "tables.revision.columns",
    ),
    # Only the database knows its constraints: named by table, never a traceback.
    ("a status that does not exist", _edit("pledge", "status", "forgotten"), "tables.pledge"),
    (
        "a link to evidence that does not exist",
        _edit("evidence_link", "evidence_id", 99_999),
        "tables.evidence_link",
    ),
]


def test_malformed_documents_are_refused_naming_the_field(
    exported: Exported, target: Instance
) -> None:
    document = exported.document
    for case, make, field in MALFORMED + BAD_VALUES:
        error = refused(target, make(document))
        assert field_of(error).startswith(field), (case, error.detail)
        assert error.status == 422, case
    # And the real document still goes in afterwards: every refusal was rolled back.
    load(target, document)
