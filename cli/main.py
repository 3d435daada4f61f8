"""Entry point of ``orchestration``: builds the typer app from the command modules.

Each command module exposes ``register(app)`` and imports its heavy dependencies (Prefect,
databases) inside the commands, so ``orchestration validate`` stays fast. A known failure (a
malformed setting, a database or Prefect server out of reach) ends any command with one ``error:``
line and its exit code (``cli.failures``).
"""

from __future__ import annotations

import importlib
import inspect

import typer

__all__ = ["app", "main"]

COMMAND_MODULES: tuple[str, ...] = (
    "cli.authoring",
    "cli.activities",
    "cli.testing",
    "cli.ops",
    "cli.running",
    "cli.ingress",
    "cli.db",
    "cli.server",
)

app = typer.Typer(
    name="orchestration",
    help="JSON-configurable workflow orchestration for device fleets, on Prefect 3.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_PREFECT = (
    "PREFECT_API_URL (unset: the server of `orchestration server start` while it answers, "
    "else a local one for this command)"
)
_DB_ONE_SHOT = "ORCH_DB_URL (unset: the SQLite file .orchestration/orchestration.db)"
_DB_LONG = "ORCH_DB_URL (or --embedded / ORCH_EMBEDDED=true for the SQLite file)"
#: What each command reads from the environment, shown at the end of its ``--help``. A command
#: missing here reads nothing but its options (tests/unit/test_cli_help.py keeps this honest).
ENVIRONMENT: dict[str, str] = {
    "run": f"{_PREFECT}; {_DB_ONE_SHOT}; ORCH_HTTP_ALLOWED_HOSTS and ORCH_NOTIFY_* for activities.",
    "demo": f"{_PREFECT}; {_DB_ONE_SHOT}.",
    "worker": (
        f"PREFECT_API_URL; {_DB_LONG}; PREFECT_FLOWS_HEARTBEAT_FREQUENCY (30 for the crashed-run "
        "alert); ORCH_INGRESS_* (the reconciler); ORCH_DEFINITIONS_*, ORCH_FLOW_DEFINITIONS_DIR, "
        "ORCH_HTTP_ALLOWED_HOSTS, ORCH_NOTIFY_* (the runs); ORCH_LOG_FORMAT=json for JSON lines."
    ),
    "serve-api": (
        f"ORCH_API_* (API_KEYS, HOST, PORT, ...); PREFECT_API_URL; {_DB_LONG}; ORCH_INGRESS_*; "
        "ORCH_DEFINITIONS_*, ORCH_FLOW_DEFINITIONS_DIR."
    ),
    "listen": (
        "ORCH_SB_CONNECTION_STRING or ORCH_SB_FULLY_QUALIFIED_NAMESPACE, ORCH_SB_QUEUE_NAME and "
        f"the other ORCH_SB_*; PREFECT_API_URL; {_DB_LONG}; ORCH_INGRESS_*; ORCH_LOG_FORMAT=json."
    ),
    "send-event": f"{_PREFECT}; {_DB_ONE_SHOT}; ORCH_INGRESS_* (WORKFLOW, DEPLOYMENT, ...).",
    "deadletters process": (
        "ORCH_SB_CONNECTION_STRING or ORCH_SB_FULLY_QUALIFIED_NAMESPACE, ORCH_SB_QUEUE_NAME, "
        "ORCH_SB_ALERT_WEBHOOK_URL; ORCH_LOG_FORMAT=json."
    ),
    "db migrate": f"{_DB_ONE_SHOT}, unless --url.",
    "db purge-events": f"{_DB_ONE_SHOT}, unless --url.",
    "automations apply": (
        "PREFECT_API_URL; ORCH_ALERTS_* (each option's default). --heartbeat-seconds must match "
        "the workers' PREFECT_FLOWS_HEARTBEAT_FREQUENCY."
    ),
    "automations list": "PREFECT_API_URL.",
}


def _rewrap(text: str) -> str:
    """Join a docstring's hard-wrapped lines into paragraphs, so the terminal wraps them.

    typer's rich help keeps every single line break after the first paragraph: a docstring
    wrapped at 100 columns was printed broken mid-sentence at 80. Paragraphs (blank-line
    separated) stay apart; a paragraph starting with ``\\b`` and list items keep their lines.
    """
    paragraphs = []
    for paragraph in inspect.cleandoc(text).split("\n\n"):
        if paragraph.startswith("\b"):
            paragraphs.append(paragraph)
            continue
        lines: list[str] = []
        for line in paragraph.splitlines():
            if lines and not line.lstrip().startswith(("- ", "* ")):
                lines[-1] = f"{lines[-1]} {line.strip()}"
            else:
                lines.append(line.rstrip())
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def _finish_help(typer_app: typer.Typer, prefix: str = "") -> None:
    """Rewrap every command's help and add what it reads from the environment as its epilog."""
    for command in typer_app.registered_commands:
        name = command.name or ""
        text = command.help or inspect.getdoc(command.callback) or ""
        command.help = _rewrap(text)
        environment = ENVIRONMENT.get(f"{prefix}{name}")
        if environment is not None and command.epilog is None:
            command.epilog = f"Environment: {environment}"
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _finish_help(group.typer_instance, f"{prefix}{group.name} ")


for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(app)
_finish_help(app)


def main() -> None:
    from cli.failures import answer_known_failures

    with answer_known_failures():
        app()


if __name__ == "__main__":
    main()
