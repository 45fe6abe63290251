"""The ``pledgewatch`` command: schema upgrades and API keys."""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from typer.testing import CliRunner

from app.cli import app
from app.config import get_settings
from app.db import Database
from app.domain.keys.models import ApiKey
from app.domain.keys.service import Principal, authenticate
from app.migrate import head_revision

runner = CliRunner()


@pytest.fixture
def cli_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh SQLite file that the command's settings point at."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("PLEDGEWATCH_DATABASE_URL", url)
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()


@pytest.fixture
def migrated(cli_db: str) -> str:
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    return cli_db


def _principal(url: str, secret: str) -> Principal | None:
    database = Database(url, pool_size=1)
    try:
        with database.transaction(write=False) as session:
            return authenticate(session, secret, now=datetime.now(UTC))
    finally:
        database.dispose()


def _key_count(url: str) -> int:
    database = Database(url, pool_size=1)
    try:
        with database.transaction(write=False) as session:
            return session.scalar(select(func.count()).select_from(ApiKey)) or 0
    finally:
        database.dispose()


def test_db_upgrade_migrates_to_head_and_can_run_again(cli_db: str) -> None:
    for _ in range(2):
        result = runner.invoke(app, ["db", "upgrade"])
        assert result.exit_code == 0, result.output
        assert result.stdout == ""
    database = Database(cli_db, pool_size=1)
    try:
        with database.engine.connect() as conn:
            found = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        database.dispose()
    assert found == head_revision()


def test_keys_create_prints_only_the_key_and_the_key_works(migrated: str) -> None:
    result = runner.invoke(app, ["keys", "create", "--role", "analyst", "--name", "alice"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    (secret,) = lines
    assert result.stdout == secret + "\n"
    assert secret.startswith("pw_")
    assert secret == secret.strip()
    assert " " not in secret
    assert len(secret) >= 40

    assert _principal(migrated, secret) == Principal(name="alice", role="analyst")
    assert _principal(migrated, secret + "x") is None


def test_each_key_is_new(migrated: str) -> None:
    first = runner.invoke(app, ["keys", "create", "--role", "collector", "--name", "job-1"])
    second = runner.invoke(app, ["keys", "create", "--role", "collector", "--name", "job-2"])
    assert first.exit_code == second.exit_code == 0, first.output + second.output
    assert first.stdout != second.stdout
    assert _principal(migrated, first.stdout.strip()) == Principal(name="job-1", role="collector")
    assert _principal(migrated, second.stdout.strip()) == Principal(name="job-2", role="collector")


def test_the_same_name_twice_is_refused_clearly(migrated: str) -> None:
    first = runner.invoke(app, ["keys", "create", "--role", "analyst", "--name", "alice"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, ["keys", "create", "--role", "admin", "--name", "alice"])
    assert again.exit_code != 0
    assert again.exit_code == 2, "a refusal, not a crash"
    assert again.stdout == "", "no key is printed"
    assert "alice" in again.stderr
    assert "already exists" in again.stderr
    assert "Traceback" not in again.output
    assert _key_count(migrated) == 1
    # The first key is untouched and keeps its role.
    assert _principal(migrated, first.stdout.strip()) == Principal(name="alice", role="analyst")


def test_a_name_with_markup_characters_is_reported_as_typed(migrated: str) -> None:
    name = "[/bold] job [red]"
    first = runner.invoke(app, ["keys", "create", "--role", "viewer", "--name", name])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, ["keys", "create", "--role", "viewer", "--name", name])
    assert again.exit_code == 2, again.output
    assert name in again.stderr
    assert "already exists" in again.stderr


@pytest.mark.parametrize("role", ["boss", "ADMIN", "", "root"])
def test_a_bad_role_is_refused_clearly(migrated: str, role: str) -> None:
    result = runner.invoke(app, ["keys", "create", "--role", role, "--name", "bob"])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert "role" in result.stderr
    for known in ("viewer", "collector", "analyst", "admin"):
        assert known in result.stderr
    assert _key_count(migrated) == 0


@pytest.mark.parametrize("name", ["", "x" * 101, "tab\there"])
def test_a_bad_name_is_refused_clearly(migrated: str, name: str) -> None:
    result = runner.invoke(app, ["keys", "create", "--role", "viewer", "--name", name])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert "name" in result.stderr
    assert _key_count(migrated) == 0


def test_keys_create_needs_both_options(migrated: str) -> None:
    assert runner.invoke(app, ["keys", "create", "--name", "x"]).exit_code == 2
    assert runner.invoke(app, ["keys", "create", "--role", "viewer"]).exit_code == 2
    assert _key_count(migrated) == 0


def _create(*args: str) -> str:
    result = runner.invoke(app, ["keys", "create", *args])
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def _key(url: str, name: str) -> ApiKey:
    database = Database(url, pool_size=1)
    try:
        with database.transaction(write=False) as session:
            return session.scalars(select(ApiKey).where(ApiKey.name == name)).one()
    finally:
        database.dispose()


def test_keys_create_with_an_expiry(migrated: str) -> None:
    before = datetime.now(UTC)
    _create("--role", "collector", "--name", "job", "--expires-in", "90d")
    expires_at = _key(migrated, "job").expires_at
    assert expires_at is not None
    assert before + timedelta(days=90) <= expires_at <= datetime.now(UTC) + timedelta(days=90)


@pytest.mark.parametrize("lifetime", ["90", "soon", "0d", "-1d", "1.5h", "90 days", "4000d"])
def test_a_nonsense_expiry_is_refused_clearly(migrated: str, lifetime: str) -> None:
    result = runner.invoke(
        app, ["keys", "create", "--role", "viewer", "--name", "x", "--expires-in", lifetime]
    )
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert "--expires-in" in result.stderr
    assert "Traceback" not in result.output
    assert _key_count(migrated) == 0


def test_keys_list_shows_every_key_and_never_a_secret(migrated: str) -> None:
    secret = _create("--role", "admin", "--name", "root")
    _create("--role", "collector", "--name", "ci job", "--expires-in", "12h")
    _create("--role", "viewer", "--name", "gone")
    assert runner.invoke(app, ["keys", "revoke", "gone"]).exit_code == 0

    result = runner.invoke(app, ["keys", "list"])
    assert result.exit_code == 0, result.output
    header, *rows = (re.split(r"\s{2,}", line.strip()) for line in result.stdout.splitlines())
    assert header == ["NAME", "ROLE", "CREATED", "ROTATED", "EXPIRES", "LAST USED", "REVOKED"]
    table = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
    assert list(table) == ["ci job", "gone", "root"]
    assert [row["ROLE"] for row in table.values()] == ["collector", "viewer", "admin"]
    ci_job = table["ci job"]
    lifetime = _minute(ci_job["EXPIRES"]) - _minute(ci_job["CREATED"])
    assert timedelta(hours=11, minutes=59) <= lifetime <= timedelta(hours=12)
    assert (ci_job["ROTATED"], ci_job["LAST USED"], ci_job["REVOKED"]) == ("-", "-", "-")
    assert _minute(table["gone"]["REVOKED"]) <= datetime.now(UTC)
    assert table["root"]["REVOKED"] == table["root"]["EXPIRES"] == "-"
    assert secret not in result.output
    assert _key(migrated, "root").key_hash not in result.output


def _minute(cell: str) -> datetime:
    return datetime.strptime(cell, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


def test_keys_revoke_stops_the_key_and_says_so(migrated: str) -> None:
    secret = _create("--role", "analyst", "--name", "alice")
    result = runner.invoke(app, ["keys", "revoke", "alice"])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "revoked" in result.stderr
    assert _principal(migrated, secret) is None
    revoked_at = _key(migrated, "alice").revoked_at

    again = runner.invoke(app, ["keys", "revoke", "alice"])
    assert again.exit_code == 0, again.output
    assert "already revoked" in again.stderr
    assert _key(migrated, "alice").revoked_at == revoked_at


def test_keys_revoke_of_an_unknown_name_is_refused_clearly(migrated: str) -> None:
    result = runner.invoke(app, ["keys", "revoke", "nobody"])
    assert result.exit_code == 2, result.output
    assert "no key is named 'nobody'" in result.stderr


def test_keys_rotate_prints_the_new_key_alone_on_the_last_line(migrated: str) -> None:
    old = _create("--role", "analyst", "--name", "a-rather-long-name-" + "x" * 60)
    result = runner.invoke(app, ["keys", "rotate", "a-rather-long-name-" + "x" * 60])
    assert result.exit_code == 0, result.output
    new = result.stdout.splitlines()[-1]
    assert result.stdout.endswith(new + "\n")
    assert new.startswith("pw_")
    assert new == new.strip()
    assert len(new) >= 40
    assert new != old
    assert _principal(migrated, old) is None
    name = "a-rather-long-name-" + "x" * 60
    assert _principal(migrated, new) == Principal(name=name, role="analyst")


def test_keys_rotate_sets_a_new_expiry_or_keeps_the_lifetime(migrated: str) -> None:
    _create("--role", "collector", "--name", "job", "--expires-in", "30d")
    result = runner.invoke(app, ["keys", "rotate", "job"])
    assert result.exit_code == 0, result.output
    key = _key(migrated, "job")
    assert key.expires_at is not None
    assert key.rotated_at is not None
    assert key.expires_at - key.rotated_at == timedelta(days=30)

    result = runner.invoke(app, ["keys", "rotate", "job", "--expires-in", "2w"])
    assert result.exit_code == 0, result.output
    key = _key(migrated, "job")
    assert key.expires_at is not None
    assert key.rotated_at is not None
    assert key.expires_at - key.rotated_at == timedelta(weeks=2)

    refused = runner.invoke(app, ["keys", "rotate", "job", "--expires-in", "never"])
    assert refused.exit_code == 2
    assert "--expires-in" in refused.stderr


def test_keys_rotate_refuses_a_revoked_or_unknown_key(migrated: str) -> None:
    _create("--role", "collector", "--name", "job")
    assert runner.invoke(app, ["keys", "revoke", "job"]).exit_code == 0
    result = runner.invoke(app, ["keys", "rotate", "job"])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert "revoked" in result.stderr
    assert runner.invoke(app, ["keys", "rotate", "nobody"]).exit_code == 2


def test_ledger_verify_passes_on_a_seeded_database_and_names_a_row_edited_with_sqlite3(
    migrated: str,
) -> None:
    seeded = runner.invoke(app, ["seed"])
    assert seeded.exit_code == 0, seeded.output
    clean = runner.invoke(app, ["ledger", "verify"])
    assert clean.exit_code == 0, clean.output
    assert "ledger ok" in clean.output

    path = migrated.removeprefix("sqlite:///")
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE evidence SET title = 'Quietly edited' WHERE id = 3")
        (seq,) = connection.execute(
            "SELECT max(seq) FROM ledger_entry WHERE subject = 'evidence:3'"
        ).fetchone()
    connection.close()

    tampered = runner.invoke(app, ["ledger", "verify"])
    assert tampered.exit_code == 1
    output = " ".join(tampered.output.split())
    assert f"first bad: entry {seq}, evidence:3" in output
    assert "differs from what entry" in output


def test_serve_caps_malloc_arenas_unless_the_operator_chose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.cli import limit_malloc_arenas

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    limit_malloc_arenas(2)
    # Worker processes inherit it; this process applied it with mallopt.
    assert os.environ["MALLOC_ARENA_MAX"] == "2"

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    limit_malloc_arenas(2)
    assert os.environ["MALLOC_ARENA_MAX"] == "4"
