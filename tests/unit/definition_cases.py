"""Shared by the authoring tests: fixture paths, built-in activity names, tiny definitions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "definitions"
VALID = sorted((FIXTURES / "valid").glob("*.json"))
INVALID = sorted(p for p in (FIXTURES / "invalid").glob("*.json") if not p.stem.endswith(".expect"))
#: Valid definitions that draw warnings only; their .expect.json also gives each problem's severity.
WARNINGS = sorted(
    p for p in (FIXTURES / "warnings").glob("*.json") if not p.stem.endswith(".expect")
)
SAMPLES = sorted(p for p in (REPO / "definitions").glob("*.json") if p.name != "schema.json")

#: The built-in activity names of docs/CONTRACTS.md.
BUILTIN_ACTIVITIES = (
    "records.create",
    "records.update",
    "records.get",
    "records.rollbackCreate",
    "events.get",
    "events.clear",
    "http.request",
    "notify.send",
    "definitions.load",
    "definitions.validate",
)


def expected(path: Path) -> list[dict[str, str]]:
    data = json.loads(path.with_name(path.stem + ".expect.json").read_text())
    problems: list[dict[str, str]] = data["problems"]
    return problems


def doc(states: dict[str, Any], start: str = "A", **extra: Any) -> str:
    """A definition's text."""
    return json.dumps({"name": "t", "version": "1", **extra, "startAt": start, "states": states})
