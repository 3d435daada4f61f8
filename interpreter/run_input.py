"""The definition's ``input`` JSON Schema: checked as a schema when validating, enforced on a run.

``check_input_schema`` is part of ``validate``: the schema must be valid under the draft its
``$schema`` names (2020-12 when it names none; an unknown draft is refused), checked with
``jsonschema``'s own meta-schemas, not by hand. Two things that pass the meta-schema but fail a run
later are refused too: a ``$ref`` outside the schema (nothing is ever fetched, so it could never
resolve) or to a pointer that names nothing, and a ``pattern`` or ``patternProperties`` regex the
condition compiler refuses (too long, or a repeated group with a quantifier: catastrophic
backtracking on a hostile input).

``check_run_input`` is what every entry that creates a run calls (the API, ``orchestration run``,
the ingress router): the problems of the run's input against the schema, each with a JSON pointer
into the input, at most ``MAX_INPUT_PROBLEMS``, each saying what the schema expects without quoting
the input's values. ``format`` is an annotation, as the 2020-12 draft says: not asserted.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any, Final
from urllib.parse import unquote

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from referencing.exceptions import Unresolvable

from interpreter.conditions import compile_regex
from interpreter.errors import ExpressionError
from interpreter.models import WorkflowDefinition
from interpreter.problems import Problem, pointer

__all__ = ["MAX_INPUT_PROBLEMS", "check_input_schema", "check_run_input"]

#: Most problems reported for one schema or one run input (the first ones, in document order).
MAX_INPUT_PROBLEMS: Final = 20

_UNKNOWN = object()
_MESSAGE_LENGTH = 200


def _validator_class(schema: dict[str, Any]) -> type[Validator] | None:
    """The draft's validator: the one ``$schema`` names, 2020-12 without one, None when unknown."""
    found = Draft202012Validator
    if "$schema" in schema:
        found = validator_for(schema, default=_UNKNOWN)
    if found is _UNKNOWN:
        return None
    cls: type[Validator] = found
    return cls


def _printable(text: str) -> str:
    """``text`` with any lone surrogate written as its escape (an input may hold one)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _short(message: str) -> str:
    message = _printable(message)
    return message if len(message) <= _MESSAGE_LENGTH else message[: _MESSAGE_LENGTH - 3] + "..."


def _at(where: str, parts: Any) -> str:
    return where + pointer(*parts)


def check_input_schema(schema: dict[str, Any], where: str = "/input") -> list[Problem]:
    """Problems of ``schema`` as a JSON Schema; pointers under ``where`` (its member)."""
    cls = _validator_class(schema)
    if cls is None:
        return [
            Problem(
                "invalid-input-schema",
                where + pointer("$schema"),
                f"unknown JSON Schema draft {str(schema.get('$schema'))[:100]!r}; expected one "
                "jsonschema knows, such as 'https://json-schema.org/draft/2020-12/schema'",
            )
        ]
    meta = cls(cls.META_SCHEMA, format_checker=cls.FORMAT_CHECKER)
    errors = sorted(meta.iter_errors(schema), key=lambda e: [str(p) for p in e.absolute_path])
    problems = [
        Problem(
            "invalid-input-schema",
            _at(where, error.absolute_path),
            f"not a valid JSON Schema: {_short(error.message)}",
        )
        for error in errors[:MAX_INPUT_PROBLEMS]
    ]
    if problems:
        return problems
    return list(itertools.islice(_unsafe_parts(schema, where), MAX_INPUT_PROBLEMS))


def _unsafe_parts(schema: dict[str, Any], where: str) -> Iterator[Problem]:
    """References that cannot resolve and regexes too costly to run, in document order."""
    pending: list[tuple[Any, str]] = [(schema, where)]
    while pending:
        node, at = pending.pop()
        if isinstance(node, list):
            pending.extend((v, at + pointer(i)) for i, v in reversed(list(enumerate(node))))
            continue
        if not isinstance(node, dict):
            continue
        for keyword in ("$ref", "$dynamicRef"):
            reference = node.get(keyword)
            if isinstance(reference, str):
                message = _reference_problem(schema, reference)
                if message:
                    yield Problem("invalid-input-schema", at + pointer(keyword), message)
        regexes: list[tuple[str, str]] = []
        if isinstance(node.get("pattern"), str):
            regexes.append((node["pattern"], at + pointer("pattern")))
        if isinstance(node.get("patternProperties"), dict):
            regexes.extend(
                (key, at + pointer("patternProperties", key)) for key in node["patternProperties"]
            )
        for regex, regex_at in regexes:
            try:
                compile_regex(regex)
            except ExpressionError as exc:
                yield Problem("invalid-input-schema", regex_at, str(exc))
        pending.extend((v, at + pointer(k)) for k, v in reversed(list(node.items())))


def _reference_problem(schema: dict[str, Any], reference: str) -> str | None:
    if not reference.startswith("#"):
        return (
            f"reference {reference[:100]!r} points outside the schema, which is never fetched; "
            "put the subschema under $defs and refer to it as '#/$defs/...'"
        )
    if reference != "#" and not reference.startswith("#/"):
        return None  # an anchor ("#name"): jsonschema resolves it within the schema
    node: Any = schema
    for raw in reference[2:].split("/") if reference != "#" else []:
        part = unquote(raw).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return f"reference {reference[:100]!r} names nothing in the schema"
    return None


def check_run_input(definition: WorkflowDefinition, run_input: Any) -> list[Problem]:
    """Why ``run_input`` does not satisfy the definition's ``input`` schema (empty when it does,
    or when there is no schema). Pointers point into ``run_input``; when the schema itself is
    broken (a definition that was loaded but never validated), its ``invalid-input-schema``
    problems point into the definition instead."""
    schema = definition.input
    if schema is None:
        return []
    broken = check_input_schema(schema)
    if broken:
        return broken
    cls = _validator_class(schema) or Draft202012Validator
    validator = cls(schema)
    try:
        errors = list(itertools.islice(validator.iter_errors(run_input), MAX_INPUT_PROBLEMS))
    except Unresolvable as exc:  # an anchor that names nothing: only found while validating
        return [
            Problem("invalid-input-schema", "/input", f"the input schema does not resolve: {exc}")
        ]
    return [_input_problem(error) for error in sorted(errors, key=_error_order)]


def _error_order(error: ValidationError) -> list[str]:
    return [str(p) for p in error.absolute_path]


def _input_problem(error: ValidationError) -> Problem:
    rule = pointer(*error.absolute_schema_path)
    return Problem(
        "invalid-run-input",
        _printable(pointer(*error.absolute_path)),
        f"{_described(error)} (input schema {rule or '/'})",
    )


def _described(error: ValidationError) -> str:
    """What the input fails, in the schema's words: the input's values are never quoted (the
    message reaches API answers, dead-letter descriptions and logs), only its JSON types."""
    keyword, expected = error.validator, error.validator_value
    if keyword == "required":
        return _short(str(error.message))  # names the missing member: the schema's word
    got = _json_type(error.instance)
    if keyword == "type":
        return f"expected type {_schema_text(expected)}; got {got}"
    if keyword in ("additionalProperties", "unevaluatedProperties"):
        return f"holds members the schema does not allow ({keyword}: {_schema_text(expected)})"
    return f"does not satisfy {keyword}: {_schema_text(expected)} (got {got})"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _schema_text(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return _short(text if len(text) <= 80 else text[:77] + "...")
