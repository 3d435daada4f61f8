"""Process-wide resources of the flow: the app database, stores, activity registry, settings.

A flow run may execute in a process of its own (a Prefect worker) or next to hundreds of others in
the in-process executor; either way the database pool and the stores are built once per process and
event loop, and shared. The composition root (CLI, executor, tests) may ``configure`` them first;
otherwise they are read from the environment (``ORCH_DB_*``, ``ORCH_FLOW_*``) on first use.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from store.db import Database
    from store.events import EventStore
    from store.idempotency import IdempotencyStore
    from store.waits import WaitStore
    from tasks.context import ActivityContext
    from tasks.registry import ActivityRegistry

__all__ = ["FlowSettings", "Resources", "configure", "get_resources", "reset"]


class FlowSettings(BaseSettings):
    """How the flow executes waits and where it finds things (``ORCH_FLOW_*``)."""

    model_config = SettingsConfigDict(env_prefix="ORCH_FLOW_", extra="ignore", frozen=True)

    #: Timers due within this many seconds sleep in place; longer ones suspend the run.
    short_wait_seconds: float = Field(default=5.0, ge=0)
    #: Longest time one activity attempt may take when the definition sets no timeout.
    default_task_timeout_seconds: float | None = Field(default=None, gt=0)
    #: Where definitions are pinned by hash (``flows.definitions``); default: under
    #: ``PREFECT_LOCAL_STORAGE_PATH``, next to the persisted results every executor shares.
    definitions_dir: Path | None = None


@dataclass
class Resources:
    """What every step of every run in this process shares."""

    db: Database
    events: EventStore
    registry: ActivityRegistry
    activity_context: ActivityContext
    settings: FlowSettings

    @functools.cached_property
    def waits(self) -> WaitStore:
        from store.waits import WaitStore

        return WaitStore(self.db)

    @functools.cached_property
    def journal(self) -> IdempotencyStore:
        """The runs' journal (``flows.steps.once``): first outcomes in the idempotency records."""
        from store.idempotency import IdempotencyStore

        return IdempotencyStore(self.db)

    @functools.cached_property
    def journal_after_failure(self) -> IdempotencyStore:
        """The journal as a retry after a lost connection uses it: a ``pending`` claim is taken
        over at once (no lease). The claim is this run's own, left behind when the connection
        dropped between claiming and finishing; every journalled step is safe to run again and
        the first finisher's result is the one kept (``store.idempotency``)."""
        from store.idempotency import IdempotencyStore

        return IdempotencyStore(self.db, lease=timedelta(0), wait_timeout=timedelta(seconds=30))


_configured: dict[str, object] = {}
#: Keyed by the loop object, not ``id(loop)``: CPython reuses ids, so a later ``asyncio.run``
#: could otherwise get a pool bound to a closed loop. Resources reference their loop (the pool's
#: connections do), so an entry never goes away by itself: ``_evict_closed`` drops closed loops'.
_resources: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Resources] = (
    weakref.WeakKeyDictionary()
)
#: One lock per loop: an ``asyncio.Lock`` must only be awaited on one loop.
_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def configure(
    *,
    database_url: str | None = None,
    registry: ActivityRegistry | None = None,
    settings: FlowSettings | None = None,
) -> None:
    """Set what the next ``get_resources`` builds (call before the first run; tests, CLI)."""
    if database_url is not None:
        _configured["database_url"] = database_url
    if registry is not None:
        _configured["registry"] = registry
    if settings is not None:
        _configured["settings"] = settings
    _resources.clear()


async def reset() -> None:
    """Close the shared database pools and forget the configuration (end of a CLI run, tests).

    The running loop's pool is closed; pools of other loops cannot be awaited from here and are
    dropped (their loops' own ``reset``, or their closing, is what ends their connections).
    """
    loop = asyncio.get_running_loop()
    current = _resources.pop(loop, None)
    await _evict_closed()
    _resources.clear()
    _configured.clear()
    if current is not None:
        await current.db.close()


async def get_resources() -> Resources:
    """The resources of this process and event loop, built on first use."""
    loop = asyncio.get_running_loop()
    found = _resources.get(loop)
    if found is not None:
        return found
    lock = _locks.setdefault(loop, asyncio.Lock())
    async with lock:
        found = _resources.get(loop)
        if found is not None:
            return found
        await _evict_closed()
        found = await _build()
        _resources[loop] = found
        return found


async def _evict_closed() -> None:
    """Forget the resources of loops that have closed (a finished ``asyncio.run``).

    Their connections belong to a dead loop and cannot be closed from this one: the pool is
    discarded without touching them (``dispose(close=False)``) and left to the garbage collector.
    """
    for loop in [loop for loop in list(_resources.keys()) if loop.is_closed()]:
        stale = _resources.pop(loop, None)
        _locks.pop(loop, None)
        if stale is not None:
            await stale.db.engine.dispose(close=False)


async def _build() -> Resources:
    from store.db import Database
    from store.events import EventStore
    from store.settings import DatabaseSettings
    from tasks.context import ActivityContext
    from tasks.registry import ActivityRegistry, default_registry
    from tasks.settings import DefinitionSettings, HttpSettings, NotifySettings

    url = _configured.get("database_url")
    db = await Database.connect(url if isinstance(url, str) else DatabaseSettings().url)
    registry = _configured.get("registry")
    if not isinstance(registry, ActivityRegistry):
        registry = default_registry()
    settings = _configured.get("settings")
    if not isinstance(settings, FlowSettings):
        settings = FlowSettings()
    base = ActivityContext.for_database(
        db, http=HttpSettings(), notify=NotifySettings(), definitions=DefinitionSettings()
    )
    return Resources(
        db=db,
        events=EventStore(db),
        registry=registry,
        activity_context=base,
        settings=settings,
    )
