"""Recovery after ``kill -9``: seconds from starting a SIGKILLed daemon again to streaming again.

    .venv/bin/python -m bench.recovery [--rounds 3] [--instruments 9000] [--warmup 120] [--kill-at 30]
        [--pure-python] [--no-check] [--keep]

The processes of bench/end_to_end.py: the fake Kite feed (bench/kite_load.py), the daemon
(``main.py --broker kite``, 1m/5m/15m, full mode) and a throwaway PostgreSQL. The feed sends one tick
per instrument per second. After ``--warmup`` seconds of streaming, at second ``--kill-at`` of a
minute (mid-bucket for every interval), the daemon is SIGKILLed once it has counted every tick sent,
and started again at once with the same DATA_DIR (its tick journal) and database. The feed streams
again as soon as the new daemon has subscribed its instruments, as Kite does. Each round then
streams to the first ``--kill-at`` at least ``--warmup`` seconds later and strikes again.

How much the journal holds decides the replay: the daemon snapshots its aggregator at its start and
then once a minute at second 32 (the middle of the 1m bucket plus its 2 s grace), the first of those
60 to 120 s after the start; a restart replays the batches after the newest snapshot whose candles
were stored. With the default ``--warmup`` (120 s) each kill comes 58 s after such a snapshot, the
steady state; with ``--warmup 60`` it comes just before a (re)started daemon's first one, so the
replay covers its whole life, up to two minutes: the worst case.

Per round, times from the new process's start, seen by polling its log and its metrics every 20 ms:

- ``resumed``: its log says it resumed the open buckets from the tick journal (the replay done);
- ``streaming``: its log says ``streaming N instruments`` (connected, subscriptions sent);
- ``subscribed``: the feed holds every instrument in full mode again (the feed looks every 0.1 s);
- ``first tick``: its ``marketfeed_ticks`` counter (ticks through the aggregator: journal replay
  does not count) is above 0: the first new tick aggregated. This is the figure.

Goal: the median ``first tick`` <= 5 s. Then (unless ``--no-check``) the last daemon is stopped
with SIGTERM (open candles flushed as non-final) and every stored candle is compared with the
reference candles of every tick sent: the candles must come through the kills exact. Exit status 1
only when they do not.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import signal
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from bench.end_to_end import PURE_ENV, Daemon, Load, check_candles, read_candles, say
from candles.model import parse_intervals
from testkit.pg import PostgresServer

RECOVERY_BAR = 5.0
POLL = 0.02
EVENTS = ("resumed", "streaming", "first tick")


class Watch(threading.Thread):
    """Monotonic times at which a just-started daemon's log and metrics first show each event."""

    def __init__(self, daemon: Daemon, timeout: float = 120) -> None:
        super().__init__(name="recovery-watch", daemon=True)
        self.daemon, self.timeout = daemon, timeout
        self.seen: dict[str, float] = {}

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        patterns = {"resumed": re.compile(r"resumed the open buckets from the tick journal"),
                    "streaming": re.compile(r"streaming \d+ instruments")}  # fmt: skip
        while len(self.seen) < len(EVENTS) and time.monotonic() < deadline:
            now = time.monotonic()
            text = self.daemon.log()
            for name, pattern in patterns.items():
                if name not in self.seen and pattern.search(text):
                    self.seen[name] = now
            if "first tick" not in self.seen:
                try:
                    if self.daemon.ticks() > 0:
                        self.seen["first tick"] = now
                except (OSError, RuntimeError):
                    pass  # metrics not served yet, or the process died (the main thread reports it)
            time.sleep(POLL)


def next_kill(after: float, kill_at: int) -> float:
    """The first wall time at or after ``after`` that is second ``kill_at`` of a minute."""
    return after + (kill_at - after % 60) % 60


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instruments", type=int, default=9000)
    ap.add_argument("--intervals", default="1m,5m,15m")
    ap.add_argument("--rate", type=float, default=1.0, help="ticks/s per instrument (default 1)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=float, default=120, help="at least this many seconds of streaming before each kill")
    ap.add_argument("--kill-at", type=int, default=30, help="second of the minute at which to kill (default 30)")
    ap.add_argument("--tail", type=float, default=15, help="seconds of feed after the last restart (default 15)")
    ap.add_argument("--fps", type=float, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--pure-python", action="store_true", help=f"run the daemon with {PURE_ENV}=1")
    ap.add_argument("--no-check", action="store_true", help="skip the candle check against the reference")
    ap.add_argument("--workers", type=int, default=2, help="processes computing the reference candles")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, tick log) and say where")
    args = ap.parse_args(argv)
    intervals = parse_intervals(args.intervals)
    rate = args.instruments * args.rate

    tmp = Path(tempfile.mkdtemp(prefix="marketfeed-recovery-"))
    workdir = tmp / "recovery"
    workdir.mkdir()
    sent_log = workdir / "sent.ticks"
    pg = PostgresServer()
    path = f"pure-Python hot path ({PURE_ENV}=1)" if args.pure_python else "the hot path the daemon picks"
    say(f"marketfeed recovery after kill -9 (Kite) on {os.cpu_count()} cores, daemon on {path}; work directory {tmp}")
    say(f"  {args.instruments:,} instruments x {args.rate:g} tick/s, {args.intervals}; kill at second {args.kill_at} "
        f"after >= {args.warmup:g} s of streaming, {args.rounds} rounds")  # fmt: skip
    load: Load | None = None
    daemon: Daemon | None = None
    lost = False
    rounds: list[dict[str, float]] = []
    try:
        pg.start()
        dsn = pg.create_database("bench_recovery")
        load = Load(args.instruments, args.seed, workdir)

        def stream_to(when: float) -> None:
            """Start the feed (without waiting) until wall time ``when``."""
            assert load is not None
            load.send(cmd="stream", rate=rate, seconds=max(1.0, when - time.time()), log=str(sent_log), fps=args.fps)

        daemon = Daemon(load, dsn, workdir, args.instruments, args.intervals, pure_python=args.pure_python, log_name="daemon0")
        daemon.wait_ready()
        load.wait_subscribed(args.instruments)
        say(f"  daemon pid {daemon.pid}: {daemon.hot_path()}")
        kill = next_kill(time.time() + args.warmup, args.kill_at)
        stream_to(kill)
        for n in range(1, args.rounds + 1):
            sent = load.wait("streamed", kill - time.time() + 60)["sent"]
            deadline = time.monotonic() + 30
            while daemon.ticks() < sent and time.monotonic() < deadline:
                time.sleep(POLL)
            counted = daemon.ticks()
            journal = dir_mb(workdir / "data" / "journal")
            os.kill(daemon.pid, signal.SIGKILL)
            daemon.stop()
            struck = time.strftime("%H:%M:%S")
            t0 = time.monotonic()
            daemon = Daemon(load, dsn, workdir, args.instruments, args.intervals, pure_python=args.pure_python,
                            log_name=f"daemon{n}")  # fmt: skip
            watch = Watch(daemon)
            watch.start()
            load.wait_subscribed(args.instruments)
            subscribed = time.monotonic() - t0
            last = n == args.rounds
            kill = time.time() + args.tail if last else next_kill(time.time() + args.warmup, args.kill_at)
            stream_to(kill)
            watch.join()
            times = {name: watch.seen[name] - t0 for name in EVENTS if name in watch.seen}
            times["subscribed"] = subscribed
            rounds.append(times)
            replay = re.search(r"batches again: done, ([\d,]+)/[\d,]+ batches in ([\d.]+ s)", daemon.log())
            replayed = f"replayed {replay.group(1)} batches in {replay.group(2)}" if replay else "replay not logged"
            shown = "  ".join(f"{name} {times[name]:.2f} s" if name in times else f"{name} NOT SEEN"
                              for name in ("resumed", "streaming", "subscribed", "first tick"))  # fmt: skip
            say(f"  round {n}: SIGKILL at {struck} ({counted:,} of {sent:,} ticks counted, journal {journal:.1f} MB); "
                f"restarted ({replayed}): {shown}; {daemon.hot_path()}")  # fmt: skip
        load.wait("streamed", kill - time.time() + 60)
        if not args.no_check:
            daemon.stop()
            stored = read_candles(dsn)
            say(f"  checking {len(stored):,} stored candles against the reference of every tick sent ...")
            expected, bad, diffs, ticks = check_candles(sent_log, args.instruments, stored.by_symbol, intervals, args.workers)
            lost = bad > 0
            verdict = "equal to the reference" if not lost else f"{bad:,} DIFFERING, first: {diffs}"
            say(f"  candles: {expected:,} expected from {ticks:,} ticks sent, {len(stored):,} stored: {verdict}")
    except KeyboardInterrupt:
        say("interrupted")
    finally:
        if daemon is not None:
            daemon.stop(timeout=60)
        if load is not None:
            load.close()
        pg.cleanup()
        if args.keep:
            say(f"work directory kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    firsts = [r["first tick"] for r in rounds if "first tick" in r]
    if firsts:
        median = statistics.median(firsts) if len(firsts) == len(rounds) else math.inf
        verdict = "met" if median <= RECOVERY_BAR else "NOT MET"
        say(f"recovery: restart -> first new tick aggregated, median {median:.2f} s of {len(rounds)} rounds "
            f"({', '.join(f'{f:.2f}' for f in firsts)}); bar <= {RECOVERY_BAR:g} s: {verdict}")  # fmt: skip
    return 1 if lost else 0


if __name__ == "__main__":
    raise SystemExit(main())
