"""The daemon's settings, grouped by the part that reads them; read once, frozen.

Each setting is declared once, with its variable and default (``config.env.var``). A venue's own
settings live in its folder (``brokers/<venue>/settings.py``) and are read through the same
mechanism; ``load_settings`` takes their classes so that one error names every variable to fix.
Secrets never appear in a repr.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from candles.model import parse_intervals
from config.env import TRUE, Env, load_env, read, redacted, var

DEFAULT_SQLITE_PATH = "data/marketfeed.db"
DEFAULT_CALENDAR_NAME = "calendar.toml"



@dataclass(frozen=True, slots=True, repr=False)
class StorageSettings:
    pg_conn_str: str | None = var("PG_CONN_STR", secret=True)  # unset: the SQLite file
    sqlite_path: str = var("SQLITE_PATH", DEFAULT_SQLITE_PATH)
    data_dir: str = var("DATA_DIR", "data")  # the spool, the tick journal, downloaded instrument masters

    __repr__ = redacted


@dataclass(frozen=True, slots=True, repr=False)
class CalendarSettings:
    #: the market calendar's override file (TOML: special sessions, closures, changed hours);
    #: unset: calendar.toml beside the settings file, if there is one (config/market_calendar.py)
    file: str | None = var("MARKET_CALENDAR_FILE", file=True)

    __repr__ = redacted


@dataclass(frozen=True, slots=True, repr=False)
class CandleSettings:
    intervals: str = var("CANDLE_INTERVALS", "1m")
    grace_seconds: float = var("CANDLE_GRACE_SECONDS", 2.0, minimum=0, maximum=3600)
    emit_empty: bool = var("CANDLE_EMIT_EMPTY", False)

    __repr__ = redacted


@dataclass(frozen=True, slots=True, repr=False)
class ArchiveSettings:
    """The tick archive (pipeline/archive.py, storage/tick_archive.py) is off while ``dir`` is None."""

    dir: str | None = var("TICK_ARCHIVE_DIR")  # every tick the aggregator takes, as Parquet files under it
    #: seconds of the daemon's clock between closing the part files: a kill loses at most this much
    roll_seconds: float = var("TICK_ARCHIVE_ROLL_SECONDS", 60.0, minimum=5, maximum=3600)
    #: ticks waiting for the archive's thread at most; beyond it a batch is dropped and counted
    max_ticks: int = var("TICK_ARCHIVE_MAX_TICKS", 1_000_000, minimum=1000, maximum=100_000_000)

    __repr__ = redacted


@dataclass(frozen=True, slots=True, repr=False)
class BackfillSettings:
    #: mend unwatched buckets from Kite's historical API while the daemon runs (whatever the feed
    #: is, when Kite's settings are there); off: gaps are only recorded (``--backfill`` mends them)
    enabled: bool = var("BACKFILL", True)
    #: seconds after a bucket ends before its history is asked (the broker finalises it meanwhile)
    delay_seconds: float = var("BACKFILL_DELAY_SECONDS", 60.0, minimum=0, maximum=3600)

    __repr__ = redacted


@dataclass(frozen=True, slots=True, repr=False)
class UniverseSettings:
    #: an option universe re-centres once the strike nearest the underlying is this many strikes
    #: from its ATM
    recentre_steps: int = var("UNIVERSE_RECENTRE_STEPS", 1, minimum=1, maximum=50)
    #: ... and the price is past the half-way point to that strike by this share of a strike step
    #: (0: no hysteresis); moving back takes as much again the other way
    hysteresis: float = var("UNIVERSE_HYSTERESIS", 0.25, minimum=0, maximum=0.49)
    #: minutes before the first session of the day that the universes are resolved again
    rebuild_minutes: float = var("UNIVERSE_REBUILD_MINUTES", 30.0, minimum=0, maximum=600)

    __repr__ = redacted


@dataclass(frozen=True, slots=True, repr=False)
class HaSettings:
    """Hot standby: the lease in PostgreSQL (storage/lease.py) decides which daemon writes."""

    enabled: bool = var("HA", False)
    lease_name: str = var("HA_LEASE_NAME", "marketfeed")  # the same for both daemons of a pair
    lease_ttl_seconds: float = var("HA_LEASE_TTL_SECONDS", 4.0, minimum=1, maximum=600)
    node_id: str = var("HA_NODE_ID", "")  # default <hostname>-<pid>

    __repr__ = redacted

    @classmethod
    def from_env(cls, env: Env, storage: StorageSettings) -> HaSettings:
        settings = read(cls, env, node_id=env.raw("HA_NODE_ID") or f"{socket.gethostname()}-{os.getpid()}")
        if settings.enabled and not storage.pg_conn_str:
            env.problem(
                "HA=true needs PostgreSQL (PG_CONN_STR): the lease and its fencing live in the database both "
                "daemons write to, and SQLite is one host's file; set PG_CONN_STR, the same for both, or HA=false"
            )
        return settings


@dataclass(frozen=True, slots=True, repr=False)
class FeedSettings:
    broker: str | None = var("MARKETFEED_BROKER")  # None: sim; --broker wins
    stall_seconds: float | None = var("FEED_STALL_SECONDS", minimum=0.5, maximum=3600)  # None: the venue's own default

    __repr__ = redacted


@dataclass(frozen=True, slots=True, repr=False)
class LogSettings:
    level: str = var("LOG_LEVEL", "INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))
    format: str = var("LOG_FORMAT", "text", choices=("text", "json"))
    status_seconds: float = var("STATUS_INTERVAL_SECONDS", 30.0, minimum=1, maximum=86400)

    __repr__ = redacted


@dataclass(frozen=True, slots=True, repr=False)
class MetricsSettings:
    host: str = var("METRICS_HOST", "127.0.0.1")
    port: int | None = var("METRICS_PORT", port=True)  # None: no metrics endpoint

    __repr__ = redacted


@dataclass(frozen=True, slots=True, repr=False)
class HttpSettings:
    """The one HTTP port (ops/http.py): /healthz, /metrics, the read API and the live stream.
    METRICS_PORT and METRICS_HOST are older names of HTTP_PORT and HTTP_HOST (cli/daemon.py)."""

    host: str | None = var("HTTP_HOST")  # unset: METRICS_HOST, which defaults to 127.0.0.1
    port: int | None = var("HTTP_PORT", port=True)  # None: METRICS_PORT, else no HTTP server
    #: needed by every route but /healthz when set; required when HTTP_HOST is not a loopback address
    token: str | None = var("HTTP_TOKEN", secret=True)

    __repr__ = redacted

    @classmethod
    def from_env(cls, env: Env) -> HttpSettings:
        settings = read(cls, env)
        token = settings.token
        if token is not None and (len(token) < 16 or not _TOKEN.fullmatch(token)):
            # never the value: it is a secret
            env.problem(
                "HTTP_TOKEN is invalid: use at least 16 characters of letters, digits and - . _ ~ + / = "
                "(e.g. the output of: python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        return settings


_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]+")


@dataclass(frozen=True, slots=True, repr=False)
class MqttSettings:
    """MQTT is off while ``host`` is None."""

    host: str | None = var("MQTT_HOST")
    port: int = var("MQTT_PORT", 1883, port=True)  # 8883 with TLS
    username: str | None = var("MQTT_USERNAME")
    password: str | None = var("MQTT_PASSWORD", secret=True)
    tls: bool = var("MQTT_TLS", False)
    ca_file: str | None = var("MQTT_CA_FILE", file=True)
    prefix: str = var("MQTT_TOPIC_PREFIX", "marketfeed")
    client_id: str = var("MQTT_CLIENT_ID", "marketfeed")  # default marketfeed-<hostname>
    service_id: str = var("MQTT_SERVICE_ID", "marketfeed")  # default: the client id
    heartbeat_seconds: float = var("MQTT_HEARTBEAT_SECONDS", 30.0, minimum=1, maximum=86400)
    publish_candles: bool = var("MQTT_PUBLISH_CANDLES", False)
    keepalive: int = 30

    __repr__ = redacted

    @classmethod
    def from_env(cls, env: Env) -> MqttSettings:
        tls = (env.raw("MQTT_TLS") or "").lower() in TRUE
        client_id = env.raw("MQTT_CLIENT_ID") or f"marketfeed-{socket.gethostname()}"
        settings = read(cls, env, port=8883 if tls else 1883, client_id=client_id, service_id=client_id)
        for name, value in (("MQTT_CLIENT_ID", settings.client_id), ("MQTT_SERVICE_ID", settings.service_id),
                            ("MQTT_TOPIC_PREFIX", settings.prefix)):  # fmt: skip
            if any(c in value for c in "+#") or value.startswith("/") or value.endswith("/"):
                env.problem(f"{name} is invalid: {value!r} may not contain + or # or start or end with /")
        if "/" in settings.service_id:
            env.problem(f"MQTT_SERVICE_ID is invalid: {settings.service_id!r} may not contain /")
        return settings

    @property
    def base(self) -> str:
        """The topic this daemon's own messages go under."""
        return f"{self.prefix}/{self.service_id}"

    @property
    def where(self) -> str:
        return f"mqtt{'s' if self.tls else ''}://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, repr=False)
class NatsSettings:
    """The NATS JetStream bus (publishers/nats.py) is off while ``url`` is None."""

    #: nats://[user:password@]host:port, or several separated by commas (a cluster's seeds); may
    #: hold a password, so it is a secret: logs show the hosts only
    url: str | None = var("NATS_URL", secret=True)
    #: subjects: <prefix>.ticks.<EXCHANGE>.<SYMBOL> and <prefix>.candles.<interval>.<EXCHANGE>.<SYMBOL>
    prefix: str = var("NATS_SUBJECT_PREFIX", "marketfeed")
    publish_ticks: bool = var("NATS_PUBLISH_TICKS", True)
    ticks_max_age_seconds: float = var("NATS_TICKS_MAX_AGE_SECONDS", 86_400.0, minimum=1, maximum=365 * 86_400)
    ticks_max_bytes: int = var("NATS_TICKS_MAX_BYTES", 1 << 30, minimum=1 << 20)
    candles_max_age_seconds: float = var("NATS_CANDLES_MAX_AGE_SECONDS", 30 * 86_400.0, minimum=1, maximum=3650 * 86_400)
    candles_max_bytes: int = var("NATS_CANDLES_MAX_BYTES", 1 << 30, minimum=1 << 20)
    #: how long JetStream remembers a candle's Nats-Msg-Id: the same candle published again within
    #: it (a retry, or the other daemon of a pair) is stored once
    duplicate_window_seconds: float = var("NATS_DUPLICATE_WINDOW_SECONDS", 600.0, minimum=1, maximum=86_400)
    replicas: int = var("NATS_REPLICAS", 1, minimum=1, maximum=5)
    #: tick batches waiting for the bus; a batch that finds it full is dropped and counted
    queue_batches: int = var("NATS_QUEUE_BATCHES", 10_000, minimum=1, maximum=10_000_000)

    __repr__ = redacted

    @classmethod
    def from_env(cls, env: Env) -> NatsSettings:
        settings = read(cls, env)
        if settings.url is not None:
            for server in settings.url.split(","):
                try:
                    parts = urlsplit(server.strip())
                    ok = parts.scheme in ("nats", "tls") and bool(parts.hostname) and (parts.port or 1) > 0
                except ValueError:  # a port that is not a number
                    ok = False
                if not ok:
                    env.problem(
                        "NATS_URL is invalid: write nats://host:4222 (or tls://host:4222; several separated by commas)"
                    )
                    break
        prefix = settings.prefix
        if not prefix or any(c in prefix for c in " \t*>") or prefix.startswith(".") or prefix.endswith(".") or ".." in prefix:
            env.problem(f"NATS_SUBJECT_PREFIX is invalid: {prefix!r} may not contain spaces, * or >, nor start or end with .")
        return settings

    @property
    def servers(self) -> list[str]:
        return [s.strip() for s in (self.url or "").split(",") if s.strip()]

    @property
    def where(self) -> str:
        """The servers without credentials (for logs and health)."""
        shown = []
        for server in self.servers:
            parts = urlsplit(server)
            port = f":{parts.port}" if parts.port else ""
            shown.append(f"{parts.scheme}://{parts.hostname}{port}")
        return ",".join(shown)


@dataclass(frozen=True, slots=True)
class Settings:
    storage: StorageSettings = field(default_factory=StorageSettings)
    candles: CandleSettings = field(default_factory=CandleSettings)
    feed: FeedSettings = field(default_factory=FeedSettings)
    log: LogSettings = field(default_factory=LogSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    nats: NatsSettings = field(default_factory=NatsSettings)
    calendar: CalendarSettings = field(default_factory=CalendarSettings)
    backfill: BackfillSettings = field(default_factory=BackfillSettings)
    universe: UniverseSettings = field(default_factory=UniverseSettings)
    ha: HaSettings = field(default_factory=HaSettings)
    archive: ArchiveSettings = field(default_factory=ArchiveSettings)
    #: each venue's own settings, by the venue's name (see brokers/registry.py)
    venues: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        parts = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.name != "venues"]
        parts += [f"{name}={value!r}" for name, value in self.venues.items()]
        return f"Settings({', '.join(parts)})"

    __str__ = __repr__


def _calendar_settings(source: Env, env_file: str | os.PathLike[str] | None) -> CalendarSettings:
    """MARKET_CALENDAR_FILE, else calendar.toml beside the settings file when it exists."""
    settings = read(CalendarSettings, source)
    if settings.file is None and env_file:
        beside = Path(env_file).parent / DEFAULT_CALENDAR_NAME
        if beside.is_file():
            settings = replace(settings, file=str(beside))
    return settings


def load_settings(
    env: Mapping[str, str] | None = None,
    env_file: str | os.PathLike[str] | None = ".env",
    *,
    venues: Mapping[str, type] | None = None,
    brokers: Sequence[str] = (),
    env_file_required: bool = False,
    pg_conn_str_problems: Callable[[str], list[str]] | None = None,
) -> Settings:
    """Settings from ``env`` (default: the process environment) over ``env_file``; the environment
    wins. ``venues`` maps a venue's name to its settings class, read the same way; ``brokers`` are
    the names MARKETFEED_BROKER may take; ``pg_conn_str_problems`` checks PG_CONN_STR (the store
    knows what libpq accepts). Every problem is raised at once, in one ``ConfigError``."""
    source = load_env(env, env_file, required=env_file_required)
    candles = read(CandleSettings, source)
    try:
        parse_intervals(candles.intervals)
    except ValueError as exc:
        source.problem(f"CANDLE_INTERVALS is invalid: {exc}")
    feed = read(FeedSettings, source)
    if feed.broker is not None and brokers:
        if feed.broker.lower() in brokers:
            feed = replace(feed, broker=feed.broker.lower())
        else:
            source.problem(f"MARKETFEED_BROKER is invalid: {feed.broker!r}; use one of {', '.join(brokers)}")
    storage = read(StorageSettings, source)
    if storage.pg_conn_str and pg_conn_str_problems is not None:
        for problem in pg_conn_str_problems(storage.pg_conn_str):
            source.problem(problem)
    settings = Settings(
        storage=storage,
        candles=candles,
        feed=feed,
        log=read(LogSettings, source),
        metrics=read(MetricsSettings, source),
        http=HttpSettings.from_env(source),
        mqtt=MqttSettings.from_env(source),
        nats=NatsSettings.from_env(source),
        calendar=_calendar_settings(source, env_file),
        backfill=read(BackfillSettings, source),
        universe=read(UniverseSettings, source),
        ha=HaSettings.from_env(source, storage),
        archive=read(ArchiveSettings, source),
        venues={name: read(cls, source) for name, cls in (venues or {}).items()},
    )
    source.raise_problems()
    return settings
