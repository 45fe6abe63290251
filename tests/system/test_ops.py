"""Operations: liveness, readiness, metrics, request ids and the JSON access log."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.cli import EXIT_NOT_MIGRATED, EXIT_UNREACHABLE
from app.clock import FrozenClock
from app.config import Settings
from app.db import Database
from app.logs import JsonFormatter
from app.main import create_app
from app.migrate import alembic_config, downgrade, head_revision, upgrade
from tests.conftest import postgres_database_name, scratch_postgres
from tests.e2e.conftest import free_port
from tests.factories import pledge_body

REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


# --- liveness and readiness -------------------------------------------------------------


def test_healthz_answers_ok(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_ok_with_the_schema_at_head(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok", "schema": head_revision()}


def _previous_revision() -> str:
    previous = (
        ScriptDirectory.from_config(alembic_config("sqlite://"))
        .get_revision(head_revision())
        .down_revision
    )
    assert isinstance(previous, str)
    return previous


def test_readyz_names_the_missing_migration_when_the_schema_is_behind(
    client: TestClient, db_url: str
) -> None:
    previous, head = _previous_revision(), head_revision()
    downgrade(db_url, previous)
    try:
        response = client.get("/readyz")
        assert response.status_code == 503, response.text
        body = response.json()
        assert body == {
            "status": "unavailable",
            "reason": f"schema at {previous}, this version needs {head} (missing {head}): "
            "run `pledgewatch db upgrade`",
            "schema": {"current": previous, "head": head, "missing": [head]},
        }
        # Liveness does not depend on the database.
        assert client.get("/healthz").status_code == 200
    finally:
        # The PostgreSQL database is shared by this worker's later tests.
        upgrade(db_url)
    assert client.get("/readyz").status_code == 200


def test_readyz_is_503_on_a_database_never_migrated(tmp_path: Path) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'empty.db'}", log_json=False, scheduler_enabled=False
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        response = test_client.get("/readyz")
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["reason"].startswith(f"never migrated, this version needs {head_revision()}")
    assert body["schema"]["current"] is None
    assert body["schema"]["missing"][-1] == head_revision()


def test_readyz_is_503_when_the_database_is_unreachable() -> None:
    # Nothing listens on port 1: the connection is refused at once.
    settings = Settings(
        database_url="postgresql+psycopg://nobody:secret@127.0.0.1:1/nothing",
        log_json=False,
        scheduler_enabled=False,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        response = test_client.get("/readyz")
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["reason"].startswith("database unreachable: OperationalError")
    assert "schema" not in body, "nothing is known of the schema"
    assert "secret" not in response.text


# --- starting on a database that is not ready ------------------------------------------


@pytest.fixture
def empty_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A database that exists and is empty: an SQLite file, or a new PostgreSQL database."""
    if backend == "sqlite":
        path = tmp_path / "empty.db"
        path.touch()
        yield f"sqlite:///{path}"
        return
    with scratch_postgres(postgres_database_name("unmigrated")) as url:
        yield url


def _start(command: str, url: str, *options: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PLEDGEWATCH_DATABASE_URL": url, "PLEDGEWATCH_LOG_LEVEL": "INFO"}
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", command, *options],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _refusal(command: str, url: str, *options: str) -> tuple[int, str]:
    process = _start(command, url, *options)
    try:
        # A safety net only: before the fix the process served (and logged) for ever.
        output, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"`pledgewatch {command}` did not exit; it wrote:\n{output[-3000:]}")
    return process.returncode, output


@pytest.mark.slow
@pytest.mark.parametrize("command", ["serve", "scheduler"])
def test_starting_on_an_empty_database_says_what_to_run_in_one_line_and_exits(
    empty_url: str, command: str
) -> None:
    options = ("--port", str(free_port())) if command == "serve" else ()

    status, output = _refusal(command, empty_url, *options)

    assert status == EXIT_NOT_MIGRATED, output
    (line,) = output.splitlines()
    assert line.startswith("database ")
    assert line.endswith(
        f"never migrated, this version needs {head_revision()} "
        f"(missing {', '.join(_all_revisions())}): run `pledgewatch db upgrade`"
    )
    assert "Traceback" not in output


@pytest.mark.slow
def test_starting_on_a_schema_behind_names_the_missing_revision(empty_url: str) -> None:
    upgrade(empty_url, _previous_revision())

    status, output = _refusal("serve", empty_url, "--port", str(free_port()))

    assert status == EXIT_NOT_MIGRATED, output
    assert output.strip().endswith(
        f"schema at {_previous_revision()}, this version needs {head_revision()} "
        f"(missing {head_revision()}): run `pledgewatch db upgrade`"
    )


@pytest.mark.slow
def test_starting_on_an_unreachable_database_says_so_and_exits() -> None:
    status, output = _refusal("serve", "postgresql://nobody:secret@127.0.0.1:1/nothing")

    assert status == EXIT_UNREACHABLE, output
    (line,) = output.splitlines()
    assert "database unreachable: OperationalError" in line
    assert "secret" not in output


@pytest.mark.slow
def test_serve_waits_quietly_for_the_migrations_when_asked_to(
    empty_url: str, tmp_path: Path
) -> None:
    port = free_port()
    process = _start("serve", empty_url, "--port", str(port), "--wait-for-migrations")
    try:
        assert process.stdout is not None
        waiting = process.stdout.readline()
        assert waiting.rstrip().endswith("run `pledgewatch db upgrade`; waiting"), waiting
        assert process.poll() is None, "it waits instead of exiting"

        upgrade(empty_url)

        ready = False
        for _ in range(600):
            with contextlib.suppress(httpx.TransportError):
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
            if ready or process.poll() is not None:
                break
            time.sleep(0.1)
        assert ready, "it serves once the schema is at head"
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert "waiting" not in output, "one line while waiting (read above), not one per check"
    assert "Traceback" not in output


def _all_revisions() -> list[str]:
    scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return [script.revision for script in scripts.walk_revisions()][::-1]


# --- metrics ----------------------------------------------------------------------------


def _requests_total(client: TestClient) -> dict[tuple[str, str, str], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(response.text):
        if family.name != "pledgewatch_http_requests":
            continue
        for sample in family.samples:
            if sample.name == "pledgewatch_http_requests_total":
                labels = sample.labels
                samples[(labels["method"], labels["route"], labels["status"])] = sample.value
    return samples


def test_metrics_count_requests_by_route_template(client: TestClient) -> None:
    before = _requests_total(client)
    assert client.get("/healthz").status_code == 200
    assert client.get("/api/v1/pledges/no-such-pledge").status_code == 404
    after = _requests_total(client)

    healthz = ("GET", "/healthz", "200")
    assert after[healthz] == before.get(healthz, 0) + 1
    # Labelled by the route's template, not the concrete path.
    one_pledge = ("GET", "/api/v1/pledges/{pledge_id}", "404")
    assert after[one_pledge] == before.get(one_pledge, 0) + 1
    assert "pledgewatch_http_requests_total{" in client.get("/metrics").text


def test_metrics_do_not_label_unknown_paths(client: TestClient) -> None:
    unknown = f"/no/such/{uuid.uuid4().hex}"
    assert client.get(unknown).status_code == 404
    text = client.get("/metrics").text
    assert unknown not in text
    assert ("GET", "unmatched", "404") in _requests_total(client)


# --- request ids ------------------------------------------------------------------------


def test_every_response_has_a_request_id(
    client: TestClient, keys: dict[str, dict[str, str]]
) -> None:
    responses = [
        client.get("/healthz"),
        client.get("/readyz"),
        client.get("/metrics"),
        client.get("/api/v1/status"),
        client.get("/api/v1/pledges/no-such-pledge"),  # 404
        client.get("/no/such/page"),  # 404 outside the API
        client.post("/api/v1/pledges", json=pledge_body()),  # 401
        client.post("/api/v1/pledges", json=pledge_body(), headers=keys["viewer"]),  # 403
        client.post("/api/v1/pledges", content=b"{not json", headers=keys["analyst"]),  # 422
        client.post("/api/v1/pledges", content=b"x" * (1024 * 1024 + 1)),  # 413
    ]
    assert [r.status_code for r in responses] == [200, 200, 200, 200, 404, 404, 401, 403, 422, 413]
    ids = [r.headers.get("x-request-id") for r in responses]
    for response, request_id in zip(responses, ids, strict=True):
        assert request_id is not None, response.url
        assert REQUEST_ID.match(request_id), request_id
        assert len(response.headers.get_list("x-request-id")) == 1
    assert len(set(ids)) == len(ids), "each request gets its own id"


def test_an_unexpected_error_is_a_problem_with_the_request_id(
    restore_logging: None, db_url: str, clock: FrozenClock, database: Database
) -> None:
    settings = Settings(
        database_url=db_url, log_json=True, log_level="INFO", scheduler_enabled=False
    )
    app = create_app(settings, clock=clock, database=database)

    def boom() -> None:
        raise RuntimeError("kaboom")

    app.add_api_route("/boom-for-test", boom)
    buffer = io.StringIO()
    with TestClient(app, raise_server_exceptions=False) as test_client:
        logging.getLogger().handlers = [_json_handler(buffer)]
        response = test_client.get("/boom-for-test", headers={"X-Request-ID": "boom-1"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 500
    assert "kaboom" not in response.text, "internals stay in the logs"
    assert response.headers.get_list("x-request-id") == ["boom-1"]
    logged = [e for e in _json_lines(buffer) if e.get("request_id") == "boom-1"]
    assert any("kaboom" in e.get("exception", "") for e in logged), buffer.getvalue()
    assert any(e["logger"] == "pledgewatch.access" and e["status"] == 500 for e in logged)


@pytest.mark.parametrize("request_id", ["abc-123", "trace.ABC_def-42", "x" * 64])
def test_a_sane_incoming_request_id_is_echoed(client: TestClient, request_id: str) -> None:
    response = client.get("/healthz", headers={"X-Request-ID": request_id})
    assert response.headers["x-request-id"] == request_id


@pytest.mark.parametrize(
    "hostile",
    [
        "has spaces",
        "x" * 500,
        "x" * 65,
        "<script>alert(1)</script>",
        "a;b=c",
        "",
        "café".encode(),
    ],
)
def test_a_hostile_incoming_request_id_is_replaced(
    client: TestClient, hostile: str | bytes
) -> None:
    response = client.get("/healthz", headers={"X-Request-ID": hostile})
    assert response.status_code == 200
    given = hostile if isinstance(hostile, str) else hostile.decode("latin-1")
    echoed = response.headers["x-request-id"]
    assert echoed != given
    assert REQUEST_ID.match(echoed), echoed


def test_an_idempotent_replay_carries_its_own_request_id(
    client: TestClient, keys: dict[str, dict[str, str]]
) -> None:
    def post(request_id: str) -> Any:
        return client.post(
            "/api/v1/pledges",
            json=pledge_body(),
            headers={**keys["analyst"], "Idempotency-Key": "ops-1", "X-Request-ID": request_id},
        )

    first = post("first-try")
    replay = post("second-try")
    assert first.status_code == replay.status_code == 201, replay.text
    assert replay.headers.get("idempotent-replayed") == "true"
    assert replay.headers.get_list("x-request-id") == ["second-try"]
    assert first.headers.get_list("x-request-id") == ["first-try"]


# --- the access log ---------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """The app's lifespan configures the root logger; put it back as it was."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    access = logging.getLogger("uvicorn.access")
    disabled = access.disabled
    yield
    root.handlers = handlers
    root.setLevel(level)
    access.disabled = disabled


def _json_handler(buffer: io.StringIO) -> logging.Handler:
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    return handler


def _json_lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def test_the_access_log_is_json_with_the_request_id(
    restore_logging: None,
    db_url: str,
    database: Database,
    clock: FrozenClock,
    keys: dict[str, dict[str, str]],
) -> None:
    settings = Settings(
        database_url=db_url, log_json=True, log_level="INFO", scheduler_enabled=False
    )
    buffer = io.StringIO()
    app = create_app(settings, clock=clock, database=database)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        (handler,) = logging.getLogger().handlers
        assert isinstance(handler, logging.StreamHandler)
        assert isinstance(handler.formatter, JsonFormatter)
        handler.setStream(buffer)
        test_client.get("/healthz", headers={"X-Request-ID": "trace-123"})
        created = test_client.post("/api/v1/pledges", json=pledge_body(), headers=keys["analyst"])
        assert created.status_code == 201, created.text
        handler.setStream(sys.stderr)

    access = [e for e in _json_lines(buffer) if e["logger"] == "pledgewatch.access"]
    assert len(access) == 2, buffer.getvalue()
    health, post = access
    assert health["request_id"] == "trace-123"
    assert health["message"] == "request"
    assert health["level"] == "info"
    assert health["method"] == "GET"
    assert health["path"] == "/healthz"
    assert health["status"] == 200
    assert isinstance(health["duration_ms"], int | float)
    assert health["at"].endswith("+00:00")
    assert health["actor"] is None

    assert post["request_id"] == created.headers["x-request-id"]
    assert post["status"] == 201
    assert post["actor"] == "key:analyst"
    secret = keys["analyst"]["Authorization"].removeprefix("Bearer ")
    assert secret not in buffer.getvalue(), "API keys never reach the logs"


# --- the JSON formatter -----------------------------------------------------------------


def _record(msg: str, *args: object, **extra: Any) -> logging.LogRecord:
    record = logging.getLogger("pledgewatch.test").makeRecord(
        "pledgewatch.test", logging.WARNING, __file__, 1, msg, args, None, extra=extra
    )
    return record


def test_json_formatter_writes_one_object_with_the_extra_fields() -> None:
    record = _record(
        "hello %s", "wörld", request_id="abc", status=201, nested={"a": [1, 2]}, _private=1
    )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "hello wörld"
    assert entry["level"] == "warning"
    assert entry["logger"] == "pledgewatch.test"
    assert entry["request_id"] == "abc"
    assert entry["status"] == 201
    assert entry["nested"] == {"a": [1, 2]}
    assert "_private" not in entry
    # The LogRecord's own attributes are not repeated.
    for standard in ("pathname", "lineno", "args", "msg", "levelno", "created", "process"):
        assert standard not in entry
    assert "wörld" in line, "non-ASCII text is kept readable"


def test_json_formatter_copes_with_values_json_cannot_encode() -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque!"

    entry = json.loads(JsonFormatter().format(_record("x", thing=Opaque(), raw=b"\x00\xff")))
    assert entry["thing"] == "opaque!"
    assert isinstance(entry["raw"], str)


def test_json_formatter_keeps_the_exception_on_the_same_line() -> None:
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        record = logging.getLogger("t").makeRecord(
            "t", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert "RuntimeError: boom" in entry["exception"]
    assert "Traceback" in entry["exception"]
