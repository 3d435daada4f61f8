"""``orchestration listen | send-event | deadletters process``: device event ingress.

``listen`` runs the Service Bus listener (``ORCH_SB_*``) and the outbox reconciler until SIGTERM,
one log line per message; it needs ``ORCH_DB_URL`` or ``--embedded`` (``cli.embedded``). Every
plain-text line escapes control characters (``operations.logtext``): a newline in a device id,
session id or event name cannot forge a line. ``send-event`` is the embedded default's ingress:
the same pipeline after the transport, on the configured database (``ORCH_DB_URL``) and Prefect
(``PREFECT_API_URL``, else a local server for the command's duration). ``deadletters process``
drains the dead-letter queue once, as the scheduled ``process-dead-letters`` flow does.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Annotated, Any

import typer

from cli.embedded import EmbeddedOption, require_database_url
from cli.output import EXIT_FAILURE, OutputFormat, OutputOption, emit_json, fail
from operations.logtext import escape_controls

__all__ = ["register"]


def _logging(level: int | None = logging.INFO) -> None:
    """Plain-text logs whose fields cannot forge a line (a device id is the sender's choice)."""
    from operations.logtext import configure_plain_logging

    configure_plain_logging(level)


def listen_command(embedded: EmbeddedOption = False) -> None:
    """Receive device events from Service Bus and start or route them (until SIGTERM).

    Needs ORCH_DB_URL, or --embedded (ORCH_EMBEDDED=true) for the local SQLite file."""
    from flows.definitions import DefinitionPinner
    from listeners.local import open_ingress
    from listeners.servicebus import listen
    from listeners.settings import IngressSettings, ServiceBusSettings

    sb = ServiceBusSettings()
    if not sb.configured:
        fail("set ORCH_SB_CONNECTION_STRING or ORCH_SB_FULLY_QUALIFIED_NAMESPACE")
    database_url = require_database_url(embedded)
    ingress_settings = IngressSettings()
    _logging()

    async def main() -> dict[str, int]:
        async with open_ingress(
            database_url=database_url,
            settings=ingress_settings,
            max_message_bytes=sb.max_message_bytes,
            definitions=DefinitionPinner.from_environment(),
        ) as rt:

            async def reconcile(stop: asyncio.Event) -> None:
                await rt.reconciler.run(stop, interval=ingress_settings.reconcile_interval)

            stats = await listen(sb, rt.ingress, reconcile=reconcile)
        return dict(stats)

    stats = asyncio.run(main())
    typer.echo(f"listener stopped: {json.dumps(stats, sort_keys=True)}")


def send_event_command(
    device: Annotated[str, typer.Argument(help="The device id (the session id on Service Bus).")],
    name: Annotated[str, typer.Argument(help="The event name, e.g. approve.")],
    payload: Annotated[str, typer.Option("--payload", help="The event payload, a JSON object.")] = (
        "{}"
    ),
    event_id: Annotated[
        str | None, typer.Option("--event-id", help="Idempotency: the same id is stored once.")
    ] = None,
    output: OutputOption = OutputFormat.text,
) -> None:
    """Record a device event and start or route it, exactly as the listener would."""
    try:
        document = json.loads(payload)
    except ValueError as exc:
        fail(f"--payload is not JSON: {exc}", code=2)
    if not isinstance(document, dict):
        fail("--payload must be a JSON object", code=2)

    from cli.running import prefect_api
    from flows.definitions import DefinitionPinner
    from listeners.local import open_ingress
    from listeners.pipeline import Disposition
    from listeners.settings import IngressSettings
    from store.settings import DatabaseSettings

    # Settings first: a malformed one is said before a local Prefect server is started.
    database_url = DatabaseSettings().url
    ingress_settings = IngressSettings()
    _logging(level=None)  # warnings only, as before: the command prints its own result line

    async def main() -> dict[str, Any]:
        async with open_ingress(
            database_url=database_url,
            settings=ingress_settings,
            definitions=DefinitionPinner.from_environment(),
        ) as rt:
            outcome = await rt.local.send(device, name, document, event_id=event_id)
        data: dict[str, Any] = {"disposition": outcome.disposition.value}
        if outcome.result is not None:
            data.update(outcome.result.as_dict())
        if outcome.reason:
            data.update({"reason": outcome.reason, "description": outcome.description})
        return data

    with prefect_api(quiet=output is OutputFormat.json):
        data = asyncio.run(main())
    if output is OutputFormat.json:
        emit_json(data)
    elif data["disposition"] == Disposition.COMPLETE:
        typer.echo(
            escape_controls(
                f"device={device} event={data['eventId']} recorded={data['recorded']} "
                f"action={data['action']} run={data['runId'] or '-'}"
                + (f" ({data['detail']})" if data["detail"] else "")
            )
        )
        if data["action"] == "deferred":
            # This command ends now; the outbox entry outlives it.
            typer.echo(
                "deferred: kept in the outbox; the reconciler of `orchestration worker` "
                "(or serve-api, listen) finishes it once Prefect answers",
                err=True,
            )
    if data["disposition"] != Disposition.COMPLETE:
        fail(escape_controls(f"event refused: {data.get('reason')}: {data.get('description')}"))


def process_dead_letters_command(
    resubmit: Annotated[
        bool, typer.Option("--resubmit", help="Send recoverable reasons back to the queue.")
    ] = False,
    output: OutputOption = OutputFormat.text,
) -> None:
    """Drain the dead-letter queue once: log, alert (ORCH_SB_ALERT_WEBHOOK_URL), complete."""
    from listeners.deadletters import process_dead_letters_once
    from listeners.settings import ServiceBusSettings

    settings = ServiceBusSettings()
    if not settings.configured:
        fail("set ORCH_SB_CONNECTION_STRING or ORCH_SB_FULLY_QUALIFIED_NAMESPACE")
    _logging()
    report = asyncio.run(process_dead_letters_once(settings, resubmit=resubmit))
    if output is OutputFormat.json:
        emit_json(report.as_dict())
    else:
        for letter in report.handled:
            typer.echo(
                escape_controls(
                    f"device={letter.device_id} message={letter.message_id} "
                    f"reason={letter.reason} resubmitted={letter.resubmitted}: "
                    f"{letter.description}"
                )
            )
        typer.echo(f"{len(report.handled)} dead letters handled")
    if report.alert_failures:
        raise typer.Exit(EXIT_FAILURE)


def register(app: typer.Typer) -> None:
    app.command("listen")(listen_command)
    app.command("send-event")(send_event_command)
    deadletters = typer.Typer(help="The ingress dead-letter queue.", no_args_is_help=True)
    deadletters.command("process")(process_dead_letters_command)
    app.add_typer(deadletters, name="deadletters")
