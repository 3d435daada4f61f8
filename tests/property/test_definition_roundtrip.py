"""Hypothesis: any definition survives dump -> load unchanged (and keeps its hash)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interpreter import definition_hash, load_definition
from interpreter.loader import dump_definition
from interpreter.models import COMPARISON_OPERATORS, WorkflowDefinition

NAMES = st.text(min_size=1, max_size=12)
PATHS = st.builds(
    lambda scope, field: f"$.{scope}.{field}",
    st.sampled_from(["input", "state", "system"]),
    st.from_regex(r"[a-z][a-zA-Z0-9_]{0,8}", fullmatch=True),
)
JSON: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | PATHS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
SECONDS = st.floats(min_value=0.001, max_value=86_400, allow_nan=False)


def optional(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A dict holding any subset of ``fields``."""
    return st.fixed_dictionaries({}, optional=fields)


def comparison() -> st.SearchStrategy[dict[str, Any]]:
    base = st.fixed_dictionaries({"op": st.sampled_from(COMPARISON_OPERATORS), "variable": PATHS})
    operand = st.one_of(
        st.just({}),
        st.builds(lambda v: {"value": v}, JSON),
        st.builds(lambda p: {"valuePath": p}, PATHS),
    )
    return st.builds(lambda b, o: {**b, **o}, base, operand)


CONDITIONS: st.SearchStrategy[dict[str, Any]] = st.recursive(
    comparison(),
    lambda inner: (
        st.builds(
            lambda op, cs: {"op": op, "conditions": cs},
            st.sampled_from(["and", "or"]),
            st.lists(inner, min_size=1, max_size=3),
        )
        | st.builds(lambda c: {"op": "not", "condition": c}, inner)
    ),
    max_leaves=6,
)
RETRY = optional(
    maxAttempts=st.integers(1, 100),
    intervalSeconds=st.floats(0, 86_400),
    backoffRate=st.floats(1, 100),
    maxIntervalSeconds=st.none() | st.floats(0, 86_400),
    jitter=st.floats(0, 1),
    retryOn=st.none() | st.lists(NAMES, max_size=2),
    doNotRetryOn=st.lists(NAMES, max_size=2),
)
CATCH = st.lists(
    st.fixed_dictionaries(
        {"errors": st.lists(NAMES, min_size=1, max_size=2), "next": NAMES},
        optional={"errorPath": PATHS},
    ),
    max_size=2,
)
TRANSITION = optional(next=NAMES, end=st.booleans(), comment=st.text(max_size=10))


def with_type(
    kind: str, fields: st.SearchStrategy[dict[str, Any]]
) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(lambda t, f: {"type": kind, **t, **f}, TRANSITION, fields)


TASK = with_type(
    "task",
    st.fixed_dictionaries(
        {"activity": NAMES},
        optional={
            "input": st.dictionaries(st.text(max_size=6), JSON, max_size=3),
            "resultPath": PATHS,
            "retry": RETRY,
            "timeoutSeconds": SECONDS,
            "catch": CATCH,
            "compensate": st.fixed_dictionaries(
                {"activity": NAMES},
                optional={"input": st.dictionaries(st.text(max_size=6), JSON, max_size=2)},
            ),
            "idempotencyKey": PATHS | st.text(max_size=10),
        },
    ),
)
WAIT = with_type(
    "wait",
    optional(
        seconds=st.floats(0, 1e6),
        duration=st.just("PT5M"),
        timestamp=PATHS | st.just("2030-01-01T00:00:00Z"),
        event=st.fixed_dictionaries(
            {"name": NAMES},
            optional={"timeoutSeconds": SECONDS, "timeoutNext": NAMES, "resultPath": PATHS},
        ),
    ),
)
CHOICE = st.fixed_dictionaries(
    {
        "type": st.just("choice"),
        "choices": st.lists(
            st.fixed_dictionaries(
                {"condition": CONDITIONS, "next": NAMES}, optional={"label": st.text(max_size=10)}
            ),
            min_size=1,
            max_size=3,
        ),
    },
    optional={"default": NAMES, "comment": st.text(max_size=10)},
)
LEAVES = st.one_of(
    TASK,
    WAIT,
    CHOICE,
    st.fixed_dictionaries(
        {"type": st.just("succeed")},
        optional={"output": st.dictionaries(st.text(max_size=5), JSON, max_size=2)},
    ),
    st.fixed_dictionaries(
        {"type": st.just("fail"), "error": NAMES}, optional={"cause": st.text(max_size=10)}
    ),
    st.fixed_dictionaries(
        {"type": st.just("compensation")},
        optional={
            "states": st.lists(NAMES, max_size=2),
            "next": NAMES,
            "error": NAMES,
            "cause": st.text(max_size=5),
        },
    ),
)


def branch(states: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"startAt": NAMES, "states": st.dictionaries(NAMES, states, min_size=1, max_size=3)}
    )


STATES: st.SearchStrategy[dict[str, Any]] = st.recursive(
    LEAVES,
    lambda inner: (
        with_type(
            "parallel",
            st.fixed_dictionaries(
                {"branches": st.lists(branch(inner), min_size=1, max_size=2)},
                optional={
                    "resultPath": PATHS,
                    "onBranchFailure": st.sampled_from(["failFast", "waitAll"]),
                    "catch": CATCH,
                },
            ),
        )
        | with_type(
            "map",
            st.fixed_dictionaries(
                {"itemsPath": PATHS, "branch": branch(inner)},
                optional={
                    "itemName": NAMES,
                    "maxConcurrency": st.integers(1, 1000),
                    "resultPath": PATHS,
                },
            ),
        )
    ),
    max_leaves=6,
)
DEFINITIONS = st.fixed_dictionaries(
    {
        "name": st.text(min_size=1, max_size=20),
        "version": st.text(min_size=1, max_size=10),
        "startAt": NAMES,
        "states": st.dictionaries(NAMES, STATES, min_size=1, max_size=5),
    },
    optional={
        "$schema": st.just("./schema.json"),
        "metadata": optional(
            author=st.text(max_size=5),
            tags=st.lists(st.text(max_size=5), max_size=2),
            description=st.text(max_size=20),
        ),
        "configuration": optional(
            defaultTimeoutSeconds=SECONDS,
            defaultRetry=RETRY,
            onFailure=st.sampled_from(["compensate", "fail"]),
        ),
        "input": st.dictionaries(st.text(max_size=5), JSON, max_size=2),
    },
).map(WorkflowDefinition.model_validate)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DEFINITIONS)
def test_definition_survives_dump_then_load(definition: WorkflowDefinition) -> None:
    text = dump_definition(definition)
    loaded = load_definition(text)
    assert loaded == definition
    assert dump_definition(loaded) == text
    assert definition_hash(loaded) == definition_hash(definition)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DEFINITIONS)
def test_validate_graph_and_explain_never_raise(definition: WorkflowDefinition) -> None:
    from interpreter.explain import explain_text
    from interpreter.graph import to_dot, to_mermaid
    from interpreter.problems import CODES
    from interpreter.validate import validate

    problems = validate(definition, activities=["notify.send"])
    assert {p.code for p in problems} <= set(CODES)
    assert all(p.pointer == "" or p.pointer.startswith("/") for p in problems)
    to_mermaid(definition)
    to_dot(definition)
    explain_text(definition)
