"""Column types that behave the same on SQLite and PostgreSQL: UTC timestamps and JSON."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Dialect, Integer
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator, TypeEngine

__all__ = ["BIGINT_PK", "JSON_TYPE", "UTCDateTime", "utc_now"]


def utc_now() -> datetime:
    """The current instant, timezone-aware UTC (the only clock reading the store does)."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC instant on every dialect.

    PostgreSQL stores ``timestamptz`` and returns aware values. SQLite has no timestamp type: values
    are stored as naive UTC text in one fixed format, so comparisons and ``ORDER BY`` on the text
    agree with the instants, and the UTC zone is attached again when read. Naive values are refused
    on the way in: a naive datetime is ambiguous, and guessing is how clocks drift by hours.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the store takes timezone-aware values")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


#: JSON documents: JSONB on PostgreSQL (compact, comparable), JSON text on SQLite.
JSON_TYPE: TypeEngine[Any] = JSON().with_variant(JSONB(), "postgresql")

#: A 64-bit autoincrement key; SQLite only autoincrements ``INTEGER PRIMARY KEY`` (the rowid).
BIGINT_PK: TypeEngine[int] = BigInteger().with_variant(Integer(), "sqlite")
