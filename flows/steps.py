"""The Prefect tasks of a workflow run: every side effect and every clock reading lives in one.

A replayed run (resumed after a suspend, or retried) starts again from the top of the flow; each of
these tasks is persisted and cached under a key naming the run, the pinned definition's hash, the
state's path and its visit (never its inputs), so a replay gets the recorded results back and
makes exactly the same decisions. That is why the activity wrapper never lets a final failure
escape as a Failed task run (Prefect does not cache failures, a replay would run it again): after
the last attempt it returns ``{"ok": false, ...}`` as a Completed, cached result.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import task
from prefect.context import TaskRunContext

from flows.runtime import get_resources
from interpreter.errors import ActivityError, OrchestrationError
from interpreter.models import RetryPolicy
from interpreter.retry import retry_delays, should_retry
from operations.observability import metrics

__all__ = [
    "DefinitionPathError",
    "activity_task",
    "cache_key",
    "claim_event",
    "finish_device_run",
    "load_definition",
    "register_wait",
    "resolve_wait",
    "sleep_if_short",
    "step_label",
]

TASK_FAILED = "States.TaskFailed"
TIMEOUT = "States.Timeout"
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


# --- the definition, pinned ------------------------------------------------------------------


@task(name="load-definition", persist_result=True)
async def load_definition(workflow: str, version: str | None) -> dict[str, Any]:
    """Read and hash the definition once per run: a replay gets this pinned copy back.

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
        document = definition.model_dump(mode="json", by_alias=True, exclude_none=True)
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
) -> dict[str, Any]:
    """One attempt of an activity; raises only when Prefect must retry it (see module doc).

    ``step_cache_key`` is the task's cache key and ``label`` its run name (see ``activity_task``).
    """
    run_context = TaskRunContext.get()
    attempt = run_context.task_run.run_count if run_context is not None else 1
    resources = await get_resources()
    ctx = resources.activity_context.for_call(
        idempotency_key=idempotency_key, run_id=run_id, device_id=device_id, state=state
    )
    try:
        async with asyncio.timeout(timeout_seconds):
            result = await resources.registry.call(activity, ctx, input)
    except TimeoutError:
        error: ActivityError = ActivityError(
            TIMEOUT, f"{activity} took longer than {timeout_seconds:g}s", retryable=True
        )
    except ActivityError as exc:
        error = exc
    except OrchestrationError as exc:
        error = ActivityError(_error_name(exc), str(exc), retryable=False)
    except Exception as exc:
        error = ActivityError(TASK_FAILED, f"{type(exc).__name__}: {exc}", retryable=False)
    else:
        return {"ok": True, "result": result, "at": _iso(_now())}
    metrics().activity_failures.add(1, {"activity": activity, "error": error.error})
    retry_policy = RetryPolicy.model_validate(policy)
    if should_retry(retry_policy, error.error, error.retryable, attempt):
        raise error  # Prefect waits the policy's delay and runs the next attempt
    return {
        "ok": False,
        "error": error.error,
        "cause": error.cause,
        "attempts": attempt,
        "at": _iso(_now()),
    }


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

    Call it with ``step_cache_key=cache_key(run_id, "task", step_key)`` (its cache key: a replay
    gets the recorded result) and ``label`` (its run name: the state's path and visit).
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
            persist_result=True,
            refresh_cache=False,
        )
        _configured[shape] = found
    return found


def step_label(path: str, visit: int) -> str:
    """A task run's name: the state's path, and its visit after the first."""
    return path if visit == 1 else f"{path} #{visit}"


# --- waits -----------------------------------------------------------------------------------


@task(name="sleep-if-short", persist_result=True)
async def sleep_if_short(until: str, short_wait_seconds: float) -> dict[str, Any]:
    """Sleep here when ``until`` is close; else report that the run must suspend.

    Cached: a replay neither sleeps again nor changes its mind.
    """
    due = datetime.fromisoformat(until)
    remaining = (due - _now()).total_seconds()
    if remaining > short_wait_seconds:
        return {"slept": False, "remaining": remaining}
    if remaining > 0:
        await asyncio.sleep(remaining)
    return {"slept": True, "remaining": remaining}


@task(name="claim-event", persist_result=True)
async def claim_event(subject: str, event: str, wait_key: str) -> dict[str, Any] | None:
    """Take the first unconsumed ``event`` of ``subject`` for this wait, if one has arrived."""
    resources = await get_resources()
    stored = await resources.events.claim(subject, event, wait_key)
    if stored is None:
        return None
    return {"payload": _payload_of(stored), "at": _iso(_now())}


def _payload_of(stored: Any) -> Any:
    for attribute in ("payload", "data"):
        if hasattr(stored, attribute):
            return getattr(stored, attribute)
    return None


@task(name="register-wait", persist_result=True)
async def register_wait(
    run_id: str, wait_key: str, subject: str, event: str | None, due_at: str | None
) -> bool:
    """Record the wait so the resumer (timers) can wake the run when it is due."""
    resources = await get_resources()
    await resources.waits.register(
        run_id, wait_key, subject, event, datetime.fromisoformat(due_at) if due_at else None
    )
    return True


@task(name="finish-device-run", persist_result=True)
async def finish_device_run(device_id: str, run_id: str) -> bool:
    """Tell the device ledger this run has ended, so the router starts the next one."""
    from store.runs import DeviceRunStore

    resources = await get_resources()
    return await DeviceRunStore(resources.db).finish(device_id, run_id)


@task(name="resolve-wait", persist_result=True)
async def resolve_wait(run_id: str, wait_key: str, how: str) -> bool:
    """Mark the wait resolved (idempotent; the resumer may have done it already)."""
    resources = await get_resources()
    await resources.waits.resolve(run_id, wait_key, how)
    return True
