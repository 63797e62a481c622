"""Kite's instruments dump at full size: seconds and memory of parsing it into symbols and contracts.

    .venv/bin/python -m bench.kite_dump [--stocks 200] [--strikes 40]

Builds a synthetic dump of about 100k rows with the fake server's generator (the five real
underlyings and ``--stocks`` made-up stocks, futures and options ``--strikes`` either side, plus the
stocks' own rows), then times each step of ``KiteInstruments`` on it: pykiteconnect's CSV parsing
(``KiteConnect._parse_instruments``, what ``instruments()`` does with the body), our typing of the
rows into symbols and contracts, writing the day's cache, and reading it back on the next start.
Seconds are the best of ``--repeat`` runs without tracing; memory is a second, traced run
(tracemalloc's peak for the step, and what stays allocated after it), plus the process's peak RSS.
"""

from __future__ import annotations

import argparse
import gc
import resource
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

from kiteconnect import KiteConnect

from brokers.kite.instruments import KiteInstruments
from config.universe import parse_entry
from core.contracts import Contract
from core.universe import UniverseSpec, resolve_universe
from testkit.fakes.kite_server import (
    TUE,
    DerivativeSpec,
    FakeInstrument,
    KiteFakeServer,
    derivative_instruments,
    derivatives_dump,
)

TODAY = date(2026, 11, 24)
CLOCK = 1_795_491_900.0  # 2026-11-24 09:15 IST


def synthetic_dump(stocks: int, strikes: int) -> bytes:
    specs = [
        DerivativeSpec(f"STOCK{n:03d}", "NFO", 2, 1_000 + 20 * n, 10, 250 + 25 * (n % 20), TUE, weekly=False) for n in range(stocks)
    ]
    rows = [
        *derivatives_dump(TODAY, strikes_each_side=strikes),
        *(FakeInstrument(((9_000 + n) << 8) | 1, "NSE", s.name, name=s.name) for n, s in enumerate(specs)),
        *derivative_instruments(TODAY, strikes, specs),
    ]
    server = KiteFakeServer(instruments=rows)  # not started: only its CSV writer is used
    return server.instruments_csv().encode()


#: the underlyings' prices the universes are resolved at (the fake's base prices, off a strike)
PRICES = {"NIFTY": Decimal("25012.4"), "BANKNIFTY": Decimal("56030"), "SENSEX": Decimal("82040"), "RELIANCE": Decimal("1403"),
          "CRUDEOIL": Decimal("5512")}  # fmt: skip


def universe_specs(stocks: int) -> list[UniverseSpec]:
    """About 2,000 contracts: index weeklies and monthlies ATM±40, futures, and 40 stocks' monthlies ATM±10."""
    entries = [
        "NFO:NIFTY OPT weekly ATM±40", "NFO:NIFTY OPT next-weekly ATM±40", "NFO:NIFTY OPT monthly ATM±40",
        "NFO:BANKNIFTY OPT monthly ATM±40", "BFO:SENSEX OPT weekly ATM±40", "BFO:SENSEX OPT next-weekly ATM±40",
        "MCX:CRUDEOIL OPT monthly ATM±20", "NFO:NIFTY FUT near,next,far", "NFO:BANKNIFTY FUT near,next",
        "BFO:SENSEX FUT near", "MCX:CRUDEOIL FUT near,next", "NFO:RELIANCE OPT monthly ATM±10",
        *(f"NFO:STOCK{n:03d} OPT monthly ATM±10" for n in range(min(stocks, 40))),
        *(f"NFO:STOCK{n:03d} FUT near" for n in range(min(stocks, 40))),
    ]  # fmt: skip
    out = [parse_entry(e) for e in entries]
    assert all(isinstance(e, UniverseSpec) for e in out)
    return out  # type: ignore[return-value]


def _stock_price(spec: UniverseSpec) -> Decimal:
    n = int(spec.underlying[5:])
    return Decimal(1_000 + 20 * n + 3)


class _Stub:
    """``KiteConnect.instruments()`` without the network: the same parsing of the same bytes."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self._kc = KiteConnect("bench")

    def instruments(self, exchange: str | None = None) -> list[dict[str, Any]]:
        return self._kc._parse_instruments(self._body)


def timed(fn: Callable[[], Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def traced(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, peak MB during fn, MB still allocated after fn with its result alive)."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    result = fn()
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, (peak - base) / 1e6, (current - base) / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stocks", type=int, default=200)
    parser.add_argument("--strikes", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    body = synthetic_dump(args.stocks, args.strikes)
    stub = _Stub(body)
    raw = stub.instruments()
    print(f"dump: {len(raw):,} rows, {len(body) / 1e6:.1f} MB of CSV")
    del raw

    with tempfile.TemporaryDirectory() as tmp:

        def download_and_parse() -> KiteInstruments:
            for old in Path(tmp).glob("*"):
                old.unlink()
            table = KiteInstruments(stub, tmp, clock=lambda: CLOCK)
            table.load()
            return table

        def from_cache() -> KiteInstruments:
            table = KiteInstruments(None, tmp, clock=lambda: CLOCK)
            table.load()
            return table

        steps: list[tuple[str, Callable[[], Any]]] = [
            ("pykiteconnect _parse_instruments", stub.instruments),
            ("download path: parse + type + validate + write cache", download_and_parse),
            ("next start: read the cache", from_cache),
        ]
        for label, fn in steps:
            seconds = timed(fn, args.repeat)
            result, peak, kept = traced(fn)
            extra = ""
            if isinstance(result, KiteInstruments):
                extra = f"  ({len(result.load()):,} symbols, {len(result.contracts()):,} contracts)"
            print(f"{label:<55} {seconds:6.2f} s  peak {peak:6.1f} MB  kept {kept:6.1f} MB{extra}")
            del result
        contracts = from_cache().contracts()
        specs = universe_specs(args.stocks)

        def resolve_all() -> list[Contract]:
            out: list[Contract] = []
            for spec in specs:
                out += resolve_universe(spec, contracts, PRICES.get(spec.underlying, Decimal(0)) or _stock_price(spec), TODAY)
            return out

        seconds = timed(resolve_all, args.repeat)
        resolved, peak, kept = traced(resolve_all)
        label = f"resolve {len(specs)} universe entries"
        print(f"{label:<55} {seconds:6.2f} s  peak {peak:6.1f} MB  kept {kept:6.1f} MB  ({len(resolved):,} contracts)")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"process peak RSS {rss:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
