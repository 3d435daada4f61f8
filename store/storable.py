"""Which event values a database can never store: checked before a write (SQLite) or after one.

PostgreSQL refuses, deterministically, text containing U+0000 (NUL) or a lone UTF-16 surrogate
(U+D800..U+DFFF, which has no UTF-8 form), and JSON (``jsonb``) holding ``NaN`` or an infinite
number (``1e400`` parses to infinity) or a string or key with ``\\u0000`` or a lone surrogate.
SQLite stores all of these. The store refuses them on both, so that an event is either storable
everywhere or nowhere: on SQLite this module is the check, on PostgreSQL the database's own refusal
is, and this module only names which event was at fault.

``unstorable(...)`` returns what is wrong (with a JSON-pointer-like path), or None.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["unstorable", "unstorable_text"]

_SURROGATES = range(0xD800, 0xE000)


def unstorable_text(text: str) -> str | None:
    """What makes ``text`` unstorable (NUL or a lone surrogate), or None."""
    if "\x00" in text:
        return "contains U+0000 (NUL)"
    for char in text:
        if ord(char) in _SURROGATES:
            return f"contains the lone surrogate U+{ord(char):04X} (not valid Unicode text)"
    return None


def _json_problem(value: Any) -> tuple[str, str] | None:
    """The path and the problem of the first unstorable value in a JSON document (no recursion:
    documents come from the outside and may be deep)."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, current = stack.pop()
        if isinstance(current, str):
            problem = unstorable_text(current)
            if problem is not None:
                return path or "/", problem
        elif isinstance(current, float):
            if not math.isfinite(current):
                return path or "/", f"{current!r} is not a JSON number"
        elif isinstance(current, dict):
            for key, item in reversed(list(current.items())):
                key_text = str(key)
                problem = unstorable_text(key_text)
                if problem is not None:
                    return f"{path}/{key_text!r}", f"key {problem}"
                stack.append((f"{path}/{key_text}", item))
        elif isinstance(current, (list, tuple)):
            stack.extend((f"{path}/{i}", item) for i, item in reversed(list(enumerate(current))))
    return None


def unstorable(device_id: str, event_id: str, name: str, payload: Any) -> str | None:
    """What in this event the database can never store, or None when all of it is storable."""
    for field, text in (("deviceId", device_id), ("eventId", event_id), ("name", name)):
        problem = unstorable_text(text)
        if problem is not None:
            return f"{field} {problem}"
    found = _json_problem(payload)
    if found is not None:
        path, problem = found
        return f"payload at {path}: {problem}"
    return None
