"""KotakNeoBroker against the fake Kotak Neo server: real logins, real sockets on loopback, real reconnects,
session renewals and refusals."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from typing import Any

import pytest

from brokers.base import BrokerError
from brokers.kotak_neo.auth import CREDENTIALS_HINT, KotakAuth
from brokers.kotak_neo.client import KotakNeoBroker
from brokers.kotak_neo.instruments import KotakInstrument
from core.ticks import Instrument, TickData
from testkit.fakes.kotak_server import DEFAULT_INSTRUMENTS, KotakFakeServer, TapeTick, synthetic_instruments
from testkit.waiting import wait_until

EPOCH = 1768448700  # 2026-01-15 09:15:00 IST
SYNTHETIC = synthetic_instruments(300)  # nse_cm SYN0001-EQ … with tokens 100001 …
INFY = KotakInstrument("NSE", "INFY", 1594, Decimal("0.05"))
TCS = KotakInstrument("NSE", "TCS", 11536, Decimal("0.05"))
NIFTY = KotakInstrument("NSE", "NIFTY 50", 0, Decimal("0.05"), "Nifty 50")  # an index: subscribed by its feed name
USDINR = KotakInstrument("CDS", "USDINR26JANFUT", 1201, Decimal("0.0025"))


def synthetic(n: int) -> list[Instrument]:
    return [Instrument("NSE", f"SYN{i + 1:04d}-EQ", 100_001 + i) for i in range(n)]


def key(inst: Instrument) -> str:
    segment = {"NSE": "nse_cm", "CDS": "cde_fo"}[inst.exchange]
    return f"{segment}|{inst.token or getattr(inst, 'feed_name', '')}"


def segment_of(inst: Instrument) -> str:
    return key(inst).split("|")[0]


def identity(t: TickData | TapeTick) -> tuple[int, int, int | None]:
    """What tells the ticks of a test apart: (token, exchange second, cumulative volume)."""
    ts = t.exchange_ts if isinstance(t.exchange_ts, int) else int(t.exchange_ts.timestamp())
    return t.token, ts, t.volume


class Sink:
    """Collects tick batches from the broker's threads."""

    def __init__(self) -> None:
        self.ticks: list[TickData] = []
        self.seen: set[tuple[int, int, int | None]] = set()
        self._cond = threading.Condition()

    def __call__(self, batch: Sequence[TickData]) -> None:
        with self._cond:
            self.ticks.extend(batch)
            self.seen.update(map(identity, batch))
            self._cond.notify_all()

    def wait_for(self, pred: Callable[[list[TickData]], bool], timeout: float = 5.0) -> list[TickData]:
        with self._cond:
            if not self._cond.wait_for(lambda: pred(self.ticks), timeout):
                raise AssertionError(f"ticks never matched within {timeout} s; got {self.ticks[-20:]!r}")
            return list(self.ticks)

    def has(self, token: int, volume: int) -> Callable[[list[TickData]], bool]:
        return lambda ticks: any(t.token == token and t.volume == volume for t in ticks)

    def has_all(self, instruments: Sequence[Instrument], volume: int) -> Callable[[list[TickData]], bool]:
        wanted = {i.token for i in instruments}
        return lambda ticks: {t.token for t in ticks if t.volume == volume} >= wanted




def tick(inst: Instrument, price: str, volume: int, second: int = 0, token: int | None = None) -> TapeTick:
    return TapeTick(segment_of(inst), token or inst.token, Decimal(price), 5, volume, EPOCH + second)


def subscribe_frames(server: KotakFakeServer) -> list[tuple[int, dict[str, Any]]]:
    """(connection id, frame) of every subscribe frame the live connections received."""
    return [
        (c.id, m)
        for c in server.connections
        for m in c.messages
        if isinstance(m, dict) and str(m.get("event", "")).startswith("subscribe")
    ]


@pytest.fixture
def server() -> Iterator[KotakFakeServer]:
    with KotakFakeServer(instruments=DEFAULT_INSTRUMENTS + SYNTHETIC) as srv:
        yield srv


@pytest.fixture
def make_broker(server: KotakFakeServer) -> Iterator[Callable[..., KotakNeoBroker]]:
    brokers: list[KotakNeoBroker] = []

    def make(srv: KotakFakeServer | None = None, **kwargs: Any) -> KotakNeoBroker:
        srv = srv or server
        auth = KotakAuth(srv.consumer_key, srv.mobile_number, srv.ucc, srv.mpin, srv.totp_secret, login_url=srv.login_url)
        options: dict[str, Any] = {"backoff_initial": 0.05, "backoff_max": 0.5}
        options.update(kwargs)
        broker = KotakNeoBroker(auth, **options)
        brokers.append(broker)
        return broker

    yield make
    for b in brokers:
        b.disconnect()


# ---------------------------------------------------------------------------------------------- ticks


def test_scrip_index_and_currency_ticks_arrive_with_exact_prices_volume_and_exchange_time(server, make_broker):
    broker = make_broker()
    broker.subscribe([INFY, NIFTY, USDINR])
    sink = Sink()
    broker.connect(sink)
    server.wait_subscribed(["nse_cm|1594", "cde_fo|1201"], intent="scrips")
    server.wait_subscribed(["nse_cm|Nifty 50"], intent="index")
    wait_until(broker.is_connected, 3, "is_connected")
    server.send_ticks(
        [tick(INFY, "1573.15", 1200, 1), tick(NIFTY, "25894.55", 0, 2, token=26000), tick(USDINR, "90.1225", 7700, 3)]
    )
    ticks = sink.wait_for(lambda t: {x.symbol for x in t} >= {"INFY", "NIFTY 50", "USDINR26JANFUT"})
    by_symbol = {t.symbol: t for t in ticks}

    infy = by_symbol["INFY"]
    assert (infy.broker, infy.exchange, infy.token) == ("kotak_neo", "NSE", 1594)
    assert infy.last_price == Decimal("1573.15") and str(infy.last_price) == "1573.15"
    assert (infy.volume, infy.last_quantity) == (1200, 5)
    assert infy.exchange_ts.timestamp() == EPOCH + 1 and infy.exchange_ts.utcoffset() is not None

    nifty = by_symbol["NIFTY 50"]  # the watchlist's spelling, matched through the feed's "Nifty 50"
    assert (nifty.exchange, nifty.token, nifty.last_price) == ("NSE", 26000, Decimal("25894.55"))
    assert nifty.volume is None and nifty.exchange_ts.timestamp() == EPOCH + 2

    usdinr = by_symbol["USDINR26JANFUT"]  # cde_fo divides by 10^7, as the auth reply says (not the default 100)
    assert (usdinr.exchange, usdinr.last_price, usdinr.volume) == ("CDS", Decimal("90.1225"), 7700)
    assert usdinr.exchange_ts.timestamp() == EPOCH + 3
    assert [t.name for t in threading.enumerate() if t.name.startswith("kotak-ws-")] == ["kotak-ws-1"]


def test_index_resolved_through_the_scrip_master_subscribes_by_its_feed_name(server, make_broker, tmp_path):
    from brokers.kotak_neo.instruments import KotakScripMaster

    broker = make_broker()
    session = broker.auth.current()
    master = KotakScripMaster(session.base_url, server.consumer_key, tmp_path)
    known, unknown = master.resolve([("NSE", "NIFTY 50"), ("NSE", "INFY")])
    assert unknown == []
    broker.subscribe(known)
    sink = Sink()
    broker.connect(sink)
    server.wait_subscribed(["nse_cm|Nifty 50"], intent="index")
    server.wait_subscribed(["nse_cm|1594"], intent="scrips")
    server.send_ticks([TapeTick("nse_cm", 26000, Decimal("25900.10"), 0, 0, EPOCH + 5)])
    ticks = sink.wait_for(lambda t: any(x.token == 26000 for x in t))
    nifty = next(x for x in ticks if x.token == 26000)
    assert (nifty.exchange, nifty.symbol, nifty.last_price) == ("NSE", "NIFTY 50", Decimal("25900.10"))


# ---------------------------------------------------------------------------------------------- splitting


def test_250_instruments_use_three_connections_of_100_100_50_with_frames_of_at_most_100_keys(server, make_broker):
    broker = make_broker()
    instruments = synthetic(250)
    broker.subscribe(instruments)
    broker.connect(Sink())
    keys = [key(i) for i in instruments]
    server.wait_subscribed(keys, timeout=10, intent="scrips")
    server.wait_connections(3)
    per_conn = {c.id: set(c.subscriptions) for c in server.connections}
    assert sorted(len(v) for v in per_conn.values()) == [50, 100, 100]
    owners = Counter(k for v in per_conn.values() for k in v)
    assert set(owners) == set(keys) and set(owners.values()) == {1}  # each key on exactly one connection
    frames = subscribe_frames(server)
    assert frames and all(len(m["inputtoken"].split(",")) <= 100 for _, m in frames)
    assert all(m["event"] == "subscribeScrips" for _, m in frames)
    assert [(s.id, s.instruments) for s in broker.connection_states()] == [(1, 100), (2, 100), (3, 50)]
    wait_until(broker.is_connected, 3, "every connection up")


def test_a_custom_limit_of_40_per_connection_splits_100_instruments_40_40_20(server, make_broker):
    broker = make_broker(max_symbols_per_connection=40)
    instruments = synthetic(100)
    broker.subscribe(instruments)
    broker.connect(Sink())
    server.wait_subscribed([key(i) for i in instruments], timeout=10)
    server.wait_connections(3)
    assert sorted(len(c.subscriptions) for c in server.connections) == [20, 40, 40]
    assert [s.instruments for s in broker.connection_states()] == [40, 40, 20]


def test_instruments_added_later_fill_the_last_connection_before_opening_another(server, make_broker):
    broker = make_broker(max_symbols_per_connection=40)
    broker.subscribe(synthetic(30))
    broker.connect(Sink())
    server.wait_subscribed([key(i) for i in synthetic(30)])
    broker.subscribe(synthetic(50))  # 30 already there: 10 more fill connection 1, 10 open connection 2
    server.wait_subscribed([key(i) for i in synthetic(50)])
    server.wait_connections(2)
    assert sorted(len(c.subscriptions) for c in server.connections) == [10, 40]
    assert all(len(m["inputtoken"].split(",")) <= 40 for _, m in subscribe_frames(server))


def test_more_than_the_connections_can_carry_is_refused_with_the_numbers_before_anything_connects(server, make_broker):
    broker = make_broker(max_symbols_per_connection=40, max_connections=2)
    with pytest.raises(BrokerError, match=r"81 instruments .* 40 per connection x 2 connections = 80"):
        broker.subscribe(synthetic(81))
    assert broker.subscribed_count == 0 and broker.connection_states() == []
    assert server.handshakes == 0 and server.logins_completed == 0
    default = make_broker()
    with pytest.raises(BrokerError, match=r"3001 instruments .* 100 per connection x 30 connections = 3000"):
        default.subscribe(synthetic(300) + [Instrument("NSE", f"X{i}", 200_001 + i) for i in range(2701)])
    assert server.handshakes == 0


# ---------------------------------------------------------------------------------------------- reconnects


@pytest.mark.parametrize("cut", ["drop_all", "close_all"])
def test_every_cut_connection_reconnects_resubscribes_everything_and_ticks_flow_again(server, make_broker, cut):
    broker = make_broker(max_symbols_per_connection=4)
    instruments = synthetic(10)
    broker.subscribe(instruments)
    sink = Sink()
    broker.connect(sink)
    keys = [key(i) for i in instruments]
    server.wait_subscribed(keys)
    server.wait_connections(3, authenticated=True)
    handshakes = server.handshakes
    getattr(server, cut)()
    wait_until(lambda: server.handshakes >= handshakes + 3, 5, "three new handshakes")
    server.wait_subscribed(keys)
    server.wait_connections(3, authenticated=True)
    assert sorted(len(c.subscriptions) for c in server.connections) == [2, 4, 4]
    wait_until(broker.is_connected, 3, "is_connected after the reconnects")
    server.send_ticks([tick(i, "101.50", 1000, 10) for i in instruments])
    sink.wait_for(sink.has_all(instruments, 1000))
    assert [s.reconnects for s in broker.connection_states()] == [1, 1, 1]
    assert server.logins_completed == 1  # a cut socket is not a refused session


def test_a_muted_server_trips_each_stall_watchdog_and_every_connection_recovers_after(server, make_broker, caplog):
    caplog.set_level(logging.WARNING, logger="brokers.kotak_neo.client")
    broker = make_broker(max_symbols_per_connection=2, stall_timeout=1.0, ping_interval=0.25)
    instruments = synthetic(5)
    broker.subscribe(instruments)
    sink = Sink()
    broker.connect(sink)
    keys = [key(i) for i in instruments]
    server.wait_subscribed(keys)
    server.go_mute()
    for n in (1, 2, 3):
        wait_until(lambda n=n: f"kotak connection {n} stalled (no data for" in caplog.text, 4, f"connection {n} stalled")
    server.go_mute(False)
    wait_until(lambda: all(s.reconnects >= 1 for s in broker.connection_states()), 5, "every connection reconnected")
    server.wait_subscribed(keys)
    wait_until(broker.is_connected, 5, "is_connected after the stall")
    server.send_ticks([tick(i, "99.95", 500, 20) for i in instruments])
    sink.wait_for(sink.has_all(instruments, 500))


@pytest.mark.slow
def test_an_idle_connection_answering_pings_is_not_reported_stalled(server, make_broker, caplog):
    caplog.set_level(logging.INFO, logger="brokers.kotak_neo.client")
    broker = make_broker(stall_timeout=1.0, ping_interval=0.2)
    broker.subscribe([INFY])
    broker.connect(Sink())
    server.wait_subscribed(["nse_cm|1594"])
    handshakes = server.handshakes
    # no tick, no reply: only the pongs to the client's pings can keep this connection alive for 3 stall timeouts
    for _ in range(12):
        time.sleep(0.25)
        state = broker.connection_states()[0]
        assert state.connected and state.last_frame_age is not None and state.last_frame_age < 1.0
    assert "stalled" not in caplog.text
    assert server.handshakes == handshakes and broker.connection_states()[0].reconnects == 0


# ---------------------------------------------------------------------------------------------- sessions


def test_an_expired_session_kicked_from_three_connections_costs_exactly_one_new_login(server, make_broker):
    broker = make_broker(max_symbols_per_connection=4)
    instruments = synthetic(10)
    broker.subscribe(instruments)
    sink = Sink()
    broker.connect(sink)
    keys = [key(i) for i in instruments]
    server.wait_subscribed(keys)
    server.wait_connections(3, authenticated=True)
    assert server.logins_completed == 1
    old_sid = server.session_sids[-1]
    failures = server.auth_failures
    server.expire_sessions(kick=True)  # 1120 on each live connection, then the server closes it
    wait_until(lambda: server.logins_completed >= 2, 5, "a new login")
    server.wait_subscribed(keys)
    server.wait_connections(3, authenticated=True)
    time.sleep(0.5)  # a second login would show up here
    assert server.logins_completed == 2 and broker.auth.logins == 2
    new_sid = server.session_sids[-1]
    assert new_sid != old_sid
    assert all(c.auth is not None and c.auth["auth"] == new_sid for c in server.connections)
    assert server.auth_failures == failures  # the old sid was not offered again
    server.send_ticks([tick(i, "100.05", 700, 30) for i in instruments])
    sink.wait_for(sink.has_all(instruments, 700))
    assert broker.problem is None


@pytest.mark.slow
def test_a_snapshot_coming_after_newer_ticks_on_reconnect_is_not_a_second_tick(make_broker):
    # The feed answers a new subscription with each instrument's last state; a busy feed may send it after
    # live ticks that are already newer. The copy of a tick delivered before the reconnect must not count
    # again: for an index (no volume) nothing else would tell it from a new tick.
    with KotakFakeServer(instruments=DEFAULT_INSTRUMENTS, snapshot_delay=0.4) as srv:
        broker = make_broker(srv)
        broker.subscribe([INFY, NIFTY])
        sink = Sink()
        broker.connect(sink)
        keys = ["nse_cm|1594", "nse_cm|Nifty 50"]
        srv.wait_subscribed(keys)
        time.sleep(0.6)  # the (empty) first snapshots are out
        srv.send_ticks([tick(INFY, "1573.15", 1200, 1), tick(NIFTY, "25894.55", 0, 1, token=26000)])
        sink.wait_for(lambda t: len(t) == 2)
        srv.expire_sessions(kick=True)
        wait_until(lambda: broker.connection_states()[0].reconnects == 1, 5, "the reconnect")
        srv.wait_subscribed(keys)
        wait_until(lambda: srv.connections and srv.connections[-1].subscriptions, 5, "the new subscription")
        # newer ticks go out at once; the snapshot of the state before them follows 0.4 s later
        srv.send_ticks([tick(INFY, "1573.20", 1300, 2), tick(NIFTY, "25894.60", 0, 2, token=26000)])
        sink.wait_for(lambda t: len(t) >= 4)
        time.sleep(1.0)  # the snapshot has arrived (and been dropped)
        got = [(x.symbol, int(x.exchange_ts.timestamp()) - EPOCH, x.last_price) for x in sink.ticks]
        assert got == [
            ("INFY", 1, Decimal("1573.15")), ("NIFTY 50", 1, Decimal("25894.55")),
            ("INFY", 2, Decimal("1573.20")), ("NIFTY 50", 2, Decimal("25894.60")),
        ]  # fmt: skip
        # a snapshot carrying what the client has not seen (a tick lost with the link) still goes through
        srv.go_mute()
        srv.send_ticks([tick(NIFTY, "25894.65", 0, 3, token=26000)])  # the server's state moves on, unsent
        srv.drop_all()
        srv.go_mute(False)
        wait_until(lambda: broker.connection_states()[0].reconnects == 2, 5, "the second reconnect")
        sink.wait_for(lambda t: len(t) >= 5)
        time.sleep(1.0)
        assert [(x.symbol, x.last_price) for x in sink.ticks[4:]] == [("NIFTY 50", Decimal("25894.65"))]


def test_a_snapshot_coming_before_the_live_tick_it_copies_on_reconnect_counts_once(server, make_broker):
    # The other order: the snapshot already shows the newest state while older live ticks, that one among
    # them, are still on their way. Seen from the client, the same tick arrives twice, older ones between.
    broker = make_broker()
    broker.subscribe([NIFTY])
    sink = Sink()
    broker.connect(sink)
    srv = server
    srv.wait_subscribed(["nse_cm|Nifty 50"])
    time.sleep(0.3)
    srv.send_ticks([tick(NIFTY, "25894.55", 0, 1, token=26000)])
    sink.wait_for(lambda t: len(t) == 1)
    srv.drop_all()
    wait_until(lambda: broker.connection_states()[0].reconnects == 1, 5, "the reconnect")
    srv.wait_subscribed(["nse_cm|Nifty 50"])
    wait_until(lambda: srv.connections and srv.connections[-1].subscriptions, 5, "the new subscription")
    time.sleep(0.2)  # its snapshot (the tick above) has come and gone
    newest = tick(NIFTY, "25894.70", 0, 3, token=26000)
    srv.send_ticks([newest])  # the snapshot ...
    srv.send_ticks([tick(NIFTY, "25894.60", 0, 2, token=26000), newest])  # ... and the live ticks behind it
    sink.wait_for(lambda t: len(t) >= 3)
    time.sleep(0.5)
    assert [(int(x.exchange_ts.timestamp()) - EPOCH, x.last_price) for x in sink.ticks] == [
        (1, Decimal("25894.55")), (3, Decimal("25894.70")), (2, Decimal("25894.60")),
    ]  # fmt: skip


def test_a_first_snapshot_coming_before_the_live_tick_it_copies_counts_once(server, make_broker):
    # The same on the first connection: ticks sent as the subscription is taken are in its snapshot
    # and then on their way live, behind it (the feed's state moved on before the snapshot was read).
    broker = make_broker()
    broker.subscribe([NIFTY])
    sink = Sink()
    broker.connect(sink)
    server.wait_subscribed(["nse_cm|Nifty 50"])
    newest = tick(NIFTY, "25894.70", 0, 3, token=26000)
    server.send_ticks([newest])  # the snapshot ...
    server.send_ticks([tick(NIFTY, "25894.60", 0, 2, token=26000), newest])  # ... and the live ticks behind it
    sink.wait_for(lambda t: len(t) >= 2)
    time.sleep(0.5)
    assert [(int(x.exchange_ts.timestamp()) - EPOCH, x.last_price) for x in sink.ticks] == [
        (3, Decimal("25894.70")), (2, Decimal("25894.60")),
    ]  # fmt: skip


def test_a_feed_refusing_every_session_costs_one_new_login_not_one_per_retry(server, make_broker):
    broker = make_broker(max_symbols_per_connection=4)
    instruments = synthetic(10)
    broker.subscribe(instruments)
    broker.connect(Sink())
    keys = [key(i) for i in instruments]
    server.wait_subscribed(keys)
    server.reject_sessions()  # the feed now answers every auth frame with 1120, fresh sessions included
    server.drop_all()
    failures = server.auth_failures
    wait_until(lambda: server.auth_failures >= failures + 12, 8, "a dozen refused reconnects")
    assert server.logins_completed == 2  # one login for the refused session; the fresh one is retried as is
    server.reject_sessions(False)
    server.wait_subscribed(keys, timeout=5)
    server.wait_connections(3, authenticated=True)
    assert server.logins_completed == 2
    assert all(c.auth is not None and c.auth["auth"] == server.session_sids[-1] for c in server.connections)
    assert broker.problem is None


def apply_subscriptions_late(server: KotakFakeServer, delay: float) -> None:
    """Make the fake take ``delay`` seconds to apply each subscribe frame (and to ack it), as a busy feed may."""
    apply = server._subscribe
    server._subscribe = lambda *args: server._loop.call_later(delay, apply, *args)  # type: ignore[method-assign]


@pytest.mark.parametrize("apply_delay", [0.0, 0.3], ids=["prompt_feed", "slow_feed"])
@pytest.mark.slow
def test_proactive_renewal_moves_every_connection_to_the_new_session_without_losing_a_tick(make_broker, apply_delay):
    with KotakFakeServer(instruments=DEFAULT_INSTRUMENTS + SYNTHETIC, token_lifetime=3) as srv:
        if apply_delay:
            apply_subscriptions_late(srv, apply_delay)
        broker = make_broker(srv, max_symbols_per_connection=3)
        instruments = synthetic(8)
        broker.subscribe(instruments)
        sink = Sink()
        broker.connect(sink)
        srv.wait_subscribed([key(i) for i in instruments])
        srv.wait_connections(3, authenticated=True)
        first_sid = srv.session_sids[-1]
        # the fake registers a subscription, then sends its snapshot: a tick sent in between would go out
        # twice (the snapshot and the tick itself); give the snapshots of the first subscriptions time to go
        time.sleep(0.5)

        # One tick per send_ticks call, so that the fake's count says exactly which ticks it sent; each tick has
        # its own cumulative volume. Stream until every connection has moved to a new session twice.
        sent: list[TapeTick] = []
        unsent = 0
        deadline = time.monotonic() + 20
        n = 0
        while time.monotonic() < deadline:
            inst = instruments[n % len(instruments)]
            t = TapeTick("nse_cm", inst.token, Decimal(100) + Decimal(n % 400) / 20, 1, 1 + n, EPOCH + n // 50)
            if srv.send_ticks([t]):
                sent.append(t)
            else:
                unsent += 1
            n += 1
            if n % 50 == 0 and all(s.session_changes >= 2 for s in broker.connection_states()):
                break
            time.sleep(0.004)
        states = broker.connection_states()
        assert all(s.session_changes >= 2 for s in states), states
        assert all(s.reconnects == 0 for s in states), states  # moved, never dropped
        assert broker.auth.logins >= 3 and srv.logins_completed >= 3
        assert all(c.auth is not None and c.auth["auth"] != first_sid for c in srv.connections)
        assert unsent == 0, f"{unsent} ticks found no subscribed socket: the old one was closed too early"

        wanted = {identity(t) for t in sent}
        try:
            sink.wait_for(lambda _: sink.seen >= wanted, timeout=5)
        except AssertionError:
            lost = sorted(wanted - sink.seen)
            raise AssertionError(f"{len(lost)} of {len(wanted)} ticks lost, e.g. {lost[:5]}") from None
        received = sink.wait_for(lambda _: True)
        assert sink.seen == wanted  # nothing the server did not send
        # Both sockets carry the ticks sent while they overlap, and a new subscription starts with a snapshot of
        # the last state: the client drops those repeats, so every tick arrives once, in order per instrument.
        counts = Counter(identity(x) for x in received)
        dups = [k for k, n in counts.items() if n > 1]
        assert not dups, (dups[:5], [(x.volume, x.receive_ts.isoformat()) for x in received if x.token == dups[0][0]][:6])
        for token in {x.token for x in received}:
            volumes = [x.volume for x in received if x.token == token]
            assert volumes == sorted(volumes), f"ticks of {token} out of order"
        prices = {t.volume: t.last_price for t in sent}
        assert all(x.last_price == prices[x.volume] for x in received)


@pytest.mark.slow
def test_an_instrument_subscribed_while_a_connection_moves_to_a_new_session_ends_up_on_the_new_socket(make_broker):
    with KotakFakeServer(instruments=DEFAULT_INSTRUMENTS, token_lifetime=3) as srv:
        apply_subscriptions_late(srv, 0.3)  # widens the move: the old socket stays until the new one is acked
        broker = make_broker(srv)
        broker.subscribe([INFY])
        sink = Sink()
        broker.connect(sink)
        srv.wait_subscribed(["nse_cm|1594"])
        wait_until(lambda: sum(c.authenticated for c in srv.connections) == 2, 6, "the socket of the new session")
        broker.subscribe([TCS])
        wait_until(lambda: broker.connection_states()[0].session_changes == 1, 5, "the move")
        # well before the next renewal (which would subscribe everything afresh anyway)
        srv.wait_connections(1, authenticated=True, timeout=1)
        srv.wait_subscribed(["nse_cm|1594", "nse_cm|11536"], timeout=1)
        assert set(srv.connections[0].subscriptions) == {"nse_cm|1594", "nse_cm|11536"}
        assert broker.connection_states()[0].session_changes == 1
        srv.send_ticks([tick(TCS, "3212.40", 4000, 70)])
        sink.wait_for(sink.has(11536, 4000))


@pytest.mark.slow
def test_credentials_refused_on_renewal_put_the_feed_in_auth_failed_without_hammering_the_login(make_broker, caplog):
    with KotakFakeServer(instruments=DEFAULT_INSTRUMENTS, token_lifetime=3) as srv:
        broker = make_broker(srv)
        broker.subscribe([INFY, TCS])
        sink = Sink()
        broker.connect(sink)
        srv.wait_subscribed(["nse_cm|1594", "nse_cm|11536"])
        assert srv.validate_attempts == 1 and broker.problem is None
        srv.fail_next("validate", "bad_mpin", times=100)  # from now on the MPIN is refused
        wait_until(lambda: broker.auth_failed is not None, 6, "the renewal to fail")
        assert CREDENTIALS_HINT == "check KOTAK_MPIN / KOTAK_TOTP_SECRET"
        assert CREDENTIALS_HINT in broker.auth_failed
        assert broker.problem.startswith("auth_failed: Kotak refused the MPIN validation")
        assert "restart marketfeed" in broker.problem and "next login try at" in broker.problem
        assert broker.reauth_failures == 1
        # the sockets opened with the old session carry on until the server ends them
        srv.send_ticks([tick(INFY, "1580.00", 900, 40)])
        sink.wait_for(sink.has(1594, 900))
        assert broker.is_connected()
        srv.expire_sessions(kick=True)
        wait_until(lambda: not any(s.connected for s in broker.connection_states()), 5, "the feed to go down")
        time.sleep(1.0)  # a retry storm would show up here
        assert srv.validate_attempts == 2 and srv.login_attempts == 2
        assert not broker.is_connected() and broker.problem is not None
        # the connections wait for the next allowed login (20 minutes on), they do not give up
        assert [t for t in threading.enumerate() if t.name.startswith("kotak-ws-") and t.is_alive()]
        assert all(s.last_error and s.last_error.startswith("auth_failed: ") for s in broker.connection_states())
        broker.disconnect()
    assert "check KOTAK_MPIN / KOTAK_TOTP_SECRET" in caplog.text


# ---------------------------------------------------------------------------------------------- API


def test_unsubscribe_sends_the_frame_on_the_owning_connection_only(server, make_broker):
    broker = make_broker(max_symbols_per_connection=2)
    broker.subscribe([INFY, TCS, NIFTY])
    broker.connect(Sink())
    server.wait_subscribed(["nse_cm|1594", "nse_cm|11536", "nse_cm|Nifty 50"])
    server.wait_connections(2, authenticated=True)
    broker.unsubscribe([TCS, NIFTY])
    server.wait_unsubscribed(["nse_cm|11536", "nse_cm|Nifty 50"])
    unsubscribes = {
        c.id: [m for m in c.messages if isinstance(m, dict) and str(m.get("event", "")).startswith("unsubscribe")]
        for c in server.connections
    }
    # INFY and TCS fill connection 1, the index goes to connection 2
    first = next(c.id for c in server.connections if "nse_cm|1594" in c.subscriptions)
    second = next(c.id for c in server.connections if c.id != first)
    assert unsubscribes[first] == [{"event": "unsubscribeScrips", "inputtoken": "nse_cm|11536"}]
    assert unsubscribes[second] == [{"event": "unsubscribeIndices", "inputtoken": "nse_cm|Nifty 50"}]
    assert [set(c.subscriptions) for c in server.connections if c.id == first] == [{"nse_cm|1594"}]
    assert broker.subscribed_count == 1


def test_disconnect_joins_every_thread_quickly_and_leaves_no_connection(server, make_broker):
    broker = make_broker()
    broker.subscribe(synthetic(250))
    broker.connect(Sink())
    server.wait_connections(3, authenticated=True)
    started = time.monotonic()
    broker.disconnect()
    assert time.monotonic() - started < 3.0
    assert not [t for t in threading.enumerate() if t.name.startswith(("kotak-ws-", "kotak-auth")) and t.is_alive()]
    server.wait_connections(0, timeout=2)
    assert not broker.is_connected()


def test_secrets_never_appear_in_logs_or_repr(make_broker, caplog):
    caplog.set_level(logging.DEBUG)
    with KotakFakeServer(mpin="739184", instruments=DEFAULT_INSTRUMENTS) as srv:
        broker = make_broker(srv)
        broker.subscribe([INFY])
        broker.connect(Sink())
        srv.wait_subscribed(["nse_cm|1594"])
        srv.drop_all()
        wait_until(lambda: srv.auth_successes >= 2, 5, "reconnect")
        srv.expire_sessions(kick=True)
        wait_until(lambda: srv.logins_completed >= 2, 5, "re-login after 1120")
        srv.wait_subscribed(["nse_cm|1594"])
        srv.fail_next("validate", "bad_mpin", times=5)
        srv.expire_sessions(kick=True)
        wait_until(lambda: broker.auth_failed is not None, 5, "credentials refused")
        broker.disconnect()
        secrets = [srv.mpin, srv.totp_secret, srv.consumer_key, *srv.session_sids, *srv.session_tokens]
    assert caplog.records, "expected log output to check"
    text = caplog.text + "\n".join(str(r.args) for r in caplog.records)
    for secret in secrets:
        assert secret not in text
        assert secret not in repr(broker) and secret not in repr(broker.auth)
    assert "FAKE1" in repr(broker)  # the UCC identifies the account and is not a secret


def test_a_malformed_binary_frame_is_counted_and_later_ticks_still_arrive(server, make_broker):
    broker = make_broker()
    broker.subscribe([INFY])
    sink = Sink()
    broker.connect(sink)
    server.wait_subscribed(["nse_cm|1594"])
    server.send_raw(b"\x05\x00\x01\x02\x03")  # a packet length of 5: shorter than the 9-byte header
    server.send_raw(b"\x40\x00" + bytes(20))  # a 64-byte packet in a 22-byte frame
    server.send_raw("not json")
    server.send_ticks([tick(INFY, "1581.25", 1300, 50)])
    sink.wait_for(sink.has(1594, 1300))
    malformed = broker.stats.malformed
    assert malformed.get("bad_length") == 1 and malformed.get("truncated_packet") == 1
    assert malformed.get("bad_json") == 1
    assert broker.is_connected() and broker.connection_states()[0].reconnects == 0


def test_a_failing_tick_callback_does_not_stop_the_feed(server, make_broker):
    broker = make_broker()
    broker.subscribe([INFY])
    calls: list[list[TickData]] = []

    def sink(batch: Sequence[TickData]) -> None:
        calls.append(list(batch))
        if len(calls) == 1:
            raise RuntimeError("downstream is broken")

    broker.connect(sink)
    server.wait_subscribed(["nse_cm|1594"])
    server.send_ticks([tick(INFY, "1570.00", 10, 60)])
    wait_until(lambda: len(calls) >= 1, 3, "the first tick")
    server.send_ticks([tick(INFY, "1570.05", 11, 61)])
    wait_until(lambda: any(t.volume == 11 for batch in calls for t in batch), 3, "the tick after the failure")
    assert broker.is_connected() and broker.connection_states()[0].reconnects == 0


def test_connect_after_disconnect_streams_again_with_the_same_session(server, make_broker):
    broker = make_broker()
    broker.subscribe([INFY])
    broker.connect(Sink())
    server.wait_subscribed(["nse_cm|1594"])
    broker.disconnect()
    server.wait_connections(0)
    sink = Sink()
    broker.connect(sink)
    server.wait_subscribed(["nse_cm|1594"])
    server.send_ticks([tick(INFY, "1575.00", 2000, 80)])
    sink.wait_for(sink.has(1594, 2000))
    assert server.logins_completed == 1
    assert broker.stats.ticks >= 1 and broker.stats.text_messages >= 2


def test_subscribe_frames_carry_the_sid_of_the_login_and_ask_for_the_ack(server, make_broker):
    broker = make_broker()
    broker.subscribe([INFY])
    broker.connect(Sink())
    server.wait_subscribed(["nse_cm|1594"])
    conn = server.connections[0]
    assert conn.auth is not None and conn.auth["auth"] == server.session_sids[-1] and conn.auth["user"] == server.ucc
    assert conn.auth["format"] == "native_batch"
    assert [m for m in conn.messages if isinstance(m, dict) and "event" in m] == [
        {"event": "subscribeScrips", "inputtoken": "nse_cm|1594", "ack_symbol": True}
    ]
    assert json.dumps(conn.auth)  # the fake kept the frame as sent
