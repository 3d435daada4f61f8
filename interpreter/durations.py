"""Parse the time literals of a definition: ISO 8601 durations and RFC 3339 timestamps.

Durations: ``PnW`` or ``P[nD][T[nH][nM][nS]]`` with non-negative integers, seconds may carry a
fraction (``PT1.5S``, ``PT0,25S``). Years and months are refused: they have no fixed length, so a
wait of ``P1M`` would mean something different on each date. Timestamps: RFC 3339 date-time with a
``Z`` or ``+hh:mm``/``-hh:mm`` offset; a naive time is refused because it names no instant.
Fractions beyond microseconds are truncated; a leap second (``:60``) is refused (Python's datetime
cannot hold it).

Both stay within what the engine, the store and Prefect can hold: a duration is at most
``MAX_WAIT_SECONDS`` (3,650 days), and a timestamp's instant, in UTC, lies between the years 1 and
9999 (``9999-12-31T23:59:59-23:59`` is in the year 10000 in UTC and is refused).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Final

from interpreter.errors import ExpressionError
from interpreter.limits import MAX_WAIT_SECONDS

__all__ = ["parse_duration", "parse_timestamp"]

# Longest literal worth parsing; anything longer is refused before any regex runs.
_MAX_LITERAL_LENGTH: Final = 100

_WEEKS: Final = re.compile(r"P([0-9]+)W", re.ASCII)
_DAY_TIME: Final = re.compile(
    r"P(?:(?P<days>[0-9]+)D)?"
    r"(?:T(?:(?P<hours>[0-9]+)H)?(?:(?P<minutes>[0-9]+)M)?(?:(?P<seconds>[0-9]+(?:[.,][0-9]+)?)S)?)?",
    re.ASCII,
)
_YEARS_OR_MONTHS: Final = re.compile(r"P(?:[0-9.,]+Y|(?:[0-9.,]+[YW])*[0-9.,]+M)", re.ASCII)

_TIMESTAMP: Final = re.compile(
    r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})[Tt ]"
    r"(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})(?:\.(?P<fraction>[0-9]+))?"
    r"(?:(?P<utc>[Zz])|(?P<sign>[+-])(?P<off_hour>[0-9]{2}):(?P<off_minute>[0-9]{2}))?",
    re.ASCII,
)


def _shown(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _check_literal(kind: str, text: object) -> None:
    """A ``kind`` literal must be a string no longer than ``_MAX_LITERAL_LENGTH``."""
    if not isinstance(text, str):
        raise ExpressionError(f"a {kind} must be a string, got {type(text).__name__}")
    if len(text) > _MAX_LITERAL_LENGTH:
        raise ExpressionError(
            f"{kind} {_shown(text)} is longer than {_MAX_LITERAL_LENGTH} characters", text
        )


def parse_duration(text: str) -> timedelta:
    """An ISO 8601 duration (``PT5M``, ``P1DT2H``, ``P2W``, ``PT0.5S``) as a ``timedelta``."""
    _check_literal("duration", text)
    try:
        delay = _delay(text)
    except OverflowError:
        delay = None  # more than timedelta holds: beyond the maximum in any case
    if delay is None or delay.total_seconds() > MAX_WAIT_SECONDS:
        raise ExpressionError(
            f"duration {_shown(text)} is longer than the maximum of "
            f"{MAX_WAIT_SECONDS / 86_400:,.0f} days ({MAX_WAIT_SECONDS:,.0f} seconds)",
            text,
        )
    return delay


def _delay(text: str) -> timedelta:
    weeks = _WEEKS.fullmatch(text)
    if weeks:
        return timedelta(weeks=int(weeks.group(1)))
    parts = _DAY_TIME.fullmatch(text)
    if parts is None or text in ("P", "PT") or text.endswith("T"):
        if _YEARS_OR_MONTHS.match(text):
            raise ExpressionError(
                f"duration {_shown(text)}: years and months have no fixed length; "
                "give days or weeks instead (e.g. 'P30D')",
                text,
            )
        raise ExpressionError(
            f"duration {_shown(text)}: expected an ISO 8601 duration such as 'PT30S', 'PT5M', "
            "'P1DT12H' or 'P2W'",
            text,
        )
    seconds = (parts.group("seconds") or "0").replace(",", ".")
    return timedelta(
        days=int(parts.group("days") or 0),
        hours=int(parts.group("hours") or 0),
        minutes=int(parts.group("minutes") or 0),
        seconds=float(seconds),
    )


def parse_timestamp(text: str) -> datetime:
    """An RFC 3339 timestamp with an offset (``2024-01-01T00:00:00Z``) as an aware ``datetime``."""
    _check_literal("timestamp", text)
    found = _TIMESTAMP.fullmatch(text)
    if found is None:
        raise ExpressionError(
            f"timestamp {_shown(text)}: expected RFC 3339 such as '2024-01-31T08:30:00Z' "
            "or '2024-01-31T09:30:00+01:00'",
            text,
        )
    if not found.group("utc") and not found.group("sign"):
        raise ExpressionError(
            f"timestamp {_shown(text)} has no offset: add 'Z' for UTC or an offset like '+01:00'",
            text,
        )
    if found.group("second") == "60":
        raise ExpressionError(f"timestamp {_shown(text)}: leap seconds are not supported", text)
    offset = timedelta(0)
    if found.group("sign"):
        off_hour, off_minute = int(found.group("off_hour")), int(found.group("off_minute"))
        if off_hour > 23 or off_minute > 59:
            raise ExpressionError(f"timestamp {_shown(text)}: offset out of range", text)
        offset = timedelta(hours=off_hour, minutes=off_minute)
        if found.group("sign") == "-":
            offset = -offset
    fraction = (found.group("fraction") or "0")[:6].ljust(6, "0")
    try:
        instant = datetime(
            int(found.group("year")),
            int(found.group("month")),
            int(found.group("day")),
            int(found.group("hour")),
            int(found.group("minute")),
            int(found.group("second")),
            int(fraction),
            tzinfo=timezone(offset),
        )
    except ValueError as exc:
        raise ExpressionError(f"timestamp {_shown(text)}: {exc}", text) from exc
    try:
        # The store keeps instants in UTC, comparisons convert too: both must stay in range.
        instant.astimezone(UTC)
    except OverflowError as exc:
        raise ExpressionError(
            f"timestamp {_shown(text)} is out of range: in UTC it falls outside the years "
            "1 to 9999",
            text,
        ) from exc
    return instant
