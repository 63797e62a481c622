"""Aggregator throughput: simulated ticks for many symbols through several intervals.

    .venv/bin/python -m bench.aggregator [--symbols 9000] [--minutes 5] [--intervals 1m,5m,15m] [--timestamps feed|sim]

Prints ticks/s through CandleAggregator.add and .advance (which closes the buckets on the way), for
``--repeat`` runs over the same ticks with a fresh aggregator each, and their median (the figure:
on the shared development machine one run can differ from the next by a third).
The ticks come from the simulator (about one per symbol per second). With ``--timestamps feed``
(the default) their exchange times are whole seconds, one shared datetime per second, as the Kite
and Kotak decoders hand them over; ``sim`` keeps the simulator's own millisecond times, a new
datetime per tick.

The runs use the daemon's collector settings (``ops.gc_tuning.tune_for_streaming``, applied once
the ticks are built, as the daemon applies them once it has started); ``--default-gc`` keeps
CPython's defaults instead, to show what those settings are worth.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time
from dataclasses import replace
from datetime import datetime

from brokers.sim.client import SimBroker, SimClock
from candles.aggregator import CandleAggregator
from candles.model import parse_intervals
from core.ist import IST
from core.ticks import Instrument
from ops.gc_tuning import tune_for_streaming

START = 1_795_491_900.0  # 2026-11-24 09:15 IST


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--symbols", type=int, default=9000)
    ap.add_argument("--minutes", type=float, default=5)
    ap.add_argument("--intervals", default="1m,5m,15m")
    ap.add_argument("--timestamps", choices=("feed", "sim"), default="feed")
    ap.add_argument("--repeat", type=int, default=5, help="runs over the same ticks (the median is the figure)")
    ap.add_argument("--profile", action="store_true", help="profile the first run (not counted)")
    ap.add_argument("--default-gc", action="store_true", help="CPython's collector defaults, not the daemon's settings")
    args = ap.parse_args()

    broker = SimBroker(SimClock(START), seed=1)
    broker.subscribe([Instrument("NSE", f"SYM{i:05d}") for i in range(args.symbols)])
    batches = []
    for second in range(1, int(args.minutes * 60) + 1):
        batches.append((START + second, broker.due_ticks(START + second)))
    if args.timestamps == "feed":
        seconds: dict[int, datetime] = {}
        for _, batch in batches:
            for i, t in enumerate(batch):
                whole = int(t.exchange_ts.timestamp())
                dt = seconds.get(whole) or seconds.setdefault(whole, datetime.fromtimestamp(whole, IST))
                batch[i] = replace(t, exchange_ts=dt)
    total = sum(len(b) for _, b in batches)
    if not args.default_gc:
        tune_for_streaming()
    collector = "CPython defaults" if args.default_gc else "the daemon's (ops/gc_tuning.py)"

    print(f"symbols={args.symbols} intervals={args.intervals} timestamps={args.timestamps} ticks={total:,} collector: {collector}")
    rates = []
    for run in range(args.repeat):  # a fresh aggregator each time, the same ticks
        now = [START]
        agg = CandleAggregator(parse_intervals(args.intervals), lambda: now[0])  # noqa: B023 - read within the run
        emitted = 0
        profiler = cProfile.Profile() if args.profile and run == 0 else None
        if profiler:
            profiler.enable()
        t0 = time.perf_counter()
        c0 = time.process_time()
        for clock, batch in batches:
            now[0] = clock
            emitted += len(agg.add(batch))
            emitted += len(agg.advance())
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - c0
        if profiler:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(8)
            continue  # the profiler's overhead: not a figure
        rates.append(total / elapsed)
        print(f"run {run + 1}: {total / elapsed:,.0f} ticks/s ({elapsed:.2f} s, {total / cpu:,.0f} per CPU s), {emitted:,} candles")
    if rates:
        median = statistics.median(rates)
        verdict = "met" if median >= 500_000 else "NOT met"
        spread = f"best {max(rates):,.0f}, worst {min(rates):,.0f}"
        print(f"aggregator: median {median:,.0f} ticks/s ({spread}); bar 500,000 (median): {verdict}")


if __name__ == "__main__":
    main()
