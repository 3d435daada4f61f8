"""Business records (the ``records.*`` activities): create, update, get, and roll a create back.

- ``create(kind, data, key)``: a new record with a uuid id. With a business ``key`` it is idempotent
  per ``(kind, key)``: a second create returns the first record unchanged (insert-or-ignore on a
  unique constraint), so even a create repeated after a crash makes one record.
- ``update(id, data, status)``: ``data`` is merged into the stored object (top-level keys replaced),
  ``status`` replaced when given; the row is locked for the read-merge-write.
- ``delete(id)`` is the compensation of ``create`` and does not erase: the record stays for the
  audit trail with status ``rolled_back`` and ``rolled_back_at`` set, and its business key is
  released (moved to ``released_key``) so that a later run can create the record for that key
  again. A rolled-back record is final: ``update`` refuses it. ``delete`` is idempotent.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, JsonValue
from sqlalchemy import RowMapping, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from store.columns import utc_now
from store.db import Database
from store.errors import RecordNotFoundError, RecordStateError
from store.idempotency import to_json
from store.sql import insert_or_ignore
from store.tables import RECORDS

__all__ = ["ROLLED_BACK", "Record", "RecordStore"]

ROLLED_BACK = "rolled_back"

_R = RECORDS


class Record(BaseModel):
    """A stored record."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    kind: str
    key: str | None
    data: dict[str, JsonValue]
    status: str
    created_at: datetime
    updated_at: datetime
    rolled_back_at: datetime | None = None

    def as_json(self) -> dict[str, Any]:
        """``{id, kind, key, data, status, createdAt, updatedAt}`` (the activities' output)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "key": self.key,
            "data": self.data,
            "status": self.status,
            "createdAt": self.created_at.isoformat(),
            "updatedAt": self.updated_at.isoformat(),
        }


def _record(row: RowMapping) -> Record:
    return Record(
        id=row["id"],
        kind=row["kind"],
        key=row["key"],
        data=row["data"],
        status=row["status"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        rolled_back_at=row["rolled_back_at"],
    )


def _object(data: Mapping[str, Any]) -> dict[str, JsonValue]:
    value = to_json(dict(data))
    if not isinstance(value, dict):  # pragma: no cover - a mapping stays an object in JSON
        raise TypeError("record data must be a JSON object")
    return value


async def _select(
    connection: AsyncConnection, record_id: str, *, lock: bool = False
) -> RowMapping | None:
    query = select(_R).where(_R.c.id == record_id)
    if lock:
        query = query.with_for_update()
    return (await connection.execute(query)).mappings().first()


class RecordStore:
    """Records on the ``records`` table (see the module docstring)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self,
        kind: str,
        data: Mapping[str, Any],
        key: str | None = None,
        *,
        status: str = "active",
    ) -> Record:
        """A new record, or the existing one of this ``kind`` with this business ``key``."""
        if status == ROLLED_BACK:
            raise ValueError(f"status {ROLLED_BACK!r} is set by delete(), not by create()")
        now = utc_now()
        record_id = str(uuid.uuid4())
        values: dict[str, Any] = {
            "id": record_id,
            "kind": kind,
            "key": key,
            "data": _object(data),
            "status": status,
            "created_at": now,
            "updated_at": now,
        }
        async with self._db.transaction() as connection:
            if key is None:
                await connection.execute(_R.insert().values(**values))
                row = await _select(connection, record_id)
            else:
                await insert_or_ignore(connection, _R, values, ["kind", "key"])
                query = select(_R).where(_R.c.kind == kind, _R.c.key == key)
                row = (await connection.execute(query)).mappings().first()
        if row is None:  # pragma: no cover - inserted or found in this transaction
            raise RecordNotFoundError(record_id)
        return _record(row)

    async def update(
        self,
        record_id: str,
        data: Mapping[str, Any] | None = None,
        status: str | None = None,
    ) -> Record:
        """Merge ``data`` into the record and set ``status``; the updated record."""
        if status == ROLLED_BACK:
            raise ValueError(f"status {ROLLED_BACK!r} is set by delete(), not by update()")
        async with self._db.transaction() as connection:
            row = await _select(connection, record_id, lock=True)
            if row is None:
                raise RecordNotFoundError(record_id)
            if row["status"] == ROLLED_BACK:
                raise RecordStateError(record_id, ROLLED_BACK, "update")
            changes: dict[str, Any] = {"updated_at": utc_now()}
            if data is not None:
                changes["data"] = {**row["data"], **_object(data)}
            if status is not None:
                changes["status"] = status
            await connection.execute(update(_R).where(_R.c.id == record_id).values(**changes))
            updated = await _select(connection, record_id)
        if updated is None:  # pragma: no cover - locked in this transaction
            raise RecordNotFoundError(record_id)
        return _record(updated)

    async def get(self, record_id: str) -> Record | None:
        """The record, or None."""
        async with self._db.transaction(readonly=True) as connection:
            row = await _select(connection, record_id)
        return None if row is None else _record(row)

    async def require(self, record_id: str) -> Record:
        """The record; ``RecordNotFoundError`` when there is none."""
        record = await self.get(record_id)
        if record is None:
            raise RecordNotFoundError(record_id)
        return record

    async def get_by_key(self, kind: str, key: str) -> Record | None:
        """The live (not rolled back) record of ``kind`` with business ``key``, or None."""
        async with self._db.transaction(readonly=True) as connection:
            query = select(_R).where(_R.c.kind == kind, _R.c.key == key)
            row = (await connection.execute(query)).mappings().first()
        return None if row is None else _record(row)

    async def delete(self, record_id: str) -> bool:
        """Roll the create back (status ``rolled_back``, key released); True when the record is
        rolled back now or was already, False when there is no such record."""
        async with self._db.transaction() as connection:
            row = await _select(connection, record_id, lock=True)
            if row is None:
                return False
            if row["status"] != ROLLED_BACK:
                now = utc_now()
                await connection.execute(
                    update(_R)
                    .where(_R.c.id == record_id)
                    .values(
                        status=ROLLED_BACK,
                        key=None,
                        released_key=row["key"],
                        rolled_back_at=now,
                        updated_at=now,
                    )
                )
            return True
