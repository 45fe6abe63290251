"""GET /api/v1/export: the whole state as JSON (streamed, one snapshot), or a CSV of the pledges.

Real app, real databases (SQLite and PostgreSQL), a frozen clock.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.clock import FrozenClock
from app.db import Base
from app.domain.transfer.schemas import CSV_COLUMNS, ExportDocument
from app.domain.transfer.service import (
    EXCLUDED_TABLES,
    export_chunks,
    exported_tables,
    import_document,
    snapshot,
    spreadsheet_safe,
)
from app.domain.webhooks.models import Webhook
from app.migrate import head_revision
from app.seed.loader import seed
from tests.conftest import NOW
from tests.domain.transfer.support import (
    API,
    AWKWARD_TITLE,
    PLEDGE,
    WEBHOOK_SECRET,
    Instance,
    add_webhook,
    empty_database,
    export_document,
    open_instance,
    populate,
)
from tests.e2e.conftest import running_server
from tests.factories import invalid_fields, pledge_body, problem

STATE_TABLES = {
    "pledge",
    "pledge_party",
    "pledge_topic",
    "evidence",
    "evidence_link",
    "source_tally",
    "evidence_month",
    "grade_dates",
    "status_change",
    "proposal",
    "source",
    "source_run",
    "webhook",
    "ledger_entry",
    "revision",
}


@pytest.fixture
def instance(db_url: str, clock: FrozenClock) -> Iterator[Instance]:
    with open_instance(db_url, clock) as running:
        yield running


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def populated(request: pytest.FixtureRequest) -> Iterator[Instance]:
    """A fully populated Pledgewatch per backend, shared by the tests that only read it."""
    with (
        empty_database(request.param, request, "populated") as url,
        open_instance(url, FrozenClock(NOW)) as running,
    ):
        populate(running)
        yield running


def _webhook_secrets(document: dict[str, Any]) -> list[Any]:
    hooks = document["tables"]["webhook"]
    position = hooks["columns"].index("secret")
    return [row[position] for row in hooks["rows"]]


# --- what is exported ------------------------------------------------------------------------


def test_every_table_is_either_state_or_deliberately_left_out() -> None:
    # A new table must be placed on one side or the other, consciously.
    assert {table.name for table in exported_tables()} == STATE_TABLES
    assert set(EXCLUDED_TABLES) | STATE_TABLES == set(Base.metadata.tables)
    assert not set(EXCLUDED_TABLES) & STATE_TABLES


def test_the_json_export_is_one_document_of_every_table(populated: Instance) -> None:
    clock = populated.clock
    response = populated.client.get(f"{API}/export", headers=populated.keys["admin"])

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-disposition"] == (
        'attachment; filename="pledgewatch-20250116T131400Z.json"'
    )
    # An admin's export holds webhook secrets: no cache on the way may keep it.
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    document = json.loads(response.content)
    ExportDocument.model_validate(document)
    assert document["scope"] == "complete"
    assert document["format"] == "pledgewatch-export"
    assert document["version"] == 1
    assert document["schema"] == head_revision()
    assert document["exported_at"] == clock.now().isoformat().replace("+00:00", "Z")
    assert document["excluded"] == EXCLUDED_TABLES
    assert document["secrets"] == "included"
    assert list(document["tables"]) == [table.name for table in exported_tables()]
    verdict = populated.get("/ledger/verify")
    assert document["ledger"] == {"length": verdict["length"], "head": verdict["head"]}

    ledger = document["tables"]["ledger_entry"]
    seqs = [row[ledger["columns"].index("seq")] for row in ledger["rows"]]
    assert seqs == list(range(1, verdict["length"] + 1)), "rows in key order"
    pledges = document["tables"]["pledge"]
    titles = {row[0]: row[pledges["columns"].index("title")] for row in pledges["rows"]}
    assert titles[PLEDGE] == AWKWARD_TITLE, "strings exactly as stored"
    assert _webhook_secrets(document) == [WEBHOOK_SECRET]
    changes = document["tables"]["status_change"]
    effective = {row[changes["columns"].index("effective_at")] for row in changes["rows"]}
    assert "2024-06-01T08:30:00.123456+00:00" in effective, "RFC 3339, UTC, microseconds"


@pytest.mark.parametrize("role", ["viewer", "analyst", None])
def test_webhooks_and_sources_are_only_for_admins(populated: Instance, role: str | None) -> None:
    headers = populated.keys[role] if role else None
    response = populated.client.get(f"{API}/export", headers=headers)
    assert response.status_code == 200, response.text
    document = json.loads(response.content)
    assert document["scope"] == "public"
    assert document["secrets"] == "withheld"
    assert not {"source", "source_run", "webhook"} & set(document["tables"])
    assert WEBHOOK_SECRET not in response.text
    assert "hooks.example.org" not in response.text
    assert "news.example.org/feed.xml" not in response.text
    # Everything else is as the admin's export has it.
    complete = export_document(populated)
    assert document["ledger"] == complete["ledger"]
    assert document["tables"] == {
        name: dump for name, dump in complete["tables"].items() if name in document["tables"]
    }


def test_an_older_export_without_secrets_imports_with_new_secrets(
    populated: Instance, request: pytest.FixtureRequest
) -> None:
    # What a reader's export held before public exports: every table, webhook secrets null.
    document = export_document(populated)
    del document["scope"]
    document["secrets"] = "withheld"
    hooks = document["tables"]["webhook"]
    position = hooks["columns"].index("secret")
    for row in hooks["rows"]:
        row[position] = None
    with (
        empty_database(populated.backend, request, "nosecrets") as url,
        open_instance(url, populated.clock) as target,
    ):
        with target.database.transaction() as session:
            report = import_document(session, document)
        (warning,) = report.warnings
        assert "webhook id=1" in warning
        assert "secret" in warning
        with target.database.transaction(write=False) as session:
            (hook,) = session.scalars(select(Webhook))
        assert hook.secret
        assert hook.secret != WEBHOOK_SECRET
        # The ledger never hashed the secret: the copy verifies to the same head.
        assert target.get("/ledger/verify") == populated.get("/ledger/verify")


def test_reads_need_a_key_when_reads_are_not_public(db_url: str, clock: FrozenClock) -> None:
    with open_instance(db_url, clock, public_read=False) as closed:
        problem(closed.client.get(f"{API}/export"), 401)
        problem(closed.client.get(f"{API}/export", params={"format": "csv"}), 401)
        response = closed.client.get(f"{API}/export", headers=closed.keys["viewer"])
        assert response.status_code == 200, response.text


@pytest.mark.parametrize("value", ["xml", "JSON", ""])
def test_an_unknown_format_is_a_422_naming_format(instance: Instance, value: str) -> None:
    response = instance.client.get(f"{API}/export", params={"format": value})
    assert invalid_fields(response) == ["format"]


def test_an_empty_database_exports_and_imports(
    instance: Instance, backend: str, request: pytest.FixtureRequest, clock: FrozenClock
) -> None:
    document = export_document(instance)
    assert document["ledger"] == {"length": 0, "head": "0" * 64}
    assert all(not dump["rows"] for name, dump in document["tables"].items() if name != "revision")
    with empty_database(backend, request, "empty") as url, open_instance(url, clock) as target:
        with target.database.transaction() as session:
            import_document(session, document)
        assert target.get("/ledger/verify")["ok"] is True


# --- streaming and the snapshot --------------------------------------------------------------


def test_rows_are_written_a_chunk_at_a_time(populated: Instance) -> None:
    now = populated.clock.now()
    with snapshot(populated.database) as session:
        pieces = list(export_chunks(session, now=now, scope="complete", chunk_rows=10))
    document = json.loads(b"".join(pieces))
    rows = sum(len(dump["rows"]) for dump in document["tables"].values())
    # A header, then per table an opening, ceil(rows / 10) chunks and a closing.
    expected = 2 + sum(2 + -(-len(dump["rows"]) // 10) for dump in document["tables"].values())
    assert len(pieces) == expected
    assert max(piece.count(b"\n[") for piece in pieces) == 10
    assert rows > 100
    assert document == export_document(populated)


def test_a_write_during_the_export_is_not_in_it(
    instance: Instance, backend: str, request: pytest.FixtureRequest, clock: FrozenClock
) -> None:
    with instance.database.transaction() as session:
        seed(session, clock)
    add_webhook(instance, "https://hooks.example.org/first")
    populated = instance
    before = populated.get("/ledger/verify")
    with snapshot(populated.database) as session:
        pieces = export_chunks(session, now=clock.now(), scope="complete", chunk_rows=5)
        written = [next(pieces), next(pieces)]
        # Committed by another connection while the export is half way.
        created = populated.client.post(
            f"{API}/pledges",
            json=pledge_body(id="written-meanwhile"),
            headers=populated.keys["analyst"],
        )
        assert created.status_code == 201, created.text
        add_webhook(populated, "https://hooks.example.org/meanwhile")
        written.extend(pieces)
    document = json.loads(b"".join(written))

    assert document["ledger"] == {"length": before["length"], "head": before["head"]}
    assert len(document["tables"]["ledger_entry"]["rows"]) == before["length"]
    pledge_ids = [row[0] for row in document["tables"]["pledge"]["rows"]]
    assert "written-meanwhile" not in pledge_ids
    assert len(document["tables"]["webhook"]["rows"]) == 1
    # Consistent: the snapshot imports and verifies.
    with (
        empty_database(backend, request, "snapshot") as url,
        open_instance(url, clock) as target,
    ):
        with target.database.transaction() as session:
            report = import_document(session, document)
        assert report.ledger.hash == before["head"]


# --- CSV ------------------------------------------------------------------------------------


def _csv(instance: Instance) -> tuple[Any, list[dict[str, str]]]:
    response = instance.client.get(f"{API}/export", params={"format": "csv"})
    assert response.status_code == 200, response.text
    rows = list(csv.DictReader(io.StringIO(response.content.decode("utf-8"), newline="")))
    return response, rows


def test_the_csv_has_one_row_per_pledge_as_status_shows_it(populated: Instance) -> None:
    response, rows = _csv(populated)

    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == (
        'attachment; filename="pledgewatch-20250116T131400Z.csv"'
    )
    assert response.content.decode().splitlines()[0] == ",".join(CSV_COLUMNS)
    assert response.content.endswith(b"\r\n")
    status = populated.get("/status")["pledges"]
    assert [row["id"] for row in rows] == [pledge["id"] for pledge in status]
    for row, shown in zip(rows, status, strict=True):
        for column in CSV_COLUMNS[:10]:
            value = shown[column]
            expected = (
                ""
                if value is None
                else str(value).lower()
                if isinstance(value, bool)
                else spreadsheet_safe(str(value))
            )
            assert row[column] == expected, (row["id"], column)
    (mine,) = [row for row in rows if row["id"] == PLEDGE]
    assert mine["made_by"] == "US CN"
    assert mine["made_to"] == "US CN"
    assert mine["topics"] == "narcotics trade"
    assert mine["title"] == "'" + AWKWARD_TITLE, "a formula is defused"
    pledge = populated.get(f"/pledges/{PLEDGE}")
    assert mine["status"] == pledge["status"]
    assert mine["overdue"] == str(pledge["overdue"]).lower()


def test_an_empty_database_gives_a_csv_of_just_the_header(instance: Instance) -> None:
    response, rows = _csv(instance)
    assert rows == []
    assert response.content == (",".join(CSV_COLUMNS) + "\r\n").encode()


@pytest.mark.parametrize(
    "title",
    [
        "=1+1",
        "+SUM(A1:A2)",
        "-2+3",
        "@cmd",
        "\tHidden tab",
        "\rcarriage",
        "＝HYPERLINK(1)",
        '=cmd|" /C calc"!A0',
    ],
)
def test_cells_a_spreadsheet_would_run_get_an_apostrophe(instance: Instance, title: str) -> None:
    created = instance.client.post(
        f"{API}/pledges",
        json=pledge_body(id="formula", title=title),
        headers=instance.keys["analyst"],
    )
    assert created.status_code == 201, created.text
    _, rows = _csv(instance)
    (row,) = rows
    assert row["title"] == "'" + title
    assert row["id"] == "formula"


@pytest.mark.parametrize(
    ("cell", "safe"),
    [
        ("plain title", "plain title"),
        ("2024-06-01T08:30:00Z", "2024-06-01T08:30:00Z"),
        ("a = b", "a = b"),
        (" =1", " =1"),
        ("", ""),
        ("=1", "'=1"),
        ("-1", "'-1"),
        ("@x", "'@x"),
        ("＠x", "'＠x"),
    ],
)
def test_spreadsheet_safe(cell: str, safe: str) -> None:
    assert spreadsheet_safe(cell) == safe


def test_a_real_server_streams_the_export_and_survives_clients_that_leave(
    populated: Instance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One pooled connection, so two admission slots: an abandoned export that kept its slot
    # would leave the server unable to answer within a few requests.
    monkeypatch.setenv("PLEDGEWATCH_DB_POOL_SIZE", "1")
    expected = export_document(populated)
    with running_server(populated.url, tmp_path / "server.log") as base:
        url = f"{base}{API}/export"
        with httpx.stream("GET", url, headers=populated.keys["admin"], timeout=30) as response:
            assert response.status_code == 200
            assert response.headers["transfer-encoding"] == "chunked"
            assert "content-length" not in response.headers
            document = json.loads(response.read())
        assert document["tables"] == expected["tables"]
        assert document["ledger"] == expected["ledger"]

        for _ in range(4):
            with httpx.stream("GET", url, timeout=10) as abandoned:
                assert abandoned.status_code == 200
                next(abandoned.iter_raw(1024))
        status = httpx.get(f"{base}{API}/status", timeout=10)
        assert status.status_code == 200
        again = httpx.get(url, params={"format": "csv"}, timeout=10)
        assert again.status_code == 200
