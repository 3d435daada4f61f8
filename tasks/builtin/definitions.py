"""``definitions.load`` and ``definitions.validate``: workflow definitions from storage, checked.

Where definitions live (``DefinitionSettings``): a directory (default ``definitions/``), or an Azure
Blob Storage container through prefect-azure's ``AzureBlobStorageCredentials`` (a saved block, or
``DefaultAzureCredential`` with an account URL). Both hold the same layout:

    <workflow>.json              the current version of a workflow
    <workflow>/<version>.json    every published version

``version`` given: ``<workflow>/<version>.json``, else ``<workflow>.json`` if its ``version`` is the
one asked for. No version: ``<workflow>.json``, else the highest version under ``<workflow>/``
(dotted numbers compare as numbers). Names are restricted to letters, digits, ``.``, ``_`` and
``-`` so that a workflow name can never walk out of the directory or container.

The Blob path is not exercised by the tests (they cannot reach Azure); it shares everything but
the two read primitives with the directory path, which is.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import Field

from interpreter.errors import ActivityError, AuthoringError
from tasks.registry import ActivityInput, ActivityOutput

if TYPE_CHECKING:
    from tasks.context import ActivityContext
    from tasks.registry import ActivityRegistry
    from tasks.settings import DefinitionSettings

__all__ = [
    "BlobSource",
    "DefinitionSource",
    "DirectorySource",
    "LoadDefinitionInput",
    "LoadDefinitionOutput",
    "ValidateDefinitionInput",
    "ValidateDefinitionOutput",
    "register",
    "source_for",
]

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class LoadDefinitionInput(ActivityInput):
    workflow: str = Field(min_length=1, max_length=200)
    version: str | None = Field(default=None, min_length=1, max_length=100)


class LoadDefinitionOutput(ActivityOutput):
    definition: dict[str, Any]
    hash: str
    version: str


class ValidateDefinitionInput(ActivityInput):
    definition: Any


class ValidateDefinitionOutput(ActivityOutput):
    valid: bool
    problems: list[dict[str, Any]]


def _not_found(message: str) -> ActivityError:
    return ActivityError("Definitions.NotFound", message, retryable=False)


def _check_name(label: str, value: str) -> str:
    if not NAME.fullmatch(value) or ".." in value:
        raise ActivityError(
            "States.InvalidInput",
            f"{label} {value!r} may hold only letters, digits, '.', '_' and '-'",
            retryable=False,
        )
    return value


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """``1.10.0`` after ``1.9.0``: numeric parts as numbers, sorted before textual ones."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"[.\-_]", version)
    )


class DefinitionSource(Protocol):
    """Two primitives over a flat namespace of ``/``-separated names."""

    def describe(self) -> str: ...

    async def read(self, name: str, limit: int) -> bytes | None:
        """The document's bytes (at most ``limit + 1`` read), or None when absent."""
        ...

    async def names(self, prefix: str) -> list[str]:
        """The names that start with ``prefix``."""
        ...


class DirectorySource:
    """Definitions as files under a directory."""

    def __init__(self, directory: Path) -> None:
        self._root = directory.resolve()

    def describe(self) -> str:
        return str(self._root)

    def _path(self, name: str) -> Path:
        path = (self._root / name).resolve()
        if not path.is_relative_to(self._root):  # names are checked; this is the backstop
            raise _not_found(f"{name!r} is outside {self._root}")
        return path

    async def read(self, name: str, limit: int) -> bytes | None:
        path = self._path(name)

        def read_capped() -> bytes | None:
            if not path.is_file():
                return None
            with path.open("rb") as handle:
                return handle.read(limit + 1)

        return await asyncio.to_thread(read_capped)

    async def names(self, prefix: str) -> list[str]:
        folder = self._path(prefix.rstrip("/"))

        def listing() -> list[str]:
            if not folder.is_dir():
                return []
            return [f"{prefix}{entry.name}" for entry in folder.iterdir() if entry.is_file()]

        return await asyncio.to_thread(listing)


class BlobSource:
    """Definitions as blobs in an Azure Storage container, through prefect-azure."""

    def __init__(self, settings: DefinitionSettings) -> None:
        self._settings = settings
        self._container = settings.azure_container or ""

    def describe(self) -> str:
        return f"azure blob container {self._container!r}"

    async def _credentials(self) -> Any:
        from prefect_azure.credentials import AzureBlobStorageCredentials

        if self._settings.azure_block_name:
            return await AzureBlobStorageCredentials.aload(self._settings.azure_block_name)
        return AzureBlobStorageCredentials(account_url=self._settings.azure_account_url)

    def _unavailable(self, exc: Exception) -> ActivityError:
        """The container cannot be read now (Azure's error, by name only): try again later."""
        return ActivityError(
            "Definitions.Unavailable",
            f"{self.describe()}: {type(exc).__name__}",
            retryable=True,
        )

    async def read(self, name: str, limit: int) -> bytes | None:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        credentials = await self._credentials()
        try:
            async with credentials.get_blob_client(self._container, name) as blob:
                download = await blob.download_blob(offset=0, length=limit + 1)
                data: bytes = await download.readall()
                return data
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise self._unavailable(exc) from exc

    async def names(self, prefix: str) -> list[str]:
        from azure.core.exceptions import AzureError

        credentials = await self._credentials()
        try:
            async with credentials.get_container_client(self._container) as container:
                return [blob.name async for blob in container.list_blobs(name_starts_with=prefix)]
        except AzureError as exc:
            raise self._unavailable(exc) from exc


def source_for(settings: DefinitionSettings) -> DefinitionSource:
    """The Blob container when configured, else the directory."""
    if settings.uses_azure:
        return BlobSource(settings)
    return DirectorySource(Path(settings.directory))


async def _versions(source: DefinitionSource, workflow: str) -> list[str]:
    prefix = f"{workflow}/"
    names = await source.names(prefix)
    versions = [
        name[len(prefix) : -len(".json")]
        for name in names
        if name.endswith(".json") and "/" not in name[len(prefix) :]
    ]
    return sorted(versions, key=_version_key)


async def load_from(source: DefinitionSource, workflow: str, version: str | None) -> Any:
    """The parsed ``WorkflowDefinition`` for ``workflow`` at ``version`` (None: the current one)."""
    from interpreter.limits import MAX_DOCUMENT_BYTES
    from interpreter.loader import load_definition

    _check_name("workflow", workflow)
    if version is not None:
        _check_name("version", version)

    async def parse(name: str) -> Any:
        data = await source.read(name, MAX_DOCUMENT_BYTES)
        if data is None:
            return None
        try:
            definition = load_definition(data)
        except AuthoringError as exc:
            raise ActivityError(
                "Definitions.Invalid", f"{name} in {source.describe()}: {exc}", retryable=False
            ) from exc
        if definition.name != workflow:
            raise ActivityError(
                "Definitions.Invalid",
                f"{name} in {source.describe()} names workflow {definition.name!r}",
                retryable=False,
            )
        return definition

    if version is not None:
        definition = await parse(f"{workflow}/{version}.json")
        if definition is None:
            current = await parse(f"{workflow}.json")
            if current is not None and current.version == version:
                definition = current
    else:
        definition = await parse(f"{workflow}.json")
        if definition is None:
            versions = await _versions(source, workflow)
            if versions:
                definition = await parse(f"{workflow}/{versions[-1]}.json")
    if definition is None:
        versions = await _versions(source, workflow)
        which = f"version {version!r} of " if version else ""
        available = f"; versions available: {', '.join(versions)}" if versions else ""
        raise _not_found(f"no {which}workflow {workflow!r} in {source.describe()}{available}")
    if version is not None and definition.version != version:
        raise ActivityError(
            "Definitions.Invalid",
            f"{workflow}/{version}.json declares version {definition.version!r}",
            retryable=False,
        )
    return definition


async def load_workflow_definition(
    ctx: ActivityContext, request: LoadDefinitionInput
) -> LoadDefinitionOutput:
    """Read, parse and hash a workflow definition (validating it is definitions.validate)."""
    from interpreter.loader import definition_hash, dump_definition

    definition = await load_from(source_for(ctx.definitions), request.workflow, request.version)
    return LoadDefinitionOutput(
        definition=json.loads(dump_definition(definition)),
        hash=definition_hash(definition),
        version=definition.version,
    )


async def validate_workflow_definition(
    ctx: ActivityContext, request: ValidateDefinitionInput
) -> ValidateDefinitionOutput:
    """Every problem in the definition, against the default registry's activity names."""
    from interpreter.loader import read_definition
    from interpreter.validate import validate
    from tasks.registry import default_registry

    result = read_definition(json.dumps(request.definition))
    problems = list(result.problems)
    if result.definition is not None:
        problems.extend(validate(result.definition, activities=default_registry().names()))
    return ValidateDefinitionOutput(
        valid=not any(problem.is_error for problem in problems),
        problems=[problem.to_dict() for problem in problems],
    )


def register(registry: ActivityRegistry) -> None:
    registry.activity(
        name="definitions.load",
        description=(
            "Load a workflow definition by name and version from definitions/ or Azure Blob "
            "Storage; returns it with its hash."
        ),
        retry_safe=True,
        changes_state=False,
    )(load_workflow_definition)
    registry.activity(
        name="definitions.validate",
        description="Validate a definition against the language and the registered activities.",
        retry_safe=True,
        changes_state=False,
    )(validate_workflow_definition)
