"""Read-only views of the stored candles."""

from __future__ import annotations

import logging
import time
from datetime import date, datetime
from pathlib import Path

from candles.model import Interval
from cli.errors import UsageError
from config.market_calendar import build_calendar, library_holidays, read_overrides
from config.settings import Settings
from config.symbols import SymbolError, parse_symbol
from core.gaps import gaps
from core.ist import IST
from storage import open_store

log = logging.getLogger("marketfeed")


def show_candles(settings: Settings, symbol: str, interval: str, limit: int) -> int:
    exchange, name = parse_symbol(symbol)
    iv = Interval.parse(interval)
    store = open_store(settings.storage.pg_conn_str, settings.storage.sqlite_path, read_only=True)
    try:
        rows = store.latest(exchange, name, iv.name, limit=max(1, limit))
    finally:
        store.close()
    if not rows:
        print(f"no {iv.name} candles for {exchange}:{name} in {store.description}")
        return 0
    print(f"{exchange}:{name} {iv.name} — newest {len(rows)} from {store.description}")
    header = (
        f"{'bucket (IST)':<19} {'open':>10} {'high':>10} {'low':>10} {'close':>10} {'volume':>10} {'ticks':>6}  "
        f"{'state':<5}  source"
    )
    print(header)
    print("-" * len(header))
    for c in reversed(rows):
        print(
            f"{c.bucket.astimezone(IST):%Y-%m-%d %H:%M:%S} {c.open:>10} {c.high:>10} {c.low:>10} "
            f"{c.close:>10} {c.volume:>10} {c.tick_count:>6}  {'final' if c.final else 'open':<5}  {c.source}"
        )
    return 0




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
    start = datetime.combine(day, datetime.min.time(), IST).timestamp()
    store = open_store(settings.storage.pg_conn_str, settings.storage.sqlite_path, read_only=True)
    try:
        keys = [parse_symbol(s) for s in symbols] if symbols else None
        spans = store.watched(start, start + 86_400, keys)
        if keys is None:
            watched = sorted(spans) or sorted(store.watched(0.0, now))
            table = []
            for row in store.watchlist():
                try:
                    table.append(parse_symbol(f"{row.exchange}:{row.symbol}"))
                except SymbolError as exc:
                    log.warning("watchlist table in %s: row (%r, %r) skipped: %s", store.description, row.exchange, row.symbol, exc)
            keys = sorted({*watched, *(listed or ()), *table})
    finally:
        store.close()
    if not keys:
        print(f"no symbol was ever watched according to {store.description}, and the watchlist is empty")
        return 0
    lines = []
    for exchange, symbol in keys:
        for a, b in gaps(calendar.sessions(exchange, day, symbol), spans.get((exchange, symbol), ()), now):
            first, last = datetime.fromtimestamp(a, IST), datetime.fromtimestamp(b, IST)
            lines.append(f"{exchange}:{symbol} {first:%Y-%m-%d %H:%M}–{last:%H:%M} IST ({round((b - a) / 60)} min)")
    print("\n".join(lines) if lines else f"no gaps on {day.isoformat()} in {store.description}")
    return 0
