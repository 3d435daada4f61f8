"""The readable summary of a definition."""

from __future__ import annotations

import json

from interpreter import load_definition
from interpreter.explain import explain, explain_text
from tests.unit.definition_cases import REPO

ONBOARDING = load_definition((REPO / "definitions" / "device-onboarding.json").read_text())


def test_explain_lists_activities_events_compensations_and_outcomes() -> None:
    data = explain(ONBOARDING)
    json.dumps(data)  # JSON-ready
    assert data["activities"]["notify.send"] == [
        "OnboardingTimedOut",
        "UpdateAndNotify/1/NotifyOperators",
    ]
    assert list(data["activities"]) == sorted(data["activities"])
    assert data["events"] == [
        {
            "state": "WaitForDeviceReady",
            "event": "device.ready",
            "timeoutSeconds": 86400,
            "timeoutNext": "OnboardingTimedOut",
        }
    ]
    assert data["compensations"] == [
        {
            "state": "CreateOnboardingRecord",
            "activity": "records.create",
            "undoneBy": "records.rollbackCreate",
        }
    ]
    assert {"state": "RollBack", "status": "failed", "error": "OnboardingFailed"} in data[
        "outcomes"
    ]
    assert len(data["states"]) == 15  # 13 + the branch's HasExternalSystem, NoExternalSystem


def test_explain_text_reads_as_a_summary() -> None:
    text = explain_text(ONBOARDING)
    assert text.startswith("device-onboarding 1.0.0\n")
    assert "  device.ready at WaitForDeviceReady (timeout 86400s, then OnboardingTimedOut)" in text
    assert "CreateOnboardingRecord (records.create) is undone by records.rollbackCreate" in text
    assert "RollBack undoes every completed task, newest first; then the run fails" in text


def test_event_without_timeout_says_so() -> None:
    definition = load_definition(
        json.dumps(
            {
                "name": "w",
                "version": "1",
                "startAt": "A",
                "states": {"A": {"type": "wait", "event": {"name": "e"}, "end": True}},
            }
        )
    )
    assert "  e at A (no timeout)" in explain_text(definition)
    assert "Compensations: none" in explain_text(definition)
