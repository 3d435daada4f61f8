"""PostgreSQL: ``orch_record_events``, record a batch of device events in one round trip.

The function does what ``EventStore.record`` does on SQLite, for many events at once, inside the
caller's statement: per device (the batch comes sorted by device, each device's events in arrival
order) it locks the ``devices`` row (creating it first), then for each event inserts it with the
next sequence unless its id is already stored (``duplicate``, with the first copy's sequence) or
the device holds ``p_max`` events (``overflow``, counted); it writes the device's counters once,
then reads the device's run and the names of the events that run waits for. That read is a new
statement after the row lock was taken, so it sees every wait registered before the lock (a wait
registration takes the same row lock, see ``WaitStore.register``): either the run finds the event
when it claims, or this read finds the run's wait.

Devices are locked in the order of the batch (sorted), so two batches never deadlock.

Revision ID: 0002
Revises: 0001
Create Date: 2026-02-01
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RECORD_EVENTS = r"""
CREATE OR REPLACE FUNCTION orch_record_events(
    p_device_ids text[],
    p_event_ids text[],
    p_names text[],
    p_payloads text[],
    p_enqueued_at timestamptz[],
    p_received_at timestamptz[],
    p_now timestamptz,
    p_max integer
)
RETURNS TABLE (
    idx integer,
    status text,
    seq bigint,
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
    statuses text[];
    seqs bigint[];
    run record;
    run_waiting text[];
BEGIN
    WHILE i <= total LOOP
        device := p_device_ids[i];
        group_end := i;
        WHILE group_end < total AND p_device_ids[group_end + 1] = device LOOP
            group_end := group_end + 1;
        END LOOP;

        SELECT d.count, d.last_sequence INTO held, last_seq
        FROM devices d WHERE d.device_id = device FOR UPDATE;
        IF NOT FOUND THEN
            INSERT INTO devices AS d
                (device_id, count, last_sequence, overflowed, first_seen_at, last_activity_at)
            VALUES (device, 0, 0, 0, p_now, p_now)
            ON CONFLICT (device_id) DO NOTHING;
            SELECT d.count, d.last_sequence INTO held, last_seq
            FROM devices d WHERE d.device_id = device FOR UPDATE;
        END IF;

        refused := 0;
        changed := false;
        statuses := ARRAY[]::text[];
        seqs := ARRAY[]::bigint[];
        FOR j IN i..group_end LOOP
            found_seq := NULL;
            IF held < p_max THEN
                INSERT INTO device_events AS e
                    (device_id, sequence, event_id, name, payload, enqueued_at, received_at)
                VALUES (device, last_seq + 1, p_event_ids[j], p_names[j], p_payloads[j]::jsonb,
                        p_enqueued_at[j], coalesce(p_received_at[j], p_now))
                ON CONFLICT (device_id, event_id) DO NOTHING;
                IF FOUND THEN
                    last_seq := last_seq + 1;
                    held := held + 1;
                    changed := true;
                    statuses := statuses || 'inserted'::text;
                    seqs := seqs || last_seq;
                    CONTINUE;
                END IF;
            END IF;
            SELECT e.sequence INTO found_seq
            FROM device_events e WHERE e.device_id = device AND e.event_id = p_event_ids[j];
            IF found_seq IS NOT NULL THEN
                statuses := statuses || 'duplicate'::text;
                seqs := seqs || found_seq;
            ELSE
                refused := refused + 1;
                changed := true;
                statuses := statuses || 'overflow'::text;
                seqs := seqs || NULL::bigint;
            END IF;
        END LOOP;

        IF changed THEN
            UPDATE devices d
            SET count = held, last_sequence = last_seq, overflowed = d.overflowed + refused,
                last_activity_at = p_now
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


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite records through the portable path in ``store.events``
    op.execute(RECORD_EVENTS)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "DROP FUNCTION IF EXISTS orch_record_events("
        "text[], text[], text[], text[], timestamptz[], timestamptz[], timestamptz, integer)"
    )
