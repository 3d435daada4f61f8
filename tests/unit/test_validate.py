"""validate/require_valid: the fixture cases, every rule's warning, hints and messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from interpreter import DefinitionInvalidError, load_definition, read_definition
from interpreter.problems import CODES, Problem
from interpreter.validate import require_valid, validate
from tests.unit.definition_cases import (
    BUILTIN_ACTIVITIES,
    INVALID,
    SAMPLES,
    VALID,
    WARNINGS,
    doc,
    expected,
)

S = {"type": "succeed"}


def problems_of(text: str | bytes, activities: Any = BUILTIN_ACTIVITIES) -> list[Problem]:
    result = read_definition(text)
    if result.definition is None:
        return result.problems
    return validate(result.definition, activities=activities)


def task(**fields: Any) -> dict[str, Any]:
    return {"type": "task", "activity": "notify.send", **fields}


@pytest.mark.parametrize("path", VALID + SAMPLES, ids=lambda p: p.name)
def test_valid_definitions_have_no_problem(path: Path) -> None:
    assert problems_of(path.read_bytes()) == []


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_fixture_gives_exactly_its_codes_and_pointers(path: Path) -> None:
    problems = problems_of(path.read_bytes())
    assert [{"code": p.code, "pointer": p.pointer} for p in problems] == expected(path)
    assert all(p.code in CODES for p in problems)
    assert all(p.message for p in problems)


@pytest.mark.parametrize("path", WARNINGS, ids=lambda p: p.name)
def test_warning_fixture_gives_exactly_its_warnings_and_stays_valid(path: Path) -> None:
    problems = problems_of(path.read_bytes())
    found = [{"code": p.code, "pointer": p.pointer, "severity": p.severity} for p in problems]
    assert found == expected(path)
    assert all(p.code in CODES and p.message and p.hint for p in problems)
    assert require_valid(load_definition(path.read_bytes()), activities=BUILTIN_ACTIVITIES) == (
        problems
    )


def test_every_state_type_and_operator_appears_in_a_valid_definition() -> None:
    text = "".join(p.read_text() for p in VALID + SAMPLES)
    for state_type in ("task", "wait", "choice", "parallel", "map", "compensation", "succeed"):
        assert f'"type": "{state_type}"' in text
    assert '"type": "fail"' in text
    from interpreter.models import COMPARISON_OPERATORS, LOGICAL_OPERATORS

    for op in COMPARISON_OPERATORS + LOGICAL_OPERATORS:
        assert f'"op": "{op}"' in text, op


def test_unknown_target_names_what_exists_and_suggests() -> None:
    problem, unreachable = problems_of(doc({"A": task(next="Finsh"), "Finish": S}))
    assert unreachable.code == "unreachable-state"
    assert problem.code == "unknown-target"
    assert "'Finsh'" in problem.message and "A, Finish" in problem.message
    assert problem.hint == "did you mean 'Finish'?"


def test_branch_targets_resolve_only_within_their_branch() -> None:
    branch = {"startAt": "X", "states": {"X": task(next="Done")}}
    text = doc({"P": {"type": "parallel", "branches": [branch], "end": True}, "Done": S}, "P")
    codes = [(p.code, p.pointer) for p in problems_of(text)]
    assert ("unknown-target", "/states/P/branches/0/states/X/next") in codes


def test_unknown_activity_suggests_close_names_and_is_skipped_without_registry() -> None:
    text = doc({"A": {"type": "task", "activity": "notify.sned", "end": True}})
    [problem] = problems_of(text)
    assert problem.code == "unknown-activity"
    assert problem.hint == "did you mean 'notify.send'?"
    assert problems_of(text, activities=None) == []


def test_unknown_field_suggests_the_member() -> None:
    [problem] = problems_of(doc({"A": task(nxt="B", end=True), "B": S}))
    assert (problem.code, problem.hint) == ("unknown-field", "did you mean 'next'?")


def test_every_problem_is_reported_at_once() -> None:
    text = doc(
        {
            "A": task(next="Nowhere", input={"x": "$.stat.x"}),
            "B": {"type": "wait", "next": "A"},
            "C": task(next="D", end=True),
            "D": S,
        }
    )
    codes = sorted(p.code for p in problems_of(text))
    assert codes == [
        "empty-wait",
        "invalid-jsonpath",
        "next-and-end",
        "unknown-target",
        "unreachable-state",
        "unreachable-state",
        "unreachable-state",
    ]


def test_scope_typo_in_a_path_gets_a_hint() -> None:
    [problem] = problems_of(doc({"A": task(input={"x": "$.stat.x"}, end=True)}))
    assert problem.hint == "did you mean 'state'?"


def _warnings(text: str) -> list[tuple[str, str]]:
    problems = problems_of(text)
    assert all(p.severity == "warning" for p in problems), problems
    return [(p.code, p.pointer) for p in problems]


def test_event_wait_without_timeout_warns() -> None:
    text = doc({"A": {"type": "wait", "event": {"name": "e"}, "next": "B"}, "B": S})
    assert _warnings(text) == [("wait-without-timeout", "/states/A/event")]


def test_timeout_next_without_timeout_warns() -> None:
    wait = {"type": "wait", "event": {"name": "e", "timeoutNext": "B"}, "next": "B"}
    assert _warnings(doc({"A": wait, "B": S})) == [
        ("timeout-next-without-timeout", "/states/A/event/timeoutNext")
    ]


def test_choice_without_default_warns() -> None:
    rule = {"condition": {"op": "isPresent", "variable": "$.input.x"}, "next": "B"}
    text = doc({"A": {"type": "choice", "choices": [rule]}, "B": S})
    assert _warnings(text) == [("choice-without-default", "/states/A")]


def test_compensate_that_nothing_runs_warns() -> None:
    text = doc(
        {"A": task(compensate={"activity": "notify.send"}, end=True)},
        configuration={"onFailure": "fail"},
    )
    assert _warnings(text) == [("unused-compensation", "/states/A/compensate")]


def test_compensation_naming_a_task_without_compensate_warns() -> None:
    text = doc({"A": task(next="U"), "U": {"type": "compensation", "states": ["A"]}})
    assert _warnings(text) == [("nothing-to-compensate", "/states/U/states/0")]


@pytest.mark.parametrize("wildcard", ["*", "States.ALL"])
def test_catch_rule_after_a_catch_all_warns(wildcard: str) -> None:
    catch = [{"errors": [wildcard], "next": "B"}, {"errors": ["X"], "next": "B"}]
    text = doc({"A": task(catch=catch, end=True), "B": S})
    assert _warnings(text) == [("unreachable-catch", "/states/A/catch/1")]


def test_loop_that_waits_and_exits_is_fine_and_one_that_cannot_exit_is_not() -> None:
    rule = {"condition": {"op": "equals", "variable": "$.state.A", "value": 1}, "next": "Done"}
    loop = {
        "A": task(next="W"),
        "W": {"type": "wait", "seconds": 1, "next": "C"},
        "C": {"type": "choice", "choices": [rule], "default": "A"},
        "Done": S,
    }
    assert problems_of(doc(loop)) == []
    loop["C"] = {"type": "choice", "choices": [{**rule, "next": "A"}], "default": "W"}
    del loop["Done"]
    assert [(p.code, p.pointer) for p in problems_of(doc(loop))] == [
        ("no-terminal-path", "/states/A")
    ]


def test_self_loop_without_wait_is_an_infinite_loop() -> None:
    assert [p.code for p in problems_of(doc({"A": task(next="A")}))] == ["infinite-loop"]


def test_catch_edge_out_of_a_loop_counts_as_an_exit() -> None:
    states = {"A": task(next="B", catch=[{"errors": ["*"], "next": "F"}]), "B": task(next="A")}
    states["F"] = {"type": "fail", "error": "E"}
    assert problems_of(doc(states)) == []


def test_pointer_escapes_slash_and_tilde_in_state_names() -> None:
    [problem] = problems_of(doc({"a/b": task(next="c~d")}, "a/b"))
    assert problem.pointer == "/states/a~1b/next"


def test_require_valid_raises_with_every_error_and_returns_warnings() -> None:
    bad = load_definition(doc({"A": task(next="X"), "B": S}))
    with pytest.raises(DefinitionInvalidError) as caught:
        require_valid(bad)
    assert [p.code for p in caught.value.problems] == ["unknown-target", "unreachable-state"]
    assert "/states/A/next" in str(caught.value)
    ok = load_definition(doc({"A": {"type": "wait", "event": {"name": "e"}, "end": True}}))
    assert [p.code for p in require_valid(ok)] == ["wait-without-timeout"]


def test_catastrophic_regex_is_refused_quickly() -> None:
    import time

    rule = {"condition": {"op": "matches", "variable": "$.input.s", "value": "^(a|aa)*$"}}
    text = doc(
        {"A": {"type": "choice", "choices": [{**rule, "next": "B"}], "default": "B"}, "B": S}
    )
    started = time.monotonic()
    [problem] = problems_of(text)
    assert time.monotonic() - started < 5  # generous: the real check is the refusal below
    assert (problem.code, problem.pointer) == (
        "invalid-regex",
        "/states/A/choices/0/condition/value",
    )


def _retry_warnings(retry: dict[str, Any]) -> list[Problem]:
    return problems_of(doc({"A": task(retry=retry, end=True)}))


def test_max_interval_below_interval_names_both_values() -> None:
    [problem] = _retry_warnings({"intervalSeconds": 10, "maxIntervalSeconds": 2.5})
    assert (problem.code, problem.severity) == ("max-interval-below-interval", "warning")
    assert problem.pointer == "/states/A/retry/maxIntervalSeconds"
    assert "maxIntervalSeconds (2.5)" in problem.message
    assert "intervalSeconds (10)" in problem.message


@pytest.mark.parametrize(
    "retry",
    [
        {"intervalSeconds": 5, "maxIntervalSeconds": 5},  # equal: a constant delay, as asked
        {"intervalSeconds": 1, "maxIntervalSeconds": 30},
        {"intervalSeconds": 5},
        {"retryOn": ["*"], "doNotRetryOn": ["Http.Status4xx"]},  # retry all but one: the usual
        {"retryOn": ["States.ALL"], "doNotRetryOn": ["States.InvalidInput"]},
        {"retryOn": ["Http.Status5xx"], "doNotRetryOn": ["Http.Status4xx"]},
        {"retryOn": [], "doNotRetryOn": ["*"]},
    ],
)
def test_consistent_retry_policies_draw_no_warning(retry: dict[str, Any]) -> None:
    assert _retry_warnings(retry) == []


def test_a_name_in_both_retry_lists_warns_at_its_retry_on_entry() -> None:
    [problem] = _retry_warnings({"retryOn": ["A.B", "C.D"], "doNotRetryOn": ["C.D"]})
    assert (problem.code, problem.pointer) == (
        "retry-on-and-do-not-retry-on",
        "/states/A/retry/retryOn/1",
    )
    assert "'C.D' is also in doNotRetryOn" in problem.message
    assert "never retried" in problem.message


@pytest.mark.parametrize("wildcard", ["*", "States.ALL"])
def test_a_wildcard_in_do_not_retry_on_overrides_every_retry_on_name(wildcard: str) -> None:
    problems = _retry_warnings({"retryOn": ["A.B", "*"], "doNotRetryOn": [wildcard]})
    assert [(p.code, p.pointer) for p in problems] == [
        ("retry-on-and-do-not-retry-on", "/states/A/retry/retryOn/0"),
        ("retry-on-and-do-not-retry-on", "/states/A/retry/retryOn/1"),
    ]
    assert f"doNotRetryOn holds {wildcard!r}" in problems[0].message
