"""``ActivityContext``: everything an activity may use, built by the caller for each call.

The flow builds one per task execution (stores, settings, the step's idempotency key, run, device
and state). Stores an activity does not need may be left out; an activity that needs a missing one
fails with a non-retryable ``States.Misconfigured`` through the ``require_*`` accessors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from interpreter.errors import ActivityError
from tasks.settings import DefinitionSettings, HttpSettings, NotifySettings

if TYPE_CHECKING:
    from store.db import Database
    from store.events import EventStore
    from store.idempotency import IdempotencyStore
    from store.records import RecordStore

__all__ = ["ActivityContext"]


def _missing(what: str) -> ActivityError:
    return ActivityError(
        "States.Misconfigured", f"this activity needs {what}, and none was given", retryable=False
    )


@dataclass(frozen=True, kw_only=True)
class ActivityContext:
    """The stores, settings and identity of one activity call (read-only)."""

    db: Database | None = None
    events: EventStore | None = None
    records: RecordStore | None = None
    idempotency: IdempotencyStore | None = None
    http: HttpSettings = field(default_factory=HttpSettings.embedded)
    notify: NotifySettings = field(default_factory=NotifySettings.embedded)
    definitions: DefinitionSettings = field(default_factory=DefinitionSettings.embedded)
    idempotency_key: str | None = None
    run_id: str | None = None
    device_id: str | None = None
    state: str | None = None
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger] = field(
        default_factory=lambda: logging.getLogger("tasks")
    )

    @classmethod
    def for_database(
        cls,
        db: Database,
        *,
        http: HttpSettings | None = None,
        notify: NotifySettings | None = None,
        definitions: DefinitionSettings | None = None,
        max_events_per_device: int = 1000,
    ) -> ActivityContext:
        """A base context whose stores all use ``db``; ``for_call`` adds one call's identity."""
        from store.events import EventStore
        from store.idempotency import IdempotencyStore
        from store.records import RecordStore

        return cls(
            db=db,
            events=EventStore(db, max_events_per_device=max_events_per_device),
            records=RecordStore(db),
            idempotency=IdempotencyStore(db),
            http=http or HttpSettings.embedded(),
            notify=notify or NotifySettings.embedded(),
            definitions=definitions or DefinitionSettings.embedded(),
        )

    def for_call(
        self,
        *,
        idempotency_key: str | None,
        run_id: str | None = None,
        device_id: str | None = None,
        state: str | None = None,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> ActivityContext:
        """This context with the identity of one activity call (stores and settings shared)."""
        return replace(
            self,
            idempotency_key=idempotency_key,
            run_id=run_id,
            device_id=device_id,
            state=state,
            logger=logger or self.logger,
        )

    def require_records(self) -> RecordStore:
        if self.records is None:
            raise _missing("the record store")
        return self.records

    def require_events(self) -> EventStore:
        if self.events is None:
            raise _missing("the event store")
        return self.events

    def require_idempotency(self) -> IdempotencyStore:
        if self.idempotency is None:
            raise _missing("the idempotency store")
        return self.idempotency
