"""Every sample definition, dry-run against its mocks files: the path taken and how it ends.

``definitions/mocks/<sample>[.<case>].mocks.json`` belongs to ``definitions/<sample>.json``. Each
mocks file was written for one path through its sample; ``EXPECTED`` pins that path (state path and
trail outcome per step) and the final status, so a change to a sample, its mocks or the engine that
changes the route shows up here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from interpreter import Mocks, SimulationResult, load_definition, require_valid, simulate
from tests.unit.definition_cases import BUILTIN_ACTIVITIES, REPO, SAMPLES

MOCKS_DIR = REPO / "definitions" / "mocks"
MOCKS = sorted(MOCKS_DIR.glob("*.mocks.json"))

Trail = list[tuple[str, str]]

ONBOARDED: Trail = [
    ("CreateOnboardingRecord", "succeeded"),
    ("WaitForDeviceReady", "event"),
    ("GetDeviceEvents", "succeeded"),
    ("ProcessDeviceEvents", "succeeded"),
    ("CheckResult", "-> UpdateAndNotify (default)"),
    ("UpdateAndNotify/0/HasExternalSystem", "-> UpdateExternalSystem (default)"),
    ("UpdateAndNotify/0/UpdateExternalSystem", "succeeded"),
    ("UpdateAndNotify/1/NotifyOperators", "succeeded"),
    ("UpdateAndNotify", "succeeded"),
    ("CompleteOnboarding", "succeeded"),
    ("ClearDeviceEvents", "succeeded"),
    ("Onboarded", "succeeded"),
]
DEVICE_NEVER_READY: Trail = [
    ("CreateOnboardingRecord", "succeeded"),
    ("WaitForDeviceReady", "timeout"),
    ("OnboardingTimedOut", "succeeded"),
    ("RollBack", "compensated 1"),
]
FIRMWARE_UPDATED: Trail = [
    ("RecordUpdate", "succeeded"),
    ("InstallModules/0/Install", "succeeded"),
    ("InstallModules/1/Install", "succeeded"),
    ("InstallModules", "succeeded"),
    ("GiveDeviceTime", "elapsed"),
    ("PollVersion", "succeeded"),  # after one retried Http.Status5xx: still the old version
    ("IsUpdated", "-> WaitBeforePolling"),
    ("WaitBeforePolling", "elapsed"),
    ("PollVersion", "succeeded"),
    ("IsUpdated", "-> MarkDone"),
    ("MarkDone", "succeeded"),
]
INSTALL_REFUSED: Trail = [
    ("RecordUpdate", "succeeded"),
    ("InstallModules/0/Install", "succeeded"),
    ("InstallModules/1/Install", "failed: Http.Status4xx"),
    ("InstallModules", "failed: Http.Status4xx"),
    ("UpdateFailed", "compensated 1"),
]
DECOMMISSIONED: Trail = [
    ("WaitForSchedule", "elapsed"),
    ("LoadDevice", "succeeded"),
    ("OpenTicket", "succeeded"),
    ("NotifyExternal", "succeeded"),
    ("CoolDown", "elapsed"),
    ("ClearEvents", "succeeded"),
    ("Retired", "succeeded"),
]
REGISTRY_REFUSES: Trail = [
    ("WaitForSchedule", "elapsed"),
    ("LoadDevice", "succeeded"),
    ("OpenTicket", "succeeded"),
    ("NotifyExternal", "failed: Http.Forbidden"),
    ("UndoTicket", "compensated 1"),
    ("Failed", "failed: DecommissionFailed"),
]
INSPECTED: Trail = [
    ("LoadReport", "succeeded"),
    ("Route", "-> Inspect"),
    ("Inspect", "succeeded"),
]

#: mocks file -> (final status, error, path taken)
EXPECTED: dict[str, tuple[str, str | None, Trail]] = {
    "all-operators.mocks.json": ("succeeded", None, INSPECTED),
    "device-decommission.mocks.json": ("succeeded", None, DECOMMISSIONED),
    "device-decommission.registry-refuses.mocks.json": (
        "failed",
        "DecommissionFailed",
        REGISTRY_REFUSES,
    ),
    "device-onboarding.mocks.json": ("succeeded", None, ONBOARDED),
    "device-onboarding.device-never-ready.mocks.json": (
        "failed",
        "OnboardingFailed",
        DEVICE_NEVER_READY,
    ),
    "firmware-update.mocks.json": ("succeeded", None, FIRMWARE_UPDATED),
    "firmware-update.install-refused.mocks.json": (
        "failed",
        "FirmwareUpdateFailed",
        INSTALL_REFUSED,
    ),
}


def sample_of(mocks: Path) -> Path:
    return REPO / "definitions" / (mocks.name.split(".", 1)[0] + ".json")


def dry_run(mocks_name: str) -> SimulationResult:
    mocks = MOCKS_DIR / mocks_name
    definition = load_definition(sample_of(mocks).read_bytes())
    require_valid(definition, activities=BUILTIN_ACTIVITIES)
    return simulate(definition, Mocks.model_validate(json.loads(mocks.read_text())))


def calls(result: SimulationResult, kind: str) -> list[tuple[str, int, str]]:
    return [(c.path, c.attempt, c.outcome) for c in result.calls if c.kind == kind]


def test_every_sample_has_mocks_and_every_mocks_file_an_expected_path() -> None:
    assert {sample_of(m) for m in MOCKS} == set(SAMPLES)
    assert sorted(m.name for m in MOCKS) == sorted(EXPECTED)


def test_at_least_one_sample_path_ends_in_compensation_and_failure() -> None:
    endings = [(status, trail[-1][1]) for status, _, trail in EXPECTED.values()]
    assert ("failed", "compensated 1") in endings


@pytest.mark.parametrize("mocks_name", sorted(EXPECTED))
def test_sample_takes_the_path_its_mocks_were_written_for(mocks_name: str) -> None:
    status, error, trail = EXPECTED[mocks_name]
    result = dry_run(mocks_name)
    assert result.message is None
    assert [(e.path, e.outcome) for e in result.trail] == trail
    assert (result.status, result.error) == (status, error)


def test_onboarding_retries_the_external_update_then_returns_record_and_event_count() -> None:
    result = dry_run("device-onboarding.mocks.json")
    assert calls(result, "task")[3:5] == [
        ("UpdateAndNotify/0/UpdateExternalSystem", 1, "failed: Http.Status5xx"),
        ("UpdateAndNotify/0/UpdateExternalSystem", 2, "succeeded"),
    ]
    assert calls(result, "compensation") == []
    assert result.output == {"recordId": "rec-1", "events": 2}


def test_device_never_ready_times_out_notifies_and_rolls_the_record_back() -> None:
    result = dry_run("device-onboarding.device-never-ready.mocks.json")
    [wait] = [e for e in result.trail if e.state == "WaitForDeviceReady"]
    assert wait.at == datetime(2025, 1, 2, tzinfo=UTC)  # the 86,400 s timeout, simulated
    assert calls(result, "compensation") == [("CreateOnboardingRecord", 1, "succeeded")]
    [undo] = [c for c in result.calls if c.kind == "compensation"]
    assert (undo.activity, undo.input) == ("records.rollbackCreate", {"id": "rec-2"})
    assert result.cause == (
        "onboarding did not complete (the trail shows the step that failed or timed out); "
        "its work was undone"
    )


def test_firmware_update_polls_until_the_device_reports_the_new_version() -> None:
    result = dry_run("firmware-update.mocks.json")
    assert calls(result, "task")[3:6] == [
        ("PollVersion", 1, "failed: Http.Status5xx"),
        ("PollVersion", 2, "succeeded"),
        ("PollVersion", 1, "succeeded"),  # the second visit, after WaitBeforePolling
    ]
    installs = [c.input["json"]["module"] for c in result.calls if c.state == "Install"]
    assert installs == ["modem", "sensor"]
    assert result.data["state"]["status"]["json"]["version"] == "2.1.0"
    # 60 s reboot + 1 s retry delay + 5 min between polls on the simulated clock
    assert result.trail[-1].at == datetime(2025, 1, 1, 0, 6, 1, tzinfo=UTC)


def test_refused_install_is_caught_and_the_update_record_rolled_back() -> None:
    result = dry_run("firmware-update.install-refused.mocks.json")
    assert result.data["state"]["error"] == {
        "error": "Http.Status4xx",
        "cause": "404: unknown module",
    }
    # UpdateFailed is a compensation state without next: undo RecordUpdate, then fail.
    assert [path for path, _, _ in calls(result, "compensation")] == ["RecordUpdate"]
    assert result.error == "FirmwareUpdateFailed"


def test_decommission_waits_for_its_schedule_and_retention_date() -> None:
    result = dry_run("device-decommission.mocks.json")
    at = {e.state: e.at for e in result.trail}
    assert at["WaitForSchedule"] == datetime(2025, 1, 2, 6, tzinfo=UTC)
    assert at["ClearEvents"] == datetime(2030, 1, 1, tzinfo=UTC)
    assert result.output == result.data["state"]


def test_registry_refusal_undoes_only_the_ticket() -> None:
    result = dry_run("device-decommission.registry-refuses.mocks.json")
    assert calls(result, "compensation") == [("OpenTicket", 1, "succeeded")]
    assert result.data["state"]["error"]["error"] == "Http.Forbidden"


def test_all_operators_routes_a_matching_serial_to_inspection() -> None:
    result = dry_run("all-operators.mocks.json")
    [inspect] = [c for c in result.calls if c.state == "Inspect"]
    assert inspect.input["message"] == "dev-7"
    assert inspect.input["data"]["count"] == 1


def orchestration_test(definition: str, mocks: str) -> tuple[int, Any]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "test",
            definition,
            "--mocks",
            mocks,
            "--output",
            "json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode, json.loads(done.stdout)


@pytest.mark.parametrize(
    ("mocks_name", "exit_code"),
    [("device-onboarding.mocks.json", 0), ("device-onboarding.device-never-ready.mocks.json", 1)],
)
def test_the_real_command_prints_json_and_exits_by_status(mocks_name: str, exit_code: int) -> None:
    status, error, trail = EXPECTED[mocks_name]
    code, report = orchestration_test(
        "definitions/device-onboarding.json", f"definitions/mocks/{mocks_name}"
    )
    assert code == exit_code
    assert (report["status"], report["error"]) == (status, error)
    assert [(e["path"], e["outcome"]) for e in report["trail"]] == trail
    assert report["calls"][0]["idempotencyKey"].startswith("simulation:")
