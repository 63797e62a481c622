"""The daemon: its parts built and started in order, and stopped in reverse on any exit.

Start-up order, as code (``run_daemon``): the feed's broker (log in, load the instrument master),
the store (migrated), the watchlist resolved against the broker, the spool (its lock keeps a
second daemon off this DATA_DIR), the tick journal, the HTTP server (/healthz, /metrics, the read
API; before the feed connects: a busy port stops the start at once), the service (pipeline and writer threads, then the feed,
then the publishers), the systemd watchdog. An ``ExitStack`` stops whatever was started, in
reverse, whether the daemon ends on a signal, after ``--duration`` or on a failure half-way.
SIGTERM and SIGINT stop it in any of these phases, SIGHUP reloads the watchlist while it streams
(cli/signals.py).
"""

from __future__ import annotations

import argparse
import logging
import threading
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

from brokers import registry
from brokers.base import BaseBroker, BrokerError
from candles.model import parse_intervals
from cli.errors import UsageError
from cli.kite_history import daemon_history
from cli.settings import feed_context
from cli.signals import DaemonSignals, StopRequested
from cli.universes import DaemonUniverses
from cli.watchlist import listed_symbols, parse_shard, resolve, shard_of, split, watchlist
from config.market_calendar import (
    LibraryHolidays,
    Overrides,
    build_calendar,
    cached_library_holidays,
    library_holidays,
    read_overrides,
    staleness,
    today_line,
)
from config.settings import Settings
from config.symbols import SymbolError
from core import accel
from core.ist import IST
from core.market_calendar import MarketCalendar
from core.ticks import Instrument
from ops import systemd
from ops.gc_tuning import tune_for_streaming
from ops.malloc_tuning import release_free_memory, tune_allocator
from pipeline.journal import TickJournal
from pipeline.service import Publisher, Service
from storage import open_store
from storage.base import CandleStore, StoreError
from storage.spool import Spool

log = logging.getLogger("marketfeed")


def open_feed(
    settings: Settings, args: argparse.Namespace, required: tuple[str, ...] = ()
) -> tuple[BaseBroker, registry.Clock]:
    """The broker of ``--broker`` and the clock its candles run on; ``required``: the underlyings
    the listed universes name (a fresh master must have their contracts)."""
    name = registry.venue(args.broker).name
    return registry.factory(name).open_broker(settings.venues[name], feed_context(settings, args, required))


def run_daemon(settings: Settings, args: argparse.Namespace) -> int:
    """The daemon; SIGTERM or SIGINT in any phase stops it with status 0 (cli/signals.py)."""
    signals = DaemonSignals()
    signals.install()
    try:
        return _run(settings, args, signals)
    except StopRequested as stop:
        log.info("received %s while %s: stopped before streaming", stop.signame, signals.phase)
        return 0
    finally:
        signals.restore()


class _Parts(ExitStack):
    """An ``ExitStack`` that, before stopping anything, tells the signals the daemon winds down."""

    def __init__(self, signals: DaemonSignals) -> None:
        super().__init__()
        self._signals = signals

    def __exit__(self, *exc: object) -> bool:
        self._signals.closing()
        return super().__exit__(*exc)  # type: ignore[arg-type]


def _run(settings: Settings, args: argparse.Namespace, signals: DaemonSignals) -> int:
    intervals = parse_intervals(settings.candles.intervals if args.intervals is None else args.intervals)
    if args.duration is not None and args.duration <= 0:
        raise UsageError("--duration must be a positive number of seconds")
    shard = parse_shard(args.shard)
    http = http_address(settings, args)
    listed = listed_symbols(args)  # a bad symbols file stops the start before any login
    overrides = read_overrides(settings.calendar.file)  # so does a bad market calendar file
    signals.enter(f"opening the {args.broker} feed (logging in, loading its instrument list)")
    broker, clock = open_feed(settings, args, tuple(sorted({s.underlying for s in split(listed)[1]})))
    warn, hot_path = accel.report()
    (log.warning if warn else log.info)("%s", hot_path)
    drained = [True]
    with _Parts(signals) as parts:
        # restored last: a thread that dies while the parts stop is still reported as the daemon's
        parts.callback(setattr, threading, "excepthook", threading.excepthook)
        signals.enter("opening and migrating the store")
        store = open_store(settings.storage.pg_conn_str, settings.storage.sqlite_path)
        parts.callback(store.close)
        ha = _hot_standby(settings, store, clock, parts) if settings.ha.enabled else None
        version = store.migrate()
        log.info("store %s ready (schema version %d)", store.description, version)
        signals.enter("reading and resolving the watchlist")
        entries = watchlist(args, store, listed)
        if shard is not None:
            entries = shard_of(entries, *shard)
        pairs, specs = split(entries)
        wiring = DaemonUniverses(settings.universe, broker, store, clock)
        universes = wiring.build(specs)
        static = resolve(broker, pairs) if pairs else []
        wiring.check_capacity(static, universes)
        if ha is not None:
            _pair_fits(ha, settings, broker, len(static) + (0 if universes is None else universes.capacity()))
        instruments = list({i.key: i for i in [*static, *wiring.instruments(universes)]}.values())
        if not instruments:
            raise UsageError(f"none of the watchlist's entries names an instrument {broker.name} knows")

        signals.enter("opening the spool and the tick journal")
        data_dir = Path(settings.storage.data_dir)
        spool = Spool(data_dir / "spool")
        parts.callback(spool.close)
        journal = TickJournal(data_dir / "journal")
        parts.callback(journal.close)
        publishers: list[Publisher] = []
        if settings.mqtt.host:
            from publishers.mqtt import MqttPublisher

            publishers.append(MqttPublisher(settings.mqtt))
        hub = None
        if http is not None:
            from ops.stream import CandleHub

            hub = CandleHub()  # the live streams: a publisher of the stored candles like the others
            publishers.append(hub)
        bus = None
        if settings.nats.url:
            from publishers.nats import NatsPublisher

            bus = NatsPublisher(settings.nats)
        archive = None
        if settings.archive.dir:
            from pipeline.archive import TickArchiver  # pyarrow only when the archive is on

            archive = TickArchiver(
                settings.archive.dir, clock, roll_seconds=settings.archive.roll_seconds, max_ticks=settings.archive.max_ticks
            )
        service = Service(
            broker,
            store,
            instruments,
            intervals,
            clock=clock,
            grace=settings.candles.grace_seconds,
            emit_empty=settings.candles.emit_empty,
            status_interval=settings.log.status_seconds,
            publishers=publishers,
            spool=spool,
            journal=journal,
            after_checkpoint=release_free_memory,
            history=daemon_history(settings, broker),
            backfill_delay=settings.backfill.delay_seconds,
            bus=bus,
            ha=ha,
            archive=archive,
        )
        exchanges = sorted({i.exchange for i in instruments} | {s.exchange for s in specs})
        _market_calendar(overrides, data_dir, exchanges, lambda calendar: setattr(service, "calendar", calendar))
        # No thread dies unnoticed: an exception that ends any thread fails the daemon (exit 1).
        threading.excepthook = service.thread_died
        if http is not None:
            _serve_http(settings, service, hub, http, pairs, parts)
        tune_for_streaming()
        tune_allocator()

        def stop_service() -> None:
            systemd.stopping()
            drained[0] = service.stop()

        if ha is not None:
            ha.start()  # a lone daemon leads from its first candle
            parts.callback(ha.stop)  # after the service drained: the lease is released then
        parts.callback(stop_service)
        signals.enter(f"starting the service (spool replay, journal recovery, subscribing {len(instruments)} instruments)")
        wiring.attach(service, static, universes)
        service.start()
        wiring.start()
        parts.callback(wiring.stop)
        watchdog = _systemd_ready(service)
        if watchdog is not None:
            parts.callback(watchdog.stop)  # first at the end: before the pipeline ends on purpose
        signals.running()

        def on_signals() -> None:
            if signals.stop_signal is not None:
                log.info("received %s: shutting down", signals.stop_signal)
                service.request_stop()
            elif signals.take_reload():
                try:
                    with signals.interruptible("reloading the watchlist"):
                        _reload_watchlist(args, store, broker, shard, service, wiring)
                except StopRequested as stop:
                    log.info("received %s while reloading the watchlist: reload abandoned, shutting down", stop.signame)
                    service.request_stop()

        service.wait(args.duration, poll=on_signals)
    log.info("stopped: %s", _summary(service, drained[0]))
    if service.failure is not None:
        log.error("exiting with status 1 after a failure: %s", service.failure)
        return 1
    return 0 if drained[0] else 1


def _hot_standby(settings: Settings, store: CandleStore, clock: Callable[[], float], parts: ExitStack):  # noqa: ANN202
    """The lease (its own connection: a renewal never waits behind a write) and the role the
    writer asks; candle writes of ``store`` are fenced by the lease's epoch from now on."""
    from pipeline.ha import HaRole
    from storage.lease import Lease
    from storage.postgres import PostgresStore

    ha = settings.ha
    if not isinstance(store, PostgresStore) or not settings.storage.pg_conn_str:
        raise UsageError("HA=true needs PostgreSQL (PG_CONN_STR): SQLite cannot hold a lease both daemons see")
    store.fenced = True
    store.session_timeout = ha.lease_ttl_seconds
    lease_store = PostgresStore(settings.storage.pg_conn_str)
    parts.callback(lease_store.close)
    log.info(
        "hot standby: node %s, lease %r, TTL %gs: candles are written only while this daemon holds it",
        ha.node_id, ha.lease_name, ha.lease_ttl_seconds,
    )  # fmt: skip
    return HaRole(Lease(lease_store, ha.lease_name, ha.node_id, ha.lease_ttl_seconds), store, clock=clock)


def _pair_fits(ha, settings: Settings, broker: BaseBroker, count: int) -> None:  # noqa: ANN001
    """Refuse a pair that would open more feed connections on one broker account than the broker
    allows (Kite: 3 per API key): this daemon's need plus what its live partner recorded."""
    import hashlib
    import math

    venue = settings.venues.get(broker.name)
    key = getattr(venue, "api_key", None) or getattr(venue, "consumer_key", None)
    if not key or not broker.max_symbols_per_connection:
        return
    account = hashlib.sha256(key.encode()).hexdigest()[:16]  # which account, never the key itself
    need = max(1, math.ceil(count / broker.max_symbols_per_connection))
    try:
        partner = ha.lease.register(broker.name, account, need)
    except StoreError as exc:
        log.warning("hot standby: could not record this daemon's connections (%s): the pair's limit is not checked", exc)
        return
    ha.registered = True
    if need + partner > broker.max_connections:
        raise UsageError(
            f"hot standby: this daemon needs {need} {broker.name} connection{'s' if need > 1 else ''} for "
            f"{count} instruments and its partner holds {partner} on the same account, more than the "
            f"{broker.max_connections} {broker.name} allows per account: give each daemon its own account "
            "(for Kite, its own KITE_API_KEY) or shorten the watchlist so that each needs fewer connections"
        )


def _market_calendar(
    overrides: Overrides, data_dir: Path, exchanges: list[str], loaded: Callable[[MarketCalendar], object]
) -> None:
    """Log today's sessions of ``exchanges``, and a warning when the calendar knows no holidays for
    this year (or, in December, the next). From ``DATA_DIR``'s cache of the library's holidays (a
    millisecond or two) ``loaded`` is called before this returns, so that the start's unwatched span
    is judged by the sessions (candle rule 8); without it the library takes a child process and a
    second or more: a thread of its own, so the start does not wait (the start's span then counts
    whole, which may mark a candle partial that missed nothing)."""

    def work(holidays: LibraryHolidays | None = None) -> None:
        try:
            calendar = build_calendar(holidays or library_holidays(data_dir), overrides)
            now = datetime.now(IST)
            stale = staleness(calendar, overrides, now.date())
            if stale:
                log.warning("%s", stale)
            log.info("%s", today_line(calendar, exchanges or ["NSE"], now))
            loaded(calendar)  # the service counts gaps with it from then on
        except Exception as exc:  # a calendar that cannot be read must not stop the feed
            log.warning("market calendar: not loaded: %s", exc)

    try:
        cached = cached_library_holidays(data_dir)
    except Exception as exc:  # noqa: BLE001 - the thread reads the library the slow way and says why it fails
        log.debug("market calendar: the cached holidays cannot be read: %s", exc)
        cached = None
    if cached is not None:
        work(cached)
        return
    threading.Thread(target=work, name="market-calendar", daemon=True).start()


def _summary(service: Service, drained: bool) -> str:
    """The stop line: what the run did, and why when it wrote nothing."""
    ticks = service.stats.ticks
    agg = service.aggregator.stats
    writes = service.writer.stats.candles_written
    words = [
        f"{ticks} ticks",
        f"{writes} candle {'write' if writes == 1 else 'writes'} (a revision or a replay writes a candle again)",
    ]
    if agg.late_ticks:
        words.append(f"{agg.late_ticks} late ticks revised closed candles")
    if agg.dropped_ticks:
        words.append(f"{agg.dropped_ticks} ticks dropped (their bucket had closed beyond the revision horizon)")
    if not ticks:
        words.append("no tick arrived: the feed lines above say whether it was connected")
    if not drained:
        words.append("some candles were not stored: the next start writes them from the spool")
    return ", ".join(words)


def http_address(settings: Settings, args: argparse.Namespace) -> tuple[str, int, str | None] | None:
    """(host, port, token) of the one HTTP server, None without one. ``--http-port``/``HTTP_PORT``
    and ``--metrics-port``/``METRICS_PORT`` name the same server: either may be set, both only to
    the same port (a UsageError otherwise); ``HTTP_HOST`` wins over ``METRICS_HOST``. Refuses a
    host beyond this machine without ``HTTP_TOKEN``."""
    from ops.http import is_loopback

    http = args.http_port if args.http_port is not None else settings.http.port
    metrics = args.metrics_port if args.metrics_port is not None else settings.metrics.port
    if http and metrics and http != metrics:
        raise UsageError(
            f"HTTP_PORT/--http-port ({http}) and METRICS_PORT/--metrics-port ({metrics}) name different ports: the "
            "daemon serves /healthz, /metrics and the API on one port; set only HTTP_PORT (METRICS_PORT is its "
            "older name), or both to the same port"
        )
    port = http or metrics
    if not port:
        return None
    host = settings.http.host or settings.metrics.host
    token = settings.http.token
    if not is_loopback(host) and not token:
        raise UsageError(
            f"HTTP_HOST={host} serves HTTP beyond this machine, and HTTP_TOKEN is not set: set HTTP_TOKEN (every "
            "route but /healthz then needs it; e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(32))'), "
            "or bind HTTP_HOST=127.0.0.1"
        )
    return host, port, token


def _serve_http(
    settings: Settings,
    service: Service,
    hub,  # noqa: ANN001 - ops.stream.CandleHub, imported only with a server
    address: tuple[str, int, str | None],
    listed: list[tuple[str, str]],
    parts: ExitStack,
) -> None:
    """The HTTP server, its reads on a store connection of their own (never the writer's)."""
    from ops.api import Api
    from ops.http import HttpServer
    from ops.metrics import MetricsError

    host, port, token = address
    reader = open_store(settings.storage.pg_conn_str, settings.storage.sqlite_path, read_only=True)
    parts.callback(reader.close)
    hub.settle = service.writer.settle
    api = Api(reader, service.health, service.keys, lambda: service.calendar, list(listed))
    server = HttpServer(service.health, host, port, token=token, api=api, hub=hub)
    try:
        server.start()
    except MetricsError as exc:
        raise UsageError(f"{exc} (HTTP_PORT / --http-port, or METRICS_PORT / --metrics-port)") from None
    parts.callback(server.stop)


def _systemd_ready(service: Service) -> systemd.Watchdog | None:
    """Under systemd (Type=notify): report readiness, and pet the watchdog while the pipeline
    loops. Outside systemd both do nothing."""
    systemd.ready()
    n = len(service.instruments)
    systemd.status(f"streaming {n} instrument{'' if n == 1 else 's'} from {service.broker.name} into {service.store.description}")
    interval = systemd.watchdog_interval()
    if interval is None:
        return None
    max_age = max(interval, 5.0)  # the pipeline loops every 0.1 s: seconds without a loop mean it is stuck
    watchdog = systemd.Watchdog(lambda: service.pipeline_alive(max_age), interval)
    watchdog.start()
    log.info("systemd watchdog: petting every %.1fs while the pipeline loops (stuck %.0fs: no more petting)", interval, max_age)
    return watchdog


def _reload_watchlist(
    args: argparse.Namespace,
    store: CandleStore,
    broker: BaseBroker,
    shard: tuple[int, int] | None,
    service: Service,
    wiring: DaemonUniverses,
) -> None:
    """SIGHUP: read the watchlist again (``--symbols`` stay; the file and the database table are
    read anew), resolve it, and change the live subscriptions to it. Any problem keeps the current
    watchlist and is logged as an error."""
    try:
        entries = watchlist(args, store)
        if shard is not None:
            entries = shard_of(entries, *shard)
        pairs, specs = split(entries)
        static = resolve(broker, pairs) if pairs else []
        added, removed = wiring.replace(static, specs)
    except (UsageError, SymbolError, StoreError, BrokerError, OSError) as exc:
        log.error("watchlist not reloaded: %s; still streaming the %d symbols it had", exc, len(service.instruments))
        return
    log.info(
        "watchlist reloaded: +%d%s, -%d%s; %d symbols",
        len(added),
        _keys(added),
        len(removed),
        _keys(removed),
        len(service.instruments),
    )


def _keys(instruments: list[Instrument], shown: int = 10) -> str:
    """" (NSE:A, NSE:B, …)" for a log line: the first ``shown`` keys."""
    if not instruments:
        return ""
    keys = ", ".join(i.key for i in instruments[:shown])
    return f" ({keys}{', …' if len(instruments) > shown else ''})"
