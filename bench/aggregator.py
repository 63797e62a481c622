"""Aggregator throughput: simulated ticks for many symbols through several intervals.

    .venv/bin/python bench/aggregator.py [--symbols 9000] [--minutes 5] [--intervals 1m,5m,15m]

Prints ticks/s through CandleAggregator.add (plus the buckets it closes on the way).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from brokers.base import Instrument  # noqa: E402
from brokers.sim import SimBroker, SimClock  # noqa: E402
from candles.aggregator import CandleAggregator  # noqa: E402
from candles.model import parse_intervals  # noqa: E402

START = 1_795_491_900.0  # 2026-11-24 09:15 IST


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--symbols", type=int, default=9000)
    ap.add_argument("--minutes", type=float, default=5)
    ap.add_argument("--intervals", default="1m,5m,15m")
    args = ap.parse_args()

    broker = SimBroker(SimClock(START), seed=1, resume=False)
    broker.subscribe([Instrument("NSE", f"SYM{i:05d}") for i in range(args.symbols)])
    batches = []
    for second in range(1, int(args.minutes * 60) + 1):
        batches.append((START + second, broker.due_ticks(START + second)))
    total = sum(len(b) for _, b in batches)

    now = [START]
    agg = CandleAggregator(parse_intervals(args.intervals), lambda: now[0])
    emitted = 0
    t0 = time.perf_counter()
    for clock, batch in batches:
        now[0] = clock
        emitted += len(agg.add(batch))
        emitted += len(agg.advance())
    elapsed = time.perf_counter() - t0
    print(f"symbols={args.symbols} intervals={args.intervals} ticks={total:,} candles={emitted:,}")
    print(f"aggregator: {total / elapsed:,.0f} ticks/s ({elapsed:.2f} s)")


if __name__ == "__main__":
    main()
