"""Turn untrusted definition text into a ``WorkflowDefinition``, refusing oversized input safely.

Order matters: the byte size is checked before anything else, nesting depth is measured by an
iterative scan of the raw text (brackets outside strings) before ``json.loads`` ever sees it (the
stdlib parser recurses and raises ``RecursionError`` around 1,000 levels), then the JSON is parsed
(duplicate members and NaN/Infinity refused), numbers beyond a double (``1e400``) and strings with
a lone surrogate (``"\\ud800"``, not Unicode text: it cannot be hashed or stored) are refused with
their pointers, states are counted, and only then are the models built.
Model errors become ``Problem`` values with JSON pointers into the document as written.

``read_definition`` returns every problem found; ``load_definition`` raises on the first batch.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from interpreter.errors import DefinitionParseError, DefinitionTooLargeError
from interpreter.limits import MAX_DEPTH, MAX_DOCUMENT_BYTES, MAX_SHAPE_PROBLEMS, MAX_STATES
from interpreter.model_errors import problem_from_error
from interpreter.models import WorkflowDefinition
from interpreter.problems import Hints, Problem, pointer

__all__ = [
    "LoadResult",
    "definition_hash",
    "dump_definition",
    "load_definition",
    "parse_document",
    "read_definition",
]

_LIMIT_CODES = frozenset({"document-too-large", "too-deep", "too-many-states"})

# A JSON string (escapes included) or one bracket. Strings are consumed whole so brackets inside
# them do not count; the unrolled form never backtracks.
# A surrogate escape (lone or in a pair) or a raw surrogate in a str: worth a walk to find which.
_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]|[\ud800-\udfff]")
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


@dataclass(frozen=True, slots=True)
class LoadResult:
    """The definition when the text is a well-formed definition, and every problem found."""

    definition: WorkflowDefinition | None
    problems: list[Problem] = field(default_factory=list)


class _RefusedError(Exception):
    """Internal: the document was refused; carries the problem."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


class _NonFinite(float):
    """A JSON number too large for a double (``1e400``): kept as written until it is reported."""

    text: str


def _float(text: str) -> float:
    value = float(text)
    if math.isfinite(value):
        return value
    marked = _NonFinite(value)
    marked.text = text
    return marked


class _DuplicateKeys(dict[str, Any]):
    """An object in which at least one member name occurred twice (the last value was kept)."""

    duplicates: list[str]


def _decode(text: str | bytes) -> str:
    if isinstance(text, str):
        # A str of more than MAX characters is larger in bytes too; skip encoding it. A raw
        # lone surrogate is reported where it is, later: count it as its three bytes here.
        size = (
            len(text)
            if len(text) > MAX_DOCUMENT_BYTES
            else len(text.encode("utf-8", "surrogatepass"))
        )
    else:
        size = len(text)
    if size > MAX_DOCUMENT_BYTES:
        raise _RefusedError(
            Problem(
                "document-too-large",
                "",
                f"the document is {size:,} bytes; the limit is {MAX_DOCUMENT_BYTES:,} bytes",
            )
        )
    if isinstance(text, str):
        return text
    try:
        return text.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _RefusedError(
            Problem("invalid-json", "", f"the document is not UTF-8 text: {exc.reason}")
        ) from exc


def _check_depth(text: str) -> None:
    depth = 0
    for match in _TOKENS.finditer(text):
        bracket = match.group()
        if bracket in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                line = text.count("\n", 0, match.start()) + 1
                raise _RefusedError(
                    Problem(
                        "too-deep",
                        "",
                        f"objects and arrays are nested more than {MAX_DEPTH} levels deep "
                        f"(at line {line}); the limit is {MAX_DEPTH}",
                    )
                )
        elif bracket in "]}":
            depth -= 1


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) == len(pairs):
        return result
    seen: set[str] = set()
    marked = _DuplicateKeys(result)
    marked.duplicates = []
    for key, _ in pairs:
        if key in seen and key not in marked.duplicates:
            marked.duplicates.append(key)
        seen.add(key)
    return marked


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _parse(text: str | bytes) -> tuple[Any, bool]:
    """The document, and whether it may hold something ``_content_problems`` reports (a number
    beyond a double, a member given twice, a surrogate): most documents need no second walk."""
    decoded = _decode(text)
    _check_depth(decoded)
    marked: list[object] = []

    def number(literal: str) -> float:
        value = _float(literal)
        if isinstance(value, _NonFinite):
            marked.append(value)
        return value

    def members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result = _object(pairs)
        if isinstance(result, _DuplicateKeys):
            marked.append(result)
        return result

    try:
        document = json.loads(
            decoded, object_pairs_hook=members, parse_constant=_refuse_constant, parse_float=number
        )
    except json.JSONDecodeError as exc:
        raise _RefusedError(
            Problem(
                "invalid-json",
                "",
                f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            )
        ) from exc
    except ValueError as exc:  # NaN/Infinity, or an integer with too many digits
        raise _RefusedError(Problem("invalid-json", "", f"not valid JSON: {exc}")) from exc
    return document, bool(marked) or _SURROGATE.search(decoded) is not None


def _is_text(value: str) -> bool:
    """False when ``value`` holds a lone surrogate (JSON allows the escape; UTF-8 does not)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _escaped(value: str) -> str:
    """``value`` printable: lone surrogates written as their escapes."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _shown_text(value: str) -> str:
    shown = _escaped(value)  # not repr(): it would double the escapes' backslashes
    return "'" + (shown if len(shown) <= 60 else shown[:57] + "...") + "'"


def _content_problems(document: Any) -> tuple[list[Problem], list[Problem]]:
    """(numbers and strings that are not representable, duplicate members), each in pointer order.

    Pointers are built from printable names: a member name with a lone surrogate is written with
    its escape."""
    refused: list[Problem] = []
    duplicates: list[Problem] = []
    stack: list[tuple[Any, str]] = [(document, "")]
    while stack:
        node, where = stack.pop()
        if isinstance(node, dict):
            if isinstance(node, _DuplicateKeys):
                duplicates.extend(
                    Problem(
                        "duplicate-key",
                        where + pointer(_escaped(key)),
                        f"member {_shown_text(key)} appears more than once; only the last one "
                        "would be kept",
                    )
                    for key in node.duplicates
                )
            for key, value in node.items():
                at = where + pointer(_escaped(key))
                if not _is_text(key):
                    refused.append(_not_text(at, key, "member name"))
                stack.append((value, at))
        elif isinstance(node, list):
            stack.extend((value, where + pointer(i)) for i, value in enumerate(node))
        elif isinstance(node, _NonFinite):
            refused.append(
                Problem(
                    "invalid-number",
                    where,
                    f"{node.text[:40]} is beyond the range of a double; expected a finite number "
                    "(at most about 1.8e308)",
                )
            )
        elif isinstance(node, str) and not _is_text(node):
            refused.append(_not_text(where, node, "string"))
    return sorted(refused, key=lambda p: p.pointer), sorted(duplicates, key=lambda p: p.pointer)


def _not_text(where: str, value: str, what: str) -> Problem:
    return Problem(
        "invalid-string",
        where,
        f"the {what} {_shown_text(value)} holds a lone surrogate, which is not Unicode text; "
        "expected a surrogate pair or the character itself",
    )


def _count_states(document: Any) -> int:
    """States in the document, branches included, counted on the raw JSON before the models."""
    count = 0
    pending: list[Any] = [document]
    while pending:
        scope = pending.pop()
        states = scope.get("states") if isinstance(scope, dict) else None
        if not isinstance(states, dict):
            continue
        for state in states.values():
            count += 1
            if not isinstance(state, dict):
                continue
            if isinstance(state.get("branches"), list):
                pending.extend(state["branches"])
            pending.append(state.get("branch"))
    return count


def _refuse(problem: Problem) -> DefinitionTooLargeError | DefinitionParseError:
    if problem.code in _LIMIT_CODES:
        return DefinitionTooLargeError(problem.message)
    return DefinitionParseError(problem.message, problem.pointer)


def parse_document(text: str | bytes) -> Any:
    """The limited JSON parse alone: size, depth, then JSON. Raises on any refusal."""
    try:
        document, suspect = _parse(text)
    except _RefusedError as refused:
        raise _refuse(refused.problem) from None
    unreadable, duplicates = _content_problems(document) if suspect else ([], [])
    if unreadable or duplicates:
        raise _refuse((unreadable + duplicates)[0])
    return document


def read_definition(text: str | bytes) -> LoadResult:
    """Parse and build the definition, collecting every problem instead of raising."""
    try:
        document, suspect = _parse(text)
    except _RefusedError as refused:
        return LoadResult(None, [refused.problem])
    count = _count_states(document)
    if count > MAX_STATES:
        message = (
            f"the definition has {count} states (branches included); the limit is {MAX_STATES}"
        )
        return LoadResult(None, [Problem("too-many-states", "/states", message)])
    unreadable, problems = _content_problems(document) if suspect else ([], [])
    if unreadable:
        # The models would repeat these (or, in free-form members, keep them): report them alone.
        return LoadResult(None, unreadable)
    try:
        definition = WorkflowDefinition.model_validate(document)
    except ValidationError as exc:
        hint = Hints()  # one budget for every hint of this document
        errors = exc.errors(include_url=False)
        problems.extend(
            problem_from_error(error, document, hint) for error in errors[:MAX_SHAPE_PROBLEMS]
        )
        if len(errors) > MAX_SHAPE_PROBLEMS:
            problems.append(
                Problem(
                    "too-many-problems",
                    "",
                    f"{len(errors) - MAX_SHAPE_PROBLEMS:,} more problems of the document's shape "
                    f"are not listed; fix the first {MAX_SHAPE_PROBLEMS:,} and validate again",
                )
            )
        return LoadResult(None, problems)
    return LoadResult(None if problems else definition, problems)


def load_definition(text: str | bytes) -> WorkflowDefinition:
    """The definition in ``text``; raises ``DefinitionTooLargeError`` or ``DefinitionParseError``.

    The parse error's message lists every problem found; its ``pointer`` is the first one's.
    """
    result = read_definition(text)
    if result.definition is not None:
        return result.definition
    first = result.problems[0]
    if first.code in _LIMIT_CODES:
        raise DefinitionTooLargeError(first.message)
    lines = [str(p) for p in result.problems]
    raise DefinitionParseError(
        "not a valid workflow definition:\n  " + "\n  ".join(lines), first.pointer
    )


def dump_definition(definition: WorkflowDefinition) -> str:
    """The definition as JSON, with exactly the members that were given (loads back equal)."""
    return definition.model_dump_json(by_alias=True, exclude_unset=True, indent=2) + "\n"


def definition_hash(definition: WorkflowDefinition) -> str:
    """sha256 hex of the canonical JSON (defaults filled, sorted keys; ``$schema`` left out)."""
    data = definition.model_dump(mode="json", by_alias=True, exclude={"schema_"})
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # A definition built in code (not loaded) may still hold a lone surrogate: hash it rather
    # than crash; a loaded one never does, so its hash is plain UTF-8.
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
