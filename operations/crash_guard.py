"""The crashed-run guard: marks a run Crashed only if, when it runs, the run is still active and
silent.

The crashed-run automation (``operations.automations``) fires when a run's heartbeats stop for the
crash window. It does not change the run's state itself: it starts a run of this flow (deployment
``crash-guard/crash-guard``), which reads the run again and marks it Crashed only when

- it is still Running or Pending (a run that has since suspended, paused, finished or been
  resumed is left alone),
- it has been in that state longer than the window, and
- its last heartbeat is older than the window.

Why not let the automation change the state: Prefect's heartbeat thread stops only at *final*
states, so a heartbeat sent in the same instant as a suspend reaches the server after the
Suspended event and reopens the trigger's window; nothing closes it again (a suspended run sends
nothing), and the trigger fires ~window later on a live, waiting run. A trigger cannot ask what
state the run is in now; this guard can.

What is left: the guard reads, then writes; a run that has been silent for the whole window and
suspends in the milliseconds between the two would still be marked. A silent run's process is
gone (heartbeats come from a thread, not the event loop), so this needs a live process that
stopped heartbeating, which Prefect does not do short of a final state.

``judge`` decides (pure, no I/O); ``guard`` reads and writes through a Prefect client; the flow
``crash_guard`` wraps it for the deployment.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from prefect import State, flow, get_run_logger

__all__ = ["GuardOutcome", "Verdict", "crash_guard", "guard", "judge"]

HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
#: Only these states hold a process that should be heartbeating.
GUARDED_STATE_TYPES = frozenset({"RUNNING", "PENDING"})


class Verdict(enum.StrEnum):
    CRASHED = "crashed"
    NOT_ACTIVE = "not-active"  # suspended, paused, final, scheduled: not ours to mark
    RECENT = "recent"  # entered its state inside the window: no heartbeat owed yet
    ALIVE = "alive"  # a heartbeat inside the window: the trigger saw a stale picture
    MISSING = "missing"  # no such run


@dataclass(frozen=True)
class GuardOutcome:
    verdict: Verdict
    state: str | None
    last_heartbeat: datetime | None


def judge(
    *,
    state_type: str | None,
    state_since: datetime | None,
    last_heartbeat: datetime | None,
    now: datetime,
    window: timedelta,
) -> Verdict:
    """Whether a run in ``state_type`` since ``state_since``, last heard at ``last_heartbeat``, is
    to be marked Crashed at ``now``."""
    if state_type is None:
        return Verdict.MISSING
    if state_type not in GUARDED_STATE_TYPES:
        return Verdict.NOT_ACTIVE
    horizon = now - window
    if state_since is not None and state_since > horizon:
        return Verdict.RECENT
    if last_heartbeat is not None and last_heartbeat > horizon:
        return Verdict.ALIVE
    return Verdict.CRASHED


async def last_heartbeat(client: Any, flow_run_id: UUID) -> datetime | None:
    """When the run last sent a heartbeat (the server's event store), or None."""
    from prefect.events.filters import (
        EventFilter,
        EventNameFilter,
        EventOccurredFilter,
        EventOrder,
        EventResourceFilter,
    )

    page = await client.read_events(
        filter=EventFilter(
            event=EventNameFilter(name=[HEARTBEAT_EVENT]),
            resource=EventResourceFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
            # Prefect's default looks one day back; a run silent that long is silent now too.
            occurred=EventOccurredFilter(),
            order=EventOrder.DESC,
        ),
        limit=1,
    )
    if not page.events:
        return None
    occurred: datetime = page.events[0].occurred
    return occurred


async def guard(
    client: Any, flow_run_id: UUID, window: timedelta, now: datetime | None = None
) -> GuardOutcome:
    """Read the run and its last heartbeat; mark it Crashed if ``judge`` says so."""
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Crashed

    try:
        run = await client.read_flow_run(flow_run_id)
    except ObjectNotFound:
        return GuardOutcome(Verdict.MISSING, None, None)
    state = run.state
    heard = await last_heartbeat(client, flow_run_id)
    verdict = judge(
        state_type=state.type.value if state is not None else None,
        state_since=state.timestamp if state is not None else None,
        last_heartbeat=heard,
        now=now or datetime.now(UTC),
        window=window,
    )
    name = state.name if state is not None else None
    if verdict is Verdict.CRASHED:
        seconds = f"{window.total_seconds():g}"
        await client.set_flow_run_state(
            flow_run_id,
            Crashed(
                message=(
                    f"No heartbeat for {seconds} s while {name}: the process running this flow "
                    "run is presumed dead (orchestration crash guard)."
                )
            ),
        )
    return GuardOutcome(verdict, name, heard)


@flow(name="crash-guard", persist_result=False)
async def crash_guard(flow_run_id: str, window_seconds: float) -> State[str]:
    """Mark ``flow_run_id`` Crashed if it is still Running/Pending and silent for the window.

    Plain ``str`` and ``float`` parameters: the automation renders them from a template, and
    Prefect builds its parameter model from these annotations (postponed ``UUID`` ones fail).
    The verdict is the guard run's state message (``crashed: ...``, ``not-active: ...``): readable
    in the UI and the API without persisting a result."""
    from prefect import get_client
    from prefect.states import Completed

    async with get_client() as client:
        outcome = await guard(client, UUID(flow_run_id), timedelta(seconds=window_seconds))
    heard = outcome.last_heartbeat.isoformat() if outcome.last_heartbeat else "never"
    summary = (
        f"{outcome.verdict.value}: flow run {flow_run_id} in state {outcome.state}, "
        f"last heartbeat {heard}"
    )
    get_run_logger().info(summary)
    return Completed(message=summary, data=outcome.verdict.value)
