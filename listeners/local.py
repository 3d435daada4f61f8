"""The local transport and the composition of ingress: store, Prefect control, router, pipeline.

``LocalIngress.send`` is the embedded default's way in (``orchestration send-event``): it builds
the same JSON message a producer would put on the queue, with the device id as session id, and
hands it to the same ``Ingress.process`` the Service Bus listener uses. Nothing after the transport
differs.

``open_ingress`` wires the parts for one process (CLI, bench, tests); it is the only place that
knows the concrete store and Prefect adapters.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from listeners.control import PrefectRunControl, RunControl
from listeners.eventlog import StoreEventLog
from listeners.events import IncomingMessage
from listeners.outbox import Reconciler
from listeners.pipeline import Ingress, Outcome
from listeners.router import DefinitionPin, Router
from listeners.settings import IngressSettings

if TYPE_CHECKING:
    from collections.abc import Sequence

    from store.runs import DeviceRunStore
    from store.settings import DatabaseSettings

__all__ = ["IngressRuntime", "LocalIngress", "event_message", "open_ingress", "reconciling"]


def event_message(
    device_id: str,
    name: str,
    payload: dict[str, Any] | None = None,
    *,
    event_id: str | None = None,
) -> IncomingMessage:
    """The message a producer sends for this event (body, message id, session id)."""
    event_id = event_id or str(uuid.uuid4())
    body = {"deviceId": device_id, "eventId": event_id, "name": name, "payload": payload or {}}
    return IncomingMessage(
        body=json.dumps(body, separators=(",", ":")).encode(),
        message_id=event_id,
        session_id=device_id,
    )


class LocalIngress:
    """Send device events in-process, through the same pipeline as the Service Bus listener."""

    def __init__(self, ingress: Ingress) -> None:
        self._ingress = ingress

    async def send(
        self,
        device_id: str,
        name: str,
        payload: dict[str, Any] | None = None,
        *,
        event_id: str | None = None,
    ) -> Outcome:
        return await self._ingress.process(
            event_message(device_id, name, payload, event_id=event_id)
        )

    async def send_raw(self, message: IncomingMessage) -> Outcome:
        return await self._ingress.process(message)

    async def send_many(self, messages: Sequence[IncomingMessage]) -> list[Outcome]:
        """Several messages as one batch (one database transaction); outcomes in order."""
        return await self._ingress.process_many(messages)


@dataclass
class IngressRuntime:
    """The wired parts of ingress for one process."""

    router: Router
    ingress: Ingress
    reconciler: Reconciler
    ledger: DeviceRunStore
    events: StoreEventLog
    control: RunControl

    @property
    def local(self) -> LocalIngress:
        return LocalIngress(self.ingress)


@asynccontextmanager
async def open_ingress(
    *,
    database_url: str | None,
    settings: IngressSettings,
    max_message_bytes: int = 256 * 1024,
    control: RunControl | None = None,
    max_events_per_device: int | None = None,
    database_settings: DatabaseSettings | None = None,
    definitions: DefinitionPin | None = None,
) -> AsyncIterator[IngressRuntime]:
    """Connect the database (migrated), open a Prefect client unless ``control`` is given, and
    wire router, pipeline and reconciler."""
    from store.db import Database
    from store.events import DEFAULT_MAX_EVENTS_PER_DEVICE, EventStore
    from store.runs import DeviceRunStore
    from store.waits import WaitStore

    async with AsyncExitStack() as stack:
        db = await Database.connect(database_url, settings=database_settings)
        stack.push_async_callback(db.close)
        if control is None:
            control = await stack.enter_async_context(
                PrefectRunControl(settings.deployment, timeout=settings.prefect_timeout)
            )
        events = StoreEventLog(
            EventStore(db, max_events_per_device or DEFAULT_MAX_EVENTS_PER_DEVICE)
        )
        ledger = DeviceRunStore(db)
        waits = WaitStore(db)
        router = Router(
            events=events,
            ledger=ledger,
            control=control,
            workflow=settings.workflow,
            workflow_version=settings.workflow_version,
            definitions=definitions,
        )
        reconciler = Reconciler(
            router=router, ledger=ledger, events=events, waits=waits, control=control
        )
        yield IngressRuntime(
            router=router,
            ingress=Ingress(router, max_message_bytes=max_message_bytes),
            reconciler=reconciler,
            ledger=ledger,
            events=events,
            control=control,
        )


@asynccontextmanager
async def reconciling(
    *,
    database_url: str | None,
    settings: IngressSettings,
    database_settings: DatabaseSettings | None = None,
) -> AsyncIterator[IngressRuntime]:
    """The outbox reconciler in the background for the block's duration, for a process that
    takes no events itself (``orchestration worker``): starts and resumes deferred by any
    ingress (``send-event``, the API, the listener) are finished even where no listener runs."""
    async with (
        open_ingress(
            database_url=database_url, settings=settings, database_settings=database_settings
        ) as runtime,
        runtime.reconciler.running(interval=settings.reconcile_interval),
    ):
        yield runtime
