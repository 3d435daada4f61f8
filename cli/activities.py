"""``orchestration activities``: list the registered activities (and their schemas as JSON).

Text: one line per activity with its retry safety and whether it changes anything. JSON: every
activity with ``inputSchema`` and ``outputSchema``. Needs no database or Prefect server.
"""

from __future__ import annotations

import typer

from cli.output import OutputFormat, OutputOption, emit_json

__all__ = ["activities_command", "register"]


def activities_command(output: OutputOption = OutputFormat.text) -> None:
    """List the activities a definition's task states may call."""
    from tasks.registry import default_registry

    described = default_registry().describe()
    if output == OutputFormat.json:
        emit_json(described)
        return
    width = max((len(item["name"]) for item in described), default=0)
    for item in described:
        flags = [
            "retry-safe" if item["retrySafe"] else "not retry-safe",
            "changes state" if item["changesState"] else "read-only",
        ]
        typer.echo(f"{item['name']:<{width}}  [{', '.join(flags)}]  {item['description']}")


def register(app: typer.Typer) -> None:
    app.command("activities")(activities_command)
