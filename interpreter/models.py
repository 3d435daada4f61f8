"""The authored workflow definition: frozen pydantic models, discriminated on ``type``/``op``.

These are static specs (what an operator writes). Runtime data (a run's progress) lives in
``interpreter.runtime``. JSON field names are camelCase; Python attributes are snake_case.

Expressions: inside ``input``/``output``/``compensate.input`` mappings, a string that starts with
``$.`` (or is exactly ``$``) is a JSONPath over the run's data (``$.input``, ``$.state``,
``$.system``); ``{"$literal": "..."}`` writes a string that would otherwise read as a path.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)
from pydantic.alias_generators import to_camel

from interpreter.limits import MAX_WAIT_SECONDS

__all__ = [
    "AndCondition",
    "Branch",
    "CatchRule",
    "ChoiceRule",
    "ChoiceState",
    "Comparison",
    "CompensateSpec",
    "CompensationState",
    "Condition",
    "Configuration",
    "EventWait",
    "FailState",
    "MapState",
    "Metadata",
    "NotCondition",
    "OrCondition",
    "ParallelState",
    "RetryPolicy",
    "State",
    "SucceedState",
    "TaskState",
    "WaitState",
    "WorkflowDefinition",
]

ComparisonOperator = Literal[
    "equals",
    "notEquals",
    "greaterThan",
    "greaterThanOrEquals",
    "lessThan",
    "lessThanOrEquals",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "in",
    "isPresent",
    "isNull",
    "isType",
]
COMPARISON_OPERATORS: tuple[str, ...] = get_args(ComparisonOperator)
LOGICAL_OPERATORS = ("and", "or", "not")
TYPE_NAMES = ("string", "number", "integer", "boolean", "null", "array", "object", "timestamp")


class _Model(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        serialize_by_alias=True,
        # NaN and infinity are not JSON: a pinned copy would hold null and not hash to its pin.
        allow_inf_nan=False,
    )


class RetryPolicy(_Model):
    """How a failed task is retried. ``max_attempts`` counts the first try."""

    max_attempts: int = Field(default=1, ge=1, le=100)
    interval_seconds: float = Field(default=1.0, ge=0, le=86_400)
    backoff_rate: float = Field(default=2.0, ge=1.0, le=100)
    max_interval_seconds: float | None = Field(default=None, ge=0, le=86_400)
    jitter: float = Field(default=0.0, ge=0.0, le=1.0, description="Random spread, 0..1 of delay")
    retry_on: list[str] | None = Field(
        default=None, description="Error names to retry; null means every retryable error"
    )
    do_not_retry_on: list[str] = Field(default_factory=list)


class Metadata(_Model):
    author: str | None = None
    tags: list[str] = Field(default_factory=list)
    description: str | None = None


class Configuration(_Model):
    default_timeout_seconds: float | None = Field(default=None, gt=0, le=MAX_WAIT_SECONDS)
    default_retry: RetryPolicy | None = None
    on_failure: Literal["compensate", "fail"] = Field(
        default="compensate",
        description="On an uncaught failure: run the compensations of completed tasks, then fail",
    )


class CatchRule(_Model):
    """Route errors whose name is in ``errors`` (``"*"`` matches any) to ``next``."""

    errors: list[str] = Field(min_length=1)
    next: str
    error_path: str | None = Field(
        default=None, description="Where {error, cause} goes, a path under $.state"
    )


class CompensateSpec(_Model):
    """The activity (and its input mapping) that undoes a completed task."""

    activity: str
    input: dict[str, Any] = Field(default_factory=dict)


class _Transition(_Model):
    next: str | None = None
    end: bool = False


class TaskState(_Transition):
    type: Literal["task"]
    comment: str | None = None
    activity: str
    input: dict[str, Any] = Field(default_factory=dict)
    result_path: str | None = Field(default=None, description="Path under $.state for the output")
    retry: RetryPolicy | None = None
    timeout_seconds: float | None = Field(default=None, gt=0, le=MAX_WAIT_SECONDS)
    catch: list[CatchRule] = Field(default_factory=list)
    compensate: CompensateSpec | None = None
    idempotency_key: str | None = Field(
        default=None, description="Expression or literal; default derives from run and state"
    )


class EventWait(_Model):
    name: str = Field(min_length=1)
    timeout_seconds: float | None = Field(default=None, gt=0, le=MAX_WAIT_SECONDS)
    timeout_next: str | None = None
    result_path: str | None = None


class WaitState(_Transition):
    """Exactly one of ``seconds``, ``duration``, ``timestamp`` or ``event``."""

    type: Literal["wait"]
    comment: str | None = None
    seconds: float | None = Field(default=None, ge=0, le=MAX_WAIT_SECONDS)
    duration: str | None = Field(
        default=None, description="ISO 8601 duration, e.g. PT5M; at most 3,650 days"
    )
    timestamp: str | None = Field(
        default=None,
        description="RFC 3339 literal or a JSONPath; in UTC between years 1 and 9999",
    )
    event: EventWait | None = None


# --- conditions -------------------------------------------------------------------------------


class Comparison(_Model):
    """``{"op": "greaterThan", "variable": "$.state.n", "value": 3}``; or ``valuePath``."""

    op: ComparisonOperator
    variable: str
    value: Any = None
    value_path: str | None = None

    @model_validator(mode="after")
    def _one_operand(self) -> Comparison:
        if "value" in self.model_fields_set and self.value_path is not None:
            raise ValueError("give either 'value' or 'valuePath', not both")
        return self

    @model_serializer(mode="wrap")
    def _omit_unset_value(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A comparison against ``valuePath`` has no ``value``: writing ``"value": null`` would make
        # the dump read back as "both operands given".
        data: dict[str, Any] = handler(self)
        if self.value_path is not None and "value" not in self.model_fields_set:
            data.pop("value", None)
        return data


class AndCondition(_Model):
    op: Literal["and"]
    conditions: list[Condition] = Field(min_length=1)


class OrCondition(_Model):
    op: Literal["or"]
    conditions: list[Condition] = Field(min_length=1)


class NotCondition(_Model):
    op: Literal["not"]
    condition: Condition


Condition = Annotated[
    Comparison | AndCondition | OrCondition | NotCondition, Field(discriminator="op")
]


class ChoiceRule(_Model):
    condition: Condition
    next: str
    label: str | None = Field(default=None, description="Shown on the graph edge")


class ChoiceState(_Model):
    type: Literal["choice"]
    comment: str | None = None
    choices: list[ChoiceRule] = Field(min_length=1)
    default: str | None = None


# --- composite states -------------------------------------------------------------------------


class Branch(_Model):
    start_at: str
    states: dict[str, State]


class ParallelState(_Transition):
    type: Literal["parallel"]
    comment: str | None = None
    branches: list[Branch] = Field(min_length=1)
    result_path: str | None = None
    on_branch_failure: Literal["failFast", "waitAll"] = "failFast"
    catch: list[CatchRule] = Field(default_factory=list)


class MapState(_Transition):
    type: Literal["map"]
    comment: str | None = None
    items_path: str
    item_name: str = Field(default="item", description="Key under $.state holding the item")
    branch: Branch
    max_concurrency: int = Field(default=10, ge=1, le=1000)
    result_path: str | None = None
    catch: list[CatchRule] = Field(default_factory=list)


class CompensationState(_Model):
    """Undo completed tasks (all, or those named in ``states``) in reverse order of completion."""

    type: Literal["compensation"]
    comment: str | None = None
    states: list[str] | None = None
    next: str | None = None
    error: str = Field(default="WorkflowCompensated", description="Fail error when no next")
    cause: str | None = None


class SucceedState(_Model):
    type: Literal["succeed"]
    comment: str | None = None
    output: dict[str, Any] | None = None


class FailState(_Model):
    type: Literal["fail"]
    comment: str | None = None
    error: str
    cause: str | None = None


State = Annotated[
    TaskState
    | WaitState
    | ChoiceState
    | ParallelState
    | MapState
    | CompensationState
    | SucceedState
    | FailState,
    Field(discriminator="type"),
]


class WorkflowDefinition(_Model):
    schema_: str | None = Field(default=None, alias="$schema")
    name: str = Field(min_length=1, max_length=200)
    version: str = Field(min_length=1, max_length=100)
    metadata: Metadata = Field(default_factory=Metadata)
    configuration: Configuration = Field(default_factory=Configuration)
    start_at: str
    states: dict[str, State]
    input: dict[str, Any] | None = Field(
        default=None, description="JSON Schema the run's input must satisfy"
    )


Branch.model_rebuild()
AndCondition.model_rebuild()
OrCondition.model_rebuild()
NotCondition.model_rebuild()
ChoiceRule.model_rebuild()
WorkflowDefinition.model_rebuild()
