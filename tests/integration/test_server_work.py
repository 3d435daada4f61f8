"""What one workflow run asks of the Prefect server, request by request (the throughput issue:
the server's CPU per run is the limit).

The requests are counted on the wire: ``httpx.AsyncClient.send`` is wrapped, every request still
goes to the real server (PostgreSQL-backed) and its answer comes back unchanged. The run starts,
suspends at its wait, is woken by its event and completes, in the session's executor.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.test_flow_harness import FlowSystem, flow_database_url, flow_system

__all__ = ["flow_database_url", "flow_system"]

pytestmark = pytest.mark.integration

#: (method, path, JSON body, JSON answer)
Sent = tuple[str, str, Any, Any]


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Sent]]:
    """Every request sent from this process while the test runs, with the server's answer."""
    seen: list[Sent] = []
    send = httpx.AsyncClient.send

    async def counted(self: httpx.AsyncClient, request: httpx.Request, **kwargs: Any) -> Any:
        body = json.loads(request.content) if request.content else None
        response = await send(self, request, **kwargs)
        raw = await response.aread()  # read once; the caller gets the same bytes
        try:
            answer = json.loads(raw) if raw else None
        except ValueError:
            answer = None
        seen.append((request.method, request.url.path, body, answer))
        return response

    monkeypatch.setattr(httpx.AsyncClient, "send", counted)
    yield seen


def _of(sent: list[Sent], run_id: uuid.UUID) -> list[Sent]:
    return [entry for entry in sent if f"/flow_runs/{run_id}" in entry[1]]


async def test_a_resumed_run_proposes_each_state_once(
    flow_system: FlowSystem, sent: list[Sent]
) -> None:
    """Claim, start, suspend; claim, start, complete: the replay after the resume does not
    propose ``Suspended`` again at the wait it already passed (the server refused it: "already
    fired", a state transition's work per wait per replay)."""
    device = f"dev-{uuid.uuid4().hex[:8]}"
    run_id = await flow_system.start("event.json", {"tag": "work"}, device_id=device)
    await flow_system.suspended(run_id, "waitready")
    await flow_system.idle()
    await flow_system.send_event(device, "device.ready", {"firmware": "3"})
    assert await flow_system.result(run_id) == {"ready": {"firmware": "3"}}

    # Only what the server accepted is the run's path: under load a Pending proposal can be sent
    # more than once without taking (in one CI run, 22 such for one run: the client's retries
    # of a slow answer, or claims that lost); the Suspended one must be accepted, and alone.
    proposed = [
        (body["state"]["type"], (answer or {}).get("status"))
        for method, path, body, answer in _of(sent, run_id)
        if method == "POST" and path.endswith("/set_state")
    ]
    accepted = [state for state, status in proposed if status == "ACCEPT"]
    assert accepted == ["PENDING", "RUNNING", "PAUSED", "PENDING", "RUNNING", "COMPLETED"]
    assert [status for state, status in proposed if state == "PAUSED"] == ["ACCEPT"], proposed


async def test_the_engines_update_of_a_run_is_sent_only_when_it_changes_something(
    flow_system: FlowSystem, sent: list[Sent]
) -> None:
    """Prefect's engine sends the run's flow version and retry policy at the start of every
    execution; the executor sends it when it differs from what the server has (the first
    execution), not again on the execution after a resume."""
    device = f"dev-{uuid.uuid4().hex[:8]}"
    run_id = await flow_system.start("event.json", {"tag": "work"}, device_id=device)
    await flow_system.suspended(run_id, "waitready")
    await flow_system.idle()
    await flow_system.send_event(device, "device.ready", {"firmware": "3"})
    await flow_system.result(run_id)

    engine_updates = [
        body
        for method, path, body, _answer in _of(sent, run_id)
        if method == "PATCH" and "flow_version" in (body or {})
    ]
    assert len(engine_updates) == 1, engine_updates
    run = await flow_system.read(run_id)
    assert run.flow_version == engine_updates[0]["flow_version"]
