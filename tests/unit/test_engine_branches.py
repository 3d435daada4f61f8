"""Engine: parallel and map states, branch engines and their keys."""

from __future__ import annotations

from typing import Any

from interpreter.engine import Engine
from interpreter.runtime import (
    BranchesFailed,
    BranchesSucceeded,
    ExecuteTask,
    Finished,
    RunBranches,
    RunState,
    TaskSucceeded,
)
from tests.unit.engine_helpers import HASH, SYSTEM, T0, at, engine, step, task

PARALLEL: dict[str, Any] = {
    "Setup": task(resultPath="$.state.record", next="Par"),
    "Par": {
        "type": "parallel",
        "branches": [
            {
                "startAt": "Ping",
                "states": {"Ping": task("ping", input={"r": "$.state.record.id"}, end=True)},
            },
            {"startAt": "Note", "states": {"Note": task("notify", end=True)}},
        ],
        "resultPath": "$.state.results",
        "catch": [{"errors": ["*"], "next": "Failed", "errorPath": "$.state.error"}],
        "next": "Done",
    },
    "Done": {"type": "succeed"},
    "Failed": {"type": "fail", "error": "BranchFailed"},
}


def _run_branch(eng: Engine, action: RunBranches, index: int, result: Any) -> Finished:
    branch = eng.branch(action, index)
    run: RunState = branch.start_branch(action.branch_data[index], T0, SYSTEM)
    while True:
        next_action = branch.next_action(run, SYSTEM)
        if isinstance(next_action, Finished):
            return next_action
        assert isinstance(next_action, ExecuteTask)
        run = branch.apply(run, TaskSucceeded(result=result, at=T0), SYSTEM)


def test_parallel_branches_get_parent_data_and_keys_with_branch_path() -> None:
    eng = engine(PARALLEL)
    run, action = step(eng, eng.start({}, SYSTEM), TaskSucceeded(result={"id": 5}, at=at(1)))
    assert isinstance(action, RunBranches)
    assert action.branch_paths == ["Par/0", "Par/1"]
    assert action.fail_fast is True
    assert action.max_concurrency is None
    assert action.branch_data[0] == {"input": {}, "state": {"record": {"id": 5}}}
    first = eng.branch(action, 0)
    brun = first.start_branch(action.branch_data[0], run.timestamp, SYSTEM)
    ping = first.next_action(brun, SYSTEM)
    assert isinstance(ping, ExecuteTask)
    assert ping.input == {"r": 5}
    assert ping.path == "Par/0/Ping"
    assert ping.step_key == f"{HASH[:12]}:Par/0/Ping:1"
    assert ping.idempotency_key == f"run-1:{HASH[:12]}:Par/0/Ping:1"


def test_branch_result_is_what_the_branch_added_collected_in_order() -> None:
    eng = engine(PARALLEL)
    run, action = step(eng, eng.start({}, SYSTEM), TaskSucceeded(result={"id": 5}, at=at(1)))
    assert isinstance(action, RunBranches)
    outputs = [_run_branch(eng, action, i, f"r{i}") for i in range(2)]
    assert outputs[0] == Finished(status="succeeded", output={"Ping": "r0"})
    results = [o.output for o in outputs]
    run, done = step(eng, run, BranchesSucceeded(results=results, at=at(2)))
    assert isinstance(done, Finished)
    assert done.output == {"record": {"id": 5}, "results": [{"Ping": "r0"}, {"Note": "r1"}]}


def test_branches_failed_is_caught() -> None:
    eng = engine(PARALLEL)
    run, _ = step(eng, eng.start({}, SYSTEM), TaskSucceeded(result={"id": 5}, at=at(1)))
    run, action = step(eng, run, BranchesFailed(error="Http.Status5xx", cause="503", at=at(2)))
    assert action == Finished(status="failed", error="BranchFailed")
    assert run.data["state"]["error"] == {"error": "Http.Status5xx", "cause": "503"}


def test_parallel_in_a_loop_gets_fresh_branch_paths() -> None:
    eng = engine(
        {
            "Par": {
                "type": "parallel",
                "branches": [{"startAt": "P", "states": {"P": task(end=True)}}],
                "next": "Again",
            },
            "Again": {
                "type": "choice",
                "choices": [
                    {
                        "condition": {"op": "lessThan", "variable": "$.system.attempt", "value": 2},
                        "next": "Par",
                    }
                ],
                "default": "End",
            },
            "End": {"type": "succeed"},
        }
    )
    run = eng.start({}, SYSTEM)
    first = eng.next_action(run, SYSTEM)
    run, second = step(eng, run, BranchesSucceeded(results=[1], at=T0))
    assert isinstance(first, RunBranches)
    assert isinstance(second, RunBranches)
    assert first.branch_paths == ["Par/0"]
    assert second.branch_paths == ["Par@2/0"]


MAP: dict[str, Any] = {
    "Each": {
        "type": "map",
        "itemsPath": "$.input.sensors",
        "itemName": "sensor",
        "maxConcurrency": 2,
        "branch": {
            "startAt": "Ping",
            "states": {
                "Ping": task(
                    "ping", input={"url": "$.state.sensor.url", "i": "$.state.index"}, end=True
                )
            },
        },
        "resultPath": "$.state.pings",
        "end": True,
    }
}


def test_map_runs_a_branch_per_item_with_item_and_index() -> None:
    eng = engine(MAP)
    run = eng.start({"sensors": [{"url": "a"}, {"url": "b"}, {"url": "c"}]}, SYSTEM)
    action = eng.next_action(run, SYSTEM)
    assert isinstance(action, RunBranches)
    assert len(action.branches) == 3
    assert action.max_concurrency == 2
    assert action.branch_paths == ["Each/0", "Each/1", "Each/2"]
    assert action.branch_data[1]["state"] == {"sensor": {"url": "b"}, "index": 1}
    inputs = []
    for i in range(3):
        branch = eng.branch(action, i)
        brun = branch.start_branch(action.branch_data[i], T0, SYSTEM)
        ping = branch.next_action(brun, SYSTEM)
        assert isinstance(ping, ExecuteTask)
        inputs.append(ping.input)
        assert ping.path == f"Each/{i}/Ping"
        assert branch.next_action(
            branch.apply(brun, TaskSucceeded(result=i * 10, at=T0), SYSTEM), SYSTEM
        ) == Finished(status="succeeded", output={"Ping": i * 10})
    assert inputs == [{"url": "a", "i": 0}, {"url": "b", "i": 1}, {"url": "c", "i": 2}]
    _, done = step(eng, run, BranchesSucceeded(results=[0, 10, 20], at=T0))
    assert done == Finished(status="succeeded", output={"pings": [0, 10, 20]})


def test_map_over_nothing_completes_without_an_action() -> None:
    eng = engine(MAP)
    action = eng.next_action(eng.start({"sensors": []}, SYSTEM), SYSTEM)
    assert action == Finished(status="succeeded", output={"pings": []})


def test_map_items_missing_or_not_an_array_fails() -> None:
    eng = engine(MAP)
    action = eng.next_action(eng.start({}, SYSTEM), SYSTEM)
    assert isinstance(action, Finished)
    assert action.error == "States.PathNotFound"
    action = eng.next_action(eng.start({"sensors": {"a": 1}}, SYSTEM), SYSTEM)
    assert isinstance(action, Finished)
    assert action.error == "States.InvalidValue"


def test_nested_branch_paths() -> None:
    inner_map = {
        "type": "map",
        "itemsPath": "$.state.sensor",
        "branch": {"startAt": "T", "states": {"T": task(end=True)}},
        "end": True,
    }
    eng = engine(
        {"Outer": MAP["Each"] | {"branch": {"startAt": "Inner", "states": {"Inner": inner_map}}}}
    )
    action = eng.next_action(eng.start({"sensors": [[1, 2]]}, SYSTEM), SYSTEM)
    assert isinstance(action, RunBranches)
    outer = eng.branch(action, 0)
    brun = outer.start_branch(action.branch_data[0], T0, SYSTEM)
    inner_action = outer.next_action(brun, SYSTEM)
    assert isinstance(inner_action, RunBranches)
    assert inner_action.branch_paths == ["Outer/0/Inner/0", "Outer/0/Inner/1"]
    leaf = outer.branch(inner_action, 1)
    t = leaf.next_action(leaf.start_branch(inner_action.branch_data[1], T0, SYSTEM), SYSTEM)
    assert isinstance(t, ExecuteTask)
    assert t.step_key == f"{HASH[:12]}:Outer/0/Inner/1/T:1"
