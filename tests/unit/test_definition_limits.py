"""Bad definitions that used to validate and then crash: values out of range, non-finite numbers,
lone surrogates, hints over huge names, and ``null`` literals lost by pinning."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from interpreter import definition_hash, load_definition, read_definition
from interpreter.engine import Engine
from interpreter.limits import MAX_WAIT_SECONDS
from interpreter.problems import CODES, Problem, did_you_mean
from interpreter.simulate import Mocks, simulate
from interpreter.validate import validate
from tests.unit.definition_cases import BUILTIN_ACTIVITIES, SAMPLES, VALID, WARNINGS, doc

S = {"type": "succeed"}
TOO_LONG = 1e14  # more than timedelta holds (about 8.6e13 s)


def problems_of(text: str | bytes) -> list[Problem]:
    result = read_definition(text)
    if result.definition is None:
        return result.problems
    return validate(result.definition, activities=BUILTIN_ACTIVITIES)


def errors_of(text: str | bytes) -> list[tuple[str, str]]:
    return [(p.code, p.pointer) for p in problems_of(text) if p.is_error]


def wait(**fields: Any) -> dict[str, Any]:
    return {"type": "wait", "next": "Done", **fields}


# --- values the engine, the store or Prefect cannot represent --------------------------------


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (wait(seconds=TOO_LONG), ("invalid-value", "/states/W/seconds")),
        (wait(seconds=MAX_WAIT_SECONDS + 1), ("invalid-value", "/states/W/seconds")),
        (wait(duration="P999999999D"), ("invalid-duration", "/states/W/duration")),
        (wait(duration="PT99999999999999H"), ("invalid-duration", "/states/W/duration")),
        (
            wait(event={"name": "e", "timeoutSeconds": TOO_LONG}),
            ("invalid-value", "/states/W/event/timeoutSeconds"),
        ),
        (
            wait(timestamp="9999-12-31T23:59:59-23:59"),
            ("invalid-timestamp", "/states/W/timestamp"),
        ),
        (
            wait(timestamp="0001-01-01T00:00:00+01:00"),
            ("invalid-timestamp", "/states/W/timestamp"),
        ),
        (
            {"type": "task", "activity": "notify.send", "timeoutSeconds": TOO_LONG, "next": "Done"},
            ("invalid-value", "/states/W/timeoutSeconds"),
        ),
    ],
    ids=[
        "seconds-1e14",
        "seconds-over-max",
        "duration-days",
        "duration-hours",
        "event-timeout",
        "timestamp-offset-past-9999",
        "timestamp-offset-before-year-1",
        "task-timeout",
    ],
)
def test_a_value_the_engine_cannot_represent_is_refused(
    state: dict[str, Any], expected: tuple[str, str]
) -> None:
    text = doc({"W": state, "Done": S}, "W")
    assert errors_of(text) == [expected]


def test_a_default_task_timeout_over_the_maximum_is_refused() -> None:
    text = doc(
        {"W": {"type": "task", "activity": "notify.send", "end": True}},
        "W",
        configuration={"defaultTimeoutSeconds": TOO_LONG},
    )
    assert errors_of(text) == [("invalid-value", "/configuration/defaultTimeoutSeconds")]


@pytest.mark.parametrize(
    "state",
    [
        wait(seconds=MAX_WAIT_SECONDS),
        wait(duration=f"PT{int(MAX_WAIT_SECONDS)}S"),
        wait(duration=f"P{int(MAX_WAIT_SECONDS) // 86_400}D"),
        wait(event={"name": "e", "timeoutSeconds": MAX_WAIT_SECONDS, "timeoutNext": "Done"}),
        wait(timestamp="9999-12-31T00:00:00+23:59"),
    ],
    ids=["seconds", "duration-seconds", "duration-days", "event-timeout", "timestamp"],
)
def test_the_documented_maximum_validates_and_runs(state: dict[str, Any]) -> None:
    text = doc({"W": state, "Done": S}, "W")
    assert errors_of(text) == []
    definition = load_definition(text)
    Engine(definition, definition_hash=definition_hash(definition))  # compiles every wait
    result = simulate(definition, Mocks(timeouts=["W"]))
    assert result.status == "succeeded", result.message


def test_a_timestamp_read_at_run_time_out_of_range_fails_the_run_clearly() -> None:
    text = doc({"W": wait(timestamp="$.input.at"), "Done": S}, "W")
    definition = load_definition(text)
    result = simulate(definition, Mocks(input={"at": "9999-12-31T23:59:59-23:59"}))
    assert result.status == "failed"
    assert result.cause is not None and "out of range" in result.cause


def test_the_maximum_wait_is_documented() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert f"{int(MAX_WAIT_SECONDS):,}" in readme
    assert timedelta(seconds=MAX_WAIT_SECONDS).days == 3650


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        ('{"type": "wait", "seconds": 1e400, "next": "Done"}', "/states/W/seconds"),
        ('{"type": "wait", "seconds": -1e400, "next": "Done"}', "/states/W/seconds"),
        (
            '{"type": "task", "activity": "notify.send", "input": {"x": [1, 1E999]}, "end": true}',
            "/states/W/input/x/1",
        ),
    ],
    ids=["seconds", "negative", "nested-in-input"],
)
def test_a_number_beyond_a_double_is_refused_where_it_is(raw: str, where: str) -> None:
    done = '"Done": {"type": "succeed"}'
    text = f'{{"name": "t", "version": "1", "startAt": "W", "states": {{"W": {raw}, {done}}}}}'
    problems = problems_of(text)
    assert [(p.code, p.pointer) for p in problems] == [("invalid-number", where)]
    assert "finite" in problems[0].message


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_constants_are_refused(constant: str) -> None:
    text = doc({"W": wait(seconds=0), "Done": S}, "W").replace(
        '"seconds": 0', f'"seconds": {constant}'
    )
    assert [p.code for p in problems_of(text)] == ["invalid-json"]


# --- lone surrogates --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("escaped", "where"),
    [
        ('"name": "t\\ud800"', "/name"),
        ('"comment": "\\udfff"', "/states/A/comment"),
        ('"\\ud83d": 1', "/states/A/output/\ud83d"),
    ],
    ids=["value", "nested-value", "member-name"],
)
def test_a_lone_surrogate_is_refused_with_its_pointer(escaped: str, where: str) -> None:
    base = {"name": "t", "version": "1", "startAt": "A"}
    text = json.dumps({**base, "states": {"A": {"type": "succeed", "output": {}}}})
    if escaped.startswith('"name"'):
        text = text.replace('"name": "t"', escaped)
    elif escaped.startswith('"comment"'):
        text = text.replace('"output": {}', escaped)
    else:
        text = text.replace('"output": {}', '"output": {' + escaped + "}")
    problems = problems_of(text)
    assert [(p.code, p.pointer) for p in problems] == [
        ("invalid-string", where.replace("\ud83d", "\\ud83d"))
    ]
    assert "surrogate" in problems[0].message


def test_a_surrogate_pair_is_ordinary_text_and_hashes() -> None:
    text = doc({"A": {"type": "succeed", "comment": "\\ud83d\\ude00"}}).replace("\\\\", "\\")
    definition = load_definition(text)
    assert definition.states["A"].comment == "\U0001f600"
    assert len(definition_hash(definition)) == 64


# --- did-you-mean stays cheap -----------------------------------------------------------------


def test_no_hint_is_computed_for_names_longer_than_a_typo_could_be() -> None:
    long = "S" * 1_900
    assert did_you_mean(long + "x", [long]) is None
    assert did_you_mean("Finsh", ["Finish", long]) == "did you mean 'Finish'?"


def test_a_huge_definition_of_unknown_targets_still_reports_each_and_stays_short() -> None:
    names = [f"{i:04d}" + "n" * 1_900 for i in range(250)]
    states = {n: {"type": "task", "activity": "notify.send", "next": n + "x"} for n in names}
    text = doc(states, names[0])
    assert len(text.encode()) < 1_000_000
    problems = [p for p in problems_of(text) if p.code == "unknown-target"]
    assert len(problems) == 250
    # the list of what exists is bounded, not 250 names of 1,900 characters in every message
    assert max(len(p.message) for p in problems) < 10_000


# --- codes are documented ---------------------------------------------------------------------


def test_the_new_codes_are_documented() -> None:
    for code in ("invalid-number", "invalid-string", "invalid-input-schema"):
        assert code in CODES


# --- a pinned copy means what the file says ---------------------------------------------------


def _with_null_literals(path: Path) -> list[str]:
    """The file's text, and the same with a null literal compared in a choice."""
    text = path.read_text()
    extra = doc(
        {
            "C": {
                "type": "choice",
                "choices": [
                    {
                        "condition": {"op": "equals", "variable": "$.input.x", "value": None},
                        "next": "D",
                    },
                    {
                        "condition": {"op": "notEquals", "variable": "$.input.y", "value": None},
                        "next": "D",
                    },
                ],
                "default": "D",
            },
            "D": {"type": "succeed", "output": {"n": None, "l": {"$literal": None}}},
        },
        "C",
    )
    return [text, extra]


@pytest.mark.parametrize("path", VALID + WARNINGS + SAMPLES, ids=lambda p: p.name)
def test_the_pinned_text_loads_back_to_the_same_definition(path: Path) -> None:
    from flows.definitions import pinned_text

    for text in _with_null_literals(path):
        definition = load_definition(text)
        again = load_definition(pinned_text(definition))
        assert again == definition
        assert again.model_dump(exclude_unset=True) == definition.model_dump(exclude_unset=True)
        assert definition_hash(again) == definition_hash(definition)
        assert validate(again) == validate(definition)


def test_a_null_literal_survives_pinning() -> None:
    from flows.definitions import pinned_text

    text = _with_null_literals(VALID[0])[1]
    pinned = json.loads(pinned_text(load_definition(text)))
    first = pinned["states"]["C"]["choices"][0]["condition"]
    assert "value" in first and first["value"] is None
    assert validate(load_definition(pinned_text(load_definition(text)))) == []


# --- the commands that crashed ----------------------------------------------------------------


def _cli() -> Any:
    import typer

    from cli.authoring import register as authoring
    from cli.testing import register as testing

    app = typer.Typer()
    authoring(app)
    testing(app)
    return app


SURROGATE = '{"name": "t", "version": "1", "startAt": "A", "states": {"A": {"type": "succeed", "output": {"x": "\\ud800"}}}}'  # noqa: E501


@pytest.mark.parametrize("command", ["validate", "explain", "test"])
def test_the_commands_report_a_lone_surrogate_instead_of_crashing(
    command: str, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    path = tmp_path / "wf.json"
    path.write_text(SURROGATE)
    mocks = tmp_path / "mocks.json"
    mocks.write_text("{}")
    extra = ["--mocks", str(mocks)] if command == "test" else []
    result = CliRunner().invoke(_cli(), [command, str(path), *extra])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "/states/A/output/x" in result.output or "lone surrogate" in result.output


def test_orchestration_test_refuses_a_wait_it_cannot_represent(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    path = tmp_path / "wf.json"
    path.write_text(doc({"W": wait(seconds=TOO_LONG), "Done": S}, "W"))
    mocks = tmp_path / "mocks.json"
    mocks.write_text("{}")
    result = CliRunner().invoke(_cli(), ["test", str(path), "--mocks", str(mocks)])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "/states/W/seconds" in result.output


# --- paths: plain ones skip the parser, the others are bounded --------------------------------


def test_paths_beyond_plain_names_and_indices_are_bounded() -> None:
    from interpreter.limits import MAX_PARSED_PATHS

    def text(count: int) -> str:
        template = {f"k{i}": f"$['input']['a{i}'][*]" for i in range(count)}
        template["plain"] = "$.input.a[0].b"
        return doc(
            {"A": {"type": "task", "activity": "notify.send", "input": template, "end": True}}
        )

    assert errors_of(text(MAX_PARSED_PATHS)) == []
    last = f"/states/A/input/k{MAX_PARSED_PATHS}"
    assert errors_of(text(MAX_PARSED_PATHS + 5)) == [("too-many-paths", last)]


@pytest.mark.parametrize(
    "expr",
    ["$.input", "$.input.a[0].b", "$.state.x_1[12][0]", "$.system.runId", "$.input.where"],
)
def test_a_plain_path_compiles_to_the_steps_the_parser_gives(expr: str) -> None:
    from jsonpath_ng.parser import parse

    from interpreter.paths import _flatten, _simple_steps

    simple = _simple_steps(expr)
    if "where" in expr:
        assert simple is None  # a filter keyword: the parser refuses it with its reason
    else:
        assert simple == _flatten(expr, parse(expr))


def test_different_regexes_are_bounded_and_a_repeated_one_counts_once() -> None:
    from interpreter.limits import MAX_REGEXES

    def text(patterns: list[str]) -> str:
        choices = [
            {"condition": {"op": "matches", "variable": "$.input.s", "value": p}, "next": "D"}
            for p in patterns
        ]
        states = {"C": {"type": "choice", "choices": choices, "default": "D"}, "D": S}
        return doc(states, "C")

    same = ["^SN-[0-9]{6}$"] * (MAX_REGEXES + 10)
    assert errors_of(text(same)) == []
    different = [f"^SN-{i}$" for i in range(MAX_REGEXES + 10)]
    where = f"/states/C/choices/{MAX_REGEXES}/condition/value"
    assert errors_of(text(different)) == [("too-many-regexes", where)]


def test_a_repeated_bracket_path_counts_once() -> None:
    from interpreter.limits import MAX_PARSED_PATHS

    template = {f"k{i}": "$['input']['a'][*]" for i in range(MAX_PARSED_PATHS + 10)}
    task = {"type": "task", "activity": "notify.send", "input": template, "end": True}
    assert errors_of(doc({"A": task})) == []


def test_a_raw_lone_surrogate_in_text_given_as_str_is_reported_not_raised() -> None:
    text = (
        '{"name": "t\ud800", "version": "1", "startAt": "A", "states": {"A": {"type": "succeed"}}}'
    )
    assert errors_of(text) == [("invalid-string", "/name")]
