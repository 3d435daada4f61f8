"""The Service Bus the listener tests talk to: the fake broker from ``../shared``, or a real one.

``start_broker(shared_dir, ...)`` starts ``tools/fake-servicebus/fake_servicebus.py`` as a
subprocess on a free port (fresh queues each time) and returns its connection string once the port
accepts connections. When ``ORCH_TEST_SB_CONNECTION_STRING`` is set, the same tests run against
that namespace instead (queue ``ORCH_TEST_SB_QUEUE``, default ``device-events``, session-enabled);
tests that depend on the fake's knobs (lock duration, delivery count) check ``broker.fake``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.postgres import free_port

START_DEADLINE_SECONDS = 30


@dataclass
class Broker:
    connection_string: str
    queue: str
    fake: bool
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None:
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def real_namespace() -> Broker | None:
    connection_string = os.environ.get("ORCH_TEST_SB_CONNECTION_STRING")
    if not connection_string:
        return None
    queue = os.environ.get("ORCH_TEST_SB_QUEUE", "device-events")
    return Broker(connection_string, queue, fake=False)


def start_broker(
    shared_dir: Path,
    log_dir: Path,
    *,
    queue: str = "device-events",
    lock_duration: float = 5.0,
    max_delivery: int = 3,
    max_size: int = 256 * 1024,
) -> Broker:
    real = real_namespace()
    if real is not None:
        return real
    script = shared_dir / "tools" / "fake-servicebus" / "fake_servicebus.py"
    port = free_port()
    log_path = log_dir / f"fake-servicebus-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                str(script),
                "--port",
                str(port),
                "--queue",
                queue,
                "--lock-duration",
                str(lock_duration),
                "--max-delivery",
                str(max_delivery),
                "--max-size",
                str(max_size),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    connection_string = (
        f"Endpoint=sb://localhost:{port};SharedAccessKeyName=k;SharedAccessKey=v;"
        "UseDevelopmentEmulator=true;"
    )
    broker = Broker(connection_string, queue, True, process, log_path)
    deadline = time.monotonic() + START_DEADLINE_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"fake Service Bus exited early:\n{broker.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return broker
        except OSError:
            time.sleep(0.1)
    broker.stop()
    raise RuntimeError(f"fake Service Bus not listening after {START_DEADLINE_SECONDS}s")
