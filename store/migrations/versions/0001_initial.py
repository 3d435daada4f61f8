"""Initial schema: devices, device events, idempotency keys, records, waits, device runs, outbox.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    timestamp = sa.DateTime(timezone=True)
    json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
    bigint_pk = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

    op.create_table(
        "devices",
        sa.Column("device_id", sa.String(200), primary_key=True),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("last_sequence", sa.BigInteger(), nullable=False),
        sa.Column("overflowed", sa.Integer(), nullable=False),
        sa.Column("first_seen_at", timestamp, nullable=False),
        sa.Column("last_activity_at", timestamp, nullable=False),
    )
    op.create_table(
        "device_events",
        sa.Column("device_id", sa.String(200), primary_key=True),
        sa.Column("sequence", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("payload", json, nullable=True),
        sa.Column("enqueued_at", timestamp, nullable=True),
        sa.Column("received_at", timestamp, nullable=False),
        sa.Column("consumed_by", sa.String(512), nullable=True),
        sa.Column("consumed_at", timestamp, nullable=True),
        sa.Column("cleared_at", timestamp, nullable=True),
        sa.UniqueConstraint("device_id", "event_id", name="uq_device_events_event_id"),
        sa.UniqueConstraint("device_id", "consumed_by", name="uq_device_events_consumed_by"),
    )
    op.create_index("ix_device_events_name", "device_events", ["device_id", "name", "sequence"])
    op.create_table(
        "idempotency_keys",
        sa.Column("key", sa.String(512), primary_key=True),
        sa.Column("activity", sa.String(200), nullable=False),
        sa.Column("input_hash", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(36), nullable=False),
        sa.Column("result", json, nullable=True),
        sa.Column("claimed_at", timestamp, nullable=False),
        sa.Column("completed_at", timestamp, nullable=True),
    )
    op.create_table(
        "records",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("kind", sa.String(200), nullable=False),
        sa.Column("key", sa.String(512), nullable=True),
        sa.Column("released_key", sa.String(512), nullable=True),
        sa.Column("data", json, nullable=False),
        sa.Column("status", sa.String(50), nullable=False),
        sa.Column("created_at", timestamp, nullable=False),
        sa.Column("updated_at", timestamp, nullable=False),
        sa.Column("rolled_back_at", timestamp, nullable=True),
        sa.UniqueConstraint("kind", "key", name="uq_records_kind_key"),
    )
    op.create_table(
        "waits",
        sa.Column("run_id", sa.String(200), primary_key=True),
        sa.Column("wait_key", sa.String(512), primary_key=True),
        sa.Column("device_id", sa.String(200), nullable=True),
        sa.Column("event_name", sa.String(200), nullable=True),
        sa.Column("due_at", timestamp, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", timestamp, nullable=False),
        sa.Column("resolved_at", timestamp, nullable=True),
        sa.Column("resolved_how", sa.String(50), nullable=True),
    )
    op.create_index("ix_waits_due", "waits", ["status", "due_at"])
    op.create_index("ix_waits_event", "waits", ["device_id", "event_name", "status"])
    op.create_table(
        "device_runs",
        sa.Column("device_id", sa.String(200), primary_key=True),
        sa.Column("run_key", sa.String(512), nullable=False),
        sa.Column("run_id", sa.String(200), nullable=True),
        sa.Column("workflow", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_by_event", sa.String(200), nullable=True),
        sa.Column("created_at", timestamp, nullable=False),
        sa.Column("updated_at", timestamp, nullable=False),
    )
    op.create_table(
        "route_outbox",
        sa.Column("id", bigint_pk, primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(200), nullable=False),
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("payload", json, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", timestamp, nullable=False),
        sa.Column("created_at", timestamp, nullable=False),
        sa.Column("updated_at", timestamp, nullable=False),
        sa.UniqueConstraint("device_id", "event_id", "action", name="uq_route_outbox_event_action"),
    )
    op.create_index("ix_route_outbox_pending", "route_outbox", ["status", "next_attempt_at", "id"])


def downgrade() -> None:
    op.drop_table("route_outbox")
    op.drop_table("device_runs")
    op.drop_table("waits")
    op.drop_table("records")
    op.drop_table("idempotency_keys")
    op.drop_table("device_events")
    op.drop_table("devices")
