"""The definition's ``input`` JSON Schema: checked by ``validate``, enforced on a run's input
(``check_run_input``), and by ``orchestration run`` before anything starts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from interpreter import load_definition, read_definition
from interpreter.problems import Problem
from interpreter.run_input import MAX_INPUT_PROBLEMS, check_input_schema, check_run_input
from interpreter.validate import validate
from tests.unit.definition_cases import SAMPLES

DONE = {"Done": {"type": "succeed"}}


def definition_text(schema: Any) -> str:
    return json.dumps(
        {"name": "t", "version": "1", "input": schema, "startAt": "Done", "states": DONE}
    )


def problems_of(schema: Any) -> list[tuple[str, str]]:
    result = read_definition(definition_text(schema))
    assert result.definition is not None, result.problems
    return [(p.code, p.pointer) for p in validate(result.definition)]


# --- the schema itself ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": "objekt"}, [("invalid-input-schema", "/input/type")]),
        (
            {"type": "object", "properties": {"n": {"minimum": "three"}}},
            [("invalid-input-schema", "/input/properties/n/minimum")],
        ),
        (
            {"type": "object", "required": "deviceId"},
            [("invalid-input-schema", "/input/required")],
        ),
        (
            {"$schema": "https://example.com/my-draft", "type": "object"},
            [("invalid-input-schema", "/input/$schema")],
        ),
        (
            {"properties": {"a": {"$ref": "https://example.com/a.json"}}},
            [("invalid-input-schema", "/input/properties/a/$ref")],
        ),
        (
            {"properties": {"a": {"$ref": "#/$defs/missing"}}},
            [("invalid-input-schema", "/input/properties/a/$ref")],
        ),
        (
            {"properties": {"a": {"type": "string", "pattern": "^(a+)+$"}}},
            [("invalid-input-schema", "/input/properties/a/pattern")],
        ),
        (
            {"patternProperties": {"(x*)*": {"type": "string"}}},
            [("invalid-input-schema", "/input/patternProperties/(x*)*")],
        ),
        (
            {"properties": {"a": {"pattern": "("}}},
            [("invalid-input-schema", "/input/properties/a/pattern")],
        ),
    ],
    ids=[
        "unknown-type",
        "minimum-not-a-number",
        "required-not-a-list",
        "unknown-draft",
        "remote-ref",
        "dangling-ref",
        "catastrophic-pattern",
        "catastrophic-pattern-property",
        "pattern-does-not-compile",
    ],
)
def test_an_input_schema_that_is_not_a_valid_json_schema_is_refused(
    schema: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    assert problems_of(schema) == expected


@pytest.mark.parametrize(
    "schema",
    [
        {},
        {
            "type": "object",
            "required": ["deviceId"],
            "properties": {"deviceId": {"type": "string"}},
        },
        {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"},
        {"$defs": {"id": {"type": "string"}}, "properties": {"a": {"$ref": "#/$defs/id"}}},
        {"properties": {"a": {"type": "string", "pattern": "^SN-[0-9]{6}$"}}},
    ],
    ids=["empty", "object", "draft-07", "local-ref", "simple-pattern"],
)
def test_a_valid_input_schema_draws_no_problem(schema: dict[str, Any]) -> None:
    assert problems_of(schema) == []


def test_the_samples_input_schemas_are_valid() -> None:
    for path in SAMPLES:
        schema = json.loads(path.read_text()).get("input")
        if schema is not None:
            assert check_input_schema(schema) == [], path.name


def test_a_schema_with_many_errors_reports_a_bounded_number() -> None:
    schema = {"properties": {f"p{i}": {"type": "nope"} for i in range(100)}}
    assert len(check_input_schema(schema)) == MAX_INPUT_PROBLEMS


# --- a run's input ----------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "required": ["deviceId"],
    "properties": {
        "deviceId": {"type": "string", "minLength": 1},
        "retries": {"type": "integer", "maximum": 5},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "additionalProperties": False,
}


def run_problems(run_input: Any) -> list[Problem]:
    return check_run_input(load_definition(definition_text(SCHEMA)), run_input)


def test_an_input_that_satisfies_the_schema_has_no_problem() -> None:
    assert run_problems({"deviceId": "dev-1", "retries": 2, "tags": ["a"]}) == []


def test_a_definition_without_an_input_schema_accepts_any_input() -> None:
    definition = load_definition(
        json.dumps({"name": "t", "version": "1", "startAt": "Done", "states": DONE})
    )
    assert check_run_input(definition, {"anything": [1, None]}) == []


@pytest.mark.parametrize(
    ("run_input", "where", "words"),
    [
        ({}, "", "'deviceId' is a required property"),
        ({"deviceId": 7}, "/deviceId", 'expected type "string"; got number'),
        ({"deviceId": "d", "retries": 9}, "/retries", "does not satisfy maximum: 5 (got number)"),
        ({"deviceId": "d", "tags": ["a", 3]}, "/tags/1", 'expected type "string"; got number'),
        (
            {"deviceId": "d", "colour": "red"},
            "",
            "holds members the schema does not allow (additionalProperties: false)",
        ),
        ([], "", 'expected type "object"; got array'),
    ],
    ids=["missing", "wrong-type", "over-maximum", "nested-item", "extra-member", "not-an-object"],
)
def test_an_input_that_breaks_the_schema_names_the_pointer(
    run_input: Any, where: str, words: str
) -> None:
    [problem] = run_problems(run_input)
    assert (problem.code, problem.pointer) == ("invalid-run-input", where)
    assert words in problem.message
    assert "input schema /" in problem.message


def test_a_problem_never_quotes_the_inputs_values() -> None:
    secret = "s3cr3t-value"
    problems = run_problems({"deviceId": [secret], "retries": secret, secret: 1})
    assert problems
    assert all(secret not in p.message for p in problems)


def test_every_problem_of_an_input_is_reported_in_pointer_order() -> None:
    problems = run_problems({"deviceId": 1, "retries": "x"})
    assert [p.pointer for p in problems] == ["/deviceId", "/retries"]


# --- orchestration run ------------------------------------------------------------------------


def _app() -> typer.Typer:
    from cli.running import register

    app = typer.Typer()
    register(app)
    return app


def test_orchestration_run_refuses_an_input_that_breaks_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "wf.json"
    path.write_text(definition_text(SCHEMA))
    result = CliRunner().invoke(_app(), ["run", str(path), "--input", '{"deviceId": 7}'])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "/deviceId" in lines[0] and 'expected type "string"; got number' in lines[0]


def test_orchestration_test_refuses_mocked_input_that_breaks_the_schema(tmp_path: Path) -> None:
    from cli.testing import register

    app = typer.Typer()
    register(app)

    @app.command("other")
    def other() -> None:  # a second command keeps typer from collapsing the app into one command
        """Unused."""

    path = tmp_path / "wf.json"
    path.write_text(definition_text(SCHEMA))
    mocks = tmp_path / "mocks.json"
    mocks.write_text(json.dumps({"input": {"deviceId": "d", "retries": 9}}))
    result = CliRunner().invoke(app, ["test", str(path), "--mocks", str(mocks)])
    assert result.exit_code == 1, result.output
    assert "/retries" in result.output and "does not satisfy maximum: 5" in result.output
    mocks.write_text(json.dumps({"input": {"deviceId": "d", "retries": 2}}))
    assert CliRunner().invoke(app, ["test", str(path), "--mocks", str(mocks)]).exit_code == 0


def test_a_problem_at_a_member_named_with_a_lone_surrogate_is_printable() -> None:
    schema = {"type": "object", "additionalProperties": {"type": "string"}}
    definition = load_definition(definition_text(schema))
    [problem] = check_run_input(definition, {"\ud800": 1})
    assert problem.pointer == "/\\ud800"
    str(problem).encode("utf-8")
