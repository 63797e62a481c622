"""Read-only views of the stored candles."""

from __future__ import annotations

import logging

from candles.model import Interval
from config.settings import Settings
from config.symbols import parse_symbol
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


