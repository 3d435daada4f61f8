"""Entry point of ``orchestration``: builds the typer app from the command modules.

Each command module exposes ``register(app)`` and imports its heavy dependencies (Prefect,
databases) inside the commands, so ``orchestration validate`` stays fast.
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
    app()


if __name__ == "__main__":
    main()
