"""Dialect-specific SQL the stores share: insert-or-ignore on a unique key."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["insert_or_ignore"]


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
