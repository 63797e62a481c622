"""brokers.feed without a network: the resubscribe dedupe, the session loop's rules, the spreading."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from brokers.base import BrokerError
from brokers.feed import FeedBroker, FeedConnection, Outcome, ResubscribeDedupe, Stalled, Stop
from core.ist import IST
from core.ticks import Instrument, TickData

T0 = datetime(2024, 1, 15, 9, 15, tzinfo=IST)


def tick(token: int, price: str, second: int = 0, volume: int | None = None) -> TickData:
    ts = T0 + timedelta(seconds=second)
    return TickData("test", "NSE", f"S{token}", token, Decimal(price), None, volume, None, ts, ts)


def plain_identity(t: TickData) -> tuple:
    return (t.token, t.exchange_ts, t.last_price)


def full_identity(t: TickData) -> tuple:
    return (t.token, t.exchange_ts, t.last_price, t.volume)


# ---------------------------------------------------------------------------------------------- dedupe


def test_a_dedupe_looking_at_ticks_without_volume_only_drops_their_copies_and_keeps_the_rest():
    dedupe = ResubscribeDedupe(plain_identity, without_volume_only=True)
    last = {1: tick(1, "100.00", 0)}
    dedupe.arm(last)
    traded = tick(1, "100.00", 0, volume=50)  # same time and price, but with volume: not looked at
    fresh = tick(1, "100.05", 1)
    assert dedupe.filter([tick(1, "100.00", 0), traded, fresh, tick(1, "100.05", 1)]) == [traded, fresh]
    assert dedupe.armed


def test_a_dedupe_dropping_older_ticks_drops_what_precedes_the_last_delivered_and_what_a_drained_socket_brought():
    dedupe = ResubscribeDedupe(full_identity)
    last = {1: tick(1, "100.00", 5, 10), 2: tick(2, "50.00", 5, 7)}
    drained = tick(2, "50.10", 6, 8)
    dedupe.arm(last, drop_older=True, seen=[full_identity(drained)])
    newer = tick(1, "100.10", 6, 11)
    kept = dedupe.filter([tick(1, "99.00", 4, 9), last[1], drained, newer, tick(2, "50.20", 7, 9)])
    assert kept == [newer, tick(2, "50.20", 7, 9)]


def test_without_drop_older_an_older_tick_that_is_no_copy_is_kept():
    dedupe = ResubscribeDedupe(full_identity)
    dedupe.arm({1: tick(1, "100.00", 5, 10)})
    assert dedupe.filter([tick(1, "99.00", 4, 9)]) == [tick(1, "99.00", 4, 9)]


def test_once_the_window_has_passed_the_dedupe_hands_back_the_same_list_and_disarms():
    dedupe = ResubscribeDedupe(full_identity, window=0.05)
    dedupe.arm({1: tick(1, "100.00")})
    assert dedupe.filter([tick(1, "100.00")]) == []  # the window opens with the first ticks
    time.sleep(0.1)
    ticks = [tick(1, "100.00")]
    assert dedupe.filter(ticks) is ticks
    assert not dedupe.armed


def test_a_thread_that_reads_nothing_for_longer_than_the_window_after_arming_still_drops_the_copies():
    """A loaded machine: the connection's thread gets to the new socket's first frame late."""
    dedupe = ResubscribeDedupe(full_identity, window=0.05)
    dedupe.arm({1: tick(1, "100.00")})
    time.sleep(0.1)
    assert dedupe.filter([tick(1, "100.00"), tick(1, "100.05")]) == [tick(1, "100.05")]


# ---------------------------------------------------------------------------------------------- the loop


class _Decoder:
    def __init__(self) -> None:
        self.instruments: dict = {}

    def set_instruments(self, instruments: Mapping) -> None:
        self.instruments = dict(instruments)


class _Conn(FeedConnection):
    venue = "test"
    log = logging.getLogger("tests.feed")

    def __init__(self, broker: _Broker, conn_id: int) -> None:
        super().__init__(broker, conn_id, _Decoder(), ResubscribeDedupe(full_identity))
        self.sessions: list[Callable[[_Conn], None]] = []

    def _session(self, reconnect: bool) -> None:
        if not self.sessions:
            raise Stop
        self.sessions.pop(0)(self)

    def _subscribe_frames(self, instruments: Mapping) -> list[str]:
        return [",".join(map(str, instruments))]

    def _unsubscribe_frames(self, instruments: Mapping) -> list[str]:
        return []

    def _last_delivered(self) -> Mapping[int, TickData]:
        return {}

    def _classify(self, exc: Exception, failures: int) -> Outcome | None:
        if isinstance(exc, PermissionError):
            return Outcome("refused for good", stop=True)
        if isinstance(exc, LookupError):
            return Outcome("a new key", 0.0, fresh=True)
        return super()._classify(exc, failures)


class _Broker(FeedBroker):
    name = "test"
    max_symbols_per_connection = 2
    max_connections = 3
    connection_type = _Conn

    def __init__(self) -> None:
        super().__init__(stall_timeout=1.0, backoff_initial=0.0, backoff_max=0.0, clock=lambda: 0.0)

    def _key(self, inst: Instrument) -> int:
        return inst.token

    def _subscription_key(self, inst: Instrument) -> int:
        if inst.token <= 0:
            raise BrokerError(f"{inst.key} has no token")
        return inst.token


def raising(exc: Exception) -> Callable[[_Conn], None]:
    def session(conn: _Conn) -> None:
        raise exc

    return session


def reconnecting(caplog: pytest.LogCaptureFixture) -> list[tuple[str, int]]:
    return [(r.reason, r.attempt) for r in caplog.records if getattr(r, "event", None) == "reconnecting"]


def test_each_ended_session_is_retried_with_its_reason_and_attempt_number_until_the_venue_says_stop(caplog):
    caplog.set_level(logging.WARNING, logger="tests.feed")
    conn = _Conn(_Broker(), 1)
    conn.sessions = [lambda c: None, raising(ConnectionResetError("reset")), raising(Stalled("connection 1 stalled")),
                     raising(LookupError()), raising(OSError("down")), raising(PermissionError())]  # fmt: skip
    conn._run()
    assert reconnecting(caplog) == [
        ("server closed the connection", 1),
        ("ConnectionResetError: reset", 2),
        ("connection 1 stalled", 3),
        ("a new key", 1),  # fresh: the count starts again
        ("OSError: down", 2),
    ]
    assert conn.last_error == "OSError: down" and not conn.connected and not conn.sessions
    assert all(r.getMessage().startswith("test connection 1: ") for r in caplog.records)


def test_an_exception_the_venue_does_not_know_ends_the_thread_with_it():
    conn = _Conn(_Broker(), 1)
    conn.sessions = [raising(ZeroDivisionError("bug"))]
    with pytest.raises(ZeroDivisionError):
        conn._run()
    assert not conn.connected


# ---------------------------------------------------------------------------------------------- the broker


def test_a_watchlist_fills_connection_1_then_2_and_is_refused_beyond_the_capacity():
    broker = _Broker()
    broker.subscribe([Instrument("NSE", f"S{k}", k) for k in (1, 2, 3)])
    broker.subscribe([Instrument("NSE", f"S{k}", k) for k in (3, 4, 5)])  # 3 is already there
    assert [sorted(c.instruments) for c in broker._conns] == [[1, 2], [3, 4], [5]]
    assert [(s.id, s.instruments) for s in broker.connection_states()] == [(1, 2), (2, 2), (3, 1)]
    with pytest.raises(BrokerError, match=r"7 instruments .* 2 per connection x 3 connections = 6"):
        broker.subscribe([Instrument("NSE", "S6", 6), Instrument("NSE", "S7", 7)])
    with pytest.raises(BrokerError, match="has no token"):
        broker.subscribe([Instrument("NSE", "NOTOKEN")])
    broker.unsubscribe([Instrument("NSE", "S3", 3), Instrument("NSE", "S1", 1)])
    assert broker.subscribed_count == 3 and [sorted(c.instruments) for c in broker._conns] == [[2], [4], [5]]
    assert broker._conns[0].decoder.instruments.keys() == {2}
    broker.subscribe([Instrument("NSE", "S6", 6)])  # the first connection with room
    assert sorted(broker._conns[0].instruments) == [2, 6]
