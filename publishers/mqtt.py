"""MQTT for operators and downstream consumers (paho-mqtt 2.x).

Topics, under ``<prefix>/<service>/``:

- ``status`` — ``online`` / ``offline``, retained, QoS 1. ``offline`` is the last will (the broker
  publishes it when the daemon dies without saying goodbye); ``online`` is published after every
  (re)connect; ``offline`` is published explicitly on a clean shutdown, whose clean disconnect
  suppresses the will.
- ``heartbeat`` — JSON every ``heartbeat_seconds``: state, uptime, feed, connections, symbols,
  ticks/s, last tick age, candles written, spool depth, version (QoS 0: a missed one is stale).
- ``feed/<connection>`` — ``up`` / ``down``, retained, QoS 1, published when it changes.

and, with ``publish_candles``, every stored candle on ``<prefix>/candles/<interval>/<EXCHANGE>/<SYMBOL>``
(QoS 1, JSON). MQTT never blocks the tick path: paho's network thread does the I/O and its own
reconnect (``reconnect_delay_set``); while the broker is away, QoS 1 messages wait in paho's
queue, bounded by ``queue_limit`` (beyond it they are dropped and counted).

A broker that cannot be reached (connection refused, a name that does not resolve, a TLS or login
refusal) is said out loud: a warning naming the address and the error at the first failed attempt,
repeated at most every ``WARN_EVERY_S`` while it lasts, an info line once connected; meanwhile
``problem`` says it, which the daemon's health shows as a note (MQTT never degrades the pipeline).
"""

from __future__ import annotations

import json
import logging
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import paho.mqtt.client as mqtt

from candles.model import Candle
from config.settings import MqttSettings
from core.ist import IST
from pipeline.health import Health

log = logging.getLogger(__name__)

_QUEUE_LIMIT = 10_000
_FEED_POLL_S = 1.0  # how often connection states are compared for feed/<connection> changes
WARN_EVERY_S = 300.0  # how often a broker that stays unreachable is warned about again


def make_client(config: MqttSettings, client_id: str | None = None) -> mqtt.Client:
    """A paho client with the config's credentials and TLS (no callbacks, not connected)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or config.client_id, clean_session=True)
    if config.username:
        client.username_pw_set(config.username, config.password)
    if config.tls:
        client.tls_set(ca_certs=config.ca_file, cert_reqs=ssl.CERT_REQUIRED)
    return client


def candle_topic(prefix: str, candle: Candle) -> str:
    return f"{prefix}/candles/{candle.interval}/{candle.exchange}/{candle.symbol}"


def candle_json(candle: Candle) -> str:
    """Prices as strings: exact decimals survive any JSON parser."""
    return json.dumps(
        {
            "exchange": candle.exchange,
            "symbol": candle.symbol,
            "interval": candle.interval,
            "bucket": candle.bucket.astimezone(IST).isoformat(),
            "open": str(candle.open),
            "high": str(candle.high),
            "low": str(candle.low),
            "close": str(candle.close),
            "volume": candle.volume,
            "oi": candle.oi,
            "tick_count": candle.tick_count,
            "first_tick": candle.first_tick.isoformat() if candle.first_tick else None,
            "last_tick": candle.last_tick.isoformat() if candle.last_tick else None,
            "final": candle.final,
            "source": candle.source,
        },
        separators=(",", ":"),
    )


@dataclass(slots=True)
class MqttStats:
    connects: int = 0
    published: int = 0
    dropped: int = 0  # candle events refused by a full queue
    connected: bool = False


class MqttPublisher:
    """Owns one paho client and a heartbeat thread.

    ``start`` is given the daemon's health source; it is read on the heartbeat thread, never on
    the tick path.
    """

    def __init__(self, config: MqttSettings, *, queue_limit: int = _QUEUE_LIMIT) -> None:
        self.config = config
        self.health: Callable[[], Health] | None = None
        self._beat_mark = (time.monotonic(), 0)
        self.stats = MqttStats()
        self.status_topic = f"{config.base}/status"
        self.heartbeat_topic = f"{config.base}/heartbeat"
        self._feed_state: dict[str, bool] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._problem: str | None = None
        self._warned_at: float | None = None  # monotonic time of the last unreachable-broker warning
        client = make_client(config)
        client.will_set(self.status_topic, "offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.max_queued_messages_set(queue_limit)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        self.client = client

    def __repr__(self) -> str:
        return f"MqttPublisher({self.config.where}, topics={self.config.base}/...)"

    # ---------------------------------------------------------------- lifecycle

    def start(self, health: Callable[[], Health]) -> None:
        self.health = health
        self._beat_mark = (time.monotonic(), 0)  # (when, ticks) of the previous heartbeat: its rate's window
        self.client.connect_async(self.config.host, self.config.port, keepalive=self.config.keepalive)
        self.client.loop_start()  # paho's thread: network I/O and reconnects, first connect included
        self._thread = threading.Thread(target=self._run, name="mqtt-heartbeat", daemon=True)
        self._thread.start()
        log.info("mqtt: publishing to %s under %s/", self.config.where, self.config.base)

    def stop(self, timeout: float = 3.0) -> None:
        """Publish ``offline`` (retained), disconnect cleanly (no will), stop paho's thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.stats.connected:
            for conn, up in sorted(self._feed_state.items()):
                if up:
                    self._publish(f"{self.config.base}/feed/{conn}", "down", qos=1, retain=True)
            info = self._publish(self.status_topic, "offline", qos=1, retain=True)
            if info is not None:
                try:
                    info.wait_for_publish(timeout)
                except (RuntimeError, ValueError) as exc:  # not queued: the broker went away meanwhile
                    log.warning("mqtt: offline status not delivered: %s", exc)
        self.client.disconnect()
        self.client.loop_stop()

    @property
    def problem(self) -> str | None:
        """Why MQTT is not connected (the broker's address and the error), None while it is."""
        return self._problem

    def _cannot_connect(self, error: str) -> None:
        self._problem = f"mqtt: cannot connect to {self.config.where}: {error}"
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            log.warning("%s; candles are still stored, paho keeps trying (check MQTT_HOST, MQTT_PORT, MQTT_TLS, "
                        "MQTT_USERNAME)", self._problem, extra={"event": "mqtt_unreachable"})  # fmt: skip

    # ---------------------------------------------------------------- callbacks (paho's thread)

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        # paho calls this from its ``except OSError`` around the connect: the error is the one in hand
        exc = sys.exc_info()[1]
        if isinstance(exc, ssl.SSLError):
            error = f"TLS failed ({exc.reason or exc})"
        elif isinstance(exc, OSError):
            error = exc.strerror or str(exc) or type(exc).__name__
        else:
            error = "the connection failed"
        self._cannot_connect(error)

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self._cannot_connect(f"the broker refused the connection ({reason})")
            return
        self.stats.connects += 1
        self.stats.connected = True
        self._problem = None
        self._warned_at = None
        log.info("mqtt: connected to %s", self.config.where)
        client.publish(self.status_topic, "online", qos=1, retain=True)
        with self._lock:
            states = dict(self._feed_state)
        for conn, up in states.items():
            client.publish(f"{self.config.base}/feed/{conn}", "up" if up else "down", qos=1, retain=True)

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        was = self.stats.connected
        self.stats.connected = False
        if was and not self._stop.is_set():
            self._problem = f"mqtt: lost the connection to {self.config.where} ({reason}); reconnecting"
            log.warning("mqtt: lost the connection to %s (%s); paho reconnects", self.config.where, reason)

    # ---------------------------------------------------------------- publishing

    def _publish(self, topic: str, payload: str, *, qos: int = 0, retain: bool = False) -> mqtt.MQTTMessageInfo | None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            self.stats.dropped += 1
            return None
        if info.rc == mqtt.MQTT_ERR_SUCCESS or (qos > 0 and info.rc == mqtt.MQTT_ERR_NO_CONN):
            self.stats.published += 1  # QoS 1 without a connection: queued, sent after the reconnect
            return info
        return None

    def publish_candles(self, candles: Iterable[Candle]) -> None:
        """Candle events (called by the store writer once the store accepted them)."""
        if not self.config.publish_candles:
            return
        prefix = self.config.prefix
        for candle in candles:
            self._publish(candle_topic(prefix, candle), candle_json(candle), qos=1)

    def _run(self) -> None:
        next_beat = time.monotonic()
        assert self.health is not None  # start() sets it
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                health = self.health()
            except Exception:  # noqa: BLE001 - a broken health source must not stop the heartbeat thread
                log.exception("mqtt: could not read the daemon's health")
                health = None
            if health is not None:
                self._publish_feeds(health)
                if now >= next_beat:
                    next_beat = now + self.config.heartbeat_seconds
                    self._heartbeat(health, now)
            self._stop.wait(min(_FEED_POLL_S, max(0.05, next_beat - time.monotonic())))

    def _heartbeat(self, health: Health, now: float) -> None:
        mark_time, mark_ticks = self._beat_mark
        self._beat_mark = (now, health.ticks)
        body = health.heartbeat((health.ticks - mark_ticks) / max(now - mark_time, 1e-9))
        if self.stats.connected:  # QoS 0: a heartbeat held back until a reconnect would be stale
            self._publish(self.heartbeat_topic, json.dumps(body, separators=(",", ":")))

    def _publish_feeds(self, health: Health) -> None:
        current = {str(c.id): c.connected for c in health.connections}
        with self._lock:
            changed = {k: v for k, v in current.items() if self._feed_state.get(k) != v}
            self._feed_state.update(changed)
        for conn, up in changed.items():
            self._publish(f"{self.config.base}/feed/{conn}", "up" if up else "down", qos=1, retain=True)


def check(config: MqttSettings, timeout: float = 10.0) -> tuple[bool, str]:
    """Connect, subscribe to a private test topic, publish to it and read it back."""
    topic = f"{config.base}/selftest/{int(time.time() * 1000)}"
    payload = f"marketfeed self-test {datetime.now(IST).isoformat()}"
    got = threading.Event()
    result: dict[str, Any] = {}
    client = make_client(config, client_id=f"{config.client_id}-selftest")

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        result["connect"] = reason
        if not reason.is_failure:
            c.subscribe(topic, qos=1)

    def on_subscribe(c: mqtt.Client, _u: Any, _mid: Any, _codes: Any, _p: Any) -> None:
        c.publish(topic, payload, qos=1)

    def on_message(_c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        if message.payload.decode(errors="replace") == payload:
            got.set()

    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    started = time.perf_counter()
    try:
        client.connect(config.host, config.port, keepalive=config.keepalive)
    except (OSError, ssl.SSLError) as exc:
        return False, f"cannot connect to {config.where}: {exc.strerror or exc}; check MQTT_HOST, MQTT_PORT and MQTT_TLS"
    client.loop_start()
    try:
        ok = got.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    reason = result.get("connect")
    if reason is not None and reason.is_failure:
        return False, f"{config.where} refused the connection: {reason}; check MQTT_USERNAME / MQTT_PASSWORD"
    if not ok:
        return False, f"published to {topic} but did not read it back within {timeout:.0f} s: check the broker's ACLs"
    return True, f"published and read back {topic} in {(time.perf_counter() - started) * 1000:.0f} ms"
