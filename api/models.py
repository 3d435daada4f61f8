"""Request and response bodies of the management API (camelCase on the wire, like the messages)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

__all__ = [
    "DeviceEventRequest",
    "EventAccepted",
    "RaiseEventRequest",
    "StartWorkflowRequest",
    "TrailStep",
    "WorkflowStatus",
]

#: Instance ids become Prefect tags and idempotency keys: a conservative alphabet.
INSTANCE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,199}$"


class _Body(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


class StartWorkflowRequest(_Body):
    workflow_type: str = Field(pattern=NAME_PATTERN, description="Definition name")
    input: dict[str, Any] = Field(default_factory=dict)
    instance_id: str | None = Field(
        default=None,
        pattern=INSTANCE_ID_PATTERN,
        description="Starting the same instance id again returns the existing run",
    )
    version: str | None = Field(default=None, min_length=1, max_length=100)
    device_id: str | None = Field(default=None, min_length=1, max_length=128)


class RaiseEventRequest(_Body):
    payload: dict[str, Any] = Field(default_factory=dict)
    event_id: str | None = Field(default=None, min_length=1, max_length=200)


class DeviceEventRequest(RaiseEventRequest):
    name: str = Field(min_length=1, max_length=200)
    occurred_at: AwareDatetime | None = None


class TrailStep(_Body):
    state: str
    type: str
    visit: int
    outcome: str
    at: str | None = None


class WorkflowStatus(_Body):
    id: str
    instance_id: str | None
    name: str
    workflow_type: str | None
    device_id: str | None
    status: str = Field(description="Prefect state type: SCHEDULED, RUNNING, PAUSED, COMPLETED...")
    state_name: str = Field(description="Prefect state name, e.g. Suspended, Resuming")
    created_at: datetime | None
    last_updated_at: datetime | None
    current_state: str | None = Field(description="The workflow state the trail reached last")
    trail: list[TrailStep]
    trail_complete: bool = Field(description="True once the run published its final trail")


class EventAccepted(_Body):
    disposition: str
    device_id: str | None = None
    event_id: str | None = None
    recorded: str | None = None
    action: str | None = None
    run_id: str | None = None
    detail: str | None = None
