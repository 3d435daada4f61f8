"""Properties of the expression evaluator on generated paths, conditions and documents."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from interpreter.conditions import compile_condition, compile_regex
from interpreter.errors import ExpressionError, OrchestrationError
from interpreter.models import COMPARISON_OPERATORS, TYPE_NAMES, Condition
from interpreter.paths import assign, compile_path, resolve, resolve_template

CONDITION = TypeAdapter(Condition)
SETTINGS = settings(max_examples=150, deadline=None)

KEYS = ("a", "b", "c")
TIMESTAMPS = (
    "2024-01-01T00:00:00Z",
    "2024-01-01T01:00:00+01:00",
    "2023-12-31T23:30:00-01:00",
    "2024-01-01T00:00:00",
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-5, max_value=5)
    | st.integers()
    | st.just(10**400)
    | st.floats(allow_nan=False, min_value=-5, max_value=5)
    | st.sampled_from(("a", "b", "ab", "", "1", *TIMESTAMPS))
    | st.text(max_size=5)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=20,
)
scope_data = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=3)
documents = st.fixed_dictionaries({"input": json_values, "state": scope_data, "system": scope_data})
odd_documents = json_values | documents

segments = st.sampled_from(
    (".a", ".b", ".c", "[0]", "[-1]", "[1]", "[*]", ".*", "[1:]", "[::-1]", "['b']", "['a','c']")
)
paths = st.builds(
    lambda scope, parts: f"$.{scope}" + "".join(parts),
    st.sampled_from(("input", "state", "system")),
    st.lists(segments, max_size=4),
)
path_like_text = st.text(alphabet="$.[]*:,'\"`()?@|&~ -019abinputstatesystemwhere", max_size=30)


@SETTINGS
@given(expr=st.text(max_size=60) | path_like_text | path_like_text.map("$.input".__add__))
def test_compile_path_raises_only_expression_error(expr: str) -> None:
    try:
        compiled = compile_path(expr)
    except ExpressionError as exc:
        assert exc.expression == expr
    else:
        assert compiled.expression == expr


@SETTINGS
@given(path=paths, data=odd_documents)
def test_resolve_never_raises_on_any_document(path: str, data: Any) -> None:
    found, value = resolve(path, data)
    if not found:
        assert value is None
    elif not compile_path(path).singular:
        assert isinstance(value, list)
        assert value


@SETTINGS
@given(pattern=st.text(max_size=40) | st.text(alphabet="()[]{}*+?|\\a,1e<=^$.", max_size=30))
def test_compile_regex_raises_only_expression_error(pattern: str) -> None:
    try:
        compiled = compile_regex(pattern)
    except ExpressionError:
        return
    compiled.search("aaa")


# --- conditions --------------------------------------------------------------------------------


def _operand(op: str) -> st.SearchStrategy[Any]:
    if op == "in":
        return st.lists(scalars, max_size=3)
    if op in ("startsWith", "endsWith"):
        return st.sampled_from(("a", "", "b", "2024"))
    if op in ("greaterThan", "greaterThanOrEquals", "lessThan", "lessThanOrEquals"):
        return st.integers(-3, 3) | st.sampled_from(("a", "b", *TIMESTAMPS))
    if op == "matches":
        return st.sampled_from(("^a", "b$", r"\d", "a|b", "(ab)*", "^$"))
    if op in ("isPresent", "isNull"):
        return st.booleans()
    if op == "isType":
        return st.sampled_from(TYPE_NAMES)
    return scalars


@st.composite
def comparisons(draw: st.DrawFn) -> dict[str, Any]:
    op = draw(st.sampled_from(COMPARISON_OPERATORS))
    cond: dict[str, Any] = {"op": op, "variable": draw(paths)}
    literal_only = op in ("matches", "isPresent", "isNull", "isType")
    if not literal_only and draw(st.booleans()):
        cond["valuePath"] = draw(paths)
    else:
        cond["value"] = draw(_operand(op))
    return cond


conditions = st.recursive(
    comparisons(),
    lambda inner: (
        st.builds(lambda c: {"op": "not", "condition": c}, inner)
        | st.builds(
            lambda cs: {"op": "and", "conditions": cs}, st.lists(inner, min_size=1, max_size=3)
        )
        | st.builds(
            lambda cs: {"op": "or", "conditions": cs}, st.lists(inner, min_size=1, max_size=3)
        )
    ),
    max_leaves=6,
)


def evaluate(cond: dict[str, Any], data: Any) -> bool:
    return compile_condition(CONDITION.validate_python(cond)).evaluate(data)


def NOT(cond: dict[str, Any]) -> dict[str, Any]:
    return {"op": "not", "condition": cond}


def AND(*conds: dict[str, Any]) -> dict[str, Any]:
    return {"op": "and", "conditions": list(conds)}


def OR(*conds: dict[str, Any]) -> dict[str, Any]:
    return {"op": "or", "conditions": list(conds)}


@SETTINGS
@given(cond=conditions, data=odd_documents)
def test_evaluate_returns_a_bool_or_raises_only_project_errors(
    cond: dict[str, Any], data: Any
) -> None:
    try:
        result = evaluate(cond, data)
    except OrchestrationError:
        return
    assert isinstance(result, bool)


@SETTINGS
@given(a=conditions, b=conditions, data=documents)
def test_boolean_laws(a: dict[str, Any], b: dict[str, Any], data: Any) -> None:
    value_a, value_b = evaluate(a, data), evaluate(b, data)
    assert evaluate(NOT(NOT(a)), data) == value_a
    assert evaluate(NOT(AND(a, b)), data) == evaluate(OR(NOT(a), NOT(b)), data)
    assert evaluate(NOT(OR(a, b)), data) == evaluate(AND(NOT(a), NOT(b)), data)
    assert evaluate(AND(a, a), data) == value_a
    assert evaluate(OR(a, a), data) == value_a
    assert evaluate(AND(a, b), data) == evaluate(AND(b, a), data) == (value_a and value_b)
    assert evaluate(OR(a, b), data) == evaluate(OR(b, a), data) == (value_a or value_b)


@SETTINGS
@given(variable=paths, value=scalars, data=documents)
def test_not_equals_is_not_equals_when_present(variable: str, value: Any, data: Any) -> None:
    equals = {"op": "equals", "variable": variable, "value": value}
    not_equals = {"op": "notEquals", "variable": variable, "value": value}
    present, _ = resolve(variable, data)
    if present:
        assert evaluate(not_equals, data) == (not evaluate(equals, data))
    else:
        assert not evaluate(not_equals, data)
        assert not evaluate(equals, data)


@SETTINGS
@given(value=json_values, data=documents)
def test_every_value_equals_itself(value: Any, data: dict[str, Any]) -> None:
    data = {**data, "input": {"x": value}}
    assert evaluate({"op": "equals", "variable": "$.input.x", "valuePath": "$.input.x"}, data)


# --- assign ------------------------------------------------------------------------------------

field_names = st.text(alphabet="abcXYZ_ -'\"", min_size=1, max_size=6)


@SETTINGS
@given(state=scope_data, names=st.lists(field_names, min_size=1, max_size=4), value=json_values)
def test_assign_then_resolve_gets_the_value_back(
    state: dict[str, Any], names: list[str], value: Any
) -> None:
    path = "$.state" + "".join(
        "[" + repr(name) + "]" if "'" not in name else '["' + name.replace('"', '\\"') + '"]'
        for name in names
    )
    before = repr(state)
    updated = assign(state, path, value)
    assert repr(state) == before
    assert resolve(path, {"state": updated}) == (True, value)
    assert resolve_template({"$path": path}, {"state": updated}) == value


_NAME = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True).filter(
    lambda n: n not in ("where", "wherenot")
)
_STEP = st.one_of(_NAME.map(lambda n: f".{n}"), st.integers(0, 10**6).map(lambda i: f"[{i}]"))


@given(st.sampled_from(["input", "state", "system"]), st.lists(_STEP, max_size=6))
def test_plain_paths_read_without_the_parser_give_the_parsers_steps(
    scope: str, steps: list[str]
) -> None:
    from jsonpath_ng.parser import parse

    from interpreter.paths import _flatten, _simple_steps

    expr = f"$.{scope}" + "".join(steps)
    assert _simple_steps(expr) == _flatten(expr, parse(expr))
