"""The flow's guards on a real Prefect server (PostgreSQL): a task run that breaks fails the run
instead of inventing an outcome."""

from __future__ import annotations

from typing import Any

import pytest

from flows import steps
from tests.integration.test_flow_harness import (
    FlowSystem,
    flow_database_url,
    flow_system,
)

__all__ = ["flow_database_url", "flow_system"]

pytestmark = pytest.mark.integration


async def test_a_task_run_that_crashed_fails_the_run_naming_its_state(
    flow_system: FlowSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.states import Crashed

    def broken_activity_task(**_options: Any) -> Any:
        async def call(*_args: Any, **_kwargs: Any) -> Any:
            return Crashed(message="the worker lost it")

        return call

    # The executor runs in this process: its next activity's task run "crashes".
    monkeypatch.setattr(steps, "activity_task", broken_activity_task)
    run_id = await flow_system.start("one-task.json", {"name": "crash"})
    flow_run = await flow_system.final(run_id)

    assert flow_run.state.is_failed()
    assert (
        "the task run of state 'Echo' ended Crashed (the worker lost it), not Completed"
        in flow_run.state.message
    ), flow_run.state.message
