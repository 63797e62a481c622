"""What main.py's options do: run the daemon, or a check or view that prints a short report."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from datetime import datetime
from decimal import Decimal
from types import FrameType

from brokers.base import BaseBroker, BrokerError, Instrument
from candles.model import IST, Candle, Interval, parse_intervals
from config.logs import setup_logging
from config.settings import ConfigError, Settings, load_settings
from config.symbols import SymbolError, load_symbols_file, parse_symbol, parse_symbols
from storage import open_store
from storage.base import CandleStore, StoreError

log = logging.getLogger("marketfeed")


class UsageError(Exception):
    """The command line asks for something that cannot be done; the message says why."""


def run(args: argparse.Namespace) -> int:
    """Dispatch; every expected failure becomes one line on stderr and a non-zero exit."""
    try:
        settings = load_settings(env_file=args.env_file)
        setup_logging(args.log_level or settings.log_level, args.log_format or settings.log_format)
        if args.show_candles:
            return show_candles(settings, args.show_candles, args.interval, args.limit)
        if args.test_database:
            return test_database(settings)
        settings.validate(args.broker)
        if args.test_broker:
            return test_broker(settings, args)
        return run_daemon(settings, args)
    except (ConfigError, UsageError, SymbolError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (StoreError, BrokerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


# ---- the daemon ----------------------------------------------------------------------------


def run_daemon(settings: Settings, args: argparse.Namespace) -> int:
    intervals = parse_intervals(args.intervals or settings.intervals)
    if args.duration is not None and args.duration <= 0:
        raise UsageError("--duration must be a positive number of seconds")
    broker, clock = _make_broker(args)
    store = open_store(settings.pg_conn_str, settings.sqlite_path)
    try:
        version = store.migrate()
        log.info("store %s ready (schema version %d)", store.description, version)
        pairs = _watchlist(args, store)
        instruments = _resolve(broker, pairs)
        broker.check_capacity(len(instruments))
        return _serve(settings, args, broker, store, instruments, intervals, clock)
    finally:
        store.close()


def _serve(settings, args, broker, store, instruments, intervals, clock) -> int:  # noqa: ANN001
    from service import Service

    service = Service(
        broker,
        store,
        instruments,
        intervals,
        clock=clock,
        grace=settings.grace_seconds,
        emit_empty=settings.emit_empty_candles,
        status_interval=settings.status_interval_seconds,
    )

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: shutting down", signal.Signals(signum).name)
        service.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    service.start()
    service.wait(args.duration)
    drained = service.stop()
    log.info(
        "stopped: %d ticks, %d candles written%s",
        service.stats.ticks,
        service.stats.candles_written,
        "" if drained else " (some candles were not stored)",
    )
    return 0 if drained else 1


def _watchlist(args: argparse.Namespace, store: CandleStore) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = parse_symbols(args.symbols)
    if args.symbols_file:
        pairs += load_symbols_file(args.symbols_file)
    if args.symbols_from_db:
        rows = store.watchlist()
        if not rows:
            raise UsageError(
                f"the watchlist table in {store.description} has no enabled rows: insert some "
                "(exchange, symbol) rows or pass --symbols"
            )
        pairs += [(r.exchange, r.symbol) for r in rows]
    pairs = list(dict.fromkeys(pairs))
    if not pairs:
        raise UsageError("no symbols to stream: pass --symbols NSE:INFY ..., --symbols-file or --symbols-from-db")
    return pairs


def _resolve(broker: BaseBroker, pairs: list[tuple[str, str]]) -> list[Instrument]:
    known, unknown = broker.resolve(pairs)
    for key in unknown:
        log.warning("unknown symbol %s: skipped (check the exchange and the trading symbol)", key)
    if not known:
        raise UsageError(f"none of the {len(pairs)} symbols is known to {broker.name}")
    return known


def _make_broker(args: argparse.Namespace):  # noqa: ANN202
    if args.broker == "sim":
        from brokers.sim import SimBroker, SimClock

        if args.sim_speed <= 0:
            raise UsageError("--sim-speed must be positive")
        start = time.time()
        if args.sim_start:
            try:
                when = datetime.fromisoformat(args.sim_start)
            except ValueError:
                raise UsageError(f"--sim-start {args.sim_start!r} is not an ISO time like 2026-11-24T09:15:00+05:30") from None
            start = (when if when.tzinfo else when.replace(tzinfo=IST)).timestamp()
        clock = SimClock(start, args.sim_speed)
        return SimBroker(clock, seed=args.seed, tick_rate=args.sim_tick_rate, tape_path=args.sim_tape), clock
    raise UsageError(f"--broker {args.broker} is not yet available in this version; use --broker sim")


# ---- checks and views ----------------------------------------------------------------------


def test_database(settings: Settings) -> int:
    """Connect, migrate, write and read back one candle; print a short report."""
    print("marketfeed database check")
    started = time.perf_counter()
    try:
        store = open_store(settings.pg_conn_str, settings.sqlite_path)
    except StoreError as exc:
        _report_line("store", "FAILED", str(exc))
        return 1
    _report_line("store", store.description)
    try:
        version = store.migrate()
        _report_line("connect+migrate", f"ok, schema version {version} ({(time.perf_counter() - started) * 1000:.0f} ms)")
        probe = _probe_candle()
        store.upsert([probe])
        back = store.latest(probe.exchange, probe.symbol, probe.interval, limit=1)
        store.delete([probe])
        if back != [probe]:
            _report_line("write/read", "FAILED", f"wrote {probe}, read back {back}")
            return 1
        _report_line("write/read", "ok (exact round-trip of a probe candle, then removed)")
    except StoreError as exc:
        _report_line("check", "FAILED", str(exc))
        return 1
    finally:
        store.close()
    _report_line("result", "OK")
    return 0


def _probe_candle() -> Candle:
    bucket = datetime.fromtimestamp(Interval.parse("1m").bucket_start(time.time()), IST)
    price = Decimal("1234.55")
    return Candle(
        exchange="NSE", symbol="MARKETFEED-SELFTEST", interval="1m", bucket=bucket,
        open=price, high=Decimal("1240.05"), low=Decimal("1230.00"), close=price,
        volume=42, oi=None, tick_count=3, first_tick=bucket, last_tick=bucket,
        cum_volume=42, final=True,
    )


def _report_line(what: str, status: str, detail: str = "") -> None:
    print(f"  {what:<16} {status}" + (f"\n  {'':<16} {detail}" if detail else ""))


def test_broker(settings: Settings, args: argparse.Namespace) -> int:
    broker, clock = _make_broker(args)
    print(f"marketfeed broker check: {broker.name}")
    pairs = parse_symbols(args.symbols) or [("NSE", "INFY")]
    instruments = _resolve(broker, pairs[:1])
    got: list = []
    broker.subscribe(instruments)
    broker.connect(got.extend)
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    broker.disconnect()
    if not got:
        _report_line("first tick", "FAILED", "no tick within 10 s")
        return 1
    t = got[0]
    _report_line("first tick", f"ok: {t.exchange}:{t.symbol} {t.last_price} at {t.exchange_ts.isoformat()}")
    _report_line("result", "OK")
    return 0


def show_candles(settings: Settings, symbol: str, interval: str, limit: int) -> int:
    exchange, name = parse_symbol(symbol)
    iv = Interval.parse(interval)
    store = open_store(settings.pg_conn_str, settings.sqlite_path, read_only=True)
    try:
        rows = store.latest(exchange, name, iv.name, limit=max(1, limit))
    finally:
        store.close()
    if not rows:
        print(f"no {iv.name} candles for {exchange}:{name} in {store.description}")
        return 0
    print(f"{exchange}:{name} {iv.name} — newest {len(rows)} from {store.description}")
    header = f"{'bucket (IST)':<19} {'open':>10} {'high':>10} {'low':>10} {'close':>10} {'volume':>10} {'ticks':>6}  state"
    print(header)
    print("-" * len(header))
    for c in reversed(rows):
        print(
            f"{c.bucket.astimezone(IST):%Y-%m-%d %H:%M:%S} {c.open:>10} {c.high:>10} {c.low:>10} "
            f"{c.close:>10} {c.volume:>10} {c.tick_count:>6}  {'final' if c.final else 'open'}"
        )
    return 0


