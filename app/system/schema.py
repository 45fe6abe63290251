"""Is the database reachable, and is its schema the one this code needs?

``/readyz``, ``pledgewatch serve`` and ``pledgewatch scheduler`` ask the same
question here, so each tells an unreachable database from an unmigrated one, and
names the migrations that are missing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, inspect, text

from app.migrate import alembic_config

UPGRADE = "pledgewatch db upgrade"


@lru_cache(maxsize=1)
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config("sqlite://"))


def head() -> str:
    """The newest revision this code knows."""
    newest = _scripts().get_current_head()
    if newest is None:  # pragma: no cover - the repository always has migrations
        raise RuntimeError("no migrations found")
    return newest


@dataclass(frozen=True)
class SchemaState:
    """What a look at the database found.

    ``error`` is set when it could not be reached (then nothing else is known);
    ``current`` is None on a database never migrated; ``missing`` lists the revisions
    an upgrade would apply, oldest first; ``known`` is False when ``current`` is a
    revision this code has never heard of (a newer release migrated the database).
    """

    head: str
    error: str | None = None
    current: str | None = None
    missing: list[str] = field(default_factory=list)
    known: bool = True

    @property
    def reachable(self) -> bool:
        return self.error is None

    @property
    def ready(self) -> bool:
        return self.reachable and self.current == self.head

    def describe(self) -> str:
        """One sentence for an operator, saying what to do when something is wrong."""
        if self.error is not None:
            return f"database unreachable: {self.error}"
        if self.ready:
            return f"schema at {self.head}"
        if not self.known:
            return (
                f"schema at {self.current}, which this version does not know (its newest is "
                f"{self.head}): the database was migrated by a newer release; run that one"
            )
        at = "never migrated" if self.current is None else f"schema at {self.current}"
        return (
            f"{at}, this version needs {self.head} (missing {', '.join(self.missing)}): "
            f"run `{UPGRADE}`"
        )


def _first_line(error: BaseException) -> str:
    # Drivers' messages run over several lines (SQL, a link to the docs); the first says why.
    text = str(getattr(error, "orig", None) or error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def inspect_schema(connect: Callable[[], Connection]) -> SchemaState:
    """Connect (``engine.connect``, or a health check's own connection) and compare the
    database's revision with this code's head."""
    newest = head()
    try:
        with connect() as conn:
            # Read directly: alembic's MigrationContext logs two lines each time, and
            # /readyz is polled every few seconds.
            current = (
                conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
                if inspect(conn).has_table("alembic_version")
                else None
            )
    except Exception as error:  # any driver error means "not reachable", never a crash
        return SchemaState(head=newest, error=_first_line(error))
    if current == newest:
        return SchemaState(head=newest, current=current)
    try:
        missing = [
            script.revision for script in _scripts().iterate_revisions(newest, current or "base")
        ]
    except CommandError:
        return SchemaState(head=newest, current=current, known=False)
    return SchemaState(head=newest, current=current, missing=missing[::-1])
