"""``records.create/update/get/rollbackCreate``: business records through ``store.records``.

``records.create`` is idempotent twice over: the registry runs it once per idempotency key, and
the insert itself is keyed (one live record per ``kind`` and ``key``), the business ``key``
defaulting to the step's idempotency key. The second half is what makes a create that succeeded
and then failed before its result was recorded (a crash, a lost connection) safe to retry: the
retry finds the row the first attempt inserted instead of inserting another.
``records.rollbackCreate`` is its compensation: the record is kept for the audit trail with status
``rolled_back`` and its business key released; rolling back twice, or a record that does not
exist, is not an error (``rolledBack`` says whether the record is rolled back now).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from interpreter.errors import ActivityError
from tasks.registry import ActivityInput, ActivityOutput

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from store.records import Record
    from tasks.context import ActivityContext
    from tasks.registry import ActivityRegistry

__all__ = [
    "CreateRecordInput",
    "GetRecordInput",
    "RecordOutput",
    "RollbackCreateInput",
    "RollbackCreateOutput",
    "UpdateRecordInput",
    "register",
]

KIND = Field(min_length=1, max_length=200)
RECORD_ID = Field(min_length=1, max_length=36)


class CreateRecordInput(ActivityInput):
    kind: str = KIND
    data: dict[str, Any] = Field(default_factory=dict)
    key: str | None = Field(
        default=None,
        min_length=1,
        max_length=512,
        description="Business key: one live record per kind and key (default: the step's key)",
    )


class UpdateRecordInput(ActivityInput):
    id: str = RECORD_ID
    data: dict[str, Any] | None = None
    status: str | None = Field(default=None, min_length=1, max_length=50)


class GetRecordInput(ActivityInput):
    id: str = RECORD_ID


class RollbackCreateInput(ActivityInput):
    id: str = RECORD_ID


class RecordOutput(ActivityOutput):
    id: str
    kind: str
    key: str | None
    data: dict[str, Any]
    status: str
    created_at: str
    updated_at: str


class RollbackCreateOutput(ActivityOutput):
    id: str
    rolled_back: bool


def _output(record: Record) -> RecordOutput:
    return RecordOutput.model_validate(record.as_json())


async def _mapped(action: Callable[[], Awaitable[Record]]) -> RecordOutput:
    """The store's refusals as non-retryable activity errors a definition can catch."""
    from store.errors import RecordNotFoundError, RecordStateError

    try:
        return _output(await action())
    except RecordNotFoundError as exc:
        raise ActivityError("Records.NotFound", str(exc), retryable=False) from exc
    except RecordStateError as exc:
        raise ActivityError("Records.InvalidState", str(exc), retryable=False) from exc
    except ValueError as exc:
        raise ActivityError("States.InvalidInput", str(exc), retryable=False) from exc


async def create_record(ctx: ActivityContext, request: CreateRecordInput) -> RecordOutput:
    """A new record (or the live one of this kind with this key; see the module docstring)."""
    records = ctx.require_records()
    key = request.key or ctx.idempotency_key
    return await _mapped(lambda: records.create(request.kind, request.data, key))


async def update_record(ctx: ActivityContext, request: UpdateRecordInput) -> RecordOutput:
    """Merge ``data`` into the record (top-level keys replaced) and set ``status``."""
    records = ctx.require_records()
    return await _mapped(lambda: records.update(request.id, request.data, request.status))


async def get_record(ctx: ActivityContext, request: GetRecordInput) -> RecordOutput:
    """The record (``Records.NotFound`` when there is none)."""
    records = ctx.require_records()
    return await _mapped(lambda: records.require(request.id))


async def rollback_create(
    ctx: ActivityContext, request: RollbackCreateInput
) -> RollbackCreateOutput:
    """Compensation of ``records.create``: mark the record rolled back, release its key."""
    rolled_back = await ctx.require_records().delete(request.id)
    return RollbackCreateOutput(id=request.id, rolled_back=rolled_back)


def register(registry: ActivityRegistry) -> None:
    registry.activity(
        name="records.create",
        description="Create a business record (idempotent on the step key and the business key).",
        retry_safe=True,
        changes_state=True,
    )(create_record)
    registry.activity(
        name="records.update",
        description="Merge data into a record and set its status.",
        retry_safe=True,
        changes_state=True,
    )(update_record)
    registry.activity(
        name="records.get",
        description="Read a record by id.",
        retry_safe=True,
        changes_state=False,
    )(get_record)
    registry.activity(
        name="records.rollbackCreate",
        description="Compensation of records.create: mark the record rolled back, release its key.",
        retry_safe=True,
        changes_state=True,
    )(rollback_create)
