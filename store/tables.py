"""The database schema as sqlmodel table models (the migrations in ``store/migrations`` match it).

Rows are storage shapes, used only inside ``store``; the stores hand out frozen pydantic models.
Constraint and index names are explicit so that migrations and autogenerate comparisons are stable.

    devices          one row per device: counters, last sequence, last activity (the accumulator)
    device_events    the events of each device, keyed (device_id, sequence); unique event id
    idempotency_keys the first result of every activity call that changes anything
    records          the business records (``records.*`` activities)
    waits            runs waiting for an event or a timer
    device_runs      the current run of each device (at most one)
    route_outbox     start/resume requests that must happen even if Prefect is down right now
    process_leases   the processes that execute runs, each alive while it renews its row
    run_leases       which process executes each run now (a dead holder's runs are taken back)
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlmodel import Field, SQLModel

from store.columns import BIGINT_PK, JSON_TYPE, UTCDateTime

__all__ = [
    "DEVICES",
    "DEVICE_EVENTS",
    "DEVICE_RUNS",
    "IDEMPOTENCY_KEYS",
    "PROCESS_LEASES",
    "RECORDS",
    "ROUTE_OUTBOX",
    "RUN_LEASES",
    "WAITS",
    "DeviceEventRow",
    "DeviceRow",
    "DeviceRunRow",
    "IdempotencyKeyRow",
    "ProcessLeaseRow",
    "RecordRow",
    "RouteOutboxRow",
    "RunLeaseRow",
    "WaitRow",
    "metadata",
]

ID = 200  # device ids, event ids, names, run ids
KEY = 512  # idempotency keys, wait keys, business keys (they embed run ids and paths)


class DeviceRow(SQLModel, table=True):
    __tablename__ = "devices"

    device_id: str = Field(sa_column=Column(String(ID), primary_key=True))
    count: int = Field(sa_column=Column(Integer, nullable=False))
    last_sequence: int = Field(sa_column=Column(BigInteger, nullable=False))
    overflowed: int = Field(sa_column=Column(Integer, nullable=False))
    first_seen_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    last_activity_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    #: The latest producer time recorded for the device (out-of-order detection, migration 0003).
    last_occurred_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))


class DeviceEventRow(SQLModel, table=True):
    __tablename__ = "device_events"
    __table_args__ = (
        UniqueConstraint("device_id", "event_id", name="uq_device_events_event_id"),
        # NULLs are distinct: many unconsumed events, but one event per wait key and device.
        UniqueConstraint("device_id", "consumed_by", name="uq_device_events_consumed_by"),
        Index("ix_device_events_name", "device_id", "name", "sequence"),
    )

    device_id: str = Field(sa_column=Column(String(ID), primary_key=True))
    sequence: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    event_id: str = Field(sa_column=Column(String(ID), nullable=False))
    name: str = Field(sa_column=Column(String(ID), nullable=False))
    payload: Any = Field(default=None, sa_column=Column(JSON_TYPE, nullable=True))
    enqueued_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    received_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    consumed_by: str | None = Field(default=None, sa_column=Column(String(KEY)))
    consumed_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    cleared_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    #: The producer's time of the event, when it gave one (migration 0003).
    occurred_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    #: Its producer time is earlier than one already recorded for the device.
    out_of_order: bool = Field(
        default=False, sa_column=Column(Boolean, nullable=False, server_default=false())
    )


class IdempotencyKeyRow(SQLModel, table=True):
    __tablename__ = "idempotency_keys"

    key: str = Field(sa_column=Column(String(KEY), primary_key=True))
    activity: str = Field(sa_column=Column(String(ID), nullable=False))
    input_hash: str | None = Field(default=None, sa_column=Column(String(64)))
    status: str = Field(sa_column=Column(String(16), nullable=False))
    owner: str = Field(sa_column=Column(String(36), nullable=False))
    #: The process (``process_leases.holder``) whose call holds a ``pending`` row: when that
    #: process is dead, the claim is taken over at once instead of after the lease.
    holder: str | None = Field(default=None, sa_column=Column(String(ID)))
    result: Any = Field(default=None, sa_column=Column(JSON_TYPE, nullable=True))
    claimed_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    completed_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))


class RecordRow(SQLModel, table=True):
    __tablename__ = "records"
    __table_args__ = (UniqueConstraint("kind", "key", name="uq_records_kind_key"),)

    id: str = Field(sa_column=Column(String(36), primary_key=True))
    kind: str = Field(sa_column=Column(String(ID), nullable=False))
    key: str | None = Field(default=None, sa_column=Column(String(KEY)))
    released_key: str | None = Field(default=None, sa_column=Column(String(KEY)))
    data: Any = Field(sa_column=Column(JSON_TYPE, nullable=False))
    status: str = Field(sa_column=Column(String(50), nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    rolled_back_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))


class WaitRow(SQLModel, table=True):
    __tablename__ = "waits"
    __table_args__ = (
        Index("ix_waits_due", "status", "due_at"),
        Index("ix_waits_event", "device_id", "event_name", "status"),
    )

    run_id: str = Field(sa_column=Column(String(ID), primary_key=True))
    wait_key: str = Field(sa_column=Column(String(KEY), primary_key=True))
    device_id: str | None = Field(default=None, sa_column=Column(String(ID)))
    event_name: str | None = Field(default=None, sa_column=Column(String(ID)))
    due_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    status: str = Field(sa_column=Column(String(16), nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    resolved_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    resolved_how: str | None = Field(default=None, sa_column=Column(String(50)))


class DeviceRunRow(SQLModel, table=True):
    __tablename__ = "device_runs"

    device_id: str = Field(sa_column=Column(String(ID), primary_key=True))
    run_key: str = Field(sa_column=Column(String(KEY), nullable=False))
    run_id: str | None = Field(default=None, sa_column=Column(String(ID)))
    workflow: str = Field(sa_column=Column(String(ID), nullable=False))
    status: str = Field(sa_column=Column(String(16), nullable=False))
    started_by_event: str | None = Field(default=None, sa_column=Column(String(ID)))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class RouteOutboxRow(SQLModel, table=True):
    __tablename__ = "route_outbox"
    __table_args__ = (
        UniqueConstraint("device_id", "event_id", "action", name="uq_route_outbox_event_action"),
        Index("ix_route_outbox_pending", "status", "next_attempt_at", "id"),
    )

    id: int | None = Field(
        default=None, sa_column=Column(BIGINT_PK, primary_key=True, autoincrement=True)
    )
    device_id: str = Field(sa_column=Column(String(ID), nullable=False))
    event_id: str = Field(sa_column=Column(String(ID), nullable=False))
    action: str = Field(sa_column=Column(String(16), nullable=False))
    payload: Any = Field(default=None, sa_column=Column(JSON_TYPE, nullable=True))
    status: str = Field(sa_column=Column(String(16), nullable=False))
    attempts: int = Field(sa_column=Column(Integer, nullable=False))
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    next_attempt_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class ProcessLeaseRow(SQLModel, table=True):
    __tablename__ = "process_leases"

    holder: str = Field(sa_column=Column(String(ID), primary_key=True))
    host: str = Field(sa_column=Column(String(ID), nullable=False))
    pid: int = Field(sa_column=Column(Integer, nullable=False))
    started_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    renewed_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    expires_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class RunLeaseRow(SQLModel, table=True):
    __tablename__ = "run_leases"

    flow_run_id: str = Field(sa_column=Column(String(ID), primary_key=True))
    holder: str = Field(sa_column=Column(String(ID), nullable=False))
    held_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    #: How many times the run was taken back from a dead holder.
    heals: int = Field(sa_column=Column(Integer, nullable=False))


def _table(model: type[SQLModel]) -> Table:
    table = model.__table__  # type: ignore[attr-defined]  # set by SQLModel's metaclass, undeclared
    if not isinstance(table, Table):
        raise TypeError(f"{model.__name__} is not a table model")
    return table


# Core handles on the tables: the stores use SQLAlchemy Core for the conditional statements
# (insert-or-ignore, compare-and-set updates) that the ORM cannot express race-free.
DEVICES = _table(DeviceRow)
DEVICE_EVENTS = _table(DeviceEventRow)
IDEMPOTENCY_KEYS = _table(IdempotencyKeyRow)
RECORDS = _table(RecordRow)
WAITS = _table(WaitRow)
DEVICE_RUNS = _table(DeviceRunRow)
ROUTE_OUTBOX = _table(RouteOutboxRow)
PROCESS_LEASES = _table(ProcessLeaseRow)
RUN_LEASES = _table(RunLeaseRow)

#: The metadata the migrations target.
metadata = SQLModel.metadata
