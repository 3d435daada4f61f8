"""Leases: which process executes each run, and whether that process is alive.

- ``process_leases``: one row per process that executes runs (an ``orchestration worker``, or a
  Prefect worker's flow process), renewed every few seconds; a row past ``expires_at`` is a dead
  process.
- ``run_leases``: the process that executes each run now; a run whose holder is dead is taken
  back by a live executor (``flows.leases``), ``heals`` counts how often.
- ``idempotency_keys.holder``: the process whose call holds a ``pending`` key, so that a dead
  process's claim is taken over at once rather than after the five-minute lease.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    timestamp = sa.DateTime(timezone=True)
    op.create_table(
        "process_leases",
        sa.Column("holder", sa.String(200), primary_key=True),
        sa.Column("host", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", timestamp, nullable=False),
        sa.Column("renewed_at", timestamp, nullable=False),
        sa.Column("expires_at", timestamp, nullable=False),
    )
    op.create_table(
        "run_leases",
        sa.Column("flow_run_id", sa.String(200), primary_key=True),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("held_at", timestamp, nullable=False),
        sa.Column("heals", sa.Integer(), nullable=False),
    )
    with op.batch_alter_table("idempotency_keys") as table:
        table.add_column(sa.Column("holder", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("idempotency_keys") as table:
        table.drop_column("holder")
    op.drop_table("run_leases")
    op.drop_table("process_leases")
