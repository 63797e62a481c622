"""The HTTP port's figures: /api/candles latency, stored → stream client latency, and the
daemon's CPU with 10 stream clients against none.

    .venv/bin/python -m bench.http_api [--requests 1000] [--seconds 30] [--symbols 100] [--pairs 3] [--no-pg]

1. ``/api/candles`` for one day of 1m candles of one symbol (375 session minutes of NSE:INFY
   among 50 symbols' days in the store): ``--requests`` GETs over one keep-alive connection to an
   ``ops.http.HttpServer`` whose reads use their own connection; p50, p99 and the worst, on SQLite
   and on a throwaway PostgreSQL (testkit/pg.py; ``--no-pg`` skips it). Bar: p99 <= 20 ms.
2. Candle stored → stream client: the real ``pipeline.writer.Writer`` stores a new 1m candle of
   each of 10 symbols every 100 ms for ``--seconds`` (SQLite); the moment ``upsert`` returns is
   the candle's stored time; 10 clients in another process, one per symbol, read
   ``/api/stream`` and take the moment each event arrives (CLOCK_MONOTONIC is the machine's, so
   the two processes' times compare). p50, p99, worst. Bar: p99 <= 100 ms.
3. The daemon's CPU: ``main.py --broker sim`` with ``--symbols`` symbols at 60x (a simulated
   minute a second: every symbol's 1m candle is stored each second), SQLite, ``HTTP_PORT``; its
   process CPU (every thread: /proc/<pid>/stat) over ``--seconds`` with no stream client, then with
   10 (each streaming one symbol's 1m candles), ``--pairs`` times, back to back. The figure is the
   difference of the means, as a share of one core (each pair's difference shown too: the
   machine's noise is of the same order). Bar: <= +2% of a core.

The figures depend on what else the machine runs: re-run to compare.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

from candles.model import Candle
from core.ist import IST
from ops.api import Api
from ops.http import HttpServer
from ops.stream import CandleHub
from storage.base import CandleStore
from storage.spool import Spool
from storage.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parent.parent
DAY = datetime(2026, 11, 24, 9, 15, tzinfo=IST)
MINUTE = timedelta(minutes=1)
SESSION = 375  # 09:15 to 15:30


def _candle(symbol: str, bucket: datetime, n: int) -> Candle:
    price = Decimal("1500.00") + Decimal(n % 400) / 20
    return Candle(
        exchange="NSE", symbol=symbol, interval="1m", bucket=bucket, open=price, high=price + Decimal("1.25"),
        low=price - Decimal("0.75"), close=price + Decimal("0.50"), volume=1000 + n, oi=None, tick_count=60,
        first_tick=bucket + timedelta(seconds=1), last_tick=bucket + timedelta(seconds=59), cum_volume=None, final=True,
    )  # fmt: skip


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _figures(values_ms: list[float]) -> str:
    return f"p50 {statistics.median(values_ms):.2f} ms, p99 {_pct(values_ms, 0.99):.2f} ms, max {max(values_ms):.2f} ms"


# ---- 1. /api/candles -------------------------------------------------------------------------


def candles_latency(writer_store: CandleStore, reader: CandleStore, requests: int) -> list[float]:
    writer_store.migrate()
    for s in range(50):
        symbol = "INFY" if s == 0 else f"SYM{s}"
        writer_store.upsert([_candle(symbol, DAY + i * MINUTE, i) for i in range(SESSION)])
    server = HttpServer(lambda: None, port=0, api=Api(reader))  # type: ignore[arg-type, return-value]
    server.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        path = "/api/candles?symbol=NSE:INFY&interval=1m&from=2026-11-24&to=2026-11-24"
        times = []
        for i in range(requests + 20):
            started = time.perf_counter()
            conn.request("GET", path)
            answer = conn.getresponse()
            body = answer.read()
            took = (time.perf_counter() - started) * 1000
            if i == 0:
                assert answer.status == 200 and len(json.loads(body)["candles"]) == SESSION, body[:200]
            if i >= 20:  # the first ones warm the caches
                times.append(took)
        conn.close()
        return times
    finally:
        server.stop()


# ---- 2. stored -> stream client --------------------------------------------------------------


class _TimedStore(SQLiteStore):
    """The writer's store, noting when each candle's upsert returned (its stored time)."""

    stored: dict[tuple[str, int], float]

    def upsert(self, candles, *, force: bool = False) -> None:  # noqa: ANN001
        super().upsert(candles, force=force)
        now = time.monotonic()
        for c in candles:
            self.stored[(c.symbol, round(c.bucket.timestamp() * 1000))] = now


CLIENT = """
import http.client, json, sys, threading, time
port, symbols, seconds = int(sys.argv[1]), sys.argv[2].split(","), float(sys.argv[3])
got = []
lock = threading.Lock()
def read(symbol):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=seconds + 30)
    conn.request("GET", f"/api/stream?symbol=NSE:{symbol}&interval=1m&since=2026-11-24")
    answer = conn.getresponse()
    end = time.monotonic() + seconds
    live = False
    kind = b""
    while time.monotonic() < end:
        line = answer.readline()
        if not line:
            break
        if line.startswith(b"event: "):
            kind = line[7:].strip()
            live = live or kind == b"live"
        elif live and kind == b"candle" and line.startswith(b"data: "):
            now = time.monotonic()
            with lock:
                got.append((symbol, json.loads(line[6:])["bucket_ms"], now))
threads = [threading.Thread(target=read, args=(s,), daemon=True) for s in symbols]
for t in threads: t.start()
print("ready", flush=True)
for t in threads: t.join(seconds + 5)
print(json.dumps(got), flush=True)
"""


def stream_latency(seconds: float) -> tuple[list[float], int]:
    import queue

    from pipeline.writer import Writer

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "candles.db"
        store = _TimedStore(path)
        store.stored = {}
        store.migrate()
        reader = SQLiteStore(path, read_only=True)
        hub = CandleHub()
        candles: queue.Queue = queue.Queue()
        writer = Writer(store, Spool(Path(tmp) / "spool"), candles, on_stored=[hub.publish_candles])
        hub.settle = writer.settle
        symbols = [f"S{i}" for i in range(10)]
        server = HttpServer(lambda: None, port=0, api=Api(reader, streaming=lambda: [("NSE", s) for s in symbols]),  # type: ignore[arg-type, return-value]
                            hub=hub)  # fmt: skip
        writer.start()
        server.start()
        client = subprocess.Popen([sys.executable, "-c", CLIENT, str(server.port), ",".join(symbols), str(seconds + 2)],
                                  stdout=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert client.stdout is not None and client.stdout.readline().strip() == "ready"
            time.sleep(1.0)  # the streams open
            start = time.monotonic()
            n = 0
            while time.monotonic() - start < seconds:
                candles.put([_candle(s, DAY + n * MINUTE, n) for s in symbols])
                n += 1
                time.sleep(0.1)
            out, _ = client.communicate(timeout=seconds + 60)
        finally:
            if client.poll() is None:
                client.kill()
            server.stop()
            candles.put(None)
            writer.join(10)
            reader.close()
            store.close()
        got = json.loads(out.strip().splitlines()[-1])
        latencies = [(at - store.stored[(s, b)]) * 1000 for s, b, at in got if (s, b) in store.stored]
        return latencies, n * len(symbols)


# ---- 3. the daemon's CPU with 10 clients -----------------------------------------------------


def _cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        answer.read()
        return answer.status
    finally:
        conn.close()


def daemon_cpu(symbols: int, seconds: float, pairs: int) -> list[tuple[str, float]]:
    from testkit.cli import MAIN, main_env
    from testkit.waiting import free_port

    port = free_port()
    names = [f"SYM{i}" for i in range(symbols)]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "symbols.txt").write_text("".join(f"NSE:{n}\n" for n in names))
        start = (datetime.now(IST) - timedelta(hours=1)).replace(microsecond=0).isoformat()
        proc = subprocess.Popen(
            [sys.executable, MAIN, "--broker", "sim", "--symbols-file", "symbols.txt", "--sim-speed", "60",
             "--sim-start", start, "--intervals", "1m"],
            cwd=tmp, env=main_env(HTTP_PORT=str(port), LOG_LEVEL="WARNING"),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if _get(port, "/healthz") == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"the daemon did not come up: {proc.stderr.read() if proc.stderr else ''}")
                time.sleep(0.2)
            time.sleep(5)  # past the start's spool replay and first candles
            rounds = []
            for label in ("none", "10 clients") * pairs:
                client = None
                if label != "none":
                    client = subprocess.Popen([sys.executable, "-c", CLIENT, str(port), ",".join(names[:10]), str(seconds + 4)],
                                              stdout=subprocess.PIPE, text=True)  # fmt: skip
                    assert client.stdout is not None and client.stdout.readline().strip() == "ready"
                    time.sleep(2)
                before, at = _cpu_of(proc.pid), time.monotonic()
                time.sleep(seconds)
                share = (_cpu_of(proc.pid) - before) / (time.monotonic() - at)
                events = 0
                if client is not None:
                    out, _ = client.communicate(timeout=seconds + 30)
                    events = len(json.loads(out.strip().splitlines()[-1]))
                rounds.append((label, share))
                print(f"  {label:<10}  daemon CPU {share * 100:5.2f}% of a core" + (f"  ({events} live events)" if client else ""),
                      flush=True)  # fmt: skip
            return rounds
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--symbols", type=int, default=100)
    p.add_argument("--pairs", type=int, default=3, help="rounds of (none, 10 clients) for the CPU figure")
    p.add_argument("--no-pg", action="store_true", help="skip PostgreSQL for /api/candles")
    args = p.parse_args()

    print(f"1. /api/candles, one day of 1m candles (375) of one symbol, {args.requests} requests, one keep-alive connection")
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "c.db")
        store.migrate()
        reader = SQLiteStore(Path(tmp) / "c.db", read_only=True)
        try:
            print(f"   SQLite      {_figures(candles_latency(store, reader, args.requests))}", flush=True)
        finally:
            reader.close()
            store.close()
    if not args.no_pg:
        from storage.postgres import PostgresStore
        from testkit.pg import PostgresServer

        server = PostgresServer()
        server.start()
        try:
            dsn = server.create_database(f"http_{uuid.uuid4().hex[:8]}")
            store, reader = PostgresStore(dsn), PostgresStore(dsn, read_only=True)
            try:
                print(f"   PostgreSQL  {_figures(candles_latency(store, reader, args.requests))}", flush=True)
            finally:
                reader.close()
                store.close()
        finally:
            server.cleanup()

    print(f"2. candle stored -> stream client, 10 clients (one process), 10 candles every 100 ms for {args.seconds:g} s")
    latencies, written = stream_latency(args.seconds)
    print(f"   {len(latencies)} events of {written} candles stored: {_figures(latencies)}", flush=True)

    print(f"3. the daemon's CPU, sim {args.symbols} symbols at 60x, SQLite, {args.seconds:g} s each, back to back")
    rounds = daemon_cpu(args.symbols, args.seconds, args.pairs)
    none = statistics.mean(s for label, s in rounds if label == "none")
    ten = statistics.mean(s for label, s in rounds if label != "none")
    steps = [(rounds[i + 1][1] - rounds[i][1]) * 100 for i in range(0, len(rounds) - 1, 2)]
    print(f"   with 10 stream clients {ten * 100:.2f}% vs none {none * 100:.2f}%: {(ten - none) * 100:+.2f}% of a core "
          f"(each pair: {', '.join(f'{d:+.2f}%' for d in steps)})")  # fmt: skip


if __name__ == "__main__":
    main()
