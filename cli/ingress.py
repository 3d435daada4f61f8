"""``orchestration listen | send-event | deadletters process``: device event ingress.

``listen`` runs the Service Bus listener (``ORCH_SB_*``) and the outbox reconciler until SIGTERM,
one log line per message; it needs ``ORCH_DB_URL`` or ``--embedded`` (``cli.embedded``). Every
plain-text line escapes control characters (``operations.logtext``): a newline in a device id,
session id or event name cannot forge a line. ``send-event`` is the embedded default's ingress:
the same pipeline after the transport, on the configured database (``ORCH_DB_URL``) and Prefect
(``PREFECT_API_URL``, else the one ``orchestration server start`` keeps, else a local server for
the command's duration). ``deadletters process``
drains the dead-letter queue once, as the scheduled ``process-dead-letters`` flow does.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
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
    device: Annotated[
        str | None, typer.Argument(help="The device id (the session id on Service Bus).")
    ] = None,
    name: Annotated[str | None, typer.Argument(help="The event name, e.g. approve.")] = None,
    payload: Annotated[str, typer.Option("--payload", help="The event payload, a JSON object.")] = (
        "{}"
    ),
    event_id: Annotated[
        str | None, typer.Option("--event-id", help="Idempotency: the same id is stored once.")
    ] = None,
    file: Annotated[
        str | None,
        typer.Option(
            "--file",
            help="Many events: JSON lines ({device, name, payload, eventId} each), - for stdin;"
            " recorded in batches, one summary; exit 1 if a line is refused.",
        ),
    ] = None,
    output: OutputOption = OutputFormat.text,
) -> None:
    """Record a device event and start or route it, exactly as the listener would."""
    if file is not None:
        if device is not None or name is not None or payload != "{}" or event_id is not None:
            fail(
                "--file takes the events from the file: no DEVICE, NAME, --payload or --event-id",
                code=2,
            )
        _send_file(file, output)
        return
    if device is None or name is None:
        fail("give DEVICE and NAME (or --file with JSON lines)", code=2)
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


#: Events recorded per transaction by ``send-event --file``.
FILE_BATCH = 200
_LINE_FIELDS = {"device", "name", "payload", "eventId"}


def parse_event_line(text: str) -> tuple[str, str, dict[str, Any], str | None]:
    """``(device, name, payload, event id)`` of one JSON line; ValueError says what is wrong."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    unknown = sorted(set(document) - _LINE_FIELDS)
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)} (expected {sorted(_LINE_FIELDS)})")
    device, name = document.get("device"), document.get("name")
    payload, event_id = document.get("payload", {}), document.get("eventId")
    if not isinstance(device, str) or not device:
        raise ValueError("device must be a non-empty string")
    if not isinstance(name, str) or not name:
        raise ValueError("name must be a non-empty string")
    if not isinstance(payload, dict):
        raise ValueError("payload must be a JSON object")
    if event_id is not None and (not isinstance(event_id, str) or not event_id):
        raise ValueError("eventId must be a non-empty string")
    return device, name, payload, event_id


def _send_file(file: str, output: OutputFormat) -> None:
    """``send-event --file``: every line parsed, valid ones recorded ``FILE_BATCH`` at a time."""
    import sys
    from collections import Counter

    from cli.running import prefect_api
    from flows.definitions import DefinitionPinner
    from listeners.events import IncomingMessage
    from listeners.local import event_message, open_ingress
    from listeners.pipeline import Disposition
    from listeners.settings import IngressSettings
    from store.settings import DatabaseSettings

    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"--file {file}: cannot read: {exc}", code=2)
    database_url = DatabaseSettings().url
    ingress_settings = IngressSettings()
    _logging(level=None)
    refused: list[dict[str, Any]] = []
    messages: list[tuple[int, IncomingMessage]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            device, name, payload, event_id = parse_event_line(line)
        except ValueError as exc:
            refused.append({"line": number, "reason": "MalformedLine", "description": str(exc)})
            continue
        messages.append((number, event_message(device, name, payload, event_id=event_id)))
    counts: Counter[str] = Counter()
    actions: Counter[str] = Counter()

    async def main() -> None:
        async with open_ingress(
            database_url=database_url,
            settings=ingress_settings,
            definitions=DefinitionPinner.from_environment(),
        ) as rt:
            for start in range(0, len(messages), FILE_BATCH):
                batch = messages[start : start + FILE_BATCH]
                outcomes = await rt.local.send_many([message for _, message in batch])
                for (number, _), outcome in zip(batch, outcomes, strict=True):
                    if outcome.disposition is Disposition.COMPLETE and outcome.result:
                        counts[outcome.result.recorded.value] += 1
                        actions[outcome.result.action.value] += 1
                    else:
                        refused.append(
                            {
                                "line": number,
                                "reason": outcome.reason,
                                "description": outcome.description,
                            }
                        )

    if messages:
        with prefect_api(quiet=output is OutputFormat.json):
            asyncio.run(main())
    refused.sort(key=lambda item: int(item["line"]))
    data: dict[str, Any] = {
        "events": len(messages) + sum(1 for r in refused if r["reason"] == "MalformedLine"),
        "recorded": counts["recorded"],
        "duplicate": counts["duplicate"],
        "refused": refused,
        "actions": dict(sorted(actions.items())),
    }
    if output is OutputFormat.json:
        emit_json(data)
    else:
        for item in refused:
            typer.echo(
                escape_controls(f"line {item['line']}: {item['reason']}: {item['description']}"),
                err=True,
            )
        lines = ", ".join(str(item["line"]) for item in refused)
        typer.echo(
            f"{data['events']} events: recorded={data['recorded']} duplicate={data['duplicate']}"
            f" refused={len(refused)}"
            + (f" (lines {lines})" if refused else "")
            + "".join(f" {action}={n}" for action, n in data["actions"].items())
        )
        if actions["deferred"]:
            typer.echo(
                "deferred: kept in the outbox; the reconciler of `orchestration worker` "
                "(or serve-api, listen) finishes them once Prefect answers",
                err=True,
            )
    if refused:
        raise typer.Exit(EXIT_FAILURE)


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
