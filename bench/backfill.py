"""``main.py --backfill`` against the fake Kite server and its 3 requests/s limit.

    .venv/bin/python -m bench.backfill [--instruments 60] [--intervals 1m,5m,15m] [--latency 0.3]

Puts one trading day (09:15-15:30 IST, two trades a minute) of N instruments on the fake's tape,
runs ``main.py --backfill`` for that day as a process (SQLite in a temporary directory), and prints
the requests per second achieved against the limit (first request to last, as the fake saw them),
the busiest one-second window, the 429s (0 expected), the candles written, the wall time, the
process's peak RSS (and its RSS over the second half: flat means no growth per symbol), and the
wall time extrapolated to 9,000 instruments at the rate achieved. ``--latency`` makes the fake hold
each historical reply that many seconds after counting the request against the limit (a slow API or
a long network path: what caps a client that waits for each reply before the next request).
"""

from __future__ import annotations

import argparse
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.kite_historical import busiest_second, day_tape
from brokers.kite.historical import RATE
from testkit.cli import MAIN, main_env
from testkit.fakes.kite_server import FakeInstrument, KiteFakeServer


def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _vm_hwm_kb(pid: int) -> int:
    return _status_kb(pid, "VmHWM:")


def _vm_rss_kb(pid: int) -> int:
    return _status_kb(pid, "VmRSS:")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instruments", type=int, default=60)
    parser.add_argument("--intervals", default="1m,5m,15m")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each historical reply")
    args = parser.parse_args(argv)
    instruments = [FakeInstrument(((1000 + i) << 8) | 1, "NSE", f"SYM{i}") for i in range(args.instruments)]
    with KiteFakeServer(instruments=instruments) as server, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server.send_ticks(day_tape(instruments))
        server.historical_delay = args.latency
        (root / "symbols.txt").write_text("".join(f"NSE:{i.tradingsymbol}\n" for i in instruments))
        env = main_env(KITE_API_KEY=server.api_key, KITE_ACCESS_TOKEN=server.access_token, KITE_API_URL=server.api_url,
                       SQLITE_PATH=str(root / "candles.db"), DATA_DIR=str(root / "data"))  # fmt: skip
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, MAIN, "--backfill", "--symbols-file", "symbols.txt", "--from", "2024-01-15", "--to",
             "2024-01-15", "--intervals", args.intervals, "--log-level", "WARNING"],
            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        peak_kb, samples = 0, []
        while proc.poll() is None:  # the process's own high-water mark, read while it lives
            peak_kb = max(peak_kb, _vm_hwm_kb(proc.pid))
            samples.append(_vm_rss_kb(proc.pid))
            time.sleep(0.2)
        out, err = proc.communicate()
        done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        wall = time.perf_counter() - started
        child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if done.returncode != 0:
            print(done.stdout, done.stderr, sep="\n", file=sys.stderr)
            return 1
        with sqlite3.connect(root / "candles.db") as db:
            (written,) = db.execute("SELECT COUNT(*) FROM candles").fetchone()
        times = sorted(r.at for r in server.historical_requests)
        statuses = [r.status for r in server.historical_requests]
    span = times[-1] - times[0]
    rate = (len(times) - 1) / span if span > 0 else float("nan")
    print(done.stdout.strip())
    print(f"instruments            {args.instruments} × 1 day, intervals {args.intervals}, "
          f"reply latency {args.latency:g} s")  # fmt: skip
    print(f"requests               {len(times)} ({statuses.count(429)} answered 429)")
    print(f"requests/s             {rate:.2f} first to last ({rate / RATE:.0%} of the {RATE}/s limit); "
          f"busiest second {busiest_second(times)}")  # fmt: skip
    print(f"candles written        {written:,}")
    print(f"wall time              {wall:.1f} s (process start-up, instruments dump and calendar included)")
    mid = [x for x in samples if x][len(samples) // 2 :] or [0]
    print(f"peak RSS               {peak_kb / 1024:.0f} MB (main.py --backfill; second half of the run: "
          f"{min(mid) / 1024:.0f}-{max(mid) / 1024:.0f} MB); the calendar's child process: {child_mb:.0f} MB")
    print(f"9,000 instruments      ~{9000 / rate / 60:.0f} min at the rate achieved (extrapolated, not measured)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
