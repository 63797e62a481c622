"""The read API's answers: parameters checked, the store read through its own parameterised
methods, JSON out. No HTTP here (ops/http.py serves it); each function takes the query and
returns ``(status, body)`` or raises ``ApiError``.

Candles are written as the NATS bus writes them (publishers/nats.py ``candle_json``): prices as
exact decimal strings, times as ISO 8601 in IST plus epoch milliseconds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as clock_time
from typing import Any

from candles.model import Candle, Interval
from config.symbols import SymbolError, parse_symbol
from core.ist import IST
from core.market_calendar import MarketCalendar
from pipeline.coverage import day_gaps
from pipeline.health import Health
from storage.base import CandleStore

#: /api/candles: rows when ``limit`` is not given, and the most one request may ask for
DEFAULT_LIMIT = 1_000
MAX_LIMIT = 10_000
#: far enough ahead to mean "no end" in a half-open range
OPEN_END = datetime(3000, 1, 1, tzinfo=IST)

Key = tuple[str, str]


class ApiError(Exception):
    """A request the API answers with ``status`` and ``{"error": message}``; the message names
    the parameter and what to send instead."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bad(message: str) -> ApiError:
    return ApiError(400, message)


# ---- encoding ------------------------------------------------------------------------------------


def iso(ts: datetime) -> str:
    return ts.astimezone(IST).isoformat()


def ms(ts: datetime) -> int:
    return round(ts.timestamp() * 1000)


def candle_dict(c: Candle) -> dict[str, Any]:
    """One candle of ``/api/candles`` and ``/api/stream``."""
    return {
        "bucket": iso(c.bucket),
        "bucket_ms": ms(c.bucket),
        "open": str(c.open),
        "high": str(c.high),
        "low": str(c.low),
        "close": str(c.close),
        "volume": c.volume,
        "oi": c.oi,
        "final": c.final,
        "source": c.source,
    }


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


# ---- parameters ----------------------------------------------------------------------------------


def check_names(query: Mapping[str, list[str]], allowed: Sequence[str], route: str, repeatable: Sequence[str] = ()) -> None:
    """400 for a parameter the route does not take, or one given twice."""
    for name, values in query.items():
        if name not in allowed:
            takes = ", ".join(allowed) if allowed else "no parameters"
            raise bad(f"unknown parameter {name!r} for {route}: it takes {takes}")
        if len(values) > 1 and name not in repeatable:
            raise bad(f"parameter {name!r} is given {len(values)} times: give it once")


def one(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    if not values:
        return None
    value = values[0].strip()
    if not value:
        raise bad(f"parameter {name!r} is empty: give it a value or leave it out")
    return value


def symbol_param(query: Mapping[str, list[str]], name: str = "symbol") -> Key:
    text = one(query, name)
    if text is None:
        raise bad(f"parameter {name!r} is required: e.g. {name}=NSE:INFY")
    try:
        return parse_symbol(text)
    except SymbolError as exc:
        raise bad(f"parameter {name!r}: {exc}") from None


def interval_param(query: Mapping[str, list[str]]) -> str:
    text = one(query, "interval") or "1m"
    try:
        return Interval.parse(text).name
    except ValueError as exc:
        raise bad(f"parameter 'interval': {exc}") from None


def time_param(query: Mapping[str, list[str]], name: str, *, end_of_day: bool = False) -> datetime | None:
    """An ISO 8601 time (``2026-11-24T09:15``, ``2026-11-24T09:15:00+05:30``, ``...Z``) or date
    (``2026-11-24``: its start, or with ``end_of_day`` the start of the next day); naive is IST."""
    text = one(query, name)
    if text is None:
        return None
    return parse_time(text, name, end_of_day=end_of_day)


def parse_time(text: str, name: str, *, end_of_day: bool = False) -> datetime:
    if len(text) == 10:
        try:
            day = date.fromisoformat(text)
        except ValueError:
            pass
        else:
            start = datetime.combine(day, clock_time(0), IST)
            return start + timedelta(days=1) if end_of_day else start
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "+", 1) if "T" in text else text)
    except ValueError:
        raise bad(
            f"parameter {name!r}: {text!r} is not an ISO 8601 time or date: write e.g. 2026-11-24, "
            "2026-11-24T09:15 (IST), 2026-11-24T09:15:00+05:30 or 2026-11-24T03:45:00Z"
        ) from None
    return value.replace(tzinfo=IST) if value.tzinfo is None else value


def int_param(query: Mapping[str, list[str]], name: str, default: int, maximum: int) -> int:
    text = one(query, name)
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= maximum:
        raise bad(f"parameter {name!r}: {text!r} is not a whole number from 1 to {maximum}")
    return int(text)


def today_start(now: float | None = None) -> datetime:
    day = datetime.fromtimestamp(time.time() if now is None else now, IST).date()
    return datetime.combine(day, clock_time(0), IST)


# ---- answers -------------------------------------------------------------------------------------


@dataclass
class Api:
    """The read API over ``store`` (a connection of its own: never the writer's) for one daemon.

    ``health`` is the daemon's reading (``/api/status``), ``streaming`` the (exchange, symbol)
    pairs it streams now, ``calendar`` its market calendar once loaded (``/api/gaps``) and
    ``listed`` the watchlist's symbols from the command line and the symbols file."""

    store: CandleStore
    health: Callable[[], Health] | None = None
    streaming: Callable[[], Iterable[Key]] = tuple
    calendar: Callable[[], MarketCalendar | None] = lambda: None
    listed: Sequence[Key] = ()
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        self._rate: tuple[float, int, float] | None = None  # (monotonic time, ticks, ticks/s) at the last /api/status

    def known(self, key: Key, interval: str = "1m") -> bool:
        """Whether the daemon streams ``key`` or the store has any candle of it (of ``interval``
        first: one index probe; then of any interval)."""
        if key in set(self.streaming()) or self.store.latest(*key, interval, limit=1):
            return True
        return any((e, s) == key for e, s, _ in self.store.series())

    def candles(self, query: Mapping[str, list[str]]) -> dict[str, Any]:
        check_names(query, ("symbol", "interval", "from", "to", "limit"), "/api/candles")
        exchange, symbol = symbol_param(query)
        interval = interval_param(query)
        start = time_param(query, "from")
        end = time_param(query, "to", end_of_day=True)
        limit = int_param(query, "limit", DEFAULT_LIMIT, MAX_LIMIT)
        if start is None:
            # the newest `limit` candles whatever their day when a limit is given; today's otherwise
            start = datetime(1970, 1, 1, tzinfo=IST) if "limit" in query else today_start(self.clock())
        if end is not None and end <= start:
            raise bad(f"parameter 'to' ({iso(end)}) is not after 'from' ({iso(start)}): 'to' is exclusive")
        rows = self.store.window(exchange, symbol, interval, start, end or OPEN_END, limit)
        if not rows and not self.known((exchange, symbol), interval):
            raise ApiError(404, f"unknown symbol {exchange}:{symbol}: the store has no candles of it and the daemon "
                           "does not stream it; /api/symbols lists the known ones")  # fmt: skip
        return {
            "symbol": f"{exchange}:{symbol}",
            "interval": interval,
            "from": iso(start),
            "to": None if end is None else iso(end),
            "limit": limit,
            "more": len(rows) == limit,  # older candles in the range may remain: ask again with to=<first bucket>
            "candles": [candle_dict(c) for c in rows],
        }

    def symbols(self, query: Mapping[str, list[str]]) -> dict[str, Any]:
        check_names(query, (), "/api/symbols")
        intervals: dict[Key, list[str]] = {}
        for exchange, symbol, interval in self.store.series():
            intervals.setdefault((exchange, symbol), []).append(interval)
        streaming = set(self.streaming())
        table = {(w.exchange, w.symbol) for w in self.store.watchlist()}
        listed = set(self.listed) | table
        keys = sorted(set(intervals) | streaming | listed)
        return {
            "symbols": [
                {
                    "symbol": f"{e}:{s}",
                    "exchange": e,
                    "name": s,
                    "intervals": sorted(intervals.get((e, s), []), key=lambda n: Interval.parse(n).seconds),
                    "streaming": (e, s) in streaming,
                    "watchlist": (e, s) in listed,
                }
                for e, s in keys
            ]
        }

    def gaps(self, query: Mapping[str, list[str]]) -> dict[str, Any]:
        check_names(query, ("date", "symbol"), "/api/gaps", repeatable=("symbol",))
        text = one(query, "date")
        try:
            day = date.fromisoformat(text) if text else datetime.fromtimestamp(self.clock(), IST).date()
        except ValueError:
            raise bad(f"parameter 'date': {text!r} is not a date: write YYYY-MM-DD, e.g. 2026-12-07") from None
        named: list[Key] = []
        for value in query.get("symbol", []):
            for part in value.split(","):
                if part.strip():
                    try:
                        named.append(parse_symbol(part))
                    except SymbolError as exc:
                        raise bad(f"parameter 'symbol': {exc}") from None
        calendar = self.calendar()
        if calendar is None:
            raise ApiError(503, "the market calendar is not loaded yet (the daemon reads it at start): try again in a "
                           "few seconds, or see the daemon's log for why it cannot be read")  # fmt: skip
        keys, found = day_gaps(self.store, calendar, day, named or None, self.listed, self.clock())
        return {
            "date": day.isoformat(),
            "symbols": [f"{e}:{s}" for e, s in keys],
            "gaps": [
                {
                    "symbol": f"{e}:{s}",
                    "from": iso(datetime.fromtimestamp(a, IST)),
                    "to": iso(datetime.fromtimestamp(b, IST)),
                    "minutes": round((b - a) / 60),
                }
                for e, s, a, b in found
            ],
        }

    def status(self, query: Mapping[str, list[str]]) -> dict[str, Any]:
        check_names(query, (), "/api/status")
        if self.health is None:
            raise ApiError(503, "no daemon health to report in this process")
        h = self.health()
        now = time.monotonic()
        rate = h.ticks / h.uptime_s if h.uptime_s > 0 else 0.0
        if self._rate is not None:
            then, ticks, last = self._rate
            rate = (h.ticks - ticks) / (now - then) if now - then >= 1.0 else last
        if self._rate is None or now - self._rate[0] >= 1.0:
            self._rate = (now, h.ticks, rate)
        body = h.heartbeat(rate)
        body["connections"] = [
            {
                "id": c.id,
                "connected": c.connected,
                "instruments": c.instruments,
                "reconnects": c.reconnects,
                "last_frame_age_s": None if c.last_frame_age is None else round(c.last_frame_age, 2),
                "last_error": c.last_error,
            }
            for c in h.connections
        ]
        body["spool_fault"] = h.spool_fault
        body["store_up"] = h.store_up
        body["ha_problem"] = h.ha_problem
        body["bus_problem"] = None if h.bus is None else h.bus.problem()
        return body
