"""What wakes a suspended run: the input a resume carries, its per-wait schema, and the subject
events are keyed by.

A suspended run registers the JSON schema of the input it accepts; Prefect's server validates
every ``POST /api/flow_runs/{id}/resume`` against it (REJECT with the reason otherwise, the run
stays paused) and the UI's Resume button renders it as a form. The schema is built per wait by
``wake_schema`` from ``WakeInput``'s field titles and descriptions, so it only offers what the
wait can use:

- an operator's ``action``: ``deliver-event`` (the event the wait expects, name fixed, with a
  JSON ``payload`` and an optional ``eventId``; recorded in the device's event store like any
  device event, then taken by the wait) or ``fire-timer`` (take the timer or the event timeout
  now; offered only when the wait has one);
- the internal wake-ups ``kind`` (``event``: the resumer or the router found the awaited event
  stored; ``timer``: the resumer found the deadline passed), with ``at`` and ``eventId``.

``{}``, an unknown action, another event name, an action the wait has no use for, a payload or
event id with ``fire-timer``, or ``action`` and ``kind`` together are refused by the server.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from prefect.input import RunInput
from pydantic import ConfigDict, Field, JsonValue, PrivateAttr, ValidationError

from interpreter.jsonsafe import ID_PATTERN

__all__ = [
    "DELIVER_EVENT",
    "FIRE_TIMER",
    "WakeInput",
    "event_subject",
    "wake_description",
    "wake_schema",
]

#: The operator actions a waiting run offers.
DELIVER_EVENT = "deliver-event"
FIRE_TIMER = "fire-timer"

#: What ``at`` must look like (``datetime.isoformat()``, with or without an offset, or ``Z``).
RFC3339 = r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})?$"

TITLE = "Resume this waiting run"
DESCRIPTION = (
    "Deliver the event the run waits for (with its payload), or fire its timer now. "
    "Choose an action; the other fields belong to the internal wake-ups of the resumer and "
    "the event router and stay empty."
)


class WakeInput(RunInput):
    """The run input of a resume: an operator's action, or an internal wake-up (``kind``)."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        title=TITLE,
        json_schema_extra={"description": DESCRIPTION},
    )

    action: Literal["deliver-event", "fire-timer"] | None = Field(
        default=None,
        title="Action",
        description=(
            "deliver-event: record the event this run waits for, with the payload below, in the "
            "device's event store, and let the run take it. fire-timer: take the timer (or the "
            "event's timeout branch) now, before its deadline; offered only when the wait has a "
            "timer or a timeout."
        ),
    )
    event: str | None = Field(
        default=None,
        title="Event",
        description=(
            "The name of the event to deliver: only the one this wait expects (empty: that one)."
        ),
    )
    payload: JsonValue = Field(
        default=None,
        title="Payload",
        description=(
            "The event's payload as JSON, exactly as a device would send it "
            "(deliver-event only; stored where the wait's resultPath says)."
        ),
    )
    #: The event that caused an event wake (the router sends it), or the id an operator's
    #: delivered event is recorded under (the same id twice is recorded once).
    event_id: str | None = Field(
        default=None,
        alias="eventId",
        title="Event id",
        description=(
            "Optional id of the delivered event (letters, digits, '.', '_', ':', '-'): the same "
            "id is recorded once. Empty: the run makes one from its id and the wait."
        ),
    )
    kind: Literal["event", "timer"] | None = Field(
        default=None,
        title="Internal wake-up (leave empty)",
        description=(
            "Set by the resumer and the event router, not by operators: 'event' when the "
            "awaited event is in the store, 'timer' when the deadline has passed by the run's "
            "own clock (an early one is not taken: use fire-timer)."
        ),
    )
    at: datetime | None = Field(
        default=None,
        title="Sent at (internal, leave empty)",
        description="When the internal wake-up was sent (for the record: the run reads its clock).",
    )

    #: Why a stored input could not be read (written around the server, or by an older version).
    _problem: str | None = PrivateAttr(default=None)

    @classmethod
    def read(cls, value: Any) -> WakeInput:
        """The stored input of a resume. The server validated it against the wait's schema,
        which this model accepts; one it cannot read comes back empty with ``problem`` set, for
        the driver to refuse with a message rather than fail the run."""
        try:
            return cls.model_validate(value if value is not None else {})
        except ValidationError as exc:
            wake = cls()
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "the input"
            wake._problem = f"unreadable resume input at {where}: {first['msg']}"
            return wake

    @property
    def problem(self) -> str | None:
        """Why the stored input could not be read, or None."""
        return self._problem

    @property
    def how(self) -> str:
        """What resolved the wait, for the wait store: the action or the kind of wake-up."""
        if self.action is not None:
            return f"operator:{self.action}"
        return self.kind or "empty"


def wake_schema(event: str | None, has_deadline: bool) -> dict[str, Any]:
    """The JSON schema of the input a wait accepts: what the server validates and the UI renders.

    ``event`` is the event the wait expects (None for a timer); ``has_deadline`` says whether it
    has a timer or a timeout, i.e. whether ``fire-timer`` and the ``timer`` wake-up apply.
    """
    fields = WakeInput.model_fields
    actions = ([DELIVER_EVENT] if event is not None else []) + (
        [FIRE_TIMER] if has_deadline else []
    )
    kinds = (["event"] if event is not None else []) + (["timer"] if has_deadline else [])

    def described(name: str, **schema: Any) -> dict[str, Any]:
        field = fields[name]
        return {"title": field.title, "description": field.description, **schema}

    properties: dict[str, Any] = {
        "action": described("action", type="string", enum=actions, default=actions[0]),
    }
    if event is not None:
        # No default: the UI fills defaults in, and an event name next to fire-timer is refused.
        properties["event"] = described("event", type="string", enum=[event])
        properties["payload"] = described("payload")
        properties["eventId"] = described("event_id", type="string", pattern=ID_PATTERN)
    # The server meta-validates this schema on every resume before it checks the input
    # (jsonschema's ``check_schema``: about 1 ms per subschema and 1.5 ms more per ``type``; it
    # was the largest part of the server's work per resumed run, 29 ms, now 16 ms), so the
    # internal fields carry no ``type`` (their enum and pattern say enough; the run parses them
    # itself) and the rules use as few subschemas as say the same.
    properties["kind"] = described("kind", enum=kinds)
    # The server checks no ``format``: the pattern refuses what is not an RFC 3339 time.
    properties["at"] = described("at", pattern=RFC3339)
    rules: list[dict[str, Any]] = [
        # An internal wake-up has a kind and no action; anything else needs an action:
        # ``{}`` gets "'action' is a required property", both together "should not be valid".
        {
            "if": {"required": ["kind"]},
            "then": {"not": {"required": ["action"]}},
            "else": {"required": ["action"]},
        },
    ]
    if event is not None:
        # Firing the timer delivers nothing: a payload, an event or an event id there would be
        # dropped ("... has too many properties": fire-timer takes the action alone).
        fire = {"properties": {"action": {"const": FIRE_TIMER}}, "required": ["action"]}
        rules.append({"if": fire, "then": {"maxProperties": 1}})
    return {
        "title": TITLE,
        "description": DESCRIPTION,
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
        "allOf": rules,
    }


def wake_description(message: str, event: str | None, until: datetime | None) -> str:
    """The markdown the UI shows above the Resume form: what the run waits for, what each action
    does."""
    lines = [f"**This run is {message}.**", ""]
    if event is not None:
        lines.append(
            f"- **deliver-event**: record `{event}` with the payload you give in the device's "
            "event store (like any device event) and let the run take it now."
        )
    if until is not None:
        branch = "its timeout branch" if event is not None else "the step after the timer"
        lines.append(f"- **fire-timer**: do not wait for the deadline; the run takes {branch} now.")
    lines += ["", "Anything this wait cannot use is refused and the run stays paused."]
    return "\n".join(lines)


def event_subject(device_id: str | None, run_id: str) -> str:
    """The event-store key a run's waits read: its device, or ``run:<id>`` without a device."""
    return device_id if device_id else f"run:{run_id}"
