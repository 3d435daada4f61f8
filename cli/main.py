"""Entry point of ``orchestration``: builds the typer app from the command modules.

Each command module exposes ``register(app)`` and imports its heavy dependencies (Prefect,
databases) inside the commands, so ``orchestration validate`` stays fast. A known failure (a
malformed setting, a database or Prefect server out of reach) ends any command with one ``error:``
line and its exit code (``cli.failures``).
"""

from __future__ import annotations

import importlib

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

for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(app)


def main() -> None:
    from cli.failures import answer_known_failures

    with answer_known_failures():
        app()


if __name__ == "__main__":
    main()
