"""Operations commands: ``serve-api`` (the management API) and ``automations apply|list``.

``automations apply`` creates or updates the stuck-run and crashed-run automations on the Prefect
server named by ``PREFECT_API_URL``; running it again changes nothing. Options override the
``ORCH_ALERTS_*`` environment. The webhook URL is stored in a Prefect Webhook block (a secret
field), never printed.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.embedded import EmbeddedOption, require_database_url
from cli.failures import validation_summary
from cli.output import EXIT_USAGE, OutputFormat, OutputOption, emit_json, fail

__all__ = ["register"]


def serve_api(
    host: Annotated[str | None, typer.Option(help="Interface (default ORCH_API_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default ORCH_API_PORT)")] = None,
    embedded: EmbeddedOption = False,
) -> None:
    """Serve the management API (OpenAPI at /docs) until interrupted.

    Needs ORCH_DB_URL, or --embedded (ORCH_EMBEDDED=true) for the local SQLite file."""
    import uvicorn

    from api.app import create_app
    from api.settings import ApiSettings
    from operations.observability import configure_logging, configure_metrics

    # Settings before anything starts: a malformed one is one line (cli.failures), keys unseen.
    settings = ApiSettings()
    require_database_url(embedded)
    configure_logging()  # every console handler, Prefect's and uvicorn's too, writes JSON
    configure_metrics()
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
    failures = _StartupFailures()
    logging.getLogger("uvicorn.error").addFilter(failures)
    try:
        uvicorn.Server(config).run()
    except SystemExit:
        if not failures.caught:
            raise
    if failures.caught:
        raise failures.caught[0]  # a known one is said in one line by cli.failures


class _StartupFailures(logging.Filter):
    """Keeps the exception of a failed startup instead of uvicorn's traceback log record.

    Starlette hands uvicorn the traceback as text while its ``except`` block runs, so the
    exception is ``sys.exc_info()``; the command re-raises it after uvicorn gives up, and
    ``cli.failures`` says a known one (database or Prefect out of reach) in one line."""

    def __init__(self) -> None:
        super().__init__()
        self.caught: list[BaseException] = []

    def filter(self, record: logging.LogRecord) -> bool:
        exc = sys.exc_info()[1]
        if str(record.msg).startswith("Traceback (most recent call last)") and exc is not None:
            self.caught.append(exc)
            return False
        return True


def automations_apply(
    threshold: Annotated[
        str | None,
        typer.Option(
            help="Pending/Running longer than this is stuck: 90s, 15m, 50h, 2d or PT50H "
            "(default 50h)"
        ),
    ] = None,
    paused_threshold: Annotated[
        str | None,
        typer.Option(
            help="Paused longer than this is stuck, as --threshold "
            "(default: threshold + longest wait)"
        ),
    ] = None,
    threshold_hours: Annotated[
        float | None, typer.Option(help="Deprecated: use --threshold (hours)")
    ] = None,
    paused_threshold_hours: Annotated[
        float | None, typer.Option(help="Deprecated: use --paused-threshold (hours)")
    ] = None,
    webhook_url: Annotated[
        str | None, typer.Option(help="Alert webhook; saved in the Webhook block")
    ] = None,
    webhook_block: Annotated[str | None, typer.Option(help="Webhook block name")] = None,
    deployment: Annotated[
        list[str] | None, typer.Option(help="Watched deployment flow/name (repeatable)")
    ] = None,
    heartbeat_seconds: Annotated[
        int | None,
        typer.Option(help="Seconds between the runs' heartbeats (default 30; see below)"),
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
        "threshold_hours": _threshold_hours("--threshold", threshold, threshold_hours),
        "paused_threshold_hours": _threshold_hours(
            "--paused-threshold", paused_threshold, paused_threshold_hours
        ),
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
        # The option or the ORCH_ALERTS_* variable, what was expected; never the value (a URL).
        fail(
            f"invalid alert settings: {validation_summary(exc, AlertSettings, option=True)}",
            code=EXIT_USAGE,
        )
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


def _threshold_hours(option: str, text: str | None, hours: float | None) -> float | None:
    """The threshold given as ``option`` (a duration) or ``option-hours`` (deprecated), in
    hours; a bad or too short value is one line naming the option and the accepted forms."""
    from datetime import timedelta

    from operations.automations import THRESHOLD_FORMS, check_threshold, parse_threshold

    if text is not None and hours is not None:
        fail(f"give {option} or {option}-hours, not both", code=EXIT_USAGE)
    try:
        if text is not None:
            return parse_threshold(text).total_seconds() / 3600
        if hours is not None:
            if not hours == hours or hours in (float("inf"), float("-inf")):
                raise ValueError(f"{hours!r} is not a number of hours")
            check_threshold(timedelta(hours=hours), shown=f"{hours:g}h")
            return hours
    except (ValueError, OverflowError) as exc:
        used = option if text is not None else f"{option}-hours"
        fail(f"{used}: {exc}; accepted: {THRESHOLD_FORMS}", code=EXIT_USAGE)
    return None


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
