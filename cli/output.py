"""Shared CLI conventions: ``--output text|json``, printing data and errors, exit codes.

Exit codes: 0 success, 1 a failure the user can act on (invalid definition, run failed),
2 usage error (typer/click's own code for bad arguments).
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from typing import Annotated, Any, NoReturn

import typer

__all__ = ["EXIT_FAILURE", "EXIT_USAGE", "OutputFormat", "OutputOption", "emit_json", "fail"]

EXIT_FAILURE = 1
EXIT_USAGE = 2


class OutputFormat(StrEnum):
    text = "text"
    json = "json"


OutputOption = Annotated[
    OutputFormat,
    typer.Option("--output", "-o", help="Output format: human-readable text or JSON data."),
]


def emit_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout (datetimes and the like as strings)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")


def fail(message: str, *, code: int = EXIT_FAILURE) -> NoReturn:
    """Print an actionable error on stderr and exit with ``code``."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)
