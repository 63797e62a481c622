"""Daemon memory: RSS of main.py --broker sim with many instruments over a simulated session.

    .venv/bin/python -m bench.memory [--symbols 9000] [--intervals 1m,5m,15m] [--sim-minutes 60] [--speed 4]
                                     [--tick-rate 1] [--sample 2] [--store postgres|sqlite] [--every 5]
    .venv/bin/python -m bench.memory --paced [--sim-minutes 60]
    .venv/bin/python -m bench.memory --profile [--sim-minutes 20] [--top 15]

Default: runs the real daemon as a separate process (`main.py --broker sim`, PostgreSQL as the store: a
throwaway server from testkit/pg.py; `--store sqlite` for the embedded one) on a fresh DATA_DIR, and reads
VmRSS and VmHWM from /proc/<pid>/status every `--sample` wall seconds. The simulated clock runs `--speed`
times the wall clock, so 60 simulated minutes take 60/speed wall minutes (15 at the default 4x). Prints
one row per `--every` simulated minutes and a summary: peak, RSS at 15/30/45/60 simulated minutes, the
growth over the second half of the run, whether the daemon kept up with the simulated feed (lag of the
ticks it processed behind the simulated clock, late ticks, queue depth; from its status lines), the
machine's load, and the verdict against the bar (peak <= --bar-mb and flat: second-half growth <= --flat-mb).
A daemon that falls behind builds ever larger tick batches, and its RSS with them: the run stops once it
is --abort-lag simulated seconds behind. After any pause (a journal checkpoint) the simulator hands over
pause x speed seconds of ticks at once, so a faster simulation also means larger bursts than a live feed.

The simulation starts at IST midnight by default: the simulator replays the day from midnight up to
`--sim-start` before streaming (at 09:15 that is 300 million ticks for 9,000 symbols).

`--paced` runs the same objects in this process instead (SimBroker, CandleAggregator, TickJournal, Spool,
the store and Service with its pipeline and writer threads, as cli/daemon.py wires them), the feed
handed over batch by batch as fast as the pipeline takes it: it cannot fall behind, so it gives the figure
on a busy machine too, and counts live allocated blocks to tell a leak from allocator slack. `--profile`
does the same under tracemalloc: top allocation sites, what grew over the second half, live objects by
type, and the transient of one journal checkpoint (a snapshot of the aggregator); its RSS includes
tracemalloc's own tables. Exit status is 0 either way: a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import gc
import linecache
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from brokers.sim.client import SimBroker
from candles.model import parse_intervals
from core.ist import IST
from core.ticks import Instrument, TickBatchCallback
from testkit.cli import MAIN, main_env

ROOT = Path(__file__).resolve().parent.parent
SIM_START = "2026-11-24T00:00:00+05:30"
MB = 1024 * 1024

_STATUS = re.compile(
    r"status: [\d.]+ ticks/s, (?P<ticks>\d+) ticks, (?P<candles>\d+) candles written, queue depth (?P<queue>\d+), "
    r"store lag [\d.]+s, spool (?P<spool>\d+), late ticks (?P<late>\d+), dropped (?P<dropped>\d+)"
)
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (\w+)\s")


# ---- shared ------------------------------------------------------------------------------------------


def proc_mem(pid: int | str = "self") -> tuple[int, int] | None:
    """(VmRSS, VmHWM) in bytes, or None once the process is gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (rss, hwm) if rss else None


def symbols(n: int) -> list[str]:
    return [f"NSE:SYM{i:05d}" for i in range(n)]


def start_postgres() -> tuple[Any, str]:
    """A throwaway PostgreSQL server (testkit/pg.py) and the DSN of a fresh database on it."""
    from testkit.pg import PostgresServer

    server = PostgresServer()
    server.start()
    return server, server.create_database(f"memory_{uuid.uuid4().hex[:8]}")


def fitted_slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (0 for fewer than two distinct x)."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in points) / sxx


# ---- the daemon as a process ---------------------------------------------------------------------------


@dataclass(slots=True)
class Status:
    at: float  # wall epoch of the status line
    ticks: int
    candles: int
    queue: int
    spool: int
    late: int
    dropped: int


@dataclass(slots=True)
class Sample:
    at: float  # wall epoch
    wall: float  # seconds since the daemon was started
    sim: float | None  # simulated seconds since the simulated start (None before the store is ready)
    rss: int
    hwm: int
    status: Status | None  # the newest status line at the time
    load: float  # the machine's 1-minute load average


@dataclass
class DaemonLog:
    """Follows the daemon's log file: start-up marks, status lines, problems."""

    path: Path
    ready_at: float | None = None  # "store ... ready": the simulated clock was created just before
    streaming_at: float | None = None  # "streaming N instruments": the simulator subscribed
    statuses: list[Status] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    stopped: str | None = None
    _pos: int = 0
    _rest: str = ""

    def poll(self) -> None:
        try:
            with self.path.open(encoding="utf-8", errors="replace") as f:
                f.seek(self._pos)
                chunk = f.read()
                self._pos = f.tell()
        except FileNotFoundError:
            return
        lines = (self._rest + chunk).split("\n")
        self._rest = lines.pop()
        for line in lines:
            self._take(line)

    def _take(self, line: str) -> None:
        stamp = _STAMP.match(line)
        at = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() if stamp else time.time()
        if stamp and stamp.group(2) in ("WARNING", "ERROR", "CRITICAL") or "Traceback" in line:
            self.problems.append(line.strip())
        if self.ready_at is None and " ready (schema version" in line:
            self.ready_at = at
        elif self.streaming_at is None and "streaming " in line and " from " in line:
            self.streaming_at = at
        elif "stopped: " in line:
            self.stopped = line.split("stopped: ", 1)[1].strip()
        found = _STATUS.search(line)
        if found:
            v = {k: int(x) for k, x in found.groupdict().items()}
            self.statuses.append(Status(at, v["ticks"], v["candles"], v["queue"], v["spool"], v["late"], v["dropped"]))


class LagMeter:
    """How far the ticks the pipeline took are behind the simulated clock, in simulated seconds.

    The simulator emits about symbols * rate ticks per simulated second from the moment it subscribes,
    so the pipeline has caught up to subscribe time + ticks / (symbols * rate)."""

    def __init__(self, log: DaemonLog, speed: float, per_second: float) -> None:
        self.log = log
        self.speed = speed
        self.per_second = per_second

    def lag(self, st: Status) -> float | None:
        if self.log.streaming_at is None:
            return None
        return (st.at - self.log.streaming_at) * self.speed - st.ticks / self.per_second


def run_daemon(args: argparse.Namespace) -> None:
    intervals = ",".join(i.name for i in parse_intervals(args.intervals))
    total_sim = args.sim_minutes * 60.0
    wall_duration = total_sim / args.speed
    tmp = Path(tempfile.mkdtemp(prefix="marketfeed-memory-"))
    (tmp / "symbols.txt").write_text("\n".join(symbols(args.symbols)) + "\n")
    env = main_env(DATA_DIR=str(tmp / "data"), STATUS_INTERVAL_SECONDS=str(max(1.0, args.sample)))
    server = None
    if args.store == "postgres":
        server, dsn = start_postgres()
        env["PG_CONN_STR"] = dsn
        where = f"PostgreSQL (throwaway server, port {server.port})"
    else:
        env["SQLITE_PATH"] = str(tmp / "data" / "marketfeed.db")
        where = "SQLite"
    cmd = [
        sys.executable, MAIN, "--broker", "sim", "--symbols-file", str(tmp / "symbols.txt"), "--intervals", intervals,
        "--seed", str(args.seed), "--sim-speed", f"{args.speed:g}", "--sim-start", args.sim_start,
        "--sim-tick-rate", f"{args.tick_rate:g}", "--duration", f"{wall_duration:.1f}",
    ]  # fmt: skip
    per_second = args.symbols * args.tick_rate
    print(f"daemon: {args.symbols:,} symbols x {intervals}, {args.tick_rate:g} tick/s each ({per_second:,.0f} ticks per "
          f"simulated second), {args.sim_minutes:g} simulated minutes at {args.speed:g}x = {wall_duration / 60:.1f} wall "
          f"minutes, store {where}")  # fmt: skip
    print(f"        main.py {' '.join(cmd[2:])}")
    print(f"        log: {tmp / 'daemon.log'}")
    log = DaemonLog(tmp / "daemon.log")
    lag = LagMeter(log, args.speed, per_second)
    samples: list[Sample] = []
    with (tmp / "daemon.log").open("w") as out:
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    started = time.time()
    deadline = started + wall_duration + args.startup_allowance
    print(f"\n{'sim min':>7} {'wall s':>7} {'RSS MB':>7} {'HWM MB':>7} {'ticks':>12} {'lag s':>6} {'late ticks':>10} "
          f"{'queue':>6} {'spool':>6}")  # fmt: skip
    next_mark = 0.0
    aborted = ""
    try:
        while True:
            mem = proc_mem(proc.pid)
            log.poll()
            now = time.time()
            if mem is not None and proc.poll() is None:
                sim = None if log.ready_at is None else (now - log.ready_at) * args.speed
                st = log.statuses[-1] if log.statuses else None
                samples.append(Sample(now, now - started, sim, mem[0], mem[1], st, os.getloadavg()[0]))
                if sim is not None and sim >= next_mark * 60 and sim <= total_sim + args.speed * args.sample:
                    _print_row(samples[-1], lag)
                    next_mark = (int(sim / 60 / args.every) + 1) * args.every
            if proc.poll() is not None:
                break
            recent = [lag.lag(st) for st in log.statuses[-3:]]
            hopeless = len(recent) == 3 and all(x is not None and x > args.abort_lag for x in recent)
            if now > deadline or hopeless:
                if hopeless:
                    aborted = f"the daemon fell {recent[-1]:.0f} simulated s behind (more than --abort-lag {args.abort_lag:g})"
                else:
                    aborted = f"the daemon did not stop {args.startup_allowance:.0f} s after its --duration"
                print(f"{aborted}: stopping it")
                proc.terminate()
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                break
            time.sleep(args.sample if log.streaming_at is not None else 0.05)  # start-up in finer steps
        proc.wait()
        log.poll()
        counts = _stored_counts(env.get("PG_CONN_STR"), tmp / "data" / "marketfeed.db")
    finally:
        if proc.poll() is None:
            proc.kill()
        if server is not None:
            server.cleanup()
    _summary(args, samples, log, lag, proc.returncode, counts, aborted)
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"kept {tmp}")


def _print_row(s: Sample, lag: LagMeter) -> None:
    st = s.status
    behind = lag.lag(st) if st is not None else None
    print(f"{(s.sim or 0) / 60:7.1f} {s.wall:7.0f} {s.rss / MB:7.1f} {s.hwm / MB:7.1f} "
          + (f"{st.ticks:12,} {behind if behind is not None else 0:6.1f} {st.late:10,} {st.queue:6,} {st.spool:6,}"
             if st is not None else f"{'-':>12} {'-':>6} {'-':>10} {'-':>6} {'-':>6}"),
          flush=True)  # fmt: skip


def _stored_counts(dsn: str | None, sqlite_path: Path) -> dict[str, int] | None:
    """Candles per interval in the store after the run (a check that the daemon really wrote them)."""
    try:
        if dsn:
            import psycopg2

            conn = psycopg2.connect(dsn, connect_timeout=5)
        else:
            import sqlite3

            conn = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)
        try:
            cur = conn.cursor()
            cur.execute('SELECT "interval", count(*) FROM candles GROUP BY "interval"')
            return {row[0]: int(row[1]) for row in cur.fetchall()}
        finally:
            conn.close()
    except Exception as exc:  # noqa: BLE001 - a report line, not a failure
        print(f"could not count the stored candles: {exc}")
        return None


def _summary(
    args: argparse.Namespace,
    samples: list[Sample],
    log: DaemonLog,
    lag: LagMeter,
    returncode: int | None,
    counts: dict[str, int] | None,
    aborted: str,
) -> None:
    total_sim = args.sim_minutes * 60.0
    within = args.speed * args.sample * 1.5 + 1
    print()
    if not samples or log.ready_at is None:
        print(f"no usable samples (exit status {returncode}); the log's problems:")
        for line in log.problems[:10]:
            print(f"  {line}")
        return
    running = [s for s in samples if s.sim is not None and s.sim <= total_sim]
    peak_hwm = max(s.hwm for s in samples)
    peak_rss = max(s.rss for s in samples)
    if aborted:
        print(f"ABORTED: {aborted}; the figures below are of a backlog, not of the daemon keeping up")
    print(f"exit status {returncode}; {log.stopped or 'no stop line'}")
    if counts is not None:
        print("stored candles: " + ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items(), key=lambda kv: kv[1], reverse=True)))
    imports = [s for s in samples if s.at < (log.ready_at or 0)]
    streaming = next((s for s in samples if log.streaming_at and s.at >= log.streaming_at), None)
    print("start-up: "
          + (f"{imports[-1].rss / MB:.1f} MB before the store was ready (interpreter, first imports), " if imports else "")
          + (f"{streaming.rss / MB:.1f} MB once streaming (simulator subscribed)" if streaming else ""))  # fmt: skip
    print(f"peak: VmHWM {peak_hwm / MB:.1f} MB (highest sampled VmRSS {peak_rss / MB:.1f} MB)")
    judged = rss_over_time([(s.sim or 0.0, s.rss) for s in running], total_sim, within)
    statuses = [st for st in log.statuses if st.at <= (log.ready_at or 0) + total_sim / args.speed]
    lags = [(x, st) for x, st in ((lag.lag(st), st) for st in statuses) if x is not None]
    late = statuses[-1].late if statuses else 0
    max_queue = max((st.queue for st in statuses), default=0)
    tail = sorted(x for x, _ in lags[-3:])
    end_lag = tail[len(tail) // 2] if tail else 0.0
    worst, worst_st = max(lags, key=lambda p: p[0]) if lags else (0.0, None)
    worst_min = 0.0 if worst_st is None else (worst_st.at - (log.ready_at or 0)) * args.speed / 60
    if aborted or not lags or end_lag > args.max_lag:
        keeping, kept_up = "FELL BEHIND: the reading includes a backlog; lower --speed", False
    elif worst > args.max_lag:
        keeping, kept_up = (f"FELL BEHIND FOR A WHILE (up to {worst:.0f} s at simulated minute {worst_min:.0f}), then caught up: "
                            "from then on RSS also holds what the backlog left (memory the allocator keeps)", False)  # fmt: skip
    else:
        keeping, kept_up = "KEPT UP", True
    print(f"keeping up: lag of the processed ticks behind the simulated clock max {worst:.1f}, at the end {end_lag:.1f} "
          f"simulated s; late ticks {late:,}; largest queue depth {max_queue:,}; {keeping}")  # fmt: skip
    if late:
        print(f"  late ticks reached the pipeline after their bucket closed (end + 2 s grace, simulated): a pause in the "
              f"feed or the pipeline of more than {2 / args.speed:.2f} wall s at {args.speed:g}x")  # fmt: skip
    loads = [s.load for s in running] or [0.0]
    print(f"machine load (1-minute average) during the run: {loads[0]:.1f} at the start, {max(loads):.1f} at most, "
          f"{loads[-1]:.1f} at the end, on {os.cpu_count()} CPUs (the daemon needs about one)")  # fmt: skip
    if log.problems:
        print(f"log: {len(log.problems)} warning/error lines, first: {log.problems[0][:160]}")
    verdict(args, peak_hwm, judged, None if kept_up else "the daemon fell behind (a lower --speed or a quieter machine "
            "gives a cleaner reading)")  # fmt: skip


def rss_over_time(points: list[tuple[float, int]], total_sim: float, within: float) -> float | None:
    """Print RSS at 15/30/45/60 simulated minutes and the growth over the second half; returns that growth
    in MB (the larger of end to end and fitted), None when there are too few points to tell.
    ``points``: (simulated seconds, RSS bytes)."""

    def nearest(sim: float) -> tuple[float, int] | None:
        best = min(points, key=lambda p: abs(p[0] - sim), default=None)
        return best if best is not None and abs(best[0] - sim) <= within else None

    marks = [m for m in (15, 30, 45, 60) if m * 60 <= total_sim] or [total_sim / 60]
    at = [f"{m:g} min " + (f"{p[1] / MB:.1f}" if (p := nearest(m * 60)) else "-") for m in marks]
    print("RSS at simulated " + ", ".join(at) + " MB")
    half = [p for p in points if p[0] >= total_sim / 2]
    if len(half) < 2:
        print("second half: too few samples to judge growth")
        return None
    a = nearest(total_sim / 2) or half[0]
    b = nearest(total_sim) or half[-1]
    growth = (b[1] - a[1]) / MB
    slope = fitted_slope([(sim / 3600, rss / MB) for sim, rss in half])
    fitted = slope * (total_sim / 2 / 3600)
    print(f"second half ({total_sim / 120:g}-{total_sim / 60:g} simulated min): {growth:+.1f} MB end to end, "
          f"fitted {fitted:+.1f} MB ({slope:+.1f} MB per simulated hour over {len(half)} samples)")  # fmt: skip
    return max(growth, fitted)


def verdict(args: argparse.Namespace, peak_hwm: int, growth: float | None, disturbed: str | None) -> None:
    meets_peak = peak_hwm / MB <= args.bar_mb
    flat = growth is not None and growth <= args.flat_mb
    text = "MEETS the bar" if meets_peak and flat else "MISSES the bar"
    why = [
        f"peak {peak_hwm / MB:.1f} MB {'<=' if meets_peak else '>'} {args.bar_mb:g} MB",
        ("flat" if flat else "not flat")
        + (f" (second-half growth {growth:+.1f} MB, limit {args.flat_mb:g} MB)" if growth is not None else " (not measured)"),
    ]
    if disturbed:
        text += " (reading disturbed)"
        why.append(disturbed)
    print(f"verdict: {text}: " + "; ".join(why))
    if args.sim_minutes < 60:
        print(f"  (the bar is for 60 simulated minutes; this run had {args.sim_minutes:g})")


# ---- in-process profile ---------------------------------------------------------------------------------


class SteppedClock:
    """A simulated clock the benchmark moves itself."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class PacedSim(SimBroker):
    """The simulator without its feed thread: the benchmark hands each batch over itself, on the broker
    callback the service registered, as fast as the pipeline takes them."""

    def connect(self, on_ticks: TickBatchCallback) -> None:
        self.on_ticks: TickBatchCallback | None = on_ticks

    def disconnect(self) -> None:
        self.on_ticks = None

    def is_connected(self) -> bool:
        return getattr(self, "on_ticks", None) is not None


def _where(filename: str) -> str:
    path = Path(filename)
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        pass
    parts = path.parts
    for anchor in ("site-packages", "lib-dynload"):
        if anchor in parts:
            return "/".join(parts[parts.index(anchor) + 1 :])
    return path.name if filename.startswith("<") else f"python/{path.name}"


def in_process(args: argparse.Namespace) -> None:
    """--paced and --profile: the daemon's objects in this process, the feed paced by the pipeline."""
    import tracemalloc

    from ops.gc_tuning import tune_for_streaming
    from ops.malloc_tuning import release_free_memory, tune_allocator
    from pipeline.journal import TickJournal
    from pipeline.service import Service
    from storage import open_store
    from storage.spool import Spool

    trace = args.profile
    intervals = parse_intervals(args.intervals)
    total_sim = args.sim_minutes * 60.0
    start = datetime.fromisoformat(args.sim_start)
    start_ts = (start if start.tzinfo else start.replace(tzinfo=IST)).timestamp()
    tmp = Path(tempfile.mkdtemp(prefix="marketfeed-memory-inproc-"))
    server = None
    dsn = None
    if args.store == "postgres":
        server, dsn = start_postgres()
    _keep_sources()
    rss_imports = (proc_mem() or (0, 0))[0]
    if trace:
        tracemalloc.start(args.frames)
    try:
        store = open_store(dsn, str(tmp / "marketfeed.db"))
        store.migrate()
        clock = SteppedClock(start_ts)
        broker = PacedSim(clock, seed=args.seed, tick_rate=args.tick_rate)  # type: ignore[arg-type]
        instruments = [Instrument("NSE", s.split(":")[1]) for s in symbols(args.symbols)]
        service = Service(
            broker, store, instruments, intervals, clock=clock, status_interval=3600.0,
            spool=Spool(tmp / "spool"), journal=TickJournal(tmp / "journal"), after_checkpoint=release_free_memory,
        )  # fmt: skip
        tune_for_streaming()  # as cli/daemon.py does before the service starts
        tune_allocator()
        service.start()
        rss_streaming = (proc_mem() or (0, 0))[0]
        on_ticks = broker.on_ticks
        assert on_ticks is not None
        step = args.batch
        print(f"{'profile' if trace else 'paced'}: {args.symbols:,} symbols x {','.join(i.name for i in intervals)}, "
              f"{args.sim_minutes:g} simulated minutes in batches of {step:g} simulated s, store {store.description}"
              + (f", tracemalloc {args.frames} frame(s)" if trace else ""))  # fmt: skip
        print(f"RSS after imports {rss_imports / MB:.1f} MB, once streaming {rss_streaming / MB:.1f} MB"
              + (f" (traced {tracemalloc.get_traced_memory()[0] / MB:.1f} MB)" if trace else "") + "\n")  # fmt: skip
        print(f"{'sim min':>7} {'wall s':>7} {'RSS MB':>7} {'HWM MB':>7} {'blocks k':>9} {'ticks':>12}"
              + (f" {'traced MB':>9} {'peak MB':>8}" if trace else ""))  # fmt: skip
        sent = 0
        t = start_ts
        t0 = time.perf_counter()
        half: Any = None
        points: list[tuple[float, int, int]] = []  # (simulated s, RSS, allocated blocks), once a simulated minute
        transients: list[tuple[float, float]] = []  # (sim minute, traced peak above the level after it)
        if trace:
            tracemalloc.reset_peak()
        next_minute = start_ts + 60
        while t < start_ts + total_sim - 1e-9:
            t = min(t + step, start_ts + total_sim)
            clock.now = t
            batch = broker.due_ticks(t)
            if batch:
                sent += len(batch)
                on_ticks(batch)  # journals the batch and queues it, as the feed thread does
            while service.stats.ticks < sent:  # the pipeline took it
                time.sleep(0.0005)
            if t < next_minute - 1e-9:
                continue
            next_minute += 60
            minute = (t - start_ts) / 60
            rss, hwm = proc_mem() or (0, 0)
            points.append((t - start_ts, rss, sys.getallocatedblocks()))
            traced = ""
            if trace:
                current, peak = tracemalloc.get_traced_memory()
                transients.append((minute, (peak - current) / MB))
                tracemalloc.reset_peak()
                traced = f" {current / MB:9.1f} {peak / MB:8.1f}"
            if round(minute) % args.every == 0:
                print(f"{minute:7.0f} {time.perf_counter() - t0:7.0f} {rss / MB:7.1f} {hwm / MB:7.1f} "
                      f"{points[-1][2] / 1000:9,.0f} {sent:12,}{traced}", flush=True)  # fmt: skip
            if trace and half is None and t - start_ts >= total_sim / 2:
                half = _settled_snapshot(service, tracemalloc)
        print()
        if trace:
            census = _census()  # before the snapshots: they are large lists themselves
            end = _settled_snapshot(service, tracemalloc)
            rss_end = (proc_mem() or (0, 0))[0]
            _report_profile(args, end, half, transients, rss_imports, rss_end, service, census)
            del end, half
        else:
            _paced_summary(args, points, rss_imports, rss_streaming, total_sim)
        service.stop()  # the pipeline no longer touches the aggregator: a checkpoint can be taken from here
        _checkpoint_cost(service, tracemalloc if trace else None)
        store.close()
    finally:
        if trace:
            tracemalloc.stop()
        if server is not None:
            server.cleanup()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def _paced_summary(
    args: argparse.Namespace, points: list[tuple[float, int, int]], rss_imports: int, rss_streaming: int, total_sim: float
) -> None:
    hwm = (proc_mem() or (0, 0))[1]
    print(f"start-up: {rss_imports / MB:.1f} MB after imports, {rss_streaming / MB:.1f} MB once streaming (simulator subscribed)")
    print(f"peak: VmHWM {hwm / MB:.1f} MB (highest VmRSS at a minute boundary {max(p[1] for p in points) / MB:.1f} MB)")
    growth = rss_over_time([(sim, rss) for sim, rss, _ in points], total_sim, 61.0)
    half = [(sim, blocks) for sim, _, blocks in points if sim >= total_sim / 2]
    if len(half) >= 2:
        change = (half[-1][1] - half[0][1]) / half[0][1]
        print(f"allocated blocks (live Python objects) over the second half: {half[0][1]:,} -> {half[-1][1]:,} ({change:+.1%}): "
              + ("flat, so RSS growth is allocator slack (freed memory kept in partly used arenas), not live data"
                 if abs(change) < 0.02 else "live data grew"))  # fmt: skip
    _trim_probe()
    verdict(args, hwm, growth, None)
    print(
        "  (in-process, paced by the pipeline: the same objects and threads as the daemon, no falling behind; the daemon's own "
        "figure is the default mode's)"
    )


def _trim_probe() -> None:
    """How much of the RSS is free memory the C allocator keeps (glibc's malloc_trim gives it back)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return
    before = (proc_mem() or (0, 0))[0]
    trim(0)
    after = (proc_mem() or (0, 0))[0]
    print(f"malloc_trim(0) after the run: RSS {before / MB:.1f} -> {after / MB:.1f} MB (what stays is live objects and "
          "Python's own partly used arenas)")  # fmt: skip


def _keep_sources() -> None:
    """Read the project's source files into linecache now: the sites printed at the end then show the
    code that was imported, even when a file is edited during the run."""
    for module in list(sys.modules.values()):
        filename = getattr(module, "__file__", None) or ""
        if filename.startswith(str(ROOT)):
            linecache.getlines(filename)


def _settled_snapshot(service: Any, tracemalloc: Any) -> Any:
    """A snapshot once the pipeline has taken what was handed over and the writer has stored it."""
    deadline = time.monotonic() + 30
    time.sleep(0.3)  # the pipeline loops at least every 0.1 s
    while service.spool_depth() and time.monotonic() < deadline:
        time.sleep(0.05)
    return tracemalloc.take_snapshot().filter_traces(
        (__import__("tracemalloc").Filter(False, tracemalloc.__file__),)  # not tracemalloc's own bookkeeping
    )


def _report_profile(
    args: argparse.Namespace,
    end: Any,
    half: Any,
    transients: list[tuple[float, float]],
    rss_imports: int,
    rss_end: int,
    service: Any,
    census: list[tuple[str, tuple[int, int]]],
) -> None:
    traced = sum(s.size for s in end.statistics("filename"))
    print(
        f"\nat the end: RSS {rss_end / MB:.1f} MB, traced {traced / MB:.1f} MB (allocated after the imports; "
        f"RSS after imports was {rss_imports / MB:.1f} MB), tracemalloc's own tables "
        f"{__import__('tracemalloc').get_tracemalloc_memory() / MB:.1f} MB; the rest is allocator slack"
    )
    print(f"\ntop {args.top} allocation sites (live at the end):")
    print(f"{'MB':>7} {'blocks':>10} {'B/block':>8}  site")
    for st in end.statistics("lineno")[: args.top]:
        frame = st.traceback[0]
        text = linecache.getline(frame.filename, frame.lineno).strip()
        print(f"{st.size / MB:7.1f} {st.count:10,} {st.size / max(st.count, 1):8.0f}  "
              f"{_where(frame.filename)}:{frame.lineno}  {text[:90]}")  # fmt: skip
    print("\nby file:")
    for st in end.statistics("filename")[:10]:
        print(f"{st.size / MB:7.1f} MB {st.count:10,} blocks  {_where(st.traceback[0].filename)}")
    if half is not None:
        print(f"\ngrowth over the second half ({args.sim_minutes / 2:g} -> {args.sim_minutes:g} simulated min), top sites:")
        for st in end.compare_to(half, "lineno")[:8]:
            frame = st.traceback[0]
            print(f"{st.size_diff / MB:+7.2f} MB {st.count_diff:+10,} blocks  {_where(frame.filename)}:{frame.lineno}  "
                  f"{linecache.getline(frame.filename, frame.lineno).strip()[:80]}")  # fmt: skip
        total = (sum(s.size for s in end.statistics("filename")) - sum(s.size for s in half.statistics("filename"))) / MB
        print(f"{total:+7.2f} MB in all")
    if transients:
        minute, size = max(transients, key=lambda x: x[1])
        print(
            f"\nlargest transient within a simulated minute: {size:.1f} MB above the level after it (minute {minute:.0f};"
            " journal checkpoints snapshot the aggregator, closes build a minute's candles at once)"
        )
    agg = service.aggregator
    print(f"\naggregator: {agg.stats.open_buckets:,} open buckets; live objects by type (gc-tracked, shallow sizes):")
    for name, (count, size) in census[:10]:
        print(f"{size / MB:7.1f} MB {count:10,}  {name}")


def _census() -> list[tuple[str, tuple[int, int]]]:
    """GC-tracked objects by type: (type, (count, shallow bytes)), largest first."""
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for obj in gc.get_objects():
        name = type(obj).__qualname__
        counts[name] += 1
        sizes[name] += sys.getsizeof(obj)
    return [(name, (counts[name], size)) for name, size in sizes.most_common()]


def _checkpoint_cost(service: Any, tracemalloc: Any | None) -> None:
    """What one journal checkpoint costs, taken as the pipeline takes it (Service._checkpoint: a snapshot of
    the aggregator into a new journal segment). The pipeline holds the GIL meanwhile: feed and pipeline wait."""
    hwm_before = (proc_mem() or (0, 0))[1]
    before = tracemalloc.get_traced_memory()[0] if tracemalloc else 0
    if tracemalloc:
        tracemalloc.reset_peak()
    t0 = time.perf_counter()
    service._checkpoint()
    took = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] if tracemalloc else 0
    hwm_after = (proc_mem() or (0, 0))[1]
    segments = sorted(service.journal.dir.glob("ticks-*.jnl"))
    size = segments[-1].stat().st_size if segments else 0
    if tracemalloc:
        print(f"\njournal checkpoint: {size / MB:.1f} MB snapshot in {took:.1f} s under tracemalloc, traced peak "
              f"{(peak - before) / MB:.1f} MB above the live level")  # fmt: skip
    else:
        print(f"journal checkpoint (one, after the run): {size / MB:.1f} MB snapshot in {took:.2f} s (a pause of the pipeline "
              f"and the feed); VmHWM {hwm_before / MB:.1f} -> {hwm_after / MB:.1f} MB")  # fmt: skip


def _terminated(signum: int, _frame: object) -> None:
    raise SystemExit(f"stopped by {signal.Signals(signum).name}")


# ---- command line -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--symbols", type=int, default=9000, help="instruments in the watchlist (default 9000)")
    ap.add_argument("--intervals", default="1m,5m,15m")
    ap.add_argument("--sim-minutes", type=float, help="simulated minutes (default 60; 20 with --profile)")
    ap.add_argument("--speed", type=float, default=4.0, help="simulated seconds per wall second (default 4)")
    ap.add_argument("--tick-rate", type=float, default=1.0, help="ticks per simulated second per symbol (default 1)")
    ap.add_argument("--sim-start", default=SIM_START, help=f"simulated start (default {SIM_START})")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--store", choices=("postgres", "sqlite"), default="postgres")
    ap.add_argument("--sample", type=float, default=2.0, help="wall seconds between RSS samples (default 2)")
    ap.add_argument("--every", type=int, default=5, help="a table row every N simulated minutes (default 5)")
    ap.add_argument("--bar-mb", type=float, default=150.0, help="peak RSS bar (default 150)")
    ap.add_argument("--flat-mb", type=float, default=5.0, help="most growth over the second half still 'flat' (default 5)")
    ap.add_argument("--max-lag", type=float, default=15.0, help="simulated seconds behind at the end that count as "
                    "falling behind (default 15)")  # fmt: skip
    ap.add_argument("--abort-lag", type=float, default=300.0, help="stop the run once the daemon is this many simulated "
                    "seconds behind in three status lines in a row (default 300)")  # fmt: skip
    ap.add_argument("--startup-allowance", type=float, default=180.0, help="wall seconds allowed beyond --duration")
    ap.add_argument("--keep", action="store_true", help="keep the temporary DATA_DIR and the daemon's log")
    ap.add_argument("--paced", action="store_true", help="in-process run of the same objects, paced by the pipeline")
    ap.add_argument("--profile", action="store_true", help="in-process run under tracemalloc instead of the daemon")
    ap.add_argument("--batch", type=float, default=0.2, help="--paced, --profile: simulated seconds per tick batch (default 0.2, "
                    "the daemon's batch at 4x)")  # fmt: skip
    ap.add_argument("--frames", type=int, default=1, help="--profile: tracemalloc frames per allocation (default 1)")
    ap.add_argument("--top", type=int, default=15, help="--profile: allocation sites to print (default 15)")
    args = ap.parse_args(argv)
    if args.sim_minutes is None:
        args.sim_minutes = 20.0 if args.profile else 60.0
    if args.speed <= 0 or args.sim_minutes <= 0 or args.symbols <= 0:
        ap.error("--speed, --sim-minutes and --symbols must be positive")
    signal.signal(signal.SIGTERM, _terminated)  # clean up the daemon and the PostgreSQL server on a kill too
    if args.profile or args.paced:
        in_process(args)
    else:
        run_daemon(args)


if __name__ == "__main__":
    main()
