"""The metrics endpoint against a real Service in this process: the simulator or the fake Kite server
feeding a SQLite store, scraped over HTTP and parsed with prometheus_client's own parser."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence

import pytest
from prometheus_client.parser import text_string_to_metric_families

from brokers.kite.client import KiteBroker
from brokers.sim.client import SimBroker, SimClock
from candles.model import Candle, parse_intervals
from core.ticks import Instrument
from ops.http import HttpServer
from ops.metrics import MetricsError
from pipeline.service import Service
from storage.base import StoreUnavailable
from storage.spool import Spool
from storage.sqlite import SQLiteStore
from testkit.fakes.kite_server import DEFAULT_INSTRUMENTS, KiteFakeServer
from testkit.waiting import wait_until
from version import __version__

START = 1_795_491_900.0  # 2026-11-24 09:15 IST
SPEED = 600.0  # a simulated minute every 0.1 wall seconds
SYMBOLS = [Instrument("NSE", "INFY"), Instrument("NSE", "TCS")]
KITE_INSTRUMENTS = {i.token: Instrument(i.exchange, i.tradingsymbol, i.token) for i in DEFAULT_INSTRUMENTS}
INFY = 408065


class SwitchableStore(SQLiteStore):
    """A SQLite store that can be made unreachable, as a database server going away would be."""

    reachable = True

    def upsert(self, candles: Sequence[Candle]) -> None:
        if not self.reachable:
            raise StoreUnavailable(f"{self.description}: connection refused")
        super().upsert(candles)




def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics as {(sample name, sorted labels): value}."""
    status, body = get(port, "/metrics")
    assert status == 200, body
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"{name}{labels} not scraped; have {sorted(k for k in samples if k[0].startswith('marketfeed'))}"
    return samples[key]


def healthz(port: int) -> tuple[int, dict]:
    status, body = get(port, "/healthz")
    return status, json.loads(body)


@pytest.fixture
def sim_daemon(tmp_path) -> Iterator[tuple[Service, SwitchableStore, HttpServer]]:
    store = SwitchableStore(tmp_path / "candles.db")
    store.migrate()
    clock = SimClock(START, SPEED)
    broker = SimBroker(clock, seed=1, tick_rate=2.0)
    service = Service(broker, store, SYMBOLS, parse_intervals("1m"), clock=clock, spool=Spool(tmp_path / "spool"))
    metrics = HttpServer(service.health, port=0)
    service.start()
    metrics.start()
    try:
        wait_until(lambda: service.stats.ticks > 0, 10.0, "the simulator's first ticks")  # the pipeline is looping
        yield service, store, metrics
    finally:
        metrics.stop()
        store.reachable = True
        service.stop()
        store.close()


@pytest.fixture
def kite_daemon(tmp_path) -> Iterator[tuple[KiteFakeServer, Service, HttpServer]]:
    store = SQLiteStore(tmp_path / "candles.db")
    store.migrate()
    with KiteFakeServer(heartbeat_interval=0.3) as server:
        broker = KiteBroker(
            server.api_key, server.access_token,
            ws_url=server.ws_url, instruments=KITE_INSTRUMENTS, backoff_initial=0.05, backoff_max=0.5,
        )
        service = Service(broker, store, [KITE_INSTRUMENTS[INFY]], parse_intervals("1m"), spool=Spool(tmp_path / "spool"))
        metrics = HttpServer(service.health, port=0)
        service.start()
        metrics.start()
        try:
            server.wait_subscribed([INFY], mode="full")
            yield server, service, metrics
        finally:
            metrics.stop()
            service.stop()
            store.close()


# ---- the simulator into SQLite -------------------------------------------------------------------


def test_tick_counter_grows_between_scrapes(sim_daemon):
    _, _, metrics = sim_daemon
    wait_until(lambda: value(scrape(metrics.port), "marketfeed_ticks_total") > 0, 10.0, "a first tick")
    first = value(scrape(metrics.port), "marketfeed_ticks_total")
    wait_until(lambda: value(scrape(metrics.port), "marketfeed_ticks_total") > first, 10.0, "more ticks")
    assert value(scrape(metrics.port), "marketfeed_last_tick_age_seconds") >= 0


def test_candles_written_after_a_simulated_minute_and_the_store_is_up(sim_daemon):
    _, _, metrics = sim_daemon
    wait_until(lambda: value(scrape(metrics.port), "marketfeed_candles_written_total") > 0, 10.0, "a candle written")
    samples = scrape(metrics.port)
    assert value(samples, "marketfeed_store_up") == 1
    assert value(samples, "marketfeed_store_errors_total") == 0
    assert value(samples, "marketfeed_spool_depth") >= 0


def test_connection_gauge_feed_problem_and_build_info_describe_a_running_simulator(sim_daemon):
    _, _, metrics = sim_daemon
    samples = scrape(metrics.port)
    assert value(samples, "marketfeed_connection_up", connection="1") == 1
    assert value(samples, "marketfeed_feed_problem") == 0
    assert value(samples, "marketfeed_reauths_total") == 0  # the simulator never renews a session
    assert value(samples, "marketfeed_late_ticks_total") >= 0
    assert value(samples, "marketfeed_dropped_ticks_total") >= 0
    assert value(samples, "marketfeed_build_info", version=__version__, broker="sim") == 1


def test_healthz_is_200_while_feed_and_store_are_healthy(sim_daemon):
    _, _, metrics = sim_daemon
    status, body = healthz(metrics.port)
    assert status == 200, body
    assert body == {"status": "ok", "state": "running", "problems": []}


def test_healthz_is_503_naming_the_feed_connection_once_the_broker_disconnects(sim_daemon):
    service, _, metrics = sim_daemon
    service.broker.disconnect()
    status, body = healthz(metrics.port)
    assert status == 503
    assert (body["status"], body["state"]) == ("unhealthy", "degraded")
    assert body["problems"] == ["feed connection 1 down"]
    assert value(scrape(metrics.port), "marketfeed_connection_up", connection="1") == 0
    assert value(scrape(metrics.port), "marketfeed_state", state="degraded") == 1
    assert value(scrape(metrics.port), "marketfeed_state", state="running") == 0


def test_healthz_is_503_naming_the_store_while_it_is_unreachable_and_200_once_it_is_back(sim_daemon):
    service, store, metrics = sim_daemon
    store.reachable = False
    wait_until(lambda: service.writer.stats.store_down, 10.0, "a failed write")
    status, body = healthz(metrics.port)
    assert status == 503
    assert body["problems"] == [f"store {store.description} unreachable"]
    samples = scrape(metrics.port)
    assert value(samples, "marketfeed_store_up") == 0
    assert value(samples, "marketfeed_store_errors_total") >= 1
    store.reachable = True
    wait_until(lambda: healthz(metrics.port)[0] == 200, 10.0, "recovery once the store is reachable")
    assert value(scrape(metrics.port), "marketfeed_store_up") == 1


def test_healthz_asks_the_service_whether_its_pipeline_is_alive_when_it_can(sim_daemon):
    service, _, metrics = sim_daemon
    asked: list[float] = []

    def pipeline_alive(max_age: float) -> bool:
        asked.append(max_age)
        return False

    service.pipeline_alive = pipeline_alive  # a pipeline thread that stopped looping
    status, body = healthz(metrics.port)
    assert status == 503
    assert body["problems"] == ["pipeline thread stopped or stuck for more than 10 s"]
    assert asked == [service.pipeline_max_age]


def test_a_failing_scrape_answers_500_and_the_server_keeps_serving(sim_daemon, caplog):
    service, _, metrics = sim_daemon

    def broken() -> int:
        raise RuntimeError("simulated collector failure")

    service.spool_depth = broken
    status, body = get(metrics.port, "/metrics")
    assert status == 500
    assert b"see the daemon's log" in body
    assert "simulated collector failure" in caplog.text
    del service.spool_depth
    assert value(scrape(metrics.port), "marketfeed_connection_up", connection="1") == 1


def test_other_paths_are_404(sim_daemon):
    _, _, metrics = sim_daemon
    status, _ = get(metrics.port, "/")
    assert status == 404
    status, _ = get(metrics.port, "/metrics/extra")
    assert status == 404


def test_metrics_can_be_asked_for_in_openmetrics_format(sim_daemon):
    _, _, metrics = sim_daemon
    request = urllib.request.Request(
        f"http://127.0.0.1:{metrics.port}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        assert resp.read().rstrip().endswith(b"# EOF")


def test_a_port_already_in_use_is_refused_with_the_address(sim_daemon):
    service, _, _ = sim_daemon
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsError, match=f"cannot serve HTTP on 127.0.0.1:{port}"):
            HttpServer(service.health, port=port).start()


# ---- Kite against the fake server -----------------------------------------------------------------


def test_malformed_kite_frame_is_counted_by_kind(kite_daemon):
    server, _, metrics = kite_daemon
    server.send_raw(b"\x00\x01\x00\x05abc")  # one packet of 5 bytes announced, 3 bytes sent
    wait_until(
        lambda: scrape(metrics.port).get(("marketfeed_malformed_frames_total", (("kind", "packet_overrun"),))) == 1,
        10.0,
        "the malformed frame to be counted",
    )


def test_kite_reconnect_after_a_dropped_connection_shows_in_its_reconnects_counter(kite_daemon):
    server, service, metrics = kite_daemon
    samples = scrape(metrics.port)
    assert value(samples, "marketfeed_connection_up", connection="1") == 1
    assert value(samples, "marketfeed_connection_reconnects_total", connection="1") == 0
    assert value(samples, "marketfeed_connection_last_frame_age_seconds", connection="1") >= 0
    server.drop_all()
    wait_until(
        lambda: value(scrape(metrics.port), "marketfeed_connection_reconnects_total", connection="1") == 1,
        10.0,
        "the reconnect to be counted",
    )
    wait_until(service.broker.is_connected, 10.0, "the connection to be up again")
    assert healthz(metrics.port)[0] == 200


@pytest.mark.slow
def test_the_daemon_serves_metrics_and_health_on_metrics_port_and_refuses_a_busy_one(tmp_path):
    from testkit.cli import run_main, start_main
    from testkit.mosquitto import free_port

    port = free_port()
    proc = start_main("--symbols", "NSE:INFY", "--sim-speed", "30", "--metrics-port", str(port), cwd=tmp_path)
    try:
        deadline = time.monotonic() + 20
        body = ""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
                    body = reply.read().decode()
                # The metric names are there from the first scrape; healthy means connected.
                if 'marketfeed_connection_up{connection="1"} 1.0' in body:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
            assert reply.status == 200
        assert "marketfeed_ticks_total" in body and 'marketfeed_connection_up{connection="1"} 1.0' in body
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert err.count(f"http on http://127.0.0.1:{port}: /healthz, /metrics") == 1, err  # said once, by the server that serves them
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        refused = run_main("--symbols", "NSE:INFY", "--metrics-port", str(taken), "--duration", "1", cwd=tmp_path)
    assert refused.returncode == 2
    assert "METRICS_PORT / --metrics-port" in refused.stderr


# ---- MQTT that cannot connect --------------------------------------------------------------------


def test_mqtt_to_a_closed_port_is_warned_about_at_once_and_noted_while_the_pipeline_runs(tmp_path, caplog):
    from config.settings import MqttSettings
    from publishers.mqtt import MqttPublisher
    from testkit.mosquitto import free_port

    port = free_port()  # nothing listens there
    store = SQLiteStore(tmp_path / "candles.db")
    store.migrate()
    clock = SimClock(START, SPEED)
    publisher = MqttPublisher(MqttSettings(host="127.0.0.1", port=port, client_id="t", service_id="t"))
    service = Service(SimBroker(clock, seed=1, tick_rate=2.0), store, SYMBOLS, parse_intervals("1m"),
                      clock=clock, spool=Spool(tmp_path / "spool"), publishers=[publisher])  # fmt: skip
    metrics = HttpServer(service.health, port=0)
    service.start()
    metrics.start()
    try:
        where = f"127.0.0.1:{port}"
        warned = lambda: [r for r in caplog.records if r.levelname == "WARNING" and where in r.getMessage()]  # noqa: E731
        wait_until(warned, 10.0, "a warning naming the unreachable MQTT broker")  # paho tries at once, then every 1-30 s
        assert "Connection refused" in warned()[0].getMessage()
        wait_until(lambda: service.stats.ticks > 0, 10.0, "ticks")
        health = service.health()
        assert health.state == "running" and health.problems == []
        assert len(health.notes) == 1 and where in health.notes[0] and "Connection refused" in health.notes[0]
        assert health.heartbeat(0.0)["notes"] == list(health.notes)
        status, body = healthz(metrics.port)
        assert status == 200 and body["status"] == "ok" and body["notes"] == list(health.notes)
    finally:
        metrics.stop()
        service.stop()
        store.close()
    assert len(warned()) == 1  # repeated at most every few minutes, not at every retry
