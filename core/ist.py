"""India Standard Time: the exchanges' clock (UTC+05:30, no daylight saving)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

IST = timezone(timedelta(hours=5, minutes=30), "IST")
IST_OFFSET = 19_800  # seconds east of UTC
DAY = 86_400


def ist_date(epoch: float) -> int:
    """The IST calendar day of ``epoch`` as a day number (days since 1970-01-01 IST)."""
    return int((epoch + IST_OFFSET) // DAY)


def iso(ts: datetime) -> str:
    """``ts`` as ISO 8601 in IST (``2026-11-24T09:15:00+05:30``): how every payload writes a time."""
    return ts.astimezone(IST).isoformat()


def epoch_ms(ts: datetime) -> int:
    """``ts`` as epoch milliseconds, the payloads' ``*_ms`` fields."""
    return round(ts.timestamp() * 1000)
