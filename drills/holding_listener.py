"""``python -m drills.holding_listener``: ``orchestration listen`` with one drill hook, so drill 1c
can kill the listener at exactly "routed, not yet completed".

Composed as the command composes it (settings from ``ORCH_SB_*``, ``ORCH_INGRESS_*``,
``ORCH_DB_URL``, definitions pinned, the outbox reconciler beside it). The hook wraps the real
router: after a batch is recorded and routed, each event the drill marked (a file
``<ORCH_DRILL_HOLD_DIR>/<event id>.hold``) writes ``<event id>.routed`` and the batch is not
settled until ``<event id>.release`` exists.
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
from listeners.servicebus import listen
from listeners.settings import IngressSettings, ServiceBusSettings
from store.settings import DatabaseSettings


class HoldingRouter:
    """The real router; marked events stop the batch after routing."""

    def __init__(self, router: Any, hold_dir: Path) -> None:
        self._router = router
        self._dir = hold_dir

    async def handle_many(self, events: Sequence[IncomingEvent], /) -> Any:
        results = await self._router.handle_many(events)
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
        holding = HoldingRouter(rt.router, Path(os.environ["ORCH_DRILL_HOLD_DIR"]))
        ingress = Ingress(holding, max_message_bytes=sb.max_message_bytes)

        async def reconcile(stop: asyncio.Event) -> None:
            await rt.reconciler.run(stop, interval=settings.reconcile_interval)

        await listen(sb, ingress, reconcile=reconcile)


if __name__ == "__main__":
    asyncio.run(main())
