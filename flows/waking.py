"""What a resume asks of a waiting run, and whether the wait can use it.

The driver suspends a run at a wait (``flows.suspension``) and gets back the ``WakeInput`` that
resumed it. ``Waking.take`` turns it into the wait's outcome, doing exactly what it says:

- ``fire-timer`` (an operator): the timer or the event timeout is taken now, at the run's own
  clock reading (journalled), and the wait's trail row says an operator fired it;
- ``deliver-event`` (an operator): the event is recorded in the device's event store and taken
  (``flows.delivery``, journalled), and the trail row says an operator delivered it;
- ``kind: event`` / ``kind: timer`` (the router, the resumer): the awaited event is claimed from
  the store; a timer is taken only once the run's own clock says it is due (a clock a little
  behind the resumer's sleeps the difference in place), never because the input's ``at`` says so.

Anything else comes back as a refusal, a sentence saying why: the driver logs it once
(``say_unused``, journalled) and suspends again at the same wait with it in the state message.
Every decision is journalled, so a replay reads the same stored inputs and decides the same.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from flows import steps
from flows.delivery import deliver_event
from flows.wake import DELIVER_EVENT, FIRE_TIMER, WakeInput
from interpreter.runtime import EventReceived, EventTimedOut, Outcome, WaitElapsed, WaitFor

__all__ = ["Waking", "received"]


@dataclass
class Waking:
    """Judges the resumes of one run's waits (see the module docstring)."""

    run_id: str
    subject: str
    short_wait_seconds: float
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger]
    #: Who decided a wait's outcome, by (path, visit): an operator's resume, said on its row.
    notes: dict[tuple[str, int], str] = field(default_factory=dict)

    async def take(self, wake: WakeInput, action: WaitFor, suspend_key: str) -> Outcome | str:
        """The outcome a resume asks for, or why the wait cannot use it (a refusal)."""
        event, until = action.event, action.until
        if wake.problem is not None:
            return wake.problem
        if wake.action == FIRE_TIMER:
            if until is None:
                return "fire-timer: this wait has no timer or timeout"
            at = await self._woken_at(suspend_key)
            self._note(action, f"fired by an operator's resume at {_hms(at)}, due {_hms(until)}")
            self.logger.info("%s: timer fired now by an operator's resume", action.path)
            return WaitElapsed(at=at) if event is None else EventTimedOut(at=at)
        if wake.action == DELIVER_EVENT:
            if event is None or (wake.event is not None and wake.event != event):
                return f"deliver-event: this wait expects {event!r}, not {wake.event!r}"
            event_id = wake.event_id or f"resume-{self.run_id}-{_digest(suspend_key)}"
            subject, claim_key, payload = (
                self.subject,
                self.claim_key(action.wait_key),
                wake.payload,
            )
            delivered: dict[str, Any] = await steps.once(
                steps.cache_key(self.run_id, "deliver", suspend_key),
                "deliver",
                lambda: deliver_event(subject, event, payload, event_id, claim_key),
            )
            if "refused" in delivered:
                return f"deliver-event: {delivered['refused']}"
            self._note(action, f"delivered by an operator's resume (event id {event_id})")
            return received(delivered)
        if wake.kind is None:
            return "the resume carried neither an action nor a wake-up"
        if event is not None:
            claimed = await self.claim(
                steps.cache_key(self.run_id, "claim-after", suspend_key), event, action.wait_key
            )
            if claimed is not None:
                return received(claimed)
        if wake.kind == "event":
            if event is None:
                return "an event wake-up, but this wait is a timer"
            return f"woken for event {event!r}, but none is stored for {self.subject} yet"
        if until is None:
            return "a timer wake-up, but this wait has no timer"
        # The run's own clock decides whether the timer is due (never the input's ``at``); one a
        # little ahead of the resumer's sleeps the difference in place.
        due = until.isoformat()
        timer = await steps.once(
            steps.cache_key(self.run_id, "sleep", f"{suspend_key}:timer"),
            "sleep",
            lambda: steps.sleep_if_short(due, self.short_wait_seconds),
        )
        if not timer["slept"]:
            return (
                f"a timer wake-up {timer['remaining']:.0f}s before the deadline {_hms(until)}; "
                "to take it now, resume with action fire-timer"
            )
        if event is None:
            return WaitElapsed(at=until)
        # When the timeout was taken (journalled: a replay reads the same), not the deadline.
        return EventTimedOut(at=max(until, until - timedelta(seconds=timer["remaining"])))

    async def say_unused(self, path: str, reason: str, next_key: str) -> None:
        """One warning per resume not used (journalled: a replay walking past it says nothing)."""

        async def warn() -> bool:
            self.logger.warning(
                "%s: resume not used: %s; still waiting (wait key %s)", path, reason, next_key
            )
            return True

        await steps.once(steps.cache_key(self.run_id, "unused", next_key), "unused", warn)

    async def _woken_at(self, suspend_key: str) -> datetime:
        """Now, by the run's clock, journalled for this wake-up (a replay reads the same)."""
        moment: str = await steps.once(
            steps.cache_key(self.run_id, "woken", suspend_key), "woken", _now_iso
        )
        return datetime.fromisoformat(moment)

    def _note(self, action: WaitFor, note: str) -> None:
        """Say on the wait's trail row who decided its outcome (an operator's resume)."""
        self.notes[(action.path, action.visit)] = note

    async def claim(self, journal_key: str, event: str, wait_key: str) -> dict[str, Any] | None:
        """The event claimed for the wait, or None; journalled, so "none yet" stays the answer
        a replay reads even if the event has arrived since (the decision was taken on it)."""
        subject, claim_key = self.subject, self.claim_key(wait_key)
        claimed: dict[str, Any] | None = await steps.once(
            journal_key, "claim", lambda: steps.claim_event(subject, event, claim_key)
        )
        return claimed

    def claim_key(self, wait_key: str) -> str:
        """What marks an event consumed: wait keys repeat across runs of one workflow, so the
        run id makes it unique (a later run must never receive an earlier run's event)."""
        return f"{self.run_id}:{wait_key}"


def received(claimed: dict[str, Any]) -> EventReceived:
    """The outcome of an event taken from the store (or delivered by an operator)."""
    return EventReceived(payload=claimed["payload"], at=datetime.fromisoformat(claimed["at"]))


async def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _hms(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%H:%M:%S UTC")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
