"""An operator's event, delivered through a resume: recorded like any device event, then taken.

A resume with ``action: deliver-event`` (the UI's Resume form, or Prefect's
``POST /api/flow_runs/{id}/resume``) carries the event the wait expects and its payload.
``deliver_event`` records it in the device's event store (the accumulator, idempotent on the
event id: a replay records nothing twice) and claims exactly that event for the wait. What the
store cannot take (another event under the same id, a full device, a value the database
refuses) or an id another wait already took comes back as a refusal with the reason; the
driver says it and keeps waiting. The driver journals the answer, so a replay neither records
nor decides again.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from flows.runtime import get_resources
from store.errors import EventRefusedError
from store.events import DeviceEvent

__all__ = ["deliver_event"]


async def deliver_event(
    subject: str, name: str, payload: Any, event_id: str, claim_key: str
) -> dict[str, Any]:
    """Record the event for ``subject`` and claim it for ``claim_key`` (``<run id>:<wait key>``).

    Returns ``{"payload", "at", "eventId"}`` once it is the wait's, else ``{"refused": reason}``.
    """
    resources = await get_resources()
    try:
        event = DeviceEvent(device_id=subject, event_id=event_id, name=name, payload=payload)
        recorded = await resources.events.record(event)
    except ValidationError as exc:
        return {"refused": f"event {event_id!r} cannot be recorded: {exc.errors()[0]['msg']}"}
    except EventRefusedError as exc:
        return {"refused": f"event {event_id!r} cannot be stored: {exc}"}
    if recorded.status == "conflict":
        return {"refused": f"event id {event_id!r} is already stored with other content"}
    if recorded.status == "overflow" or recorded.sequence is None:
        return {"refused": f"the event store of {subject} is full; event {event_id!r} not stored"}
    after = recorded.sequence - 1
    if recorded.status == "duplicate":
        # Stored before: take it only if no other wait has (claim would skip to a later one).
        stored = await resources.events.list(subject, since_sequence=after, limit=1)
        if not stored or stored[0].event_id != event_id:
            return {"refused": f"event {event_id!r} is no longer held for {subject}"}
        if stored[0].consumed_by not in (None, claim_key):
            return {"refused": f"event {event_id!r} was taken by another wait already"}
    claimed = await resources.events.claim(subject, name, claim_key, since_sequence=after)
    if claimed is None or claimed.event_id != event_id:
        return {"refused": f"event {event_id!r} was taken by another wait already"}
    return {"payload": claimed.payload, "at": datetime.now(UTC).isoformat(), "eventId": event_id}
