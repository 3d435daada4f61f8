"""Hypothesis: hostile values anywhere in a real definition end in the project's own answer
(issue 9: "a property/fuzz suite ... over definitions").

Each example takes a sample definition (definitions/*.json with its mocks), puts one hostile value
at one place of the document (a leaf, a member name, the whole text): lone surrogates, NUL and other
control characters, NaN/Infinity, numbers past a double or a 64-bit integer, durations and
timestamps the engine cannot represent, duplicate members, a byte-order mark. Then it goes the
way ``orchestration validate`` and ``orchestration test`` go: read -> validate -> hash -> pin round
trip -> dry run. Every step either reports problems with JSON pointers, raises the project's own
error (``OrchestrationError``), or works; nothing else may come out (no OverflowError, UnicodeError,
ValueError, RecursionError...). A definition that validates must hash, round-trip to the same
meaning and dry-run to a status.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interpreter import definition_hash
from interpreter.errors import OrchestrationError
from interpreter.loader import dump_definition, read_definition
from interpreter.problems import CODES
from interpreter.simulate import Mocks, simulate
from interpreter.validate import validate

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "definitions").glob("*.json"))
SAMPLES = [p for p in SAMPLES if p.name != "schema.json"]
MOCKS = {p.name.split(".")[0]: p for p in sorted((ROOT / "definitions" / "mocks").glob("*.json"))}

# Raw JSON fragments (text), so literals json.dumps would never write can be placed: NaN, 1e400.
HOSTILE_LITERALS = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-1e400",
    "1e14",
    "123456789012345678901234567890",
    "-9223372036854775809",
    "1e-400",
    '"\\ud800"',
    '"a\\udfffb"',
    '"\\u0000"',
    '"x\\u0000y"',
    '"line\\nbreak"',
    '"\\u001b[31mred"',
    '"\\u0001"',
    '"P999999999D"',
    '"PT99999999999999H"',
    '"P1Y"',
    '"9999-12-31T23:59:59-23:59"',
    '"0001-01-01T00:00:00+01:00"',
    '"$.input.\\ud800"',
    '"$..*"',
    '"' + "a" * 5000 + '"',
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    "{}",
    "null",
    "true",
    "-0",
]
HOSTILE_KEYS = ['"\\ud800"', '"\\u0000"', '"a\\nb"', '""', '"$"']


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place of the document: each member and item (containers included)."""
    places: list[tuple[Any, ...]] = [path] if path else []
    if isinstance(value, dict):
        for key, item in value.items():
            places.extend(_leaves(item, (*path, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            places.extend(_leaves(item, (*path, index)))
    return places


MARK = "\u2603HOSTILE\u2603"


def _with_marker(document: Any, place: tuple[Any, ...], as_key: bool) -> Any:
    """A copy of ``document`` whose value (or member name) at ``place`` is the marker string."""
    copy = json.loads(json.dumps(document))
    parent = copy
    for step in place[:-1]:
        parent = parent[step]
    last = place[-1]
    if as_key and isinstance(parent, dict):
        parent[MARK] = parent.pop(last)
    else:
        parent[last] = MARK
    return copy


def _text(document: Any, place: tuple[Any, ...], fragment: str, how: str) -> str:
    if how == "bom":
        return "\ufeff" + json.dumps(document)
    if how == "duplicate":
        # The first member of the top-level object written twice.
        body = json.dumps(document)
        first = next(iter(document))
        return "{" + json.dumps(first) + ": null, " + body[1:]
    if how == "key":
        marked = json.dumps(_with_marker(document, place, as_key=True), ensure_ascii=False)
        return marked.replace(json.dumps(MARK, ensure_ascii=False), fragment, 1)
    marked = json.dumps(_with_marker(document, place, as_key=False), ensure_ascii=False)
    return marked.replace(json.dumps(MARK, ensure_ascii=False), fragment, 1)


@st.composite
def hostile_definitions(draw: st.DrawFn) -> tuple[str, str]:
    sample = draw(st.sampled_from(SAMPLES))
    document = json.loads(sample.read_text(encoding="utf-8"))
    how = draw(st.sampled_from(["value", "value", "value", "key", "bom", "duplicate"]))
    places = _leaves(document)
    place = draw(st.sampled_from(places))
    fragment = draw(st.sampled_from(HOSTILE_KEYS if how == "key" else HOSTILE_LITERALS))
    if how == "key" and not isinstance(place[-1], str):
        how = "value"
        fragment = draw(st.sampled_from(HOSTILE_LITERALS))
    return sample.stem, _text(document, place, fragment, how)


def _own_answer(step: str, call: Any) -> Any:
    """Run ``call``; only the project's own errors may come out."""
    try:
        return call()
    except OrchestrationError:
        return None
    except Exception as exc:  # the property: nothing else escapes
        raise AssertionError(f"{step} raised {type(exc).__name__}: {exc}") from exc


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(hostile_definitions())
def test_a_hostile_value_anywhere_ends_in_problems_or_a_run(case: tuple[str, str]) -> None:
    name, text = case
    result = _own_answer("read_definition", lambda: read_definition(text))
    if result is None:
        return
    assert {p.code for p in result.problems} <= set(CODES)
    assert all(p.pointer == "" or p.pointer.startswith("/") for p in result.problems)
    definition = result.definition
    if definition is None:
        assert result.problems, "no definition and no problem"
        return
    problems = _own_answer("validate", lambda: validate(definition, activities=None))
    if problems is None or any(p.severity == "error" for p in problems):
        return
    # It validates: it must hash, pin (dump -> load) to the same meaning, and dry-run.
    digest = _own_answer("definition_hash", lambda: definition_hash(definition))
    assert digest is not None
    pinned = dump_definition(definition)
    assert _finite(json.loads(pinned))
    again = read_definition(pinned)
    assert again.definition is not None, again.problems
    assert again.definition == definition
    assert definition_hash(again.definition) == digest
    mocks_path = MOCKS.get(name)
    if mocks_path is None:
        return
    mocks = Mocks.model_validate(json.loads(mocks_path.read_text(encoding="utf-8")))
    outcome = _own_answer(
        "simulate", lambda: simulate(definition, mocks, definition_hash=digest, max_steps=200)
    )
    if outcome is not None:
        assert outcome.status
