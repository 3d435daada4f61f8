"""Definitions pinned by content: whoever creates a run stores the definition under its hash.

The creator of a run (CLI, bench, API) calls ``pin(definition)``: the canonical JSON goes to
``<root>/<hash[:2]>/<hash>.json`` (written once, atomically) and the run is created with
``definition_hash`` in its parameters. The flow then reads the definition by hash: no Prefect task,
no API call, and a replay after a suspend gets exactly the same content because the hash is a
parameter of the run. Within one process a hash is read, parsed, checked, compiled and validated
once (``prepared``); later runs of the same definition reuse that work.

``root`` defaults to ``<PREFECT_LOCAL_STORAGE_PATH>/definitions``: next to the persisted task
results, which every executor that resumes a run must already share.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from interpreter.engine import Engine
from interpreter.errors import ActivityError
from interpreter.loader import definition_hash, load_definition
from interpreter.models import WorkflowDefinition
from interpreter.problems import Problem
from interpreter.run_input import check_run_input
from interpreter.validate import require_valid

if TYPE_CHECKING:
    from tasks.builtin.definitions import DefinitionSource

__all__ = [
    "DefinitionPinner",
    "DefinitionsUnavailableError",
    "Prepared",
    "RunInputError",
    "UnknownWorkflowError",
    "default_root",
    "pin",
    "pinned_text",
    "prepare",
    "prepared",
    "read_pinned",
]

#: How many prepared definitions a process keeps (least recently used ones are dropped).
MEMO_SIZE = 256


@dataclass(frozen=True)
class Prepared:
    """A definition checked against its hash, compiled into an engine and validated."""

    definition: WorkflowDefinition
    digest: str
    engine: Engine


_memo: OrderedDict[tuple[str, frozenset[str]], Prepared] = OrderedDict()


def default_root() -> Path:
    """``<PREFECT_LOCAL_STORAGE_PATH>/definitions`` (where persisted results live)."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    return Path(PREFECT_LOCAL_STORAGE_PATH.value()) / "definitions"


def _path(root: Path, digest: str) -> Path:
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"not a sha256 hex digest: {digest!r}")
    return root / digest[:2] / f"{digest}.json"


def pinned_text(definition: WorkflowDefinition) -> str:
    """The text a pin stores: exactly the members the definition was given, explicit nulls
    included (``"value": null`` is a literal to compare with; dropping it changes the meaning),
    so it loads back to an equal definition with the same hash."""
    return definition.model_dump_json(by_alias=True, exclude_unset=True)


def _write_once(path: Path, text: str) -> None:
    if path.exists():
        return  # content-addressed: the same name always holds the same content
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


async def pin(definition: WorkflowDefinition, root: Path | None = None) -> str:
    """Store ``definition`` under its hash (idempotent); return the hash to pass to the run."""
    digest = definition_hash(definition)
    await asyncio.to_thread(
        _write_once, _path(root or default_root(), digest), pinned_text(definition)
    )
    return digest


class Pinned(NamedTuple):
    """A definition pinned for a run: its hash, and the name and version it has (what the run
    is named and tagged with at creation, so the flow does not rename it)."""

    digest: str
    name: str
    version: str


def run_name(workflow: str, device_id: str | None, run_id: str) -> str:
    """``<workflow>/<device>``, or ``<workflow>/<first 8 of the run id>`` without a device."""
    return f"{workflow}/{device_id or run_id[:8]}"


def run_tags(workflow: str, device_id: str | None, version: str | None) -> list[str]:
    """A run's tags: ``workflow:<name>``, ``device:<id>`` and ``version:<version>``."""
    tags = [f"workflow:{workflow}"]
    if device_id:
        tags.append(f"device:{device_id}")
    if version:
        tags.append(f"version:{version}")
    return tags


class UnknownWorkflowError(Exception):
    """No such workflow (or version) in the definitions source, or it does not parse: starting
    it again will not help."""


class DefinitionsUnavailableError(Exception):
    """The definitions source could not be read just now: try again later."""


class RunInputError(Exception):
    """The run's input does not satisfy the definition's ``input`` schema: nothing was started,
    and starting it again with the same input will not help. ``problems`` point into the input."""

    def __init__(self, workflow: str, problems: list[Problem]) -> None:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(
            f"the input of {workflow!r} does not satisfy its input schema: "
            f"{first.pointer or '/'}: {first.message}{more}"
        )
        self.problems = problems


class DefinitionPinner:
    """Reads a workflow's current definition from the source the flow reads and pins it by
    content hash; whoever starts a run (the API, the ingress router) passes that hash."""

    def __init__(self, source: DefinitionSource, root: Path | None = None) -> None:
        self._source = source
        self._root = root

    @classmethod
    def from_environment(cls) -> DefinitionPinner:
        """The flow's own settings: the same source and the same pinned store as the runs."""
        from flows.runtime import FlowSettings
        from tasks.builtin.definitions import source_for
        from tasks.settings import DefinitionSettings

        return cls(source_for(DefinitionSettings()), FlowSettings().definitions_dir)

    async def pin(
        self, workflow: str, version: str | None, *, run_input: dict[str, Any] | None = None
    ) -> Pinned:
        """``workflow`` (at ``version``) as it is now, pinned for the run: its hash, name and
        version.

        With ``run_input``, the input is checked against the definition's input schema first
        (``RunInputError``, nothing pinned)."""
        from tasks.builtin.definitions import load_from

        try:
            definition = await load_from(self._source, workflow, version)
        except ActivityError as exc:
            if exc.retryable:
                raise DefinitionsUnavailableError(exc.cause) from exc
            raise UnknownWorkflowError(exc.cause) from exc
        if run_input is not None:
            problems = check_run_input(definition, run_input)
            if problems:
                raise RunInputError(workflow, problems)
        digest = await pin(definition, self._root)
        return Pinned(digest, definition.name, definition.version)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


async def read_pinned(digest: str, root: Path | None = None) -> WorkflowDefinition | None:
    """The definition stored under ``digest``, or None when it is not there.

    Raises ``ValueError`` when the content does not have that hash (a corrupted store)."""
    text = await asyncio.to_thread(_read, _path(root or default_root(), digest))
    if text is None:
        return None
    definition = load_definition(text)
    actual = definition_hash(definition)
    if actual != digest:
        raise ValueError(f"pinned definition {digest[:12]} has content hashing to {actual[:12]}")
    return definition


def prepared(digest: str, activities: Collection[str]) -> Prepared | None:
    """The definition already prepared in this process for ``digest``, if any."""
    key = (digest, frozenset(activities))
    found = _memo.get(key)
    if found is not None:
        _memo.move_to_end(key)
    return found


def prepare(definition: WorkflowDefinition, digest: str, activities: Collection[str]) -> Prepared:
    """Validate ``definition`` against ``activities`` and compile it, once per process."""
    key = (digest, frozenset(activities))
    found = _memo.get(key)
    if found is not None:
        _memo.move_to_end(key)
        return found
    require_valid(definition, activities=activities)
    result = Prepared(definition, digest, Engine(definition, definition_hash=digest))
    _memo[key] = result
    while len(_memo) > MEMO_SIZE:
        _memo.popitem(last=False)
    return result
