"""Gap detection cost at 9,000 instruments: the pipeline's once-a-minute work for coverage.

    .venv/bin/python -m bench.gaps [--symbols 9000] [--connections 3] [--outages 20] [--repeat 5]

Once a minute the pipeline extends the open watched spans (one record for the writer) and counts
today's gap minutes over the watchlist (``Coverage.gap_minutes``); the writer applies the extend
to the store (one UPDATE of every open span, SQLite here). The symbols sit on ``--connections``
connections that each went down and came back ``--outages`` times today (so each symbol has that
many spans), at 15:00 IST on a trading day. Prints the CPU seconds of each part (median of
``--repeat`` runs) and that cost as a share of one core per minute of wall clock.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import date, datetime
from pathlib import Path

from brokers.base import WatchChange
from core.ist import IST
from core.market_calendar import MarketCalendar
from pipeline.coverage import Coverage
from storage.base import WatchRecord
from storage.sqlite import SQLiteStore


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--symbols", type=int, default=9000)
    p.add_argument("--connections", type=int, default=3)
    p.add_argument("--outages", type=int, default=20)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()

    day = date(2026, 12, 7)
    open_ = datetime(2026, 12, 7, 9, 15, tzinfo=IST).timestamp()
    now = datetime(2026, 12, 7, 15, 0, tzinfo=IST).timestamp()
    keys = [("NSE", f"SYM{k}") for k in range(args.symbols)]
    per = -(-len(keys) // args.connections)
    conns = [tuple(keys[i : i + per]) for i in range(0, len(keys), per)]
    cov = Coverage()
    calendar = MarketCalendar()
    for c, carried in enumerate(conns):
        at = open_ - 60
        cov.change(WatchChange(True, at, carried, c + 1))
        step = (now - open_) / (args.outages + 1)
        for k in range(args.outages):
            down = open_ + step * (k + 1) + c * 7
            cov.change(WatchChange(False, down, carried, c + 1))
            cov.change(WatchChange(True, down + 45, carried, c + 1))

    counting = []
    for _ in range(args.repeat):
        cov.extended = -1e18
        t0 = time.process_time()
        cov.extend(now)
        minutes = cov.gap_minutes(calendar, keys, now)
        counting.append(time.process_time() - t0)

    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "c.db")
        store.migrate()
        for c, carried in enumerate(conns):
            store.record_watched("bench", [WatchRecord("open", open_ + c, carried)])
        writing = []
        for r in range(args.repeat):
            t0 = time.process_time()
            store.record_watched("bench", [WatchRecord("extend", now + r)])
            writing.append(time.process_time() - t0)
        store.close()

    count_s = statistics.median(counting)
    write_s = statistics.median(writing)
    print(f"{len(keys)} symbols on {len(conns)} connections, {args.outages} outages each today, {day} 15:00 IST")
    print(f"gap minutes today: {minutes} (summed over the symbols)")
    print(f"count (pipeline thread): {count_s * 1000:.1f} ms CPU; extend in SQLite (writer thread): {write_s * 1000:.1f} ms CPU")
    print(f"per minute of wall clock: {(count_s + write_s) / 60 * 100:.3f}% of one core (goal: under 1%)")


if __name__ == "__main__":
    main()
