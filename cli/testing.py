"""``orchestration test DEFINITION --mocks FILE``: dry-run a definition against mocked outcomes.

Pure: the definition is loaded and validated, then ``interpreter.simulate`` drives the engine with
the mocks (no Prefect, no database, no HTTP, no sleeping). Prints the path taken, the activity calls
and the final data. Exit 0 when the simulated run succeeded; 1 when it failed, stopped waiting for
an event, ran out of mocks, or the files are invalid.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from cli.output import EXIT_FAILURE, OutputFormat, OutputOption, emit_json, fail
from interpreter.errors import AuthoringError
from interpreter.limits import MAX_DOCUMENT_BYTES
from interpreter.loader import definition_hash, load_definition
from interpreter.models import WorkflowDefinition
from interpreter.run_input import check_run_input
from interpreter.simulate import MAX_STEPS, Mocks, SimulationResult, simulate
from interpreter.validate import require_valid

__all__ = ["dry_run_command", "register", "result_to_dict"]


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_DOCUMENT_BYTES:
            fail(f"{what} {path} is {size:,} bytes; the limit is {MAX_DOCUMENT_BYTES:,} bytes")
        return path.read_bytes()
    except OSError as exc:
        fail(f"cannot read {what} {path}: {exc.strerror}")


def _load_mocks(path: Path) -> Mocks:
    try:
        document = json.loads(_read_bytes(path, "mocks file"))
    except ValueError as exc:
        fail(f"mocks file {path} is not JSON: {exc}")
    try:
        return Mocks.model_validate(document)
    except ValidationError as exc:
        details = "; ".join(
            f"/{'/'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        fail(f"mocks file {path} is not valid: {details}")


def _require_input_fits(path: Path, definition: WorkflowDefinition, mocks: Mocks) -> None:
    """The mocked input must satisfy the definition's input schema, as a real run's must."""
    problems = check_run_input(definition, mocks.input)
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        fail(f"{path}: the mocked input {first.pointer or '/'}: {first.message}{more}")


def result_to_dict(result: SimulationResult) -> dict[str, Any]:
    """The simulation result as JSON-ready data (camelCase keys)."""
    return {
        "status": result.status,
        "message": result.message,
        "output": result.output,
        "error": result.error,
        "cause": result.cause,
        "trail": [
            {
                "state": e.state,
                "path": e.path,
                "visit": e.visit,
                "type": e.type,
                "outcome": e.outcome,
                "at": e.at.isoformat(),
            }
            for e in result.trail
        ],
        "calls": [
            {
                "kind": c.kind,
                "state": c.state,
                "path": c.path,
                "visit": c.visit,
                "attempt": c.attempt,
                "activity": c.activity,
                "input": c.input,
                "idempotencyKey": c.idempotency_key,
                "outcome": c.outcome,
            }
            for c in result.calls
        ],
        "data": result.data,
    }


def _print_text(result: SimulationResult) -> None:
    echo = typer.echo
    echo("path taken:")
    for n, entry in enumerate(result.trail, start=1):
        visit = f" (visit {entry.visit})" if entry.visit > 1 else ""
        echo(f"  {n:>3}. {entry.path}{visit} [{entry.type}] {entry.outcome}")
    echo(f"activity calls: {len(result.calls)}")
    for call in result.calls:
        what = "compensate " if call.kind == "compensation" else ""
        echo(
            f"  {call.path} #{call.attempt} {what}{call.activity} "
            f"{json.dumps(call.input, default=str, sort_keys=True)} -> {call.outcome}"
        )
    color = typer.colors.GREEN if result.status == "succeeded" else typer.colors.RED
    typer.secho(f"result: {result.status}", fg=color)
    if result.message:
        echo(f"  {result.message}")
    if result.error:
        echo(f"  error: {result.error}" + (f": {result.cause}" if result.cause else ""))
    if result.status == "succeeded":
        echo("output: " + json.dumps(result.output, indent=2, default=str))
    echo("final data: " + json.dumps(result.data, indent=2, default=str))


def dry_run_command(
    definition_file: Annotated[
        Path, typer.Argument(metavar="DEFINITION", help="A definition file (JSON).")
    ],
    mocks: Annotated[
        Path,
        typer.Option("--mocks", "-m", help="Mocks file (JSON): input, state outcomes, events."),
    ],
    output: OutputOption = OutputFormat.text,
    max_steps: Annotated[
        int, typer.Option("--max-steps", min=1, help="Stop a run that takes more steps.")
    ] = MAX_STEPS,
) -> None:
    """Dry-run a definition against mocked activity outcomes and events.

    Exit 0 when the simulated run succeeded; 1 when it failed, waits for an event the mocks do not
    provide, or a mock is missing.
    """
    mock_data = _load_mocks(mocks)
    try:
        definition = load_definition(_read_bytes(definition_file, "definition"))
        require_valid(definition)
        _require_input_fits(definition_file, definition, mock_data)
        result = simulate(
            definition, mock_data, definition_hash=definition_hash(definition), max_steps=max_steps
        )
    except AuthoringError as exc:
        fail(f"{definition_file}: {exc}")
    if output is OutputFormat.json:
        emit_json(result_to_dict(result))
    else:
        _print_text(result)
    if result.status != "succeeded":
        raise typer.Exit(EXIT_FAILURE)


def register(app: typer.Typer) -> None:
    app.command("test")(dry_run_command)
