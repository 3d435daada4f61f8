"""The management API through a real HTTP server (``orchestration serve-api`` in a subprocess on
127.0.0.1) against the real Prefect server: start (idempotent on the instance id, the definition
pinned at start), status, device events through the ingress path, terminate, health, and the bad
requests."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.api_process import REPO_ROOT, app_env, serve_api, workflow_deployment

pytestmark = [pytest.mark.integration]

KEY = "test-key-" + uuid.uuid4().hex
OTHER_KEY = "rotated-key-" + uuid.uuid4().hex
MAX_BODY = 4096


@pytest.fixture(scope="module")
def deployment(prefect_server: object) -> str:
    """A deployment of the real workflow flow, with no worker: its runs stay Scheduled unless a
    test executes one itself (as a process worker would)."""
    return workflow_deployment("api")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The API's files: a copy of definitions/ it reads from, the pinned store, its database."""
    return tmp_path_factory.mktemp("api")


@pytest.fixture(scope="module")
def api(deployment: str, workdir: Path) -> Iterator[str]:
    with serve_api(
        workdir, deployment=deployment, keys=(KEY, OTHER_KEY), max_body_bytes=str(MAX_BODY)
    ) as process:
        yield process.base_url
    # Secrets never reach the logs.
    text = (workdir / "api.log").read_text()
    assert KEY not in text and OTHER_KEY not in text


@pytest.fixture
def http(api: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api, headers={"X-API-Key": KEY}, timeout=30) as client:
        yield client


def test_health_and_docs_are_open(api: str) -> None:
    health = httpx.get(f"{api}/health")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "prefect": True}
    assert httpx.get(f"{api}/docs").status_code == 200
    paths = httpx.get(f"{api}/openapi.json").json()["paths"]
    assert {"/workflows", "/workflows/{workflow_id}", "/devices/{device_id}/events"} <= set(paths)
    assert "/workflows/{workflow_id}/events/{event_name}" in paths


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}])
def test_requests_without_a_valid_key_are_refused(api: str, headers: dict[str, str]) -> None:
    response = httpx.post(f"{api}/workflows", json={"workflowType": "x"}, headers=headers)
    assert response.status_code == 401
    assert httpx.get(f"{api}/workflows/abc", headers=headers).status_code == 401


def test_every_configured_key_is_accepted(api: str) -> None:
    response = httpx.get(f"{api}/workflows/no-such-instance", headers={"X-API-Key": OTHER_KEY})
    assert response.status_code == 404


def test_start_is_idempotent_on_instance_id_and_status_reads_it(http: httpx.Client) -> None:
    instance = f"inst-{uuid.uuid4().hex[:8]}"
    body = {
        "workflowType": "device-onboarding",
        "input": {"serial": "A1"},
        "instanceId": instance,
        "deviceId": "dev-1",
    }
    first = http.post("/workflows", json=body)
    second = http.post("/workflows", json=body)
    assert first.status_code == 202, first.text
    assert second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    started = first.json()
    assert started["instanceId"] == instance
    assert started["workflowType"] == "device-onboarding"
    assert started["deviceId"] == "dev-1"
    assert started["status"] == "SCHEDULED"
    assert started["trail"] == [] and started["trailComplete"] is False
    # Readable by run id and by instance id; other instance ids start other runs.
    by_id = http.get(f"/workflows/{started['id']}").json()
    by_instance = http.get(f"/workflows/{instance}").json()
    assert by_id["id"] == by_instance["id"] == started["id"]
    assert by_id["createdAt"] is not None and by_id["lastUpdatedAt"] is not None
    other = http.post(
        "/workflows", json={**body, "instanceId": instance + "-2", "deviceId": None}
    ).json()
    assert other["id"] != started["id"]


def _probe_definition(edition: str) -> str:
    return json.dumps(
        {
            "name": "pin-probe",
            "version": "1",
            "startAt": "Done",
            "states": {"Done": {"type": "succeed", "output": {"edition": edition}}},
        }
    )


def test_a_run_executes_the_definition_as_it_was_when_the_api_started_it(
    http: httpx.Client, workdir: Path
) -> None:
    from prefect import get_client
    from prefect.client.schemas.objects import StateType

    from interpreter.loader import definition_hash, load_definition

    path = workdir / "definitions" / "pin-probe.json"
    path.write_text(_probe_definition("first"), encoding="utf-8")
    started = http.post("/workflows", json={"workflowType": "pin-probe", "input": {}})
    assert started.status_code == 202, started.text
    run_id = uuid.UUID(started.json()["id"])
    expected = definition_hash(load_definition(_probe_definition("first")))
    # Same name, same version, different content: changed before any worker picked the run up.
    path.write_text(_probe_definition("second"), encoding="utf-8")

    async def run_it() -> tuple[dict[str, Any], Any]:
        async with get_client() as client:
            created = await client.read_flow_run(run_id)
            env = app_env(workdir)
            env["PREFECT__FLOW_RUN_ID"] = str(run_id)
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "prefect.engine", cwd=REPO_ROOT, env=env
            )
            assert await asyncio.wait_for(process.wait(), timeout=120) == 0
            finished = await client.read_flow_run(run_id)
            assert finished.state is not None and finished.state.type == StateType.COMPLETED
            return created.parameters, await finished.state.aresult()

    parameters, result = asyncio.run(run_it())
    assert result == {"edition": "first"}  # not "second": the file as it was at start
    assert parameters["definition_hash"] == expected
    pinned = workdir / "pinned" / expected[:2] / f"{expected}.json"
    assert pinned.is_file()


def test_starting_an_unknown_workflow_type_is_422_and_starts_nothing(http: httpx.Client) -> None:
    instance = f"unknown-{uuid.uuid4().hex[:8]}"
    body = {"workflowType": "no-such-flow", "instanceId": instance}
    response = http.post("/workflows", json=body)
    assert response.status_code == 422
    assert "no-such-flow" in response.json()["detail"]
    assert http.get(f"/workflows/{instance}").status_code == 404


def test_terminate_cancels_and_a_second_terminate_conflicts(http: httpx.Client) -> None:
    started = http.post("/workflows", json={"workflowType": "device-onboarding"}).json()
    terminated = http.delete(f"/workflows/{started['id']}")
    assert terminated.status_code == 200, terminated.text
    assert terminated.json()["status"] == "CANCELLED"
    again = http.delete(f"/workflows/{started['id']}")
    assert again.status_code == 409
    assert "already ended" in again.json()["detail"]


def test_device_events_take_the_ingress_path(http: httpx.Client) -> None:
    device = f"dev-{uuid.uuid4().hex[:8]}"
    event = {"name": "device.registered", "eventId": f"e-{uuid.uuid4().hex}", "payload": {"a": 1}}
    first = http.post(f"/devices/{device}/events", json=event)
    assert first.status_code == 202, first.text
    started = first.json()
    assert started["disposition"] == "complete"
    assert started["recorded"] == "recorded"
    assert started["action"] == "started"
    run_id = started["runId"]
    status = http.get(f"/workflows/{run_id}").json()
    assert status["deviceId"] == device
    assert status["workflowType"] == "device-decommission"
    # The router pinned the definition, as the API does for its own starts.

    async def parameters() -> dict[str, Any]:
        from prefect import get_client

        async with get_client() as client:
            return dict((await client.read_flow_run(uuid.UUID(run_id))).parameters)

    assert len(asyncio.run(parameters())["definition_hash"]) == 64
    # The same message again is a duplicate; the started run is the same.
    again = http.post(f"/devices/{device}/events", json=event).json()
    assert again["recorded"] == "duplicate"
    assert again["runId"] == run_id
    # Raising an event on the workflow routes to its device: recorded, the run is busy (it does
    # not wait for this event: nothing executes it in this test).
    raised = http.post(f"/workflows/{run_id}/events/device.ack", json={"payload": {"ok": True}})
    assert raised.status_code == 202, raised.text
    assert raised.json()["recorded"] == "recorded"
    assert raised.json()["action"] == "busy"
    assert raised.json()["runId"] == run_id


def test_a_device_run_started_by_the_api_takes_the_devices_events(http: httpx.Client) -> None:
    """The API claims the device as the router does: the device's next event routes to the API's
    run (busy here: nothing executes it) instead of starting a second run, and another start for
    the device is refused while that run is active."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    device = f"dev-{uuid.uuid4().hex[:8]}"
    body = {"workflowType": "device-onboarding", "deviceId": device}
    started = http.post("/workflows", json={**body, "instanceId": f"i-{device}"})
    assert started.status_code == 202, started.text
    run_id = started.json()["id"]
    # The same instance again is the same run, not a conflict.
    again = http.post("/workflows", json={**body, "instanceId": f"i-{device}"})
    assert again.status_code == 202 and again.json()["id"] == run_id

    event = {"name": "device.registered", "eventId": f"e-{uuid.uuid4().hex}", "payload": {}}
    routed = http.post(f"/devices/{device}/events", json=event)
    assert routed.status_code == 202, routed.text
    assert routed.json()["action"] in ("busy", "resumed")
    assert routed.json()["runId"] == run_id

    other = http.post("/workflows", json={**body, "instanceId": f"j-{device}"})
    assert other.status_code == 409, other.text
    assert device in other.json()["detail"]

    async def runs() -> list[Any]:
        async with get_client() as client:
            return await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"device:{device}"]))
            )

    assert [str(run.id) for run in asyncio.run(runs())] == [run_id]


def test_event_on_a_run_without_device_or_ended_conflicts(http: httpx.Client) -> None:
    started = http.post("/workflows", json={"workflowType": "device-onboarding"}).json()
    response = http.post(f"/workflows/{started['id']}/events/device.ack", json={})
    assert response.status_code == 409
    assert "no device" in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "workflowType"),
        ({"workflowType": "x", "surprise": 1}, "surprise"),
        ({"workflowType": "x", "instanceId": "has space"}, "instanceId"),
        ({"workflowType": "x", "input": [1, 2]}, "input"),
        ({"workflowType": ""}, "workflowType"),
    ],
)
def test_invalid_start_requests_are_422_with_details(
    http: httpx.Client, body: dict[str, Any], field: str
) -> None:
    response = http.post("/workflows", json=body)
    assert response.status_code == 422
    details = response.json()["detail"]
    assert any(field in [str(part) for part in d["loc"]] for d in details), details


def test_malformed_json_is_422(http: httpx.Client) -> None:
    response = http.post(
        "/workflows", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


def test_invalid_device_event_is_422(http: httpx.Client) -> None:
    response = http.post("/devices/dev-1/events", json={"payload": {}})
    assert response.status_code == 422
    assert any("name" in d["loc"] for d in response.json()["detail"])


def test_unknown_workflow_is_404(http: httpx.Client) -> None:
    assert http.get(f"/workflows/{uuid.uuid4()}").status_code == 404
    assert http.delete("/workflows/never-started").status_code == 404


def test_oversized_bodies_are_413(http: httpx.Client, api: str) -> None:
    big = {"workflowType": "x", "input": {"blob": "x" * MAX_BODY}}
    response = http.post("/workflows", json=big)
    assert response.status_code == 413
    # Without Content-Length (chunked), the body is counted as it arrives.

    def chunks() -> Iterator[bytes]:
        yield b'{"workflowType": "x", "input": {"blob": "'
        for _ in range(MAX_BODY // 512 + 2):
            yield b"x" * 512
        yield b'"}}'

    chunked = http.post(
        "/workflows", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert chunked.status_code == 413


def test_raw_socket_lying_content_length_is_refused(api: str) -> None:
    host, port = api.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /workflows HTTP/1.1\r\nHost: x\r\nX-API-Key: "
            + KEY.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 99999999\r\n\r\n{}"
        )
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413")


def test_a_start_whose_input_breaks_the_input_schema_is_422_naming_the_pointer(
    http: httpx.Client, workdir: Path
) -> None:
    schema = {
        "type": "object",
        "required": ["deviceId"],
        "properties": {"deviceId": {"type": "string"}, "retries": {"type": "integer"}},
    }
    definition = {
        "name": "schema-probe",
        "version": "1",
        "input": schema,
        "startAt": "Done",
        "states": {"Done": {"type": "succeed"}},
    }
    path = workdir / "definitions" / "schema-probe.json"
    path.write_text(json.dumps(definition), encoding="utf-8")
    instance = f"schema-{uuid.uuid4().hex[:8]}"
    body = {"workflowType": "schema-probe", "instanceId": instance}
    refused = http.post("/workflows", json={**body, "input": {"deviceId": "d", "retries": "x"}})
    assert refused.status_code == 422, refused.text
    [error] = refused.json()["detail"]
    assert error["loc"] == ["body", "input", "retries"]
    assert error["msg"].startswith('input /retries: expected type "integer"; got string')
    assert "'x'" not in refused.text  # the input's values are never echoed
    assert http.get(f"/workflows/{instance}").status_code == 404  # nothing was started
    started = http.post("/workflows", json={**body, "input": {"deviceId": "d", "retries": 2}})
    assert started.status_code == 202, started.text
    # A definition whose input schema is itself broken starts nothing either.
    path.write_text(json.dumps({**definition, "input": {"type": "objekt"}}), encoding="utf-8")
    broken = http.post("/workflows", json={"workflowType": "schema-probe", "input": {}})
    assert broken.status_code == 422, broken.text
    [error] = broken.json()["detail"]
    assert error["loc"] == ["body", "workflowType"]
    assert "/input/type" in error["msg"]
