"""Several shard daemons into one PostgreSQL: the database's write load and the candle commit latency.

    .venv/bin/python -m bench.shards [--shards 3] [--instruments 9000] [--seconds 90] [--intervals 1m,5m,15m]

The deployment "several shards, one API key each, one PostgreSQL": ``--shards`` fake Kite servers
(bench/kite_load.py, one per API key, each with its own ``--instruments`` symbols), one daemon per
shard (main.py --broker kite, as in bench/end_to_end.py) and one throwaway PostgreSQL
(track_commit_timestamp on). Every instrument ticks once a second for ``--seconds``. Printed:

- the database's write load over the run, from ``pg_stat_database`` and the WAL position:
  transactions committed, rows inserted and updated, WAL bytes, per second; and the PostgreSQL
  processes' CPU (all backends, the checkpointer and the WAL writer) as a share of one core;
- the candle commit latency: for every final candle, the commit time of the row version in which
  it first appeared final minus its bucket end + the daemon's grace, p50/p99/max over all shards;
- each daemon's CPU share of one core.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import psycopg2

from bench.end_to_end import Daemon, FinalWatcher, Load, cpu_seconds, percentile, say
from candles.model import Interval
from core.ist import IST
from testkit.pg import PostgresServer


def pg_counters(dsn: str) -> dict[str, float]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT xact_commit, tup_inserted, tup_updated FROM pg_stat_database WHERE datname = current_database()"
            )
            commits, inserted, updated = cur.fetchone()
            cur.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
            (wal,) = cur.fetchone()
        return {"commits": commits, "inserted": inserted, "updated": updated, "wal": float(wal)}
    finally:
        conn.close()


def postgres_cpu(datadir: Path) -> float:
    """CPU seconds of every process of the server whose data directory is ``datadir``."""
    pidfile = datadir / "postmaster.pid"
    master = int(pidfile.read_text().split()[0])
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        if int(entry) == master or ppid == master:
            try:
                total += cpu_seconds(int(entry))
            except OSError:
                continue
    return total


def final_candles(dsn: str, since: datetime) -> dict[tuple, float]:
    """(exchange, symbol, interval, bucket epoch) -> commit time of the final candles stored since ``since``."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                'SELECT exchange, symbol, "interval", bucket, pg_xact_commit_timestamp(xmin) FROM candles '
                "WHERE final AND bucket >= %s",
                (since,),
            )
            return {(e, s, i, int(b.timestamp())): c.timestamp() for e, s, i, b, c in cur.fetchall() if c is not None}
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--instruments", type=int, default=9000, help="per shard (at most 9,000: one Kite API key)")
    ap.add_argument("--seconds", type=float, default=90)
    ap.add_argument("--intervals", default="1m,5m,15m")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="marketfeed-shards-"))
    pg = PostgresServer()
    loads: list[Load] = []
    daemons: list[Daemon] = []
    say(f"{args.shards} shard daemons x {args.instruments:,} instruments into one PostgreSQL, {args.seconds:g} s, "
        f"intervals {args.intervals}, on {os.cpu_count()} cores")  # fmt: skip
    try:
        pg.start()
        pg.execute("ALTER SYSTEM SET track_commit_timestamp = on")
        pg.stop()
        pg.start()
        dsn = pg.create_database("bench_shards")
        for i in range(args.shards):
            work = tmp / f"shard{i + 1}"
            work.mkdir()
            load = Load(args.instruments, seed=i + 1, workdir=work, first=i * args.instruments)
            loads.append(load)
            daemons.append(Daemon(load, dsn, work / "daemon", args.instruments, args.intervals, first=i * args.instruments))
        for load, daemon in zip(loads, daemons, strict=True):
            daemon.wait_ready()
            load.wait_subscribed(args.instruments)
        say("  every shard subscribed; streaming")
        watcher = FinalWatcher(dsn)
        watcher.start()
        wall_start = time.time()
        before, pg_before = pg_counters(dsn), postgres_cpu(pg.datadir)
        cpu_before = [cpu_seconds(d.pid) for d in daemons]
        t0 = time.monotonic()
        threads = [
            threading.Thread(target=load.stream, args=(float(args.instruments), args.seconds), daemon=True) for load in loads
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(5)  # the last minute's close (grace 2 s) and its commit
        elapsed = time.monotonic() - t0
        after, pg_after = pg_counters(dsn), postgres_cpu(pg.datadir)
        cpu_after = [cpu_seconds(d.pid) for d in daemons]
        watcher.stop()
        stored = final_candles(dsn, datetime.fromtimestamp(wall_start - 60, IST))
        grace = daemons[0].grace
        latencies = []
        for key, committed in stored.items():
            close_at = key[3] + Interval.parse(key[2]).seconds + grace
            if close_at < wall_start:  # closed before the load began
                continue
            latencies.append(watcher.first.get(key, committed) - close_at)
        say("== the database's write load, over the run")
        for name, label in (("commits", "transactions committed"), ("inserted", "rows inserted"), ("updated", "rows updated")):
            say(f"  {label:<24} {(after[name] - before[name]) / elapsed:>10,.1f} /s")
        say(f"  {'WAL written':<24} {(after['wal'] - before['wal']) / elapsed / 1e6:>10,.2f} MB/s")
        say(f"  {'PostgreSQL CPU':<24} {(pg_after - pg_before) / elapsed * 100:>10,.1f} % of one core (all its processes)")
        for i, (a, b) in enumerate(zip(cpu_before, cpu_after, strict=True)):
            say(f"  daemon {i + 1} CPU {(b - a) / elapsed * 100:.1f} % of one core")
        say("== candle commit latency: first final commit minus bucket end + grace, every shard's candles")
        if latencies:
            say(f"  {len(latencies):,} final candles: p50 {percentile(latencies, 0.5):.3f} s, "
                f"p99 {percentile(latencies, 0.99):.3f} s, max {max(latencies):.3f} s")  # fmt: skip
        else:
            say("  no final candle closed inside the run: make it longer")
    finally:
        for d in daemons:
            d.stop()
        for load in loads:
            load.close()
        pg.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
