"""``python -m tests.support.listener_proc``: the real listener in its own process, for kill tests.

Composed like ``orchestration listen`` (settings from ``ORCH_SB_*``, ``ORCH_INGRESS_*`` and
``ORCH_DB_URL``), with one test hook around the real router: an event whose payload has
``"hold": true`` is recorded and routed, then ``<ORCH_TEST_HOLD_DIR>/<event id>.routed`` is
written and the message is not settled until ``<event id>.release`` exists, so a test can kill
or stop the process at exactly that point.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from listeners.events import IncomingEvent
from listeners.local import open_ingress
from listeners.pipeline import Ingress
from listeners.router import Router, RouteResult
from listeners.servicebus import listen
from listeners.settings import IngressSettings, ServiceBusSettings


class HoldingRouter:
    def __init__(self, router: Router, hold_dir: Path) -> None:
        self._router = router
        self._dir = hold_dir

    async def handle_many(self, events: Sequence[IncomingEvent], /) -> list[RouteResult]:
        return [await self.handle(event) for event in events]

    async def handle(self, event: IncomingEvent, /) -> RouteResult:
        result = await self._router.handle(event)
        if event.payload.get("hold"):
            routed = self._dir / f"{event.event_id}.routed"
            await asyncio.to_thread(routed.write_text, result.recorded.value)
            release = self._dir / f"{event.event_id}.release"
            while True:
                if await asyncio.to_thread(release.exists):
                    break
                await asyncio.sleep(0.05)
        return result


async def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sb = ServiceBusSettings()
    settings = IngressSettings()
    async with open_ingress(database_url=os.environ["ORCH_DB_URL"], settings=settings) as rt:
        holding = HoldingRouter(rt.router, Path(os.environ["ORCH_TEST_HOLD_DIR"]))
        ingress = Ingress(holding, max_message_bytes=sb.max_message_bytes)
        stats = await listen(sb, ingress)
    print(f"listener stopped cleanly: {dict(stats)}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
