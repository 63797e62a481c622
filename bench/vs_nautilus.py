"""Candle aggregation side by side with NautilusTrader's Cython ``TimeBarAggregator``.

    .venv/bin/python -m bench.vs_nautilus [--minutes 7] [--symbols 9000] [--repeat 3]

The same trades for both: the simulator (seed 1) runs ``--minutes`` for ``--symbols`` instruments
and its trades (ticks whose cumulative volume rose; quote-only updates are left out, Nautilus has
no such tick) are written once to ``build/vs_nautilus/`` as columns of raw fields: instrument,
exchange second, price in paise, traded size, cumulative volume. 7 minutes of 9,000 instruments
are about 2.7M trades. Every side reads that file and aggregates it into 1m, 5m and 15m candles:

* marketfeed compiled (``CandleAggregator`` with the build of ``candles/_speedups.pyx``; run
  ``scripts/build_ext.py`` first),
* marketfeed pure Python (the same, with ``MARKETFEED_PURE_PYTHON=1``),
* NautilusTrader 1.221.0: one ``TimeBarAggregator`` per instrument and interval (right-open
  intervals, no bars without trades), all on one ``TestClock``, fed with ``handle_trade_tick``.

nautilus_trader is not a project dependency: it lives in its own virtual environment,
``build/nautilus-venv`` (git-ignored, no system site packages), created by this script on first
use with ``pip install nautilus_trader==1.221.0``. Each side runs in a process of its own, one
run per side in turn, ``--repeat`` rounds, so the machine's drift hits all three alike; the
figures are the medians, of wall-clock rates and of rates per CPU second of the process (less
swayed by other processes on a shared machine).

Two measures per run, each ticks/s:

* aggregation alone: the tick objects are built beforehand (marketfeed: ``TickData`` as the
  decoders build them, one shared datetime per exchange second and one ``Decimal`` per price;
  Nautilus: ``TradeTick``), then timed: marketfeed ``add`` per second of ticks and ``advance``
  with a clock one second behind the data (as ``bench/aggregator.py``); Nautilus
  ``TestClock.advance_time`` to each second and the due timer events handled (bars close), then
  each trade handed to its instrument's three aggregators;
* with tick construction: the same, building each second's tick objects from the raw fields
  inside the timed loop (marketfeed: the decoders' ``new_tick`` with their price and time caches;
  Nautilus: ``TradeTick.from_raw`` with a ``TradeId`` from the trade's sequence number, as an
  adapter does with a numeric venue trade id).

Both timed loops end by moving the clock past the last 15m close, so every candle is emitted;
the candle counts and checksums (sum of closes, of volumes) are printed per interval to show the
work is the same. Marketfeed takes a symbol's first cumulative volume as its baseline (the day's
volume before it is unknown), so its volume sum is short of Nautilus's by the first trades' sizes,
which the check accounts for. Both sides run with the daemon's collector settings
(``ops.gc_tuning``), applied once the ticks are built.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from array import array
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAUTILUS_VERSION = "1.221.0"
NAUTILUS_VENV = ROOT / "build" / "nautilus-venv"
DATA_DIR = ROOT / "build" / "vs_nautilus"
START = 1_795_491_900  # 2026-11-24 09:15 IST
INTERVALS = ((60, "1m"), (300, "5m"), (900, "15m"))
COLUMNS = (("symbol", "I"), ("second", "q"), ("price", "q"), ("size", "q"), ("volume", "q"))
PAISE_EXPONENT = -2


# ---- the tick file ------------------------------------------------------------------------------
def generate(path: Path, symbols: int, minutes: float) -> int:
    """Write the simulator's trades (seed 1) as raw columns; returns their count. Deterministic:
    the same arguments give the same bytes."""
    from brokers.sim.client import SimBroker, SimClock
    from core.ticks import Instrument

    broker = SimBroker(SimClock(START), seed=1)
    broker.subscribe([Instrument("NSE", f"SYM{i:05d}") for i in range(symbols)])
    index = {f"SYM{i:05d}": i for i in range(symbols)}
    cols = {name: array(code) for name, code in COLUMNS}
    last_volume: dict[int, int] = {}
    for second in range(1, int(minutes * 60) + 1):
        for t in broker.due_ticks(START + second):
            sym = index[t.symbol]
            before = last_volume.get(sym)
            if t.volume is None or (before is not None and t.volume <= before):
                continue  # a quote-only update: no trade
            size = t.volume - before if before is not None else t.last_quantity
            last_volume[sym] = t.volume
            cols["symbol"].append(sym)
            cols["second"].append(int(t.exchange_ts.timestamp()))  # whole seconds, as the feeds give them
            cols["price"].append(int(t.last_price.scaleb(-PAISE_EXPONENT)))
            cols["size"].append(size)
            cols["volume"].append(t.volume)
    count = len(cols["symbol"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        f.write((json.dumps({"symbols": symbols, "count": count}) + "\n").encode())
        for name, _ in COLUMNS:
            cols[name].tofile(f)
    tmp.replace(path)
    return count


def read_ticks(path: Path) -> tuple[int, dict[str, list[int]]]:
    """(number of symbols, raw columns as lists of ints) from a file ``generate`` wrote."""
    with path.open("rb") as f:
        header = json.loads(f.readline())
        cols = {}
        for name, code in COLUMNS:
            col = array(code)
            col.fromfile(f, header["count"])
            cols[name] = col.tolist()
    return header["symbols"], cols


def seconds_of(cols: dict[str, list[int]]) -> list[tuple[int, int, int]]:
    """(exchange second, first index, end index) of each run of trades of one second, in order."""
    out = []
    secs = cols["second"]
    lo = 0
    for i in range(1, len(secs) + 1):
        if i == len(secs) or secs[i] != secs[lo]:
            out.append((secs[lo], lo, i))
            lo = i
    return out


def final_close(cols: dict[str, list[int]]) -> int:
    """A time past the close (and marketfeed's 2 s grace) of every bucket the trades touch."""
    last = cols["second"][-1]
    return last - last % 900 + 900 + 5


def first_sizes(cols: dict[str, list[int]]) -> int:
    """Sum of each symbol's first trade size (what marketfeed's volume baseline leaves out)."""
    seen: set[int] = set()
    total = 0
    for sym, size in zip(cols["symbol"], cols["size"], strict=True):
        if sym not in seen:
            seen.add(sym)
            total += size
    return total


def digest(rows: list[tuple]) -> str:
    """SHA-256 of the candles as (instrument, interval, bucket start, open, high, low, close), sorted:
    equal on both sides iff every candle has the same bucket and prices."""
    return hashlib.sha256(repr(sorted(rows)).encode()).hexdigest()[:16]


# ---- marketfeed ---------------------------------------------------------------------------------
def run_marketfeed(path: Path) -> dict:
    """One run of both measures through ``CandleAggregator`` (compiled unless MARKETFEED_PURE_PYTHON=1)."""
    from brokers.codec import PriceCache, TimeCache
    from candles.aggregator import CandleAggregator
    from candles.model import parse_intervals
    from core.fastnew import new_tick
    from ops.gc_tuning import tune_for_streaming

    nsym, cols = read_ticks(path)
    groups = seconds_of(cols)
    end = final_close(cols)
    names = [f"SYM{i:05d}" for i in range(nsym)]
    intervals = parse_intervals(",".join(name for _, name in INTERVALS))
    sym_col, price_col, size_col, vol_col = cols["symbol"], cols["price"], cols["size"], cols["volume"]

    def build(lo: int, hi: int, exchange_ts, receive_ts, prices) -> list:  # noqa: ANN001 - local
        return [
            new_tick("sim", "NSE", names[s], s + 1, prices[p], q, v, None, exchange_ts, receive_ts, None)
            for s, p, q, v in zip(sym_col[lo:hi], price_col[lo:hi], size_col[lo:hi], vol_col[lo:hi], strict=True)
        ]

    def aggregate(batches) -> tuple[float, float, float, list]:  # noqa: ANN001 - local
        """(seconds, CPU seconds, seconds in ``advance``, candles) of a fresh aggregator over ``batches``:
        (clock, ticks or a builder)."""
        now = [float(START)]
        agg = CandleAggregator(intervals, lambda: now[0])
        candles = []
        closing = 0.0
        t0, c0 = time.perf_counter(), time.process_time()
        for clock, ticks in batches:
            now[0] = clock
            candles += agg.add(ticks() if callable(ticks) else ticks)
            t1 = time.perf_counter()
            candles += agg.advance()
            closing += time.perf_counter() - t1
        now[0] = end
        candles += agg.advance()
        return time.perf_counter() - t0, time.process_time() - c0, closing, candles

    # aggregation alone: ticks built first
    times, prices = TimeCache(), PriceCache(PAISE_EXPONENT)
    built = [(sec + 1, build(lo, hi, times[sec], times[sec + 1], prices)) for sec, lo, hi in groups]
    tune_for_streaming()
    agg_s, agg_cpu, close_s, candles = aggregate(built)
    del built

    # with construction: each second's ticks built in the timed loop, fresh caches
    times, prices = TimeCache(), PriceCache(PAISE_EXPONENT)
    lazy = [(sec + 1, lambda lo=lo, hi=hi, sec=sec: build(lo, hi, times[sec], times[sec + 1], prices)) for sec, lo, hi in groups]
    with_build_s, with_build_cpu, _, candles2 = aggregate(lazy)
    assert len(candles2) == len(candles)

    summary = {name: [0, 0, 0] for _, name in INTERVALS}  # count, sum of closes (paise), sum of volumes
    rows = []
    for c in candles:
        s = summary[c.interval]
        s[0] += 1
        s[1] += int(c.close.scaleb(-PAISE_EXPONENT))
        s[2] += c.volume
        ohlc = (int(p.scaleb(-PAISE_EXPONENT)) for p in (c.open, c.high, c.low, c.close))
        rows.append((int(c.symbol[3:]), c.interval, int(c.bucket.timestamp()), *ohlc))
    return {
        "side": "marketfeed",
        "compiled": CandleAggregator.compiled,
        "ticks": len(sym_col),
        "agg_s": agg_s,
        "close_s": close_s,
        "with_build_s": with_build_s,
        "agg_cpu": agg_cpu,
        "with_build_cpu": with_build_cpu,
        "candles": summary,
        "digest": digest(rows),
    }


# ---- NautilusTrader (runs in build/nautilus-venv) -------------------------------------------------
def run_nautilus(path: Path) -> dict:
    """One run of both measures through Nautilus ``TimeBarAggregator``s on a ``TestClock``."""
    from nautilus_trader.common.component import TestClock
    from nautilus_trader.data.aggregation import TimeBarAggregator
    from nautilus_trader.model.currencies import INR
    from nautilus_trader.model.data import BarSpecification, BarType, TradeTick
    from nautilus_trader.model.enums import AggregationSource, AggressorSide, BarAggregation, PriceType
    from nautilus_trader.model.identifiers import InstrumentId, Symbol, TradeId, Venue
    from nautilus_trader.model.instruments import Equity
    from nautilus_trader.model.objects import FIXED_PRECISION, Price, Quantity

    from ops.gc_tuning import tune_for_streaming

    nsym, cols = read_ticks(path)
    groups = seconds_of(cols)
    end = final_close(cols)
    ns = 1_000_000_000
    price_scale = 10 ** (FIXED_PRECISION + PAISE_EXPONENT)
    size_scale = 10**FIXED_PRECISION
    venue = Venue("NSE")
    instruments = [
        Equity(
            instrument_id=InstrumentId(Symbol(f"SYM{i:05d}"), venue),
            raw_symbol=Symbol(f"SYM{i:05d}"),
            currency=INR,
            price_precision=2,
            price_increment=Price.from_str("0.05"),
            lot_size=Quantity.from_int(1),
            ts_event=0,
            ts_init=0,
        )
        for i in range(nsym)
    ]
    ids = [inst.id for inst in instruments]
    sym_col, price_col, size_col = cols["symbol"], cols["price"], cols["size"]
    no_side = AggressorSide.NO_AGGRESSOR

    def build(lo: int, hi: int, ts_event: int, ts_init: int) -> list:
        return [
            TradeTick.from_raw(ids[s], p * price_scale, 2, q * size_scale, 0, no_side, TradeId(str(i)), ts_event, ts_init)
            for i, s, p, q in zip(range(lo, hi), sym_col[lo:hi], price_col[lo:hi], size_col[lo:hi], strict=True)
        ]

    def aggregate(batches) -> tuple[float, float, float, list]:  # noqa: ANN001 - local
        """(seconds, CPU seconds, seconds advancing the clock and closing bars, bars) of fresh aggregators over
        ``batches``: (exchange second, lo, hi, ticks or a builder)."""
        clock = TestClock()
        clock.set_time(START * ns)
        bars: list = []
        routes = []  # per instrument: the handle_trade_tick of its three aggregators
        for inst in instruments:
            handlers = []
            for seconds, _ in INTERVALS:
                spec = BarSpecification(seconds // 60, BarAggregation.MINUTE, PriceType.LAST)
                agg = TimeBarAggregator(
                    inst,
                    BarType(inst.id, spec, AggregationSource.INTERNAL),
                    bars.append,
                    clock,
                    interval_type="right-open",  # [start, end), as marketfeed's buckets
                    build_with_no_updates=False,  # as marketfeed: no candle without a trade
                )
                handlers.append(agg.handle_trade_tick)
            routes.append(tuple(handlers))
        closing = 0.0
        t0, c0 = time.perf_counter(), time.process_time()
        for sec, lo, hi, ticks in batches:
            t1 = time.perf_counter()
            for event in clock.advance_time(sec * ns):  # bars ending at or before this second close first
                event.handle()
            closing += time.perf_counter() - t1
            for s, tick in zip(sym_col[lo:hi], ticks() if callable(ticks) else ticks, strict=True):
                h1, h2, h3 = routes[s]
                h1(tick)
                h2(tick)
                h3(tick)
        for event in clock.advance_time(end * ns):
            event.handle()
        return time.perf_counter() - t0, time.process_time() - c0, closing, bars

    built = [(sec, lo, hi, build(lo, hi, sec * ns, (sec + 1) * ns)) for sec, lo, hi in groups]
    tune_for_streaming()
    agg_s, agg_cpu, close_s, bars = aggregate(built)
    del built
    lazy = [(sec, lo, hi, lambda lo=lo, hi=hi, sec=sec: build(lo, hi, sec * ns, (sec + 1) * ns)) for sec, lo, hi in groups]
    with_build_s, with_build_cpu, _, bars2 = aggregate(lazy)
    assert len(bars2) == len(bars)

    summary = {name: [0, 0, 0] for _, name in INTERVALS}
    by_step = {seconds // 60: name for seconds, name in INTERVALS}
    rows = []
    for bar in bars:
        interval = by_step[bar.bar_type.spec.step]
        s = summary[interval]
        s[0] += 1
        s[1] += bar.close.raw // price_scale
        s[2] += bar.volume.raw // size_scale
        ohlc = (p.raw // price_scale for p in (bar.open, bar.high, bar.low, bar.close))
        symbol = bar.bar_type.instrument_id.symbol.value
        rows.append((int(symbol[3:]), interval, bar.ts_event // ns, *ohlc))  # right-open: ts_event is the open
    return {
        "side": "nautilus",
        "compiled": True,
        "ticks": len(sym_col),
        "agg_s": agg_s,
        "close_s": close_s,
        "with_build_s": with_build_s,
        "agg_cpu": agg_cpu,
        "with_build_cpu": with_build_cpu,
        "candles": summary,
        "digest": digest(rows),
    }


# ---- the parent -------------------------------------------------------------------------------------
def ensure_nautilus() -> Path:
    """The Python of build/nautilus-venv, created with nautilus_trader on first use."""
    python = NAUTILUS_VENV / "bin" / "python"
    check = [str(python), "-c", f"import nautilus_trader as n; assert n.__version__ == {NAUTILUS_VERSION!r}"]
    if not python.exists() or subprocess.run(check, capture_output=True).returncode:
        print(f"creating {NAUTILUS_VENV.relative_to(ROOT)} with nautilus_trader=={NAUTILUS_VERSION} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(NAUTILUS_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"nautilus_trader=={NAUTILUS_VERSION}"], check=True)
    return python


def run_side(python: str, side: str, path: Path, pure: bool = False) -> dict:
    env = dict(os.environ)
    env.pop("MARKETFEED_PURE_PYTHON", None)
    if pure:
        env["MARKETFEED_PURE_PYTHON"] = "1"
    cmd = [python, "-m", "bench.vs_nautilus", "--side", side, "--ticks", str(path)]
    out = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--symbols", type=int, default=9000)
    ap.add_argument("--minutes", type=float, default=7)
    ap.add_argument("--repeat", type=int, default=3, help="rounds, one run of each side per round (medians reported)")
    ap.add_argument("--side", choices=("marketfeed", "nautilus"), help=argparse.SUPPRESS)  # a child's run
    ap.add_argument("--ticks", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        result = run_marketfeed(args.ticks) if args.side == "marketfeed" else run_nautilus(args.ticks)
        print(json.dumps(result))
        return

    nautilus_python = ensure_nautilus()
    path = DATA_DIR / f"ticks-{args.symbols}-{args.minutes:g}m.bin"
    if not path.exists():
        generate(path, args.symbols, args.minutes)
    nsym, cols = read_ticks(path)
    missing_volume = first_sizes(cols)
    print(
        f"trades={len(cols['symbol']):,} instruments={nsym:,} seconds={len(seconds_of(cols))} "
        f"intervals=1m,5m,15m file={path.relative_to(ROOT)}"
    )
    del cols

    sides = {
        "compiled": (sys.executable, "marketfeed", False),
        "pure": (sys.executable, "marketfeed", True),
        "nautilus": (str(nautilus_python), "nautilus", False),
    }
    results: dict[str, list[dict]] = {name: [] for name in sides}
    for rnd in range(args.repeat):
        for name, (python, side, pure) in sides.items():
            r = run_side(python, side, path, pure)
            if name != "nautilus" and r["compiled"] != (name == "compiled"):
                sys.exit(f"{name}: CandleAggregator.compiled is {r['compiled']} (build with scripts/build_ext.py)")
            results[name].append(r)
            n = r["ticks"]
            print(
                f"round {rnd + 1} {name:9s} aggregation {n / r['agg_s']:>10,.0f} ticks/s ({r['agg_s']:5.2f} s,"
                f" closing {r['close_s']:4.2f} s; {n / r['agg_cpu']:,.0f} per CPU s)"
                f"   with construction {n / r['with_build_s']:>10,.0f} ticks/s ({r['with_build_s']:5.2f} s;"
                f" {n / r['with_build_cpu']:,.0f} per CPU s)",
                flush=True,
            )

    print("candles per interval: count, sum of closes (paise), sum of volumes")
    for name, runs in results.items():
        print(f"  {name:9s} " + "  ".join(f"{iv} {c[0]:,} {c[1]:,} {c[2]:,}" for iv, c in runs[0]["candles"].items()))
    mf, na = results["compiled"][0]["candles"], results["nautilus"][0]["candles"]
    for name, runs in results.items():
        print(f"  {name:9s} digest of (instrument, interval, bucket, open, high, low, close): {runs[0]['digest']}")
    same = len({r["digest"] for runs in results.values() for r in runs}) == 1 and all(
        mf[iv][:2] == na[iv][:2] and na[iv][2] - mf[iv][2] == missing_volume and results["pure"][0]["candles"][iv] == mf[iv]
        for _, iv in INTERVALS
    )
    verdict = "the same" if same else "DIFFERENT"
    print(
        f"  candles: {verdict} on all sides and runs (Nautilus volume exceeds marketfeed's by the first trades' sizes,"
        f" {missing_volume:,}, per interval)"
    )

    measures = (("aggregation alone", "agg_s", "agg_cpu"), ("with tick construction", "with_build_s", "with_build_cpu"))
    for label, wall, cpu in measures:
        for key, unit in ((wall, "ticks/s"), (cpu, "per CPU s")):
            rate = {name: statistics.median(r["ticks"] / r[key] for r in runs) for name, runs in results.items()}
            nautilus = rate["nautilus"]
            print(
                f"{label:22s} {unit:9s} median of {args.repeat}: compiled {rate['compiled']:>9,.0f}"
                f"  pure {rate['pure']:>9,.0f}  Nautilus {nautilus:>9,.0f}"
                f"   compiled/Nautilus {rate['compiled'] / nautilus:.2f}x  pure/Nautilus {rate['pure'] / nautilus:.2f}x"
            )


if __name__ == "__main__":
    main()
