"""The loader: limits before parsing, JSON refusals, pydantic errors as pointers, hashing."""

from __future__ import annotations

import json
import time

import pytest

from interpreter import (
    DefinitionParseError,
    DefinitionTooLargeError,
    definition_hash,
    load_definition,
    read_definition,
)
from interpreter.limits import MAX_DEPTH, MAX_DOCUMENT_BYTES
from interpreter.loader import dump_definition, parse_document
from tests.unit.definition_cases import SAMPLES, doc

#: Generous: each refusal takes milliseconds; the real check is the error it raises.
DEADLINE_SECONDS = 1.0
MINIMAL = doc({"A": {"type": "succeed"}})


def _timed(fn: object) -> float:
    started = time.monotonic()
    with pytest.raises((DefinitionTooLargeError, DefinitionParseError)):
        fn()  # type: ignore[operator]
    return time.monotonic() - started


def test_ten_megabyte_definition_is_refused_by_size_before_parsing() -> None:
    padding = " " * (10 * 1024 * 1024)
    text = MINIMAL[:-1] + padding + "}"
    started = time.monotonic()
    with pytest.raises(DefinitionTooLargeError) as caught:
        load_definition(text)
    assert time.monotonic() - started < DEADLINE_SECONDS
    assert f"limit is {MAX_DOCUMENT_BYTES:,} bytes" in str(caught.value)
    assert str(caught.value).startswith(f"the document is {len(text):,} bytes")


def test_size_is_counted_in_bytes_not_characters() -> None:
    text = '{"name": "' + "é" * (MAX_DOCUMENT_BYTES // 2 + 1) + '"}'
    assert len(text) < MAX_DOCUMENT_BYTES
    with pytest.raises(DefinitionTooLargeError):
        load_definition(text)


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 10_000, 100_000])
def test_deep_nesting_is_refused_without_recursion(depth: int) -> None:
    text = "[" * depth + "]" * depth
    started = time.monotonic()
    with pytest.raises(DefinitionTooLargeError) as caught:
        load_definition(text)
    assert time.monotonic() - started < DEADLINE_SECONDS
    assert f"nested more than {MAX_DEPTH} levels" in str(caught.value)


def test_ten_thousand_levels_inside_a_real_definition_is_refused() -> None:
    deep = "{" + '"x": {' * 10_000 + "}" * 10_000 + "}"
    text = doc({"A": {"type": "task", "activity": "a", "input": {}, "end": True}})
    text = text.replace('"input": {}', '"input": ' + deep)
    with pytest.raises(DefinitionTooLargeError, match="nested more than 64 levels"):
        load_definition(text)


def test_depth_limit_is_exact_and_ignores_brackets_inside_strings() -> None:
    assert parse_document("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None
    assert parse_document(json.dumps(["[" * 500, "{{{" * 100])) == ["[" * 500, "{{{" * 100]
    assert parse_document(json.dumps(['\\"[[[[', "]]]"])) == ['\\"[[[[', "]]]"]


def test_too_many_states_is_refused_counting_branches() -> None:
    branch = {"startAt": "S0", "states": {f"S{i}": {"type": "succeed"} for i in range(300)}}
    states = {f"T{i}": {"type": "succeed"} for i in range(200)}
    states["P"] = {"type": "parallel", "branches": [branch], "end": True}
    with pytest.raises(DefinitionTooLargeError, match="501 states"):
        load_definition(doc(states, "P"))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{", "not valid JSON"),
        ('{"a": NaN}', "NaN is not a JSON number"),
        (b"\xff\xfe{}", "not UTF-8"),
        ('{"a": ' + "1" * 5000 + "}", "not valid JSON"),
    ],
)
def test_not_json_is_a_parse_error(text: str | bytes, fragment: str) -> None:
    with pytest.raises(DefinitionParseError) as caught:
        load_definition(text)
    assert fragment in str(caught.value)
    assert caught.value.pointer == ""


def test_byte_order_mark_is_accepted() -> None:
    assert load_definition(b"\xef\xbb\xbf" + MINIMAL.encode()).name == "t"


def test_duplicate_state_names_are_refused_with_a_pointer() -> None:
    text = MINIMAL[:-2] + ', "A": {"type": "succeed"}}}'
    with pytest.raises(DefinitionParseError) as caught:
        load_definition(text)
    assert caught.value.pointer == "/states/A"
    assert "appears more than once" in str(caught.value)


def test_model_errors_point_into_the_document_as_written() -> None:
    states = {
        "Create": {"type": "task", "activity": "a", "retry": {"maxAttempts": 0}, "end": True},
        "W": {"type": "wait", "event": {"name": ""}, "end": True},
        "C": {
            "type": "choice",
            "choices": [{"condition": {"op": "not", "condition": {"op": "isTyp"}}, "next": "C"}],
        },
    }
    result = read_definition(doc(states, "Create"))
    assert result.definition is None
    found = [(p.code, p.pointer) for p in result.problems]
    assert found == [
        ("invalid-value", "/states/Create/retry/maxAttempts"),
        ("invalid-value", "/states/W/event/name"),
        ("unknown-operator", "/states/C/choices/0/condition/condition/op"),
    ]
    assert "got 0" in result.problems[0].message
    assert result.problems[2].hint == "did you mean 'isType'?"


def test_load_definition_error_lists_every_problem_and_points_at_the_first() -> None:
    text = doc({"A": {"type": "task", "end": True}, "B": {"type": "nope"}})
    with pytest.raises(DefinitionParseError) as caught:
        load_definition(text)
    assert caught.value.pointer == "/states/A/activity"
    assert "/states/B/type" in str(caught.value)


def test_value_and_value_path_together_are_refused() -> None:
    cond = {"op": "equals", "variable": "$.input.a", "value": 1, "valuePath": "$.input.b"}
    states = {"A": {"type": "choice", "choices": [{"condition": cond, "next": "A"}]}}
    [problem] = read_definition(doc(states)).problems
    assert (problem.code, problem.pointer) == ("invalid-value", "/states/A/choices/0/condition")
    assert "either 'value' or 'valuePath'" in problem.message


def test_root_that_is_not_an_object() -> None:
    [problem] = read_definition("[]").problems
    assert (problem.code, problem.pointer, problem.message) == (
        "invalid-value",
        "",
        "expected a JSON object; got []",
    )


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_hash_is_stable_ignores_schema_and_layout_but_not_content(path: object) -> None:
    from pathlib import Path

    assert isinstance(path, Path)
    data = json.loads(path.read_text())
    first = load_definition(path.read_text())
    digest = definition_hash(first)
    assert len(digest) == 64 and int(digest, 16) >= 0
    data.pop("$schema")
    assert definition_hash(load_definition(json.dumps(data, indent=None))) == digest
    data["version"] += "-changed"
    assert definition_hash(load_definition(json.dumps(data))) != digest
    assert load_definition(dump_definition(first)) == first
