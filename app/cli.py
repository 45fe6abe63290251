"""The ``pledgewatch`` command."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from app.clock import SystemClock
from app.config import get_settings

app = typer.Typer(help="Pledgewatch: trust, but verify.", no_args_is_help=True)
db_app = typer.Typer(help="The database schema.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
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


@keys_app.command("create")
def keys_create(
    role: Annotated[str, typer.Option(help="viewer, collector, analyst or admin")],
    name: Annotated[str, typer.Option(help="A unique name; it appears as key:<name> in histories")],
) -> None:
    """Create a key and print it, alone on one line, once."""
    from app.db import Database
    from app.domain.keys.service import create_key
    from app.errors import DomainError

    database = Database(get_settings().database_url, pool_size=1)
    try:
        with database.transaction() as session:
            secret = create_key(session, name=name, role=role, now=SystemClock().now())
    except DomainError as error:
        err.print(f"[red]{escape(error.detail)}[/red]")
        raise typer.Exit(2) from None
    finally:
        database.dispose()
    typer.echo(secret)


@app.command()
def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
) -> None:
    """Serve the API (uvicorn)."""
    import uvicorn

    settings = get_settings()
    err.print(
        f"serving on http://{escape(host)}:{port}  "
        f"(docs at /docs, database {escape(_safe_url(settings.database_url))})"
    )
    uvicorn.run(
        "app.asgi:app",
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        access_log=False,
        proxy_headers=False,
    )


@app.command()
def scheduler() -> None:
    """Run the scheduled jobs alone, without the API.

    Start one per deployment (with the API's PLEDGEWATCH_SCHEDULER_ENABLED=false);
    a second one started by mistake waits, and takes over if the first dies.
    """
    import signal
    import threading

    from app.logs import configure_logging
    from app.scheduler.service import SchedulerService

    settings = get_settings()
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
