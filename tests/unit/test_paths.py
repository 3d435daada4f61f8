"""JSONPath: what compiles, what resolves to what, templates and assignment."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from interpreter.errors import ExpressionError, PathNotFoundError
from interpreter.limits import MAX_DEPTH, MAX_EXPRESSION_LENGTH
from interpreter.paths import (
    assign,
    compile_path,
    is_path,
    require,
    resolve,
    resolve_template,
    template_paths,
)

DATA: dict[str, Any] = {
    "input": {"device": {"id": "d1", "tags": ["a", "b", "c"]}, "n": 0, "empty": [], "nil": None},
    "state": {"Ping": {"ok": True}, "odd key": 1, "where": "w"},
    "system": {"runId": "r1"},
}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("$", True),
        ("$.input", True),
        ("$['state']", True),
        ("$x", False),
        ("input.a", False),
        ("", False),
        (" $.input", False),
        (3, False),
        (None, False),
    ],
)
def test_is_path(value: object, expected: bool) -> None:
    assert is_path(value) is expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("$.input.device.id", "d1"),
        ("$.input.device.tags[0]", "a"),
        ("$.input.device.tags[-1]", "c"),
        ("$.input.n", 0),
        ("$.input.nil", None),
        ("$['state']['odd key']", 1),
        ('$.state["Ping"].ok', True),
        ("$.state['where']", "w"),
        ("$.system.runId", "r1"),
    ],
)
def test_singular_path_resolves_to_its_value(path: str, expected: object) -> None:
    assert resolve(path, DATA) == (True, expected)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("$.input.device.tags[*]", ["a", "b", "c"]),
        ("$.input.device.tags[1:]", ["b", "c"]),
        ("$.input.device.tags[::-1]", ["c", "b", "a"]),
        ("$.input.device.tags[0,2]", ["a", "c"]),
        ("$.input.device.*", ["d1", ["a", "b", "c"]]),
        ("$.input.device['id','missing']", ["d1"]),
        # The same location is selected once, even when named twice.
        ("$.input.device.tags[0,0,-3]", ["a"]),
    ],
)
def test_non_singular_path_resolves_to_a_list(path: str, expected: list[object]) -> None:
    assert resolve(path, DATA) == (True, expected)


def test_single_match_of_a_wildcard_is_still_a_list() -> None:
    assert resolve("$.input.items[*]", {"input": {"items": [7]}}) == (True, [7])


def test_dollar_alone_is_the_whole_document() -> None:
    assert resolve("$", DATA) == (True, DATA)


@pytest.mark.parametrize(
    "path",
    [
        "$.input.missing",
        "$.input.device.tags[3]",
        "$.input.device.tags[-4]",
        "$.input.device.id.deeper",
        "$.input.device.tags.first",
        "$.input.n[0]",
        "$.input.empty[*]",
        "$.input.nil.x",
        "$.state.Ping[0]",
    ],
)
def test_missing_path_is_not_found(path: str) -> None:
    assert resolve(path, DATA) == (False, None)


@pytest.mark.parametrize("data", [None, 3, "text", [1, 2], {"input": "x"}, {1: 2}, {}])
def test_resolve_never_crashes_on_odd_data(data: Any) -> None:
    for path in ("$.input.a", "$.input[*]", "$.input[0]", "$.input[1:]", "$"):
        found, _ = resolve(path, data)
        assert isinstance(found, bool)


def test_strings_are_not_indexed_like_arrays() -> None:
    assert resolve("$.input.s[0]", {"input": {"s": "abc"}}) == (False, None)
    assert resolve("$.input.s[*]", {"input": {"s": "abc"}}) == (False, None)


def test_compiled_path_is_reused_and_accepted() -> None:
    compiled = compile_path("$.input.n")
    assert compile_path("$.input.n") is compiled
    assert resolve(compiled, DATA) == (True, 0)
    assert compiled.scope == "input"
    assert compiled.singular
    assert not compile_path("$.input[*]").singular
    assert str(compiled) == "$.input.n"
    assert compile_path("$").scope is None


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("", "expected a path rooted at '$'"),
        ("input.a", "expected a path rooted at '$'"),
        ("$$", "expected a path rooted at '$'"),
        ("$.foo", "expected the first segment to be one of input, state, system, got 'foo'"),
        ("$[0]", "got an index"),
        ("$.*", "expected the first segment"),
        ("$['input','state']", "expected the first segment"),
        ("$..input", "recursive descent ('..') is not supported"),
        ("$.input..a", "recursive descent ('..') is not supported"),
        ("$.input.a where b", "filters ('where') are not supported"),
        ("$.input.a wherenot b", "filters ('wherenot') are not supported"),
        ("$.input | $.state", "union ('|') is not supported"),
        ("$.input & $.state", "intersection ('&') is not supported"),
        ("$.input.`parent`", "named operators"),
        ("$.input.(a)", "parentheses are not supported"),
        ("$.input[?(@.a > 1)]", "syntax error"),
        ("$.input[", "syntax error"),
        ("$.input.'open", "syntax error"),
        ("$.input.a.$", "'$' may only start the path"),
        ("$.input[::0]", "a slice step must not be 0"),
    ],
)
def test_refused_paths_name_expression_and_expectation(expr: str, message: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_path(expr)
    assert message in str(caught.value)
    assert repr(expr) in str(caught.value)
    assert caught.value.expression == expr


def test_overlong_path_is_refused_before_parsing() -> None:
    expr = "$.input." + "a" * MAX_EXPRESSION_LENGTH
    with pytest.raises(ExpressionError) as caught:
        compile_path(expr)
    assert f"longer than {MAX_EXPRESSION_LENGTH} characters" in str(caught.value)
    assert len(str(caught.value)) < 200


def test_path_at_the_length_limit_compiles() -> None:
    expr = "$.input." + "a" * (MAX_EXPRESSION_LENGTH - len("$.input."))
    assert compile_path(expr).expression == expr


def test_non_string_path_is_refused() -> None:
    with pytest.raises(ExpressionError, match="must be a string, got int"):
        compile_path(3)  # type: ignore[arg-type]


def test_require_raises_path_not_found_naming_path_and_state() -> None:
    assert require("$.input.n", DATA) == 0
    with pytest.raises(PathNotFoundError) as caught:
        require("$.input.nope", DATA, state="Ping")
    assert caught.value.path == "$.input.nope"
    assert caught.value.state == "Ping"
    assert "'$.input.nope' matched nothing in state 'Ping'" in str(caught.value)


# --- templates ---------------------------------------------------------------------------------


def test_template_resolves_paths_deeply_and_leaves_the_rest() -> None:
    template = {
        "id": "$.input.device.id",
        "nested": {"tags": ["$.input.device.tags[0]", "plain", 5, None]},
        "text": "costs $5",
        "whole": "$.state.Ping",
    }
    assert resolve_template(template, DATA) == {
        "id": "d1",
        "nested": {"tags": ["a", "plain", 5, None]},
        "text": "costs $5",
        "whole": {"ok": True},
    }


def test_literal_is_returned_unchanged() -> None:
    template = {"a": {"$literal": "$.input.n"}, "b": {"$literal": {"$path": "$.x"}}}
    assert resolve_template(template, DATA) == {"a": "$.input.n", "b": {"$path": "$.x"}}


def test_path_with_default() -> None:
    assert resolve_template({"$path": "$.input.n", "$default": 9}, DATA) == 0
    assert resolve_template({"$path": "$.input.nope", "$default": 9}, DATA) == 9
    assert resolve_template({"$path": "$.input.nope", "$default": None}, DATA) is None


def test_path_without_default_must_match() -> None:
    with pytest.raises(PathNotFoundError) as caught:
        resolve_template({"$path": "$.input.nope"}, DATA, state="S")
    assert caught.value.path == "$.input.nope"
    assert caught.value.state == "S"


def test_missing_path_string_in_template_names_path_and_state() -> None:
    with pytest.raises(PathNotFoundError) as caught:
        resolve_template({"a": ["$.state.Nope.x"]}, DATA, state="Ping")
    assert caught.value.path == "$.state.Nope.x"
    assert caught.value.state == "Ping"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ({"$literal": 1, "x": 2}, "must have no other keys"),
        ({"$path": "$.input.n", "x": 2}, "takes only $path and $default"),
        ({"$path": "input.n"}, "must be a path rooted at '$'"),
        ({"$path": 3}, "must be a path rooted at '$'"),
    ],
)
def test_malformed_special_forms_are_refused(template: dict[str, Any], message: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        resolve_template(template, DATA)
    assert message in str(caught.value)


def test_template_nesting_is_limited() -> None:
    template: Any = "$.input.n"
    for _ in range(MAX_DEPTH + 1):
        template = [template]
    with pytest.raises(ExpressionError, match=f"deeper than {MAX_DEPTH}"):
        resolve_template(template, DATA)


def test_template_paths_lists_every_path_in_order() -> None:
    template = {
        "a": "$.input.a",
        "b": [{"$literal": "$.not.a.path"}, {"$path": "$.state.x", "$default": 1}],
        "c": {"d": "$", "e": "text"},
        "f": {"$path": "bad"},
    }
    assert template_paths(template) == ["$.input.a", "$.state.x", "$", "bad"]
    assert template_paths("$.input") == ["$.input"]
    assert template_paths(42) == []


def test_template_paths_handles_deep_templates_without_recursion() -> None:
    template: Any = "$.input.n"
    for _ in range(10_000):
        template = {"k": [template]}
    assert template_paths(template) == ["$.input.n"]


# --- assign ------------------------------------------------------------------------------------


def test_assign_returns_new_dict_and_does_not_mutate() -> None:
    state: dict[str, Any] = {"a": {"b": 1, "keep": [1]}, "other": 2}
    before = copy.deepcopy(state)
    result = assign(state, "$.state.a.c", "new")
    assert state == before
    assert result == {"a": {"b": 1, "keep": [1], "c": "new"}, "other": 2}
    assert result is not state
    assert result["a"] is not state["a"]


def test_assign_creates_objects_on_the_way() -> None:
    assert assign({}, "$.state.x.y.z", 1) == {"x": {"y": {"z": 1}}}


def test_assign_replaces_a_non_object_on_the_way() -> None:
    assert assign({"x": 5}, "$.state.x.y", 1) == {"x": {"y": 1}}


def test_assign_overwrites_the_target() -> None:
    assert assign({"x": {"old": 1}}, "$.state.x", [2]) == {"x": [2]}


def test_assign_accepts_bracketed_names() -> None:
    assert assign({}, "$.state['odd key'][\"b\"]", 1) == {"odd key": {"b": 1}}


def test_assign_then_resolve_gives_the_value_back() -> None:
    state = assign({"Ping": 1}, "$.state.Result.value", {"deep": [1, 2]})
    assert resolve("$.state.Result.value", {"state": state}) == (True, {"deep": [1, 2]})


@pytest.mark.parametrize(
    "path",
    [
        "$.state",
        "$",
        "$.input.x",
        "$.system.x",
        "$.state.items[0]",
        "$.state.items[*]",
        "$.state.*",
        "$.state['a','b']",
        "$.state.items[1:]",
    ],
)
def test_assign_refuses_other_paths(path: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        assign({}, path, 1)
    assert repr(path) in str(caught.value)
    assert "result path" in str(caught.value)


def test_assign_refuses_syntax_errors() -> None:
    with pytest.raises(ExpressionError, match="syntax error"):
        assign({}, "$.state.[", 1)
