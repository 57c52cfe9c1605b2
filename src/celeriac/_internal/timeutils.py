"""Time helpers: aware UTC datetimes, ISO-8601 parsing, durations in seconds."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

UTC = timezone.utc


def utcnow() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


def to_seconds(value: float | timedelta | None) -> float | None:
    """A duration given as seconds or a timedelta, as float seconds."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


def make_aware(dt: datetime) -> datetime:
    """``dt`` with a timezone; naive values are taken as local time, as Celery's worker does."""
    if dt.tzinfo is None:
        return dt.astimezone()  # interprets naive as local time
    return dt


def parse_iso(value: str) -> datetime:
    """Parse an ISO-8601 timestamp (offset optional, ``Z`` accepted)."""
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    return datetime.fromisoformat(text)


def to_timestamp(dt: datetime) -> float:
    """Unix time of ``dt`` (naive means local time)."""
    return make_aware(dt).timestamp()


def monotonic() -> float:
    return time.monotonic()
