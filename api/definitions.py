"""Pinning a workflow's definition when the API starts a run.

``POST /workflows`` names a workflow (and maybe a version). Before the run is created, the API
reads that definition from the same source the flow would (``ORCH_DEFINITIONS_*``: a directory or
an Azure Blob container), stores it by content hash with ``flows.definitions.pin`` (under
``ORCH_FLOW_DEFINITIONS_DIR``, default ``<PREFECT_LOCAL_STORAGE_PATH>/definitions``) and passes the
hash as the run's ``definition_hash``. The run then executes the content as it was when it was
started, whatever happens to the file before a worker picks it up, and every replay after a
suspend reads the same content.

The pinner lives in ``flows.definitions`` (the ingress router pins the runs it starts with it too);
this module keeps the API's names for it.

The pinned store must be readable by whoever executes the run (the same machine, or a shared
volume). Where it is not, the flow loads the definition by name and refuses to run if its hash is
no longer the pinned one (``DefinitionChangedError``): a changed definition never silently runs.
"""

from __future__ import annotations

from flows.definitions import DefinitionPinner, DefinitionsUnavailableError, UnknownWorkflowError

__all__ = ["DefinitionPinner", "DefinitionsUnavailableError", "UnknownWorkflowError"]
