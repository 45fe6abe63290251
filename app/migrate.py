"""Running the Alembic migrations from code (CLI, tests, start-up checks)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory


def _project_root() -> Path:
    """Where ``alembic.ini`` and ``migrations/`` are.

    In a checkout (or an editable install) they sit next to the ``app`` package. A
    regular install (``pip install .``, the Docker image) puts only ``app`` in
    site-packages, so then they are looked for in the working directory.
    """
    for candidate in (Path(__file__).resolve().parent.parent, Path.cwd()):
        if (candidate / "alembic.ini").is_file() and (candidate / "migrations").is_dir():
            return candidate
    return Path(__file__).resolve().parent.parent


ROOT = _project_root()


def alembic_config(url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    if head is None:  # pragma: no cover - the repository always has migrations
        raise RuntimeError("no migrations found")
    return head
