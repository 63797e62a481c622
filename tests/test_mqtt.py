"""MQTT against a real Mosquitto the test starts: availability with last will, heartbeat,
per-feed status, candle events, and a broker that is away."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from brokers.sim.client import read_tape
from candles.model import parse_intervals
from storage.sqlite import SQLiteStore
from testkit.cli import main_env, run_main, start_main
from testkit.mosquitto import MosquittoServer, free_port
from testkit.reference import candle_to_dict, reference_candles
from testkit.waiting import wait_until

pytestmark = pytest.mark.slow  # every test runs main.py

SIM_START = "2026-11-24T09:15:00+05:30"
SERVICE = "mf-test"


class Watcher:
    """A paho subscriber collecting (topic, payload, retained) from the test's broker."""

    def __init__(self, port: int, topic: str = "marketfeed/#") -> None:
        self.messages: list[tuple[str, str, bool]] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"watcher-{time.monotonic_ns()}")
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect_async("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert self._subscribed.wait(10), "the watcher could not subscribe"

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, msg.payload.decode(), bool(msg.retain)))
            self._cond.notify_all()

    def wait_for(self, pred: Callable[[list[tuple[str, str, bool]]], bool], timeout: float = 15.0, what: str = "") -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: pred(self.messages), timeout):
                raise AssertionError(f"{what or 'expected messages'} not seen within {timeout} s; got {self.messages[-20:]}")

    def payloads(self, topic: str) -> list[str]:
        with self._cond:
            return [p for t, p, _ in self.messages if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def mqtt_env(port: int, **extra: str) -> dict[str, str]:
    return main_env(
        MQTT_HOST="127.0.0.1", MQTT_PORT=str(port), MQTT_CLIENT_ID=SERVICE, MQTT_HEARTBEAT_SECONDS="1", **extra
    )


def sim_args(*extra: str) -> list[str]:
    return ["--broker", "sim", "--symbols", "NSE:INFY", "NSE:TCS", "--seed", "3", "--sim-speed", "60",
            "--sim-start", SIM_START, *extra]  # fmt: skip


STATUS = f"marketfeed/{SERVICE}/status"
HEARTBEAT = f"marketfeed/{SERVICE}/heartbeat"


def test_last_will_says_offline_when_the_daemon_is_killed(tmp_path, mosquitto: MosquittoServer):
    watcher = Watcher(mosquitto.port)
    proc = start_main(*sim_args(), cwd=tmp_path, env=mqtt_env(mosquitto.port))
    try:
        watcher.wait_for(lambda m: (STATUS, "online", False) in m, what="online")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        watcher.wait_for(lambda m: m[-1][:2] == (STATUS, "offline") or (STATUS, "offline", False) in m, what="the will")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
        watcher.close()
    late = Watcher(mosquitto.port)  # a newcomer sees the retained state
    try:
        late.wait_for(lambda m: (STATUS, "offline", True) in m, what="retained offline")
    finally:
        late.close()


def test_status_returns_to_online_after_the_broker_restarts_and_shutdown_says_offline(tmp_path, mosquitto: MosquittoServer):
    proc = start_main(*sim_args(), cwd=tmp_path, env=mqtt_env(mosquitto.port))
    try:
        watcher = Watcher(mosquitto.port)
        watcher.wait_for(lambda m: (STATUS, "online", True) in m or (STATUS, "online", False) in m, what="online")
        watcher.close()
        mosquitto.stop()  # no persistence: the retained status is gone with it
        time.sleep(1.0)
        mosquitto.start()
        again = Watcher(mosquitto.port)
        again.wait_for(lambda m: any(t == STATUS and p == "online" for t, p, _ in m), timeout=40, what="online after restart")
        again.wait_for(lambda m: any(t == HEARTBEAT for t, _, _ in m), what="heartbeats after the restart")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        again.wait_for(lambda m: again.payloads(STATUS)[-1:] == ["offline"], what="offline")
        assert again.payloads(f"marketfeed/{SERVICE}/feed/1")[-1] == "down"
        again.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "mqtt: lost the connection" in err and err.count("mqtt: connected to") >= 2


def test_heartbeat_reports_the_daemon_state(tmp_path, mosquitto: MosquittoServer):
    watcher = Watcher(mosquitto.port)
    proc = start_main(*sim_args(), cwd=tmp_path, env=mqtt_env(mosquitto.port))
    try:
        watcher.wait_for(lambda m: sum(t == HEARTBEAT for t, _, _ in m) >= 3, what="three heartbeats")
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        watcher.close()
    beats = [json.loads(p) for p in watcher.payloads(HEARTBEAT)]
    beat = beats[2]
    assert beat["state"] == "running" and beat["problems"] == []
    assert beat["broker"] == "sim" and beat["symbols"] == 2
    assert (beat["connections_up"], beat["connections_total"]) == (1, 1)
    assert beat["ticks_per_s"] > 10  # 2 symbols, 1 tick per simulated second each, at 60x
    assert beat["ticks"] > beats[0]["ticks"]
    assert 0 <= beat["last_tick_age_s"] < 2
    assert beat["uptime_s"] > beats[0]["uptime_s"]
    assert beat["spool_depth"] >= 0 and beat["candles_written"] >= 0
    assert beat["version"]
    assert watcher.payloads(f"marketfeed/{SERVICE}/feed/1")[0] == "up"


def test_candle_events_match_the_stored_candles(tmp_path, mosquitto: MosquittoServer):
    watcher = Watcher(mosquitto.port, "marketfeed/candles/#")
    env = mqtt_env(mosquitto.port, MQTT_PUBLISH_CANDLES="true")
    proc = run_main(*sim_args("--intervals", "1m,5m", "--duration", "8"), cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    time.sleep(0.5)
    watcher.close()
    events: dict[tuple, dict] = {}
    for topic, payload, _ in watcher.messages:
        body = json.loads(payload)
        _, _, interval, exchange, symbol = topic.split("/")
        assert (interval, exchange, symbol) == (body["interval"], body["exchange"], body["symbol"])
        events[(exchange, symbol, interval, body["bucket"])] = body  # the last event of a candle is its stored state
    store = SQLiteStore(tmp_path / "data" / "marketfeed.db")
    try:
        stored = {}
        for symbol in ("INFY", "TCS"):
            for iv in ("1m", "5m"):
                for c in store.latest("NSE", symbol, iv, limit=1000):
                    stored[(c.exchange, c.symbol, c.interval, c.bucket.isoformat())] = c
    finally:
        store.close()
    assert len(stored) >= 10
    assert set(events) == set(stored)
    for key, candle in stored.items():
        body = events[key]
        assert (Decimal(body["open"]), Decimal(body["high"]), Decimal(body["low"]), Decimal(body["close"])) == (
            candle.open, candle.high, candle.low, candle.close,
        )  # fmt: skip
        assert (body["volume"], body["tick_count"], body["final"], body["source"]) == (
            candle.volume, candle.tick_count, candle.final, candle.source,
        )  # fmt: skip


def test_a_broker_that_is_down_never_blocks_ticks_or_candles(tmp_path):
    port = free_port()  # nothing listens here for the first part of the run
    tape = tmp_path / "tape.jsonl"
    proc = start_main(
        *sim_args("--intervals", "1m", "--sim-tape", str(tape)), cwd=tmp_path,
        env=mqtt_env(port, MQTT_PUBLISH_CANDLES="true", STATUS_INTERVAL_SECONDS="1"),
    )  # fmt: skip
    broker = MosquittoServer(port)
    try:
        wait_until(lambda: tape.exists() and tape.stat().st_size > 0, 30, "the simulator streaming")
        time.sleep(5)  # 5 simulated minutes with MQTT away, counted from the first tick (a loaded start is slow)
        broker.start()
        watcher = Watcher(port)
        watcher.wait_for(lambda m: any(t == STATUS and p == "online" for t, p, _ in m), timeout=40, what="online once it is up")
        watcher.close()
        broker.stop()
        time.sleep(3)
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        _, err = proc.communicate(timeout=30)
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        broker.cleanup()
    assert proc.returncode == 0, err
    rates = [float(line.split("status: ")[1].split(" ticks/s")[0]) for line in err.splitlines() if "status: " in line]
    assert len(rates) >= 8 and min(rates[1:-1]) > 10, rates  # the tick rate never stalled while MQTT was away
    store = SQLiteStore(tmp_path / "data" / "marketfeed.db")
    try:
        got = {}
        for symbol in ("INFY", "TCS"):
            for c in store.latest("NSE", symbol, "1m", limit=1000):
                key, value = candle_to_dict(c)
                got[key] = value
    finally:
        store.close()
    assert got == reference_candles(read_tape(tape), parse_intervals("1m"))


def test_test_mqtt_reads_back_its_message_and_fails_clearly_without_a_broker(tmp_path, mosquitto: MosquittoServer):
    ok = run_main("--test-mqtt", cwd=tmp_path, env=mqtt_env(mosquitto.port))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "published and read back" in ok.stdout and ok.stdout.splitlines()[-1].split() == ["result", "OK"]
    down = run_main("--test-mqtt", cwd=tmp_path, env=mqtt_env(free_port()))
    assert down.returncode == 1
    assert "cannot connect to mqtt://127.0.0.1:" in down.stdout and "check MQTT_HOST" in down.stdout
    off = run_main("--test-mqtt", cwd=tmp_path, env=main_env())
    assert off.returncode == 1 and "MQTT_HOST is not set" in off.stdout


def test_mqtt_password_never_appears_in_logs_or_reports(tmp_path, mosquitto: MosquittoServer):
    secret = "s3cret-mqtt-passw0rd"
    proc = run_main(
        *sim_args("--duration", "2", "--log-level", "DEBUG"), cwd=tmp_path,
        env=mqtt_env(mosquitto.port, MQTT_USERNAME="user", MQTT_PASSWORD=secret),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    check = run_main("--test-mqtt", cwd=tmp_path, env=mqtt_env(mosquitto.port, MQTT_USERNAME="user", MQTT_PASSWORD=secret))
    assert secret not in proc.stdout + proc.stderr + check.stdout + check.stderr
