"""JSONPath expressions over a run's data: compile once, resolve, fill templates, assign results.

The document every path reads is ``{"input": ..., "state": ..., "system": ...}``. A path is
parsed by jsonpath-ng's base parser (never the extended one: it accepts user regexes and
arithmetic) and then reduced to an allow-listed form of steps, which this module walks itself,
iteratively:

- ``$`` (the whole document), then a scope ``.input`` / ``.state`` / ``.system``;
- ``.name`` / ``['name']`` / ``['a','b']`` object members;
- ``[0]`` / ``[-1]`` / ``[0,2]`` array indices, ``[1:3]`` / ``[::2]`` slices;
- ``*`` / ``[*]`` every child of an object or array.

Refused at compile time with ``ExpressionError``: filters (``where``), recursive descent (``..``),
named operators (`` `this` ``, `` `parent` ``), union/intersection (``|``/``&``), parentheses, and
anything that does not parse. Recursive descent is refused although the base parser has it: it is
the one step whose cost is the size of the data, not of the expression.

Results: a *singular* path (names and single indices only) gives its value; any other path
(wildcard, slice, several names or indices) gives the list of what it matched, in document order,
each location once (``[0,0]`` selects index 0 once, so a short expression cannot multiply its
matches). A path that matches nothing is ``(False, None)``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

from jsonpath_ng.jsonpath import Child, Fields, Index, Root, Slice, Wildcard
from jsonpath_ng.lexer import JsonPathLexer
from jsonpath_ng.parser import JsonPathParser  # the base parser, never jsonpath_ng.ext

from interpreter.errors import ExpressionError, PathNotFoundError
from interpreter.limits import MAX_DEPTH, MAX_EXPRESSION_LENGTH

__all__ = [
    "SCOPES",
    "CompiledPath",
    "assign",
    "compile_path",
    "is_path",
    "is_plain_path",
    "require",
    "resolve",
    "resolve_template",
    "template_paths",
]

SCOPES: Final = ("input", "state", "system")
LITERAL_KEY: Final = "$literal"
PATH_KEY: Final = "$path"
DEFAULT_KEY: Final = "$default"

# Paths of plain names and non-negative indices, read without the parser (same steps as it gives).
_SIMPLE: Final = re.compile(r"\$(?:\.[A-Za-z_][A-Za-z0-9_]*|\[[0-9]{1,18}\])+", re.ASCII)
_SIMPLE_STEP: Final = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[([0-9]+)\]", re.ASCII)
_RESERVED: Final = frozenset(JsonPathLexer.reserved_words)
_parsers = threading.local()

# Tokens of the base grammar that this module does not allow, with the reason shown to the author.
_REFUSED_TOKENS: Final = {
    "WHERE": "filters ('where') are not supported",
    "WHERENOT": "filters ('wherenot') are not supported",
    "DOUBLEDOT": "recursive descent ('..') is not supported",
    "NAMED_OPERATOR": "named operators (`this`, `parent`) are not supported",
    "|": "union ('|') is not supported",
    "&": "intersection ('&') is not supported",
    "(": "parentheses are not supported",
    ")": "parentheses are not supported",
    "~": "'~' is not supported",
}


@dataclass(frozen=True, slots=True)
class _Names:
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Indices:
    indices: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _Slice:
    start: int | None
    end: int | None
    step: int | None


@dataclass(frozen=True, slots=True)
class _Every:
    pass


_Step = _Names | _Indices | _Slice | _Every


@dataclass(frozen=True, slots=True)
class CompiledPath:
    """A checked path: the source ``expression`` and the steps after ``$``."""

    expression: str
    steps: tuple[_Step, ...]

    @property
    def singular(self) -> bool:
        """True when the path can match at most one location (no wildcard, slice or list)."""
        return all(
            (isinstance(s, _Names) and len(s.names) == 1)
            or (isinstance(s, _Indices) and len(s.indices) == 1)
            for s in self.steps
        )

    @property
    def scope(self) -> str | None:
        """``input``, ``state`` or ``system``; None for ``$`` itself."""
        if not self.steps:
            return None
        first = self.steps[0]
        return first.names[0] if isinstance(first, _Names) else None

    def __str__(self) -> str:
        return self.expression


def _shown(expr: str) -> str:
    """The expression as quoted in a message, cut short so a huge input cannot flood the logs."""
    return repr(expr if len(expr) <= 80 else expr[:77] + "...")


def _refuse(expr: str, expected: str) -> ExpressionError:
    return ExpressionError(f"path {_shown(expr)}: {expected}", expr)


def is_path(value: object) -> bool:
    """True for a string that reads as a path: ``$`` or starting with ``$.`` or ``$[``."""
    return isinstance(value, str) and (value == "$" or value.startswith(("$.", "$[")))


def compile_path(expr: str) -> CompiledPath:
    """Check and compile ``expr`` (cached); raise ``ExpressionError`` naming it if refused."""
    if not isinstance(expr, str):
        raise ExpressionError(f"a path must be a string, got {type(expr).__name__}", repr(expr))
    if len(expr) > MAX_EXPRESSION_LENGTH:
        raise _refuse(
            expr, f"longer than {MAX_EXPRESSION_LENGTH} characters ({len(expr)} characters)"
        )
    return _compile(expr)


@lru_cache(maxsize=4096)
def _compile(expr: str) -> CompiledPath:
    if not is_path(expr):
        raise _refuse(expr, "expected a path rooted at '$' (such as '$.input.name')")
    steps = _simple_steps(expr)
    if steps is None:
        tokens = _check_tokens(expr)
        try:
            tree = _parser().parse_token_stream(iter(tokens))
        # The parser raises its own errors, but also TypeError/IndexError on odd token sequences
        # and RecursionError on deep input: any of them means "does not parse".
        except Exception as exc:
            raise _refuse(expr, f"syntax error ({exc})") from exc
        steps = _flatten(expr, tree)
    if steps:
        first = steps[0]
        if not (isinstance(first, _Names) and len(first.names) == 1 and first.names[0] in SCOPES):
            got = ", ".join(map(repr, first.names)) if isinstance(first, _Names) else "an index"
            raise _refuse(
                expr, f"expected the first segment to be one of input, state, system, got {got}"
            )
    return CompiledPath(expr, tuple(steps))


def is_plain_path(expr: str) -> bool:
    """True for a path of plain names and indices (``$.input.a[0].b``), read without the parser;
    other paths cost jsonpath-ng's parser about half a millisecond each."""
    return _simple_steps(expr) is not None


def _simple_steps(expr: str) -> list[_Step] | None:
    """The steps of a path made of plain names and indices only (``$.input.a[0].b``), read
    without the parser (about a millisecond per path: a definition full of paths would take
    tens of seconds to validate); None for anything else, which the parser reads."""
    if _SIMPLE.fullmatch(expr) is None:
        return None
    steps: list[_Step] = []
    for name, index in _SIMPLE_STEP.findall(expr):
        if name in _RESERVED:
            return None  # 'where' and 'wherenot' are filter keywords: the parser's refusal says so
        steps.append(_Names((name,)) if name else _Indices((int(index),)))
    return steps


def _parser() -> JsonPathParser:
    """This thread's parser: building one costs as much as parsing, and a parser is not safe to
    share between threads."""
    parser: JsonPathParser | None = getattr(_parsers, "parser", None)
    if parser is None:
        parser = _parsers.parser = JsonPathParser()
    return parser


def _check_tokens(expr: str) -> list[Any]:
    """The tokens of ``expr``; refuse the base grammar's constructs we do not allow before the
    parser sees them.

    Checking tokens (not the parsed tree) keeps jsonpath-ng from warning about deprecated syntax.
    """
    try:
        tokens = list(JsonPathLexer().tokenize(expr))
    except Exception as exc:
        raise _refuse(expr, f"syntax error ({exc})") from exc
    for token in tokens:
        reason = _REFUSED_TOKENS.get(token.type)
        if reason is not None:
            raise _refuse(expr, reason)
    return tokens


def _flatten(expr: str, tree: object) -> list[_Step]:
    """Turn the parsed tree into the list of steps after ``$``, without recursion."""
    steps: list[_Step] = []
    pending: list[object] = [tree]
    rooted = False
    while pending:
        node = pending.pop()
        if isinstance(node, Child):
            # Children are visited left first: push right, then left.
            pending.append(node.right)
            pending.append(node.left)
        elif isinstance(node, Root):
            if rooted or steps:
                raise _refuse(expr, "'$' may only start the path")
            rooted = True
        elif not rooted:
            raise _refuse(expr, "expected a path rooted at '$'")
        elif isinstance(node, Fields):
            steps.append(_Names(tuple(dict.fromkeys(node.fields))))
        elif isinstance(node, Index):
            steps.append(_Indices(tuple(dict.fromkeys(node.indices))))
        elif isinstance(node, Slice):
            if node.step == 0:
                raise _refuse(expr, "a slice step must not be 0")
            steps.append(_Slice(node.start, node.end, node.step))
        elif isinstance(node, Wildcard):
            steps.append(_Every())
        else:
            raise _refuse(expr, f"{type(node).__name__} is not supported")
    if not rooted:
        raise _refuse(expr, "expected a path rooted at '$'")
    return steps


def _children(step: _Step, value: object) -> Iterator[Any]:
    """What one step selects from one value; nothing when the value has another shape."""
    if isinstance(value, Mapping):
        if isinstance(step, _Names):
            yield from (value[name] for name in step.names if name in value)
        elif isinstance(step, _Every):
            yield from value.values()
    elif isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray):
        items: Sequence[Any] = value
        if isinstance(step, _Every):
            yield from items
        elif isinstance(step, _Slice):
            yield from items[step.start : step.end : step.step]
        elif isinstance(step, _Indices):
            size = len(items)
            # Negative indices count from the end; each location is selected once.
            chosen = dict.fromkeys(i + size if i < 0 else i for i in step.indices)
            for i in chosen:
                if 0 <= i < size:
                    yield items[i]


def _as_compiled(path: str | CompiledPath) -> CompiledPath:
    return path if isinstance(path, CompiledPath) else compile_path(path)


def resolve(path: str | CompiledPath, data: Mapping[str, Any]) -> tuple[bool, Any]:
    """``(True, value)`` on a match (a list for a non-singular path); ``(False, None)`` on none."""
    compiled = _as_compiled(path)
    current: list[Any] = [data]
    for step in compiled.steps:
        current = [child for value in current for child in _children(step, value)]
        if not current:
            return False, None
    if compiled.singular:
        return True, current[0]
    return True, current


def require(path: str | CompiledPath, data: Mapping[str, Any], *, state: str | None = None) -> Any:
    """The value at ``path``; raise ``PathNotFoundError`` naming path and state if missing."""
    compiled = _as_compiled(path)
    found, value = resolve(compiled, data)
    if not found:
        raise PathNotFoundError(compiled.expression, state)
    return value


def resolve_template(template: Any, data: Mapping[str, Any], *, state: str | None = None) -> Any:
    """Deep-resolve a template: path strings, ``{"$literal": X}``, ``{"$path": P, "$default": D}``.

    Values are taken from ``data`` as they are (not copied): run data is treated as immutable.
    """
    return _fill(template, data, state, 0)


def _fill(template: Any, data: Mapping[str, Any], state: str | None, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise ExpressionError(f"template nested deeper than {MAX_DEPTH} levels")
    if isinstance(template, str):
        return require(template, data, state=state) if is_path(template) else template
    if isinstance(template, list):
        return [_fill(item, data, state, depth + 1) for item in template]
    if not isinstance(template, dict):
        return template
    special = _special(template)
    if special == LITERAL_KEY:
        return template[LITERAL_KEY]
    if special == PATH_KEY:
        found, value = resolve(template[PATH_KEY], data)
        if found:
            return value
        if DEFAULT_KEY in template:
            return template[DEFAULT_KEY]
        raise PathNotFoundError(template[PATH_KEY], state)
    return {key: _fill(value, data, state, depth + 1) for key, value in template.items()}


def _special(template: dict[Any, Any]) -> str | None:
    """Which special form a dict is (``$literal``, ``$path``), or None; refuse malformed ones."""
    if LITERAL_KEY in template:
        if len(template) != 1:
            raise ExpressionError(
                f"a {LITERAL_KEY} object must have no other keys, got {sorted(map(str, template))}"
            )
        return LITERAL_KEY
    if PATH_KEY in template:
        extra = sorted(str(k) for k in template if k not in (PATH_KEY, DEFAULT_KEY))
        if extra:
            raise ExpressionError(
                f"a {PATH_KEY} object takes only {PATH_KEY} and {DEFAULT_KEY}, got also {extra}"
            )
        path = template[PATH_KEY]
        if not is_path(path):
            raise ExpressionError(
                f"{PATH_KEY} must be a path rooted at '$', got {path!r}", str(path)
            )
        return PATH_KEY
    return None


def template_paths(template: Any) -> list[str]:
    """Every path a template reads, in document order (``$literal`` contents are not paths).

    The value of ``$path`` is listed even when it is not a valid path, so validation reports it.
    """
    found: list[str] = []
    pending: list[Any] = [template]
    while pending:
        node = pending.pop()
        if isinstance(node, str):
            if is_path(node):
                found.append(node)
        elif isinstance(node, list):
            pending.extend(reversed(node))
        elif isinstance(node, dict):
            if LITERAL_KEY in node:
                continue
            if PATH_KEY in node:
                if isinstance(node[PATH_KEY], str):
                    found.append(node[PATH_KEY])
                continue
            pending.extend(reversed(list(node.values())))
    return found


def assign(state: dict[str, Any], result_path: str, value: Any) -> dict[str, Any]:
    """A new ``$.state`` dict with ``value`` stored at ``result_path``; ``state`` is not modified.

    ``result_path`` is ``$.state.<field>[.<field>...]`` (bracketed names allowed). Objects missing
    on the way are created; an intermediate that is not an object is replaced by one. Only the dicts
    along the path are copied; everything else is shared with ``state``.
    """
    compiled = compile_path(result_path)
    names: list[str] = []
    for step in compiled.steps:
        if not (isinstance(step, _Names) and len(step.names) == 1):
            raise _refuse(
                result_path,
                "expected a result path of single field names, such as '$.state.result'",
            )
        names.append(step.names[0])
    if compiled.scope != "state" or len(names) < 2:
        raise _refuse(result_path, "expected a result path under $.state, such as '$.state.result'")
    fields = names[1:]
    root: dict[str, Any] = dict(state)
    target = root
    for name in fields[:-1]:
        existing = target.get(name)
        child: dict[str, Any] = dict(existing) if isinstance(existing, dict) else {}
        target[name] = child
        target = child
    target[fields[-1]] = value
    return root
