"""``python -m bench validate [--repeat N]``: the worst validate time of documents under the limits.

Pure (no Prefect, no database): each shape is a document just under the limits (1 MB, 500 states)
built to make one part of loading and validation work hardest; the time is ``read_definition`` plus
``validate`` against the built-in activity names, the best of ``--repeat`` runs. The target: every
document under the limits validates in under 2 s.

- long-names: the issue's case, 250 states with 1,900-character names, each ``next`` a typo of
  its own name ("did you mean" once compared every pair: 106 s).
- near-names: 500 states with 64-character names from a two-letter alphabet (``difflib``'s slowest
  input), choices whose rules all name a missing state.
- unknown-members: thousands of unknown members, each drawing a hint from the model's names.
- unknown-activities: thousands of tasks naming activities the registry does not have.
- deep-templates: input templates full of plain paths (``$.input.a1.b[1].c``), each checked.
- bracket-paths: the same with bracket and wildcard paths (``$['input']['a1'][*]``), which only
  jsonpath-ng's parser reads (about half a millisecond each).
- many-conditions: one choice with thousands of rules, each a regex and a comparison.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from typing import Any

from interpreter.limits import MAX_DOCUMENT_BYTES, MAX_STATES
from interpreter.loader import read_definition
from interpreter.validate import validate

BUILTIN_ACTIVITIES = (
    "records.create",
    "records.update",
    "records.get",
    "records.rollbackCreate",
    "events.get",
    "events.clear",
    "http.request",
    "notify.send",
    "definitions.load",
    "definitions.validate",
)


def _document(states: dict[str, Any], start: str) -> str:
    return json.dumps({"name": "bench", "version": "1", "startAt": start, "states": states})


def _fill(build: Callable[[int], str], low: int = 1, high: int = 200_000) -> str:
    """The largest ``build(n)`` under the document limit (binary search on ``n``)."""
    best = build(low)
    while low < high:
        middle = (low + high + 1) // 2
        text = build(middle)
        if len(text.encode()) <= MAX_DOCUMENT_BYTES:
            best, low = text, middle
        else:
            high = middle - 1
    return best


def long_names() -> str:
    names = [f"{i:04d}" + "n" * 1_896 for i in range(250)]
    states = {n: {"type": "task", "activity": "notify.send", "next": n + "x"} for n in names}
    return _document(states, names[0])


def near_names() -> str:
    generator = random.Random(7)
    names = ["".join(generator.choice("ab") for _ in range(64)) for _ in range(MAX_STATES)]

    def build(rules: int) -> str:
        states: dict[str, Any] = {}
        for index, name in enumerate(names):
            count = rules // len(names) + (1 if index < rules % len(names) else 0)
            choices = [
                {"condition": {"op": "isPresent", "variable": "$.input.x"}, "next": name[::-1]}
                for _ in range(max(count, 1))
            ]
            states[name] = {"type": "choice", "choices": choices}
        return _document(states, names[0])

    return _fill(build, len(names), 20_000)


def unknown_members() -> str:
    def build(count: int) -> str:
        extra = {f"nxt{i}": 1 for i in range(count)}
        return _document({"A": {"type": "succeed", **extra}}, "A")

    return _fill(build)


def unknown_activities() -> str:
    def build(count: int) -> str:
        states = {
            f"S{i}": {"type": "task", "activity": f"notify.sned{i}", "end": True}
            for i in range(min(count, MAX_STATES))
        }
        return _document(states, "S0")

    return build(MAX_STATES)


def deep_templates() -> str:
    def build(count: int) -> str:
        template = {f"k{i}": f"$.input.a{i}.b[{i}].c" for i in range(count)}
        states = {"A": {"type": "task", "activity": "notify.send", "input": template, "end": True}}
        return _document(states, "A")

    return _fill(build)


def bracket_paths() -> str:
    def build(count: int) -> str:
        template = {f"k{i}": f"$['input']['a{i}'][*]" for i in range(count)}
        states = {"A": {"type": "task", "activity": "notify.send", "input": template, "end": True}}
        return _document(states, "A")

    return _fill(build)


def many_conditions() -> str:
    def build(count: int) -> str:
        choices = [
            {
                "condition": {
                    "op": "and",
                    "conditions": [
                        {
                            "op": "matches",
                            "variable": f"$.input.s{i}",
                            "value": f"^SN-{i}-[0-9]{{6}}$",
                        },
                        {"op": "greaterThan", "variable": f"$.input.n{i}", "value": i},
                    ],
                },
                "next": "Done",
            }
            for i in range(count)
        ]
        states = {"C": {"type": "choice", "choices": choices}, "Done": {"type": "succeed"}}
        return _document(states, "C")

    return _fill(build)


SHAPES: dict[str, Callable[[], str]] = {
    "long-names": long_names,
    "near-names": near_names,
    "unknown-members": unknown_members,
    "unknown-activities": unknown_activities,
    "deep-templates": deep_templates,
    "bracket-paths": bracket_paths,
    "many-conditions": many_conditions,
}


def _time(text: str) -> tuple[float, int]:
    started = time.perf_counter()
    result = read_definition(text)
    problems = list(result.problems)
    if result.definition is not None:
        problems += validate(result.definition, activities=BUILTIN_ACTIVITIES)
    return time.perf_counter() - started, len(problems)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench validate", description=__doc__)
    parser.add_argument("--repeat", type=int, default=3, help="runs per shape; the best counts")
    parser.add_argument("--shape", choices=sorted(SHAPES), action="append", help="only these")
    options = parser.parse_args(argv)
    worst = ("", 0.0)
    for name in options.shape or list(SHAPES):
        text = SHAPES[name]()
        runs = [_time(text) for _ in range(options.repeat)]
        seconds = min(t for t, _ in runs)
        print(
            f"validate {name:<20} {len(text.encode()):>9,} bytes  {runs[0][1]:>6,} problems  "
            f"{seconds:8.3f} s",
            flush=True,
        )
        if seconds >= worst[1]:
            worst = (name, seconds)
    print(f"validate worst case: {worst[0]} {worst[1]:.3f} s (target: under 2 s)")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
