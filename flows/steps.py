"""The steps of a workflow run: activities are Prefect tasks, bookkeeping is the run's journal.

A replayed run (resumed after a suspend, or retried) starts again from the top of the flow and must
make exactly the same decisions. Two records make that so, both keyed by the run, the pinned
definition's hash, the state's path and its visit (never the inputs):

- **The journal** (``once``/``recorded``): the first outcome of every step that reads the clock or
  the world (an activity's final outcome, an event claim, a short sleep, the definition loaded
  without a pinned hash) is stored in the database's idempotency records; a replay reads it back
  without a Prefect call. Bookkeeping that is idempotent by itself against the database (the wait
  registration, resolving a wait, finishing the device's run) is a plain awaited call, so a run's
  task runs are only its activities.
- **Activities** are Prefect tasks named after their state (retries are Prefect retries). The
  final outcome is journalled inside the task before it ends: success ends Completed (and is also
  Prefect-cached), a final failure ends **Failed** with the error and cause as its message. Prefect
  does not cache a failure, so the driver asks the journal first and a replay never runs it again.

Every call of this bookkeeping against the app database (journal reads and writes, event claims,
wait registration and resolution, finishing the device's run) is idempotent, and is tried again
on a transient failure - a dropped connection, "too many clients" - with bounded backoff
(``store.transient.retry_transient``, one WARNING line per retry). A run therefore fails only on
its workflow's own errors; an activity's own errors are the activity's (its retry policy).
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.client.schemas.objects import State
from prefect.context import TaskRunContext
from prefect.states import Failed

from flows.runtime import get_resources
from interpreter.errors import ActivityError, OrchestrationError
from interpreter.models import RetryPolicy
from interpreter.retry import retry_delays, should_retry
from operations.observability import metrics
from store.idempotency import IdempotencyStore
from store.transient import is_transient, retry_transient

if TYPE_CHECKING:
    from store.runs import DeviceRun

__all__ = [
    "DefinitionPathError",
    "activity_task",
    "cache_key",
    "claim_device_run",
    "claim_event",
    "finish_device_run",
    "load_definition",
    "once",
    "recorded",
    "register_wait",
    "resolve_wait",
    "sleep_if_short",
    "step_label",
]

TASK_FAILED = "States.TaskFailed"
TIMEOUT = "States.Timeout"
#: The idempotency store's "another caller still runs this key" (``tasks.registry``).
IDEMPOTENCY_PENDING = "States.IdempotencyPending"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class DefinitionPathError(OrchestrationError):
    """A ``workflow`` path that lies outside the directories definitions may be read from."""


def cache_key(run_id: str, kind: str, key: str) -> str:
    """A storage-safe, readable cache key: run, step kind, slug of ``key``, 12 hex of its hash.

    ``key`` is a step key (``<hash12>:<path>:<visit>``) or a wait key: it names the pinned
    definition, the state's path and its visit, so no two steps ever share a cached result.
    """
    slug = _UNSAFE.sub("_", key)[:120]
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]
    return f"orch-{run_id}-{kind}-{slug}-{digest}"


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


# --- the journal -----------------------------------------------------------------------------

#: The idempotency records' ``activity`` column names the kind of journal entry: ``orch.<kind>``.
JOURNAL = "orch."


#: Counts the steps executed fresh (not read back from the journal) in this context: the driver
#: sets a counter, so it knows when a replay has caught up with what an earlier execution did.
fresh_steps: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "orchestration_fresh_steps", default=None
)


def note_fresh_step() -> None:
    counter = fresh_steps.get()
    if counter is not None:
        counter[0] += 1


async def once(key: str, kind: str, step: Callable[[], Awaitable[Any]]) -> Any:
    """``step()``'s result as JSON, journalled under ``key`` by the first call that completes.

    Every later call with ``key`` (a replay) returns the journalled result without calling
    ``step``; a ``step`` that raises records nothing (the next call runs it again). ``key`` is a
    ``cache_key``: it names the run, the kind of step and the step or wait key.

    A transient failure of the journal itself is tried again; the step then runs again only if
    it had not returned yet, and a claim the lost connection left ``pending`` is taken over
    (``Resources.journal_after_failure``). What ``step`` itself raises is not retried here.
    """
    resources = await get_resources()

    async def step_once() -> Any:
        note_fresh_step()
        return await step()

    def journalled(attempt: int, call: Callable[[], Awaitable[Any]]) -> Awaitable[Any]:
        journal = resources.journal if attempt == 1 else resources.journal_after_failure
        return journal.run_once(key, f"{JOURNAL}{kind}", call)

    return await _once_across_retries(f"journal {kind}", step_once, journalled, rerun=True)


async def _once_across_retries(
    label: str,
    fn: Callable[[], Awaitable[Any]],
    attempt: Callable[[int, Callable[[], Awaitable[Any]]], Awaitable[Any]],
    *,
    rerun: bool,
) -> Any:
    """``attempt(n, call)`` (n = 1, 2, ...) retried on a transient failure of its own, where
    ``call`` runs ``fn`` at most once across the retries: after ``fn`` returned, a retry gets the
    same value; after it raised, a retry runs it again (``rerun``) or raises the same error.
    What ``fn`` raises is never retried here. The journal (``once``) and an activity's
    idempotency store (``RetriedBookkeeping``) run their steps through it."""
    returned: list[Any] = []
    raised: list[BaseException] = []
    attempts = 0

    async def call() -> Any:
        if raised and not rerun:
            raise raised[0]
        if returned:
            return returned[0]
        try:
            value = await fn()
        except BaseException as exc:
            raised.append(exc)
            raise
        returned.append(value)
        return value

    async def attempted() -> Any:
        nonlocal attempts
        attempts += 1
        return await attempt(attempts, call)

    def own_failure(exc: BaseException) -> bool:
        return not any(exc is own for own in raised) and is_transient(exc)

    return await retry_transient(label, attempted, retry_if=own_failure)


async def recorded(key: str) -> tuple[bool, Any]:
    """``(True, result)`` when the journal holds a finished entry for ``key``; else no result."""
    resources = await get_resources()
    entry = await retry_transient("journal read", lambda: resources.journal.get(key))
    if entry is None or entry.status != "done":
        return False, None
    return True, entry.result


# --- the definition, pinned ------------------------------------------------------------------


async def load_definition(workflow: str, version: str | None) -> dict[str, Any]:
    """Read and hash the definition (the run journals it once: a replay gets this copy back).

    ``workflow`` is a path to a ``.json`` file, or a name the ``definitions.load`` activity
    resolves (directory or Azure Blob). Also records ``startedAt``, the run's stable clock origin.
    A path must resolve inside the working directory or the definitions directory
    (``ORCH_DEFINITIONS_DIRECTORY``): the parameter comes from API and UI callers.
    """
    from interpreter.loader import definition_hash
    from interpreter.loader import load_definition as parse_definition

    resources = await get_resources()
    if workflow.endswith(".json"):
        path = allowed_definition_path(
            workflow, [Path.cwd(), Path(resources.activity_context.definitions.directory)]
        )
        text = await asyncio.to_thread(_read_text, path)
        definition = parse_definition(text)
        # exclude_unset, not exclude_none: a "value": null literal is meaning, not absence.
        document = definition.model_dump(mode="json", by_alias=True, exclude_unset=True)
        digest = definition_hash(definition)
    else:
        ctx = resources.activity_context.for_call(idempotency_key=None, state="load-definition")
        loaded = await resources.registry.call(
            "definitions.load", ctx, {"workflow": workflow, "version": version}
        )
        document = loaded["definition"]
        digest = str(loaded["hash"])
    return {"definition": document, "hash": digest, "startedAt": _iso(_now())}


def allowed_definition_path(workflow: str, roots: list[Path]) -> Path:
    """``workflow`` resolved (``..`` and symlinks followed), if it lies inside one of ``roots``.

    Raises ``DefinitionPathError`` otherwise: a caller must not make a run read any file.
    """
    resolved = Path(workflow).resolve()
    allowed = [root.resolve() for root in roots]
    if any(resolved.is_relative_to(root) for root in allowed):
        return resolved
    where = ", ".join(str(root) for root in allowed)
    raise DefinitionPathError(
        f"definition path {workflow!r} resolves to {str(resolved)!r}, outside the directories "
        f"definitions are read from ({where}); pass a workflow name, or put the file under one "
        "of them (ORCH_DEFINITIONS_DIRECTORY)"
    )


def _read_text(path: Path) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


# --- activities ------------------------------------------------------------------------------


@task(name="activity", persist_result=True)
async def _run_activity(
    activity: str,
    input: dict[str, Any],
    *,
    policy: dict[str, Any],
    timeout_seconds: float | None,
    idempotency_key: str,
    run_id: str,
    device_id: str | None,
    state: str,
    step_cache_key: str,
    label: str,
) -> dict[str, Any] | State[Any]:
    """One attempt of an activity; raises only when Prefect must retry it (see module doc).

    ``step_cache_key`` is the task's cache key and journal key, ``label`` its run name (see
    ``activity_task``). Returns the journalled outcome, or a Failed state holding it.
    """
    run_context = TaskRunContext.get()
    attempt = run_context.task_run.run_count if run_context is not None else 1
    resources = await get_resources()
    ctx = resources.activity_context.for_call(
        idempotency_key=idempotency_key, run_id=run_id, device_id=device_id, state=state
    )
    if ctx.idempotency is not None:
        ctx = replace(
            ctx,
            idempotency=RetriedBookkeeping(ctx.idempotency, resources.journal_after_failure),
        )
    try:
        result = await resources.registry.call(
            activity, ctx, input, timeout_seconds=timeout_seconds
        )
    except ActivityError as exc:
        error: ActivityError = exc
    except OrchestrationError as exc:
        error = ActivityError(_error_name(exc), str(exc), retryable=False)
    except Exception as exc:
        error = ActivityError(TASK_FAILED, f"{type(exc).__name__}: {exc}", retryable=False)
    else:
        outcome = {"ok": True, "result": result, "at": _iso(_now())}
        succeeded: dict[str, Any] = await once(step_cache_key, "step", _value(outcome))
        return succeeded
    metrics().activity_failures.add(1, {"activity": activity, "error": error.error})
    retry_policy = RetryPolicy.model_validate(policy)
    if error.error == IDEMPOTENCY_PENDING or should_retry(
        retry_policy, error.error, error.retryable, attempt
    ):
        # Waiting on another live caller of the same key is never the step's final failure:
        # nothing is journalled, so a later execution of the run asks the key again.
        raise error  # Prefect waits the policy's delay and runs the next attempt
    failure = {
        "ok": False,
        "error": error.error,
        "cause": error.cause,
        "attempts": attempt,
        "at": _iso(_now()),
    }
    # Journalled before the task run ends Failed: Prefect caches no failure, the journal is
    # what a replay reads (the driver asks it before calling the task again).
    failed: dict[str, Any] = await once(step_cache_key, "step", _value(failure))
    return Failed(message=failure_message(failed), data=failed)


class RetriedBookkeeping(IdempotencyStore):
    """An activity's idempotency store whose own failures are bookkeeping, not the activity's.

    A transient failure of the store (claiming the key, recording the result, releasing the
    claim: the database restarting, a connection cut) is tried again with ``retry_transient``,
    as the journal's are, instead of counting as a failed attempt of the activity (a run whose
    activity allows 10 attempts 1 s apart failed while PostgreSQL restarted). The activity itself
    runs at most once per call: after it returned, a retry records the same result; after it
    raised, a retry only releases the claim and raises the same error. A retry takes over the
    ``pending`` claim the lost connection left (``after_failure``: the journal's lease-0 store).
    """

    def __init__(self, first: IdempotencyStore, after_failure: IdempotencyStore) -> None:
        # No state of its own: every call goes to ``first``, retries to ``after_failure``.
        self._first = first
        self._after_failure = after_failure

    def __getattr__(self, name: str) -> Any:
        return getattr(self._first, name)

    async def get(self, key: str) -> Any:
        return await self._first.get(key)

    async def run_once(
        self,
        key: str,
        activity: str,
        fn: Callable[[], Awaitable[Any]],
        *,
        input_data: Any = None,
    ) -> Any:
        def attempt(number: int, call: Callable[[], Awaitable[Any]]) -> Awaitable[Any]:
            store = self._first if number == 1 else self._after_failure
            return store.run_once(key, activity, call, input_data=input_data)

        return await _once_across_retries(f"idempotency {activity}", fn, attempt, rerun=False)


def failure_message(failure: dict[str, Any]) -> str:
    """A failed step's task-run message: ``<error>: <cause> (after N attempts)``."""
    attempts = int(failure.get("attempts") or 1)
    after = f" (after {attempts} attempts)" if attempts > 1 else ""
    return f"{failure['error']}: {failure.get('cause') or '(no cause given)'}{after}"


def _value(value: Any) -> Callable[[], Awaitable[Any]]:
    async def step() -> Any:
        return value

    return step


def _retry_unless_final(_task: Any, _task_run: Any, state: State[Any]) -> bool:
    """Prefect's retry condition: an exception is an attempt to retry (the task raises only
    then); a returned Failed state is the final failure, already journalled."""
    data = state.data
    return not (isinstance(data, dict) and data.get("ok") is False)


def _error_name(exc: OrchestrationError) -> str:
    name = getattr(exc, "error_name", None)
    return name if isinstance(name, str) else TASK_FAILED


def _step_cache_key(_context: Any, parameters: dict[str, Any]) -> str:
    return str(parameters["step_cache_key"])


#: Configured activity tasks by retry settings. ``Task.with_options`` builds a new task, which
#: reads the function's source to key it (milliseconds a call): build one per retry shape only.
_configured: dict[tuple[int, tuple[float, ...], float | None], Any] = {}


def activity_task(*, policy: RetryPolicy, jitter_draws: bool = True) -> Any:
    """The activity task configured for ``policy`` (retries, delays, jitter), built once.

    Call it with ``step_cache_key=cache_key(run_id, "task", step_key)`` (its cache key and
    journal key: a replay gets the recorded outcome) and ``label`` (its run name: the state's path
    and visit). Its task run ends Completed, or Failed with the final failure as its message.
    """
    delays = tuple(float(d) for d in retry_delays(policy))
    jitter = policy.jitter if policy.jitter and jitter_draws else None
    shape = (max(policy.max_attempts - 1, 0), delays, jitter)
    found = _configured.get(shape)
    if found is None:
        options: dict[str, Any] = {}
        if jitter:
            options["retry_jitter_factor"] = jitter
        found = _run_activity.with_options(
            **options,
            task_run_name="{label}",
            cache_key_fn=_step_cache_key,
            retries=shape[0],
            retry_delay_seconds=list(delays) or 0,
            retry_condition_fn=_retry_unless_final,
            persist_result=True,
            refresh_cache=False,
        )
        _configured[shape] = found
    return found


def step_label(path: str, visit: int) -> str:
    """A task run's name: the state's path, and its visit after the first."""
    return path if visit == 1 else f"{path} #{visit}"


# --- waits -----------------------------------------------------------------------------------


async def sleep_if_short(until: str, short_wait_seconds: float) -> dict[str, Any]:
    """Sleep here when ``until`` is close; else report that the run must suspend.

    Journalled by the driver: a replay neither sleeps again nor changes its mind.
    """
    due = datetime.fromisoformat(until)
    remaining = (due - _now()).total_seconds()
    if remaining > short_wait_seconds:
        return {"slept": False, "remaining": remaining}
    if remaining > 0:
        await asyncio.sleep(remaining)
    return {"slept": True, "remaining": remaining}


async def claim_event(subject: str, event: str, wait_key: str) -> dict[str, Any] | None:
    """Take the first unconsumed ``event`` of ``subject`` for this wait, if one has arrived.

    The store gives the same event again for the same ``wait_key``; the driver journals the
    answer, so "nothing yet" also stays the answer on a replay.
    """
    resources = await get_resources()
    stored = await retry_transient(
        "event claim", lambda: resources.events.claim(subject, event, wait_key)
    )
    if stored is None:
        return None
    return {"payload": _payload_of(stored), "at": _iso(_now())}


def _payload_of(stored: Any) -> Any:
    for attribute in ("payload", "data"):
        if hasattr(stored, attribute):
            return getattr(stored, attribute)
    return None


async def register_wait(
    run_id: str, wait_key: str, subject: str, event: str | None, due_at: str | None
) -> bool:
    """Record the wait so the resumer (timers) can wake the run when it is due.

    Idempotent on ``(run_id, wait_key)``: a replay's registration changes nothing.
    """
    resources = await get_resources()
    due = datetime.fromisoformat(due_at) if due_at else None
    await retry_transient(
        "wait registration",
        lambda: resources.waits.register(run_id, wait_key, subject, event, due),
    )
    return True


async def finish_device_run(device_id: str, run_id: str) -> bool:
    """Tell the device ledger this run has ended, so the router starts the next one.

    Idempotent: only a run that is still the device's current one is finished.
    """
    from store.runs import DeviceRunStore

    resources = await get_resources()
    ledger = DeviceRunStore(resources.db)
    return await retry_transient("device run finish", lambda: ledger.finish(device_id, run_id))


async def claim_device_run(
    device_id: str, run_id: str, run_key: str | None, workflow: str
) -> DeviceRun | None:
    """Make this run the device's current run in the ledger; the other run if the device has one.

    The router and the API claim the device before they create a run (``run_key`` is the run's
    idempotency key, so this finds their claim and binds it). A run created another way
    (``prefect deployment run``, ``orchestration run --device``) claims it here, with its run id
    as the key: without this a device event started a second run beside it. Idempotent: every
    replay of the run finds its own claim.
    """
    from store.runs import DeviceRunStore

    resources = await get_resources()
    ledger = DeviceRunStore(resources.db)
    key = run_key or run_id

    async def claim() -> DeviceRun | None:
        if await ledger.claim_start(device_id, key, workflow=workflow):
            await ledger.set_run(device_id, key, run_id)
            return None
        current = await ledger.current(device_id)
        if current is None or current.run_id == run_id or current.run_key == key:
            return None
        return current

    return await retry_transient("device run claim", claim)


async def resolve_wait(run_id: str, wait_key: str, how: str) -> bool:
    """Mark the wait resolved (idempotent; the resumer may have done it already)."""
    resources = await get_resources()
    await retry_transient("wait resolution", lambda: resources.waits.resolve(run_id, wait_key, how))
    return True
