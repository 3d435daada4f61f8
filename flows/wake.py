"""What wakes a suspended run: the input a resume carries, and the subject events are keyed by."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from prefect.input import RunInput
from pydantic import ConfigDict, Field

__all__ = ["WakeInput", "event_subject"]


class WakeInput(RunInput):
    """The run input of a resume: an event has arrived for the wait, or its timer is due.

    Either way the run looks again in the event store before deciding: an event that arrived
    before the deadline wins over a timer that fired a little late.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    kind: Literal["event", "timer"]
    at: datetime
    #: The event that caused an event wake (the router sends it; the run claims from the store).
    event_id: str | None = Field(default=None, alias="eventId")


def event_subject(device_id: str | None, run_id: str) -> str:
    """The event-store key a run's waits read: its device, or ``run:<id>`` without a device."""
    return device_id if device_id else f"run:{run_id}"
