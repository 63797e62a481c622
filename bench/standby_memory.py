"""A hot standby's memory: the closed candles it keeps for a takeover (``pipeline.ha.HaRole``).

    .venv/bin/python -m bench.standby_memory [--symbols 9000] [--intervals 1m,5m,15m] [--minutes 20] [--every 10]

A standby writes nothing and keeps the newest 15 minutes of its closed candles (``RETAIN_SECONDS``).
This runs the real ``CandleAggregator`` over ``--symbols`` instruments, one tick each every
``--every`` simulated seconds (a random walk on a 0.05 grid, prices from one shared table as the
feed decoders' price caches hand them out), for ``--minutes`` simulated minutes, and hands every
closed candle to a standby's ``HaRole.retain`` as the writer does. The candle count per bucket, not
the tick rate, sets the figure, so a tick every 10 s gives the same candles as a busy feed.

Printed: the candles kept, the bytes they hold (tracemalloc: the kept candles, their keys and the
dict, measured as what is freed when the window is dropped), the bytes per candle, and the
process's peak RSS. The leader keeps none of this.
"""

from __future__ import annotations

import argparse
import gc
import random
import resource
import time
import tracemalloc
from datetime import datetime, timedelta
from decimal import Decimal

from candles.aggregator import CandleAggregator
from candles.model import parse_intervals
from core.ist import IST
from core.ticks import TickData
from pipeline.ha import RETAIN_SECONDS, HaRole
from storage.lease import Lease


class _Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--symbols", type=int, default=9000)
    ap.add_argument("--intervals", default="1m,5m,15m")
    ap.add_argument("--minutes", type=int, default=20, help="simulated minutes (more than the 15 kept)")
    ap.add_argument("--every", type=int, default=10, help="simulated seconds between ticks of one symbol")
    args = ap.parse_args()

    start = datetime(2026, 11, 24, 9, 15, tzinfo=IST).timestamp()
    clock = _Clock(start)
    agg = CandleAggregator(parse_intervals(args.intervals), clock)
    role = HaRole(Lease(object(), "bench", "standby", 4.0), object(), clock=clock)  # never ticks: a standby
    rng = random.Random(7)
    prices = [Decimal(n) / 20 for n in range(20_000, 60_001)]  # 1000.00 .. 3000.00 by 0.05, shared
    level = [rng.randrange(len(prices)) for _ in range(args.symbols)]
    names = [f"SYM{i:05d}" for i in range(args.symbols)]
    volume = [0] * args.symbols
    tracemalloc.start()
    began = time.perf_counter()
    closed_total = 0
    for second in range(0, args.minutes * 60, args.every):
        clock.t = start + second
        ts = datetime.fromtimestamp(clock.t, IST)
        received = ts + timedelta(milliseconds=5)
        batch = []
        for i in range(args.symbols):
            level[i] = min(len(prices) - 1, max(0, level[i] + rng.randint(-3, 3)))
            volume[i] += rng.randint(1, 500)
            batch.append(TickData("bench", "NSE", names[i], i + 1, prices[level[i]], 10, volume[i], None, ts, received))
        revised = agg.add(batch)
        closed = agg.advance()
        for candles in (revised, closed):
            if candles:
                closed_total += len(candles)
                role.retain(candles)
    clock.t = start + args.minutes * 60 + RETAIN_SECONDS  # nothing newer comes: prune nothing more
    took = time.perf_counter() - began
    kept = role.retained
    gc.collect()
    with_window, _ = tracemalloc.get_traced_memory()
    role._retained = {}
    gc.collect()
    without, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    held = with_window - without
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.symbols:,} instruments, {args.intervals}, {args.minutes} simulated minutes "
          f"({closed_total:,} closed candles, {took:.1f} s)")  # fmt: skip
    print(f"standby keeps {kept:,} candles (the newest {RETAIN_SECONDS / 60:g} minutes of buckets): "
          f"{held / 1e6:.1f} MB, {held / max(1, kept):.0f} bytes a candle; process peak RSS {peak_rss:.0f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
