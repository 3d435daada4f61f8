"""Resuming a waiting run from outside, on the real Prefect server: what each resume path does.

Prefect's ``POST /api/flow_runs/{id}/resume`` (what the UI's Resume button sends) is validated
against the schema the waiting run registered (``flows.wake.wake_schema``): an operator delivers
the awaited event with a payload, or fires the timer now; anything the wait cannot use is
REJECTed with the reason and the run stays paused; an input only the run can judge is said in
its state message and it waits again at the same wait. The UI's form is that schema, read back
here from the server.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.integration.test_flow_harness import FlowSystem, flow_database_url, flow_system

__all__ = ["flow_database_url", "flow_system"]

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

#: An event wait whose timeout is far away (10 minutes): a run here is only resumed by the test.
EVENT = "event.json"

NO_TIMEOUT = {
    "name": "rt-event-no-timeout",
    "version": "1",
    "configuration": {"onFailure": "fail"},
    "startAt": "WaitReady",
    "states": {
        "WaitReady": {
            "type": "wait",
            "event": {"name": "device.ready", "resultPath": "$.state.ready"},
            "next": "Done",
        },
        "Done": {"type": "succeed", "output": {"ready": "$.state.ready"}},
    },
}

LONG_TIMER = {
    "name": "rt-long-timer",
    "version": "1",
    "configuration": {"onFailure": "fail"},
    "startAt": "Sleep",
    "states": {
        "Sleep": {"type": "wait", "seconds": 3600, "next": "Done"},
        "Done": {"type": "succeed", "output": {"slept": True}},
    },
}


def _tag(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _definition(flow_system: FlowSystem, body: dict[str, Any]) -> Path:
    path = flow_system.definitions_dir / f"{body['name']}-{uuid.uuid4().hex[:8]}.json"
    path.write_text(json.dumps(body))
    return path


async def _resume(prefect_server: Any, run_id: uuid.UUID, run_input: Any) -> dict[str, Any]:
    """Prefect's REST resume, as the UI and any HTTP client send it; the orchestration result."""
    async with httpx.AsyncClient(base_url=prefect_server.api_url, timeout=30) as http:
        response = await http.post(f"/flow_runs/{run_id}/resume", json={"run_input": run_input})
    assert response.status_code in (200, 201), response.text
    result: dict[str, Any] = response.json()
    return result


async def _resume_when_ready(
    prefect_server: Any, run_id: uuid.UUID, run_input: Any
) -> dict[str, Any]:
    """Resume once the run has saved its input schema (it suspends in two requests)."""
    end = time.monotonic() + 30
    while True:
        result = await _resume(prefect_server, run_id, run_input)
        reason = (result.get("details") or {}).get("reason")
        if result["status"] != "REJECT" or reason != "Run input schema not found.":
            return result
        if time.monotonic() > end:
            raise AssertionError(f"run {run_id} never saved its input schema")
        await asyncio.sleep(0.2)


async def _schema(prefect_server: Any, run_id: uuid.UUID) -> tuple[dict[str, Any], str]:
    """What the UI's Resume form renders: the paused state's keyset, its schema and description,
    read back from the server (``GET /api/flow_runs/{id}``, then ``/input/{key}``)."""
    end = time.monotonic() + 30
    async with httpx.AsyncClient(base_url=prefect_server.api_url, timeout=30) as http:
        run = (await http.get(f"/flow_runs/{run_id}")).json()
        keyset = run["state"]["state_details"]["run_input_keyset"]
        while True:
            schema = await http.get(f"/flow_runs/{run_id}/input/{keyset['schema']}")
            if schema.status_code == 200 or time.monotonic() > end:
                break
            await asyncio.sleep(0.2)
        description = await http.get(f"/flow_runs/{run_id}/input/{keyset['description']}")
    assert schema.status_code == 200, schema.text
    return schema.json(), description.json()


async def _trail_note(run_id: uuid.UUID, state: str) -> str:
    """The outcome of ``state``'s row on the run's final trail artifact."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.trail import TRAIL_DESCRIPTION

    end = time.monotonic() + 30
    async with get_client() as client:
        while True:
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
            )
            final = [a for a in artifacts if (a.description or "").startswith(TRAIL_DESCRIPTION)]
            if final:
                data: Any = final[0].data
                rows: list[dict[str, Any]] = json.loads(data) if isinstance(data, str) else data
                return str(next(row["outcome"] for row in rows if row["state"] == state))
            if time.monotonic() > end:
                raise AssertionError(f"no final trail for run {run_id}")
            await asyncio.sleep(0.2)


async def _waiting_again(flow_system: FlowSystem, run_id: uuid.UUID) -> Any:
    """The run once it has suspended again at the same wait (pause key ``<wait key>-r1``)."""

    def again(state: Any) -> bool:
        return bool(state.is_paused() and str(state.state_details.pause_key).endswith("-r1"))

    return await flow_system.wait_state(run_id, again, "suspended again at its wait")


async def _still_paused(flow_system: FlowSystem, run_id: uuid.UUID, key: str) -> Any:
    flow_run = await flow_system.read(run_id)
    assert flow_run.state.is_paused(), flow_run.state
    assert flow_run.state.state_details.pause_key == key
    return flow_run


# --- the UI's form -----------------------------------------------------------------------------


async def test_the_resume_form_offers_the_waits_event_and_timer_with_titles_and_descriptions(
    flow_system: FlowSystem, prefect_server: Any
) -> None:
    device = _tag("dev")
    run_id = await flow_system.start(EVENT, {"tag": _tag("form")}, device_id=device)
    await flow_system.suspended(run_id, "waitready")

    schema, description = await _schema(prefect_server, run_id)

    assert schema["title"] == "Resume this waiting run"
    assert "Deliver the event" in schema["description"]
    properties = schema["properties"]
    for name in ("action", "event", "payload", "eventId", "kind", "at"):
        assert properties[name]["title"], name
        assert properties[name]["description"], name
    assert properties["action"]["enum"] == ["deliver-event", "fire-timer"]
    assert properties["event"]["enum"] == ["device.ready"]
    assert properties["kind"]["title"].endswith("(leave empty)")
    assert "device.ready" in description and "fire-timer" in description
    assert f"waiting at WaitReady for event 'device.ready' of device {device}" in description


async def test_a_timer_waits_form_offers_only_fire_timer(
    flow_system: FlowSystem, prefect_server: Any
) -> None:
    run_id = await flow_system.start(_definition(flow_system, LONG_TIMER), {})
    await flow_system.suspended(run_id, "sleep")

    schema, _description = await _schema(prefect_server, run_id)

    assert schema["properties"]["action"]["enum"] == ["fire-timer"]
    assert "event" not in schema["properties"]
    assert "payload" not in schema["properties"]


# --- Prefect's REST resume ---------------------------------------------------------------------


async def test_an_empty_resume_is_refused_with_a_message_and_the_run_stays_paused(
    flow_system: FlowSystem, prefect_server: Any
) -> None:
    run_id = await flow_system.start(EVENT, {"tag": _tag("empty")}, device_id=_tag("dev"))
    flow_run = await flow_system.suspended(run_id, "waitready")
    key = flow_run.state.state_details.pause_key

    result = await _resume_when_ready(prefect_server, run_id, {})

    assert result["status"] == "REJECT"
    assert "'action' is a required property" in result["details"]["reason"]
    await _still_paused(flow_system, run_id, key)


async def test_a_delivered_event_is_recorded_in_the_store_and_taken_by_the_wait(
    flow_system: FlowSystem, prefect_server: Any
) -> None:
    from flows.runtime import get_resources

    tag, device = _tag("deliver"), _tag("dev")
    run_id = await flow_system.start(EVENT, {"tag": tag}, device_id=device)
    await flow_system.suspended(run_id, "waitready")

    result = await _resume_when_ready(
        prefect_server,
        run_id,
        {"action": "deliver-event", "payload": {"firmware": "3.0"}, "eventId": "op-1"},
    )

    assert result["status"] == "ACCEPT", result
    assert await flow_system.result(run_id) == {"ready": {"firmware": "3.0"}}
    assert await flow_system.effects(tag) == 1
    resources = await get_resources()
    (stored,) = await resources.events.list(device, name="device.ready")
    assert (stored.event_id, stored.payload) == ("op-1", {"firmware": "3.0"})
    assert (stored.consumed_by or "").startswith(f"{run_id}:"), stored.consumed_by
    assert "delivered by an operator's resume (event id op-1)" in await _trail_note(
        run_id, "WaitReady"
    )


async def test_fire_timer_takes_the_timeout_branch_now_and_the_trail_says_an_operator_did(
    flow_system: FlowSystem, prefect_server: Any
) -> None:
    run_id = await flow_system.start(EVENT, {"tag": _tag("fire")}, device_id=_tag("dev"))
    await flow_system.suspended(run_id, "waitready")
    due = await _due_at(run_id)

    result = await _resume_when_ready(prefect_server, run_id, {"action": "fire-timer"})

    assert result["status"] == "ACCEPT", result
    assert await flow_system.result(run_id) == {"timedOut": True}
    note = await _trail_note(run_id, "WaitReady")
    assert note.startswith("timeout (fired by an operator's resume at"), note
    assert due.strftime("%H:%M:%S UTC") in note


async def test_fire_timer_where_the_wait_has_no_timer_is_refused(
    flow_system: FlowSystem, prefect_server: Any
) -> None:
    path = _definition(flow_system, NO_TIMEOUT)
    run_id = await flow_system.start(path, {}, device_id=_tag("dev"))
    flow_run = await flow_system.suspended(run_id, "waitready")

    result = await _resume_when_ready(prefect_server, run_id, {"action": "fire-timer"})

    assert result["status"] == "REJECT"
    assert "'fire-timer' is not one of ['deliver-event']" in result["details"]["reason"]
    await _still_paused(flow_system, run_id, flow_run.state.state_details.pause_key)


@pytest.mark.parametrize(
    ("run_input", "words"),
    [
        ({"action": "deliver-event", "event": "device.gone"}, "'device.gone' is not one of"),
        ({"action": "open-sesame"}, "'open-sesame' is not one of"),
        ({"action": "deliver-event", "eventId": "no spaces"}, "does not match"),
        ({"action": "fire-timer", "payload": {"x": 1}}, "has too many properties"),
        ({"action": "fire-timer", "kind": "timer"}, "should not be valid under"),
        ({"kind": "timer", "at": "not a time"}, "'not a time' does not match"),
        ({"action": "deliver-event", "colour": "red"}, "'colour' was unexpected"),
    ],
    ids=[
        "other-event",
        "unknown-action",
        "bad-event-id",
        "fire-with-payload",
        "both",
        "bad-at",
        "extra",
    ],
)
async def test_a_malformed_resume_is_rejected_with_the_reason_and_the_run_stays_paused(
    flow_system: FlowSystem, prefect_server: Any, run_input: dict[str, Any], words: str
) -> None:
    run_id = await flow_system.start(EVENT, {"tag": _tag("bad")}, device_id=_tag("dev"))
    flow_run = await flow_system.suspended(run_id, "waitready")

    result = await _resume_when_ready(prefect_server, run_id, run_input)

    assert result["status"] == "REJECT", result
    assert words in result["details"]["reason"], result["details"]["reason"]
    await _still_paused(flow_system, run_id, flow_run.state.state_details.pause_key)


async def test_an_early_timer_wake_up_is_not_taken_and_the_run_says_why(
    flow_system: FlowSystem, prefect_server: Any
) -> None:
    run_id = await flow_system.start(EVENT, {"tag": _tag("early")}, device_id=_tag("dev"))
    await flow_system.suspended(run_id, "waitready")

    result = await _resume_when_ready(
        prefect_server, run_id, {"kind": "timer", "at": "2099-01-01T00:00:00+00:00"}
    )

    assert result["status"] == "ACCEPT", result
    again = await _waiting_again(flow_system, run_id)
    message = again.state.message
    assert message.startswith("waiting at WaitReady for event 'device.ready'"), message
    assert "last resume not used: a timer wake-up" in message
    assert "resume with action fire-timer" in message
    # Still the same wait: the operator can now take it.
    result = await _resume_when_ready(prefect_server, run_id, {"action": "fire-timer"})
    assert result["status"] == "ACCEPT", result
    assert await flow_system.result(run_id) == {"timedOut": True}


async def test_an_event_wake_up_with_no_event_stored_is_said_and_the_run_waits_again(
    flow_system: FlowSystem, prefect_server: Any
) -> None:
    tag, device = _tag("noevent"), _tag("dev")
    run_id = await flow_system.start(EVENT, {"tag": tag}, device_id=device)
    await flow_system.suspended(run_id, "waitready")

    result = await _resume_when_ready(prefect_server, run_id, {"kind": "event"})

    assert result["status"] == "ACCEPT", result
    again = await _waiting_again(flow_system, run_id)
    assert f"woken for event 'device.ready', but none is stored for {device}" in (
        again.state.message
    )
    await flow_system.send_event(device, "device.ready", {"late": True})
    assert await flow_system.result(run_id) == {"ready": {"late": True}}


async def _due_at(run_id: uuid.UUID) -> Any:
    from datetime import UTC, datetime

    from flows.runtime import get_resources

    resources = await get_resources()
    async with resources.db.transaction() as connection:
        due = await connection.scalar(
            text("SELECT due_at FROM waits WHERE run_id = :run ORDER BY created_at LIMIT 1"),
            {"run": str(run_id)},
        )
    assert isinstance(due, datetime), due
    return (due if due.tzinfo else due.replace(tzinfo=UTC)).astimezone(UTC)


# --- the management API ------------------------------------------------------------------------

API_KEY = "resume-test-" + uuid.uuid4().hex

STARTED_BY_HELLO = {
    "version": "1",
    "configuration": {"onFailure": "fail"},
    "startAt": "WaitReady",
    "states": {
        "WaitReady": {
            "type": "wait",
            "event": {"name": "device.ready", "timeoutSeconds": 600, "resultPath": "$.state.ready"},
            "next": "Done",
        },
        "Done": {"type": "succeed", "output": {"ready": "$.state.ready"}},
    },
}


async def test_the_apis_event_resumes_the_waiting_run_through_its_schema(
    flow_system: FlowSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``POST /workflows/{id}/events/{name}``: the router's resume (an internal ``event``
    wake-up with the event id) passes the wait's schema and the run takes the event."""
    from api.app import create_app
    from api.settings import ApiSettings

    name = _tag("api-resume")
    (flow_system.definitions_dir / f"{name}.json").write_text(
        json.dumps({"name": name, **STARTED_BY_HELLO})
    )
    monkeypatch.setenv("ORCH_INGRESS_WORKFLOW", name)
    settings = ApiSettings(api_keys=[API_KEY], deployment="run-workflow/flow-tests")
    app = create_app(settings, database_url=flow_system.database_url)
    device = _tag("dev")
    headers = {"X-API-Key": API_KEY}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as http,
    ):
        hello = await http.post(
            f"/devices/{device}/events", json={"name": "device.hello"}, headers=headers
        )
        assert hello.status_code == 202, hello.text
        assert hello.json()["action"] == "started", hello.json()
        run_id = uuid.UUID(hello.json()["runId"])
        await flow_system.suspended(run_id, "waitready")

        ready = await http.post(
            f"/workflows/{run_id}/events/device.ready",
            json={"payload": {"firmware": "4.2"}, "eventId": "api-ready-1"},
            headers=headers,
        )
        assert ready.status_code == 202, ready.text
        assert ready.json()["action"] in ("resumed", "deferred"), ready.json()
        assert await flow_system.result(run_id) == {"ready": {"firmware": "4.2"}}


async def test_the_apis_resume_delivers_the_event_or_refuses_with_the_reason(
    flow_system: FlowSystem,
) -> None:
    """``POST /workflows/{id}/resume`` takes the Resume form's input: 422 with the server's
    reason for what the wait cannot use (the run stays paused), 202 when the run takes it, 409
    once the run no longer waits."""
    from api.app import create_app
    from api.settings import ApiSettings

    tag, device = _tag("api-op"), _tag("dev")
    run_id = await flow_system.start(EVENT, {"tag": tag}, device_id=device)
    flow_run = await flow_system.suspended(run_id, "waitready")
    settings = ApiSettings(api_keys=[API_KEY], deployment="run-workflow/flow-tests")
    app = create_app(settings, database_url=flow_system.database_url)
    headers = {"X-API-Key": API_KEY}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as http,
    ):

        async def resume(body: Any) -> httpx.Response:
            end = time.monotonic() + 30
            while True:  # a run that has just suspended saves its input schema a moment later
                response = await http.post(
                    f"/workflows/{run_id}/resume", json=body, headers=headers
                )
                if "still suspending" not in response.text or time.monotonic() > end:
                    return response
                await asyncio.sleep(0.2)

        empty = await resume({})
        assert empty.status_code == 422, empty.text
        assert "'action' is a required property" in empty.text
        await _still_paused(flow_system, run_id, flow_run.state.state_details.pause_key)

        taken = await resume({"action": "deliver-event", "payload": {"firmware": "5.0"}})
        assert taken.status_code == 202, taken.text
        assert await flow_system.result(run_id) == {"ready": {"firmware": "5.0"}}

        again = await resume({"action": "fire-timer"})
        assert again.status_code == 409, again.text
        assert "not waiting" in again.json()["detail"]
