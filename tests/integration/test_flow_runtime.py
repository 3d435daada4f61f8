"""The flow's guards on a real Prefect server (PostgreSQL): definition paths stay inside the allowed
directories, a task run that breaks fails the run instead of inventing an outcome, and each event
loop gets its own database resources."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from flows import steps
from flows.runtime import Resources
from tests.integration.test_flow_harness import (
    RUNTIME_DEFINITIONS,
    FlowSystem,
    flow_database_url,
    flow_system,
)

__all__ = ["flow_database_url", "flow_system"]

pytestmark = pytest.mark.integration

OUTSIDE = "outside the directories definitions are read from"


def test_allowed_definition_path_follows_dots_and_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    (root / "link.json").symlink_to(secret)

    assert steps.allowed_definition_path(str(root / "sub" / "a.json"), [root]) == (
        root / "sub" / "a.json"
    )
    for escape in (root / "sub" / ".." / ".." / "secret.json", root / "link.json"):
        with pytest.raises(steps.DefinitionPathError) as caught:
            steps.allowed_definition_path(str(escape), [root])
        assert str(secret) in str(caught.value)
        assert OUTSIDE in str(caught.value)


async def test_a_definition_path_outside_the_allowed_directories_fails_the_run(
    flow_system: FlowSystem, tmp_path: Path
) -> None:
    # A valid definition: only its location is wrong.
    outside = tmp_path / "outside.json"
    shutil.copy(RUNTIME_DEFINITIONS / "one-task.json", outside)
    for workflow in (str(outside), "x/../../../../../../etc/orch-probe.json"):
        run_id = await flow_system.create({"workflow": workflow, "input": {"name": "x"}})
        flow_run = await flow_system.final(run_id)

        assert flow_run.state.is_failed(), workflow
        assert "DefinitionPathError" in flow_run.state.message, flow_run.state.message
        assert OUTSIDE in flow_run.state.message


async def test_definition_paths_inside_the_allowed_directories_run(
    flow_system: FlowSystem,
) -> None:
    inside = flow_system.definitions_dir / f"one-task-{uuid.uuid4().hex[:8]}.json"
    shutil.copy(RUNTIME_DEFINITIONS / "one-task.json", inside)
    relative = str((RUNTIME_DEFINITIONS / "one-task.json").relative_to(Path.cwd()))
    for workflow in (str(inside), relative):
        run_id = await flow_system.create({"workflow": workflow, "input": {"name": workflow}})
        output = await flow_system.result(run_id)

        assert output["echo"]["name"] == workflow


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


def test_each_event_loop_gets_its_own_resources(flow_system: FlowSystem) -> None:
    from flows import runtime

    async def use() -> tuple[Resources, int]:
        resources = await runtime.get_resources()
        async with resources.db.transaction() as connection:
            value = await connection.scalar(text("SELECT 1"))
        await resources.db.close()  # as a CLI command ends its loop
        return resources, int(value or 0)

    # CPython reuses the id of a freed loop: resources keyed by id would hand the second
    # ``asyncio.run`` the first one's (bound to a closed loop).
    first, _ = asyncio.run(use())
    second, value = asyncio.run(use())

    assert second is not first
    assert value == 1
