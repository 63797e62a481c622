"""Candle value type and interval arithmetic (buckets aligned to the 09:15 IST session open)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

IST = timezone(timedelta(hours=5, minutes=30), "IST")
_IST_OFFSET = 19_800  # seconds east of UTC; India has no daylight saving
_SESSION_OPEN = 9 * 3600 + 15 * 60  # 09:15 IST
_DAY = 86_400
# 09:15 IST as seconds since the epoch modulo a day; every intraday width divides a day, so one
# global grid anchored here is the same as a per-day grid anchored at each session open.
_ANCHOR = (_SESSION_OPEN - _IST_OFFSET) % _DAY

_UNITS = {"m": 60, "h": 3600, "d": _DAY}


@dataclass(frozen=True, slots=True)
class Interval:
    name: str  # canonical spelling: 1m, 5m, 1h, 1d
    seconds: int

    @classmethod
    def parse(cls, text: str) -> Interval:
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

    @property
    def is_daily(self) -> bool:
        return self.seconds == _DAY

    def bucket_start(self, epoch: float) -> int:
        """Epoch seconds of the start of the bucket holding ``epoch``."""
        if self.seconds == _DAY:  # the IST calendar day
            return int((epoch + _IST_OFFSET) // _DAY * _DAY - _IST_OFFSET)
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


def ist_date(epoch: float) -> int:
    """The IST calendar day of ``epoch`` as a day number (days since 1970-01-01 IST)."""
    return int((epoch + _IST_OFFSET) // _DAY)


@dataclass(frozen=True, slots=True)
class Candle:
    """One OHLCV bar. ``bucket`` is timezone-aware (IST); prices are exact decimals."""

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

    @property
    def key(self) -> tuple[str, str, str, datetime]:
        return (self.exchange, self.symbol, self.interval, self.bucket)


def fast_new(cls: type) -> Any:
    """A function building ``cls(*args)`` for a frozen slots dataclass, four times faster.

    A frozen dataclass's ``__init__`` sets each field with ``object.__setattr__`` (≈90 ns a field
    here); TickData has 11 fields and a full packet may build 12 objects; Candle has 15. The function below fills
    an instance of a twin class with the same slots by plain attribute stores, then makes it a
    ``cls`` instance by ``__class__`` assignment (allowed between types of identical layout). The
    result is a genuine, immutable ``cls`` instance, equal to what ``cls(*args)`` builds; that is
    checked once here, with a fall back to ``cls`` itself if the layouts ever stop matching.
    """
    names = tuple(f.name for f in fields(cls))
    if tuple(getattr(cls, "__slots__", ())) != names:
        return cls
    twin = type(f"_Mutable{cls.__name__}", (), {"__slots__": names})
    body = "".join(f"    obj.{n} = {n}\n" for n in names)
    namespace: dict[str, Any] = {"_new": object.__new__, "_twin": twin, "_cls": cls}
    source = f"def new_{cls.__name__}({', '.join(names)}):\n    obj = _new(_twin)\n{body}    obj.__class__ = _cls\n    return obj\n"
    exec(source, namespace)
    factory = namespace[f"new_{cls.__name__}"]
    try:
        sample = tuple(object() for _ in names)
        built = factory(*sample)
        if type(built) is not cls or built != cls(*sample):
            return cls
    except TypeError:  # layouts not compatible for __class__ assignment
        return cls
    return factory


new_candle = fast_new(Candle)  # Candle(*fields) for the aggregator's closes
