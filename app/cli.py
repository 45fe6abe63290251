"""The ``pledgewatch`` command."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from app.clock import SystemClock
from app.config import get_settings

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

app = typer.Typer(help="Pledgewatch: trust, but verify.", no_args_is_help=True)
db_app = typer.Typer(help="The database schema.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
ledger_app = typer.Typer(help="The hash-chained ledger of every write.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(ledger_app, name="ledger")
err = Console(stderr=True)


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Migrate the database to the latest schema (or to REVISION)."""
    from app.migrate import upgrade

    upgrade(get_settings().database_url, revision)
    err.print(f"[green]database at {revision}[/green]")


@db_app.command("downgrade")
def db_downgrade(revision: str) -> None:
    """Migrate the database down to REVISION ('base' removes everything)."""
    from app.migrate import downgrade

    downgrade(get_settings().database_url, revision)
    err.print(f"[yellow]database at {revision}[/yellow]")


@app.command()
def seed() -> None:
    """Load the pledges and evidence of the seed article; running it twice changes nothing."""
    from app.db import Database
    from app.seed.loader import seed as load

    database = Database(get_settings().database_url, pool_size=1)
    try:
        with database.transaction() as session:
            report = load(session, SystemClock())
    finally:
        database.dispose()
    err.print(
        f"pledges: {report.pledges_created} created, {report.pledges_existing} already there; "
        f"evidence: {report.evidence_created} created, {report.evidence_existing} already there; "
        f"status changes: {report.status_changes}"
    )


class RoleOption(StrEnum):
    viewer = "viewer"
    collector = "collector"
    analyst = "analyst"
    admin = "admin"


def _lifetime(value: str) -> timedelta:
    from app.domain.keys.service import parse_lifetime

    try:
        return parse_lifetime(value)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None


ExpiresIn = Annotated[
    timedelta | None,
    typer.Option(
        parser=_lifetime,
        metavar="DURATION",
        help="The key stops working after this long: 30m, 12h, 90d or 8w.",
    ),
]


@keys_app.command("create")
def keys_create(
    role: Annotated[RoleOption, typer.Option(help="What the key may do.")],
    name: Annotated[str, typer.Option(help="A unique name; it appears as key:<name> in histories")],
    expires_in: ExpiresIn = None,
) -> None:
    """Create a key and print it, alone on one line, once."""
    from app.db import Database
    from app.domain.keys.service import create_key
    from app.errors import DomainError

    now = SystemClock().now()
    database = Database(get_settings().database_url, pool_size=1)
    try:
        with database.transaction() as session:
            secret = create_key(
                session,
                name=name,
                role=role.value,
                now=now,
                expires_at=now + expires_in if expires_in is not None else None,
            )
    except DomainError as error:
        err.print(f"[red]{escape(error.detail)}[/red]")
        raise typer.Exit(2) from None
    finally:
        database.dispose()
    typer.echo(secret)


@keys_app.command("list")
def keys_list() -> None:
    """Every key: name, role, created, rotated, expires, last used, revoked (times in UTC;
    a running server records last use about once a minute). Never a secret."""
    from app.db import Database
    from app.domain.keys.service import list_keys

    database = Database(get_settings().database_url, pool_size=1)
    try:
        with database.transaction(write=False) as session:
            keys, _ = list_keys(session)
    finally:
        database.dispose()
    now = SystemClock().now()
    rows = [("NAME", "ROLE", "CREATED", "ROTATED", "EXPIRES", "LAST USED", "REVOKED")]
    for key in keys:
        expires = _when(key.expires_at)
        if key.expires_at is not None and key.expires_at <= now:
            expires += " (expired)"
        rows.append(
            (
                key.name,
                key.role,
                _when(key.created_at),
                _when(key.rotated_at),
                expires,
                _when(key.last_used_at),
                _when(key.revoked_at),
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        typer.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment is not None else "-"


@keys_app.command("revoke")
def keys_revoke(name: Annotated[str, typer.Argument(help="The key's name.")]) -> None:
    """Revoke a key for good. Running servers refuse it within a few seconds."""
    from app.db import Database
    from app.domain.keys.service import revoke_key
    from app.errors import DomainError

    now = SystemClock().now()
    database = Database(get_settings().database_url, pool_size=1)
    try:
        with database.transaction() as session:
            key = revoke_key(session, name, now=now)
            revoked_at = key.revoked_at
    except DomainError as error:
        err.print(f"[red]{escape(error.detail)}[/red]", soft_wrap=True)
        raise typer.Exit(2) from None
    finally:
        database.dispose()
    if revoked_at is not None and revoked_at < now:
        err.print(
            f"key {escape(name)} was already revoked ({_when(revoked_at)} UTC)", soft_wrap=True
        )
    else:
        err.print(f"[green]revoked[/green] key {escape(name)}", soft_wrap=True)


@keys_app.command("rotate")
def keys_rotate(
    name: Annotated[str, typer.Argument(help="The key's name.")],
    expires_in: ExpiresIn = None,
) -> None:
    """Give a key a new secret (same name and role) and print it alone on the last line; the
    old secret stops working (within a few seconds on running servers). Without
    --expires-in an expiring key keeps its lifetime."""
    from app.db import Database
    from app.domain.keys.service import rotate_key
    from app.errors import DomainError

    now = SystemClock().now()
    database = Database(get_settings().database_url, pool_size=1)
    try:
        with database.transaction() as session:
            issued = rotate_key(
                session,
                name,
                now=now,
                expires_at=now + expires_in if expires_in is not None else None,
            )
            expires_at = issued.key.expires_at
    except DomainError as error:
        err.print(f"[red]{escape(error.detail)}[/red]", soft_wrap=True)
        raise typer.Exit(2) from None
    finally:
        database.dispose()
    until = f", expires {_when(expires_at)} UTC" if expires_at is not None else ""
    err.print(f"[green]rotated[/green] key {escape(name)}{until}; the new key:", soft_wrap=True)
    typer.echo(issued.secret)


@ledger_app.command("verify")
def ledger_verify() -> None:
    """Recompute the chain, compare every row with its latest entry and recompute each pledge's
    derived state; exit 1 if anything is wrong, naming the first bad entry and the row."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from app.db import Database
    from app.domain.ledger.service import Problem, read_head, verify_database

    database = Database(get_settings().database_url, pool_size=1)
    try:
        with database.transaction(write=False) as session:
            expected = read_head(session).length
        with Progress(
            TextColumn("verifying the ledger"),
            BarColumn(),
            MofNCompleteColumn(),
            console=err,
            transient=True,
        ) as progress:
            task = progress.add_task("verify", total=expected or None)
            verdict = verify_database(
                database, progress=lambda seq: progress.update(task, completed=seq)
            )
    finally:
        database.dispose()
    if verdict.ok:
        err.print(f"[green]ledger ok[/green]: {verdict.length} entries, head {verdict.head}")
        return
    first = verdict.first_bad
    assert first is not None

    def described(problem: Problem) -> str:
        # Derived state (a pledge's status, counts, summaries) is no entry's: no seq to name.
        where = f"entry {problem.seq}, " if problem.seq is not None else ""
        return f"{where}{escape(problem.subject or '(no subject)')}: {escape(problem.reason)}"

    err.print(f"[red]ledger NOT ok[/red]: first bad: {described(first)}")
    for problem in [p for p in verdict.problems if p is not first][:19]:
        err.print(f"  also: {described(problem)}")
    raise typer.Exit(1)


class ExportFormatOption(StrEnum):
    json = "json"
    csv = "csv"


class _ProgressBar:
    """The transfer services' progress, drawn on standard error."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: TaskID | None = None

    def start(self, description: str, total: int) -> None:
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(description, total=total or None)

    def update(self, completed: int) -> None:
        if self._task is not None:
            self._progress.update(self._task, completed=completed)


def _progress() -> Progress:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        transient=True,
    )


def _write(chunks: Iterator[bytes], output: Path | None) -> None:
    """To standard output, or to ``output`` (mode 0600, replaced only once complete)."""
    if output is None:
        stream = typer.get_binary_stream("stdout")
        for chunk in chunks:
            stream.write(chunk)
        stream.flush()
        return
    partial = output.with_name(output.name + ".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(descriptor, 0o600)  # a file left from before keeps its mode otherwise
        with os.fdopen(descriptor, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
        os.replace(partial, output)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


@app.command("export")
def export_command(
    export_format: Annotated[
        ExportFormatOption,
        typer.Option(
            "--format",
            help="json: everything needed to rebuild this database (`pledgewatch import`), "
            "webhook secrets included; csv: one row per pledge.",
        ),
    ] = ExportFormatOption.json,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write here (mode 0600) instead of standard output."),
    ] = None,
) -> None:
    """Export the state from one consistent snapshot (progress on standard error)."""
    from app.db import Database
    from app.domain.transfer.service import export_csv, snapshot, stream_export

    database = Database(get_settings().database_url, pool_size=1)
    now = SystemClock().now()
    try:
        if export_format is ExportFormatOption.csv:
            with snapshot(database) as session:
                table = export_csv(session, now=now)
            _write(iter([table.encode("utf-8")]), output)
        else:
            with _progress() as progress:
                chunks = stream_export(
                    database, now=now, scope="complete", progress=_ProgressBar(progress)
                )
                _write(chunks, output)
    finally:
        database.dispose()
    if output is not None:
        err.print(f"[green]exported[/green] to {escape(str(output))}")


@app.command("import")
def import_command(
    file: Annotated[
        str, typer.Argument(help="A file made by `pledgewatch export` ('-': standard input).")
    ],
) -> None:
    """Rebuild a new, migrated, empty database from an export, in one transaction; the ledger
    must then verify to the export's head, or nothing is written. Exit 2 when refused."""
    import json

    from app.db import Database
    from app.domain.transfer.service import import_document
    from app.errors import DomainError

    try:
        if file == "-":
            document = json.load(typer.get_binary_stream("stdin"))
        else:
            with open(file, "rb") as handle:
                document = json.load(handle)
    except OSError as error:
        err.print(
            f"[red]cannot read {escape(file)}:[/red] {escape(error.strerror or str(error))}",
            soft_wrap=True,
        )
        raise typer.Exit(2) from None
    except (ValueError, RecursionError) as error:
        err.print(
            f"[red]{escape(file)} is not valid JSON:[/red] {escape(str(error))}", soft_wrap=True
        )
        raise typer.Exit(2) from None

    database = Database(get_settings().database_url, pool_size=1)
    try:
        with _progress() as progress, database.transaction() as session:
            report = import_document(session, document, progress=_ProgressBar(progress))
    except DomainError as error:
        err.print(
            f"[red]import refused, nothing was written:[/red] {escape(error.detail)}",
            soft_wrap=True,
        )
        raise typer.Exit(2) from None
    finally:
        database.dispose()
    for warning in report.warnings:
        err.print(f"[yellow]warning:[/yellow] {escape(warning)}", soft_wrap=True)
    err.print(
        f"[green]imported[/green] {sum(report.rows.values())} rows; ledger verified: "
        f"{report.ledger.length} entries, head {report.ledger.hash}",
        soft_wrap=True,
    )


# Exit statuses of serve and scheduler when they refuse to start.
EXIT_UNREACHABLE = 3
EXIT_NOT_MIGRATED = 4
WaitForMigrations = Annotated[
    bool,
    typer.Option(
        "--wait-for-migrations",
        help="If the database is unreachable or its schema is not at head, wait quietly "
        "(checking every 2 s) instead of exiting.",
    ),
]


def require_schema(url: str, *, wait: bool, poll_seconds: float = 2.0) -> None:
    """Return once the database answers with its schema at head; else say in one line
    what is wrong (and what to run) and exit, or with ``wait``, wait for it quietly."""
    import time

    from app.db import build_engine
    from app.system.schema import inspect_schema

    engine = build_engine(url, pool_size=1)
    said = None
    try:
        while not (state := inspect_schema(engine.connect)).ready:
            line = f"database {_safe_url(url)}: {state.describe()}"
            if not wait:
                err.print(escape(line), soft_wrap=True, highlight=False)
                raise typer.Exit(EXIT_UNREACHABLE if not state.reachable else EXIT_NOT_MIGRATED)
            if line != said:  # one line per change of state, not per check
                err.print(escape(f"{line}; waiting"), soft_wrap=True, highlight=False)
                said = line
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    finally:
        engine.dispose()


@app.command()
def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    wait_for_migrations: WaitForMigrations = False,
    http: Annotated[
        str, typer.Option(help="The HTTP/1.1 implementation: auto (httptools), httptools or h11.")
    ] = "auto",
) -> None:
    """Serve the API (uvicorn). Exits at once (status 3: database unreachable, 4: schema not
    at head, with the command to run) unless --wait-for-migrations."""
    import uvicorn

    from app.http.server import uvicorn_options

    settings = get_settings()
    require_schema(settings.database_url, wait=wait_for_migrations)
    limit_malloc_arenas()
    err.print(
        f"serving on http://{escape(host)}:{port}  "
        f"(docs at /docs, database {escape(_safe_url(settings.database_url))})"
    )
    uvicorn.run(
        "app.asgi:app",
        host=host,
        port=port,
        workers=workers,
        **uvicorn_options(settings, http=http),
    )


# glibc's mallopt parameter for the number of arenas.
_M_ARENA_MAX = -8


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas for this process and the workers it starts.

    glibc gives each thread that allocates concurrently an arena of its own, up to eight
    per core, and each keeps the memory its thread freed. A server answering dozens of
    requests at once in its thread pool grows by tens of megabytes that way, for no
    speed it can use on a few cores. ``MALLOC_ARENA_MAX`` set by the operator wins.
    """
    wanted = os.environ.setdefault("MALLOC_ARENA_MAX", str(arenas))
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_ARENA_MAX, int(wanted))
    except (OSError, AttributeError, ValueError):
        return  # not glibc (or not a number): the allocator's own defaults stay


@app.command()
def scheduler(wait_for_migrations: WaitForMigrations = False) -> None:
    """Run the scheduled jobs alone, without the API.

    Start one per deployment (with the API's PLEDGEWATCH_SCHEDULER_ENABLED=false);
    a second one started by mistake waits, and takes over if the first dies. Exits at once
    (status 3 or 4, as serve does) on a database unreachable or not migrated, unless
    --wait-for-migrations.
    """
    import signal
    import threading

    from app.logs import configure_logging
    from app.scheduler.service import SchedulerService

    settings = get_settings()
    require_schema(settings.database_url, wait=wait_for_migrations)
    configure_logging(settings.log_level, as_json=settings.log_json)
    service = SchedulerService(settings)
    stopping = threading.Event()

    def _stop(_signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    err.print(
        f"scheduler {escape(service.holder)} on {escape(_safe_url(settings.database_url))}; "
        "waiting for the leader lock"
    )
    service.start()
    try:
        while not stopping.wait(1):
            if not service.alive:
                raise typer.Exit(1)
    finally:
        service.stop()


@app.command()
def demo(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Upgrade, seed, enable the bundled offline demo feed, print an admin key, and serve."""
    import secrets
    from pathlib import Path

    from app.db import Database
    from app.domain.keys.service import create_key
    from app.domain.sources.service import load_sources_file
    from app.migrate import upgrade
    from app.seed.loader import seed as load

    # Demo mode: the app serves its sample feed and may poll that one address of its own.
    os.environ["PLEDGEWATCH_DEMO_MODE"] = "true"
    os.environ["PLEDGEWATCH_SELF_ADDRESS"] = f"{host}:{port}"
    os.environ.setdefault("PLEDGEWATCH_EVALUATE_EVERY_SECONDS", "20")
    get_settings.cache_clear()
    settings = get_settings()
    upgrade(settings.database_url)
    database = Database(settings.database_url, pool_size=1)
    demo_sources = Path(__file__).resolve().parent / "demo" / "sources.yaml"
    try:
        with database.transaction() as session:
            report = load(session, SystemClock())
            load_sources_file(
                session,
                demo_sources,
                now=SystemClock().now(),
                substitutions={"self_address": settings.self_address},
            )
            name = f"admin-{secrets.token_hex(3)}"
            secret = create_key(session, name=name, role="admin", now=SystemClock().now())
    finally:
        database.dispose()
    err.print(
        f"seeded: {report.pledges_created} new pledges ({report.pledges_existing} already there)"
    )
    err.print(
        "demo: sample sources poll the bundled feed at /demo/feed.xml (SAMPLE DATA) every minute"
    )
    err.print(f"[bold]admin key ({name}), shown once:[/bold]")
    typer.echo(secret)
    serve(host=host, port=port, workers=1)


def _safe_url(url: str) -> str:
    if "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


if __name__ == "__main__":
    main()
