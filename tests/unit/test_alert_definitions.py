"""What ``automations apply`` reads to bound the paused threshold: the definitions in the layout
``definitions.load`` uses, not the schema or the mocks beside them."""

from __future__ import annotations

import json
from pathlib import Path

from operations.automations import definition_files, load_definitions

REPO_ROOT = Path(__file__).resolve().parents[2]


def _definition(name: str, version: str) -> str:
    states = {"Done": {"type": "succeed"}}
    return json.dumps({"name": name, "version": version, "startAt": "Done", "states": states})


def test_shipped_definitions_load_without_warnings() -> None:
    definitions, problems = load_definitions(REPO_ROOT / "definitions")
    assert problems == []
    assert "device-onboarding" in {d.name for d in definitions}


def test_current_and_versioned_files_are_read_schema_and_mocks_are_not(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(_definition("a", "2"))
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.json").write_text(_definition("a", "1"))
    (tmp_path / "schema.json").write_text("{}")
    (tmp_path / "mocks").mkdir()
    (tmp_path / "mocks" / "a.mocks.json").write_text("{}")
    (tmp_path / "broken.json").write_text("{not json")

    files = definition_files(tmp_path)
    definitions, problems = load_definitions(tmp_path)

    relative = [p.relative_to(tmp_path).as_posix() for p in files]
    assert relative == ["a.json", "broken.json", "a/1.json"]
    assert sorted((d.name, d.version) for d in definitions) == [("a", "1"), ("a", "2")]
    assert len(problems) == 1 and "broken.json" in problems[0]


def test_a_missing_directory_is_empty(tmp_path: Path) -> None:
    assert load_definitions(tmp_path / "nowhere") == ([], [])
