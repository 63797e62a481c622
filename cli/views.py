"""Read-only views of the stored candles."""

from __future__ import annotations

import logging
import time
from datetime import date, datetime
from pathlib import Path

from candles.model import Candle, Interval
from cli.errors import UsageError
from config.market_calendar import build_calendar, library_holidays, read_overrides
from config.settings import Settings
from config.symbols import parse_symbol
from core.ist import IST
from pipeline.coverage import day_gaps
from storage import open_store
from storage.continuous import latest_continuous, roll_changes, series_index

log = logging.getLogger("marketfeed")


_HEADER = (
    f"{'bucket (IST)':<19} {'open':>10} {'high':>10} {'low':>10} {'close':>10} {'volume':>10} {'ticks':>6}  {'state':<5}  source"
)


def show_candles(settings: Settings, symbol: str, interval: str, limit: int) -> int:
    """The newest candles of a symbol, or of a continuous futures series (``NFO:NIFTY-I``: each
    day's candles from the contract recorded for it, the contract named on every line and a note
    at each roll)."""
    exchange, name = parse_symbol(symbol)
    iv = Interval.parse(interval)
    store = open_store(settings.storage.pg_conn_str, settings.storage.sqlite_path, read_only=True)
    series = series_index(name) is not None
    rolls: list[tuple[date, str]] = []
    try:
        if series:
            rolls = store.rolls(exchange, name)
            rows = latest_continuous(store, exchange, name, iv.name, max(1, limit), rolls=rolls)
        else:
            rows = store.latest(exchange, name, iv.name, limit=max(1, limit))
    finally:
        store.close()
    if series:
        return _print_series(exchange, name, iv.name, rows, rolls, store.description)
    if not rows:
        print(f"no {iv.name} candles for {exchange}:{name} in {store.description}")
        return 0
    print(f"{exchange}:{name} {iv.name} — newest {len(rows)} from {store.description}")
    print(_HEADER)
    print("-" * len(_HEADER))
    for c in reversed(rows):
        print(_row(c))
    return 0


def _row(c: Candle) -> str:
    return (
        f"{c.bucket.astimezone(IST):%Y-%m-%d %H:%M:%S} {c.open:>10} {c.high:>10} {c.low:>10} "
        f"{c.close:>10} {c.volume:>10} {c.tick_count:>6}  {'final' if c.final else 'open':<5}  {c.source}"
    )


def _print_series(exchange: str, series: str, interval: str, rows: list[Candle], rolls: list[tuple[date, str]], where: str) -> int:
    if not rolls:
        underlying = series.rpartition("-")[0]
        print(
            f"no rolls recorded for the continuous series {exchange}:{series} in {where}: the daemon records "
            f"a series' contract each session day while a FUT universe entry of its underlying is streamed "
            f"(e.g. '{exchange}:{underlying} FUT near,next' records {underlying}-I and {underlying}-II)"
        )
        return 0
    recorded = f"contracts recorded for {len(rolls)} days, {rolls[0][0].isoformat()} to {rolls[-1][0].isoformat()}"
    if not rows:
        print(f"no {interval} candles for {exchange}:{series} in {where} ({recorded})")
        return 0
    print(
        f"{exchange}:{series} {interval} — newest {len(rows)} from {where}; each day from the contract "
        f"recorded for it ({recorded}; a day without one has no candles)"
    )
    header = f"{_HEADER}  contract"
    print(header)
    print("-" * len(header))
    candles = list(reversed(rows))
    changes = [r for r in roll_changes(rolls) if r.day > _day(candles[0])]
    for c in candles:
        while changes and changes[0].day <= _day(c):
            print(f"-- {changes.pop(0)}")
        print(f"{_row(c)}  {c.symbol}")
    for r in changes:  # rolled after the newest candle shown
        print(f"-- {r}")
    return 0


def _day(c: Candle) -> date:
    return c.bucket.astimezone(IST).date()




def show_gaps(settings: Settings, symbols: list[str], day_text: str | None, listed: list[tuple[str, str]] | None = None) -> int:
    """The session minutes of ``day`` that no watched span covers, merged per symbol. When none is
    named: every symbol the store has watched that day (or ever, if none), and every symbol of the
    watchlist (``listed``: --symbols and --symbols-file; the watchlist table's enabled rows), watched
    or not: one never watched has every session minute as a gap."""
    now = time.time()
    try:
        day = date.fromisoformat(day_text) if day_text else datetime.now(IST).date()
    except ValueError:
        raise UsageError(f"--date {day_text!r} is not a date: use YYYY-MM-DD, e.g. 2026-12-07") from None
    calendar = build_calendar(library_holidays(Path(settings.storage.data_dir)), read_overrides(settings.calendar.file))
    store = open_store(settings.storage.pg_conn_str, settings.storage.sqlite_path, read_only=True)
    try:
        named = [parse_symbol(s) for s in symbols] if symbols else None
        keys, found = day_gaps(store, calendar, day, named, listed or (), now, skipped=log.warning)
    finally:
        store.close()
    if not keys:
        print(f"no symbol was ever watched according to {store.description}, and the watchlist is empty")
        return 0
    lines = []
    for exchange, symbol, a, b in found:
        first, last = datetime.fromtimestamp(a, IST), datetime.fromtimestamp(b, IST)
        lines.append(f"{exchange}:{symbol} {first:%Y-%m-%d %H:%M}–{last:%H:%M} IST ({round((b - a) / 60)} min)")
    print("\n".join(lines) if lines else f"no gaps on {day.isoformat()} in {store.description}")
    return 0
