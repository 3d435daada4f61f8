"""Pinning a workflow's definition when the API starts a run.

``POST /workflows`` names a workflow (and maybe a version). Before the run is created, the API
reads that definition from the same source the flow would (``ORCH_DEFINITIONS_*``: a directory or
an Azure Blob container), stores it by content hash with ``flows.definitions.pin`` (under
``ORCH_FLOW_DEFINITIONS_DIR``, default ``<PREFECT_LOCAL_STORAGE_PATH>/definitions``) and passes the
hash as the run's ``definition_hash``. The run then executes the content as it was when it was
started, whatever happens to the file before a worker picks it up, and every replay after a
suspend reads the same content.

The pinned store must be readable by whoever executes the run (the same machine, or a shared
volume). Where it is not, the flow loads the definition by name and refuses to run if its hash is
no longer the pinned one (``DefinitionChangedError``): a changed definition never silently runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from interpreter.errors import ActivityError

if TYPE_CHECKING:
    from tasks.builtin.definitions import DefinitionSource

__all__ = ["DefinitionPinner", "DefinitionsUnavailableError", "UnknownWorkflowError"]


class UnknownWorkflowError(Exception):
    """No such workflow (or version) in the definitions source, or it does not parse (422)."""


class DefinitionsUnavailableError(Exception):
    """The definitions source could not be read just now (503)."""


class DefinitionPinner:
    """Reads a workflow's current definition and pins it by content hash."""

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

    async def pin(self, workflow: str, version: str | None) -> str:
        """The hash of ``workflow`` (at ``version``) as it is now, pinned for the run."""
        from flows.definitions import pin
        from tasks.builtin.definitions import load_from

        try:
            definition = await load_from(self._source, workflow, version)
        except ActivityError as exc:
            if exc.retryable:
                raise DefinitionsUnavailableError(exc.cause) from exc
            raise UnknownWorkflowError(exc.cause) from exc
        return await pin(definition, self._root)
