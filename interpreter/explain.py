"""A readable summary of a definition: states, activities used, events waited for, compensations.

``explain`` returns plain data (``orchestration explain --output json``); ``explain_text`` renders
it for people. State paths are ``/``-joined through branches, as in the engine's keys
(``UpdateAndNotify/0/NotifyOperators``).
"""

from __future__ import annotations

from typing import Any

from interpreter.graph import describe_state
from interpreter.models import (
    CompensationState,
    FailState,
    SucceedState,
    TaskState,
    WaitState,
    WorkflowDefinition,
)
from interpreter.validate import scopes

__all__ = ["explain", "explain_text"]


def explain(definition: WorkflowDefinition) -> dict[str, Any]:
    """The summary as JSON-ready data."""
    states: list[dict[str, Any]] = []
    activities: dict[str, list[str]] = {}
    events: list[dict[str, Any]] = []
    compensations: list[dict[str, Any]] = []
    compensation_states: list[dict[str, Any]] = []
    outcomes: list[dict[str, Any]] = []
    for scope in scopes(definition):
        for name, state in scope.states.items():
            path = f"{scope.label}/{name}" if scope.label else name
            entry: dict[str, Any] = {"path": path, "type": state.type}
            if detail := describe_state(state):
                entry["detail"] = detail
            if state.comment:
                entry["comment"] = state.comment
            states.append(entry)
            if isinstance(state, TaskState):
                activities.setdefault(state.activity, []).append(path)
                if state.compensate is not None:
                    compensations.append(
                        {
                            "state": path,
                            "activity": state.activity,
                            "undoneBy": state.compensate.activity,
                        }
                    )
            elif isinstance(state, WaitState):
                if state.event is not None:
                    events.append(
                        {
                            "state": path,
                            "event": state.event.name,
                            "timeoutSeconds": state.event.timeout_seconds,
                            "timeoutNext": state.event.timeout_next,
                        }
                    )
            elif isinstance(state, CompensationState):
                compensation_states.append(
                    {"state": path, "undoes": state.states or "all", "then": state.next}
                )
                if state.next is None:
                    outcomes.append({"state": path, "status": "failed", "error": state.error})
            elif isinstance(state, SucceedState):
                outcomes.append({"state": path, "status": "succeeded"})
            elif isinstance(state, FailState):
                outcomes.append({"state": path, "status": "failed", "error": state.error})
    return {
        "name": definition.name,
        "version": definition.version,
        "description": definition.metadata.description,
        "startAt": definition.start_at,
        "onFailure": definition.configuration.on_failure,
        "states": states,
        "activities": {name: activities[name] for name in sorted(activities)},
        "events": events,
        "compensations": compensations,
        "compensationStates": compensation_states,
        "outcomes": outcomes,
    }


def explain_text(definition: WorkflowDefinition) -> str:
    """The summary for people."""
    data = explain(definition)
    lines = [f"{data['name']} {data['version']}"]
    if data["description"]:
        lines.append(f"  {data['description']}")
    lines.append(f"  starts at {data['startAt']}; on an uncaught failure: {data['onFailure']}")
    lines.append("")
    lines.append(f"States ({len(data['states'])}):")
    for state in data["states"]:
        detail = f" ({state['detail']})" if "detail" in state else ""
        lines.append(f"  {state['path']}: {state['type']}{detail}")
    lines.append("")
    lines.append("Activities used:")
    for activity, paths in data["activities"].items():
        lines.append(f"  {activity}: {', '.join(paths)}")
    lines.append("")
    lines.append("Events waited for:" if data["events"] else "Events waited for: none")
    for event in data["events"]:
        if event["timeoutSeconds"] is None:
            timeout = "no timeout"
        else:
            then = f", then {event['timeoutNext']}" if event["timeoutNext"] else ", then fail"
            timeout = f"timeout {event['timeoutSeconds']:g}s{then}"
        lines.append(f"  {event['event']} at {event['state']} ({timeout})")
    lines.append("")
    lines.append("Compensations:" if data["compensations"] else "Compensations: none")
    for comp in data["compensations"]:
        lines.append(f"  {comp['state']} ({comp['activity']}) is undone by {comp['undoneBy']}")
    for comp in data["compensationStates"]:
        undoes = "every completed task" if comp["undoes"] == "all" else ", ".join(comp["undoes"])
        then = f"then {comp['then']}" if comp["then"] else "then the run fails"
        lines.append(f"  {comp['state']} undoes {undoes}, newest first; {then}")
    lines.append("")
    lines.append("Outcomes:")
    for outcome in data["outcomes"]:
        error = f" with {outcome['error']}" if "error" in outcome else ""
        lines.append(f"  {outcome['state']}: {outcome['status']}{error}")
    return "\n".join(lines) + "\n"
