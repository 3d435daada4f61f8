"""Stable names for one visit of one state: the step key, the wait key and the idempotency key.

Each is a pure function of the pinned definition (its hash), the state's path through branches and
the visit number, so a replayed run derives exactly the same keys:

- ``step_key``: ``<hash[:12]>:<path>:<visit>`` (the task cache key);
- ``wait_key``: the same idea in Prefect's suspend-key alphabet (lowercase letters, digits, dashes):
  a readable slug of path and visit, then 8 hex digits of sha256(path) so two paths that slug alike
  stay distinct;
- ``default_idempotency_key``: ``<runId>:<step_key>``;
- a compensation step uses the completed task's path with the suffix ``#compensate``.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

__all__ = [
    "COMPENSATE_SUFFIX",
    "branch_path",
    "compensation_path",
    "default_idempotency_key",
    "state_path",
    "step_key",
    "wait_key",
]

COMPENSATE_SUFFIX: Final = "#compensate"
HASH_PREFIX_LENGTH: Final = 12
_SLUG_MAX: Final = 80  # keeps keys short; the sha256 suffix keeps long paths unique
_NOT_SLUG = re.compile(r"[^a-z0-9]+")


def state_path(prefix: str, state: str) -> str:
    """The path of ``state`` inside a branch whose path is ``prefix`` (``""`` at the top level)."""
    return f"{prefix}/{state}" if prefix else state


def branch_path(path: str, visit: int, index: int) -> str:
    """The path prefix of branch ``index`` of the parallel/map state at ``path`` on ``visit``.

    The first visit gives ``Parallel/0``; later visits ``Parallel@2/0``, so a parallel state inside
    a loop never reuses the keys (and so the cached results) of an earlier visit's branches.
    """
    owner = path if visit == 1 else f"{path}@{visit}"
    return f"{owner}/{index}"


def compensation_path(path: str) -> str:
    """The path of the compensation of the task at ``path``."""
    return f"{path}{COMPENSATE_SUFFIX}"


def step_key(definition_hash: str, path: str, visit: int) -> str:
    """``<hash[:12]>:<path>:<visit>``: one visit of one state of one pinned definition."""
    return f"{definition_hash[:HASH_PREFIX_LENGTH]}:{path}:{visit}"


def wait_key(path: str, visit: int) -> str:
    """Lowercase letters, digits and dashes: slug of path, the visit, 8 hex of sha256(path)."""
    slug = _NOT_SLUG.sub("-", path.lower()).strip("-")[:_SLUG_MAX].strip("-")
    digest = hashlib.sha256(path.encode("utf-8")).hexdigest()[:8]
    return f"{slug}-{visit}-{digest}" if slug else f"{visit}-{digest}"


def default_idempotency_key(run_id: str, step: str) -> str:
    """``<runId>:<step_key>``: the same for every retry and replay of one visit."""
    return f"{run_id}:{step}"
