"""Settings: read once from the environment (and `.env`), frozen, validated per broker.

Every problem is reported by the name of the variable to fix; secrets never appear in a repr.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import dotenv_values

from candles.model import parse_intervals

DEFAULT_SQLITE_PATH = "data/marketfeed.db"
BROKERS = ("sim", "kite", "kotak", "kotak_neo")
_SECRETS = frozenset(
    {
        "pg_conn_str",
        "kite_api_secret",
        "kite_access_token",
        "kotak_consumer_key",
        "kotak_mpin",
        "kotak_totp_secret",
        "kotak_mobile_number",
        "mqtt_password",
    }
)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(Exception):
    """A setting is missing or invalid; the message names every variable to fix."""


@dataclass(frozen=True, slots=True, repr=False)
class Settings:
    # storage
    pg_conn_str: str | None = None
    sqlite_path: str = DEFAULT_SQLITE_PATH
    data_dir: str = "data"
    # candles
    intervals: str = "1m"
    grace_seconds: float = 2.0
    emit_empty_candles: bool = False
    # operations
    status_interval_seconds: float = 30.0
    feed_stall_seconds: float | None = None  # None: the broker's own default
    log_level: str = "INFO"
    log_format: str = "text"
    # Kite
    kite_api_key: str | None = None
    kite_api_secret: str | None = None
    kite_access_token: str | None = None
    kite_token_file: str = "data/kite_access_token.json"
    kite_mode: str = "full"
    kite_ws_url: str = "wss://ws.kite.trade"
    kite_api_url: str = "https://api.kite.trade"
    # Kotak Neo
    kotak_consumer_key: str | None = None
    kotak_mobile_number: str | None = None
    kotak_ucc: str | None = None
    kotak_mpin: str | None = None
    kotak_totp_secret: str | None = None
    kotak_login_url: str = "https://mis.kotaksecurities.com"
    kotak_feed_url: str | None = None  # None: the feedUrl of the login reply, as in production
    kotak_max_symbols_per_connection: int = 100
    kotak_max_connections: int = 30
    # MQTT (off while mqtt_host is None)
    mqtt_host: str | None = None
    mqtt_port: int = 1883
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    mqtt_tls: bool = False
    mqtt_ca_file: str | None = None
    mqtt_topic_prefix: str = "marketfeed"
    mqtt_client_id: str = "marketfeed"
    mqtt_service_id: str = "marketfeed"
    mqtt_heartbeat_seconds: float = 30.0
    mqtt_publish_candles: bool = False
    # Prometheus endpoint (off while metrics_port is None)
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            shown = "'***'" if f.name in _SECRETS and value else repr(value)
            parts.append(f"{f.name}={shown}")
        return f"Settings({', '.join(parts)})"

    __str__ = __repr__

    def validate(self, broker: str) -> None:
        """Raise one ConfigError listing every variable that ``broker`` needs and lacks."""
        problems: list[str] = []
        if broker not in BROKERS:
            problems.append(f"broker {broker!r} is unknown: use one of {', '.join(BROKERS)}")
        if broker == "kite":
            for name in ("kite_api_key",):
                if not getattr(self, name):
                    problems.append(f"{name.upper()} is missing: set it in .env (your Kite Connect app's API key)")
        if broker in ("kotak", "kotak_neo"):
            needed = {
                "kotak_consumer_key": "the consumer key of your Neo API app",
                "kotak_mobile_number": "the mobile number registered with Kotak, e.g. +919876543210",
                "kotak_ucc": "your client code (UCC)",
                "kotak_mpin": "your 6-digit MPIN",
                "kotak_totp_secret": "the base32 secret shown when you enabled TOTP",
            }
            for name, hint in needed.items():
                if not getattr(self, name):
                    problems.append(f"{name.upper()} is missing: set it in .env ({hint})")
            if self.kotak_mpin and not (self.kotak_mpin.isdigit() and len(self.kotak_mpin) == 6):
                problems.append("KOTAK_MPIN is invalid: it must be exactly 6 digits")
        if problems:
            raise ConfigError("invalid settings:\n  - " + "\n  - ".join(problems))


def _text(env: Mapping[str, str], name: str, default: str | None) -> str | None:
    value = env.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip()


def load_settings(
    env: Mapping[str, str] | None = None, env_file: str | os.PathLike[str] | None = ".env"
) -> Settings:
    """Build settings from ``env`` (default: the process environment) over ``env_file``.

    The environment wins over the file. Type errors are collected and raised together.
    """
    merged: dict[str, str] = {}
    if env_file and Path(env_file).is_file():
        merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    merged.update(os.environ if env is None else env)

    problems: list[str] = []

    def number(name: str, default: float | None, minimum: float) -> float | None:
        raw = _text(merged, name, None)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            problems.append(f"{name} is invalid: {raw!r} is not a number")
            return default
        if value < minimum:
            problems.append(f"{name} is invalid: must be at least {minimum:g}, got {raw}")
        return value

    def flag(name: str, default: bool) -> bool:
        raw = (_text(merged, name, None) or "").lower()
        if raw in _TRUE:
            return True
        if raw in _FALSE:
            return default if raw == "" else False
        problems.append(f"{name} is invalid: {raw!r} is not true/false")
        return default

    intervals = _text(merged, "CANDLE_INTERVALS", "1m") or "1m"
    try:
        parse_intervals(intervals)
    except ValueError as exc:
        problems.append(f"CANDLE_INTERVALS is invalid: {exc}")

    log_format = (_text(merged, "LOG_FORMAT", "text") or "text").lower()
    if log_format not in ("text", "json"):
        problems.append(f"LOG_FORMAT is invalid: {log_format!r}; use text or json")
    log_level = (_text(merged, "LOG_LEVEL", "INFO") or "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        problems.append(f"LOG_LEVEL is invalid: {log_level!r}; use DEBUG, INFO, WARNING or ERROR")

    kite_mode = (_text(merged, "KITE_MODE", "full") or "full").lower()
    if kite_mode not in ("ltp", "quote", "full"):
        problems.append(f"KITE_MODE is invalid: {kite_mode!r}; use ltp, quote or full")

    def url(name: str, default: str | None, schemes: tuple[str, ...]) -> str | None:
        value = _text(merged, name, default)
        if value is None:
            return None
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            problems.append(f"{name} is invalid: {value!r} is not a URL")
            return value
        if parts.scheme not in schemes or not parts.hostname:
            problems.append(f"{name} is invalid: {value!r} must be a {' or '.join(s + '://' for s in schemes)} URL with a host")
        return value

    kite_ws_url = url("KITE_WS_URL", "wss://ws.kite.trade", ("wss", "ws"))
    kite_api_url = url("KITE_API_URL", "https://api.kite.trade", ("https", "http"))
    kotak_login_url = url("KOTAK_LOGIN_URL", "https://mis.kotaksecurities.com", ("https", "http"))
    kotak_feed_url = url("KOTAK_FEED_URL", None, ("wss", "ws", "https", "http"))

    raw_metrics = number("METRICS_PORT", None, 1)
    metrics_port = None if raw_metrics is None else int(raw_metrics)
    if raw_metrics is not None and (raw_metrics != metrics_port or raw_metrics > 65535):
        problems.append(f"METRICS_PORT is invalid: {raw_metrics:g} is not a port number")

    tls = flag("MQTT_TLS", False)
    mqtt_port = number("MQTT_PORT", 8883 if tls else 1883, 1)
    if mqtt_port is not None and (mqtt_port != int(mqtt_port) or mqtt_port > 65535):
        problems.append(f"MQTT_PORT is invalid: {mqtt_port:g} is not a port number")
    client_id = _topic_part(merged, "MQTT_CLIENT_ID", f"marketfeed-{socket.gethostname()}", problems)
    service_id = _topic_part(merged, "MQTT_SERVICE_ID", client_id, problems)
    prefix = _topic_part(merged, "MQTT_TOPIC_PREFIX", "marketfeed", problems)
    if "/" in service_id:
        problems.append(f"MQTT_SERVICE_ID is invalid: {service_id!r} may not contain /")
    ca_file = _text(merged, "MQTT_CA_FILE", None)
    if ca_file and not Path(ca_file).is_file():
        problems.append(f"MQTT_CA_FILE is invalid: {ca_file} is not a readable file")

    settings = Settings(
        pg_conn_str=_text(merged, "PG_CONN_STR", None),
        sqlite_path=_text(merged, "SQLITE_PATH", DEFAULT_SQLITE_PATH) or DEFAULT_SQLITE_PATH,
        data_dir=_text(merged, "DATA_DIR", "data") or "data",
        intervals=intervals,
        grace_seconds=number("CANDLE_GRACE_SECONDS", 2.0, 0.0),
        emit_empty_candles=flag("CANDLE_EMIT_EMPTY", False),
        status_interval_seconds=number("STATUS_INTERVAL_SECONDS", 30.0, 1.0),
        feed_stall_seconds=number("FEED_STALL_SECONDS", None, 0.5),
        log_level=log_level,
        log_format=log_format,
        kite_api_key=_text(merged, "KITE_API_KEY", None),
        kite_api_secret=_text(merged, "KITE_API_SECRET", None),
        kite_access_token=_text(merged, "KITE_ACCESS_TOKEN", None),
        kite_token_file=_text(merged, "KITE_TOKEN_FILE", "data/kite_access_token.json") or "",
        kite_mode=kite_mode,
        kite_ws_url=kite_ws_url or "",
        kite_api_url=kite_api_url or "",
        kotak_consumer_key=_text(merged, "KOTAK_CONSUMER_KEY", None),
        kotak_mobile_number=_text(merged, "KOTAK_MOBILE_NUMBER", None),
        kotak_ucc=_text(merged, "KOTAK_UCC", None),
        kotak_mpin=_text(merged, "KOTAK_MPIN", None),
        kotak_totp_secret=_text(merged, "KOTAK_TOTP_SECRET", None),
        kotak_login_url=kotak_login_url or "",
        kotak_feed_url=kotak_feed_url,
        kotak_max_symbols_per_connection=int(number("KOTAK_MAX_SYMBOLS_PER_CONNECTION", 100, 1) or 100),
        kotak_max_connections=int(number("KOTAK_MAX_CONNECTIONS", 30, 1) or 30),
        mqtt_host=_text(merged, "MQTT_HOST", None),
        mqtt_port=int(mqtt_port or 1883),
        mqtt_username=_text(merged, "MQTT_USERNAME", None),
        mqtt_password=_text(merged, "MQTT_PASSWORD", None),
        mqtt_tls=tls,
        mqtt_ca_file=ca_file,
        mqtt_topic_prefix=prefix,
        mqtt_client_id=client_id,
        mqtt_service_id=service_id,
        mqtt_heartbeat_seconds=number("MQTT_HEARTBEAT_SECONDS", 30.0, 1.0) or 30.0,
        mqtt_publish_candles=flag("MQTT_PUBLISH_CANDLES", False),
        metrics_host=_text(merged, "METRICS_HOST", "127.0.0.1") or "127.0.0.1",
        metrics_port=metrics_port,
    )
    if problems:
        raise ConfigError("invalid settings:\n  - " + "\n  - ".join(problems))
    return settings


def _topic_part(merged: Mapping[str, str], name: str, default: str, problems: list[str]) -> str:
    value = _text(merged, name, default) or default
    if any(c in value for c in "+#") or value.startswith("/") or value.endswith("/"):
        problems.append(f"{name} is invalid: {value!r} may not contain + or # or start or end with /")
    return value
