"""``pledgewatch ledger verify`` names forged derived state too, and exits 1 (both databases)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from typer.testing import CliRunner

from app.cli import app
from app.config import get_settings
from app.db import Database
from tests.domain.proposals.support import add_evidence, new_pledge, set_status
from tests.factories import Keys

runner = CliRunner()
P = "cli-verify-pledge"


@pytest.fixture
def command_on_database(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("PLEDGEWATCH_DATABASE_URL", db_url)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _output(arguments: list[str]) -> tuple[int, str]:
    result = runner.invoke(app, arguments)
    return result.exit_code, " ".join(result.output.split())


@pytest.mark.usefixtures("command_on_database")
def test_a_forged_status_and_count_fail_the_command_naming_the_pledge(
    client: TestClient, keys: Keys, database: Database
) -> None:
    new_pledge(client, keys, P)
    add_evidence(client, keys, P)
    set_status(client, keys, P, "in_progress")
    assert _output(["ledger", "verify"])[0] == 0

    with database.transaction() as session:
        session.execute(
            text("UPDATE pledge SET status = 'kept', verification = 'verified', evidence_count = 4")
        )
    code, output = _output(["ledger", "verify"])
    assert code == 1
    assert f"first bad: pledge:{P}: status is 'kept' but its history says 'in_progress'" in output
    assert f"also: pledge:{P}: verification is 'verified' but its accepted evidence" in output
    assert f"also: pledge:{P}: evidence_count is 4 but its links make 1" in output
