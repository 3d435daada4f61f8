"""Strict JSON for untrusted input: one parser, one value checker, one rule for ids and names.

Whatever enters from outside (API bodies, device event messages of every transport) is parsed or
checked here, so that only values every later part can store and send get in. PostgreSQL refuses
NUL in text and JSONB and has no NaN or Infinity in JSON; a UTF-8 encoder (httpx on the way to
Prefect, our own JSON responses) refuses a lone surrogate; Prefect's server serializes with
orjson, which refuses integers outside 64 bits. Each of these, let through, used to fail far from
the input (a 500, a 503 after a timeout, a message retried until it was dead-lettered).

The API (pure: no I/O, no clock):

- ``loads(data, *, max_bytes=MAX_DOCUMENT_BYTES) -> Any``: parse JSON text (``str`` or UTF-8
  ``bytes``), refusing a body over ``max_bytes``, bytes that are not UTF-8, a byte order mark,
  nesting deeper than ``interpreter.limits.MAX_DEPTH``, invalid JSON, a member name given twice,
  ``NaN``/``Infinity``/``-Infinity``, a number that overflows a double (``1e400``), an integer
  outside [``MIN_INTEGER``, ``MAX_INTEGER``] (signed 64 bits), and a NUL or a lone surrogate in a
  string or a member name.
- ``check_value(value, *, at="")``: the same value rules on a tree parsed elsewhere (a pydantic
  field, a Python caller): non-finite floats, out-of-range integers, NUL and lone surrogates in
  strings and keys, nesting depth, and only JSON types.
- Both raise ``UnsafeJsonError``: ``code`` (stable, below), ``pointer`` (RFC 6901, ``""`` for the
  whole document) and ``message``. It is a ``ValueError``, so a pydantic validator may raise it.
  Codes: ``too-large``, ``not-utf8``, ``byte-order-mark``, ``too-deep``, ``invalid-json`` (the
  syntax), ``duplicate-key``, ``non-finite-number``, ``number-out-of-range``,
  ``forbidden-character``, ``not-json`` (a Python value JSON has no type for).
- ``ID_PATTERN`` (``MAX_ID_LENGTH``), ``is_valid_id``: device ids, event ids and instance ids.
  They become session ids, Prefect tags, idempotency keys, URL path segments and database keys, so
  they take one conservative alphabet: an ASCII letter or digit, then letters, digits, ``.``,
  ``_``, ``:`` and ``-``; at most 128 characters (a Service Bus session or message id's limit).
  UUIDs fit.
- ``NAME_PATTERN`` (``MAX_NAME_LENGTH``): event names and workflow types, the id alphabet plus
  ``/``, at most 200 characters.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final

from interpreter.errors import OrchestrationError
from interpreter.limits import MAX_DEPTH, MAX_DOCUMENT_BYTES
from interpreter.problems import pointer

__all__ = [
    "ID_PATTERN",
    "MAX_ID_LENGTH",
    "MAX_INTEGER",
    "MAX_NAME_LENGTH",
    "MIN_INTEGER",
    "NAME_PATTERN",
    "UnsafeJsonError",
    "check_value",
    "is_valid_id",
    "loads",
]

#: Longest id (device, event, instance), in characters.
MAX_ID_LENGTH: Final = 128
#: The one rule for ids, for pydantic ``pattern=`` (Rust regex: ``$`` is the very end); from
#: Python use ``is_valid_id`` (``re``'s ``$`` also matches before a final newline).
ID_PATTERN: Final = rf"^[A-Za-z0-9][A-Za-z0-9._:-]{{0,{MAX_ID_LENGTH - 1}}}$"
#: Longest event name or workflow type, in characters.
MAX_NAME_LENGTH: Final = 200
#: Event names and workflow types: the id alphabet and ``/``.
NAME_PATTERN: Final = rf"^[A-Za-z0-9][A-Za-z0-9._:/-]{{0,{MAX_NAME_LENGTH - 1}}}$"
#: Integers outside signed 64 bits are refused (Prefect's server serializes with orjson).
MAX_INTEGER: Final = 2**63 - 1
MIN_INTEGER: Final = -(2**63)

_ID = re.compile(ID_PATTERN)
# NUL (PostgreSQL text and JSONB cannot hold it) and UTF-16 surrogates (no UTF-8 form; a pair in
# JSON text becomes one code point when parsed, so only lone halves remain here).
_FORBIDDEN = re.compile("[\x00\ud800-\udfff]")
_BOM = "\ufeff"
# More digits than any integer in range has: refused before int() is asked to convert it.
_MAX_INT_DIGITS = 20


class UnsafeJsonError(OrchestrationError, ValueError):
    """Input refused; ``pointer`` says where (RFC 6901), ``code`` what kind of problem."""

    def __init__(self, code: str, pointer: str, message: str) -> None:
        super().__init__(f"{pointer or '(document)'}: {message}")
        self.code = code
        self.pointer = pointer
        self.message = message


def is_valid_id(value: str) -> bool:
    """Whether ``value`` follows the id rule (``ID_PATTERN``)."""
    return _ID.fullmatch(value) is not None


class _Refused:
    """A value the parse hooks refused, left in the tree for the walk to report with a pointer."""

    __slots__ = ("code", "member", "message")

    def __init__(self, code: str, message: str, member: str | None = None) -> None:
        self.code = code
        self.message = message
        self.member = member  # for a duplicate: the member name, under the object's pointer


def loads(data: str | bytes, *, max_bytes: int = MAX_DOCUMENT_BYTES) -> Any:
    """The JSON value in ``data``; raises ``UnsafeJsonError`` for anything refused (see above)."""
    text = _decode(data, max_bytes)
    try:
        # The hooks leave what they refuse in the tree as ``_Refused`` for check_value to report
        # with its pointer (they cannot know where they are).
        document = json.loads(
            text,
            object_pairs_hook=_object,
            parse_constant=_constant,
            parse_float=_float,
            parse_int=_int,
        )
    except json.JSONDecodeError as exc:
        raise UnsafeJsonError(
            "invalid-json", "", f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        # The C scanner counts its recursion and raises (it does not overflow the stack); any
        # depth it does parse is measured by check_value.
        raise UnsafeJsonError("too-deep", "", _depth_message()) from None
    check_value(document)
    return document


def check_value(value: Any, *, at: str = "") -> None:
    """Raise ``UnsafeJsonError`` for the first value (in document order) that cannot be stored
    and sent as JSON; ``at`` prefixes the pointers (where ``value`` sits in a larger document)."""
    if not _suspect(value):
        return
    stack: list[tuple[Any, str, int]] = [(value, at, 0)]
    while stack:
        node, where, depth = stack.pop()
        if isinstance(node, _Refused):
            member = "" if node.member is None else pointer(node.member)
            raise UnsafeJsonError(node.code, where + member, node.message)
        if isinstance(node, str):
            _check_text(node, where, "string")
        elif isinstance(node, bool) or node is None:
            continue
        elif isinstance(node, int):
            if not MIN_INTEGER <= node <= MAX_INTEGER:
                raise UnsafeJsonError("number-out-of-range", where, _integer_message(str(node)))
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise UnsafeJsonError(
                    "non-finite-number", where, f"{node} is not a JSON number (finite only)"
                )
        elif isinstance(node, dict | list | tuple):
            if depth >= MAX_DEPTH:
                raise UnsafeJsonError("too-deep", where, _depth_message())
            children: list[tuple[Any, str, int]] = []
            if isinstance(node, dict):
                for key, item in node.items():
                    if not isinstance(key, str):
                        message = f"member name {key!r} is no string"
                        raise UnsafeJsonError("not-json", where, message)
                    _check_text(key, where + pointer(key), "member name")
                    children.append((item, where + pointer(key), depth + 1))
            else:
                children.extend(
                    (item, where + pointer(index), depth + 1) for index, item in enumerate(node)
                )
            stack.extend(reversed(children))
        else:
            raise UnsafeJsonError("not-json", where, f"a {type(node).__name__} is not a JSON value")


def _suspect(value: Any) -> bool:
    """Whether ``value`` may hold a fault: a quick walk without pointers (the common case, a clean
    document, ends here); a suspect one is walked again by check_value to say what and where."""
    strings: list[str] = []
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        kind = type(node)
        if kind is str:
            strings.append(node)
        elif kind is dict:
            if depth >= MAX_DEPTH:
                return True
            strings.extend(node)  # member names; a non-str one fails the join below
            stack.extend((item, depth + 1) for item in node.values())
        elif kind is list or kind is tuple:
            if depth >= MAX_DEPTH:
                return True
            stack.extend((item, depth + 1) for item in node)
        elif kind is int:
            if not MIN_INTEGER <= node <= MAX_INTEGER:
                return True
        elif kind is float:
            if not math.isfinite(node):
                return True
        elif node is not None and kind is not bool:
            return True  # _Refused, or a type the careful walk judges
    try:
        joined = "".join(strings)  # one scan for all strings: far cheaper than one per string
    except TypeError:
        return True
    return _FORBIDDEN.search(joined) is not None


def _check_text(text: str, where: str, what: str) -> None:
    found = _FORBIDDEN.search(text)
    if found is None:
        return
    char = found.group()
    name = "NUL (\\u0000)" if char == "\x00" else f"a lone surrogate (\\u{ord(char):04x})"
    raise UnsafeJsonError(
        "forbidden-character", where, f"the {what} contains {name} at index {found.start()}"
    )


def _decode(data: str | bytes, max_bytes: int) -> str:
    if isinstance(data, str):
        # A str of more than max characters is larger in bytes too; skip encoding it.
        size = len(data) if len(data) > max_bytes else len(data.encode("utf-8", "surrogatepass"))
    else:
        size = len(data)
    if size > max_bytes:
        raise UnsafeJsonError("too-large", "", f"{size} bytes; the limit is {max_bytes}")
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")  # strict: no encoded surrogates either
        except UnicodeDecodeError as exc:
            raise UnsafeJsonError(
                "not-utf8", "", f"not UTF-8: {exc.reason} at byte {exc.start}"
            ) from None
    if data.startswith(_BOM):
        raise UnsafeJsonError("byte-order-mark", "", "starts with a byte order mark (U+FEFF)")
    return data


def _depth_message() -> str:
    return f"objects and arrays nested deeper than {MAX_DEPTH} levels"


def _integer_message(digits: str) -> str:
    shown = digits if len(digits) <= 30 else digits[:27] + "..."
    return f"integer {shown} is outside [{MIN_INTEGER}, {MAX_INTEGER}]"


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any] | _Refused:
    result = dict(pairs)
    if len(result) == len(pairs):
        return result
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return _Refused("duplicate-key", f"member {key!r} appears more than once", key)
        seen.add(key)
    return result  # unreachable: fewer members than pairs means one repeated


def _constant(name: str) -> _Refused:
    return _Refused("non-finite-number", f"{name} is not a JSON number")


def _float(literal: str) -> float | _Refused:
    value = float(literal)
    if math.isfinite(value):
        return value
    shown = literal if len(literal) <= 30 else literal[:27] + "..."
    return _Refused("number-out-of-range", f"{shown} overflows a 64-bit float")


def _int(literal: str) -> int | _Refused:
    if len(literal.lstrip("-")) <= _MAX_INT_DIGITS:
        value = int(literal)
        if MIN_INTEGER <= value <= MAX_INTEGER:
            return value
    return _Refused("number-out-of-range", _integer_message(literal))
