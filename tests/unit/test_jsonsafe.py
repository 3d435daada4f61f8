"""``interpreter.jsonsafe``: the strict JSON loader, the value checker and the id rule."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from interpreter.jsonsafe import (
    ID_PATTERN,
    MAX_ID_LENGTH,
    MAX_INTEGER,
    MIN_INTEGER,
    NAME_PATTERN,
    UnsafeJsonError,
    check_value,
    is_valid_id,
    loads,
)
from interpreter.limits import MAX_DEPTH


def refused(data: str | bytes, **kwargs: Any) -> UnsafeJsonError:
    with pytest.raises(UnsafeJsonError) as caught:
        loads(data, **kwargs)
    return caught.value


def test_plain_json_loads_as_the_stdlib_would() -> None:
    text = (
        '{"a": [1, -2, 3.5, "x\\u00e9\\ud83d\\ude00", true, null], "b": {"c": 9223372036854775807}}'
    )
    assert loads(text) == json.loads(text)
    assert loads(text.encode()) == json.loads(text)


@pytest.mark.parametrize(
    ("text", "code", "where", "says"),
    [
        ('{"a": 1, "a": 2}', "duplicate-key", "/a", "more than once"),
        ('{"x": {"deviceId": "a", "deviceId": "b"}}', "duplicate-key", "/x/deviceId", "deviceId"),
        ('{"a": NaN}', "non-finite-number", "/a", "NaN"),
        ('{"a": [1, Infinity]}', "non-finite-number", "/a/1", "Infinity"),
        ('{"a": -Infinity}', "non-finite-number", "/a", "-Infinity"),
        ('{"a": 1e400}', "number-out-of-range", "/a", "1e400"),
        ('{"a": -1e400}', "number-out-of-range", "/a", "overflows"),
        ('{"a": 9223372036854775808}', "number-out-of-range", "/a", "outside"),
        ('{"a": -9223372036854775809}', "number-out-of-range", "/a", "outside"),
        ('{"a": ' + "9" * 5000 + "}", "number-out-of-range", "/a", "..."),
        ('{"a": "x\\u0000y"}', "forbidden-character", "/a", "NUL"),
        ('{"a\\u0000": 1}', "forbidden-character", "/a\x00", "member name"),
        ('{"a": "\\ud800"}', "forbidden-character", "/a", "surrogate (\\ud800)"),
        ('{"a": ["ok", "\\udfff"]}', "forbidden-character", "/a/1", "surrogate"),
        ('{"\\udc00": 1}', "forbidden-character", "/\udc00", "member name"),
        ('{"a/b": {"~": NaN}}', "non-finite-number", "/a~1b/~0", "NaN"),
        ("{not json", "invalid-json", "", "line 1 column 2"),
        ("", "invalid-json", "", "not JSON"),
    ],
)
def test_values_that_cannot_be_stored_or_sent_are_refused_with_a_pointer(
    text: str, code: str, where: str, says: str
) -> None:
    error = refused(text)
    assert (error.code, error.pointer) == (code, where)
    assert says in error.message
    assert says in str(error)


def test_the_first_problem_in_document_order_is_reported() -> None:
    error = refused('{"a": {"b": NaN}, "c": "\\u0000"}')
    assert error.pointer == "/a/b"


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\xef\xbb\xbf{}", "byte-order-mark"),
        ("\ufeff{}", "byte-order-mark"),
        (b'"\xed\xa0\x80"', "not-utf8"),  # a surrogate encoded in UTF-8 bytes
        (b"\xff{}", "not-utf8"),
        (b"[" * 100_000 + b"]" * 100_000, "too-deep"),  # past the C scanner's recursion limit
    ],
    ids=["bom-bytes", "bom-text", "encoded-surrogate", "not-utf8", "far-too-deep"],
)
def test_text_level_refusals(data: str | bytes, code: str) -> None:
    error = refused(data)
    assert (error.code, error.pointer) == (code, "")


def test_one_level_past_the_depth_limit_is_refused_where_it_starts() -> None:
    error = refused(b'{"a": ' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}")
    assert error.code == "too-deep"
    assert error.pointer == "/a" + "/0" * (MAX_DEPTH - 1)


def test_depth_is_measured_outside_strings_and_at_the_limit_is_accepted() -> None:
    at_limit = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert loads(at_limit) is not None
    assert loads(json.dumps({"t": "[" * (MAX_DEPTH * 2)})) == {"t": "[" * (MAX_DEPTH * 2)}


def test_size_is_checked_first_in_bytes() -> None:
    error = refused(b"[" * 200, max_bytes=100)
    assert error.code == "too-large"
    assert "200 bytes; the limit is 100" in error.message
    assert refused('"' + "\u00e9" * 60 + '"', max_bytes=100).code == "too-large"  # 122 bytes


def test_integers_at_the_bounds_are_accepted() -> None:
    assert loads(f"[{MAX_INTEGER}, {MIN_INTEGER}, 1e308, -0.0, 1e-400]") == [
        MAX_INTEGER,
        MIN_INTEGER,
        1e308,
        -0.0,
        0.0,
    ]


@pytest.mark.parametrize(
    ("value", "code", "where"),
    [
        ({"a": float("nan")}, "non-finite-number", "/a"),
        ([1, float("inf")], "non-finite-number", "/1"),
        ({"k": ["\x00"]}, "forbidden-character", "/k/0"),
        ({"\ud800": 1}, "forbidden-character", "/\ud800"),
        ({"n": 2**64}, "number-out-of-range", "/n"),
        ({1: "x"}, "not-json", ""),
        ({"t": object()}, "not-json", "/t"),
    ],
)
def test_check_value_applies_the_same_rules_to_parsed_trees(
    value: Any, code: str, where: str
) -> None:
    with pytest.raises(UnsafeJsonError) as caught:
        check_value(value, at="/input")
    assert (caught.value.code, caught.value.pointer) == (code, "/input" + where)


def test_check_value_bounds_depth_without_recursion() -> None:
    deep: Any = "leaf"
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(UnsafeJsonError) as caught:
        check_value(deep)
    assert caught.value.code == "too-deep"
    check_value({"ok": [1, 2.5, "é", None, True, (1, 2)]})


def test_the_error_is_a_value_error_so_validators_may_raise_it() -> None:
    assert issubclass(UnsafeJsonError, ValueError)


@pytest.mark.parametrize(
    "good", ["dev-1", "a", "A.b_c:d-e", "0f8fad5b-d9cb-469f-a165-70867728950e", "x" * MAX_ID_LENGTH]
)
def test_ids_that_follow_the_rule(good: str) -> None:
    assert is_valid_id(good)
    assert re.match(ID_PATTERN, good)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "-lead",
        "has space",
        "new\nline",
        "esc\x1b",
        "ctl\x01",
        "nul\x00",
        "\ud800",
        "slash/no",
        "é",
        "x" * (MAX_ID_LENGTH + 1),
        "trailing\n",
    ],
)
def test_ids_outside_the_rule(bad: str) -> None:
    assert not is_valid_id(bad)


def test_names_allow_a_slash_and_nothing_else_beyond_ids() -> None:
    assert re.match(NAME_PATTERN, "device/ready.v2")
    assert not re.match(NAME_PATTERN, "device ready")
    assert not re.match(NAME_PATTERN, "device\x1bready")
