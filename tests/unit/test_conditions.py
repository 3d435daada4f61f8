"""Conditions: every operator, typed comparisons, timestamps, missing values, regex guards."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter

from interpreter.conditions import compile_condition, compile_regex
from interpreter.errors import ConditionError, ExpressionError
from interpreter.limits import MAX_DEPTH, MAX_REGEX_LENGTH
from interpreter.models import Condition

CONDITION = TypeAdapter(Condition)

DATA: dict[str, Any] = {
    "input": {
        "n": 3,
        "f": 2.5,
        "zero": 0,
        "s": "hello world",
        "b": True,
        "no": False,
        "nil": None,
        "list": [1, "x", {"k": 1}, None],
        "obj": {"a": 1, "b": [1, 2]},
        "t": "2024-01-01T00:00:00Z",
        "t_later": "2024-01-01T00:30:00+01:00",
        "num_string": "3",
    },
    "state": {"limit": 3, "same_t": "2024-01-01T01:00:00+01:00"},
    "system": {"deviceId": "dev-1"},
}


def evaluate(cond: dict[str, Any], data: Any = DATA) -> bool:
    return compile_condition(CONDITION.validate_python(cond)).evaluate(data)


def cmp(op: str, variable: str, value: Any) -> dict[str, Any]:
    return {"op": op, "variable": f"$.input.{variable}", "value": value}


@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        # equals: typed, numbers across int/float, no coercion
        (cmp("equals", "n", 3), True),
        (cmp("equals", "n", 3.0), True),
        (cmp("equals", "n", "3"), False),
        (cmp("equals", "num_string", 3), False),
        (cmp("equals", "b", 1), False),
        (cmp("equals", "b", True), True),
        (cmp("equals", "zero", False), False),
        (cmp("equals", "no", 0), False),
        (cmp("equals", "nil", None), True),
        (cmp("equals", "nil", False), False),
        (cmp("equals", "s", "hello world"), True),
        (cmp("equals", "obj", {"b": [1, 2.0], "a": 1.0}), True),
        (cmp("equals", "obj", {"a": 1}), False),
        (cmp("equals", "obj", {"a": True, "b": [1, 2]}), False),
        (cmp("equals", "list", [1, "x", {"k": 1}, None]), True),
        (cmp("equals", "list", [True, "x", {"k": 1}, None]), False),
        (cmp("equals", "list", [1, "x"]), False),
        # notEquals: the negation of equals for a present variable
        (cmp("notEquals", "n", "3"), True),
        (cmp("notEquals", "n", 3.0), False),
        (cmp("notEquals", "b", 1), True),
        # ordering: numbers, strings lexically
        (cmp("greaterThan", "n", 2), True),
        (cmp("greaterThan", "n", 3), False),
        (cmp("greaterThan", "f", 2), True),
        (cmp("greaterThanOrEquals", "n", 3.0), True),
        (cmp("lessThan", "n", 3.5), True),
        (cmp("lessThan", "n", 3), False),
        (cmp("lessThanOrEquals", "n", 3), True),
        (cmp("lessThanOrEquals", "n", 2), False),
        (cmp("greaterThan", "s", "hello"), True),
        (cmp("lessThan", "s", "help"), True),
        (cmp("lessThan", "s", "Z"), False),  # code point order: lowercase after uppercase
        (cmp("greaterThanOrEquals", "s", "hello world"), True),
        # ordering between incompatible types is false, in both directions
        (cmp("greaterThan", "num_string", 2), False),
        (cmp("lessThanOrEquals", "num_string", 2), False),
        (cmp("greaterThan", "n", "2"), False),
        (cmp("lessThan", "n", "4"), False),
        (cmp("greaterThan", "b", 0), False),
        (cmp("greaterThanOrEquals", "b", 1), False),
        (cmp("lessThan", "nil", 1), False),
        (cmp("greaterThan", "list", 0), False),
        (cmp("greaterThanOrEquals", "obj", "a"), False),
        # contains: substring, or typed array membership
        (cmp("contains", "s", "lo wo"), True),
        (cmp("contains", "s", "xyz"), False),
        (cmp("contains", "list", 1.0), True),
        (cmp("contains", "list", True), False),
        (cmp("contains", "list", {"k": 1}), True),
        (cmp("contains", "list", None), True),
        (cmp("contains", "list", "1"), False),
        (cmp("contains", "n", 3), False),
        (cmp("contains", "obj", "a"), False),
        (cmp("contains", "s", 1), False),
        # startsWith / endsWith
        (cmp("startsWith", "s", "hello"), True),
        (cmp("startsWith", "s", "world"), False),
        (cmp("endsWith", "s", "world"), True),
        (cmp("endsWith", "s", "hello"), False),
        (cmp("startsWith", "n", "3"), False),
        # in: typed membership
        (cmp("in", "n", [1, 2, 3]), True),
        (cmp("in", "n", [1.0, 3.0]), True),
        (cmp("in", "n", ["3"]), False),
        (cmp("in", "b", [1]), False),
        (cmp("in", "s", ["hello world", "x"]), True),
        (cmp("in", "obj", [{"a": 1, "b": [1, 2]}]), True),
        (cmp("in", "n", []), False),
        # matches: a search, anchors when the author writes them
        (cmp("matches", "s", "o w"), True),
        (cmp("matches", "s", "^hello"), True),
        (cmp("matches", "s", "^world"), False),
        (cmp("matches", "s", r"^\w+ \w+$"), True),
        (cmp("matches", "n", "3"), False),
        # isPresent / isNull
        ({"op": "isPresent", "variable": "$.input.nil"}, True),
        ({"op": "isPresent", "variable": "$.input.nil", "value": False}, False),
        ({"op": "isNull", "variable": "$.input.nil"}, True),
        ({"op": "isNull", "variable": "$.input.nil", "value": False}, False),
        ({"op": "isNull", "variable": "$.input.zero"}, False),
        ({"op": "isNull", "variable": "$.input.zero", "value": False}, True),
        # isType
        (cmp("isType", "s", "string"), True),
        (cmp("isType", "t", "string"), True),
        (cmp("isType", "n", "number"), True),
        (cmp("isType", "f", "number"), True),
        (cmp("isType", "b", "number"), False),
        (cmp("isType", "n", "integer"), True),
        (cmp("isType", "f", "integer"), False),
        (cmp("isType", "b", "integer"), False),
        (cmp("isType", "b", "boolean"), True),
        (cmp("isType", "zero", "boolean"), False),
        (cmp("isType", "nil", "null"), True),
        (cmp("isType", "zero", "null"), False),
        (cmp("isType", "list", "array"), True),
        (cmp("isType", "obj", "array"), False),
        (cmp("isType", "obj", "object"), True),
        (cmp("isType", "list", "object"), False),
        (cmp("isType", "t", "timestamp"), True),
        (cmp("isType", "s", "timestamp"), False),
        (cmp("isType", "num_string", "number"), False),
    ],
)
def test_operator(cond: dict[str, Any], expected: bool) -> None:
    assert evaluate(cond) is expected


def test_huge_integers_and_nan_compare_without_errors() -> None:
    data = {"input": {"big": 10**400, "nan": float("nan")}}
    assert evaluate(cmp("greaterThan", "big", 1.5), data)
    assert not evaluate(cmp("lessThan", "big", 2), data)
    assert not evaluate(cmp("equals", "big", 1e308), data)
    assert evaluate(cmp("isType", "big", "integer"), data)
    assert not evaluate(cmp("greaterThan", "nan", 1), data)
    assert not evaluate(cmp("lessThanOrEquals", "nan", 1), data)
    assert not evaluate(cmp("equals", "nan", 1), data)


def test_integral_float_is_an_integer() -> None:
    assert evaluate(cmp("isType", "x", "integer"), {"input": {"x": 2.0}})


def test_naive_timestamp_string_is_not_a_timestamp() -> None:
    assert not evaluate(cmp("isType", "x", "timestamp"), {"input": {"x": "2024-01-01T00:00:00"}})


# --- timestamps ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [
        ("equals", "2024-01-01T01:00:00+01:00", True),
        ("equals", "2023-12-31T19:00:00-05:00", True),
        ("equals", "2024-01-01T00:00:00.000Z", True),
        ("notEquals", "2024-01-01T01:00:00+01:00", False),
        ("equals", "2024-01-01T00:00:01Z", False),
        # Lexically "2023-12-31T23:30:00-01:00" < "2024-...", but as an instant it is later.
        ("lessThan", "2023-12-31T23:30:00-01:00", True),
        ("greaterThan", "2023-12-31T23:30:00-01:00", False),
        ("greaterThanOrEquals", "2024-01-01T01:00:00+01:00", True),
        ("lessThanOrEquals", "2024-01-01T01:00:00+01:00", True),
        ("greaterThan", "2023-12-31T23:59:59Z", True),
    ],
)
def test_timestamps_compare_as_instants(op: str, value: str, expected: bool) -> None:
    assert evaluate(cmp(op, "t", value)) is expected


def test_timestamp_against_value_path() -> None:
    cond = {"op": "equals", "variable": "$.input.t", "valuePath": "$.state.same_t"}
    assert evaluate(cond)
    later = {"op": "lessThan", "variable": "$.input.t", "valuePath": "$.input.t_later"}
    # 00:30+01:00 is 23:30Z of the previous day: earlier than t, although lexically later.
    assert not evaluate(later)


def test_timestamp_and_plain_string_compare_lexically() -> None:
    assert evaluate(cmp("lessThan", "t", "3"))
    assert not evaluate(cmp("equals", "t", "2024-01-01"))


def test_timestamps_in_arrays_compare_as_instants() -> None:
    assert evaluate(cmp("in", "t", ["2024-01-01T02:00:00+02:00"]))
    assert evaluate(cmp("equals", "list", [1, "x", {"k": 1}, None]))


# --- valuePath ----------------------------------------------------------------------------------


def test_value_path_compares_against_another_value() -> None:
    cond = {"op": "greaterThanOrEquals", "variable": "$.input.n", "valuePath": "$.state.limit"}
    assert evaluate(cond)
    cond = {"op": "greaterThan", "variable": "$.input.n", "valuePath": "$.state.limit"}
    assert not evaluate(cond)


def test_value_path_for_in_must_resolve_to_an_array() -> None:
    cond = {"op": "in", "variable": "$.input.n", "valuePath": "$.state.limit"}
    assert not evaluate(cond)
    cond = {"op": "in", "variable": "$.input.n", "valuePath": "$.input.list"}
    assert not evaluate(cond)
    assert evaluate(cond, {"input": {"n": "x", "list": [1, "x"]}})


# --- missing values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "op",
    [
        "equals",
        "notEquals",
        "greaterThan",
        "greaterThanOrEquals",
        "lessThan",
        "lessThanOrEquals",
        "contains",
        "startsWith",
        "endsWith",
        "in",
    ],
)
def test_missing_variable_makes_a_comparison_false(op: str) -> None:
    value: Any = [1] if op == "in" else "x"
    assert not evaluate(cmp(op, "missing", value))
    assert evaluate({"op": "not", "condition": cmp(op, "missing", value)})


@pytest.mark.parametrize("op", ["equals", "notEquals", "lessThan", "contains", "in"])
def test_missing_value_path_makes_a_comparison_false(op: str) -> None:
    cond = {"op": op, "variable": "$.input.n", "valuePath": "$.state.missing"}
    assert not evaluate(cond)


def test_missing_variable_for_unary_operators() -> None:
    assert not evaluate({"op": "isPresent", "variable": "$.input.missing"})
    assert evaluate({"op": "isPresent", "variable": "$.input.missing", "value": False})
    assert not evaluate({"op": "isNull", "variable": "$.input.missing"})
    assert not evaluate({"op": "isNull", "variable": "$.input.missing", "value": False})
    assert not evaluate(cmp("isType", "missing", "null"))
    assert not evaluate(cmp("matches", "missing", ".*"))


def test_odd_documents_never_crash() -> None:
    cond = cmp("equals", "a", 1)
    data: Any
    for data in (None, [], "text", 3, {"input": []}, {"input": {"a": [1]}}):
        assert not evaluate(cond, data)


def test_deeply_nested_data_compares_without_recursion() -> None:
    deep: Any = 1
    for _ in range(50_000):
        deep = [deep]
    data = {"input": {"a": deep, "b": deep}}
    assert evaluate({"op": "equals", "variable": "$.input.a", "valuePath": "$.input.b"}, data)


# --- and / or / not ----------------------------------------------------------------------------


TRUE = cmp("equals", "n", 3)
FALSE = cmp("equals", "n", 4)


@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        ({"op": "and", "conditions": [TRUE, TRUE]}, True),
        ({"op": "and", "conditions": [TRUE, FALSE]}, False),
        ({"op": "or", "conditions": [FALSE, TRUE]}, True),
        ({"op": "or", "conditions": [FALSE, FALSE]}, False),
        ({"op": "not", "condition": FALSE}, True),
        ({"op": "not", "condition": {"op": "not", "condition": TRUE}}, True),
        ({"op": "and", "conditions": [TRUE]}, True),
    ],
)
def test_logic(cond: dict[str, Any], expected: bool) -> None:
    assert evaluate(cond) is expected


SLOW = {"op": "matches", "variable": "$.input.slow", "value": r"^\d*\d*\d*\d*\d*\d*:$"}
SLOW_DATA = {"input": {"n": 3, "slow": "1" * 3000 + ":a"}}


def test_regex_timeout_raises_condition_error() -> None:
    with pytest.raises(ConditionError) as caught:
        evaluate(SLOW, SLOW_DATA)
    assert "took longer than 0.05s" in str(caught.value)
    assert caught.value.error_name == "States.ConditionError"


def test_and_or_short_circuit() -> None:
    # The slow regex would raise if it were evaluated.
    assert not evaluate({"op": "and", "conditions": [FALSE, SLOW]}, SLOW_DATA)
    assert evaluate({"op": "or", "conditions": [TRUE, SLOW]}, SLOW_DATA)


def test_nesting_up_to_the_limit_compiles_and_beyond_is_refused() -> None:
    cond: dict[str, Any] = TRUE
    for _ in range(MAX_DEPTH - 1):
        cond = {"op": "not", "condition": cond}
    # MAX_DEPTH - 1 nots: odd count of negations of a true comparison.
    assert evaluate(cond) is ((MAX_DEPTH - 1) % 2 == 0)
    model = CONDITION.validate_python({"op": "not", "condition": cond})
    with pytest.raises(ExpressionError) as caught:
        compile_condition(model)
    assert f"nested deeper than {MAX_DEPTH}" in str(caught.value)


# --- compile-time refusals ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cond", "message"),
    [
        (cmp("equals", "a b", 1), "syntax error"),
        ({"op": "equals", "variable": "$.nowhere.x", "value": 1}, "expected the first segment"),
        ({"op": "equals", "variable": "$.input.n", "valuePath": "$..x"}, "recursive descent"),
        ({"op": "equals", "variable": "$.input.n"}, "expected 'value' or 'valuePath'"),
        (cmp("in", "n", 3), "expected 'value' to be an array"),
        (cmp("startsWith", "s", 3), "expected 'value' to be a string"),
        (cmp("endsWith", "s", None), "expected 'value' to be a string"),
        (cmp("greaterThan", "n", None), "expected 'value' to be a number or string"),
        (cmp("lessThan", "n", True), "expected 'value' to be a number or string"),
        (cmp("isPresent", "n", "yes"), "expected 'value' true or false"),
        (cmp("isNull", "n", 1), "expected 'value' true or false"),
        (cmp("isType", "n", "float"), "expected 'value' one of string, number, integer"),
        (cmp("matches", "s", 3), "expected 'value' to be a regex string"),
        (cmp("matches", "s", "(a+)+"), "repeated group"),
        (cmp("matches", "s", "("), "does not compile"),
        (
            {"op": "matches", "variable": "$.input.s", "valuePath": "$.state.p"},
            "takes a literal 'value', not 'valuePath'",
        ),
        (
            {"op": "isType", "variable": "$.input.s", "valuePath": "$.state.p"},
            "takes a literal 'value', not 'valuePath'",
        ),
    ],
)
def test_compile_refusals(cond: dict[str, Any], message: str) -> None:
    model = CONDITION.validate_python(cond)
    with pytest.raises(ExpressionError) as caught:
        compile_condition(model)
    assert message in str(caught.value)


def test_compiled_condition_keeps_its_source() -> None:
    model = CONDITION.validate_python(TRUE)
    assert compile_condition(model).condition is model


# --- regex guards ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    [
        "(a+)+",
        "(a*)*",
        "(a|a)*",
        r"(\w+\s?)*",
        "((a)+)+",
        "(?:a+)+$",
        "(a+){2,}",
        "(x?y)+",
        "^(a|ab)*c$",
        "((ab)*)*",
        "(a+)*?",
    ],
)
def test_catastrophic_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_regex(pattern)
    assert "can backtrack exponentially" in str(caught.value)
    assert caught.value.expression == pattern


@pytest.mark.parametrize(
    "pattern",
    [
        "^abc$",
        "(ab)*",
        "(a+)?",
        "(a+)b(c+)",
        r"\(a+\)+",
        "[(a+)]+",
        r"^[A-Z]{2,3}-\d{1,4}$",
        "(?P<name>a+)b",
        "(?i)hello",
        "a|b|c",
        "(?:abc){3}",
    ],
)
def test_safe_patterns_compile(pattern: str) -> None:
    assert compile_regex(pattern).pattern == pattern


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("a" * (MAX_REGEX_LENGTH + 1), f"longer than {MAX_REGEX_LENGTH} characters"),
        ("x{e<=1}", "braces must be a repetition"),
        ("a{foo}", "braces must be a repetition"),
        ("a{2000}", "repetition counts above 1000"),
        ("[a-", "does not compile"),
        ("a)", "does not compile"),
    ],
)
def test_bad_patterns_are_refused(pattern: str, message: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_regex(pattern)
    assert message in str(caught.value)


def test_regex_at_the_length_limit_compiles() -> None:
    assert compile_regex("a" * MAX_REGEX_LENGTH).search("a" * MAX_REGEX_LENGTH)


def test_compiled_regex_searches() -> None:
    pattern = compile_regex(r"^dev-\d+$")
    assert pattern.search("dev-12")
    assert not pattern.search("dev-x")
