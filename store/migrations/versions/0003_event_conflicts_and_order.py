"""Conflicting event ids and out-of-order producer times: ``orch_record_events`` notes both.

- An event id already stored for the device with other content (another name or payload, compared
  as JSON values) is reported ``conflict`` instead of ``duplicate``: it is not stored, and the
  ingress dead-letters it with a reason (the producer reused an id; keeping either copy silently
  would hide it).
- ``device_events.occurred_at`` keeps the producer's time of the event (None when the producer
  gave none); ``devices.last_occurred_at`` the latest one recorded for the device. An event whose
  producer time is earlier than that is stored in arrival order as before, flagged
  ``out_of_order`` (on the row and in the function's result) so that the ingress logs it.

The function's arguments and result change (``p_occurred_at``, ``out_of_order``): the 0002
version is dropped and this one created; the downgrade restores 0002's.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_SIGNATURE = (
    "orch_record_events("
    "text[], text[], text[], text[], timestamptz[], timestamptz[], timestamptz, integer)"
)
NEW_SIGNATURE = (
    "orch_record_events(text[], text[], text[], text[], timestamptz[], timestamptz[],"
    " timestamptz[], timestamptz, integer)"
)

RECORD_EVENTS = r"""
CREATE OR REPLACE FUNCTION orch_record_events(
    p_device_ids text[],
    p_event_ids text[],
    p_names text[],
    p_payloads text[],
    p_enqueued_at timestamptz[],
    p_received_at timestamptz[],
    p_occurred_at timestamptz[],
    p_now timestamptz,
    p_max integer
)
RETURNS TABLE (
    idx integer,
    status text,
    seq bigint,
    out_of_order boolean,
    run_key text,
    run_id text,
    run_workflow text,
    run_status text,
    run_started_by_event text,
    run_created_at timestamptz,
    run_updated_at timestamptz,
    waiting text[]
)
LANGUAGE plpgsql
AS $fn$
DECLARE
    total integer := coalesce(array_length(p_device_ids, 1), 0);
    i integer := 1;
    j integer;
    group_end integer;
    device text;
    held integer;
    last_seq bigint;
    refused integer;
    changed boolean;
    found_seq bigint;
    same_content boolean;
    last_occ timestamptz;
    late boolean;
    statuses text[];
    seqs bigint[];
    lates boolean[];
    run record;
    run_waiting text[];
BEGIN
    WHILE i <= total LOOP
        device := p_device_ids[i];
        group_end := i;
        WHILE group_end < total AND p_device_ids[group_end + 1] = device LOOP
            group_end := group_end + 1;
        END LOOP;

        SELECT d.count, d.last_sequence, d.last_occurred_at INTO held, last_seq, last_occ
        FROM devices d WHERE d.device_id = device FOR UPDATE;
        IF NOT FOUND THEN
            INSERT INTO devices AS d
                (device_id, count, last_sequence, overflowed, first_seen_at, last_activity_at)
            VALUES (device, 0, 0, 0, p_now, p_now)
            ON CONFLICT (device_id) DO NOTHING;
            SELECT d.count, d.last_sequence, d.last_occurred_at INTO held, last_seq, last_occ
            FROM devices d WHERE d.device_id = device FOR UPDATE;
        END IF;

        refused := 0;
        changed := false;
        statuses := ARRAY[]::text[];
        seqs := ARRAY[]::bigint[];
        lates := ARRAY[]::boolean[];
        FOR j IN i..group_end LOOP
            found_seq := NULL;
            late := coalesce(p_occurred_at[j] < last_occ, false);
            IF held < p_max THEN
                INSERT INTO device_events AS e
                    (device_id, sequence, event_id, name, payload, enqueued_at, received_at,
                     occurred_at, out_of_order)
                VALUES (device, last_seq + 1, p_event_ids[j], p_names[j], p_payloads[j]::jsonb,
                        p_enqueued_at[j], coalesce(p_received_at[j], p_now), p_occurred_at[j],
                        late)
                ON CONFLICT (device_id, event_id) DO NOTHING;
                IF FOUND THEN
                    last_seq := last_seq + 1;
                    held := held + 1;
                    changed := true;
                    -- greatest() ignores NULL: an event without a producer time moves nothing.
                    last_occ := greatest(last_occ, p_occurred_at[j]);
                    statuses := statuses || 'inserted'::text;
                    seqs := seqs || last_seq;
                    lates := lates || late;
                    CONTINUE;
                END IF;
            END IF;
            SELECT e.sequence,
                   e.name = p_names[j] AND e.payload IS NOT DISTINCT FROM p_payloads[j]::jsonb
            INTO found_seq, same_content
            FROM device_events e WHERE e.device_id = device AND e.event_id = p_event_ids[j];
            IF found_seq IS NOT NULL THEN
                statuses := statuses
                    || CASE WHEN same_content THEN 'duplicate'::text ELSE 'conflict'::text END;
                seqs := seqs || found_seq;
            ELSE
                refused := refused + 1;
                changed := true;
                statuses := statuses || 'overflow'::text;
                seqs := seqs || NULL::bigint;
            END IF;
            lates := lates || false;
        END LOOP;

        IF changed THEN
            UPDATE devices d
            SET count = held, last_sequence = last_seq, overflowed = d.overflowed + refused,
                last_occurred_at = last_occ, last_activity_at = p_now
            WHERE d.device_id = device;
        END IF;

        SELECT r.run_key, r.run_id, r.workflow, r.status, r.started_by_event, r.created_at,
               r.updated_at
        INTO run
        FROM device_runs r WHERE r.device_id = device;
        IF FOUND THEN
            SELECT array_agg(DISTINCT w.event_name) INTO run_waiting
            FROM waits w
            WHERE w.run_id = run.run_id AND w.device_id = device AND w.status = 'waiting'
              AND w.event_name IS NOT NULL;
        ELSE
            run_waiting := NULL;
        END IF;

        FOR j IN i..group_end LOOP
            idx := j;
            status := statuses[j - i + 1];
            seq := seqs[j - i + 1];
            out_of_order := lates[j - i + 1];
            run_key := run.run_key;
            run_id := run.run_id;
            run_workflow := run.workflow;
            run_status := run.status;
            run_started_by_event := run.started_by_event;
            run_created_at := run.created_at;
            run_updated_at := run.updated_at;
            waiting := run_waiting;
            RETURN NEXT;
        END LOOP;
        i := group_end + 1;
    END LOOP;
END;
$fn$;
"""


def _previous_function() -> str:
    """0002's ``RECORD_EVENTS`` (a revision file is not importable by name: it starts with a
    digit)."""
    path = Path(__file__).with_name("0002_record_events_function.py")
    spec = importlib.util.spec_from_file_location("orch_migration_0002", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.RECORD_EVENTS)


def upgrade() -> None:
    timestamp = sa.DateTime(timezone=True)
    with op.batch_alter_table("device_events") as table:
        table.add_column(sa.Column("occurred_at", timestamp, nullable=True))
        table.add_column(
            sa.Column("out_of_order", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("devices") as table:
        table.add_column(sa.Column("last_occurred_at", timestamp, nullable=True))
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite records through the portable path in ``store.events``
    op.execute(f"DROP FUNCTION IF EXISTS {OLD_SIGNATURE}")
    op.execute(RECORD_EVENTS)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS {NEW_SIGNATURE}")
        op.execute(_previous_function())
    with op.batch_alter_table("devices") as table:
        table.drop_column("last_occurred_at")
    with op.batch_alter_table("device_events") as table:
        table.drop_column("out_of_order")
        table.drop_column("occurred_at")
