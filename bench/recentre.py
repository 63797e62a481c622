"""Time from an underlying's move to the first ticks of the strikes it brings into an option universe.

    .venv/bin/python -m bench.recentre [--moves 10] [--width 10]

Runs the daemon as a process (``--broker kite``) against the fake Kite server with a realistic dump
(NIFTY weekly options 40 strikes either side), watching ``NFO:NIFTY OPT weekly ATM±WIDTH``. The fake's
index then moves two strikes at a time, ``--moves`` times, a second apart. For each move the clock
runs from just before the index's tick leaves the fake to the moment the fake sends the first packet
of every strike the move brought in (the daemon reads the index tick, re-centres, subscribes on its
live connection, and the fake answers the subscription with the contract's snapshot, as Kite does).
Loopback adds well under a millisecond to the daemon's receipt of that packet.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import tempfile
import time
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from core.ist import IST
from testkit.cli import kite_env, start_main
from testkit.fakes.kite_server import KiteFakeServer, derivatives_dump
from testkit.fakes.market import MovingUnderlying


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--moves", type=int, default=10)
    parser.add_argument("--width", type=int, default=10)
    args = parser.parse_args(argv)

    dump = derivatives_dump(datetime.now(IST).date(), strikes_each_side=40)
    index = next(i for i in dump if (i.exchange, i.tradingsymbol) == ("NSE", "NIFTY 50"))
    chain = [i for i in dump if i.name == "NIFTY" and i.instrument_type in ("CE", "PE")]
    weekly = min(i.expiry for i in chain)
    by_strike: dict[int, list[int]] = {}
    for i in chain:
        if i.expiry == weekly:
            by_strike.setdefault(int(Decimal(i.strike)), []).append(i.token)
    entry = f"NFO:NIFTY OPT weekly ATM±{args.width}"
    latencies: list[float] = []
    with KiteFakeServer(instruments=dump, heartbeat_interval=0.5) as server, tempfile.TemporaryDirectory() as tmp:
        market = MovingUnderlying(server, index, "NIFTY", dump, Decimal("24510"))
        market.move("24510")
        env = kite_env(server, BACKFILL="false", LOG_LEVEL="WARNING")
        proc = start_main("--broker", "kite", "--symbols", entry, cwd=Path(tmp), env=env)
        try:
            first = by_strike[24500 + 50 * args.width]
            deadline = time.monotonic() + 60
            while not all(t in server.first_sent for t in first):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"the daemon did not subscribe its first strikes: {proc.communicate()[1][-2000:]}")
                time.sleep(0.05)
            centre = 24500
            for _ in range(args.moves):
                time.sleep(1.0)
                centre += 100  # two strikes: past the hysteresis margin by far
                new = [t for k in (1, 2) for t in by_strike[centre + 50 * (args.width - 2 + k)]]
                sent_at = market.move(Decimal(centre) + Decimal("4"))
                deadline = time.monotonic() + 10
                while not all(t in server.first_sent for t in new):
                    if time.monotonic() > deadline:
                        raise SystemExit(f"strikes around {centre} never came: {proc.communicate()[1][-2000:]}")
                    time.sleep(0.001)
                latencies.append(max(server.first_sent[t] for t in new) - sent_at)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)
    ms = sorted(x * 1000 for x in latencies)
    print(f"{entry}: {len(ms)} moves of two strikes; move -> first ticks of the new strikes")
    print(f"median {statistics.median(ms):.1f} ms, max {ms[-1]:.1f} ms, min {ms[0]:.1f} ms (goal: under 2000 ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
