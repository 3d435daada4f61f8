"""Every ``--help`` of ``orchestration`` reads whole at 80 and 120 columns.

What an operator saw: docstrings hard-wrapped at 100 columns printed with breaks mid-sentence at
80 (typer's rich help keeps every line break after the first paragraph), an option's help cut
with "…", and no word of the environment variables a command needs. Checked on the rendered
text of every command and group, at both widths:

- a prose line is followed by another line of the same paragraph only when the next line's first
  word would not have fit: the terminal wrapped it, not the docstring;
- nothing is cut (no "…");
- each command that reads settings names its variables (``cli.main.ENVIRONMENT``), and every
  command whose own code builds a settings model, needs ``ORCH_DB_URL`` or a Prefect API is listed
  there.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from cli.main import ENVIRONMENT, app

REPO = Path(__file__).resolve().parents[2]
WIDTHS = (80, 120)
#: Lines of the option and argument panels (drawn boxes): rich wraps their cells itself.
_BOX = re.compile(r"^\s*[│╭╰]")
#: Source of a command that reads settings from the environment.
_READS_SETTINGS = re.compile(r"Settings\(|require_database_url\(|prefect_api\(")


def _commands() -> Iterator[tuple[str, Any]]:
    root = typer.main.get_command(app)

    def walk(command: Any, path: str) -> Iterator[tuple[str, Any]]:
        yield path, command
        # typer vendors its own click: a group is what has subcommands.
        for name, child in sorted(getattr(command, "commands", {}).items()):
            yield from walk(child, f"{path} {name}".strip())

    yield from walk(root, "")


COMMANDS = dict(_commands())


#: Renders every command's help in a fresh interpreter whose terminal is ``COLUMNS`` wide (rich
#: reads the width when the process starts it; in this process it sticks to the first one).
_RENDER = """
import json, sys
from typer.testing import CliRunner
from cli.main import app
out = {}
for path in json.loads(sys.argv[1]):
    result = CliRunner().invoke(app, [*path.split(), "--help"])
    out[path] = [result.exit_code, result.output]
print(json.dumps(out))
"""


@functools.cache
def _rendered(width: int) -> dict[str, tuple[int, str]]:
    env = {**os.environ, "COLUMNS": str(width), "TERMINAL_WIDTH": str(width)}
    done = subprocess.run(
        [sys.executable, "-c", _RENDER, json.dumps(sorted(COMMANDS))],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return {path: (code, text) for path, (code, text) in json.loads(done.stdout).items()}


def _help(path: str, width: int) -> str:
    code, text = _rendered(width)[path]
    assert code == 0, text
    return text


def _hard_breaks(text: str, width: int) -> list[str]:
    """Prose lines broken although the next line's first word would have fit on them."""
    found = []
    lines = [line.rstrip() for line in text.splitlines()]
    for line, following in itertools.pairwise(lines):
        if not line.strip() or not following.strip() or _BOX.match(line) or _BOX.match(following):
            continue
        if following.lstrip().startswith(("- ", "* ", "Usage:")):
            continue
        first_word = following.split()[0]
        # rich pads the help one column on each side.
        if len(line) + 1 + len(first_word) <= width - 1:
            found.append(f"{line!r} / {following!r}")
    return found


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_help_is_wrapped_by_the_terminal_and_nothing_is_cut(path: str, width: int) -> None:
    text = _help(path, width)
    assert _hard_breaks(text, width) == []
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width


@pytest.mark.parametrize("path", sorted(ENVIRONMENT))
def test_commands_name_the_variables_they_read(path: str) -> None:
    assert path in COMMANDS, f"ENVIRONMENT names {path!r}, which is no command"
    variables = re.findall(r"\b(?:ORCH|PREFECT)_[A-Z_]+\b\*?", ENVIRONMENT[path])
    assert variables
    for width in WIDTHS:
        # Long names may be wrapped onto a line of their own, never split.
        words = set(_help(path, width).split())
        stripped = {w.strip(";,.()[]").split("=")[0] for w in words}
        for variable in variables:
            assert variable in stripped, f"{path} --help at {width} lacks {variable}"


@pytest.mark.parametrize(
    ("path", "needed"),
    [
        ("worker", ("ORCH_DB_URL", "PREFECT_API_URL", "ORCH_EMBEDDED")),
        ("serve-api", ("ORCH_DB_URL", "PREFECT_API_URL", "ORCH_API_*", "ORCH_EMBEDDED")),
        ("listen", ("ORCH_SB_CONNECTION_STRING", "ORCH_SB_FULLY_QUALIFIED_NAMESPACE")),
        ("send-event", ("ORCH_DB_URL", "PREFECT_API_URL", "ORCH_INGRESS_*")),
        ("deadletters process", ("ORCH_SB_CONNECTION_STRING", "ORCH_SB_ALERT_WEBHOOK_URL")),
        ("db migrate", ("ORCH_DB_URL",)),
        ("automations apply", ("PREFECT_API_URL", "ORCH_ALERTS_*")),
        ("run", ("PREFECT_API_URL", "ORCH_DB_URL")),
    ],
)
def test_the_settings_an_operator_needs_are_in_the_help(path: str, needed: tuple[str, ...]) -> None:
    text = " ".join(_help(path, 120).split())
    for variable in needed:
        assert variable in text, f"{path} --help lacks {variable}"


def test_every_command_that_reads_settings_lists_them() -> None:
    missing = []
    for path, command in COMMANDS.items():
        callback = command.callback
        if callback is None or hasattr(command, "commands"):
            continue
        source = inspect.getsource(inspect.unwrap(callback))
        if _READS_SETTINGS.search(source) and path not in ENVIRONMENT:
            missing.append(path)
    assert missing == [], f"commands reading settings without an Environment line: {missing}"
