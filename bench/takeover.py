"""Hot-standby takeover: seconds from the leader's death to the first candle the new leader writes,
and candles lost or written in a second version across it.

    .venv/bin/python -m bench.takeover [--rounds 2] [--ttl 4] [--death kill,stop]

Two daemons (``HA=true``, 1m candles) stream live ticks from the Kite fake (every second, stamped
with the wall clock) into a throwaway PostgreSQL. Each round waits for a minute boundary and
"kills" the leader half a second after it, before the bucket that just ended closes (end + 2 s
grace): that bucket is the standby's to write once it has the lease. Two kinds of death:

- ``kill``: SIGKILL, a process that dies (a crash, the OOM killer): its connections close, so
  its lease session ends and the standby takes over at its next look (every 0.5 s);
- ``stop``: SIGSTOP, standing for a host that dies or is cut off: its connections stay open, so
  only the lease's expiry (2/3 to 1 TTL after the death: renewed every TTL/3) frees it.

The figure is the time from the signal to the first row the new leader writes
(``candles.updated_at`` after it, by the database's clock, polled every 20 ms). The dead daemon is
then SIGKILLed (a stopped one too) and started again as the standby; the next round waits until
it has watched a whole bucket. At the end every stored candle is compared with the reference built
from every tick sent: lost (in the reference, not stored), differing (stored in a version other
than the reference's: one daemon's over the other's) and extra.

Goal: at most 5 s to the first candle, 0 lost, 0 differing. The default TTL (4 s) is the
daemon's.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psycopg2

from candles.model import parse_intervals
from testkit.fakes.kite_server import DEFAULT_INSTRUMENTS, KiteFakeServer, arrivals, random_tape
from testkit.ha_pair import HaDaemon, lease, stored
from testkit.pg import PostgresServer
from testkit.reference import reference_candles
from testkit.waiting import wait_until

INTERVALS = parse_intervals("1m")


class Feeder(threading.Thread):
    """Sends the tape's ticks as the wall clock reaches their exchange second."""

    def __init__(self, server: KiteFakeServer, tape: list) -> None:
        super().__init__(name="feeder", daemon=True)
        self.server, self.tape, self.sent = server, tape, []
        self.done = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.done.is_set() and i < len(self.tape):
            now = time.time()
            j = i
            while j < len(self.tape) and self.tape[j].exchange_ts <= now:
                j += 1
            if j > i:
                self.server.send_ticks(self.tape[i:j])
                self.sent += self.tape[i:j]
                i = j
            time.sleep(0.1)


def first_write_after(dsn: str, since: str, timeout: float) -> float:
    """Monotonic time the first candle row written after ``since`` (the database's clock) appeared."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        deadline = time.monotonic() + timeout
        with conn.cursor() as cur:
            while time.monotonic() < deadline:
                cur.execute("SELECT count(*) FROM candles WHERE updated_at > %s", (since,))
                if cur.fetchone()[0]:
                    return time.monotonic()
                time.sleep(0.02)
    finally:
        conn.close()
    raise AssertionError(f"no candle written within {timeout} s of the kill")


def db_now(dsn: str) -> str:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT now()::text")
            return cur.fetchone()[0]
    finally:
        conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--ttl", type=float, default=4.0, help="HA_LEASE_TTL_SECONDS (the daemon's default: 4)")
    ap.add_argument("--death", default="kill,stop", help="kinds of death, taken in turn each round: kill, stop")
    args = ap.parse_args()
    deaths = [d.strip() for d in args.death.split(",") if d.strip()]
    if not deaths or set(deaths) - {"kill", "stop"}:
        ap.error("--death takes kill, stop or both (kill,stop)")

    stocks = [i for i in DEFAULT_INSTRUMENTS if f"{i.exchange}:{i.tradingsymbol}" in ("NSE:INFY", "NSE:RELIANCE")]
    with PostgresServer() as pg, KiteFakeServer(heartbeat_interval=0.5) as server, tempfile.TemporaryDirectory() as tmp:
        dsn = pg.create_database("takeover")
        root = Path(tmp)
        daemons = {n: HaDaemon(root, n, server, dsn, args.ttl) for n in ("a", "b")}
        daemons["a"].start()
        wait_until(lambda: lease(dsn) is not None, 60, "a leader")
        daemons["b"].start()
        time.sleep(5)  # b logged in and subscribed
        rounds = [(r, death) for r in range(args.rounds) for death in deaths]
        minutes = 2 + 2 * len(rounds)
        feeder = Feeder(server, random_tape(stocks, seconds=60 * minutes + 60, seed=9, start_epoch=int(time.time()) + 1))
        feeder.start()
        started = {n: time.time() for n in daemons}
        results: dict[str, list[float]] = {d: [] for d in deaths}
        try:
            for r, death in rounds:
                held = lease(dsn)
                assert held is not None, "no leader"
                leader = daemons[held[0]]
                standby = daemons["b" if leader.node == "a" else "a"]
                boundary = (int(max(time.time(), started[standby.node] + 65)) // 60 + 1) * 60  # standby watched it all
                time.sleep(max(0.0, boundary + 0.5 - time.time()))
                since = db_now(dsn)
                killed = time.monotonic()
                leader.signal(signal.SIGKILL if death == "kill" else signal.SIGSTOP)
                first = first_write_after(dsn, since, args.ttl * 3 + 10)
                took = first - killed
                now_held = lease(dsn)
                results[death].append(took)
                print(f"round {r + 1}: {leader.node} {'killed' if death == 'kill' else 'stopped'}; {now_held} leads; "
                      f"first candle after {took:.2f} s", flush=True)  # fmt: skip
                leader.signal(signal.SIGKILL)
                leader.wait()
                leader.start()  # back as the standby
                started[leader.node] = time.time()
            time.sleep(3)
        finally:
            feeder.done.set()
            feeder.join(5)
            for d in daemons.values():
                if d.proc is not None and d.proc.poll() is None:
                    d.signal(signal.SIGTERM)
            for d in daemons.values():
                if d.proc is not None:
                    d.wait(30)
        got = stored(dsn, INTERVALS)
        want = reference_candles(arrivals(feeder.sent), INTERVALS)
        lost = [k for k in want if k not in got]
        differing = [k for k in want if k in got and got[k] != want[k]]
        extra = [k for k in got if k not in want]
        for death, took in results.items():
            what = "SIGKILL (the process dies)" if death == "kill" else "SIGSTOP (the host dies or is cut off)"
            print(f"takeover to first candle after {what}: median {statistics.median(took):.2f} s, "
                  f"worst {max(took):.2f} s (TTL {args.ttl:g} s, {len(took)} rounds; goal <= 5 s)")  # fmt: skip
        print(f"candles: {len(want)} expected, {len(lost)} lost, {len(differing)} differing, {len(extra)} extra (goal 0)")
        for k in (lost + differing + extra)[:10]:
            print("  ", k, got.get(k), want.get(k))


if __name__ == "__main__":
    main()
