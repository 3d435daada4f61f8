"""Operations commands: ``serve-api`` (the management API) and ``automations apply|list``.

``automations apply`` creates or updates the stuck-run and crashed-run automations on the Prefect
server named by ``PREFECT_API_URL``; running it again changes nothing. Options override the
``ORCH_ALERTS_*`` environment. The webhook URL is stored in a Prefect Webhook block (a secret
field), never printed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.output import OutputFormat, OutputOption, emit_json, fail

__all__ = ["register"]


def serve_api(
    host: Annotated[str | None, typer.Option(help="Interface (default ORCH_API_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default ORCH_API_PORT)")] = None,
) -> None:
    """Serve the management API (OpenAPI at /docs) until interrupted."""
    import uvicorn

    from api.app import create_app
    from api.settings import ApiSettings
    from operations.observability import configure_logging, configure_metrics

    configure_logging()
    configure_metrics()
    settings = ApiSettings()
    updates: dict[str, Any] = {}
    if host is not None:
        updates["host"] = host
    if port is not None:
        updates["port"] = port
    settings = settings.model_copy(update=updates)
    if not settings.api_keys and not settings.allow_anonymous:
        typer.secho(
            "warning: no ORCH_API_API_KEYS: every endpoint but /health and /docs answers 401",
            err=True,
            fg=typer.colors.YELLOW,
        )
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="info",
        log_config=None,  # keep the JSON root handler: uvicorn's records go through it
        server_header=False,
    )
    uvicorn.Server(config).run()


def automations_apply(
    threshold_hours: Annotated[
        float | None, typer.Option(help="Pending/Running longer than this is stuck (default 50)")
    ] = None,
    paused_threshold_hours: Annotated[
        float | None,
        typer.Option(help="Paused longer than this is stuck (default: threshold + longest wait)"),
    ] = None,
    webhook_url: Annotated[
        str | None, typer.Option(help="Alert webhook; saved in the Webhook block")
    ] = None,
    webhook_block: Annotated[str | None, typer.Option(help="Webhook block name")] = None,
    deployment: Annotated[
        list[str] | None, typer.Option(help="Watched deployment flow/name (repeatable)")
    ] = None,
    heartbeat_seconds: Annotated[
        int | None, typer.Option(help="PREFECT_FLOWS_HEARTBEAT_FREQUENCY of the workers")
    ] = None,
    definitions: Annotated[
        Path | None, typer.Option(help="Definitions directory (for the longest wait)")
    ] = None,
    guard_deployment: Annotated[
        str | None,
        typer.Option(help="Crash-guard deployment flow/name (default crash-guard/crash-guard)"),
    ] = None,
    output: OutputOption = OutputFormat.text,
) -> None:
    """Create or update the stuck-run and crashed-run automations (idempotent).

    The crashed-run automation runs the crash-guard deployment (deploy it first), which marks a
    silent run Crashed only if it is still Running or Pending."""
    from pydantic import SecretStr, ValidationError

    from operations.automations import AlertSettings

    overrides: dict[str, Any] = {
        "threshold_hours": threshold_hours,
        "paused_threshold_hours": paused_threshold_hours,
        "webhook_url": SecretStr(webhook_url) if webhook_url else None,
        "webhook_block": webhook_block,
        "deployments": deployment or None,
        "heartbeat_seconds": heartbeat_seconds,
        "definitions_dir": definitions,
        "guard_deployment": guard_deployment,
    }
    try:
        settings = AlertSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        fail(f"invalid alert settings: {exc}")
    try:
        applied, plan, warnings = asyncio.run(_apply(settings))
    except LookupError as exc:
        fail(str(exc))
    if output == OutputFormat.json:
        emit_json(
            {
                "automations": [
                    {"name": a.name, "id": str(a.id), "outcome": a.outcome} for a in applied
                ],
                "thresholdSeconds": plan.threshold.total_seconds(),
                "pausedThresholdSeconds": plan.paused_threshold.total_seconds(),
                "crashWindowSeconds": plan.crash_window.total_seconds(),
                "webhook": plan.webhook_block_id is not None,
                "warnings": warnings,
            }
        )
        return
    for warning in warnings:
        typer.secho(f"warning: {warning}", err=True, fg=typer.colors.YELLOW)
    for a in applied:
        typer.echo(f"{a.outcome:<9}  {a.name}  ({a.id})")
    typer.echo(
        f"stuck after {plan.threshold} (paused: {plan.paused_threshold}); "
        f"crash guard after {plan.crash_window} without a heartbeat"
    )


async def _apply(settings: Any) -> tuple[Any, Any, list[str]]:
    from prefect import get_client

    from operations.automations import apply_automations, make_plan

    async with get_client() as client:
        plan, warnings = await make_plan(client, settings)
        applied = await apply_automations(client, plan)
    return applied, plan, warnings


def automations_list(output: OutputOption = OutputFormat.text) -> None:
    """Show the orchestration automations on the Prefect server."""
    rows = asyncio.run(_list())
    if output == OutputFormat.json:
        emit_json(rows)
        return
    if not rows:
        typer.echo("no orchestration automations: run `orchestration automations apply`")
    for row in rows:
        state = "enabled" if row["enabled"] else "disabled"
        typer.echo(
            f"{row['name']}  [{state}]  window {row['window_seconds']:g}s  "
            f"actions: {', '.join(row['actions']) or '-'}"
        )


async def _list() -> list[dict[str, Any]]:
    from prefect import get_client

    from operations.automations import list_automations

    async with get_client() as client:
        return await list_automations(client)


def register(app: typer.Typer) -> None:
    app.command("serve-api")(serve_api)
    automations = typer.Typer(
        help="Stuck-run and crashed-run alerts (Prefect automations).", no_args_is_help=True
    )
    automations.command("apply")(automations_apply)
    automations.command("list")(automations_list)
    app.add_typer(automations, name="automations")
