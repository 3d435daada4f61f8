"""Every state type through the real flow on a real Prefect server (PostgreSQL): tasks, retries,
catch, choice (every operator), short timers, parallel, map, compensation (on failure and as a
state), succeed and fail; and what Prefect shows: task runs named after states, the trail."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.integration.test_flow_harness import FlowSystem, flow_database_url, flow_system

__all__ = ["flow_database_url", "flow_system"]

pytestmark = pytest.mark.integration


def _tag(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_every_state_type_succeeds_with_named_tagged_run(flow_system: FlowSystem) -> None:
    tag = _tag("every")
    run_id = await flow_system.start(
        "every-state.json", {"tag": tag, "path": "ok", "items": [1, 2, 3]}, device_id="dev-1"
    )
    output = await flow_system.result(run_id)

    assert output["first"]["count"] == 1
    assert output["fan"] == [{"Left": {"side": "left"}}, {"Right": {"side": "right"}}]
    assert [item["out"]["value"] for item in output["each"]] == [1, 2, 3]
    flow_run = await flow_system.read(run_id)
    assert flow_run.name == "rt-every-state/dev-1"
    assert {"workflow:rt-every-state", "device:dev-1", "version:1"} <= set(flow_run.tags)


async def test_fail_state_fails_the_run_with_its_error_and_cause(flow_system: FlowSystem) -> None:
    run_id = await flow_system.start("every-state.json", {"tag": _tag("fail"), "path": "fail"})
    flow_run = await flow_system.final(run_id)

    assert flow_run.state.is_failed()
    assert "Broken: Route.Broken: the input asked for the failing path" in flow_run.state.message


async def test_retry_then_success_runs_three_attempts(flow_system: FlowSystem) -> None:
    tag = _tag("retry")
    run_id = await flow_system.start("retry.json", {"tag": tag})
    output = await flow_system.result(run_id)

    assert output["flaky"] == {"attempts": 3}
    assert await flow_system.effects(tag) == 3


async def test_non_retryable_error_goes_straight_to_catch(flow_system: FlowSystem) -> None:
    tag = _tag("catch")
    run_id = await flow_system.start("catch.json", {"tag": tag})
    output = await flow_system.result(run_id)

    assert output["error"]["error"] == "Device.Refused"
    assert await flow_system.effects(tag) == 1  # four attempts allowed, one made


async def test_compensation_runs_in_reverse_past_a_failing_one(flow_system: FlowSystem) -> None:
    tag = _tag("saga")
    names = {
        "a": f"{tag}-do-a",
        "b": f"{tag}-do-b",
        "c": f"{tag}-do-c",
        "undoA": f"{tag}-undo-a",
        "undoB": f"{tag}-undo-b",
        "undoC": f"{tag}-undo-c",
    }
    run_id = await flow_system.start("compensation.json", names)
    flow_run = await flow_system.final(run_id)

    assert flow_run.state.is_failed()
    # Where it started, what compensation did, how it ended.
    assert (
        "D failed (Device.Rejected: the device said no); compensated 3 steps (1 failed); "
        "ended D: Device.Rejected: the device said no"
    ) in flow_run.state.message
    assert await flow_system.effect_order(tag) == [
        names["a"],
        names["b"],
        names["c"],
        names["undoC"],
        names["undoB"],  # failed (Undo.Broken): the saga went on
        names["undoA"],
    ]
    # Each compensation ran exactly once: a failing one is not retried.
    for name in ("undoA", "undoB", "undoC"):
        assert await flow_system.effects(names[name]) == 1, name


async def test_runs_record_metrics_and_failed_attempts(flow_system: FlowSystem) -> None:
    tag = _tag("metrics")
    run_id = await flow_system.start("retry.json", {"tag": tag})
    await flow_system.result(run_id)

    runs = [
        p
        for p in flow_system.metric_points("orchestration.run.duration")
        if p.attributes.get("workflow") == "rt-retry"
    ]
    assert runs and runs[0].attributes["outcome"] == "succeeded" and runs[0].count >= 1
    states = {
        p.attributes.get("state")
        for p in flow_system.metric_points("orchestration.state.duration")
        if p.attributes.get("workflow") == "rt-retry"
    }
    assert "Flaky" in states
    failures = [
        p
        for p in flow_system.metric_points("orchestration.activity.failures")
        if p.attributes == {"activity": "test.flaky", "error": "Device.Busy"}
    ]
    assert failures and failures[0].value >= 2  # two failed attempts before the success


#: Every comparison in operators.json's choice is true on this input, and every one in its negated
#: ``or`` is false.
OPERATOR_INPUT: dict[str, Any] = {
    "n": 5,
    "limit": 5,
    "name": "sensor-42",
    "tags": ["a", "b"],
    "level": "high",
    "nothing": None,
    "when": "2026-01-01T00:00:00Z",
}


@pytest.mark.parametrize(
    ("change", "path"),
    [
        pytest.param({}, "compensated", id="all-true"),
        # lessThanOrEquals 5 turns false, and greaterThan 5 (in the negated or) turns true.
        pytest.param({"n": 6}, "default", id="numbers"),
        # endsWith and matches turn false.
        pytest.param({"name": "sensor-x"}, "default", id="strings"),
    ],
)
async def test_every_operator_and_a_compensation_state_on_real_prefect(
    flow_system: FlowSystem, change: dict[str, Any], path: str
) -> None:
    tag = _tag("ops")
    names = {"tag": f"{tag}-do", "undo": f"{tag}-undo"}
    run_id = await flow_system.start("operators.json", {**OPERATOR_INPUT, **change, **names})
    output = await flow_system.result(run_id)

    assert output == {"path": path}
    assert await flow_system.effects(names["tag"]) == 1
    # The compensation state undid Do exactly once, and only on the path through it.
    assert await flow_system.effects(names["undo"]) == (1 if path == "compensated" else 0)


async def _poll(what: str, probe: Callable[[], Awaitable[Any]], deadline: float = 30.0) -> Any:
    end = time.monotonic() + deadline
    found: Any = None
    while time.monotonic() < end:
        found = await probe()
        if found:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: not within {deadline}s (last seen: {found!r})")


async def test_task_runs_are_named_after_states_and_the_trail_is_an_artifact(
    flow_system: FlowSystem,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
    )

    tag = _tag("trail")
    run_id = await flow_system.start(
        "operators.json", {**OPERATOR_INPUT, "tag": f"{tag}-do", "undo": f"{tag}-undo"}
    )
    await flow_system.result(run_id)

    async with get_client() as client:

        async def task_run_names() -> set[str]:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
            )
            names = {str(run.name) for run in runs}
            # Task-run states arrive as events: wait until both activities are there.
            return names if {"Do", "compensate Do"} <= names else set()

        async def trail_rows() -> list[dict[str, Any]]:
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
            )
            tables = [a for a in artifacts if a.type == "table"]
            if not tables:
                return []
            data: Any = tables[0].data
            rows: list[dict[str, Any]] = json.loads(data) if isinstance(data, str) else data
            return rows

        names = await _poll("the activities' task runs", task_run_names)
        rows = await _poll("the trail artifact", trail_rows)

    # The activity task runs carry the state's path; a compensation names the step it undoes.
    assert {"Do", "compensate Do"} <= names, names
    assert [row["state"] for row in rows] == ["Do", "Check", "Undo", "Done"], rows
    assert {row["type"] for row in rows} == {"task", "choice", "compensation", "succeed"}
