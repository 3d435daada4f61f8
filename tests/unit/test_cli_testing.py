"""``orchestration test``: output, exit codes and the errors users see."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from cli.testing import register

REPO = Path(__file__).resolve().parents[2]
DEFINITION = REPO / "definitions" / "device-onboarding.json"
MOCKS = REPO / "definitions" / "mocks" / "device-onboarding.mocks.json"


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.command("other")
    def other() -> None:  # a second command keeps typer from collapsing the app into one command
        """Unused."""

    return app


def test_success_prints_path_and_exits_zero() -> None:
    result = CliRunner().invoke(_app(), ["test", str(DEFINITION), "--mocks", str(MOCKS)])
    assert result.exit_code == 0, result.output
    assert "CheckResult [choice] -> UpdateAndNotify (default)" in result.output
    assert "result: succeeded" in result.output
    assert "final data:" in result.output


def test_json_output() -> None:
    result = CliRunner().invoke(
        _app(), ["test", str(DEFINITION), "--mocks", str(MOCKS), "--output", "json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["status"] == "succeeded"
    assert data["trail"][0]["state"] == "CreateOnboardingRecord"
    assert data["calls"][0]["activity"] == "records.create"


def test_failed_run_and_missing_mock_exit_one(tmp_path: Path) -> None:
    mocks = json.loads(MOCKS.read_text())
    mocks["states"]["GetDeviceEvents"] = [{"error": "Boom", "retryable": False}]
    failing = tmp_path / "failing.json"
    failing.write_text(json.dumps(mocks))
    result = CliRunner().invoke(_app(), ["test", str(DEFINITION), "--mocks", str(failing)])
    assert result.exit_code == 1
    assert "result: failed" in result.output
    assert "OnboardingFailed" in result.output
    assert "compensate records.rollbackCreate" in result.output
    del mocks["states"]["GetDeviceEvents"]
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps(mocks))
    result = CliRunner().invoke(_app(), ["test", str(DEFINITION), "--mocks", str(missing)])
    assert result.exit_code == 1
    assert "no mock for state 'GetDeviceEvents'" in result.output


def test_bad_files_are_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = CliRunner().invoke(_app(), ["test", str(DEFINITION), "--mocks", str(bad)])
    assert result.exit_code == 1
    assert "not JSON" in result.output
    result = CliRunner().invoke(_app(), ["test", str(bad), "--mocks", str(MOCKS)])
    assert result.exit_code == 1
    assert "error:" in result.output
