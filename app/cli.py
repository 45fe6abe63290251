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
def demo(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Upgrade, seed, create and print an admin key, and serve."""
    import secrets

    from app.db import Database
    from app.domain.keys.service import create_key
    from app.migrate import upgrade
    from app.seed.loader import seed as load

    settings = get_settings()
    upgrade(settings.database_url)
    database = Database(settings.database_url, pool_size=1)
    try:
        with database.transaction() as session:
            report = load(session, SystemClock())
            name = f"admin-{secrets.token_hex(3)}"
            secret = create_key(session, name=name, role="admin", now=SystemClock().now())
    finally:
        database.dispose()
    err.print(
        f"seeded: {report.pledges_created} new pledges ({report.pledges_existing} already there)"
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
