"""The peer of target 5: Datasette serving the same SQLite file, asked for the same rows.

Datasette lives in its own virtual environment (``.venv-bench``, made by ``make bench``
from the pinned ``bench/requirements-datasette.txt``) so that its dependencies never
meet the app's. It is started as a team publishing the file would start it:
``datasette serve --immutable FILE``, with a row limit above the number of pledges.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

from bench.server import Server, free_port, running

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VENV = ROOT / ".venv-bench"

# What /status answers for every pledge now, as one query over the kept current state:
# overdue is the service's rule (no accepted evidence within review_every_days of the
# last one, or of made_on; never for a final status), computed with the database's date.
CURRENT_STATUS_SQL = """
select
  id,
  title,
  kind,
  status,
  strftime('%Y-%m-%dT%H:%M:%SZ', status_since) as status_since,
  verification,
  evidence_count,
  strftime('%Y-%m-%dT%H:%M:%SZ', last_evidence_at) as last_evidence_at,
  status not in ('kept', 'broken')
    and date('now') > date(coalesce(last_evidence_at, made_on), '+' || review_every_days || ' days')
    as overdue,
  due_on
from pledge
order by id
""".strip()


def datasette_command(venv: Path = DEFAULT_VENV) -> Path:
    return venv / "bin" / "datasette"


def query_path(database_file: Path) -> str:
    """The URL path (and query) of the current-status rows as a JSON array."""
    return f"/{database_file.stem}.json?" + urlencode(
        {"sql": CURRENT_STATUS_SQL, "_shape": "array"}
    )


@contextmanager
def datasette(database_file: Path, log_path: Path, venv: Path = DEFAULT_VENV) -> Iterator[Server]:
    """Datasette on ``database_file`` (read-only, immutable) until the block ends."""
    command = datasette_command(venv)
    if not command.exists():
        raise FileNotFoundError(f"{command} is missing: `make bench-venv` creates it")
    port = free_port()
    with running(
        [
            str(command),
            "serve",
            "--immutable",
            str(database_file),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--setting",
            "max_returned_rows",
            "100000",
            "--setting",
            "sql_time_limit_ms",
            "30000",
        ],
        f"http://127.0.0.1:{port}",
        "/-/versions.json",
        log_path,
        {},
    ) as server:
        yield server
