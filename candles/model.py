"""Candle value type and interval arithmetic (buckets aligned to the 09:15 IST session open)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from core.fastnew import fast_new
from core.ist import DAY, IST_OFFSET

_SESSION_OPEN = 9 * 3600 + 15 * 60  # 09:15 IST
_DAY = DAY
# 09:15 IST as seconds since the epoch modulo a day; every intraday width divides a day, so one
# global grid anchored here is the same as a per-day grid anchored at each session open.
_ANCHOR = (_SESSION_OPEN - IST_OFFSET) % _DAY

_UNITS = {"m": 60, "h": 3600, "d": _DAY}


@dataclass(frozen=True, slots=True)
class Interval:
    name: str  # canonical spelling: 1m, 5m, 1h, 1d
    seconds: int

    @classmethod
    def parse(cls, text: str) -> Interval:
        if text.strip().endswith("M"):
            raise ValueError(
                f"ambiguous interval {text!r}: write {text.strip()[:-1]}m for minutes "
                "(months are not an interval: the longest is 1d)"
            )
        raw = text.strip().lower()
        if len(raw) < 2 or raw[-1] not in _UNITS or not raw[:-1].isdigit() or int(raw[:-1]) <= 0:
            raise ValueError(
                f"unknown interval {text!r}: use a whole number and a unit m, h or d "
                "(e.g. 1m, 5m, 15m, 1h, 1d)"
            )
        seconds = int(raw[:-1]) * _UNITS[raw[-1]]
        if raw[-1] == "d" and seconds != _DAY:
            raise ValueError(f"unknown interval {text!r}: the only daily interval is 1d")
        if seconds < _DAY and _DAY % seconds:
            raise ValueError(
                f"unknown interval {text!r}: intraday intervals must divide a day evenly "
                "(1m, 2m, 3m, 5m, 10m, 15m, 30m, 1h, 2h ...)"
            )
        return cls(raw, seconds)

    def bucket_start(self, epoch: float) -> int:
        """Epoch seconds of the start of the bucket holding ``epoch``."""
        if self.seconds == _DAY:  # the IST calendar day
            return int((epoch + IST_OFFSET) // _DAY * _DAY - IST_OFFSET)
        return int((epoch - _ANCHOR) // self.seconds * self.seconds + _ANCHOR)

    def __str__(self) -> str:
        return self.name


def parse_intervals(text: str) -> tuple[Interval, ...]:
    """Parse ``1m,5m,1h`` into intervals, shortest first, duplicates dropped."""
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise ValueError("no interval given: use e.g. --intervals 1m,5m,1h")
    found = {i.seconds: i for i in map(Interval.parse, parts)}
    return tuple(found[s] for s in sorted(found))


LIVE = "live"  # built from ticks watched over the whole bucket
PARTIAL = "partial"  # built from ticks, but the feed was not watched over the whole bucket
BACKFILL = "backfill"  # from the broker's historical candles
SOURCES = (LIVE, PARTIAL, BACKFILL)


@dataclass(frozen=True, slots=True)
class Candle:
    """One OHLCV bar. ``bucket`` is timezone-aware (IST); prices are exact decimals.

    ``source`` says where it came from (ARCHITECTURE.md, candle rule 8): ``live``, ``partial``
    (a live candle whose bucket the daemon did not watch from start to end: its OHLC may miss
    extremes and its volume may be short) or ``backfill``.
    """

    exchange: str
    symbol: str
    interval: str
    bucket: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: int
    oi: int | None
    tick_count: int
    first_tick: datetime
    last_tick: datetime
    cum_volume: int | None
    final: bool
    source: str = LIVE

    @property
    def key(self) -> tuple[str, str, str, datetime]:
        return (self.exchange, self.symbol, self.interval, self.bucket)


new_candle = fast_new(Candle)  # Candle(*fields) for the aggregator's closes
