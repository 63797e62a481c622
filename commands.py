"""What main.py's options do: run the daemon, or a check or view that prints a short report."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
import zlib
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from types import FrameType

from brokers.base import BaseBroker, BrokerError, Instrument
from candles.model import IST, Candle, Interval, parse_intervals
from config.logs import setup_logging
from config.settings import ConfigError, Settings, load_settings
from config.symbols import SymbolError, load_symbols_file, parse_symbol, parse_symbols
from ops import systemd
from storage import open_store
from storage.base import CandleStore, StoreError
from storage.spool import SpoolError

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
        if args.test_mqtt:
            return test_mqtt(settings)
        settings.validate(args.broker)
        if args.login:
            return login(settings, args)
        if args.test_broker:
            return test_broker(settings, args)
        return run_daemon(settings, args)
    except (ConfigError, UsageError, SymbolError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (StoreError, BrokerError, SpoolError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


# ---- the daemon ----------------------------------------------------------------------------


def run_daemon(settings: Settings, args: argparse.Namespace) -> int:
    intervals = parse_intervals(args.intervals or settings.intervals)
    if args.duration is not None and args.duration <= 0:
        raise UsageError("--duration must be a positive number of seconds")
    shard = _parse_shard(args.shard)
    broker, clock = _make_broker(settings, args)
    store = open_store(settings.pg_conn_str, settings.sqlite_path)
    try:
        version = store.migrate()
        log.info("store %s ready (schema version %d)", store.description, version)
        pairs = _watchlist(args, store)
        if shard is not None:
            pairs = _shard_of(pairs, *shard)
        instruments = _resolve(broker, pairs)
        broker.check_capacity(len(instruments))
        return _serve(settings, args, broker, store, instruments, intervals, clock)
    finally:
        store.close()


def _serve(settings, args, broker, store, instruments, intervals, clock) -> int:  # noqa: ANN001
    from publishers.mqtt import MqttConfig, MqttPublisher
    from service import Service
    from storage.journal import TickJournal
    from storage.spool import Spool

    spool = Spool(Path(settings.data_dir) / "spool")  # first: its lock keeps a second daemon off this DATA_DIR
    journal = TickJournal(Path(settings.data_dir) / "journal")

    service = Service(
        broker,
        store,
        instruments,
        intervals,
        clock=clock,
        grace=settings.grace_seconds,
        emit_empty=settings.emit_empty_candles,
        status_interval=settings.status_interval_seconds,
        spool=spool,
        journal=journal,
    )
    mqtt_config = MqttConfig.from_settings(settings)
    if mqtt_config is not None:
        service.publisher = MqttPublisher(mqtt_config, service.health, service.feeds)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: shutting down", signal.Signals(signum).name)
        service.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    metrics = None
    port = args.metrics_port if args.metrics_port is not None else settings.metrics_port
    if port:
        from ops.metrics import MetricsError, MetricsServer

        metrics = MetricsServer(service, host=settings.metrics_host, port=port)
        try:
            metrics.start()  # before the feed connects: a busy port stops the start at once
        except MetricsError as exc:
            raise UsageError(f"{exc} (METRICS_PORT / --metrics-port)") from None
        log.info("metrics on http://%s:%d/metrics, health on /healthz", settings.metrics_host, metrics.port)
    from ops.gc_tuning import tune_for_streaming
    from ops.malloc_tuning import tune_allocator

    tune_for_streaming()
    tune_allocator()
    service.start()
    watchdog = _systemd_ready(service)
    service.wait(args.duration)
    if watchdog is not None:
        watchdog.stop()  # before the pipeline ends on purpose
    systemd.stopping()
    drained = service.stop()
    if metrics is not None:
        metrics.stop()
    log.info(
        "stopped: %d ticks, %d candles written%s",
        service.stats.ticks,
        service.stats.candles_written,
        "" if drained else " (some candles were not stored)",
    )
    return 0 if drained else 1


def _systemd_ready(service) -> systemd.Watchdog | None:  # noqa: ANN001
    """Under systemd (Type=notify): report readiness, and pet the watchdog while the pipeline
    loops. Outside systemd both do nothing."""
    systemd.ready()
    systemd.status(f"streaming {len(service.instruments)} instruments from {service.broker.name} into {service.store.description}")
    interval = systemd.watchdog_interval()
    if interval is None:
        return None
    max_age = max(interval, 5.0)  # the pipeline loops every 0.1 s: seconds without a loop mean it is stuck
    watchdog = systemd.Watchdog(lambda: service.pipeline_alive(max_age), interval)
    watchdog.start()
    log.info("systemd watchdog: petting every %.1fs while the pipeline loops (stuck %.0fs: no more petting)", interval, max_age)
    return watchdog


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


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text!r} must look like 1/3 (this daemon's part / number of parts)") from None
    if not 1 <= i <= n:
        raise UsageError(f"--shard {text!r}: the part must be between 1 and {max(n, 1)}")
    return i, n


def _shard_of(pairs: list[tuple[str, str]], i: int, n: int) -> list[tuple[str, str]]:
    """This daemon's part of the watchlist: a symbol's part depends on its name only, so adding a
    symbol never moves the others to another daemon."""
    mine = [p for p in pairs if zlib.crc32(f"{p[0]}:{p[1]}".encode()) % n == i - 1]
    log.info("--shard %d/%d: %d of the %d symbols are this daemon's", i, n, len(mine), len(pairs))
    if not mine:
        raise UsageError(f"--shard {i}/{n} leaves no symbol of the {len(pairs)} for this daemon: use fewer parts")
    return mine


def _resolve(broker: BaseBroker, pairs: list[tuple[str, str]]) -> list[Instrument]:
    known, unknown = broker.resolve(pairs)
    for key in unknown:
        log.warning("unknown symbol %s: skipped (check the exchange and the trading symbol)", key)
    if not known:
        raise UsageError(f"none of the {len(pairs)} symbols is known to {broker.name}")
    return known


def _make_broker(settings: Settings, args: argparse.Namespace):  # noqa: ANN202
    if args.broker == "kite":
        return _make_kite(settings), time.time
    if args.broker in ("kotak", "kotak_neo"):
        return _make_kotak(settings), time.time
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


# ---- Kite ----------------------------------------------------------------------------------


def _kite_token(settings: Settings) -> tuple[str, str, Callable[[], str | None] | None]:
    """(access token, where it came from, provider of a replacement after a rejection)."""
    from brokers.kite.auth import load_token, probably_expired, token_day

    if settings.kite_access_token:
        return settings.kite_access_token, "KITE_ACCESS_TOKEN", None
    file = settings.kite_token_file
    token = load_token(file)
    if not token:
        raise UsageError(
            f"no Kite access token: log in first with `python main.py --broker kite --login` (it writes {file}), "
            "or set KITE_ACCESS_TOKEN"
        )
    day = token_day(file)
    if day is not None and probably_expired(day, time.time()):
        log.warning(
            "the Kite access token in %s was issued on %s and has probably expired (they expire around 06:00 IST): "
            "run `python main.py --broker kite --login`; the daemon picks the new token up by itself",
            file,
            day,
        )
    return token, f"{file} (issued {day})" if day else file, lambda: load_token(file)


def _kite_rest(settings: Settings, access_token: str | None = None):  # noqa: ANN202
    from kiteconnect import KiteConnect

    assert settings.kite_api_key is not None  # validate("kite") checked it
    return KiteConnect(settings.kite_api_key, access_token=access_token, root=settings.kite_api_url, timeout=15)


def _make_kite(settings: Settings, token: tuple[str, str, Callable[[], str | None] | None] | None = None):  # noqa: ANN202
    from brokers.kite.client import KiteBroker
    from brokers.kite.instruments import KiteInstruments

    access_token, _, provider = token or _kite_token(settings)
    assert settings.kite_api_key is not None
    dump = KiteInstruments(_kite_rest(settings, access_token), settings.data_dir).load()
    return KiteBroker(
        settings.kite_api_key,
        access_token,
        ws_url=settings.kite_ws_url,
        mode=settings.kite_mode,
        instruments={i.token: i for i in dump.values()},
        stall_timeout=settings.feed_stall_seconds or 10.0,
        token_provider=provider,
        depth=False,  # full mode for exchange times and OI; candles never read the depth
    )


# ---- Kotak Neo ---------------------------------------------------------------------------------


def _kotak_auth(settings: Settings):  # noqa: ANN202
    from brokers.kotak_neo.auth import KotakAuth

    return KotakAuth(
        settings.kotak_consumer_key or "",
        settings.kotak_mobile_number or "",
        settings.kotak_ucc or "",
        settings.kotak_mpin or "",
        settings.kotak_totp_secret or "",
        login_url=settings.kotak_login_url,
        feed_url=settings.kotak_feed_url,
    )


def _make_kotak(settings: Settings, auth=None):  # noqa: ANN001, ANN202
    from brokers.kotak_neo.client import KotakNeoBroker
    from brokers.kotak_neo.instruments import KotakScripMaster

    auth = auth or _kotak_auth(settings)
    session = auth.current()  # log in now: bad credentials stop the start with the variables to check
    master = KotakScripMaster(session.base_url, settings.kotak_consumer_key or "", settings.data_dir)
    return KotakNeoBroker(
        auth,
        max_symbols_per_connection=settings.kotak_max_symbols_per_connection,
        max_connections=settings.kotak_max_connections,
        stall_timeout=settings.feed_stall_seconds or 45.0,
        resolver=master.resolve,
    )


def _checked_kotak(settings: Settings) -> BaseBroker | None:
    auth = _kotak_auth(settings)
    started = time.perf_counter()
    try:
        session = auth.current()
    except BrokerError as exc:
        _report_line("login", "FAILED", str(exc))
        return None
    _report_line("login", f"ok: {session.ucc}, session valid for {(session.expires_at - time.time()) / 3600:.1f} h "
                 f"({(time.perf_counter() - started) * 1000:.0f} ms)")  # fmt: skip
    _report_line("feed", session.feed_url)
    return _make_kotak(settings, auth)


def login(settings: Settings, args: argparse.Namespace) -> int:
    """Kite's daily login: print the login URL, take the request_token, store the access token."""
    from brokers.kite.auth import generate_access_token, parse_request_token, save_token

    if args.broker != "kite":
        raise UsageError(f"--login is for --broker kite; {args.broker} logs in by itself from its settings")
    if not settings.kite_api_secret:
        raise ConfigError("KITE_API_SECRET is missing: set it in .env (your Kite Connect app's API secret); --login needs it")
    kite = _kite_rest(settings)
    if args.request_token:
        pasted = args.request_token
    else:
        print("1. Open this URL in a browser and log in to Kite:")
        print(f"   {kite.login_url()}")
        print("2. Paste the request_token, or the whole address the browser was sent to:")
        try:
            pasted = input("> ")
        except EOFError:
            raise UsageError("no request_token given: paste it at the prompt or pass --request-token") from None
    assert settings.kite_api_secret is not None
    token = generate_access_token(kite, parse_request_token(pasted), settings.kite_api_secret)
    path = save_token(settings.kite_token_file, token)
    print(f"saved today's access token to {path} (readable by its owner only).")
    print("A running daemon picks it up by itself; it is valid until about 06:00 IST tomorrow.")
    if settings.kite_access_token:
        print("warning: KITE_ACCESS_TOKEN is set and wins over the file: unset it to use this token.")
    return 0


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


def test_mqtt(settings: Settings) -> int:
    """Connect to the MQTT broker, publish a message and read it back through a subscription."""
    from publishers.mqtt import MqttConfig, check

    print("marketfeed MQTT check")
    config = MqttConfig.from_settings(settings)
    if config is None:
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
    if args.broker == "kite":
        broker = _checked_kite(settings)
    elif args.broker in ("kotak", "kotak_neo"):
        broker = _checked_kotak(settings)
    else:
        broker = _make_broker(settings, args)[0]
    if broker is None:
        return 1
    pairs = parse_symbols(args.symbols) or [("NSE", "INFY")]
    try:
        known, unknown = broker.resolve(pairs[:1])
    except BrokerError as exc:
        _report_line("symbol", "FAILED", str(exc))
        return 1
    if not known:
        _report_line("symbol", "FAILED", f"{unknown[0]} is unknown to {broker.name}: check the exchange and the symbol")
        return 1
    _report_line("symbol", f"ok: {known[0].key} = instrument {known[0].token}")
    return _first_data(broker, known[0])


def _checked_kite(settings: Settings) -> BaseBroker | None:
    """Token, profile() and the instruments dump, each reported; None (after a FAILED line) on failure."""
    token = _kite_token(settings)
    _report_line("access token", f"from {token[1]}")
    started = time.perf_counter()
    try:
        profile = _kite_rest(settings, token[0]).profile()
    except Exception as exc:  # noqa: BLE001 - kiteconnect's exception family and network errors
        text = f"{type(exc).__name__}: {exc}".replace(token[0], "***")
        hint = (
            "the access token is invalid or expired: log in again (python main.py --broker kite --login)"
            if "Token" in text or "403" in text
            else "check KITE_API_URL and the network"
        )
        _report_line("profile", "FAILED", f"{text}; {hint}")
        return None
    _report_line("profile", f"ok: {profile.get('user_id', '?')} ({profile.get('user_name', '')}), "
                 f"{(time.perf_counter() - started) * 1000:.0f} ms")  # fmt: skip
    started = time.perf_counter()
    try:
        broker = _make_kite(settings, token)
    except BrokerError as exc:
        _report_line("instruments", "FAILED", str(exc))
        return None
    _report_line("instruments", f"ok: {len(broker.instruments)} in the dump ({time.perf_counter() - started:.1f} s)")
    return broker


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
            stats = getattr(broker, "stats", None)
            if heartbeat_at is None and getattr(stats, "heartbeats", 0):
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


