"""``orchestration db migrate | purge-events``: the orchestration database's maintenance.

``migrate`` upgrades the database (``--url``, else ``ORCH_DB_URL``, else the embedded SQLite file)
to the newest schema, for deployments that connect with ``ORCH_DB_MIGRATE_ON_CONNECT=false``.
``purge-events --older-than DAYS`` deletes device events cleared more than DAYS ago; a redelivery
of a purged event is recorded again, so DAYS is the duplicate-detection window kept after a clear.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Annotated

import typer

from cli.output import OutputFormat, OutputOption, emit_json, fail

__all__ = ["register"]

UrlOption = Annotated[
    str | None,
    typer.Option("--url", help="Database URL (default: ORCH_DB_URL, else the embedded SQLite)."),
]


def _url(url: str | None) -> str:
    from store.settings import DatabaseSettings

    return url or DatabaseSettings().url


def migrate_command(url: UrlOption = None, output: OutputOption = OutputFormat.text) -> None:
    """Upgrade the database to the newest schema (safe to repeat and to run concurrently)."""
    from store.db import normalize_url
    from store.errors import UnsupportedDatabaseError
    from store.migrate import migrate

    target = _url(url)
    try:
        shown = normalize_url(target).render_as_string(hide_password=True)
        revision = asyncio.run(migrate(target))
    except UnsupportedDatabaseError as exc:
        fail(str(exc), code=2)
    except OSError as exc:
        fail(f"cannot reach the database {shown}: {exc}")
    if output is OutputFormat.json:
        emit_json({"database": shown, "revision": revision})
    else:
        typer.echo(f"{shown} is at revision {revision}")


def purge_events_command(
    older_than: Annotated[
        float,
        typer.Option("--older-than", min=0, help="Delete events cleared more than DAYS ago."),
    ],
    url: UrlOption = None,
    output: OutputOption = OutputFormat.text,
) -> None:
    """Delete device events that were cleared more than DAYS ago (ends their dedup window)."""
    from store.columns import utc_now
    from store.db import Database
    from store.errors import UnsupportedDatabaseError
    from store.events import EventStore

    async def purge() -> int:
        db = await Database.connect(_url(url))
        try:
            return await EventStore(db).purge(utc_now() - timedelta(days=older_than))
        finally:
            await db.close()

    try:
        purged = asyncio.run(purge())
    except UnsupportedDatabaseError as exc:
        fail(str(exc), code=2)
    if output is OutputFormat.json:
        emit_json({"purged": purged, "olderThanDays": older_than})
    else:
        typer.echo(f"purged {purged} events cleared more than {older_than:g} days ago")


def register(app: typer.Typer) -> None:
    db = typer.Typer(help="The orchestration database: schema and retention.", no_args_is_help=True)
    db.command("migrate")(migrate_command)
    db.command("purge-events")(purge_events_command)
    app.add_typer(db, name="db")
