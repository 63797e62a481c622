"""The fake Kite server's historical API, proven with pykiteconnect's ``KiteConnect.historical_data``:
candles built from every tick on the tape, Kite's reply shape, and Kite's errors as kiteconnect's exceptions."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from kiteconnect import KiteConnect
from kiteconnect.exceptions import InputException, NetworkException, PermissionException, TokenException

from core.ist import IST
from testkit.fakes.kite_server import KiteFakeServer, TapeTick, random_tape

INFY, NIFTY = 408065, 256265
START = datetime(2024, 1, 15, 9, 15, tzinfo=IST)  # random_tape's default start


@pytest.fixture
def server() -> Iterator[KiteFakeServer]:
    with KiteFakeServer() as s:
        s.historical_rate_limit = None  # these tests are about the candles; the limit has its own
        yield s


def kite(server: KiteFakeServer, token: str | None = None) -> KiteConnect:
    return KiteConnect(server.api_key, access_token=token or server.access_token, root=server.api_url)


def expected_candles(tape: list[TapeTick], token: int, width: int) -> list[dict]:
    """Brute force from the tape: trades (cumulative volume rose; every index tick) by exchange minute
    bucket on the 09:15 grid, volume = rise of cumulative volume from zero at the day's start."""
    out: dict[datetime, dict] = {}
    before = 0
    for t in (t for t in tape if t.token == token):
        when = datetime.fromtimestamp(t.exchange_ts, IST)
        minutes = (when - START).total_seconds() // 60
        bucket = START + timedelta(minutes=minutes // (width // 60) * (width // 60))
        traded = t.volume > before or t.volume == 0 and token == NIFTY
        if traded:
            c = out.setdefault(bucket, {"date": bucket, "open": t.last_price, "high": t.last_price,
                                        "low": t.last_price, "volume": 0})  # fmt: skip
            c["high"], c["low"], c["close"] = max(c["high"], t.last_price), min(c["low"], t.last_price), t.last_price
            c["volume"] += t.volume - before
        if bucket in out:
            out[bucket]["oi"] = t.oi
        before = max(before, t.volume)
    return [{**c, **{k: float(c[k]) for k in ("open", "high", "low", "close")}} for c in out.values()]


def test_historical_minutes_through_kiteconnect_equal_the_candles_the_tape_makes(server: KiteFakeServer) -> None:
    tape = random_tape(seconds=300, seed=3)
    server.send_ticks(tape)  # no client is connected: the exchange traded all the same
    got = kite(server).historical_data(INFY, "2024-01-15 09:15:00", "2024-01-15 09:19:00", "minute", oi=True)
    want = expected_candles(tape, INFY, 60)
    assert [c["date"] for c in got] == [START + timedelta(minutes=m) for m in range(5)]
    assert all(c["date"].utcoffset() == timedelta(hours=5, minutes=30) for c in got)
    assert got == want
    assert sum(c["volume"] for c in got) == [t for t in tape if t.token == INFY][-1].volume


def test_five_minute_and_index_candles_follow_the_same_rules(server: KiteFakeServer) -> None:
    tape = random_tape(seconds=600, seed=4)
    server.send_ticks(tape)
    five = kite(server).historical_data(INFY, "2024-01-15 09:15:00", "2024-01-15 09:24:59", "5minute", oi=True)
    assert five == expected_candles(tape, INFY, 300)
    index = kite(server).historical_data(NIFTY, "2024-01-15 09:15:00", "2024-01-15 09:24:00", "minute")
    assert [{k: v for k, v in c.items() if k != "oi"} for c in expected_candles(tape, NIFTY, 60)] == index
    assert all(c["volume"] == 0 and "oi" not in c for c in index)


def test_to_is_inclusive_and_minutes_outside_the_range_are_left_out(server: KiteFakeServer) -> None:
    server.send_ticks(random_tape(seconds=300, seed=5))
    got = kite(server).historical_data(INFY, "2024-01-15 09:16:00", "2024-01-15 09:18:00", "minute")
    assert [c["date"].strftime("%H:%M") for c in got] == ["09:16", "09:17", "09:18"]


def test_quote_only_ticks_and_ticks_sent_while_muted_count_as_the_exchange_sent_them(server: KiteFakeServer) -> None:
    t0 = int(START.timestamp())
    server.send_ticks([TapeTick(INFY, Decimal("100.00"), 10, 10, t0)])
    server.go_mute()
    server.send_ticks([TapeTick(INFY, Decimal("101.50"), 5, 15, t0 + 61), TapeTick(INFY, Decimal("99.00"), 5, 15, t0 + 62)])
    server.go_mute(False)
    got = kite(server).historical_data(INFY, "2024-01-15 09:15:00", "2024-01-15 09:17:00", "minute")
    assert [(c["date"].minute, c["open"], c["high"], c["low"], c["close"], c["volume"]) for c in got] == [
        (15, 100.0, 100.0, 100.0, 100.0, 10),
        (16, 101.5, 101.5, 101.5, 101.5, 5),  # the 99.00 repeat moved no volume: a quote, not a trade
    ]


def test_a_range_longer_than_kites_limit_is_an_input_exception(server: KiteFakeServer) -> None:
    client = kite(server)
    client.historical_data(INFY, "2024-01-01 00:00:00", "2024-02-29 23:59:59", "minute")  # 60 dates: allowed
    with pytest.raises(InputException, match="interval exceeds max limit: 60 days") as err:
        client.historical_data(INFY, "2024-01-01 00:00:00", "2024-03-01 00:00:00", "minute")
    assert err.value.code == 400
    client.historical_data(INFY, "2024-01-01", "2024-04-09", "5minute")  # 100 days for 5minute


@pytest.mark.parametrize(
    ("token", "start", "end", "interval", "words"),
    [
        (INFY, "15-01-2024", "2024-01-16 00:00:00", "minute", "from date"),
        (INFY, "2024-01-15 09:15:00", "soon", "minute", "to date"),
        (INFY, "2024-01-16 09:15:00", "2024-01-15 09:15:00", "minute", "date range"),
        (INFY, "2024-01-15 09:15:00", "2024-01-15 10:15:00", "2minute", "interval"),
        (999, "2024-01-15 09:15:00", "2024-01-15 10:15:00", "minute", "token"),
    ],
)
def test_bad_parameters_are_input_exceptions(server: KiteFakeServer, token, start, end, interval, words) -> None:
    with pytest.raises(InputException, match=words) as err:
        kite(server).historical_data(token, start, end, interval)
    assert err.value.code == 400


def test_a_bad_access_token_is_a_token_exception(server: KiteFakeServer) -> None:
    with pytest.raises(TokenException) as err:
        kite(server, "not-the-token").historical_data(INFY, "2024-01-15 09:15:00", "2024-01-15 10:15:00", "minute")
    assert err.value.code == 403


def test_an_app_without_the_historical_add_on_gets_a_permission_exception(server: KiteFakeServer) -> None:
    server.historical_access = False
    with pytest.raises(PermissionException, match="Insufficient permission") as err:
        kite(server).historical_data(INFY, "2024-01-15 09:15:00", "2024-01-15 10:15:00", "minute")
    assert err.value.code == 403
    assert kite(server).profile()["user_id"] == server.user_id  # the token itself is fine


def test_more_than_three_requests_in_a_second_get_429_too_many_requests(server: KiteFakeServer) -> None:
    server.historical_rate_limit = 3
    client = kite(server)
    with pytest.raises(NetworkException, match="Too many requests") as err:
        for _ in range(10):  # loopback answers in milliseconds: the fourth arrives within the second
            client.historical_data(INFY, "2024-01-15 09:15:00", "2024-01-15 10:15:00", "minute")
    assert err.value.code == 429
    assert busiest_second([r.at for r in server.historical_requests if r.status == 200]) == 3


def busiest_second(times: list[float]) -> int:
    """The most requests in any window of one second."""
    return max((sum(1 for u in times if t <= u < t + 1.0) for t in times), default=0)


def test_injected_server_errors_come_back_as_kiteconnect_exceptions(server: KiteFakeServer) -> None:
    server.fail_historical(503, 429)
    client = kite(server)
    for code in (503, 429):
        with pytest.raises(NetworkException) as err:
            client.historical_data(INFY, "2024-01-15 09:15:00", "2024-01-15 10:15:00", "minute")
        assert err.value.code == code
    assert client.historical_data(INFY, "2024-01-15 09:15:00", "2024-01-15 10:15:00", "minute") == []
