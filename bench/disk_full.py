"""Recovery from a full disk: seconds from freeing space to the first candle written again.

    .venv/bin/python -m bench.disk_full [--symbols 100] [--speed 60] [--outage 10] [--rounds 5] [--size-mb 16]
                                        [--store sqlite|postgres]

Mounts a tmpfs of ``--size-mb`` (needs root), puts the spool, the tick journal and (``--store
sqlite``, the default) the SQLite file on it, and streams the simulator (``--speed`` times the wall
clock, one tick per symbol per simulated second, 1m candles: at 60x, 100 symbols close 100 candles
a wall second) through the daemon's ``Service``. Each round fills the disk with
a file, lets ``--outage`` wall seconds pass (closed candles wait in memory; the writer's retries back
off to their cap), deletes the file and polls the writer's count of candles written every 5 ms: the
figure is the time to its first increase. Prints each round, then the median and the worst; also
the candles that waited in memory and whether any were dropped. ``--store postgres`` keeps the
spool on the tmpfs and writes into a throwaway PostgreSQL (testkit/pg.py).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from brokers.sim.client import SimBroker, SimClock
from candles.model import parse_intervals
from core.ticks import Instrument
from pipeline.journal import TickJournal
from pipeline.service import Service
from storage.base import CandleStore
from storage.spool import Spool
from storage.sqlite import SQLiteStore

START = 1_795_491_900.0  # 2026-11-24 09:15 IST

def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 16, 512):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass
    return filler


def _wait(pred, timeout: float) -> float:  # noqa: ANN001
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"gave up after {timeout:.0f}s")
        time.sleep(0.005)
    return time.monotonic() - start


def _rounds(store: CandleStore, disk: Path, args: argparse.Namespace) -> None:
    clock = SimClock(START, args.speed)
    broker = SimBroker(clock, seed=1, tick_rate=1.0)
    symbols = [Instrument("NSE", f"SYM{i:04d}") for i in range(args.symbols)]
    journal = TickJournal(disk / "journal")
    spool = Spool(disk / "spool")
    service = Service(broker, store, symbols, parse_intervals("1m"), clock=clock, spool=spool, journal=journal)
    stats = service.writer.stats
    service.start()
    figures: list[float] = []
    try:
        _wait(lambda: stats.candles_written > 0, 30.0)
        for n in range(1, args.rounds + 1):
            filler = _fill(disk)
            _wait(lambda: stats.spool_fault is not None, 30.0)
            time.sleep(args.outage)
            waiting, written = stats.in_memory, stats.candles_written
            filler.unlink()
            took = _wait(lambda: stats.candles_written > written, 60.0)  # noqa: B023 - used at once
            figures.append(took)
            print(f"round {n}: {waiting} candles waited in memory; first candle written {took:.3f} s after the space returned")
            _wait(lambda: stats.in_memory == 0 and stats.spool_fault is None, 60.0)
            time.sleep(1.0)
    finally:
        drained = service.stop()
        journal.close()
        spool.close()
    print(
        f"freed space -> first candle written again: median {statistics.median(figures):.3f} s, worst {max(figures):.3f} s "
        f"over {len(figures)} rounds of a {args.outage:g} s outage; dropped {stats.dropped}, rejected {stats.rejected_candles}, "
        f"drained at stop: {drained}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--symbols", type=int, default=100)
    ap.add_argument("--speed", type=float, default=60.0, help="simulated seconds per wall second")
    ap.add_argument("--outage", type=float, default=10.0, help="wall seconds the disk stays full in each round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size-mb", type=int, default=16)
    ap.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        disk = Path(tmp) / "disk"
        disk.mkdir()
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={args.size_mb}m", "tmpfs", str(disk)], check=False)
        if mounted.returncode != 0:
            sys.exit("cannot mount a tmpfs: run as root")
        try:
            if args.store == "sqlite":
                store: CandleStore = SQLiteStore(disk / "candles.db")
                store.migrate()
                try:
                    _rounds(store, disk, args)
                finally:
                    store.close()
            else:
                from storage.postgres import PostgresStore
                from testkit.pg import PostgresServer

                with PostgresServer() as server:
                    server.start()
                    store = PostgresStore(server.create_database("diskfull"))
                    store.migrate()
                    try:
                        _rounds(store, disk, args)
                    finally:
                        store.close()
        finally:
            subprocess.run(["umount", "-l", str(disk)], check=False)


if __name__ == "__main__":
    main()
