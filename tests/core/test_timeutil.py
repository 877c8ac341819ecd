"""Timestamp helpers: every layout the normalizers meet, to tz-aware UTC microseconds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from ztaudit.core.timeutil import (
    TimestampError,
    parse_epoch,
    parse_go_layout,
    parse_offset,
    parse_rfc3339,
    parse_timestamp,
    to_utc,
)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0,
        micro: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Kubernetes MicroTime
        ("2025-05-19T09:37:51.360338Z", utc(2025, 5, 19, 9, 37, 51, 360338)),
        # Pomerium zerolog: second precision, local offset (docs/proxy-and-idp.md §1.1)
        ("2023-08-07T09:48:03-04:00", utc(2023, 8, 7, 13, 48, 3)),
        ("2026-11-24T10:06:12+01:00", utc(2026, 11, 24, 9, 6, 12)),
        # Okta / Google: ms UTC
        ("2020-02-14T22:18:51.843Z", utc(2020, 2, 14, 22, 18, 51, 843000)),
        # Entra: 100 ns with an explicit offset -> truncated, not rounded
        ("2019-06-24T09:32:07.4637229+00:00", utc(2019, 6, 24, 9, 32, 7, 463722)),
        # Keycloak ECS: ns
        ("2025-11-21T14:30:45.987654321Z", utc(2025, 11, 21, 14, 30, 45, 987654)),
        # space separator, compact offset, lower-case z
        ("2026-11-20 10:00:00+0130", utc(2026, 11, 20, 8, 30)),
        ("2026-11-20t10:00:00z", utc(2026, 11, 20, 10)),
        # leap second folds into the next second
        ("2016-12-31T23:59:60Z", utc(2017, 1, 1)),
    ],
)
def test_rfc3339(text: str, expected: datetime) -> None:
    got = parse_rfc3339(text)
    assert got == expected
    assert got.tzinfo is UTC


def test_rfc3339_naive_uses_configured_offset() -> None:
    assert parse_rfc3339("2026-11-20T10:00:00") == utc(2026, 11, 20, 10)
    assert parse_rfc3339("2026-11-20T10:00:00", "+02:00") == utc(2026, 11, 20, 8)
    # an explicit zone always wins over the configured one
    assert parse_rfc3339("2026-11-20T10:00:00Z", "+02:00") == utc(2026, 11, 20, 10)


@pytest.mark.parametrize("bad", ["", "TIMELESS", "2026-13-01T00:00:00Z", "2026-11-20", "2026-W47-5",
                                 "2026-11-20T25:00:00Z", "2026-11-20T10:00:00+25:00", "20261120T100000Z"])
def test_rfc3339_rejects(bad: str) -> None:
    with pytest.raises(TimestampError):
        parse_rfc3339(bad)


def test_go_layout() -> None:
    assert parse_go_layout("2026/11/25 16:20:05") == utc(2026, 11, 25, 16, 20, 5)
    assert parse_go_layout("2026/11/25 16:20:05", "-05:00") == utc(2026, 11, 25, 21, 20, 5)
    with pytest.raises(TimestampError):
        parse_go_layout("[TIMELESS]")
    with pytest.raises(TimestampError):
        parse_go_layout("2026/02/30 00:00:00")


def test_epoch_units() -> None:
    t = utc(2026, 11, 21, 10, 4, 12, 331000)
    ms = int(t.timestamp() * 1000)
    assert parse_epoch(ms) == t
    assert parse_epoch(ms // 1000) == t.replace(microsecond=0)
    assert parse_epoch(ms * 1000) == t
    assert parse_epoch(ms * 1_000_000 + 999) == t  # ns truncated
    assert parse_epoch(str(ms)) == t
    assert parse_epoch(ms / 1000, unit="s") == t
    bad_values: tuple[float | int | str, ...] = (True, float("nan"), 12, "abc")
    for bad in bad_values:
        with pytest.raises(TimestampError):
            parse_epoch(bad)


def test_offsets() -> None:
    assert parse_offset("") is UTC
    assert parse_offset("Z") is UTC
    assert parse_offset("+02:00") == timezone(timedelta(hours=2))
    assert parse_offset("-0430") == timezone(-timedelta(hours=4, minutes=30))
    assert parse_offset("+05") == timezone(timedelta(hours=5))
    with pytest.raises(TimestampError):
        parse_offset("Europe/Berlin")


def test_parse_timestamp_dispatch() -> None:
    assert parse_timestamp("2026-11-20T10:00:00Z") == utc(2026, 11, 20, 10)
    assert parse_timestamp("2026/11/20 10:00:00", "+01:00") == utc(2026, 11, 20, 9)
    assert parse_timestamp(1795168800000) == utc(2026, 11, 20, 10)
    assert parse_timestamp("1795168800000") == utc(2026, 11, 20, 10)
    assert parse_timestamp(datetime(2026, 11, 20, 10)) == utc(2026, 11, 20, 10)
    assert to_utc(datetime(2026, 11, 20, 10), "+01:00") == utc(2026, 11, 20, 9)
    bad_values: tuple[object, ...] = (None, "", "  ", [], {"t": 1}, "not a time")
    for bad in bad_values:
        with pytest.raises(TimestampError):
            parse_timestamp(bad)


def test_error_names_the_value() -> None:
    with pytest.raises(TimestampError, match="TIMELESS"):
        parse_timestamp("TIMELESS")
