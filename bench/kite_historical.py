"""Kite historical backfill against the fake Kite server and its 3 requests/s limit.

    .venv/bin/python -m bench.kite_historical [--instruments 30] [--threads 4]

Puts one trading day (09:15-15:30 IST, two trades a minute) of N instruments on the fake's tape,
then fetches each instrument's day of minute candles with ``brokers.kite.historical.KiteHistorical``
from several threads sharing one limiter (as every client of one API key does). Prints the
requests per second achieved against the limit, the busiest one-second window the fake saw, the
429s it answered (0 expected), the wall time, and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import queue
import resource
import threading
import time
from datetime import datetime, timedelta
from decimal import Decimal

from kiteconnect import KiteConnect

from brokers.kite.historical import RATE, KiteHistorical, RateLimiter
from core.ist import IST
from core.ticks import Instrument
from testkit.fakes.kite_server import FakeInstrument, KiteFakeServer, TapeTick

DAY = datetime(2024, 1, 15, 9, 15, tzinfo=IST)
MINUTES = 375  # 09:15-15:30


def day_tape(instruments: list[FakeInstrument]) -> list[TapeTick]:
    start = int(DAY.timestamp())
    ticks = []
    for n, inst in enumerate(instruments):
        price, volume = Decimal(100 + n), 0
        for minute in range(MINUTES):
            for second, step in ((10, Decimal("0.05")), (40, Decimal("-0.10"))):
                price = max(Decimal("1.00"), price + step * (1 if (minute + n) % 3 else -1))
                volume += 10 + minute % 7
                ticks.append(TapeTick(inst.token, price, 10, volume, start + minute * 60 + second))
    return ticks


def busiest_second(times: list[float]) -> int:
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instruments", type=int, default=30)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args(argv)
    instruments = [FakeInstrument(((1000 + i) << 8) | 1, "NSE", f"SYM{i}") for i in range(args.instruments)]
    with KiteFakeServer(instruments=instruments) as server:
        server.send_ticks(day_tape(instruments))
        limiter = RateLimiter()
        todo: queue.Queue[FakeInstrument] = queue.Queue()
        for inst in instruments:
            todo.put(inst)
        counts: dict[str, int] = {}

        def work() -> None:
            kite = KiteConnect(server.api_key, access_token=server.access_token, root=server.api_url)
            hist = KiteHistorical(kite, limiter=limiter)
            while True:
                try:
                    inst = todo.get_nowait()
                except queue.Empty:
                    return
                got = hist.minute_candles(Instrument("NSE", inst.tradingsymbol, inst.token), DAY, DAY + timedelta(days=1))
                counts[inst.tradingsymbol] = len(got)

        started = time.perf_counter()
        threads = [threading.Thread(target=work) for _ in range(args.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
        reqs = server.historical_requests
        at = [r.at for r in reqs]
        span = max(at) - min(at) if len(at) > 1 else 0.0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    complete = sum(1 for n in counts.values() if n == MINUTES)
    print(f"instruments: {args.instruments} x 1 day of minutes, {args.threads} threads, limit {RATE} requests/s")
    print(f"requests: {len(reqs)} ({sum(r.status == 429 for r in reqs)} answered 429), candles complete for {complete}")
    steady = (len(reqs) - 1) / span if span else 0.0
    print(f"wall: {wall:.2f} s; requests/s: {len(reqs) / wall:.2f} over the wall, {steady:.2f} first to last")
    print(f"busiest one-second window at the fake: {busiest_second(at)} requests")
    print(f"peak RSS: {rss_mb:.1f} MB")
    return 0 if complete == args.instruments else 1


if __name__ == "__main__":
    raise SystemExit(main())
