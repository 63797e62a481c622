"""The --test-* checks: each prints a one-screen report and returns 0 or 1."""

from __future__ import annotations

import argparse
import logging
import time
from datetime import datetime
from decimal import Decimal

from brokers import registry
from brokers.base import BaseBroker, BrokerError
from candles.model import Candle, Interval
from cli.settings import feed_context
from config.settings import Settings
from config.universe import parse_entries
from core.contracts import FUT
from core.ist import IST
from core.ticks import Instrument
from core.universe import UniverseError, UniverseSpec, atm_reference, option_chain, resolve_universe
from storage import open_store
from storage.base import StoreError

log = logging.getLogger("marketfeed")


def test_database(settings: Settings) -> int:
    """Connect, migrate, write and read back one candle; print a short report."""
    print("marketfeed database check")
    started = time.perf_counter()
    try:
        store = open_store(settings.storage.pg_conn_str, settings.storage.sqlite_path)
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


def test_mqtt(settings: Settings) -> int:
    """Connect to the MQTT broker, publish a message and read it back through a subscription."""
    from publishers.mqtt import check

    print("marketfeed MQTT check")
    config = settings.mqtt
    if not config.host:
        _report_line("broker", "FAILED", "MQTT_HOST is not set: MQTT is off; set MQTT_HOST (and MQTT_PORT) in .env")
        return 1
    _report_line("broker", f"{config.where} as {config.client_id}")
    ok, detail = check(config)
    _report_line("publish+read", "ok" if ok else "FAILED", detail)
    if ok:
        _report_line("topics", f"{config.base}/status, {config.base}/heartbeat, {config.base}/feed/<n>"
                     + (f", {config.prefix}/candles/..." if config.publish_candles else ""))  # fmt: skip
        _report_line("result", "OK")
    return 0 if ok else 1


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
    """Connect, subscribe one instrument, wait for the first tick (or heartbeat); report."""
    print(f"marketfeed broker check: {args.broker}")
    name = registry.venue(args.broker).name
    broker = registry.factory(name).check_login(settings.venues[name], feed_context(settings, args), _report_line)
    if broker is None:
        return 1
    first = (parse_entries(args.symbols) or [("NSE", "INFY")])[0]
    pair = _universe(broker, first) if isinstance(first, UniverseSpec) else first
    if pair is None:
        return 1
    try:
        known, unknown = broker.resolve([pair])
    except BrokerError as exc:
        _report_line("symbol", "FAILED", str(exc))
        return 1
    if not known:
        _report_line("symbol", "FAILED", f"{unknown[0]} is unknown to {broker.name}: check the exchange and the symbol")
        return 1
    _report_line("symbol", f"ok: {known[0].key} = instrument {known[0].token}")
    return _first_data(broker, known[0])


def _universe(broker: BaseBroker, spec: UniverseSpec) -> tuple[str, str] | None:
    """Resolve a universe entry from the broker's master for today and report it; the symbol to
    check the feed with (the first future, or the options' reference), None when it fails."""
    today = datetime.now(IST).date()
    try:
        contracts = broker.contracts()
        if spec.kind == FUT:
            named = resolve_universe(spec, contracts, None, today)
            _report_line("universe", f"ok: {spec}: {', '.join(c.symbol for c in named)}")
            return (named[0].exchange, named[0].symbol)
        chain = option_chain(spec, contracts, today)
        reference = atm_reference(spec, contracts, today)
        assert reference is not None
        strikes = len({c.strike for c in chain})
        _report_line(
            "universe",
            f"ok: {spec}: expiry {chain[0].expiry}, {strikes} strikes listed, ATM measured against {':'.join(reference)}",
        )
        return reference
    except (UniverseError, BrokerError) as exc:
        _report_line("universe", "FAILED", str(exc))
        return None


def _first_data(broker: BaseBroker, instrument: Instrument, timeout: float = 10.0) -> int:
    got: list = []
    broker.subscribe([instrument])
    started = time.monotonic()
    broker.connect(got.extend)
    deadline = started + timeout
    heartbeat_at = None
    connected_at = None
    try:
        while not got and time.monotonic() < deadline and broker.problem is None:
            if connected_at is None and broker.is_connected():
                connected_at = time.monotonic()
            if heartbeat_at is None and broker.feed_stats().heartbeats:
                heartbeat_at = time.monotonic()
            time.sleep(0.02)
    finally:
        broker.disconnect()
    if connected_at is not None:
        _report_line("connect", f"ok ({(connected_at - started) * 1000:.0f} ms)")
    if got:
        t = got[0]
        _report_line("first tick", f"ok: {t.exchange}:{t.symbol} {t.last_price} at {t.exchange_ts.isoformat()} "
                     f"({(time.monotonic() - started):.1f} s)")  # fmt: skip
    elif heartbeat_at is not None and broker.problem is None:
        _report_line("first tick", f"none within {timeout:.0f} s, but the feed is alive (heartbeat after "
                     f"{heartbeat_at - started:.1f} s): the market is probably closed")  # fmt: skip
    else:
        why = broker.problem or ("could not connect" if connected_at is None else "no tick and no heartbeat")
        _report_line("first data", "FAILED", f"{why} within {timeout:.0f} s")
        return 1
    _report_line("result", "OK")
    return 0


