"""Request and response bodies of the management API (camelCase on the wire, like the messages)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from interpreter import jsonsafe
from listeners.events import require_utc_range

__all__ = [
    "DeviceEventRequest",
    "EventAccepted",
    "RaiseEventRequest",
    "StartWorkflowRequest",
    "TrailStep",
    "WorkflowStatus",
]

#: Device, event and instance ids: the one id rule (``interpreter.jsonsafe``), the event
#: ingress's too. They become session ids, Prefect tags, idempotency keys and database keys.
ID_PATTERN = jsonsafe.ID_PATTERN
INSTANCE_ID_PATTERN = ID_PATTERN
#: Workflow types and event names (in the body as in the path).
NAME_PATTERN = jsonsafe.NAME_PATTERN
#: A definition version names a file: what the definitions source accepts.
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"


def _json_safe(value: dict[str, Any]) -> dict[str, Any]:
    # The HTTP body passed the strict parse already; this holds for every other caller too.
    jsonsafe.check_value(value)
    return value


def _utc_range(value: datetime | None) -> datetime | None:
    if value is not None:
        require_utc_range(value)
    return value


#: A JSON object every store and Prefect can hold (no NaN, NUL, lone surrogates, huge integers).
JsonObject = Annotated[dict[str, Any], AfterValidator(_json_safe)]


class _Body(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


class StartWorkflowRequest(_Body):
    workflow_type: str = Field(pattern=NAME_PATTERN, description="Definition name")
    input: JsonObject = Field(default_factory=dict)
    instance_id: str | None = Field(
        default=None,
        pattern=INSTANCE_ID_PATTERN,
        description="Starting the same instance id again returns the existing run",
    )
    version: str | None = Field(default=None, pattern=VERSION_PATTERN)
    device_id: str | None = Field(default=None, pattern=ID_PATTERN)


class RaiseEventRequest(_Body):
    payload: JsonObject = Field(default_factory=dict)
    event_id: str | None = Field(default=None, pattern=ID_PATTERN)


class DeviceEventRequest(RaiseEventRequest):
    name: str = Field(pattern=NAME_PATTERN)
    occurred_at: Annotated[AwareDatetime | None, AfterValidator(_utc_range)] = None


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
    state_message: str | None = Field(
        default=None,
        description="The Prefect state's message: what a waiting run waits for and until when, "
        "why a failed run failed",
    )
    current_state: str | None = Field(description="The workflow state the trail reached last")
    trail: list[TrailStep]
    trail_complete: bool = Field(description="True once the run published its final trail")
    output: Any = Field(default=None, description="A completed run's output (JSON)")


class EventAccepted(_Body):
    disposition: str
    device_id: str | None = None
    event_id: str | None = None
    recorded: str | None = None
    action: str | None = None
    run_id: str | None = None
    detail: str | None = None
