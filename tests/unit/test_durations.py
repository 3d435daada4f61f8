"""ISO 8601 durations and RFC 3339 timestamps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from interpreter.durations import parse_duration, parse_timestamp
from interpreter.errors import ExpressionError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PT30S", timedelta(seconds=30)),
        ("PT5M", timedelta(minutes=5)),
        ("PT2H", timedelta(hours=2)),
        ("P1D", timedelta(days=1)),
        ("P1DT12H", timedelta(days=1, hours=12)),
        ("PT1H30M15S", timedelta(hours=1, minutes=30, seconds=15)),
        ("PT0.5S", timedelta(milliseconds=500)),
        ("PT0,25S", timedelta(milliseconds=250)),
        ("PT1.000001S", timedelta(seconds=1, microseconds=1)),
        ("P2W", timedelta(weeks=2)),
        ("PT0S", timedelta(0)),
        ("PT90M", timedelta(minutes=90)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["P1Y", "P1M", "P1Y2M3D", "P0M", "P2M1DT1H"])
def test_years_and_months_are_refused_with_the_reason(text: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        parse_duration(text)
    assert "years and months have no fixed length" in str(caught.value)
    assert caught.value.expression == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "P",
        "PT",
        "P1DT",
        "5M",
        "pt5m",
        "-PT1S",
        "PT-1S",
        "P1.5D",
        "PT1.5M",
        "P1W2D",
        "PT5M ",
        "1",
    ],
)
def test_malformed_durations_are_refused(text: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        parse_duration(text)
    assert "expected an ISO 8601 duration" in str(caught.value)


def test_month_minutes_are_not_confused() -> None:
    assert parse_duration("PT1M") == timedelta(minutes=1)


def test_huge_duration_is_refused() -> None:
    with pytest.raises(ExpressionError, match="longer than the maximum of 3,650 days"):
        parse_duration("P99999999999999999999D")


def test_overlong_and_non_string_durations_are_refused() -> None:
    with pytest.raises(ExpressionError, match="longer than 100 characters"):
        parse_duration("PT" + "1" * 200 + "S")
    with pytest.raises(ExpressionError, match="must be a string, got int"):
        parse_duration(5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-31T08:30:00Z", datetime(2024, 1, 31, 8, 30, tzinfo=UTC)),
        ("2024-01-31t08:30:00z", datetime(2024, 1, 31, 8, 30, tzinfo=UTC)),
        ("2024-01-31 08:30:00Z", datetime(2024, 1, 31, 8, 30, tzinfo=UTC)),
        (
            "2024-01-31T09:30:00+01:00",
            datetime(2024, 1, 31, 9, 30, tzinfo=timezone(timedelta(hours=1))),
        ),
        (
            "2024-01-31T03:00:00-05:30",
            datetime(2024, 1, 31, 3, tzinfo=timezone(-timedelta(hours=5, minutes=30))),
        ),
        ("2024-01-31T08:30:00.5Z", datetime(2024, 1, 31, 8, 30, 0, 500000, tzinfo=UTC)),
        ("2024-01-31T08:30:00.123456789Z", datetime(2024, 1, 31, 8, 30, 0, 123456, tzinfo=UTC)),
    ],
)
def test_timestamps(text: str, expected: datetime) -> None:
    parsed = parse_timestamp(text)
    assert parsed == expected
    assert parsed.utcoffset() == expected.utcoffset()


def test_same_instant_with_different_offsets() -> None:
    assert parse_timestamp("2024-01-01T00:00:00Z") == parse_timestamp("2024-01-01T01:00:00+01:00")


def test_naive_timestamp_is_refused() -> None:
    with pytest.raises(ExpressionError) as caught:
        parse_timestamp("2024-01-31T08:30:00")
    assert "has no offset" in str(caught.value)
    assert caught.value.expression == "2024-01-31T08:30:00"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2024-01-31", "expected RFC 3339"),
        ("2024-1-31T08:30:00Z", "expected RFC 3339"),
        ("2024-01-31T08:30Z", "expected RFC 3339"),
        ("2024-01-31T08:30:00+0100", "expected RFC 3339"),
        ("yesterday", "expected RFC 3339"),
        ("2024-02-30T00:00:00Z", "day is out of range"),
        ("2024-01-31T24:00:00Z", "hour must be in"),
        ("2024-01-31T08:30:60Z", "leap seconds are not supported"),
        ("2024-01-31T08:30:00+24:00", "offset out of range"),
        ("0000-01-01T00:00:00Z", "year 0 is out of range"),
    ],
)
def test_malformed_timestamps_are_refused(text: str, message: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        parse_timestamp(text)
    assert message in str(caught.value)
    assert repr(text) in str(caught.value)


def test_non_string_timestamp_is_refused() -> None:
    with pytest.raises(ExpressionError, match="must be a string, got NoneType"):
        parse_timestamp(None)  # type: ignore[arg-type]
