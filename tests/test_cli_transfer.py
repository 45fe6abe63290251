"""``pledgewatch export`` and ``pledgewatch import``: how an operator moves a database.

Both backends, and SQLite to PostgreSQL: the way a user outgrows the embedded default.
"""

from __future__ import annotations

import csv
import io
import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from app.cli import app
from app.clock import FrozenClock
from app.config import get_settings
from tests.domain.transfer.support import (
    PLEDGE,
    WEBHOOK_SECRET,
    Exported,
    empty_database,
    export_populated,
    observe,
    open_instance,
)

runner = CliRunner()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def exported(request: pytest.FixtureRequest) -> Exported:
    return export_populated(request.param, request)


@pytest.fixture
def use_database(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Point the command's settings at a database."""

    def point(url: str) -> None:
        monkeypatch.setenv("PLEDGEWATCH_DATABASE_URL", url)
        get_settings.cache_clear()

    yield point
    get_settings.cache_clear()


def run(*args: str, stdin: bytes | None = None) -> Result:
    return runner.invoke(app, list(args), input=stdin)


def test_export_then_import_rebuilds_the_database(
    exported: Exported,
    use_database: Any,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    with empty_database(exported.backend, request, "cli_source") as source:
        # Load the reference export into a database, then round-trip that through the CLI.
        use_database(source)
        original = tmp_path / "original.json"
        original.write_text(json.dumps(exported.document))
        loaded = run("import", str(original))
        assert loaded.exit_code == 0, loaded.output

        file = tmp_path / "pledgewatch.json"
        result = run("export", "--output", str(file))
        assert result.exit_code == 0, result.output
        assert result.stdout == ""
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, "it holds webhook secrets"
        assert not (tmp_path / "pledgewatch.json.partial").exists()
        document = json.loads(file.read_bytes())
        assert document["secrets"] == "included"
        assert document["tables"] == exported.document["tables"]

    with empty_database(exported.backend, request, "cli_target") as target:
        use_database(target)
        result = run("import", str(file))
        assert result.exit_code == 0, result.output
        head = exported.seen["verify"]["head"]
        assert f"ledger verified: {exported.seen['verify']['length']} entries, head {head}" in (
            result.stderr
        )
        verified = run("ledger", "verify")
        assert verified.exit_code == 0, verified.output
        assert head in verified.stderr
        with open_instance(target, FrozenClock(exported.at)) as instance:
            after = observe(instance)
        for key in exported.seen:
            assert after[key] == exported.seen[key], key


@pytest.mark.parametrize("exported", ["sqlite"], indirect=True)
def test_moving_from_sqlite_to_postgresql(
    exported: Exported, use_database: Any, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    with empty_database("sqlite", request, "embedded") as embedded:
        use_database(embedded)
        original = tmp_path / "original.json"
        original.write_text(json.dumps(exported.document))
        assert run("import", str(original)).exit_code == 0
        exported_file = tmp_path / "move.json"
        assert run("export", "-o", str(exported_file)).exit_code == 0

    with empty_database("postgresql", request, "grown_up") as server:
        use_database(server)
        # Standard input works too: `pledgewatch export | pledgewatch import -`.
        result = run("import", "-", stdin=exported_file.read_bytes())
        assert result.exit_code == 0, result.output
        with open_instance(server, FrozenClock(exported.at)) as instance:
            after = observe(instance)
    for key in exported.seen:
        assert after[key] == exported.seen[key], key


def test_export_to_standard_output_and_as_csv(
    exported: Exported, use_database: Any, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    with empty_database(exported.backend, request, "cli_stdout") as url:
        use_database(url)
        original = tmp_path / "original.json"
        original.write_text(json.dumps(exported.document))
        assert run("import", str(original)).exit_code == 0

        result = run("export")
        assert result.exit_code == 0, result.output
        document = json.loads(result.stdout_bytes)
        assert document["tables"] == exported.document["tables"]
        hooks = document["tables"]["webhook"]
        assert hooks["rows"][0][hooks["columns"].index("secret")] == WEBHOOK_SECRET

        table = run("export", "--format", "csv")
        assert table.exit_code == 0, table.output
        rows = list(csv.DictReader(io.StringIO(table.stdout_bytes.decode(), newline="")))
        pledge_rows = exported.document["tables"]["pledge"]["rows"]
        assert sorted(row["id"] for row in rows) == sorted(row[0] for row in pledge_rows)
        (mine,) = [row for row in rows if row["id"] == PLEDGE]
        assert mine["title"].startswith("'="), "the formula is defused"

        refused = run("export", "--format", "xml")
        assert refused.exit_code == 2
        assert "xml" in refused.output


def test_import_refuses_clearly_and_writes_nothing(
    exported: Exported, use_database: Any, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(exported.document))
    tampered_document = json.loads(good.read_text())
    pledges = tampered_document["tables"]["pledge"]
    pledges["rows"][0][pledges["columns"].index("title")] = "Rewritten"
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(tampered_document))
    broken = tmp_path / "broken.json"
    broken.write_text(good.read_text()[:-100])

    with empty_database(exported.backend, request, "cli_refusals") as url:
        use_database(url)
        for args, message in [
            (["import", str(tmp_path / "missing.json")], "cannot read"),
            (["import", str(broken)], "is not valid JSON"),
            (["import", str(tampered)], "tables.pledge.rows[0]"),
        ]:
            result = run(*args)
            assert result.exit_code == 2, (args, result.output)
            assert message in result.stderr, result.stderr
            assert "Traceback" not in result.output
            assert result.stdout == ""

        assert run("import", str(good)).exit_code == 0
        again = run("import", str(good))
        assert again.exit_code == 2
        assert "import refused, nothing was written" in again.stderr
        assert "not empty" in again.stderr
        verified = run("ledger", "verify")
        assert verified.exit_code == 0, verified.output
        assert exported.seen["verify"]["head"] in verified.stderr
