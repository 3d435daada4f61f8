"""``events.get`` and ``events.clear``: the device's accumulated events, from the event store.

``deviceId`` defaults to the run's device (``ActivityContext.device_id``, ``$.system.deviceId``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from interpreter.errors import ActivityError
from tasks.registry import ActivityInput, ActivityOutput

if TYPE_CHECKING:
    from tasks.context import ActivityContext
    from tasks.registry import ActivityRegistry

__all__ = ["ClearEventsInput", "ClearEventsOutput", "GetEventsInput", "GetEventsOutput", "register"]


class GetEventsInput(ActivityInput):
    device_id: str | None = Field(default=None, min_length=1, max_length=200)
    name: str | None = Field(default=None, min_length=1, max_length=200)
    since_sequence: int | None = Field(default=None, ge=0)


class GetEventsOutput(ActivityOutput):
    events: list[dict[str, Any]]
    count: int
    names: list[str] = Field(description="The distinct event names, sorted")


class ClearEventsInput(ActivityInput):
    device_id: str | None = Field(default=None, min_length=1, max_length=200)


class ClearEventsOutput(ActivityOutput):
    cleared: int


def _device(ctx: ActivityContext, given: str | None) -> str:
    device_id = given or ctx.device_id
    if not device_id:
        raise ActivityError(
            "States.InvalidInput",
            "deviceId is missing and the run has no device",
            retryable=False,
        )
    return device_id


async def get_events(ctx: ActivityContext, request: GetEventsInput) -> GetEventsOutput:
    """The device's held events in sequence order (optionally one name, after a sequence)."""
    events = await ctx.require_events().list(
        _device(ctx, request.device_id),
        since_sequence=request.since_sequence,
        name=request.name,
    )
    return GetEventsOutput(
        events=[event.as_json() for event in events],
        count=len(events),
        names=sorted({event.name for event in events}),
    )


async def clear_events(ctx: ActivityContext, request: ClearEventsInput) -> ClearEventsOutput:
    """Clear the device's held events; report how many."""
    cleared = await ctx.require_events().clear(_device(ctx, request.device_id))
    return ClearEventsOutput(cleared=cleared)


def register(registry: ActivityRegistry) -> None:
    registry.activity(
        name="events.get",
        description="The device's accumulated events (deviceId defaults to the run's device).",
        retry_safe=True,
        changes_state=False,
    )(get_events)
    registry.activity(
        name="events.clear",
        description="Clear the device's accumulated events; returns how many were cleared.",
        retry_safe=True,
        changes_state=True,
    )(clear_events)
