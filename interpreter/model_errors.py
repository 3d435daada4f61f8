"""Pydantic's validation errors as ``Problem`` values: stable codes, pointers into the document.

A pydantic location names model fields and discriminator tags (``states.A.task.next``); the
pointer names the document as written (``/states/A/next``). Unknown members list the members the
model accepts, with a "did you mean" hint from the document's shared ``Hints`` budget.
"""

from __future__ import annotations

import json
import re
import types
from functools import lru_cache
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from interpreter.models import WorkflowDefinition
from interpreter.problems import Hints, Problem, pointer

__all__ = ["problem_from_error"]


def _pointer_for(loc: tuple[int | str, ...], document: Any) -> str:
    """Map a pydantic location onto the raw document, dropping discriminator tags."""
    parts: list[str | int] = []
    node = document
    tag_skipped = False
    for index, part in enumerate(loc):
        is_last = index == len(loc) - 1
        is_tag = (
            isinstance(node, dict)
            and not tag_skipped
            and part in (node.get("type"), node.get("op"))
            and not (is_last and part in node)
        )
        present = (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        )
        if is_tag:
            tag_skipped = True
        elif present:
            parts.append(part)
            node, tag_skipped = node[part], False
        elif is_last:
            parts.append(part)
    return pointer(*parts)


def _strip(tp: Any) -> Any:
    """Remove ``Annotated`` and ``| None`` around a type."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in get_args(tp) if a is not type(None)]
            if len(members) != 1:
                return tp
            tp = members[0]
        else:
            return tp


@lru_cache(maxsize=256)
def _member_names_at(loc: tuple[int | str, ...]) -> tuple[str, ...]:
    """Member names the model at ``loc`` accepts (empty when ``loc`` is not a model).

    Cached: a document with thousands of unknown members in one place asks thousands of times."""
    current: Any = WorkflowDefinition
    for part in loc:
        current = _strip(current)
        origin = get_origin(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            fields = current.model_fields
            found = [f for n, f in fields.items() if part in (n, f.alias)]
            if not found:
                return ()
            current = found[0].annotation
        elif origin is dict:
            current = get_args(current)[1]
        elif origin is list:
            current = get_args(current)[0]
        elif origin in (Union, types.UnionType):
            tagged = [m for m in get_args(current) if _tag_matches(m, part)]
            if not tagged:
                return ()
            current = tagged[0]
        else:
            return ()
    current = _strip(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return tuple(f.alias or n for n, f in current.model_fields.items())
    return ()


def _tag_matches(model: Any, tag: int | str) -> bool:
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return False
    for name in ("type", "op"):
        info = model.model_fields.get(name)
        if info is not None and tag in get_args(info.annotation):
            return True
    return False


def _shown(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def problem_from_error(error: ErrorDetails, document: Any, hint: Hints) -> Problem:
    """One pydantic error as a problem: a stable code, the pointer into the document as written."""
    loc = tuple(error["loc"])
    where = _pointer_for(loc, document)
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return Problem("missing-field", where, f"required member {loc[-1]!r} is missing")
    if kind == "extra_forbidden":
        allowed = _member_names_at(loc[:-1])
        expected = f"; expected one of: {', '.join(sorted(allowed))}" if allowed else ""
        return Problem(
            "unknown-field",
            where,
            f"unknown member {loc[-1]!r}{expected}",
            hint=hint(str(loc[-1]), allowed),
        )
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        discriminator = str(ctx.get("discriminator", "")).strip("'")
        tags = re.findall(r"'([^']*)'", str(ctx.get("expected_tags", "")))
        what = "state type" if discriminator == "type" else "operator"
        expected = f"; expected one of: {', '.join(tags)}" if tags else ""
        where = where + pointer(discriminator)
        if kind == "union_tag_not_found":
            return Problem("missing-field", where, f"required member {discriminator!r} is missing")
        tag = str(ctx.get("tag", ""))
        code = "unknown-state-type" if discriminator == "type" else "unknown-operator"
        return Problem(code, where, f"unknown {what} {tag!r}{expected}", hint=hint(tag, tags))
    message = error["msg"].removeprefix("Value error, ")
    if kind == "model_type" or kind == "dict_type":
        message = "expected a JSON object"
    return Problem("invalid-value", where, f"{message}; got {_shown(error.get('input'))}")
