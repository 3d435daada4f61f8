"""The authoring commands, run as the real ``orchestration`` command and through typer's runner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from interpreter.limits import MAX_DOCUMENT_BYTES
from interpreter.schema import schema_text
from tests.unit.definition_cases import INVALID, REPO, SAMPLES, VALID, WARNINGS, expected

runner = CliRunner()
ONBOARDING = str(REPO / "definitions" / "device-onboarding.json")


def orchestration(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_validate_every_sample_with_the_real_command_exits_0() -> None:
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "definitions").glob("*.json"))
    done = orchestration("validate", *files)
    assert done.returncode == 0, done.stdout + done.stderr
    for sample in SAMPLES:
        assert f"definitions/{sample.name}: valid" in done.stdout
    assert "definitions/schema.json: skipped" in done.stdout


def test_invalid_file_with_the_real_command_exits_1_and_prints_path_pointer_code() -> None:
    path = REPO / "tests/fixtures/definitions/invalid/unknown-next.json"
    done = orchestration("validate", str(path))
    assert done.returncode == 1
    assert f"{path}:/states/A/next: error unknown-target: " in done.stdout


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_each_invalid_fixture_exits_1_with_its_codes(path: Path) -> None:
    result = runner.invoke(app, ["validate", "--output", "json", str(path)])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["activitiesChecked"] is True, report["activitiesSkippedBecause"]
    [file] = report["files"]
    found = [{"code": p["code"], "pointer": p["pointer"]} for p in file["problems"]]
    assert found == expected(path)
    assert file["valid"] is False


def test_valid_fixtures_exit_0() -> None:
    result = runner.invoke(app, ["validate", *map(str, VALID)])
    assert result.exit_code == 0, result.output


def test_json_output_is_json_and_covers_every_file() -> None:
    files = [ONBOARDING, str(INVALID[0])]
    result = runner.invoke(app, ["validate", "-o", "json", *files])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert [f["path"] for f in report["files"]] == files
    assert [f["valid"] for f in report["files"]] == [True, False]
    assert report["valid"] is False


def test_strict_turns_warnings_into_failure(tmp_path: Path) -> None:
    definition = {
        "name": "w",
        "version": "1",
        "startAt": "A",
        "states": {"A": {"type": "wait", "event": {"name": "e"}, "end": True}},
    }
    path = tmp_path / "w.json"
    path.write_text(json.dumps(definition))
    relaxed = runner.invoke(app, ["validate", str(path)])
    assert relaxed.exit_code == 0
    assert "warning wait-without-timeout" in relaxed.stdout
    assert runner.invoke(app, ["validate", "--strict", str(path)]).exit_code == 1


@pytest.mark.parametrize("path", WARNINGS, ids=lambda p: p.name)
def test_each_warning_fixture_passes_unless_strict(path: Path) -> None:
    relaxed = runner.invoke(app, ["validate", "--output", "json", str(path)])
    assert relaxed.exit_code == 0, relaxed.output
    [file] = json.loads(relaxed.stdout)["files"]
    found = [
        {"code": p["code"], "pointer": p["pointer"], "severity": p["severity"]}
        for p in file["problems"]
    ]
    assert found == expected(path)
    assert runner.invoke(app, ["validate", "--strict", str(path)]).exit_code == 1


def test_activity_check_can_be_skipped_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text(
        json.dumps(
            {
                "name": "a",
                "version": "1",
                "startAt": "A",
                "states": {"A": {"type": "task", "activity": "no.such", "end": True}},
            }
        )
    )
    assert runner.invoke(app, ["validate", str(path)]).exit_code == 1
    skipped = runner.invoke(app, ["validate", "--no-activities", str(path)])
    assert skipped.exit_code == 0
    assert "unknown-activity check skipped" in skipped.stderr


def test_huge_and_missing_files_are_reported_not_crashed(tmp_path: Path) -> None:
    huge = tmp_path / "huge.json"
    with huge.open("wb") as handle:
        handle.truncate(10 * 1024 * 1024)
    result = runner.invoke(app, ["validate", str(huge), str(tmp_path / "missing.json")])
    assert result.exit_code == 1
    assert f"{huge}:/: error document-too-large: the document is 10,485,760 bytes" in result.stdout
    assert f"the limit is {MAX_DOCUMENT_BYTES:,} bytes" in result.stdout
    assert "missing.json:/: error unreadable-file" in result.stdout


def test_graph_prints_mermaid_or_dot() -> None:
    mermaid = runner.invoke(app, ["graph", ONBOARDING])
    assert mermaid.exit_code == 0 and mermaid.stdout.startswith("flowchart TD")
    dot = runner.invoke(app, ["graph", ONBOARDING, "--format", "dot"])
    assert dot.exit_code == 0 and dot.stdout.startswith('digraph "device-onboarding"')


def test_graph_of_a_broken_file_fails_with_the_problems() -> None:
    path = str(REPO / "tests/fixtures/definitions/invalid/invalid-json.json")
    result = runner.invoke(app, ["graph", path])
    assert result.exit_code == 1
    assert "invalid-json" in result.stderr


def test_schema_prints_the_committed_schema() -> None:
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    assert result.stdout == schema_text()


def test_explain_text_and_json() -> None:
    text = runner.invoke(app, ["explain", ONBOARDING])
    assert text.exit_code == 0 and "Events waited for:" in text.stdout
    data = runner.invoke(app, ["explain", ONBOARDING, "--output", "json"])
    assert json.loads(data.stdout)["name"] == "device-onboarding"
