"""The NATS bus's cost: the daemon's extra CPU for publishing ticks, and tick → consumer latency.

    .venv/bin/python -m bench.nats_publish [--rate 100000] [--seconds 10] [--symbols 500] [--batch 500]

A throwaway nats-server with JetStream (testkit/nats.py) on loopback. The load is what the
pipeline thread hands the bus: ``--batch`` ticks at a time, ``--rate`` ticks a second over
``--symbols`` symbols, for ``--seconds``. Two runs on the same load, in this process:

- ``without``: each batch handed to nothing (the pacing loop alone);
- ``with``: each batch handed to ``publishers.nats.NatsPublisher.publish_ticks``, its thread
  encoding and publishing them to the server (the stream MARKETFEED_TICKS stores them).

The extra CPU is the difference of this process's CPU time (user + system, every thread) between
the two, over the run's wall time, as a share of one core (bar: <= 10%). The ``with`` run counts
until every tick was handed to the client (none dropped). nats-server's own CPU is shown apart:
it is not the daemon's.

Latency: one symbol's ticks carry the time they were handed over as their exchange time; a second
process reads that symbol's subject through a JetStream ordered consumer (as ``--tail`` does) and
takes its clock minus that time for each: p50, p99 and the worst (bar: p99 reported).
The figures depend on what else the machine runs: re-run to compare. The tick encoder is the
compiled one when it is built (``MARKETFEED_PURE_PYTHON=1`` runs the pure-Python one); the first
line says which.

``--encode`` measures only ``TickEncoder.encode_batch`` in this process, no server: the compiled
and the pure-Python encoder over the same batches, alternating, microseconds a tick (median of
``--rounds``, each a pass over every batch of the load).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from config.settings import NatsSettings
from core import accel
from core.ist import IST
from core.ticks import TickData
from publishers.nats import NatsPublisher, PythonTickEncoder, TickEncoder, tick_subject
from testkit.nats import NatsServer

PROBE = "PROBE"


def _cpu_of(pid: int) -> float:
    """utime + stime of process ``pid`` in seconds (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pool(symbols: int, batch: int) -> list[list[TickData]]:
    """Batches of ticks over ``symbols`` symbols, reused round-robin (their times are not read)."""
    at = datetime.now(IST)
    pool = []
    n = 0
    for _ in range(max(1, 20_000 // batch)):
        rows = []
        for _ in range(batch - 1):
            i = n % symbols
            rows.append(TickData("bench", "NSE", f"SYM{i}", i, Decimal("1520.05") + n % 100, 5, 1000 + n, None, at, at))
            n += 1
        pool.append(rows)
    return pool


def _probe(seq: int) -> TickData:
    now = datetime.now(IST)
    return TickData("bench", "NSE", PROBE, 0, Decimal(seq), 1, seq, None, now, now)


def _drive(sink: Callable[[Sequence[TickData]], None], pool: list[list[TickData]], rate: int, seconds: float) -> int:
    """Hand ``sink`` a batch every batch/rate seconds for ``seconds``; the ticks handed over."""
    per = len(pool[0]) + 1
    period = per / rate
    start = time.monotonic()
    sent = 0
    k = 0
    while True:
        due = start + k * period
        now = time.monotonic()
        if now - start >= seconds:
            return sent
        if due > now:
            time.sleep(due - now)
        batch = [*pool[k % len(pool)], _probe(k)]
        sink(batch)
        sent += per
        k += 1


def _run(sink: Callable[[Sequence[TickData]], None], pool: list, rate: int, seconds: float,
         done: Callable[[int], bool] = lambda _: True) -> tuple[int, float, float]:  # fmt: skip
    """(ticks, wall seconds, CPU seconds of this process) for one run."""
    wall0, cpu0 = time.monotonic(), time.process_time()
    sent = _drive(sink, pool, rate, seconds)
    deadline = time.monotonic() + 60
    while not done(sent) and time.monotonic() < deadline:
        time.sleep(0.01)
    return sent, time.monotonic() - wall0, time.process_time() - cpu0


def consume(url: str, subject: str, seconds: float, out: str) -> None:
    """The latency reader (a process of its own): clock minus each tick's exchange time, in ms."""
    import nats
    import nats.errors
    from nats.js.api import DeliverPolicy

    async def read() -> list[float]:
        nc = await nats.connect(url)
        js = nc.jetstream()
        for _ in range(100):  # until the publisher has created the stream
            try:
                sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW)
                break
            except Exception:  # noqa: BLE001 - the stream does not exist yet
                await asyncio.sleep(0.1)
        Path(out + ".ready").touch()
        got = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                msg = await sub.next_msg(0.5)
            except nats.errors.TimeoutError:
                continue
            now = time.time()
            body = json.loads(msg.data)
            got.append((now - datetime.fromisoformat(body["ts"]).timestamp()) * 1000)
        await nc.close()
        return got

    Path(out).write_text(json.dumps(asyncio.run(read())))


def encode_cost(pool: list[list[TickData]], rounds: int) -> None:
    """Print µs a tick of ``encode_batch`` for each encoder, rounds alternating between them."""
    encoders = {"pure-Python": PythonTickEncoder}
    if getattr(TickEncoder, "compiled", False):
        encoders["compiled"] = TickEncoder
    else:
        print(f"compiled encoder not in use: {accel.report()[1]}")
    ticks = sum(len(batch) for batch in pool)
    times: dict[str, list[float]] = {name: [] for name in encoders}
    made = {name: cls("marketfeed") for name, cls in encoders.items()}  # caches warm after the first round
    for _ in range(rounds + 1):
        for name, encoder in made.items():
            start = time.perf_counter()
            for batch in pool:
                encoder.encode_batch(batch, [])
            times[name].append((time.perf_counter() - start) / ticks * 1e6)
    for name, got in times.items():
        got = got[1:]
        print(f"encode_batch, {name:11}: median {statistics.median(got):.3f} µs a tick over {rounds} rounds of "
              f"{ticks:,} ticks (lowest {min(got):.3f}, highest {max(got):.3f})")  # fmt: skip
    if len(times) == 2:
        ratio = statistics.median(times["pure-Python"][1:]) / statistics.median(times["compiled"][1:])
        print(f"compiled is {ratio:.1f}x the pure-Python encoder's speed")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.nats_publish")
    p.add_argument("--rate", type=int, default=100_000, help="ticks a second (default 100000)")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--symbols", type=int, default=500)
    p.add_argument("--batch", type=int, default=500, help="ticks handed over at once (default 500)")
    p.add_argument("--encode", action="store_true", help="only time encode_batch, compiled and pure-Python (no server)")
    p.add_argument("--rounds", type=int, default=20, help="--encode's rounds per encoder (default 20)")
    p.add_argument("--consumer", nargs=4, metavar=("URL", "SUBJECT", "SECONDS", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.consumer:
        url, subject, seconds, out = args.consumer
        consume(url, subject, float(seconds), out)
        return 0

    pool = _pool(args.symbols, args.batch)
    if args.encode:
        encode_cost(pool, args.rounds)
        return 0
    print(f"tick encoder: {'compiled' if getattr(TickEncoder, 'compiled', False) else 'pure Python'} ({accel.report()[1]})")
    print(f"load: {args.rate:,} ticks/s in batches of {args.batch} over {args.symbols} symbols, {args.seconds:g} s a run")
    sent, wall, cpu = _run(lambda batch: None, pool, args.rate, args.seconds)
    base = cpu / wall
    print(f"without NATS: {sent:,} ticks in {wall:.2f} s, CPU {cpu:.2f} s ({base:.1%} of a core: the pacing loop)")

    server = NatsServer()
    server.start()
    tmp = tempfile.mkdtemp(prefix="bench-nats-")
    out = os.path.join(tmp, "latency.json")
    publisher = NatsPublisher(NatsSettings(url=server.url), queue_limit=100_000)
    try:
        publisher.start()
        while publisher.problem is not None:
            time.sleep(0.05)
        reader = subprocess.Popen([sys.executable, "-m", "bench.nats_publish", "--consumer", server.url,
                                   tick_subject("marketfeed", "NSE", PROBE), str(args.seconds + 8), out])  # fmt: skip
        while not os.path.exists(out + ".ready"):
            time.sleep(0.05)
        server_cpu0 = _cpu_of(server.proc.pid)  # type: ignore[union-attr]
        stats = publisher.stats
        sent, wall, cpu = _run(publisher.publish_ticks, pool, args.rate, args.seconds,
                               lambda n: stats.ticks_published + stats.ticks_dropped >= n)  # fmt: skip
        server_cpu = _cpu_of(server.proc.pid) - server_cpu0  # type: ignore[union-attr]
        reader.wait(args.seconds + 30)
        latencies = json.loads(Path(out).read_text())
    finally:
        publisher.stop()
        server.cleanup()
    extra = cpu / wall - base
    print(f"with NATS:    {sent:,} ticks in {wall:.2f} s, CPU {cpu:.2f} s ({cpu / wall:.1%} of a core); published "
          f"{stats.ticks_published:,}, dropped {stats.ticks_dropped:,}")  # fmt: skip
    print(
        f"  extra CPU for publishing: {extra:.1%} of a core at {sent / wall:,.0f} ticks/s "
        f"({(cpu - base * wall) / max(sent, 1) * 1e6:.2f} µs a tick); bar <= 10%: {'met' if extra <= 0.10 else 'MISSED'}"
    )
    print(f"  nats-server: {server_cpu / wall:.1%} of a core (not the daemon's)")
    if latencies:
        print(f"latency, tick handed over -> JetStream consumer ({len(latencies)} ticks of {PROBE}): "
              f"p50 {_pct(latencies, 0.5):.2f} ms, p99 {_pct(latencies, 0.99):.2f} ms, max {max(latencies):.2f} ms")  # fmt: skip
    else:
        print("latency: the consumer read nothing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
