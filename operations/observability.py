"""Structured logs and OpenTelemetry metrics for every process of the system.

Logs: ``configure_logging()`` installs a JSON formatter on the root logger. Every record carries
``device_id``, ``message_id``, ``flow_run_id`` and ``state_name`` when known: from the record's
``extra``, else from ``log_context(...)`` (a contextvar, so concurrent runs in one process do not
mix), else the Prefect run context for ``flow_run_id``. Known secret shapes (connection-string keys,
passwords, bearer tokens, API keys) are masked in every message before it is written.

Metrics: ``metrics()`` returns the process's instruments, all named ``orchestration.*``:

=====================================  =========  ==========================================
name                                   kind       attributes
=====================================  =========  ==========================================
orchestration.run.duration             histogram  workflow, outcome (seconds)
orchestration.state.duration           histogram  workflow, state, state_type (seconds)
orchestration.device.events            counter    event (name), action (started/resumed/busy)
orchestration.activity.failures        counter    activity, error
orchestration.dead_letters             counter    reason
orchestration.listener.lag             histogram  transport (seconds from enqueue to handling)
=====================================  =========  ==========================================

Device ids are deliberately not metric attributes (a fleet would explode the series count); the
per-device view comes from the logs, which carry ``device_id``.

Export (``configure_metrics``): ``ORCH_OTEL_EXPORTER`` = ``none`` (default), ``azure`` or
``console``. With ``APPLICATIONINSIGHTS_CONNECTION_STRING`` set, the default becomes ``azure``;
Azure needs the optional ``azure-monitor-opentelemetry-exporter`` package and says so when it is
missing. ``console`` prints every instrument as JSON on stdout each interval: for a look by hand,
never the default (it flooded a worker's output: 10,672 lines in 16 minutes).
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from opentelemetry.metrics import Counter, Histogram, Meter, MeterProvider
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource

__all__ = [
    "CONTEXT_FIELDS",
    "JsonFormatter",
    "Metrics",
    "configure_logging",
    "configure_metrics",
    "log_context",
    "metrics",
    "redact",
]

CONTEXT_FIELDS = ("device_id", "message_id", "flow_run_id", "state_name")
AZURE_CONNECTION_ENV = "APPLICATIONINSIGHTS_CONNECTION_STRING"
AZURE_PACKAGE = "azure-monitor-opentelemetry-exporter"

_context: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "orchestration_log_context", default=MappingProxyType({})
)

# Names whose value is a secret: ``access_token``, ``client-secret``, ``x-api-key``, ``auth``,
# ``AccountKey``... The name may carry a prefix (``refresh_``, ``Shared``); the separator must
# follow it at once, so ``author=`` or ``keyboard:`` are left alone.
_CREDENTIAL_NAMES = (
    r"[\w.-]*?(?:SharedAccessKey|AccountKey|InstrumentationKey|password|passwd|pwd|sig|"
    r"api[_-]?key|key|secret|token|auth|authorization|credentials?)"
)

# Each pattern: (what stays before)(the secret)(what stays after).
_SECRET_PATTERNS = (
    # name=value in connection strings and query strings
    re.compile(rf"(?i)(\b{_CREDENTIAL_NAMES}=)([^;&\s\"']+)()"),
    # "name": "value" in JSON (escaped quotes inside the value included)
    re.compile(rf"(?i)([\"']{_CREDENTIAL_NAMES}[\"']\s*:\s*\")((?:[^\"\\]|\\.)*)(\")"),
    re.compile(rf"(?i)([\"']{_CREDENTIAL_NAMES}[\"']\s*:\s*')((?:[^'\\]|\\.)*)(')"),
    # name: value in headers and YAML-ish text
    re.compile(rf"(?i)(\b{_CREDENTIAL_NAMES}:[ \t]*)((?!Bearer\b|Basic\b)[^\"'\s,}}]+)()"),
    re.compile(r"(?i)(\b(?:Bearer|Basic)\s+)([A-Za-z0-9._~+/=-]{8,})()"),
    # user:password@ in URLs
    re.compile(r"(?i)(://[^:/@\s]+:)([^@\s]+)(@)"),
    # webhook URLs carry their token in the path (Slack, Teams, Discord, most others): a host or
    # a path segment that names a hook keeps nothing of the path after it
    re.compile(r"(?i)(https?://[^/\s\"'<>]*hook[^/\s\"'<>]*/)([^\s\"'<>?#]+)()"),
    re.compile(
        r"(?i)(https?://[^/\s\"'<>]+/(?:[^/\s\"'<>]+/)*?[^/\s\"'<>]*hook[^/\s\"'<>]*/)"
        r"([^\s\"'<>?#]+)()"
    ),
)


def redact(text: str) -> str:
    """Mask the secret part of anything that looks like a credential."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: f"{m.group(1)}***{m.group(3)}", text)
    return text


@contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Attach ``device_id``/``message_id``/``flow_run_id``/``state_name`` to every log line in
    this block (and in tasks it starts)."""
    unknown = set(fields) - set(CONTEXT_FIELDS)
    if unknown:
        raise ValueError(f"unknown log context fields {sorted(unknown)}; use {CONTEXT_FIELDS}")
    merged = {**_context.get(), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def _prefect_flow_run_id() -> str | None:
    if "prefect.context" not in sys.modules:  # never import Prefect just to log
        return None
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return None
    return str(context.flow_run.id)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the context fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        context = _context.get()
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None) or context.get(name)
            if value is None and name == "flow_run_id":
                value = _prefect_flow_run_id()
            if value is not None:
                data[name] = str(value)
        if record.exc_info:
            data["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(data, ensure_ascii=False, default=str)


def configure_logging(level: str | int = "INFO", *, stream: Any = None) -> logging.Handler:
    """Send the root logger's records as JSON lines to ``stream`` (stderr); returns the handler.

    Every other console handler (Prefect's rich console on the root, ``uvicorn``'s and
    ``fastapi``'s) is replaced by this one (``logtext.route_to_json``): one format per process.
    Prefect installs its handlers when it is imported, so a process imports it first."""
    from operations.logtext import route_to_json

    handler = route_to_json(stream or sys.stderr)
    logging.getLogger().setLevel(level)
    return handler


@dataclass(frozen=True)
class Metrics:
    """The instruments; record with ``metrics().run_duration.record(seconds, {...})``."""

    run_duration: Histogram
    state_duration: Histogram
    device_events: Counter
    activity_failures: Counter
    dead_letters: Counter
    listener_lag: Histogram

    @classmethod
    def from_meter(cls, meter: Meter) -> Metrics:
        return cls(
            run_duration=meter.create_histogram(
                "orchestration.run.duration", unit="s", description="Workflow run duration"
            ),
            state_duration=meter.create_histogram(
                "orchestration.state.duration", unit="s", description="Time spent in a state"
            ),
            device_events=meter.create_counter(
                "orchestration.device.events", unit="{event}", description="Device events routed"
            ),
            activity_failures=meter.create_counter(
                "orchestration.activity.failures",
                unit="{failure}",
                description="Activity attempts that failed",
            ),
            dead_letters=meter.create_counter(
                "orchestration.dead_letters", unit="{message}", description="Dead-lettered messages"
            ),
            listener_lag=meter.create_histogram(
                "orchestration.listener.lag",
                unit="s",
                description="From enqueue to the listener handling the message",
            ),
        )


_provider: MeterProvider | None = None
_metrics: Metrics | None = None


def _azure_exporter(connection_string: str) -> MetricExporter:
    try:
        from azure.monitor.opentelemetry.exporter import (  # type: ignore[import-untyped, import-not-found, unused-ignore]  # optional, untyped
            AzureMonitorMetricExporter,
        )
    except ImportError as exc:
        raise RuntimeError(
            f"{AZURE_CONNECTION_ENV} is set but the optional package {AZURE_PACKAGE} is not "
            f"installed: `pip install {AZURE_PACKAGE}`, or set ORCH_OTEL_EXPORTER=console"
        ) from exc
    exporter: MetricExporter = AzureMonitorMetricExporter(connection_string=connection_string)
    return exporter


def configure_metrics(
    *,
    exporter: str | None = None,
    reader: MetricReader | None = None,
    service_name: str = "orchestration",
    environ: Mapping[str, str] | None = None,
) -> Metrics:
    """Install the meter provider once per process; ``reader`` overrides the export (tests)."""
    global _provider, _metrics
    env = os.environ if environ is None else environ
    if reader is None:
        connection = env.get(AZURE_CONNECTION_ENV)
        kind = (exporter or env.get("ORCH_OTEL_EXPORTER") or "").lower()
        if not kind:
            kind = "azure" if connection else "none"
        interval_ms = float(env.get("ORCH_OTEL_EXPORT_INTERVAL_SECONDS", "60")) * 1000
        if kind == "none":
            readers: list[MetricReader] = []
        elif kind == "azure":
            if not connection:
                raise RuntimeError(f"ORCH_OTEL_EXPORTER=azure needs {AZURE_CONNECTION_ENV}")
            readers = [PeriodicExportingMetricReader(_azure_exporter(connection), interval_ms)]
        elif kind == "console":
            readers = [PeriodicExportingMetricReader(ConsoleMetricExporter(), interval_ms)]
        else:
            raise ValueError(f"ORCH_OTEL_EXPORTER={kind!r}: expected console, azure or none")
    else:
        readers = [reader]
    provider = SdkMeterProvider(
        metric_readers=readers, resource=Resource.create({"service.name": service_name})
    )
    _provider = provider
    _metrics = Metrics.from_meter(provider.get_meter("orchestration"))
    return _metrics


def metrics() -> Metrics:
    """The process's instruments; the first call configures the export from the environment."""
    if _metrics is None:
        return configure_metrics()
    return _metrics
