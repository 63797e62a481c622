"""India Standard Time: the exchanges' clock (UTC+05:30, no daylight saving)."""

from __future__ import annotations

from datetime import timedelta, timezone

IST = timezone(timedelta(hours=5, minutes=30), "IST")
IST_OFFSET = 19_800  # seconds east of UTC
DAY = 86_400


def ist_date(epoch: float) -> int:
    """The IST calendar day of ``epoch`` as a day number (days since 1970-01-01 IST)."""
    return int((epoch + IST_OFFSET) // DAY)
