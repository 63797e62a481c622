"""KiteBroker against the fake Kite server: real sockets on loopback, real reconnects."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from decimal import Decimal

import pytest

from brokers.base import BrokerError
from brokers.kite.client import AUTH_FAILED_MESSAGE, KiteBroker
from core.ist import IST
from core.ticks import FrameBatch, Instrument, TickData
from testkit.fakes.kite_server import DEFAULT_INSTRUMENTS, KiteFakeServer, TapeTick
from testkit.waiting import wait_until

INSTRUMENTS = {i.token: Instrument(i.exchange, i.tradingsymbol, i.token) for i in DEFAULT_INSTRUMENTS}
INFY, RELIANCE = 408065, 738561
EPOCH = 1705290300  # 2024-01-15 09:15:00 IST


class Sink:
    """Collects tick batches from the broker's threads."""

    def __init__(self) -> None:
        self.ticks: list[TickData] = []
        self._cond = threading.Condition()

    def __call__(self, batch: Sequence[TickData]) -> None:
        with self._cond:
            self.ticks.extend(batch)
            self._cond.notify_all()

    def wait_for(self, pred: Callable[[list[TickData]], bool], timeout: float = 5.0) -> list[TickData]:
        with self._cond:
            if not self._cond.wait_for(lambda: pred(self.ticks), timeout):
                raise AssertionError(f"ticks never matched within {timeout} s; got {self.ticks!r}")
            return list(self.ticks)




def synthetic(n: int, start: int = 10_000) -> list[Instrument]:
    # token & 0xff == 1 (NSE): plain paise prices; tokens the fake does not list are still accepted.
    return [Instrument("NSE", f"SYN{k}", ((start + k) << 8) | 1) for k in range(n)]


@pytest.fixture
def server() -> Iterator[KiteFakeServer]:
    with KiteFakeServer(heartbeat_interval=0.3) as srv:
        yield srv


@pytest.fixture
def make_broker(server: KiteFakeServer) -> Iterator[Callable[..., KiteBroker]]:
    brokers: list[KiteBroker] = []

    def make(**kwargs: object) -> KiteBroker:
        options: dict = {"ws_url": server.ws_url, "instruments": INSTRUMENTS, "backoff_initial": 0.05, "backoff_max": 0.5}
        options.update(kwargs)
        broker = KiteBroker(server.api_key, server.access_token, **options)
        brokers.append(broker)
        return broker

    yield make
    for b in brokers:
        b.disconnect()


def tick(token: int, price: str, volume: int, second: int = 0) -> TapeTick:
    return TapeTick(token, Decimal(price), last_quantity=5, volume=volume, exchange_ts=EPOCH + second)


def test_ticks_sent_by_the_server_arrive_as_tickdata_with_symbols_and_exact_prices(server, make_broker):
    broker = make_broker()
    broker.subscribe([INSTRUMENTS[INFY], INSTRUMENTS[RELIANCE]])
    sink = Sink()
    broker.connect(sink)
    server.wait_subscribed([INFY, RELIANCE], mode="full")
    wait_until(broker.is_connected, 3, "is_connected")
    server.send_ticks([tick(INFY, "1573.15", 100), tick(RELIANCE, "2456.80", 200)])
    ticks = sink.wait_for(lambda t: len(t) >= 2)
    by_symbol = {t.key: t for t in ticks}
    assert by_symbol["NSE:INFY"].last_price == Decimal("1573.15")
    assert by_symbol["NSE:INFY"].volume == 100
    assert by_symbol["NSE:RELIANCE"].last_price == Decimal("2456.80")
    assert by_symbol["NSE:INFY"].exchange_ts.timestamp() == EPOCH
    assert all(t.broker == "kite" and t.depth is not None for t in ticks)  # full mode carries depth
    assert [t.name for t in threading.enumerate() if t.name.startswith("kite-ws-")] == ["kite-ws-1"]


def test_a_frame_arrives_as_one_batch_that_its_source_decodes_again_for_the_journal(server, make_broker):
    broker = make_broker()
    broker.subscribe([INSTRUMENTS[INFY], INSTRUMENTS[RELIANCE]])
    batches: list[Sequence[TickData]] = []
    sink = Sink()
    broker.connect(lambda batch: (batches.append(batch), sink(batch)))
    server.wait_subscribed([INFY, RELIANCE], mode="full")
    server.send_ticks([tick(INFY, "1573.15", 100), tick(RELIANCE, "2456.80", 200)])
    sink.wait_for(lambda t: len(t) >= 2)
    batch = batches[-1]
    assert isinstance(batch, FrameBatch) and len(batch) == 2
    assert datetime.fromtimestamp(batch.receive_epoch, IST) == batch[0].receive_ts
    again = batch.source.replay(batch.source.pack(batch.frame), batch.receive_epoch)
    assert again == [dataclasses.replace(t, depth=None) for t in batch]


def test_3001_instruments_use_two_connections_each_subscribed_in_full_mode_to_its_share(server, make_broker):
    broker = make_broker()
    instruments = synthetic(3001)
    broker.subscribe(instruments)
    broker.connect(Sink())
    tokens = [i.token for i in instruments]
    server.wait_subscribed(tokens, timeout=10, mode="full")
    conns = server.connections
    assert sorted(len(c.subscribed) for c in conns) == [1, 3000]
    first = next(c for c in conns if len(c.subscribed) == 3000)
    assert set(first.subscribed) == set(tokens[:3000])
    assert all(m == "full" for c in conns for m in c.subscribed.values())
    states = broker.connection_states()
    assert [(s.id, s.instruments) for s in states] == [(1, 3000), (2, 1)]
    wait_until(broker.is_connected, 3, "both connections up")


def test_9001_instruments_are_refused_with_the_numbers(make_broker):
    broker = make_broker()
    with pytest.raises(BrokerError, match=r"9001 instruments .* 3000 per connection x 3 connections = 9000"):
        broker.subscribe(synthetic(9001))
    assert broker.subscribed_count == 0


def test_dropped_connection_reconnects_resubscribes_everything_and_ticks_flow_again(server, make_broker):
    broker = make_broker()
    broker.subscribe([INSTRUMENTS[INFY], INSTRUMENTS[RELIANCE]])
    sink = Sink()
    broker.connect(sink)
    server.wait_subscribed([INFY, RELIANCE], mode="full")
    server.drop_all()
    wait_until(lambda: server.handshakes >= 2, 5, "a second handshake")
    server.wait_subscribed([INFY, RELIANCE], mode="full")
    wait_until(broker.is_connected, 3, "is_connected after reconnect")
    server.send_ticks([tick(INFY, "1574.00", 300, 1)])
    sink.wait_for(lambda t: any(x.last_price == Decimal("1574.00") for x in t))
    assert broker.connection_states()[0].reconnects == 1


@pytest.mark.slow
def test_a_reconnect_never_delivers_an_index_tick_twice_whichever_side_of_the_live_ticks_its_snapshot_lands(
    server, make_broker
):
    # A new subscription begins with a snapshot of the last state. For an index (no volume) a copy of a tick
    # would count as a second trade, so the client drops exact copies for a moment after a reconnect: of the
    # last tick delivered before it, and of any delivered since.
    nifty = 256265
    broker = make_broker()
    broker.subscribe([INSTRUMENTS[nifty], INSTRUMENTS[INFY]])
    sink = Sink()
    kinds: list[str] = []  # what each batch is: a filtered one must not be journalled as its whole frame
    broker.connect(lambda batch: (kinds.append(type(batch).__name__), sink(batch)))
    server.wait_subscribed([nifty, INFY], mode="full")
    time.sleep(0.3)  # the (empty) first snapshots are out
    server.send_ticks([tick(nifty, "21500.05", 0, 1)])
    sink.wait_for(lambda t: len(t) == 1)
    server.drop_all()
    wait_until(lambda: server.handshakes >= 2, 5, "a second handshake")
    server.wait_subscribed([nifty, INFY], mode="full")
    time.sleep(0.3)  # the snapshot of the tick above has come: a copy, dropped
    newest = tick(nifty, "21500.40", 0, 3)
    server.send_ticks([newest])  # a snapshot that already shows the newest state ...
    server.send_ticks([tick(nifty, "21500.20", 0, 2), newest])  # ... and the live ticks behind it
    server.send_ticks([tick(INFY, "1573.15", 100, 2), newest])  # one frame: a new tick and a copy
    sink.wait_for(lambda t: len(t) >= 4)
    time.sleep(0.5)
    assert [(x.symbol, int(x.exchange_ts.timestamp()) - EPOCH, x.last_price, x.volume) for x in sink.ticks] == [
        ("NIFTY 50", 1, Decimal("21500.05"), None), ("NIFTY 50", 3, Decimal("21500.40"), None),
        ("NIFTY 50", 2, Decimal("21500.20"), None), ("INFY", 2, Decimal("1573.15"), 100),
    ]  # fmt: skip
    # after the moment has passed, the same values are new again (another second, say, at the same price)
    time.sleep(2.0)
    server.send_ticks([newest])
    sink.wait_for(lambda t: len(t) == 5)
    # frames the window dropped nothing from are journalled whole (the copies alone were never
    # handed over); the one it cut is handed over as its ticks
    assert kinds == ["FrameBatch", "FrameBatch", "FrameBatch", "list", "FrameBatch"]


def test_silent_socket_is_detected_as_stalled_and_replaced(server, make_broker, caplog):
    broker = make_broker(stall_timeout=1.0)
    broker.subscribe([INSTRUMENTS[INFY]])
    sink = Sink()
    broker.connect(sink)
    server.wait_subscribed([INFY], mode="full")
    caplog.set_level(logging.WARNING, logger="brokers.kite.client")
    server.go_mute()
    started = time.monotonic()
    wait_until(lambda: "connection 1 stalled (no data for" in caplog.text, 3, "stall detection")
    assert time.monotonic() - started < 2.5
    server.go_mute(False)
    wait_until(lambda: server.handshakes >= 2, 3, "reconnect after the stall")
    server.wait_subscribed([INFY], mode="full")
    server.send_ticks([tick(INFY, "1575.50", 400, 2)])
    sink.wait_for(lambda t: any(x.last_price == Decimal("1575.50") for x in t))


@pytest.mark.slow
def test_rejected_access_token_stops_retrying_and_says_to_log_in_again(server, make_broker, caplog):
    server.reject_tokens()
    broker = make_broker()
    broker.subscribe([INSTRUMENTS[INFY]])
    broker.connect(Sink())
    wait_until(lambda: broker.auth_failed is not None, 3, "auth failure")
    time.sleep(3)  # a retry storm would show up here as many more refused handshakes
    assert broker.auth_failed == AUTH_FAILED_MESSAGE
    assert "log in again (python main.py --broker kite --login)" in broker.auth_failed
    assert server.rejected_handshakes <= 2
    assert broker.problem is not None and not broker.is_connected()
    assert "HTTP 403" in caplog.text


def test_new_access_token_after_rejection_restarts_the_feed(server, make_broker):
    server.reject_tokens()
    broker = make_broker()
    broker.subscribe([INSTRUMENTS[INFY]])
    broker.connect(Sink())
    wait_until(lambda: broker.auth_failed is not None, 3, "auth failure")
    server.reject_tokens(False)
    broker.set_access_token(server.access_token)
    server.wait_subscribed([INFY], mode="full")
    wait_until(broker.is_connected, 3, "is_connected after a new token")
    assert broker.problem is None


def test_after_a_rejection_the_feed_waits_for_a_new_token_from_the_provider_then_resumes(server, make_broker):
    from kiteconnect import KiteConnect

    from brokers.kite.auth import generate_access_token

    current = {"token": server.access_token}
    server.expire_access_token()
    broker = make_broker(token_provider=lambda: current["token"], token_poll_seconds=0.05)
    broker.subscribe([INSTRUMENTS[INFY]])
    broker.connect(Sink())
    wait_until(lambda: broker.auth_failed is not None, 3, "auth failure")
    time.sleep(1)  # the provider keeps returning the rejected token: no new handshake may be tried
    assert server.rejected_handshakes == 1
    kite = KiteConnect(server.api_key, root=server.api_url)
    current["token"] = generate_access_token(kite, server.request_token, server.api_secret)  # what --login writes
    server.reject_tokens(False)
    server.wait_subscribed([INFY], mode="full")
    wait_until(lambda: broker.problem is None and broker.is_connected(), 3, "recovery with the new token")
    assert server.connections[0].query["access_token"] == current["token"]


def test_malformed_frame_is_counted_and_later_ticks_still_arrive(server, make_broker):
    broker = make_broker()
    broker.subscribe([INSTRUMENTS[INFY]])
    sink = Sink()
    broker.connect(sink)
    server.wait_subscribed([INFY], mode="full")
    server.send_raw(b"\x00\x02\x00\x08\x00\x06")  # announces 2 packets, the first overruns the frame
    server.send_raw("not json")
    server.send_ticks([tick(INFY, "1580.05", 500, 3)])
    sink.wait_for(lambda t: any(x.last_price == Decimal("1580.05") for x in t))
    malformed = broker.stats.malformed
    assert malformed.get("packet_overrun") == 1
    assert malformed.get("bad_json") == 1
    assert broker.is_connected()


def test_unsubscribe_is_sent_on_the_owning_connection(server, make_broker):
    broker = make_broker()
    broker.subscribe([INSTRUMENTS[INFY], INSTRUMENTS[RELIANCE]])
    broker.connect(Sink())
    server.wait_subscribed([INFY, RELIANCE], mode="full")
    broker.unsubscribe([INSTRUMENTS[RELIANCE]])
    wait_until(lambda: [set(c.subscribed) for c in server.connections] == [{INFY}], 3, "unsubscribe")


def test_disconnect_closes_sockets_and_joins_threads_quickly(server, make_broker):
    broker = make_broker()
    broker.subscribe(synthetic(3001))
    broker.connect(Sink())
    server.wait_connections(2)
    started = time.monotonic()
    broker.disconnect()
    assert time.monotonic() - started < 2.5
    assert not [t for t in threading.enumerate() if t.name.startswith("kite-ws-")]
    server.wait_connections(0, timeout=2)


def test_access_token_never_appears_in_repr_or_logs(server, caplog):
    caplog.set_level(logging.DEBUG)
    secret = server.access_token
    broker = KiteBroker(
        server.api_key, secret, ws_url=server.ws_url, instruments=INSTRUMENTS, backoff_initial=0.05, backoff_max=0.2
    )
    try:
        broker.subscribe([INSTRUMENTS[INFY]])
        broker.connect(Sink())
        server.wait_subscribed([INFY], mode="full")
        server.drop_all()
        wait_until(lambda: server.handshakes >= 2, 5, "reconnect")
        server.reject_tokens()
        server.drop_all()
        wait_until(lambda: broker.auth_failed is not None, 5, "auth failure")
    finally:
        broker.disconnect()
    assert secret not in repr(broker)
    assert "***" in repr(broker)
    assert caplog.records, "expected log output to check"
    assert secret not in caplog.text


def test_too_many_connections_429_backs_off_at_backoff_max(caplog):
    with KiteFakeServer(max_connections=1, heartbeat_interval=0.3) as srv:
        broker = KiteBroker(srv.api_key, srv.access_token, ws_url=srv.ws_url, backoff_initial=0.01, backoff_max=0.5)
        try:
            broker.subscribe(synthetic(3001))
            broker.connect(Sink())
            srv.wait_connections(1)
            time.sleep(1.6)
            # backoff_initial alone would allow ~100 tries here; backoff_max allows about 4
            assert 1 <= srv.rejected_handshakes <= 5
            assert broker.auth_failed is None
            assert sorted(s.connected for s in broker.connection_states()) == [False, True]  # either may win the slot
        finally:
            broker.disconnect()
    assert "HTTP 429" in caplog.text


def test_reconnect_log_lines_carry_the_connection_id_and_the_reason_as_json_fields(server, make_broker, caplog):
    import json

    from config.logs import JsonFormatter

    caplog.set_level(logging.INFO)
    broker = make_broker()
    broker.subscribe([INSTRUMENTS[INFY]])
    broker.connect(Sink())
    server.wait_subscribed([INFY], mode="full")
    server.drop_all()
    wait_until(lambda: any(getattr(r, "event", None) == "reconnected" for r in caplog.records), 5, "the reconnect")
    entries = [json.loads(JsonFormatter().format(r)) for r in caplog.records if getattr(r, "event", None)]
    lost = next(e for e in entries if e["event"] == "reconnecting")
    back = next(e for e in entries if e["event"] == "reconnected")
    assert lost["connection"] == back["connection"] == 1
    assert "Connection" in lost["reason"] and lost["attempt"] == 1
    assert back["reason"] == lost["reason"]
