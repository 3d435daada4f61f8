"""Structured logs carry the context fields and never a secret; metrics are named orchestration.*
and reach the reader; the Azure exporter is optional and says what is missing."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)

from operations.observability import (
    configure_logging,
    configure_metrics,
    log_context,
    redact,
)


@pytest.fixture
def log_lines() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = configure_logging("INFO", stream=stream)
    yield logging.getLogger("tests.observability"), stream
    logging.getLogger().removeHandler(handler)


def _records(stream: io.StringIO) -> list[dict[str, str]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_context_fields_come_from_the_block_and_from_extra(
    log_lines: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = log_lines
    with log_context(device_id="dev-1", message_id="m-1"):
        logger.info("routed", extra={"state_name": "WaitForAck", "flow_run_id": "run-1"})
        with log_context(message_id="m-2"):
            logger.info("nested")
    logger.info("outside")
    routed, nested, outside = _records(stream)
    assert routed["device_id"] == "dev-1" and routed["message_id"] == "m-1"
    assert routed["state_name"] == "WaitForAck" and routed["flow_run_id"] == "run-1"
    assert nested["device_id"] == "dev-1" and nested["message_id"] == "m-2"
    assert "device_id" not in outside and outside["message"] == "outside"


def test_unknown_context_field_is_refused() -> None:
    with pytest.raises(ValueError) as caught, log_context(tenant="x"):
        pass
    assert "tenant" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Endpoint=sb://ns/;SharedAccessKeyName=root;SharedAccessKey=abcDEF123=", "abcDEF123="),
        ("InstrumentationKey=1234-5678;IngestionEndpoint=https://x", "1234-5678"),
        ("postgresql://user:s3cret@db:5432/app", "s3cret"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload", "eyJhbGciOiJIUzI1NiJ9.payload"),
        ('{"X-API-Key": "k-123456"}', "k-123456"),
    ],
)
def test_secrets_are_masked(
    text: str, secret: str, log_lines: tuple[logging.Logger, io.StringIO]
) -> None:
    assert secret not in redact(text)
    logger, stream = log_lines
    logger.warning("config %s", text)
    assert secret not in stream.getvalue()
    assert "***" in stream.getvalue()


def test_metrics_are_recorded_under_orchestration_names() -> None:
    reader = InMemoryMetricReader()
    m = configure_metrics(reader=reader)
    m.run_duration.record(12.5, {"workflow": "device-onboarding", "outcome": "completed"})
    m.state_duration.record(3.0, {"workflow": "w", "state": "WaitForAck", "state_type": "wait"})
    m.device_events.add(2, {"event": "device.registered", "action": "started"})
    m.activity_failures.add(1, {"activity": "http.request", "error": "Timeout"})
    m.dead_letters.add(1, {"reason": "SchemaViolation"})
    m.listener_lag.record(0.25, {"transport": "servicebus"})
    data = reader.get_metrics_data()
    assert data is not None
    points = {
        metric.name: metric.data.data_points
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
    }
    assert set(points) == {
        "orchestration.run.duration",
        "orchestration.state.duration",
        "orchestration.device.events",
        "orchestration.activity.failures",
        "orchestration.dead_letters",
        "orchestration.listener.lag",
    }
    events = points["orchestration.device.events"][0]
    duration = points["orchestration.run.duration"][0]
    assert isinstance(events, NumberDataPoint) and events.value == 2
    assert isinstance(duration, HistogramDataPoint) and duration.sum == 12.5


def test_azure_without_the_package_says_what_to_install() -> None:
    with pytest.raises(RuntimeError) as caught:
        configure_metrics(environ={"APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=x"})
    assert "azure-monitor-opentelemetry-exporter" in str(caught.value)


def test_unknown_exporter_is_refused() -> None:
    with pytest.raises(ValueError) as caught:
        configure_metrics(environ={"ORCH_OTEL_EXPORTER": "prometheus"})
    assert "console, azure or none" in str(caught.value)


def _exported(environ: dict[str, str]) -> str:
    """What a fresh process prints on stdout after recording one metric and flushing."""
    import os
    import subprocess
    import sys

    code = (
        "from operations import observability as o\n"
        "m = o.configure_metrics()\n"
        "m.device_events.add(1, {'event': 'device.registered', 'action': 'started'})\n"
        "assert o._provider is not None\n"
        "o._provider.force_flush()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_OTEL", "APPLICATION"))}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "ORCH_OTEL_EXPORT_INTERVAL_SECONDS": "3600", **environ},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


def test_metrics_are_not_printed_unless_asked() -> None:
    # Issue 10: the console exporter was the default and flooded every process's stdout.
    assert _exported({}) == ""
    assert "orchestration.device.events" in _exported({"ORCH_OTEL_EXPORTER": "console"})
