"""The JSON Schema of the definition language, generated from the models and shipped as a file.

``generate_schema()`` builds it from ``WorkflowDefinition``; ``json_schema()`` returns the copy
shipped in the package (``interpreter/schema.json``, read with ``importlib.resources``). A test
keeps both files (that one and ``definitions/schema.json``, which the samples name in ``$schema``)
equal to the generated schema; regenerate with ``orchestration schema``.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from interpreter.models import WorkflowDefinition

__all__ = ["SCHEMA_ID", "generate_schema", "json_schema", "schema_text"]

SCHEMA_ID = "urn:device-orchestration:workflow-definition"


def generate_schema() -> dict[str, Any]:
    """The schema as the models describe it now."""
    schema = WorkflowDefinition.model_json_schema(by_alias=True, mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
        "title": "Workflow definition",
        "description": "A JSON-configurable device workflow (states, transitions, compensations).",
    }


def schema_text(schema: dict[str, Any] | None = None) -> str:
    """The schema as the committed files hold it: indented, keys in model order, final newline."""
    return json.dumps(generate_schema() if schema is None else schema, indent=2) + "\n"


def json_schema() -> dict[str, Any]:
    """The schema shipped with the package."""
    text = resources.files("interpreter").joinpath("schema.json").read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


if __name__ == "__main__":
    import sys

    sys.stdout.write(schema_text())
