"""The activity registry: names -> typed, validated, idempotent callables.

An activity is an async function ``fn(ctx, input) -> output`` with a pydantic input model and output
model. ``ActivityRegistry.call(name, ctx, raw_input)`` validates the raw input (a failure is a
non-retryable ``States.InvalidInput`` naming every bad field path), runs the function, validates
the output and returns it as JSON data. An activity that changes anything (``changes_state``) runs
inside ``ctx.idempotency.run_once(ctx.idempotency_key, name, ...)``: its result is recorded with
its key, and a retry, a replay or a concurrent duplicate with the same key gets the first result
back without a second side effect.

Importing this module is light (pydantic and the standard library only): the validator CLI imports
it for the activity names. The built-ins live in ``tasks.builtin`` and are imported by
``default_registry()`` when first asked for.
"""

from __future__ import annotations

import asyncio
import difflib
import functools
import importlib
import inspect
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

from interpreter.errors import ActivityError
from interpreter.transitions import TIMEOUT

if TYPE_CHECKING:
    from tasks.context import ActivityContext

__all__ = [
    "Activity",
    "ActivityDecorator",
    "ActivityFn",
    "ActivityInput",
    "ActivityOutput",
    "ActivityRegistry",
    "DuplicateActivityError",
    "RegistryFrozenError",
    "UnknownActivityError",
    "default_registry",
]

#: Modules under ``tasks.builtin`` whose ``register(registry)`` adds the built-in activities.
BUILTIN_MODULES: tuple[str, ...] = (
    "tasks.builtin.records",
    "tasks.builtin.events",
    "tasks.builtin.http",
    "tasks.builtin.notify",
    "tasks.builtin.definitions",
)

#: The error names ``call`` raises itself (activities add their own, e.g. ``Http.Timeout``).
INVALID_INPUT = "States.InvalidInput"
INVALID_OUTPUT = "States.InvalidOutput"
TASK_FAILED = "States.TaskFailed"
MISCONFIGURED = "States.Misconfigured"


class ActivityInput(BaseModel):
    """Base of activity input models: camelCase JSON, unknown fields refused, frozen."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
    )


class ActivityOutput(BaseModel):
    """Base of activity output models: camelCase JSON out, frozen."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        serialize_by_alias=True,
    )


#: What an activity function looks like, once its models are erased.
ActivityFn = Callable[["ActivityContext", Any], Awaitable[BaseModel]]
FnT = TypeVar("FnT", bound=ActivityFn)


class ActivityDecorator(Protocol):
    """What ``ActivityRegistry.activity(...)`` returns: it registers ``fn`` and returns it as is."""

    def __call__(self, fn: FnT, /) -> FnT: ...


class DuplicateActivityError(ValueError):
    """A second activity was registered under a name already taken."""


class UnknownActivityError(LookupError):
    """No activity has this name; the message lists close matches and every available name."""

    def __init__(self, name: str, available: list[str]) -> None:
        close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
        hint = f" Did you mean one of: {', '.join(close)}?" if close else ""
        listing = ", ".join(available) if available else "(none)"
        super().__init__(f"unknown activity {name!r}.{hint} Available activities: {listing}")
        self.name = name
        self.close_matches = close
        self.available = available


class RegistryFrozenError(RuntimeError):
    """The shared default registry refuses new activities; build your own ``ActivityRegistry``."""


@dataclass(frozen=True, kw_only=True)
class Activity:
    """One registered activity: its name, documentation, models, retry intent and function.

    ``retry_safe``: running it again after a failure cannot repeat a side effect (it reads only, or
    it is idempotent on its key). ``changes_state``: it changes something outside the run, so
    ``call`` runs it once per idempotency key.
    """

    name: str
    description: str
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    retry_safe: bool
    changes_state: bool
    fn: ActivityFn

    def describe(self) -> dict[str, Any]:
        """Name, description, flags and the JSON schemas of input and output (for the CLI)."""
        return {
            "name": self.name,
            "description": self.description,
            "retrySafe": self.retry_safe,
            "changesState": self.changes_state,
            "inputSchema": self.input_model.model_json_schema(by_alias=True),
            "outputSchema": self.output_model.model_json_schema(
                by_alias=True, mode="serialization"
            ),
        }


def _validation_details(exc: ValidationError) -> str:
    """Each failing field path and why, never the offending value (it may be a secret)."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        path = ".".join(str(part) for part in error["loc"]) or "(root)"
        parts.append(f"{path}: {error['msg']}")
    return "; ".join(parts)


class ActivityRegistry:
    """Activities by name: a name registered twice fails; an unknown name fails with suggestions."""

    def __init__(self) -> None:
        self._activities: dict[str, Activity] = {}
        self._frozen = False

    # -- registration -------------------------------------------------------------------------

    def register(self, activity: Activity) -> Activity:
        """Add ``activity``; raise ``DuplicateActivityError`` if its name is taken."""
        if self._frozen:
            raise RegistryFrozenError(
                f"cannot register {activity.name!r}: this registry is frozen "
                "(the shared default); create an ActivityRegistry of your own"
            )
        if not activity.name or activity.name != activity.name.strip():
            raise ValueError(f"invalid activity name {activity.name!r}")
        existing = self._activities.get(activity.name)
        if existing is not None:
            raise DuplicateActivityError(
                f"more than one activity named {activity.name!r}: already registered by "
                f"{_qualname(existing.fn)}, now again by {_qualname(activity.fn)}"
            )
        self._activities[activity.name] = activity
        return activity

    def activity(
        self,
        *,
        name: str,
        description: str,
        retry_safe: bool,
        changes_state: bool,
        input_model: type[BaseModel] | None = None,
        output_model: type[BaseModel] | None = None,
    ) -> ActivityDecorator:
        """Decorator registering ``fn(ctx, input) -> output``.

        The models come from the function's annotations unless given (give them for functions
        defined where their annotations cannot be resolved, such as inside a test).
        """

        def decorate(fn: FnT, /) -> FnT:
            in_model: type[BaseModel]
            out_model: type[BaseModel]
            in_model = input_model or _annotated_model(fn, name, "input")
            out_model = output_model or _annotated_model(fn, name, "output")
            self.register(
                Activity(
                    name=name,
                    description=description,
                    input_model=in_model,
                    output_model=out_model,
                    retry_safe=retry_safe,
                    changes_state=changes_state,
                    fn=fn,
                )
            )
            return fn

        return decorate

    def freeze(self) -> None:
        """Refuse further registrations (the shared default registry is frozen)."""
        self._frozen = True

    # -- lookup -------------------------------------------------------------------------------

    def get(self, name: str) -> Activity | None:
        return self._activities.get(name)

    def require(self, name: str) -> Activity:
        """The activity named ``name``; ``UnknownActivityError`` with close matches otherwise."""
        activity = self._activities.get(name)
        if activity is None:
            raise UnknownActivityError(name, self.names())
        return activity

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._activities)

    def __contains__(self, name: object) -> bool:
        return name in self._activities

    def __iter__(self) -> Iterator[Activity]:
        return iter(self._activities[name] for name in self.names())

    def __len__(self) -> int:
        return len(self._activities)

    def describe(self) -> list[dict[str, Any]]:
        """``Activity.describe()`` of every activity, sorted by name."""
        return [activity.describe() for activity in self]

    # -- execution ----------------------------------------------------------------------------

    async def call(
        self,
        name: str,
        ctx: ActivityContext,
        raw_input: dict[str, Any],
        *,
        timeout_seconds: float | None = None,
    ) -> dict[str, Any]:
        """Validate ``raw_input``, run the activity (once per idempotency key if it changes state).

        Returns the output as JSON data (camelCase). Raises ``ActivityError``: an unknown name or
        invalid input is ``States.InvalidInput`` (not retryable); an unexpected exception inside
        the activity becomes ``States.TaskFailed`` (retryable when the activity is retry-safe);
        the activity itself running longer than ``timeout_seconds`` is ``States.Timeout``
        (retryable). The timeout bounds the activity, not the wait for another caller of the same
        idempotency key (a claim left by a dead process is taken over, a live one's result
        awaited: neither is this call's own timeout).
        """
        try:
            activity = self.require(name)
        except UnknownActivityError as exc:
            raise ActivityError(INVALID_INPUT, str(exc), retryable=False) from exc
        try:
            parsed = activity.input_model.model_validate(raw_input)
        except ValidationError as exc:
            raise ActivityError(
                INVALID_INPUT,
                f"activity {name!r} input is invalid: {_validation_details(exc)}",
                retryable=False,
            ) from None  # the pydantic error repeats the input values; keep them out of logs

        async def run() -> dict[str, Any]:
            try:
                async with asyncio.timeout(timeout_seconds):
                    return await _run(activity, ctx, parsed)
            except TimeoutError:
                raise ActivityError(
                    TIMEOUT, f"{name} took longer than {timeout_seconds:g}s", retryable=True
                ) from None

        if not activity.changes_state:
            return await run()
        if ctx.idempotency is None:
            raise ActivityError(
                MISCONFIGURED,
                f"activity {name!r} changes state and needs an idempotency store in its context",
                retryable=False,
            )
        if not ctx.idempotency_key:
            raise ActivityError(
                MISCONFIGURED,
                f"activity {name!r} changes state and needs an idempotency key",
                retryable=False,
            )
        try:
            recorded = await ctx.idempotency.run_once(
                ctx.idempotency_key,
                name,
                run,
                # The key must not be reused for another input: the store refuses that instead
                # of handing back a result that belongs to a different call.
                input_data=parsed.model_dump(mode="json", by_alias=True),
            )
        except ActivityError:
            raise
        except Exception as exc:
            raise _store_error(name, exc) from exc
        # A duplicate receives the stored JSON; re-validating it keeps the output contract even
        # for results recorded by an older version of the activity.
        return _dump_output(activity, recorded)


async def _run(activity: Activity, ctx: ActivityContext, parsed: BaseModel) -> dict[str, Any]:
    try:
        result = await activity.fn(ctx, parsed)
    except ActivityError:
        raise
    except Exception as exc:
        raise ActivityError(
            TASK_FAILED,
            f"activity {activity.name!r} failed: {type(exc).__name__}: {exc}",
            retryable=activity.retry_safe,
        ) from exc
    return _dump_output(activity, result)


def _store_error(name: str, exc: Exception) -> Exception:
    """The idempotency store's refusals as activity errors; anything else unchanged."""
    from store.errors import IdempotencyConflictError, IdempotencyPendingError, StoreError

    if isinstance(exc, IdempotencyConflictError):
        return ActivityError("States.IdempotencyConflict", str(exc), retryable=False)
    if isinstance(exc, IdempotencyPendingError):
        return ActivityError("States.IdempotencyPending", str(exc), retryable=True)
    if isinstance(exc, StoreError):
        return ActivityError("States.StoreError", f"{name}: {exc}", retryable=exc.retryable)
    return ActivityError(
        TASK_FAILED, f"activity {name!r}: {type(exc).__name__}: {exc}", retryable=True
    )


def _dump_output(activity: Activity, result: object) -> dict[str, Any]:
    try:
        if isinstance(result, activity.output_model):
            model = result
        elif isinstance(result, BaseModel):
            model = activity.output_model.model_validate(result.model_dump(by_alias=True))
        else:
            model = activity.output_model.model_validate(result)
    except ValidationError as exc:
        raise ActivityError(
            INVALID_OUTPUT,
            f"activity {activity.name!r} returned invalid output: {_validation_details(exc)}",
            retryable=False,
        ) from None
    return model.model_dump(mode="json", by_alias=True)


def _annotated_model(fn: Callable[..., Any], name: str, which: str) -> type[BaseModel]:
    """The model named by ``fn``'s input (second parameter) or return annotation.

    Only the two annotations are looked at, and a string annotation is looked up as a plain
    name in the function's module (no evaluation), so the context's type may stay a
    ``TYPE_CHECKING`` import.
    """
    params = list(inspect.signature(fn).parameters)
    key = "return" if which == "output" else (params[1] if len(params) == 2 else None)
    annotation = fn.__annotations__.get(key) if key else None
    if isinstance(annotation, str):
        annotation = getattr(fn, "__globals__", {}).get(annotation)
    if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        raise TypeError(
            f"activity {name!r}: cannot tell the {which} model from the annotations of "
            f"{_qualname(fn)}; annotate it with a module-level pydantic model or pass "
            f"{which}_model="
        )
    return annotation


def _qualname(fn: object) -> str:
    module = getattr(fn, "__module__", "?")
    return f"{module}.{getattr(fn, '__qualname__', repr(fn))}"


@functools.cache
def default_registry() -> ActivityRegistry:
    """The registry holding every built-in activity (built once, then frozen and shared)."""
    registry = ActivityRegistry()
    for module_name in BUILTIN_MODULES:
        module = importlib.import_module(module_name)
        module.register(registry)
    registry.freeze()
    return registry
