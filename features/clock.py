"""Dates and time zones: parsing `--as-of`, and UTC timestamps to each customer's local time."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import polars as pl

from sendwise.errors import SendwiseError

DAY_US = 86_400_000_000


def parse_as_of(text: str) -> datetime:
    """`YYYY-MM-DD` (the end of that day, UTC) or a full ISO timestamp (UTC unless it says)."""
    text = text.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime.combine(day, time.max, tzinfo=UTC)
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as error:
        raise SendwiseError(
            f"date '{text}' is not YYYY-MM-DD or an ISO timestamp (e.g. 2011-09-09T12:00:00Z)"
        ) from error
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)


def days_since(as_of: datetime, stamp: pl.Expr) -> pl.Expr:
    """Fractional days from `stamp` to `as_of`."""
    return (pl.lit(as_of) - stamp).dt.total_microseconds() / DAY_US


def within_days(as_of: datetime, stamp: pl.Expr, days: float, end_days: float = 0) -> pl.Expr:
    """`stamp` in (as_of - days, as_of - end_days]."""
    return (stamp > as_of - timedelta(days=days)) & (stamp <= as_of - timedelta(days=end_days))


def with_local_time(
    frame: pl.LazyFrame, zones: list[str], stamp: str = "occurred_at", zone: str = "timezone"
) -> pl.LazyFrame:
    """Add `local_at` (naive wall-clock time in each row's zone), exact across DST changes.

    Polars converts zones per column, not per row, so the frame is split by zone (a handful in
    practice) and put back together; each row is converted once.
    """
    parts = [
        frame.filter(pl.col(zone) == name).with_columns(
            local_at=pl.col(stamp).dt.convert_time_zone(name).dt.replace_time_zone(None)
        )
        for name in zones
    ]
    if not parts:
        return frame.with_columns(local_at=pl.col(stamp).dt.replace_time_zone(None))
    return pl.concat(parts, how="vertical")
