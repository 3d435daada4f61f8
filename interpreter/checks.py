"""Checks of what a state contains: paths, templates, conditions, waits, activities, retry policies.

``interpreter.validate`` walks the states and their graph and calls these for the contents. Every
check appends ``Problem`` values to a ``Report`` and never raises: validation reports all it finds.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

from interpreter.conditions import compile_condition, compile_regex
from interpreter.durations import parse_duration, parse_timestamp
from interpreter.errors import ExpressionError
from interpreter.limits import MAX_EXPRESSION_LENGTH, MAX_PARSED_PATHS, MAX_REGEXES
from interpreter.models import (
    TYPE_NAMES,
    CatchRule,
    Comparison,
    Condition,
    NotCondition,
    RetryPolicy,
    WaitState,
)
from interpreter.paths import assign, compile_path, is_path, is_plain_path
from interpreter.problems import Hints, Problem, Severity, pointer
from interpreter.retry import WILDCARDS, matches_error

__all__ = [
    "Report",
    "check_activity",
    "check_catch",
    "check_condition",
    "check_path",
    "check_result_path",
    "check_retry",
    "check_template",
    "check_wait",
]

_SCOPES = ("input", "state", "system")
_FIRST_SEGMENT = re.compile(r"^\$\.([A-Za-z_][A-Za-z0-9_]*)")
_ORDERED = ("greaterThan", "greaterThanOrEquals", "lessThan", "lessThanOrEquals")
_STRING_VALUE = ("startsWith", "endsWith", "matches")
_FLAG_VALUE = ("isPresent", "isNull")


class Report:
    """The problems found so far, in the order found, and the hints' shared budget."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.hint = Hints()
        # Distinct paths that needed jsonpath-ng's parser, and distinct regexes: each costs about
        # half a millisecond to a millisecond; True for those within the budget (compiled).
        self.parsed: dict[str, bool] = {}
        self.regexes: dict[str, bool] = {}

    def over_budget(self) -> bool:
        """True once too many paths or regexes were met: the rest are not compiled."""
        return len(self.parsed) > MAX_PARSED_PATHS or len(self.regexes) > MAX_REGEXES

    def over_regex_budget(self, pattern: str, where: str) -> bool:
        """Count a distinct regex; past ``MAX_REGEXES`` it is not compiled (reported once)."""
        message = (
            f"more than {MAX_REGEXES:,} different regular expressions; the limit is {MAX_REGEXES:,}"
        )
        return self._over(self.regexes, pattern, MAX_REGEXES, "too-many-regexes", where, message)

    def over_parse_budget(self, expr: str, where: str) -> bool:
        """Count a distinct path the parser must read; past ``MAX_PARSED_PATHS`` it is not
        compiled (reported once): validation stays fast whatever the document holds."""
        if is_plain_path(expr):
            return False
        message = (
            f"more than {MAX_PARSED_PATHS:,} paths beyond plain names and indices (such as "
            f"$['a'], [*], slices or lists); the limit is {MAX_PARSED_PATHS:,}: write plain "
            "paths like $.input.a[0].b"
        )
        return self._over(self.parsed, expr, MAX_PARSED_PATHS, "too-many-paths", where, message)

    def _over(
        self, seen: dict[str, bool], key: str, limit: int, code: str, where: str, message: str
    ) -> bool:
        within = seen.get(key)
        if within is None:
            within = len(seen) < limit
            if len(seen) == limit:
                self.add(code, where, message)
            seen[key] = within
        return not within

    def add(
        self,
        code: str,
        where: str,
        message: str,
        *,
        hint: str | None = None,
        severity: Severity = "error",
    ) -> None:
        self.problems.append(Problem(code, where, message, severity, hint))

    def warn(self, code: str, where: str, message: str, *, hint: str | None = None) -> None:
        self.add(code, where, message, hint=hint, severity="warning")


def _too_long(report: Report, expr: str, where: str) -> bool:
    if len(expr) <= MAX_EXPRESSION_LENGTH:
        return False
    report.add(
        "expression-too-long",
        where,
        f"the expression is {len(expr):,} characters; the limit is {MAX_EXPRESSION_LENGTH:,}",
    )
    return True


def check_path(report: Report, expr: str, where: str) -> None:
    """A JSONPath read expression (``$.input...``, ``$.state...``, ``$.system...``)."""
    if _too_long(report, expr, where) or report.over_parse_budget(expr, where):
        return
    try:
        compile_path(expr)
    except ExpressionError as exc:
        first = _FIRST_SEGMENT.match(expr)
        hint = None
        if first and first.group(1) not in _SCOPES:
            hint = report.hint(first.group(1), _SCOPES)
        report.add("invalid-jsonpath", where, str(exc), hint=hint)


def check_result_path(report: Report, expr: str, where: str) -> None:
    """A path the engine writes to: ``$.state.<field>[.<field>...]``."""
    if _too_long(report, expr, where) or report.over_parse_budget(expr, where):
        return
    try:
        assign({}, expr, None)
    except ExpressionError as exc:
        report.add("invalid-result-path", where, str(exc))


def check_template(report: Report, template: Any, where: str) -> None:
    """Every path in an input/output template, with ``$literal`` and ``$path`` forms checked."""
    pending: list[tuple[Any, str]] = [(template, where)]
    while pending:
        node, at = pending.pop()
        if isinstance(node, str):
            if is_path(node):
                check_path(report, node, at)
        elif isinstance(node, list):
            pending.extend((item, at + pointer(i)) for i, item in reversed(list(enumerate(node))))
        elif isinstance(node, dict):
            if "$literal" in node:
                if len(node) != 1:
                    others = sorted(str(k) for k in node if k != "$literal")
                    report.add(
                        "invalid-template",
                        at,
                        f"a $literal object takes no other members; found also {others}",
                    )
            elif "$path" in node:
                extra = sorted(str(k) for k in node if k not in ("$path", "$default"))
                if extra:
                    report.add(
                        "invalid-template",
                        at,
                        f"a $path object takes only $path and $default; found also {extra}",
                    )
                path = node["$path"]
                if isinstance(path, str) and is_path(path):
                    check_path(report, path, at + pointer("$path"))
                else:
                    report.add(
                        "invalid-jsonpath",
                        at + pointer("$path"),
                        f"$path must be a path rooted at '$' such as '$.input.id'; got {path!r}",
                    )
            else:
                items = list(node.items())
                pending.extend((value, at + pointer(key)) for key, value in reversed(items))


def check_activity(
    report: Report, name: str, where: str, activities: Collection[str] | None
) -> None:
    if activities is None or name in activities:
        return
    known = sorted(activities)
    listed = ", ".join(known) if len(known) <= 25 else f"{len(known)} registered activities"
    report.add(
        "unknown-activity",
        where,
        f"unknown activity {name!r}; expected one of: {listed}",
        hint=report.hint(name, known),
    )


def check_catch(report: Report, catch: list[CatchRule], where: str) -> None:
    catch_all_at: int | None = None
    for i, rule in enumerate(catch):
        at = where + pointer("catch", i)
        if catch_all_at is not None:
            report.warn(
                "unreachable-catch",
                at,
                f"catch rule {catch_all_at} matches every error, so this rule is never used",
                hint="put the catch-all rule ('*' or 'States.ALL') last",
            )
        elif WILDCARDS.intersection(rule.errors):
            catch_all_at = i
        if rule.error_path is not None:
            check_result_path(report, rule.error_path, at + pointer("errorPath"))


def check_retry(report: Report, policy: RetryPolicy, where: str) -> None:
    """Settings of a retry policy that contradict each other (warnings: the policy still works)."""
    cap, interval = policy.max_interval_seconds, policy.interval_seconds
    if cap is not None and cap < interval:
        report.warn(
            "max-interval-below-interval",
            where + pointer("maxIntervalSeconds"),
            f"maxIntervalSeconds ({cap:g}) is lower than intervalSeconds ({interval:g}): every "
            f"delay is capped at {cap:g}s from the first retry on, so backoffRate has no effect",
            hint="raise maxIntervalSeconds or lower intervalSeconds",
        )
    for i, name in enumerate(policy.retry_on or []):
        if not matches_error(policy.do_not_retry_on, name):
            continue
        wildcard = sorted(WILDCARDS.intersection(policy.do_not_retry_on))
        if wildcard:
            why = f"doNotRetryOn holds {wildcard[0]!r}"
            hint = f"{wildcard[0]!r} in doNotRetryOn turns every retry off; name the errors instead"
        else:
            why = f"{name!r} is also in doNotRetryOn"
            hint = f"remove {name!r} from retryOn or from doNotRetryOn"
        report.warn(
            "retry-on-and-do-not-retry-on",
            where + pointer("retryOn", i),
            f"{why}, which wins over retryOn: {name!r} is never retried",
            hint=hint,
        )


def check_wait(report: Report, state: WaitState, where: str) -> None:
    given = [
        name
        for name, value in (
            ("seconds", state.seconds),
            ("duration", state.duration),
            ("timestamp", state.timestamp),
            ("event", state.event),
        )
        if value is not None
    ]
    if not given:
        report.add(
            "empty-wait",
            where,
            "the wait has nothing to wait for; expected one of seconds, duration, timestamp, event",
        )
    elif len(given) > 1:
        report.add(
            "ambiguous-wait",
            where,
            f"expected exactly one of seconds, duration, timestamp, event; got {', '.join(given)}",
        )
    if state.duration is not None:
        try:
            parse_duration(state.duration)
        except ExpressionError as exc:
            report.add("invalid-duration", where + pointer("duration"), str(exc))
    if state.timestamp is not None:
        if is_path(state.timestamp):
            check_path(report, state.timestamp, where + pointer("timestamp"))
        else:
            try:
                parse_timestamp(state.timestamp)
            except ExpressionError as exc:
                report.add("invalid-timestamp", where + pointer("timestamp"), str(exc))
    event = state.event
    if event is None:
        return
    if event.timeout_seconds is None:
        if event.timeout_next is not None:
            report.warn(
                "timeout-next-without-timeout",
                where + pointer("event", "timeoutNext"),
                "timeoutNext is never taken: the event wait has no timeoutSeconds",
            )
        else:
            report.warn(
                "wait-without-timeout",
                where + pointer("event"),
                f"the wait for {event.name!r} has no timeoutSeconds and may wait forever",
            )
    if event.result_path is not None:
        check_result_path(report, event.result_path, where + pointer("event", "resultPath"))


def _check_comparison(report: Report, cond: Comparison, at: str) -> None:
    check_path(report, cond.variable, at + pointer("variable"))
    if cond.value_path is not None:
        check_path(report, cond.value_path, at + pointer("valuePath"))
    has_value = "value" in cond.model_fields_set
    value = cond.value
    where = at + pointer("value")
    if cond.op in _FLAG_VALUE:
        if has_value and not isinstance(value, bool):
            report.add("invalid-operand", where, f"{cond.op} takes true or false; got {value!r}")
        return
    if not has_value and cond.value_path is None:
        report.add("invalid-operand", at, f"{cond.op} needs a value or a valuePath; got neither")
        return
    if not has_value:
        return
    if cond.op == "isType":
        if value not in TYPE_NAMES:
            report.add(
                "invalid-operand",
                where,
                f"isType takes one of {', '.join(TYPE_NAMES)}; got {value!r}",
                hint=report.hint(str(value), TYPE_NAMES),
            )
    elif cond.op == "in" and not isinstance(value, list):
        report.add("invalid-operand", where, f"in takes an array of values; got {value!r}")
    elif cond.op in _STRING_VALUE and not isinstance(value, str):
        report.add("invalid-operand", where, f"{cond.op} takes a string; got {value!r}")
    elif cond.op in _ORDERED and (
        isinstance(value, bool) or not isinstance(value, int | float | str)
    ):
        report.add(
            "invalid-operand", where, f"{cond.op} takes a number or a timestamp; got {value!r}"
        )
    elif cond.op == "matches":
        if report.over_regex_budget(value, where):
            return
        try:
            compile_regex(value)
        except ExpressionError as exc:
            report.add("invalid-regex", where, str(exc))


def check_condition(report: Report, condition: Condition, where: str) -> None:
    """Every comparison in a condition tree; then the compiler, as a net for anything missed."""
    before = len(report.problems)
    pending: list[tuple[Condition, str]] = [(condition, where)]
    while pending:
        cond, at = pending.pop()
        if isinstance(cond, Comparison):
            _check_comparison(report, cond, at)
        elif isinstance(cond, NotCondition):
            pending.append((cond.condition, at + pointer("condition")))
        else:
            pending.extend(
                (c, at + pointer("conditions", i))
                for i, c in reversed(list(enumerate(cond.conditions)))
            )
    if len(report.problems) > before or report.over_budget():
        return
    try:
        compile_condition(condition)
    except ExpressionError as exc:
        report.add("invalid-condition", where, str(exc))
