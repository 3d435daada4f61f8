"""``python -m drills.holding_listener``: ``orchestration listen`` with drill hooks, so drill 1c
can kill the listener at exactly "routed, not yet completed", and drill 6 can make handling
outlast the session lock.

Composed as the command composes it (settings from ``ORCH_SB_*``, ``ORCH_INGRESS_*``,
``ORCH_DB_URL``, definitions pinned, the outbox reconciler beside it). The hooks wrap the real
router, for the events the drill marked with a file in ``<ORCH_DRILL_HOLD_DIR>``:

- ``<event id>.hold``: after its batch is recorded and routed, write ``<event id>.routed`` and do
  not settle the batch until ``<event id>.release`` exists;
- ``<event id>.slow-before`` / ``.slow-after``: the first time this process handles the event,
  wait ``ORCH_DRILL_SLOW_SECONDS`` before recording its batch / after routing it (a redelivery
  passes straight through).

``ORCH_DRILL_LOCK_RENEWAL_SECONDS`` caps the session lock renewal (the listener's
``lock_renewal_seconds``; 0: never renewed), so a slow batch loses its lock mid-handling.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flows.definitions import DefinitionPinner
from listeners.events import IncomingEvent
from listeners.local import open_ingress
from listeners.pipeline import Ingress
from listeners.servicebus import ServiceBusListener, listen
from listeners.settings import IngressSettings, ServiceBusSettings
from store.settings import DatabaseSettings


class HoldingRouter:
    """The real router; marked events stop the batch after routing."""

    def __init__(self, router: Any, hold_dir: Path, slow_seconds: float = 0.0) -> None:
        self._router = router
        self._dir = hold_dir
        self._slow_seconds = slow_seconds
        self._slowed: set[str] = set()

    async def _slow(self, events: Sequence[IncomingEvent], when: str) -> None:
        """Wait once per marked event (the first handling only)."""
        for event in events:
            if event.event_id in self._slowed:
                continue
            mark = (self._dir / event.event_id).with_suffix(f".slow-{when}")
            if await asyncio.to_thread(mark.exists):
                self._slowed.add(event.event_id)
                logging.getLogger("drills").warning(
                    "event=%s slow %s handling: %gs", event.event_id, when, self._slow_seconds
                )
                await asyncio.sleep(self._slow_seconds)

    async def handle_many(self, events: Sequence[IncomingEvent], /) -> Any:
        await self._slow(events, "before")
        results = await self._router.handle_many(events)
        await self._slow(events, "after")
        for event in events:
            mark = self._dir / event.event_id
            held = await asyncio.to_thread(mark.with_suffix(".hold").exists)
            if held and not await asyncio.to_thread(mark.with_suffix(".release").exists):
                await asyncio.to_thread(mark.with_suffix(".routed").touch)
                await self._released(mark.with_suffix(".release"))
        return results

    @staticmethod
    async def _released(release: Path) -> None:
        """Until the drill releases it (never, when the drill kills this process first)."""
        while not await asyncio.to_thread(release.exists):  # noqa: ASYNC110 - a file, not a task
            await asyncio.sleep(0.05)


async def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for noisy in ("azure", "uamqp", "httpx", "prefect"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    sb = ServiceBusSettings()
    settings = IngressSettings()
    async with open_ingress(
        database_url=DatabaseSettings().url,
        settings=settings,
        max_message_bytes=sb.max_message_bytes,
        definitions=DefinitionPinner.from_environment(),
    ) as rt:
        slow = float(os.environ.get("ORCH_DRILL_SLOW_SECONDS", "0"))
        holding = HoldingRouter(rt.router, Path(os.environ["ORCH_DRILL_HOLD_DIR"]), slow)
        ingress = Ingress(holding, max_message_bytes=sb.max_message_bytes)

        async def reconcile(stop: asyncio.Event) -> None:
            await rt.reconciler.run(stop, interval=settings.reconcile_interval)

        renewal = os.environ.get("ORCH_DRILL_LOCK_RENEWAL_SECONDS")
        if renewal is None:
            await listen(sb, ingress, reconcile=reconcile)
            return
        # As ``listen`` runs it, with the renewal capped (no signal handlers: SIGKILL ends it).
        listener = ServiceBusListener(sb, ingress, lock_renewal_seconds=float(renewal))
        stop = asyncio.Event()
        reconciler = asyncio.create_task(reconcile(stop))
        logging.getLogger("drills").info(
            "listening on queue %s, lock renewal capped at %ss", sb.queue_name, renewal
        )
        try:
            await listener.run()
        finally:
            stop.set()
            await reconciler


if __name__ == "__main__":
    asyncio.run(main())
