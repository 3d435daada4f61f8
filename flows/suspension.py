"""Suspend a run at a wait and say what it waits for (Prefect's suspend, with a state message).

``prefect.flow_runs.asuspend_flow_run`` proposes a bare ``Suspended`` state and logs "Suspending
flow run..." on every call, replays included, so an operator learns nothing from a waiting run.
``suspend`` proposes ``Suspended`` with a message naming the event or timer and its deadline,
registers the input this wait accepts (``flows.wake.wake_schema``: what the server validates a
resume against and the UI's Resume form renders, with a markdown description above the form),
logs that message once (only when the run really suspends, not when a replay passes the wait
again), and calls ``on_suspended`` (the trail so far) before the process lets the run go. It
follows Prefect 3.9.1's ``asuspend_flow_run`` step by step (the version is pinned; the flow tests
suspend and resume through it at every kind of wait).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID

from prefect._flow_run_suspension import mark_flow_run_suspension_requested
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import Abort, Pause, PrefectHTTPStatusError
from prefect.input import keyset_from_paused_state
from prefect.states import Suspended
from prefect.utilities.engine import propose_state

from flows.wake import WakeInput

__all__ = ["suspend", "waiting_message"]

Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]


def waiting_message(
    path: str, event: str | None, subject: str | None, until: datetime | None
) -> str:
    """What a waiting run waits for: ``waiting at <state> for event '<name>' of device <id>
    until <deadline>`` (or ``for its timer until <due>``)."""
    if event is None:
        what = "for its timer"
    else:
        what = f"for event {event!r}"
        if subject and not subject.startswith("run:"):  # ``run:<id>``: a run without a device
            what += f" of device {subject}"
    deadline = f" until {_when(until)}" if until is not None else " (no deadline)"
    return f"waiting at {path} {what}{deadline}"


async def _stored_input(client: PrefectClient, flow_run_id: UUID, keyset: Any) -> WakeInput:
    """The input that resumed this wait (empty when none was stored)."""
    try:
        text = await client.read_flow_run_input(flow_run_id, keyset["response"])
    except PrefectHTTPStatusError as exc:
        if exc.response.status_code != 404:
            raise
        return WakeInput.read(None)
    return WakeInput.read(json.loads(text))


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


async def suspend(
    key: str,
    message: str,
    *,
    logger: Logger,
    schema: dict[str, Any],
    description: str,
    on_suspended: Callable[[], Awaitable[None]] | None = None,
) -> WakeInput:
    """Suspend the current run at the wait ``key``; on a replay, the input that resumed it.

    ``schema`` is the JSON schema of the input a resume must carry (``wake_schema``) and
    ``description`` the markdown the UI shows above its form. Raises ``Pause`` once the server
    holds the run Suspended (the executor lets the run go). A second suspend with the same
    ``key`` returns the stored ``WakeInput`` at once.
    """
    if TaskRunContext.get():
        raise RuntimeError("a task run cannot suspend its flow run")
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        raise RuntimeError("only a flow run can suspend itself")
    flow_run_id = context.flow_run.id
    # No server-side timeout: the resumer delivers deadlines (a server timeout would fail the
    # run, which a workflow's timeoutNext never wants).
    proposed: State[Any] = Suspended(timeout_seconds=None, pause_key=key, message=message)
    keyset = keyset_from_paused_state(proposed)
    if key in (context.flow_run.empirical_policy.pause_keys or set()):
        # A replay passing a wait that suspended and was resumed: the server would refuse the
        # proposal ("already fired": it decides on these keys, which only this execution's own
        # suspend changes after it read them), so it is not asked, a state proposal fewer per
        # wait per replay.
        async with get_client() as client:
            return await _stored_input(client, flow_run_id, keyset)
    # A Keyset is a dict of three literal keys; the state's field is typed as a plain dict.
    proposed.state_details.run_input_keyset = cast("dict[str, str]", keyset)
    async with get_client() as client:
        try:
            state = await propose_state(client=client, state=proposed, flow_run_id=flow_run_id)
        except Abort as exc:
            raise RuntimeError(f"flow run {flow_run_id} cannot be suspended: {exc}") from exc
        if state.is_running():
            # The server refused: this wait suspended before and the run was resumed since.
            return await _stored_input(client, flow_run_id, keyset)
        if not state.is_paused():
            raise RuntimeError(
                f"flow run {flow_run_id} cannot be suspended: the server answered {state}"
            )
        # The description first: once the schema is there the run can be resumed (the resumer
        # and the router retry until then, "Run input schema not found.").
        await client.create_flow_run_input(
            flow_run_id, keyset["description"], json.dumps(description)
        )
        await client.create_flow_run_input(flow_run_id, keyset["schema"], json.dumps(schema))
    logger.info("%s (suspended; wait key %s)", message, key)
    if on_suspended is not None:
        try:
            await on_suspended()
        except Exception as exc:  # what the page shows must not fail the run
            logger.warning("could not publish the trail so far: %s: %s", type(exc).__name__, exc)
    mark_flow_run_suspension_requested(flow_run_id, state)
    raise Pause(state=state)
