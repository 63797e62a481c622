"""Continuous futures series, read from the contracts' own candles.

A series is named by its underlying and its place in expiry order, as ``core.universe.SERIES``
counts it: ``NIFTY-I`` the near future, ``NIFTY-II`` the next, ``NIFTY-III`` the far. Nothing is
stored under a series name: the ``rolls`` table records, per session day, which contract the
series took that day (the daemon records it for each day a FUT universe entry is streamed), and
the reader stitches each day's candles of that contract together. The candles keep their
contract's symbol, so a reader sees where the series rolled; a day without a recorded contract
has no candles (the contract is never guessed from expiries).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from candles.model import Candle
from core.ist import IST
from storage.base import CandleStore, StoreError

#: the suffix of each series, by its index in ``core.universe.SERIES`` (near, next, far)
SUFFIXES = ("I", "II", "III")


def series_index(symbol: str) -> int | None:
    """0, 1 or 2 when ``symbol`` names a continuous series (``NIFTY-I``, ``NIFTY-II``,
    ``NIFTY-III``: an underlying, a dash and the suffix), else None."""
    underlying, dash, suffix = symbol.rpartition("-")
    if not (dash and underlying.strip()) or suffix not in SUFFIXES:
        return None
    return SUFFIXES.index(suffix)


def series_name(underlying: str, index: int) -> str:
    """The series of ``underlying``'s future at ``index`` in expiry order: ``("NIFTY", 0)`` →
    ``NIFTY-I``."""
    if not (type(index) is int and 0 <= index < len(SUFFIXES)):
        raise ValueError(f"no continuous series at index {index!r}: 0 (near), 1 (next) and 2 (far) have one")
    return f"{underlying}-{SUFFIXES[index]}"


def checked_roll(exchange: str, series: str, day: date, symbol: str) -> None:
    """A StoreError naming what makes (exchange, series, day, symbol) unfit for the rolls table."""
    problem = ""
    if not (isinstance(exchange, str) and exchange and isinstance(symbol, str) and symbol):
        problem = "exchange and symbol must be non-empty text"
    elif not isinstance(series, str) or ":" in series or series_index(series) is None:
        problem = "the series must be an underlying and -I, -II or -III without the exchange, e.g. 'NIFTY-I'"
    elif type(day) is not date:
        problem = "the day must be a date (not a datetime)"
    if problem:
        raise StoreError(f"refusing roll ({exchange!r}, {series!r}, {day!r}, {symbol!r}): {problem}")


@dataclass(frozen=True, slots=True)
class Roll:
    """The series took ``after`` on ``day``; the recorded day before it, ``before``."""

    day: date
    before: str
    after: str

    def __str__(self) -> str:
        return f"rolled {self.before} -> {self.after} on {self.day.isoformat()}"


def roll_changes(rolls: Sequence[tuple[date, str]]) -> list[Roll]:
    """Each recorded day whose contract differs from the one of the recorded day before it."""
    return [Roll(day, before, after) for (_, before), (day, after) in zip(rolls, rolls[1:]) if before != after]


def continuous_candles(
    store: CandleStore,
    exchange: str,
    series: str,
    interval: str,
    start: datetime,
    end: datetime,
    *,
    rolls: Sequence[tuple[date, str]] | None = None,
) -> list[Candle]:
    """The series' candles with ``start <= bucket < end`` (aware datetimes), oldest first: each
    IST day's from the contract recorded for that day, none for a day without one. ``rolls``: the
    series' rolls if already read (``store.rolls``)."""
    for value in (start, end):
        if value.tzinfo is None or value.utcoffset() is None:
            raise StoreError(f"refusing a naive datetime {value.isoformat()}: candle times must be timezone-aware")
    out: list[Candle] = []
    for first, last, symbol in _runs(store.rolls(exchange, series) if rolls is None else rolls):
        since, until = _span(first, last)
        since, until = max(since, start), min(until, end)
        if since < until:
            out += store.between(exchange, symbol, interval, since, until)
    return out


def latest_continuous(
    store: CandleStore,
    exchange: str,
    series: str,
    interval: str,
    limit: int = 20,
    *,
    rolls: Sequence[tuple[date, str]] | None = None,
) -> list[Candle]:
    """The series' newest ``limit`` candles, newest first (as ``CandleStore.latest``), each day's
    from the contract recorded for it."""
    out: list[Candle] = []
    for first, last, symbol in reversed(_runs(store.rolls(exchange, series) if rolls is None else rolls)):
        if len(out) >= limit:
            break
        since, until = _span(first, last)
        out += reversed(store.between(exchange, symbol, interval, since, until))
    return out[: max(limit, 0)]


def _runs(rolls: Sequence[tuple[date, str]]) -> list[tuple[date, date, str]]:
    """The rolls as (first day, last day, symbol): consecutive calendar days of one contract, in
    order, so that a run is one read; a day without a roll ends a run."""
    runs: list[tuple[date, date, str]] = []
    for day, symbol in rolls:
        if runs and runs[-1][2] == symbol and runs[-1][1] + timedelta(days=1) == day:
            runs[-1] = (runs[-1][0], day, symbol)
        else:
            runs.append((day, day, symbol))
    return runs


def _span(first: date, last: date) -> tuple[datetime, datetime]:
    """From the start of IST day ``first`` to the start of the day after ``last``."""
    return datetime.combine(first, time(), IST), datetime.combine(last + timedelta(days=1), time(), IST)
