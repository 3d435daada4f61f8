"""Stuck thresholds of ``automations apply``: durations in, one clear line for a bad one."""

from __future__ import annotations

from datetime import timedelta

import pytest
from typer.testing import CliRunner

from cli.main import app
from operations.automations import MIN_WINDOW, THRESHOLD_FORMS, parse_threshold

runner = CliRunner()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("50h", timedelta(hours=50)),
        ("2d", timedelta(days=2)),
        ("1.5h", timedelta(minutes=90)),
        ("10s", MIN_WINDOW),
        (" 50H ", timedelta(hours=50)),
        ("PT50H", timedelta(hours=50)),
        ("pt15m", timedelta(minutes=15)),
        ("P1DT2H", timedelta(hours=26)),
    ],
)
def test_parse_threshold_reads_durations(text: str, expected: timedelta) -> None:
    assert parse_threshold(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("banana", "'banana' is not a duration"),
        ("50", "'50' is not a duration"),
        ("-5h", "'-5h' is not a duration"),
        ("0.001h", "'0.001h' is 3.6 s, below the minimum of 10 s"),
        ("9s", "below the minimum of 10 s"),
        ("PT5S", "below the minimum of 10 s"),
        ("P1M", "years and months have no fixed length"),
        ("P", "expected an ISO 8601 duration"),
        ("9" * 30 + "d", "is too long"),
    ],
)
def test_parse_threshold_refuses_with_the_reason(text: str, says: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_threshold(text)
    assert says in str(caught.value)


@pytest.mark.parametrize(
    ("args", "option", "says"),
    [
        (["--threshold", "0.001h"], "--threshold:", "below the minimum of 10 s"),
        (["--threshold-hours", "0.001"], "--threshold-hours:", "below the minimum of 10 s"),
        (["--threshold", "banana"], "--threshold:", "'banana' is not a duration"),
        (["--paused-threshold", "5s"], "--paused-threshold:", "below the minimum of 10 s"),
        (["--paused-threshold-hours", "nan"], "--paused-threshold-hours:", "not a number"),
        (["--threshold", "1h", "--threshold-hours", "1"], "--threshold or", "not both"),
    ],
)
def test_apply_refuses_a_bad_threshold_in_one_line(args: list[str], option: str, says: str) -> None:
    # Refused before any Prefect call: no server is needed for the command to answer.
    result = runner.invoke(app, ["automations", "apply", *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: "), lines
    assert option in lines[0] and says in lines[0], lines[0]
    assert "Traceback" not in result.output and "pydantic" not in result.output
    if "not both" not in says:
        assert THRESHOLD_FORMS in lines[0]
