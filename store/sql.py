"""SQL the stores share: insert-or-ignore on a unique key, and the empty device row."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from store.tables import DEVICES

__all__ = ["insert_device_if_missing", "insert_or_ignore"]


async def insert_or_ignore(
    connection: AsyncConnection,
    table: Table,
    values: Mapping[str, Any],
    conflict_columns: Sequence[str],
) -> bool:
    """``INSERT ... ON CONFLICT (conflict_columns) DO NOTHING``; True when the row was inserted.

    Only a conflict on ``conflict_columns`` is ignored; any other constraint still raises.
    """
    if connection.dialect.name == "postgresql":
        pg = postgresql.insert(table).values(**values)
        result = await connection.execute(
            pg.on_conflict_do_nothing(index_elements=conflict_columns)
        )
    else:
        lite = sqlite.insert(table).values(**values)
        result = await connection.execute(
            lite.on_conflict_do_nothing(index_elements=conflict_columns)
        )
    return result.rowcount == 1


async def insert_device_if_missing(
    connection: AsyncConnection, device_id: str, now: datetime
) -> None:
    """Create the device's counters row, empty, unless it exists (every device lock takes it)."""
    await insert_or_ignore(
        connection,
        DEVICES,
        {
            "device_id": device_id,
            "count": 0,
            "last_sequence": 0,
            "overflowed": 0,
            "first_seen_at": now,
            "last_activity_at": now,
        },
        ["device_id"],
    )
