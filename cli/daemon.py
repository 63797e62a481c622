"""The daemon: wiring broker, store, pipeline and publishers, started in order and stopped in reverse."""

from __future__ import annotations

import argparse
import logging
import signal
import zlib
from pathlib import Path
from types import FrameType

from brokers.base import BaseBroker
from candles.model import parse_intervals
from cli.errors import UsageError
from cli.venues import make_broker
from config.settings import Settings
from config.symbols import load_symbols_file, parse_symbols
from core.ticks import Instrument
from ops import systemd
from storage import open_store
from storage.base import CandleStore

log = logging.getLogger("marketfeed")


def run_daemon(settings: Settings, args: argparse.Namespace) -> int:
    intervals = parse_intervals(args.intervals or settings.intervals)
    if args.duration is not None and args.duration <= 0:
        raise UsageError("--duration must be a positive number of seconds")
    shard = _parse_shard(args.shard)
    broker, clock = make_broker(settings, args)
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
    from pipeline.journal import TickJournal
    from pipeline.service import Service
    from publishers.mqtt import MqttConfig, MqttPublisher
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


