"""Time and concurrency limits through the real flow on a real Prefect server (PostgreSQL): a
task's ``timeoutSeconds``, ``timestamp`` waits (literal and path, near and far), and a map's
``maxConcurrency``."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.integration.test_flow_harness import (
    OVERLAPS,
    RUNTIME_DEFINITIONS,
    FlowSystem,
    flow_database_url,
    flow_system,
)

__all__ = ["flow_database_url", "flow_system"]

pytestmark = pytest.mark.integration


def _tag(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_task_timeout_is_retried_then_succeeds(flow_system: FlowSystem) -> None:
    tag = _tag("timeout-retry")
    run_id = await flow_system.start("task-timeout.json", {"tag": tag, "slowTimes": 1})
    output = await flow_system.result(run_id)

    # Attempt 1 slept 30 s and was cut at 3 s (States.Timeout, retryable); attempt 2 was fast.
    assert output == {"slow": {"attempts": 2}}
    assert await flow_system.effects(tag) == 2


async def test_task_timeout_after_the_last_attempt_goes_to_catch(flow_system: FlowSystem) -> None:
    tag = _tag("timeout-catch")
    started = time.monotonic()
    run_id = await flow_system.start("task-timeout.json", {"tag": tag, "slowTimes": 5})
    output = await flow_system.result(run_id)

    assert output["error"]["error"] == "States.Timeout"
    assert "took longer than 3s" in output["error"]["cause"]
    assert await flow_system.effects(tag) == 2  # both attempts timed out
    assert time.monotonic() - started < 25  # cut at the timeout, not after the 30 s sleep


def _literal_timestamp_definition(tmp_path: Path, until: datetime) -> Path:
    document = json.loads((RUNTIME_DEFINITIONS / "timestamp-path.json").read_text())
    document["name"] = "rt-timestamp-literal"
    document["states"]["Until"]["timestamp"] = until.isoformat()
    path = tmp_path / "timestamp-literal.json"
    path.write_text(json.dumps(document))
    return path


async def test_near_literal_timestamp_sleeps_in_place(
    flow_system: FlowSystem, tmp_path: Path
) -> None:
    before, after = _tag("ts-before"), _tag("ts-after")
    until = datetime.now(UTC) + timedelta(seconds=1.5)  # within short_wait_seconds (2 s)
    path = _literal_timestamp_definition(tmp_path, until)
    run_id = await flow_system.start(path, {"before": before, "after": after})
    await flow_system.result(run_id)

    flow_run = await flow_system.read(run_id)
    assert flow_run.end_time is not None and flow_run.end_time >= until
    assert "Suspended" not in await flow_system.history(run_id)
    assert await flow_system.effects(after) == 1


async def test_far_timestamp_from_a_path_suspends_and_the_resumer_wakes_it(
    flow_system: FlowSystem,
) -> None:
    before, after = _tag("ts-before"), _tag("ts-after")
    # Far beyond short_wait_seconds (2 s), even if reaching the wait takes a loaded machine many
    # seconds: the run must suspend, not sleep in place.
    until = datetime.now(UTC) + timedelta(seconds=20)
    run_id = await flow_system.start(
        "timestamp-path.json", {"before": before, "after": after, "until": until.isoformat()}
    )
    await flow_system.suspended(run_id, "until")
    assert await flow_system.effects(after) == 0
    # Suspended: once the engine has returned, the executor holds nothing for the run.
    await flow_system.idle()

    await flow_system.result(run_id)

    flow_run = await flow_system.read(run_id)
    assert flow_run.end_time is not None and flow_run.end_time >= until
    assert "Suspended" in await flow_system.history(run_id)
    assert await flow_system.effects(before) == 1  # the replay did not run it again
    assert await flow_system.effects(after) == 1


async def test_timestamp_path_that_is_not_a_timestamp_fails_the_run(
    flow_system: FlowSystem,
) -> None:
    run_id = await flow_system.start(
        "timestamp-path.json",
        {"before": _tag("b"), "after": _tag("a"), "until": "tomorrow at noon"},
    )
    flow_run = await flow_system.final(run_id)

    assert flow_run.state.is_failed()
    assert "States.InvalidValue" in flow_run.state.message


async def test_max_concurrency_bounds_a_map(flow_system: FlowSystem) -> None:
    group = _tag("span")
    run_id = await flow_system.start(
        "map-concurrency.json", {"group": group, "items": list(range(6))}
    )
    output = await flow_system.result(run_id)

    assert len(output["count"]) == 6
    overlap = OVERLAPS[group]
    assert overlap.entries == 6
    assert overlap.most == 2  # never more than maxConcurrency, and the map did run in parallel
