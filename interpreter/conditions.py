"""Compile and evaluate choice conditions: typed comparisons combined with ``and``/``or``/``not``.

Compiling checks everything an author can get wrong (paths, operands, regexes, nesting deeper
than ``MAX_DEPTH``) and raises ``ExpressionError``; evaluating never raises for the shape of the
data, only ``ConditionError`` when a regex exceeds its time budget.

Typed comparisons (no coercion, ever):

- a boolean is not a number and a number never equals a string: ``1 != "1"``, ``True != 1``;
- numbers compare across int and float (``1 == 1.0``); strings compare lexically by code point;
- two strings that are both RFC 3339 timestamps with an offset compare as instants, so
  ``"2024-01-01T00:00:00Z"`` equals ``"2024-01-01T01:00:00+01:00"``;
- arrays and objects are equal when their members are (typed, recursively);
- ordering (``greaterThan`` ...) between values that have no common order (a number and a
  string, booleans, null, arrays, objects) is false, not an error.

Operators: ``contains`` is substring for two strings and typed membership for an array;
``startsWith``/``endsWith`` need two strings; ``matches`` searches the string (anchor with
``^``/``$`` for a whole match); ``in`` is typed membership of the variable's value in the array
``value``; ``isPresent``/``isNull`` take ``value: bool`` (default true); ``isType`` takes one of
``models.TYPE_NAMES`` (``integer`` includes integral floats; ``timestamp`` is an RFC 3339 string).
``matches``, ``isPresent``, ``isNull`` and ``isType`` take a literal ``value``, never ``valuePath``
(a pattern must be checked when the definition is, not when the data arrives).

Missing values: when ``variable`` (or ``valuePath``) matches nothing, every comparison is false,
``notEquals`` included, except ``isPresent`` with ``value: false`` which is true. To test "absent
or different", write ``{"op": "not", "condition": {"op": "equals", ...}}``: ``not`` is plain
boolean negation, so it is true for a missing variable. ``and``/``or`` short-circuit left to right.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Final

import regex

from interpreter.durations import parse_timestamp
from interpreter.errors import ConditionError, ExpressionError
from interpreter.limits import MAX_DEPTH, MAX_REGEX_LENGTH, REGEX_TIMEOUT_SECONDS
from interpreter.models import (
    TYPE_NAMES,
    AndCondition,
    Comparison,
    Condition,
    NotCondition,
    OrCondition,
)
from interpreter.paths import CompiledPath, compile_path, resolve

__all__ = ["CompiledCondition", "CompiledRegex", "compile_condition", "compile_regex"]

# Largest {n,m} repetition count accepted in a regex; bigger ones only make matching slower.
_MAX_REPEAT: Final = 1_000


# --- regular expressions ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompiledRegex:
    """A checked regular expression whose every match runs under ``REGEX_TIMEOUT_SECONDS``."""

    pattern: str
    _compiled: Any  # regex.Pattern[str]; the regex package's stubs are not installed

    def search(self, text: str) -> bool:
        """True when the pattern matches somewhere in ``text``; ``ConditionError`` on timeout."""
        try:
            return self._compiled.search(text, timeout=REGEX_TIMEOUT_SECONDS) is not None
        except TimeoutError as exc:
            raise ConditionError(
                f"regex {self.pattern!r} took longer than {REGEX_TIMEOUT_SECONDS}s "
                f"on a string of {len(text)} characters"
            ) from exc


def compile_regex(pattern: str) -> CompiledRegex:
    """Check and compile ``pattern``; ``ExpressionError`` if too long, catastrophic or invalid."""
    if not isinstance(pattern, str):
        raise ExpressionError(
            f"a regex must be a string, got {type(pattern).__name__}", repr(pattern)
        )
    if len(pattern) > MAX_REGEX_LENGTH:
        raise ExpressionError(
            f"regex is longer than {MAX_REGEX_LENGTH} characters ({len(pattern)})",
            pattern[:MAX_REGEX_LENGTH],
        )
    return _compile_regex(pattern)


@lru_cache(maxsize=1024)
def _compile_regex(pattern: str) -> CompiledRegex:
    _refuse_catastrophic(pattern)
    try:
        compiled = regex.compile(pattern)
    # regex.error for syntax; OverflowError, RecursionError and friends for extreme patterns.
    except Exception as exc:
        raise ExpressionError(f"regex {pattern!r} does not compile: {exc}", pattern) from exc
    return CompiledRegex(pattern, compiled)


@dataclass(slots=True)
class _Group:
    """While scanning a regex: does this group repeat something or offer alternatives?"""

    risky: bool = False


def _refuse_catastrophic(pattern: str) -> None:
    """Refuse a repeated group that contains a quantifier or an alternation: ``(a+)+``, ``(a|a)*``.

    Those are the shapes whose backtracking is exponential in the input length. The check is
    conservative (``(ab|cd)*`` is refused too); the run-time timeout covers the rest.
    """
    stack: list[_Group] = []
    current = _Group()
    i, size = 0, len(pattern)
    while i < size:
        char = pattern[i]
        if char == "\\":
            i += 2
        elif char == "[":
            i = _skip_class(pattern, i)
        elif char == "(":
            stack.append(current)
            current = _Group()
            # "(?:", "(?P<name>", "(?=": the "?" opens a group kind, it is not a quantifier.
            i += 2 if pattern.startswith("?", i + 1) else 1
        elif char == ")":
            inner = current
            current = stack.pop() if stack else _Group()
            repeats, i = _quantifier(pattern, i + 1)
            if repeats is not None and repeats > 1 and inner.risky:
                raise ExpressionError(
                    f"regex {pattern!r}: a repeated group contains a quantifier or '|' "
                    "(like '(a+)+' or '(a|b)*'), which can backtrack exponentially; "
                    "rewrite it without nesting repetition (e.g. 'a+' or '[ab]*')",
                    pattern,
                )
            current.risky = current.risky or inner.risky or repeats is not None
        elif char == "|":
            current.risky = True
            i += 1
        else:
            repeats, after = _quantifier(pattern, i)
            if repeats is not None:
                current.risky = True
                i = after
            else:
                i += 1


def _skip_class(pattern: str, start: int) -> int:
    """Index just after the character class opening at ``start``."""
    i = start + 1
    if pattern.startswith("^", i):
        i += 1
    if pattern.startswith("]", i):
        i += 1
    while i < len(pattern) and pattern[i] != "]":
        i += 2 if pattern[i] == "\\" else 1
    return i + 1


def _quantifier(pattern: str, i: int) -> tuple[int | None, int]:
    """The most repeats a quantifier at ``i`` allows (unbounded: above the cap) and its end.

    ``(None, i)`` when there is no quantifier. Braces that are not ``{n}``, ``{n,}``, ``{,m}``,
    ``{n,m}`` are refused: the regex package reads some of them as fuzzy matching.
    """
    if i >= len(pattern):
        return None, i
    char = pattern[i]
    if char in "*+":
        most = _MAX_REPEAT + 1
        i += 1
    elif char == "?":
        most = 1
        i += 1
    elif char == "{":
        close = pattern.find("}", i)
        body = pattern[i + 1 : close] if close != -1 else ""
        low, comma, high = body.partition(",")
        if close == -1 or not (low.isascii() and high.isascii()):
            raise _bad_brace(pattern)
        if (low and not low.isdigit()) or (high and not high.isdigit()) or not (low or high):
            raise _bad_brace(pattern)
        counts = [int(n) for n in (low, high) if n]
        if any(n > _MAX_REPEAT for n in counts):
            raise ExpressionError(
                f"regex {pattern!r}: repetition counts above {_MAX_REPEAT} are not allowed",
                pattern,
            )
        most = int(high) if high else (int(low) if not comma else _MAX_REPEAT + 1)
        i = close + 1
    else:
        return None, i
    # Lazy ("*?") and possessive ("*+") forms modify the quantifier; they repeat just as much.
    if i < len(pattern) and pattern[i] in "?+":
        i += 1
    return most, i


def _bad_brace(pattern: str) -> ExpressionError:
    return ExpressionError(
        f"regex {pattern!r}: braces must be a repetition like '{{2}}' or '{{1,3}}'; "
        "write '\\{' for a literal brace",
        pattern,
    )


# --- typed values ----------------------------------------------------------------------------


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_array(value: object) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray)


@lru_cache(maxsize=4096)
def _instant(text: str) -> datetime | None:
    """The instant a string names when it is an RFC 3339 timestamp with an offset, else None."""
    # Cheap shape test first: most strings are not timestamps and need no parse attempt.
    if len(text) < 20 or text[4:5] != "-" or text[10:11] not in ("T", "t", " "):
        return None
    try:
        return parse_timestamp(text)
    except ExpressionError:
        return None


def _equal(left: Any, right: Any) -> bool:
    """Typed deep equality, iterative so deeply nested data cannot exhaust the stack."""
    pending = [(left, right)]
    while pending:
        a, b = pending.pop()
        if isinstance(a, bool) or isinstance(b, bool):
            if not (isinstance(a, bool) and isinstance(b, bool) and a is b):
                return False
        elif _is_number(a) or _is_number(b):
            if not (_is_number(a) and _is_number(b) and a == b):
                return False
        elif isinstance(a, str) or isinstance(b, str):
            if not (isinstance(a, str) and isinstance(b, str) and _strings_equal(a, b)):
                return False
        elif a is None or b is None:
            if a is not b:
                return False
        elif isinstance(a, Mapping) or isinstance(b, Mapping):
            if not (isinstance(a, Mapping) and isinstance(b, Mapping)) or a.keys() != b.keys():
                return False
            pending.extend((a[key], b[key]) for key in a)
        elif _is_array(a) and _is_array(b):
            if len(a) != len(b):
                return False
            pending.extend(zip(a, b, strict=True))
        else:
            return False
    return True


def _strings_equal(a: str, b: str) -> bool:
    if a == b:
        return True
    first, second = _instant(a), _instant(b)
    return first is not None and second is not None and first == second


def _order(left: Any, right: Any) -> int | None:
    """-1, 0 or 1 for two values with a common order (numbers; strings; timestamps), else None."""
    if _is_number(left) and _is_number(right):
        # Only floats can be NaN; math.isnan would overflow on a huge int.
        if any(isinstance(n, float) and math.isnan(n) for n in (left, right)):
            return None
        return int(left > right) - int(left < right)
    if isinstance(left, str) and isinstance(right, str):
        first, second = _instant(left), _instant(right)
        if first is not None and second is not None:
            return (first > second) - (first < second)
        return (left > right) - (left < right)
    return None


def _is_type(value: Any, name: str) -> bool:
    checks: dict[str, Callable[[Any], bool]] = {
        "string": lambda v: isinstance(v, str),
        "number": _is_number,
        "integer": lambda v: _is_number(v) and (isinstance(v, int) or float(v).is_integer()),
        "boolean": lambda v: isinstance(v, bool),
        "null": lambda v: v is None,
        "array": _is_array,
        "object": lambda v: isinstance(v, Mapping),
        "timestamp": lambda v: isinstance(v, str) and _instant(v) is not None,
    }
    return checks[name](value)


def _contains(container: Any, item: Any) -> bool:
    if isinstance(container, str):
        return isinstance(item, str) and item in container
    if _is_array(container):
        return any(_equal(member, item) for member in container)
    return False


def _ordered(test: Callable[[int], bool]) -> Callable[[Any, Any], bool]:
    def compare(left: Any, right: Any) -> bool:
        order = _order(left, right)
        return order is not None and test(order)

    return compare


_BINARY: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "equals": _equal,
    "notEquals": lambda a, b: not _equal(a, b),
    "greaterThan": _ordered(lambda o: o > 0),
    "greaterThanOrEquals": _ordered(lambda o: o >= 0),
    "lessThan": _ordered(lambda o: o < 0),
    "lessThanOrEquals": _ordered(lambda o: o <= 0),
    "contains": _contains,
    "startsWith": lambda a, b: isinstance(a, str) and isinstance(b, str) and a.startswith(b),
    "endsWith": lambda a, b: isinstance(a, str) and isinstance(b, str) and a.endswith(b),
    "in": lambda a, b: _is_array(b) and _contains(b, a),
}
# Operators whose operand is configuration, not data: a literal ``value`` only.
_LITERAL_ONLY: Final = ("matches", "isPresent", "isNull", "isType")


# --- compiled conditions ---------------------------------------------------------------------


class _Node:
    def evaluate(self, data: Mapping[str, Any]) -> bool:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class _Binary(_Node):
    variable: CompiledPath
    test: Callable[[Any, Any], bool]
    value: Any
    value_path: CompiledPath | None

    def evaluate(self, data: Mapping[str, Any]) -> bool:
        found, left = resolve(self.variable, data)
        if not found:
            return False
        right = self.value
        if self.value_path is not None:
            found, right = resolve(self.value_path, data)
            if not found:
                return False
        return self.test(left, right)


@dataclass(frozen=True, slots=True)
class _Unary(_Node):
    variable: CompiledPath
    test: Callable[[Any], bool]

    def evaluate(self, data: Mapping[str, Any]) -> bool:
        found, value = resolve(self.variable, data)
        return found and self.test(value)


@dataclass(frozen=True, slots=True)
class _Present(_Node):
    variable: CompiledPath
    expected: bool

    def evaluate(self, data: Mapping[str, Any]) -> bool:
        found, _ = resolve(self.variable, data)
        return found == self.expected


@dataclass(frozen=True, slots=True)
class _All(_Node):
    parts: tuple[_Node, ...]

    def evaluate(self, data: Mapping[str, Any]) -> bool:
        return all(part.evaluate(data) for part in self.parts)


@dataclass(frozen=True, slots=True)
class _Any(_Node):
    parts: tuple[_Node, ...]

    def evaluate(self, data: Mapping[str, Any]) -> bool:
        return any(part.evaluate(data) for part in self.parts)


@dataclass(frozen=True, slots=True)
class _Not(_Node):
    part: _Node

    def evaluate(self, data: Mapping[str, Any]) -> bool:
        return not self.part.evaluate(data)


@dataclass(frozen=True, slots=True)
class CompiledCondition:
    """A checked condition, ready to evaluate against ``{"input", "state", "system"}`` data."""

    condition: Condition
    _root: _Node

    def evaluate(self, data: Mapping[str, Any]) -> bool:
        """True or false; raises only ``ConditionError`` (a regex over its time budget)."""
        return self._root.evaluate(data)


def compile_condition(cond: Condition) -> CompiledCondition:
    """Check and compile a condition model; ``ExpressionError`` names what is wrong."""
    return CompiledCondition(cond, _compile(cond, 1))


def _compile(cond: Condition, depth: int) -> _Node:
    if depth > MAX_DEPTH:
        raise ExpressionError(f"condition nested deeper than {MAX_DEPTH} levels")
    if isinstance(cond, AndCondition):
        return _All(tuple(_compile(part, depth + 1) for part in cond.conditions))
    if isinstance(cond, OrCondition):
        return _Any(tuple(_compile(part, depth + 1) for part in cond.conditions))
    if isinstance(cond, NotCondition):
        return _Not(_compile(cond.condition, depth + 1))
    if isinstance(cond, Comparison):
        return _compile_comparison(cond)
    raise ExpressionError(f"expected a condition, got {type(cond).__name__}")


def _compile_comparison(cond: Comparison) -> _Node:
    op = cond.op
    variable = compile_path(cond.variable)
    has_value = "value" in cond.model_fields_set
    where = f"{op} on {cond.variable!r}"
    if op in _LITERAL_ONLY and cond.value_path is not None:
        raise ExpressionError(f"{where}: takes a literal 'value', not 'valuePath'", cond.variable)
    if op in ("isPresent", "isNull"):
        expected = cond.value if has_value else True
        if not isinstance(expected, bool):
            raise ExpressionError(f"{where}: expected 'value' true or false, got {expected!r}")
        if op == "isPresent":
            return _Present(variable, expected)
        return _Unary(variable, lambda v: (v is None) == expected)
    if op == "isType":
        if cond.value not in TYPE_NAMES:
            raise ExpressionError(
                f"{where}: expected 'value' one of {', '.join(TYPE_NAMES)}, got {cond.value!r}"
            )
        name: str = cond.value
        return _Unary(variable, lambda v: _is_type(v, name))
    if op == "matches":
        if not isinstance(cond.value, str):
            raise ExpressionError(f"{where}: expected 'value' to be a regex string")
        pattern = compile_regex(cond.value)
        return _Unary(variable, lambda v: isinstance(v, str) and pattern.search(v))
    value_path = compile_path(cond.value_path) if cond.value_path is not None else None
    if value_path is None:
        if not has_value:
            raise ExpressionError(f"{where}: expected 'value' or 'valuePath'", cond.variable)
        _check_literal(where, op, cond.value)
    return _Binary(variable, _BINARY[op], cond.value, value_path)


def _check_literal(where: str, op: str, value: Any) -> None:
    """Refuse a literal operand that can never satisfy the operator."""
    if op == "in" and not isinstance(value, list):
        raise ExpressionError(f"{where}: expected 'value' to be an array, got {value!r}")
    if op in ("startsWith", "endsWith") and not isinstance(value, str):
        raise ExpressionError(f"{where}: expected 'value' to be a string, got {value!r}")
    ordering = ("greaterThan", "greaterThanOrEquals", "lessThan", "lessThanOrEquals")
    if op in ordering and not (_is_number(value) or isinstance(value, str)):
        raise ExpressionError(f"{where}: expected 'value' to be a number or string, got {value!r}")
