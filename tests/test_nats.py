"""The NATS JetStream bus (publishers/nats.py) against real nats-server processes (testkit/nats.py)."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
import urllib.error
import urllib.request
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import nats
import nats.errors
import pytest

import publishers.nats
from brokers.sim.client import read_tape
from candles.model import Candle, parse_intervals
from cli.errors import UsageError
from cli.tail import parse_since
from config.settings import NatsSettings
from core.ist import IST
from core.ticks import TickData
from pipeline.health import BusReport
from publishers.nats import (
    CANDLES_STREAM,
    TICKS_STREAM,
    NatsPublisher,
    TickEncoder,
    candle_msg_id,
    stream_names,
    tick_subject,
    token,
    untoken,
)
from storage.sqlite import SQLiteStore
from testkit.cli import main_env, run_main, start_main
from testkit.nats import NatsCluster, NatsServer, stream_messages
from testkit.reference import candle_to_dict, reference_candles
from testkit.waiting import free_port, wait_until

SIM_START = "2026-11-24T09:15:00+05:30"
SYMBOLS = ("NSE:INFY", "NSE:M&M")


def read_stream(url: str, subject: str, *, expect: int | None = None, timeout: float = 1.0) -> list[nats.aio.msg.Msg]:
    """Every message of the stream holding ``subject`` (a JetStream ordered consumer from the start)."""

    async def read() -> list:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            for attempt in range(6):  # a cluster that just lost a node may take a few seconds to answer
                try:
                    sub = await js.subscribe(subject, ordered_consumer=True)
                    break
                except (nats.errors.TimeoutError, asyncio.TimeoutError):
                    if attempt == 5:
                        raise
            got = []
            while expect is None or len(got) < expect:
                try:
                    got.append(await sub.next_msg(timeout))
                except nats.errors.TimeoutError:
                    break
            await sub.unsubscribe()
            return got
        finally:
            await nc.close()

    return asyncio.run(read())


def _candle(**changes: object) -> Candle:
    bucket = datetime(2026, 11, 24, 9, 15, tzinfo=IST)
    candle = Candle(
        "NSE", "NIFTY 50", "1m", bucket, Decimal("100.50"), Decimal("101"), Decimal("99.95"), Decimal("100.05"),
        1200, None, 7, bucket + timedelta(seconds=1), bucket + timedelta(seconds=59), 5000, True, "live",
    )  # fmt: skip
    return replace(candle, **changes)


def _ticks(n: int, symbol: str = "M&M") -> list[TickData]:
    at = datetime(2026, 11, 24, 9, 15, 3, 250_000, tzinfo=IST)
    return [
        TickData("sim", "NSE", symbol, 7, Decimal("1520.05") + i, 5, 1000 + i, None, at + timedelta(seconds=i), at)
        for i in range(n)
    ]


# ---------------------------------------------------------------- subjects and ids


@pytest.mark.parametrize("name", ["INFY", "NIFTY 50", "M&M", "A_B", "BANK.NIFTY", "X*>Y", "BAJAJ-AUTO", "Ä €", "_41"])
def test_a_symbol_becomes_one_subject_token_and_back(name):
    escaped = token(name)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", escaped), escaped
    assert untoken(escaped) == name


def test_tokens_are_readable_for_common_symbols():
    assert tick_subject("marketfeed", "NSE", "NIFTY 50") == "marketfeed.ticks.NSE.NIFTY_2050"
    assert token("M&M") == "M_26M" and token("A_B") == "A_5FB" and token("BAJAJ-AUTO") == "BAJAJ-AUTO"


def test_the_msg_id_is_the_candles_identity_and_content():
    candle = _candle()
    assert candle_msg_id(candle) == candle_msg_id(_candle(open=Decimal("100.5"), tick_count=9))  # scale, not content
    for changed in (
        _candle(close=Decimal("100.10")), _candle(volume=1201), _candle(oi=5), _candle(final=False),
        _candle(source="partial"), _candle(bucket=candle.bucket + timedelta(minutes=1)), _candle(interval="5m"),
        _candle(symbol="NIFTY50"),
    ):  # fmt: skip
        assert candle_msg_id(changed) != candle_msg_id(candle), changed


# ---------------------------------------------------------------- the publisher against a server


def test_the_same_candle_from_two_daemons_is_one_message_and_a_revision_another(nats_server: NatsServer):
    config = NatsSettings(url=nats_server.url)
    first, second = NatsPublisher(config), NatsPublisher(config)  # the two daemons of a pair
    first.start()
    second.start()
    try:
        candle = _candle()
        first.publish_candles([candle])
        second.publish_candles([_candle(tick_count=8)])  # the same candle, seen with one tick less
        wait_until(lambda: first.stats.candles_published + second.stats.candles_published == 2, 10, "both acknowledged")
        revised = _candle(close=Decimal("100.10"), volume=1300)
        first.publish_candles([revised])
        second.publish_candles([revised])
        wait_until(lambda: first.stats.candles_published + second.stats.candles_published == 4, 10, "revisions acked")
    finally:
        first.stop()
        second.stop()
    assert first.stats.candles_duplicate + second.stats.candles_duplicate == 2
    messages = read_stream(nats_server.url, "marketfeed.candles.>")
    assert len(messages) == 2 and stream_messages(nats_server.url, CANDLES_STREAM) == 2
    assert {m.subject for m in messages} == {"marketfeed.candles.1m.NSE.NIFTY_2050"}
    bodies = [json.loads(m.data) for m in messages]
    assert [(b["close"], b["volume"]) for b in bodies] == [("100.05", 1200), ("100.10", 1300)]
    assert bodies[0]["bucket"] == "2026-11-24T09:15:00+05:30" and bodies[0]["bucket_ms"] == 1_795_491_900_000
    assert (bodies[0]["open"], bodies[0]["final"], bodies[0]["source"]) == ("100.50", True, "live")
    assert messages[0].headers["Nats-Msg-Id"] == candle_msg_id(candle)


def test_a_full_queue_drops_the_batch_and_counts_it_without_blocking(nats_server: NatsServer):
    publisher = NatsPublisher(NatsSettings(url=nats_server.url), queue_limit=2)  # not started: nothing drains
    batches = [_ticks(3), _ticks(3, "INFY"), _ticks(4, "TCS")]
    started = time.perf_counter()
    for batch in batches:
        publisher.publish_ticks(batch)
    assert time.perf_counter() - started < 0.05
    assert (publisher.stats.ticks_dropped, publisher.stats.batches_dropped) == (4, 1)
    assert publisher.report().ticks_dropped == 4
    publisher.start()  # the two queued batches go out
    try:
        wait_until(lambda: publisher.stats.ticks_published == 6, 10, "the queued ticks published")
    finally:
        publisher.stop()
    messages = read_stream(nats_server.url, "marketfeed.ticks.>", expect=6)
    assert [m.subject for m in messages] == ["marketfeed.ticks.NSE.M_26M"] * 3 + ["marketfeed.ticks.NSE.INFY"] * 3
    body = json.loads(messages[1].data)
    assert body == {
        "exchange": "NSE", "symbol": "M&M", "token": 7, "price": "1521.05", "qty": 5, "volume": 1001, "oi": None,
        "ts": "2026-11-24T09:15:04.250000+05:30", "ts_ms": 1_795_491_904_250, "received_ms": 1_795_491_903_250,
    }  # fmt: skip
    assert stream_messages(nats_server.url, TICKS_STREAM) == 6


def test_an_unreachable_server_is_a_problem_until_it_answers():
    server = NatsServer()
    publisher = NatsPublisher(NatsSettings(url=server.url))
    publisher.start()
    try:
        wait_until(lambda: "cannot connect" in (publisher.problem or ""), 10, "the problem named")
        assert publisher.problem.startswith(f"nats nats://127.0.0.1:{server.port}: cannot connect")
        publisher.publish_candles([_candle()])
        server.start()
        wait_until(lambda: publisher.problem is None, 20, "connected")
        wait_until(lambda: publisher.stats.candles_published == 1, 10, "the waiting candle published")
    finally:
        publisher.stop()
        server.cleanup()


# ---------------------------------------------------------------- the daemon


def sim_args(*extra: str) -> list[str]:
    return ["--broker", "sim", "--symbols", *SYMBOLS, "--seed", "3", "--sim-speed", "60", "--sim-start", SIM_START,
            *extra]  # fmt: skip


def _stored(tmp_path) -> dict:
    store = SQLiteStore(tmp_path / "data" / "marketfeed.db")
    try:
        got = {}
        for key in SYMBOLS:
            exchange, symbol = key.split(":")
            for iv in ("1m", "5m"):
                for c in store.latest(exchange, symbol, iv, limit=1000):
                    got[(c.exchange, c.symbol, c.interval, c.bucket.isoformat())] = c
        return got
    finally:
        store.close()


@pytest.mark.slow
def test_the_daemon_publishes_every_tick_and_the_stored_candles(tmp_path, nats_server: NatsServer):
    tape = tmp_path / "tape.jsonl"
    env = main_env(NATS_URL=nats_server.url)
    proc = run_main(*sim_args("--intervals", "1m,5m", "--duration", "8", "--sim-tape", str(tape)), cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    ticks = read_tape(tape)
    messages = read_stream(nats_server.url, "marketfeed.ticks.>", expect=len(ticks) + 1)
    assert len(messages) == len(ticks) > 100
    for msg, tick in zip(messages, ticks, strict=True):
        body = json.loads(msg.data)
        assert msg.subject == f"marketfeed.ticks.NSE.{token(tick.symbol)}"
        assert (body["symbol"], Decimal(body["price"]), body["volume"]) == (tick.symbol, tick.last_price, tick.volume)
        assert body["ts_ms"] == round(tick.exchange_ts.timestamp() * 1000)
        assert datetime.fromisoformat(body["ts"]) == tick.exchange_ts and body["ts"].endswith("+05:30")
    events = {}
    for msg in read_stream(nats_server.url, "marketfeed.candles.>"):
        body = json.loads(msg.data)
        _, _, interval, exchange, symbol = msg.subject.split(".")
        assert (interval, exchange, untoken(symbol)) == (body["interval"], body["exchange"], body["symbol"])
        events[(body["exchange"], body["symbol"], body["interval"], body["bucket"])] = body  # the latest is the stored one
    stored = _stored(tmp_path)
    assert len(stored) >= 10 and set(events) == set(stored)
    for key, candle in stored.items():
        body = events[key]
        assert [Decimal(body[f]) for f in ("open", "high", "low", "close")] == [candle.open, candle.high, candle.low,
                                                                              candle.close]  # fmt: skip
        assert (body["volume"], body["oi"], body["final"], body["source"]) == (
            candle.volume, candle.oi, candle.final, candle.source,
        )  # fmt: skip


def _healthz(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
        text = answer.read().decode()
    found = re.search(rf"^{name}(?:_total)? (\S+)$", text, re.M)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


@pytest.mark.slow
def test_a_server_killed_degrades_the_daemon_which_keeps_streaming_and_recovers(tmp_path, nats_server: NatsServer):
    tape = tmp_path / "tape.jsonl"
    port = free_port()
    env = main_env(NATS_URL=nats_server.url, METRICS_PORT=str(port), STATUS_INTERVAL_SECONDS="1")
    proc = start_main(*sim_args("--intervals", "1m", "--sim-tape", str(tape)), cwd=tmp_path, env=env)
    try:
        wait_until(lambda: _up(port) and _healthz(port)[0] == 200, 30, "healthy with NATS")
        wait_until(lambda: _metric(port, "marketfeed_nats_candles_published") >= 2, 20, "candles published")
        nats_server.kill()
        wait_until(lambda: _healthz(port)[0] == 503, 10, "/healthz 503 without NATS")
        status, body = _healthz(port)
        assert body["state"] == "degraded" and any(p.startswith(f"nats {nats_server.url}:") for p in body["problems"])
        assert _metric(port, "marketfeed_nats_connected") == 0
        ticks_before = _metric(port, "marketfeed_ticks")
        time.sleep(4)  # 4 simulated minutes without the bus
        assert _metric(port, "marketfeed_ticks") > ticks_before + 100  # the feed never waited for NATS
        published = _metric(port, "marketfeed_nats_candles_published")
        nats_server.start()
        wait_until(lambda: _healthz(port)[0] == 200, 30, "/healthz 200 after NATS is back")
        wait_until(lambda: _metric(port, "marketfeed_nats_candles_published") >= published + 4, 20, "the waiting candles")
        assert _metric(port, "marketfeed_nats_reconnects") >= 1
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "nats: lost the connection" in err and "nats: reconnected to" in err
    got = {}
    store = SQLiteStore(tmp_path / "data" / "marketfeed.db")
    try:
        for key in SYMBOLS:
            exchange, symbol = key.split(":")
            for c in store.latest(exchange, symbol, "1m", limit=1000):
                k, v = candle_to_dict(c)
                got[k] = v
    finally:
        store.close()
    assert got == reference_candles(read_tape(tape), parse_intervals("1m"))  # storage never noticed the outage
    # every stored candle reached the bus: the ones closed during the outage waited, none twice
    events = {}
    for msg in read_stream(nats_server.url, "marketfeed.candles.>"):
        body = json.loads(msg.data)
        events.setdefault((body["symbol"], body["bucket"]), []).append((body["close"], body["volume"], body["final"]))
    assert len(events) == len(got)
    assert all(len(set(versions)) == len(versions) for versions in events.values()), events


def _up(port: int) -> bool:
    try:
        _healthz(port)
    except OSError:
        return False
    return True


# ---------------------------------------------------------------- --tail


@pytest.mark.slow
def test_tail_replays_from_a_time_then_prints_live_ticks_of_one_symbol(tmp_path, nats_server: NatsServer):
    publisher = NatsPublisher(NatsSettings(url=nats_server.url))
    publisher.start()
    try:
        publisher.publish_ticks(_ticks(3) + _ticks(2, "INFY"))
        publisher.publish_candles([_candle()])
        wait_until(lambda: publisher.stats.ticks_published == 5 and publisher.stats.candles_published == 1, 10, "sent")
        env = main_env(NATS_URL=nats_server.url)
        proc = start_main("--tail", "NSE:M&M", "--since", "10m", "--duration", "6", cwd=tmp_path, env=env)
        time.sleep(3)
        later = [replace(t, last_price=Decimal("1600.25")) for t in _ticks(1)]
        publisher.publish_ticks(later)  # live, after the replay
        out, err = proc.communicate(timeout=30)
        since = (datetime.now(IST) - timedelta(minutes=5)).replace(tzinfo=None).isoformat(timespec="seconds")  # IST
        candles = run_main("--tail", "NSE:NIFTY 50", "--candles", "1m", "--since", since, "--duration", "2",
                           cwd=tmp_path, env=env)  # fmt: skip
        live_only = run_main("--tail", "NSE:M&M", "--duration", "1", cwd=tmp_path, env=env)
    finally:
        publisher.stop()
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert [line.split()[2] for line in lines] == ["1520.05", "1521.05", "1522.05", "1600.25"], out
    assert lines[0] == "2026-11-24T09:15:03.250000+05:30 NSE:M&M 1520.05 qty 5 vol 1000 oi -"
    assert "NSE:M&M ticks from nats://127.0.0.1:" in err
    assert candles.returncode == 0, candles.stderr
    assert candles.stdout.splitlines() == [
        "2026-11-24T09:15:00+05:30 1m NSE:NIFTY 50 O 100.50 H 101 L 99.95 C 100.05 V 1200 OI - final live"
    ]
    assert live_only.returncode == 0 and live_only.stdout == ""  # without --since: nothing stored, only live


@pytest.mark.slow
def test_tail_says_clearly_when_nats_is_unset_or_unreachable(tmp_path):
    unset = run_main("--tail", "NSE:INFY", cwd=tmp_path, env=main_env())
    assert unset.returncode == 2 and "NATS_URL is not set" in unset.stderr
    port = free_port()
    down = run_main("--tail", "NSE:INFY", cwd=tmp_path, env=main_env(NATS_URL=f"nats://127.0.0.1:{port}"))
    assert down.returncode == 1
    assert f"error: cannot reach NATS at nats://127.0.0.1:{port}" in down.stderr and "check NATS_URL" in down.stderr
    bad = run_main("--tail", "NSE:INFY", "--since", "yesterday", cwd=tmp_path, env=main_env(NATS_URL="nats://127.0.0.1:4222"))
    assert bad.returncode == 2 and "--since 'yesterday' is not a time" in bad.stderr
    alone = run_main("--since", "15m", cwd=tmp_path, env=main_env())
    assert alone.returncode == 2 and "go with --tail" in alone.stderr


def test_since_takes_a_date_time_a_time_of_day_or_a_span_ago():
    now = datetime(2026, 11, 24, 10, 0, tzinfo=IST)
    assert parse_since("2026-11-24T09:15", now) == datetime(2026, 11, 24, 9, 15, tzinfo=IST)
    assert parse_since("2026-11-24T03:45:00+00:00", now) == datetime(2026, 11, 24, 9, 15, tzinfo=IST)
    assert parse_since("09:15", now) == datetime(2026, 11, 24, 9, 15, tzinfo=IST)
    assert parse_since("09:15:30", now) == datetime(2026, 11, 24, 9, 15, 30, tzinfo=IST)
    assert parse_since("15m", now) == now - timedelta(minutes=15)
    assert parse_since("1d", now) == now - timedelta(days=1)
    with pytest.raises(UsageError, match="is not a time"):
        parse_since("monday", now)


# ---------------------------------------------------------------- a JetStream cluster


@pytest.mark.slow
def test_a_three_node_cluster_loses_a_node_mid_stream_and_every_candle_is_stored_once():
    cluster = NatsCluster(3)
    try:
        cluster.start()
        publisher = NatsPublisher(NatsSettings(url=cluster.url, replicas=3))
        publisher.start()
        wait_until(lambda: publisher.problem is None, 30, "the streams set up with 3 replicas")
        sent = []
        killed = None
        for i in range(300):
            candle = _candle(bucket=datetime(2026, 11, 24, 9, 15, tzinfo=IST) + timedelta(minutes=i), volume=1000 + i)
            sent.append(candle)
            publisher.publish_candles([candle])
            publisher.publish_ticks(_ticks(5))
            if i == 100:  # the node the daemon is connected to dies, as a crashed server would
                port = publisher._nc.connected_url.port
                killed = next(node for node in cluster.nodes if node.port == port)
                killed.kill()
            time.sleep(0.02)
        wait_until(lambda: publisher.report().candles_waiting == 0, 60, "every candle acknowledged")
        assert publisher.problem is None and publisher.report().reconnects >= 1
        publisher.stop()
        survivor = next(node for node in cluster.nodes if node is not killed)
        messages = read_stream(survivor.url, "marketfeed.candles.>", expect=len(sent) + 1, timeout=3)
        ids = [m.headers["Nats-Msg-Id"] for m in messages]
        assert sorted(ids) == sorted(candle_msg_id(c) for c in sent)  # each exactly once, none lost
        assert [json.loads(m.data)["volume"] for m in messages] == [c.volume for c in sent]  # in order
        assert stream_messages(survivor.url, CANDLES_STREAM) == len(sent)
    finally:
        cluster.cleanup()


def test_a_batch_written_at_once_publishes_what_publishing_tick_by_tick_does(nats_server: NatsServer, monkeypatch):
    ticks = _ticks(3) + _ticks(2, "NIFTY 50")
    for bulk in (True, False):
        monkeypatch.setattr(publishers.nats, "_BULK", bulk)
        publisher = NatsPublisher(NatsSettings(url=nats_server.url))
        publisher.start()
        try:
            publisher.publish_ticks(ticks)
            wait_until(lambda p=publisher: p.stats.ticks_published == 5, 10, "published")
        finally:
            publisher.stop()
    messages = read_stream(nats_server.url, "marketfeed.ticks.>", expect=10)
    assert [(m.subject, m.data) for m in messages[:5]] == [(m.subject, m.data) for m in messages[5:]]
    assert messages[3].subject == "marketfeed.ticks.NSE.NIFTY_2050"


def test_a_tick_payload_holds_every_field_exactly():
    """Each field from the tick itself, whatever its value: quantities on either side of the kept
    texts, None as null, the price's own digits, a token that changed for the same symbol."""
    encoder = TickEncoder("marketfeed")
    at = datetime(2026, 11, 24, 9, 15, 3, 250_000, tzinfo=IST)
    received = at + timedelta(milliseconds=40)
    cases = [
        TickData("kite", "NSE", "M&M", 7, Decimal("100.50"), 0, 0, 0, at, received),
        TickData("kite", "NSE", "M&M", 7, Decimal("100.55"), 4095, 12_345_678, None, at + timedelta(seconds=1), received),
        TickData("kite", "NSE", "M&M", 8, Decimal("100.6"), 4096, None, 7, at, at),  # another token
        TickData("kite", "NSE", "NIFTY 50", 256265, Decimal("25000.05"), None, None, None, at, at),
        TickData("kite", "MCX", "CRUDEOIL", 9, Decimal("6000"), 1_000_000, 3, 2_000_000, at, at),
    ]
    commands: list[str] = []
    encoder.encode_batch(cases, commands)
    for t, command in zip(cases, commands, strict=True):
        head, body, rest = command.split("\r\n")
        assert rest == "" and head == f"PUB {tick_subject('marketfeed', t.exchange, t.symbol)} {len(body)}"
        assert json.loads(body) == {
            "exchange": t.exchange, "symbol": t.symbol, "token": t.token, "price": str(t.last_price),
            "qty": t.last_quantity, "volume": t.volume, "oi": t.oi, "ts": t.exchange_ts.isoformat(),
            "ts_ms": round(t.exchange_ts.timestamp() * 1000), "received_ms": round(t.receive_ts.timestamp() * 1000),
        }  # fmt: skip
        assert encoder.encode(t) == (tick_subject("marketfeed", t.exchange, t.symbol), body.encode())


def test_tick_times_are_written_as_isoformat_writes_them():
    encoder = TickEncoder("marketfeed")
    base = _ticks(1)[0]
    for ts in (
        datetime(2026, 11, 24, 9, 15, 3, tzinfo=IST),
        datetime(2026, 11, 24, 9, 15, 3, 1, tzinfo=IST),
        datetime(2026, 11, 24, 3, 45, 3, 999_999, tzinfo=timezone.utc),
        datetime(2026, 11, 23, 18, 29, 59, 500_000, tzinfo=timezone.utc),  # the IST day before midnight
    ):
        for _ in range(2):  # made, then kept
            body = json.loads(encoder.encode(replace(base, exchange_ts=ts))[1])
            assert body["ts"] == ts.astimezone(IST).isoformat() and body["ts_ms"] == round(ts.timestamp() * 1000)


def test_a_bus_that_cannot_publish_degrades_health_and_its_counters_reach_the_heartbeat_and_metrics():
    from ops.metrics import Metrics
    from tests.test_health import HEALTHY

    fine = BusReport("nats", "nats://127.0.0.1:4222", True, None, ticks_published=900, ticks_dropped=3,
                     candles_published=40, candles_duplicate=2, errors=1, reconnects=1)  # fmt: skip
    assert replace(HEALTHY, bus=fine).problems == [] and replace(HEALTHY, bus=fine).state == "running"
    down = replace(fine, connected=False, error="lost the connection; reconnecting", candles_waiting=7)
    sick = replace(HEALTHY, bus=down)
    assert sick.state == "degraded" and sick.problems == [
        "nats nats://127.0.0.1:4222: lost the connection; reconnecting; ticks are dropped and candles wait to be "
        "published (7 waiting); candles are still stored"
    ]
    beat = sick.heartbeat(1.0)
    assert beat["nats"] == {"connected": False, "ticks_published": 900, "ticks_dropped": 3, "candles_published": 40,
                            "candles_waiting": 7, "candles_dropped": 0, "errors": 1}  # fmt: skip
    assert "nats" not in HEALTHY.heartbeat(1.0)
    metrics = Metrics(lambda: sick)
    status, _, body = metrics.answer("/healthz", "")
    assert status == 503 and b"nats nats://127.0.0.1:4222: lost the connection" in body
    text = metrics.answer("/metrics", "")[2].decode()
    for line in ("marketfeed_nats_connected 0.0", "marketfeed_nats_ticks_dropped_total 3.0",
                 "marketfeed_nats_candles_waiting 7.0", "marketfeed_nats_reconnects_total 1.0"):  # fmt: skip
        assert line in text, line


def test_each_prefix_has_its_own_streams():
    assert stream_names("marketfeed") == (TICKS_STREAM, CANDLES_STREAM) == ("MARKETFEED_TICKS", "MARKETFEED_CANDLES")
    assert stream_names("prod.mf") == ("PROD_MF_TICKS", "PROD_MF_CANDLES")


def test_two_prefixes_on_one_server_publish_into_streams_of_their_own(nats_server: NatsServer):
    publishers_ = [NatsPublisher(NatsSettings(url=nats_server.url, prefix=prefix)) for prefix in ("a", "b.c")]
    for publisher in publishers_:
        publisher.start()
    try:
        for publisher in publishers_:
            publisher.publish_candles([_candle()])
        wait_until(lambda: all(p.stats.candles_published == 1 for p in publishers_), 10, "both acknowledged")
        assert all(p.problem is None for p in publishers_)
    finally:
        for publisher in publishers_:
            publisher.stop()
    assert stream_messages(nats_server.url, "A_CANDLES") == 1 and stream_messages(nats_server.url, "B_C_CANDLES") == 1
    assert [m.subject for m in read_stream(nats_server.url, "b.c.candles.>")] == ["b.c.candles.1m.NSE.NIFTY_2050"]


@pytest.mark.slow
def test_a_password_in_nats_url_never_reaches_the_log(tmp_path):
    port = free_port()  # nothing listens: the connection errors are logged
    env = main_env(NATS_URL=f"nats://feeder:s3cr3t-pw@127.0.0.1:{port}", LOG_LEVEL="DEBUG")
    proc = run_main(*sim_args("--duration", "3"), cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"nats nats://127.0.0.1:{port}" in proc.stderr or f"at nats://127.0.0.1:{port}" in proc.stderr
    assert "s3cr3t-pw" not in proc.stdout + proc.stderr


def test_without_a_server_ticks_are_dropped_and_counted_and_the_stop_is_prompt(monkeypatch):
    monkeypatch.setattr(publishers.nats, "_FIRST_CONNECT_S", 0.3)
    publisher = NatsPublisher(NatsSettings(url=f"nats://127.0.0.1:{free_port()}"))
    publisher.start()
    try:
        publisher.publish_ticks(_ticks(4))
        time.sleep(0.1)
        assert publisher.stats.ticks_dropped == 0  # held for the first connection a moment
        wait_until(lambda: publisher.stats.ticks_dropped == 4, 5, "the ticks dropped")
        publisher.publish_ticks(_ticks(3))
        wait_until(lambda: publisher.stats.ticks_dropped == 7, 5, "later ticks dropped at once")
        assert publisher.report().ticks_dropped == 7 and publisher.stats.ticks_published == 0
    finally:
        started = time.monotonic()
        publisher.stop()
        assert time.monotonic() - started < 2  # nats-py's endless first connection is cancelled
