"""The JSON Schema: generated from the models, committed in two places, used by the samples."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from interpreter.schema import SCHEMA_ID, generate_schema, json_schema, schema_text
from tests.unit.definition_cases import REPO, SAMPLES, VALID


def test_committed_schema_files_equal_the_generated_schema() -> None:
    generated = schema_text()
    assert (REPO / "interpreter" / "schema.json").read_text() == generated, (
        "regenerate: orchestration schema > interpreter/schema.json"
    )
    assert (REPO / "definitions" / "schema.json").read_text() == generated, (
        "regenerate: orchestration schema > definitions/schema.json"
    )
    assert json_schema() == generate_schema()


def test_schema_names_itself() -> None:
    schema = json_schema()
    assert schema["$id"] == SCHEMA_ID
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "Workflow definition"
    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_every_sample_names_the_schema_and_satisfies_it(path: Path) -> None:
    document = json.loads(path.read_text())
    assert document["$schema"] == "./schema.json"
    jsonschema.Draft202012Validator(json_schema()).validate(document)


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_fixtures_satisfy_the_schema(path: Path) -> None:
    jsonschema.Draft202012Validator(json_schema()).validate(json.loads(path.read_text()))


def test_schema_rejects_an_unknown_state_type() -> None:
    document = json.loads(SAMPLES[0].read_text())
    first = next(iter(document["states"]))
    document["states"][first]["type"] = "taks"
    assert not jsonschema.Draft202012Validator(json_schema()).is_valid(document)
