"""Authoring commands: ``validate``, ``graph``, ``schema`` and ``explain`` definition files.

They need only the pure interpreter (and, for ``validate``, the activity registry when it can be
loaded), so they run without a database or a Prefect server. The CLI reads the files; the
interpreter gets their bytes.
"""

from __future__ import annotations

import stat
import sys
from collections.abc import Collection
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.output import EXIT_FAILURE, OutputFormat, OutputOption, emit_json, fail
from interpreter.errors import AuthoringError
from interpreter.explain import explain, explain_text
from interpreter.graph import to_dot, to_mermaid
from interpreter.limits import MAX_DOCUMENT_BYTES
from interpreter.loader import parse_document, read_definition
from interpreter.models import WorkflowDefinition
from interpreter.problems import Problem
from interpreter.schema import SCHEMA_ID, json_schema, schema_text
from interpreter.validate import validate

__all__ = ["GraphFormat", "read_limited", "register"]


class GraphFormat(StrEnum):
    mermaid = "mermaid"
    dot = "dot"


FilesArgument = Annotated[
    list[Path], typer.Argument(help="Definition files (JSON).", show_default=False)
]
FileArgument = Annotated[Path, typer.Argument(help="A definition file (JSON).", show_default=False)]

_FILE_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
}


def read_limited(path: Path) -> tuple[bytes | None, Problem | None]:
    """The bytes of a regular file no larger than the limit, or the problem that refused it.

    Only regular files are opened: a FIFO would block the open until a writer came, a device
    such as ``/dev/zero`` reports a size of 0 and never ends. The read itself stops one byte past
    the limit, for a file that grows or lies about its size (``/proc``)."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            what = _FILE_KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
            message = f"{path} is {what}, not a regular file"
            return None, Problem("unreadable-file", "", message)
        if info.st_size > MAX_DOCUMENT_BYTES:
            message = (
                f"the document is {info.st_size:,} bytes; the limit is {MAX_DOCUMENT_BYTES:,} bytes"
            )
            return None, Problem("document-too-large", "", message)
        with path.open("rb") as handle:
            data = handle.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as exc:
        return None, Problem("unreadable-file", "", f"cannot read {path}: {exc.strerror}")
    if len(data) > MAX_DOCUMENT_BYTES:
        message = f"the document is over the limit of {MAX_DOCUMENT_BYTES:,} bytes"
        return None, Problem("document-too-large", "", message)
    return data, None


def _read(path: Path) -> tuple[WorkflowDefinition | None, list[Problem], bytes | None]:
    """Load one file; too large a file is refused from its size, without reading it."""
    data, problem = read_limited(path)
    if data is None:
        return None, [problem] if problem else [], None
    result = read_definition(data)
    return result.definition, result.problems, data


def _is_language_schema(data: bytes) -> bool:
    """True for the language's own JSON Schema (``definitions/schema.json`` sits beside samples)."""
    try:
        document = parse_document(data)
    except AuthoringError:
        return False
    return isinstance(document, dict) and document.get("$id") == SCHEMA_ID


def _registry_names() -> tuple[Collection[str] | None, str | None]:
    """The registered activity names, or None and why the check is skipped."""
    try:
        from tasks.registry import default_registry
    except ImportError as exc:
        return None, f"tasks.registry is not importable ({exc})"
    try:
        return default_registry().names(), None
    except Exception as exc:  # a broken registry must not hide the definition's own problems
        return None, f"the activity registry failed to load ({type(exc).__name__}: {exc})"


def _line(path: Path, problem: Problem) -> str:
    hint = f" ({problem.hint})" if problem.hint else ""
    where = problem.pointer or "/"
    return f"{path}:{where}: {problem.severity} {problem.code}: {problem.message}{hint}"


def validate_command(
    files: FilesArgument,
    output: OutputOption = OutputFormat.text,
    strict: Annotated[
        bool, typer.Option("--strict", help="Treat warnings as errors (exit 1 on any warning).")
    ] = False,
    check_activities: Annotated[
        bool,
        typer.Option(
            "--activities/--no-activities",
            help="Check task activities against the activity registry when it can be loaded.",
        ),
    ] = True,
) -> None:
    """Validate definition files: every problem at once, each with a code and a JSON pointer.

    Exit 0 when every file is valid, 1 when any has an error (or, with --strict, a warning).
    """
    activities: Collection[str] | None = None
    skipped: str | None = "disabled by --no-activities"
    if check_activities:
        activities, skipped = _registry_names()
    reports: list[dict[str, Any]] = []
    skipped_files: list[str] = []
    all_valid = True
    for path in files:
        definition, problems, data = _read(path)
        if definition is None and data is not None and _is_language_schema(data):
            skipped_files.append(str(path))
            continue
        if definition is not None:
            problems = validate(definition, activities=activities)
        errors = sum(1 for p in problems if p.is_error)
        warnings = len(problems) - errors
        valid = errors == 0 and not (strict and warnings)
        all_valid = all_valid and valid
        reports.append(
            {
                "path": str(path),
                "valid": valid,
                "errors": errors,
                "warnings": warnings,
                "problems": [p.to_dict() for p in problems],
                "_problems": problems,
            }
        )
    if output is OutputFormat.json:
        emit_json(
            {
                "valid": all_valid,
                "strict": strict,
                "activitiesChecked": activities is not None,
                "activitiesSkippedBecause": skipped,
                "skippedSchemaFiles": skipped_files,
                "files": [{k: v for k, v in r.items() if k != "_problems"} for r in reports],
            }
        )
    else:
        if skipped is not None:
            typer.echo(f"note: unknown-activity check skipped: {skipped}", err=True)
        for name in skipped_files:
            typer.echo(f"{name}: skipped (the language's JSON Schema, not a definition)")
        for report in reports:
            for problem in report["_problems"]:
                typer.echo(_line(Path(report["path"]), problem))
            verdict = "valid" if report["valid"] else "INVALID"
            typer.echo(
                f"{report['path']}: {verdict} "
                f"({report['errors']} errors, {report['warnings']} warnings)"
            )
    if not all_valid:
        raise typer.Exit(EXIT_FAILURE)


def _load_or_fail(path: Path) -> WorkflowDefinition:
    definition, problems, _data = _read(path)
    if definition is None:
        for problem in problems:
            typer.echo(_line(path, problem), err=True)
        fail(f"{path} is not a workflow definition; run `orchestration validate {path}`")
    return definition


def graph_command(
    file: FileArgument,
    format: Annotated[
        GraphFormat, typer.Option("--format", "-f", help="mermaid (default) or dot (Graphviz).")
    ] = GraphFormat.mermaid,
) -> None:
    """Print the definition as a Mermaid flowchart or a Graphviz digraph."""
    definition = _load_or_fail(file)
    render = to_dot if format is GraphFormat.dot else to_mermaid
    sys.stdout.write(render(definition))


def schema_command() -> None:
    """Print the JSON Schema of the definition language."""
    sys.stdout.write(schema_text(json_schema()))


def explain_command(file: FileArgument, output: OutputOption = OutputFormat.text) -> None:
    """Summarize a definition: states, activities used, events waited for, compensations."""
    definition = _load_or_fail(file)
    if output is OutputFormat.json:
        emit_json(explain(definition))
    else:
        sys.stdout.write(explain_text(definition))


def register(app: typer.Typer) -> None:
    app.command("validate")(validate_command)
    app.command("graph")(graph_command)
    app.command("schema")(schema_command)
    app.command("explain")(explain_command)
