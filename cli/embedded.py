"""Long-running processes name their database; the embedded SQLite default is opt-in for them.

A terminal without ``ORCH_DB_URL`` once used the local SQLite file and started a second run for
a device that already had one on PostgreSQL: two sources of truth. So ``worker``, ``listen`` and
``serve-api`` refuse to start unless ``ORCH_DB_URL`` is set or ``--embedded`` (``ORCH_EMBEDDED=
true``) says the embedded default is meant. One-shot commands (``run``, ``demo``, ``send-event``,
``db``) keep the embedded default with nothing set.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cli.output import EXIT_USAGE, fail

__all__ = ["EmbeddedOption", "require_database_url"]

EmbeddedOption = Annotated[
    bool,
    typer.Option(
        "--embedded",
        envvar="ORCH_EMBEDDED",
        help=(
            "Use the embedded SQLite database (.orchestration/orchestration.db) when ORCH_DB_URL "
            "is not set. Without ORCH_DB_URL or this flag the command refuses to start (exit 2)."
        ),
    ),
]


def require_database_url(embedded: bool) -> str:
    """``ORCH_DB_URL``, or the embedded default when ``embedded``; else exit 2 with one line."""
    from store.settings import DatabaseSettings

    settings = DatabaseSettings()
    if "url" not in settings.model_fields_set and not embedded:
        fail(
            "no database configured: set ORCH_DB_URL, or pass --embedded (ORCH_EMBEDDED=true) "
            "to use the local SQLite file .orchestration/orchestration.db",
            code=EXIT_USAGE,
        )
    return settings.url
