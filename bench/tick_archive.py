"""The tick archive: bytes per tick, GB per day, archive write CPU, and replay speed.

    .venv/bin/python -m bench.tick_archive [--symbols 9000] [--minutes 3] [--intervals 1m,5m,15m] [--repeat 3]

Simulated ticks (``brokers.sim``, about one per symbol per second, exchange times shared per
second as the Kite and Kotak decoders hand them over) are archived by ``pipeline.archive.TickArchiver``
in windows of ``--roll`` simulated seconds, on this thread (the work its thread does in the daemon),
then the day is replayed through ``CandleAggregator`` as ``--replay`` does (``cli.replay.replay_day``).
Figures: bytes per tick of the finished Parquet files; GB per day at 9,000 instruments × 1 tick/s
over the NSE session (09:15-15:30, 6 h 15 min = 22,500 s); the archive's CPU per tick and its share
of a core at 9,000 ticks/s; replay ticks/s (median of ``--repeat`` runs; goal >= 500,000) and the
reading alone (Parquet to the aggregator's tick objects), each also per CPU second (``time.process_time``:
less swayed by other work on a shared machine than the wall clock).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections import deque
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from brokers.sim.client import SimBroker, SimClock
from candles.model import parse_intervals
from cli.replay import replay_day
from core.ist import IST
from core.ticks import Instrument
from pipeline.archive import TickArchiver
from storage import tick_archive

START = 1_795_491_900.0  # 2026-11-24 09:15 IST
SESSION_S = 22_500  # NSE 09:15-15:30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--symbols", type=int, default=9000)
    ap.add_argument("--minutes", type=float, default=3)
    ap.add_argument("--intervals", default="1m,5m,15m")
    ap.add_argument("--roll", type=float, default=60.0, help="TICK_ARCHIVE_ROLL_SECONDS")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", help="archive here (default: a temporary folder, removed)")
    args = ap.parse_args()

    broker = SimBroker(SimClock(START), seed=1)
    broker.subscribe([Instrument("NSE", f"SYM{i:05d}") for i in range(args.symbols)])
    seconds: dict[int, datetime] = {}
    batches = []
    for second in range(1, int(args.minutes * 60) + 1):
        batch = broker.due_ticks(START + second)
        for i, t in enumerate(batch):
            whole = int(t.exchange_ts.timestamp())
            dt = seconds.get(whole) or seconds.setdefault(whole, datetime.fromtimestamp(whole, IST))
            batch[i] = replace(t, exchange_ts=dt)
        batches.append((START + second, batch))
    total = sum(len(b) for _, b in batches)
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="tick-archive-"))
    try:
        print(f"symbols={args.symbols} minutes={args.minutes:g} ticks={total:,} roll={args.roll:g}s -> {root}")
        clock = [START]
        archiver = TickArchiver(root, lambda: clock[0], roll_seconds=args.roll)
        archiver._since = START  # what ``start`` sets, without its thread: the work runs here
        archiver._next = archiver._next_roll(START)
        c0, t0 = time.process_time(), time.perf_counter()
        for at, batch in batches:  # the archive thread's loop (pipeline/archive.py, _run)
            clock[0] = at
            archiver._take(batch)
            if at >= archiver._next:
                archiver._roll(at)
                archiver._next = archiver._next_roll(at)
        archiver._roll(clock[0])
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        report = archiver.report()
        assert report.ticks_archived == total and report.ticks_dropped == 0, report
        size = sum(p.stat().st_size for p in root.rglob("part-*.parquet"))
        per_tick = size / total
        per_day = per_tick * 9000 * SESSION_S / 1e9
        print(f"archive: {report.files_written} files, {size / 1e6:,.1f} MB, {per_tick:.2f} bytes/tick")
        print(f"archive: {per_day:.2f} GB per day at 9,000 instruments x 1 tick/s over 6h15m ({9000 * SESSION_S:,} ticks)")
        print(
            f"archive write: {cpu / total * 1e6:.2f} us CPU/tick ({total / cpu:,.0f} ticks per CPU s, {wall:.2f} s wall); "
            f"at 9,000 ticks/s {9000 * cpu / total * 100:.1f}% of a core"
        )

        # the replay runs as ``--replay`` does, in a process holding no simulated ticks (1.6 million
        # live objects more would be visited by every full pass of the cyclic garbage collector)
        del batches, batch
        day = datetime.fromtimestamp(START, IST).date()
        intervals = parse_intervals(args.intervals)
        rates, reads, cpu_rates, cpu_reads = [], [], [], []
        for run in range(args.repeat):
            c0, t0 = time.process_time(), time.perf_counter()
            candles, ticks, _ = replay_day(root, day, intervals)
            cpu, elapsed = time.process_time() - c0, time.perf_counter() - t0
            assert ticks == total
            rates.append(ticks / elapsed)
            cpu_rates.append(ticks / cpu)
            c0, t0 = time.process_time(), time.perf_counter()
            n = 0
            for p in tick_archive.parts(root, day)["NSE"]:
                for c in tick_archive.replay_chunks(p, "NSE"):
                    deque(c.ticks, maxlen=0)  # every tick built, none kept
                    n += c.size
            cpu, elapsed = time.process_time() - c0, time.perf_counter() - t0
            reads.append(n / elapsed)
            cpu_reads.append(n / cpu)
            print(
                f"replay run {run + 1}: {rates[-1]:,.0f} ticks/s ({ticks / cpu_rates[-1]:.2f} s CPU: {cpu_rates[-1]:,.0f} "
                f"per CPU s; {len(candles):,} candles); reading alone {reads[-1]:,.0f} ticks/s ({cpu_reads[-1]:,.0f} per CPU s)"
            )
        median = statistics.median(rates)
        verdict = "met" if median >= 500_000 else "NOT met"
        print(
            f"replay: median {median:,.0f} ticks/s, {statistics.median(cpu_rates):,.0f} per CPU s ({args.intervals}; "
            f"reading alone median {statistics.median(reads):,.0f}, {statistics.median(cpu_reads):,.0f} per CPU s); "
            f"goal 500,000: {verdict}"
        )
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
