"""Kite's historical client against the fake Kite server: minute candles over long ranges, exact
prices, the 3 requests/s limit kept, retries, and 403/400 said clearly."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from kiteconnect import KiteConnect

from brokers.base import BrokerError
from brokers.kite.historical import HistoricalUnavailable, KiteHistorical, RateLimiter, minute_chunks
from candles.model import Candle
from core.ist import IST
from core.ticks import Instrument
from testkit.fakes.kite_server import DEFAULT_INSTRUMENTS, KiteFakeServer, TapeTick

INFY = Instrument("NSE", "INFY", 408065, Decimal("0.05"))
NIFTY = Instrument("NSE", "NIFTY 50", 256265, Decimal("0.0"))  # the dump's tick size for an index
USDINR = Instrument("CDS", "USDINR24JANFUT", DEFAULT_INSTRUMENTS[4].token, Decimal("0.0025"))
DAYS = [
    datetime(2024, 1, 15, 9, 15, tzinfo=IST),
    datetime(2024, 3, 20, 9, 15, tzinfo=IST),
    datetime(2024, 5, 28, 9, 15, tzinfo=IST),
]


@pytest.fixture
def server() -> Iterator[KiteFakeServer]:
    with KiteFakeServer() as s:
        yield s


def kite(server: KiteFakeServer, token: str | None = None) -> KiteConnect:
    return KiteConnect(server.api_key, access_token=token or server.access_token, root=server.api_url)


def client(server: KiteFakeServer, token: str | None = None, **kw) -> KiteHistorical:
    kw.setdefault("limiter", RateLimiter())
    return KiteHistorical(kite(server, token), **kw)


def put_day(server: KiteFakeServer, inst: Instrument, day: datetime, prices: list[str]) -> None:
    """Three trades: two in the 09:15 minute, one in 09:16 (cumulative volume 100, 150, 175)."""
    t0 = int(day.timestamp())
    vols = [100, 150, 175] if inst is not NIFTY else [0, 0, 0]
    server.send_ticks([TapeTick(inst.token, Decimal(p), 1, v, t0 + s) for p, v, s in zip(prices, vols, (5, 40, 70))])


def candle(inst: Instrument, bucket: datetime, o: str, h: str, lo: str, c: str, volume: int, oi: int | None = 0) -> Candle:
    b = bucket.astimezone(IST)
    return Candle(
        inst.exchange, inst.symbol, "1m", b, Decimal(o), Decimal(h), Decimal(lo), Decimal(c), volume, oi, 0, b, b, None, True
    )


def test_a_range_of_months_is_fetched_in_requests_of_at_most_sixty_days(server: KiteFakeServer) -> None:
    for day in DAYS:
        put_day(server, INFY, day, ["1573.15", "1573.20", "1573.10"])
    got = client(server).minute_candles(INFY, datetime(2024, 1, 1, tzinfo=IST), datetime(2024, 6, 1, tzinfo=IST))
    want = []
    for day in DAYS:
        want += [candle(INFY, day, "1573.15", "1573.20", "1573.15", "1573.20", 150),
                 candle(INFY, day + timedelta(minutes=1), "1573.10", "1573.10", "1573.10", "1573.10", 25)]  # fmt: skip
    assert got == want
    assert [str(c.open) for c in got[:2]] == ["1573.15", "1573.10"]
    asked = [r for r in server.historical_requests if r.interval == "minute"]
    assert [r.status for r in asked] == [200, 200, 200]
    spans = [
        (datetime.fromisoformat(r.query["to"]).date() - datetime.fromisoformat(r.query["from"]).date()).days + 1 for r in asked
    ]
    assert max(spans) <= 60
    assert asked[0].query["from"] == "2024-01-01 00:00:00" and asked[-1].query["to"] == "2024-05-31 23:59:59"


def test_prices_are_exact_decimals_in_the_instruments_precision(server: KiteFakeServer) -> None:
    put_day(server, USDINR, DAYS[0], ["83.1225", "83.1250", "83.1175"])
    put_day(server, NIFTY, DAYS[0], ["21894.55", "21894.60", "21893.05"])
    end = DAYS[0] + timedelta(minutes=5)
    fx = client(server).minute_candles(USDINR, DAYS[0], end)
    assert [(str(c.open), str(c.high), str(c.close)) for c in fx] == [("83.1225", "83.1250", "83.1250"), ("83.1175",) * 3]
    index = client(server).minute_candles(NIFTY, DAYS[0], end)
    assert index == [candle(NIFTY, DAYS[0], "21894.55", "21894.60", "21894.55", "21894.60", 0),
                     candle(NIFTY, DAYS[0] + timedelta(minutes=1), "21893.05", "21893.05", "21893.05", "21893.05", 0)]  # fmt: skip


def test_the_range_is_half_open(server: KiteFakeServer) -> None:
    put_day(server, INFY, DAYS[0], ["1573.15", "1573.20", "1573.10"])
    got = client(server).minute_candles(INFY, DAYS[0], DAYS[0] + timedelta(minutes=1))
    assert [c.bucket for c in got] == [DAYS[0]]


def busiest_second(times: list[float]) -> int:
    return max((sum(1 for u in times if t <= u < t + 1.0) for t in times), default=0)


@pytest.mark.slow
def test_clients_in_several_threads_never_draw_a_429(server: KiteFakeServer) -> None:
    put_day(server, INFY, DAYS[0], ["1573.15", "1573.20", "1573.10"])
    limiter = RateLimiter()  # one per API key, as shared_limiter gives each client
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            # two requests each: the range crosses a 60-day boundary
            client(server, limiter=limiter, attempts=1).minute_candles(INFY, DAYS[0], DAYS[0] + timedelta(days=70))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    statuses = [r.status for r in server.historical_requests]
    assert statuses == [200] * 8
    assert busiest_second([r.at for r in server.historical_requests]) <= 3


class FakeTime:
    """A clock that only ``sleep`` moves: a sleep of ``d`` begun at ``t`` wakes at ``t + d`` (sleeps
    overlap, as real ones do). Thread-safe."""

    def __init__(self) -> None:
        self.now = 0.0
        self._lock = threading.Lock()

    def clock(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, delay: float, begun: float | None = None) -> None:
        with self._lock:
            self.now = max(self.now, (self.now if begun is None else begun) + delay)


def test_the_limiter_starts_three_then_waits_out_the_window_plus_the_margin() -> None:
    t = FakeTime()
    slept: list[float] = []

    def sleep(d: float) -> None:
        slept.append(d)
        t.sleep(d)

    limiter = RateLimiter(3, 1.0, margin=0.075, clock=t.clock, sleep=sleep)
    starts = [limiter.acquire() for _ in range(7)]
    assert starts == pytest.approx([0, 0, 0, 1.075, 1.075, 1.075, 2.15])
    assert slept == pytest.approx([1.075, 1.075])
    t.sleep(0.5)  # a request started later than the window needs no wait
    assert limiter.acquire() == pytest.approx(2.65) and len(slept) == 2


def test_the_limiter_never_starts_more_than_its_calls_in_a_window_under_many_threads() -> None:
    t = FakeTime()
    local = threading.local()

    def clock() -> float:
        local.seen = t.clock()
        return local.seen

    limiter = RateLimiter(3, 1.0, margin=0.075, clock=clock, sleep=lambda d: t.sleep(d, local.seen))
    starts: list[float] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(10):
            at = limiter.acquire()
            with lock:
                starts.append(at)

    threads = [threading.Thread(target=work) for _ in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    starts.sort()
    assert len(starts) == 160
    # any ``calls + 1`` consecutive starts span at least the window: no window holds more than 3
    assert min(b - a for a, b in zip(starts, starts[3:])) >= 1.075 - 1e-9
    # and it is not slower than the rule: three starts at each multiple of the window
    assert starts == pytest.approx([(i // 3) * 1.075 for i in range(160)])


def test_a_limit_without_a_margin_or_with_a_negative_one_is_told() -> None:
    assert RateLimiter(margin=0).window == 1.0
    with pytest.raises(ValueError, match="margin >= 0"):
        RateLimiter(margin=-0.1)


def test_429_and_5xx_are_retried_after_a_backoff(server: KiteFakeServer) -> None:
    put_day(server, INFY, DAYS[0], ["1573.15", "1573.20", "1573.10"])
    server.fail_historical(429, 503)
    slept: list[float] = []
    got = client(server, sleep=slept.append, rng=lambda: 0.0).minute_candles(INFY, DAYS[0], DAYS[0] + timedelta(minutes=5))
    assert len(got) == 2
    assert [r.status for r in server.historical_requests] == [429, 503, 200]
    assert slept == [pytest.approx(1.075), 0.0]  # after a 429, one window of the limit at least (1 s + margin)


def test_an_unreachable_api_fails_after_a_bounded_number_of_tries() -> None:
    hist = KiteHistorical(
        KiteConnect("k", access_token="s3cret-token", root="http://127.0.0.1:9"), attempts=3, sleep=lambda s: None
    )
    with pytest.raises(BrokerError, match="failed for NSE:INFY .*, 3 tries") as err:
        hist.minute_candles(INFY, DAYS[0], DAYS[0] + timedelta(minutes=5))
    assert hist.requests == 3
    assert "s3cret-token" not in str(err.value)


def test_an_app_without_the_historical_add_on_is_told_once_what_to_do(server: KiteFakeServer) -> None:
    server.historical_access = False
    hist = client(server)
    for inst in (INFY, USDINR):
        with pytest.raises(HistoricalUnavailable, match="historical data add-on") as err:
            hist.minute_candles(inst, DAYS[0], DAYS[0] + timedelta(minutes=5))
        assert server.access_token not in str(err.value)
    assert [r.status for r in server.historical_requests] == [403]


def test_a_refused_access_token_says_to_log_in_again(server: KiteFakeServer) -> None:
    with pytest.raises(HistoricalUnavailable, match="--login") as err:
        client(server, "wrong-token-123").minute_candles(INFY, DAYS[0], DAYS[0] + timedelta(minutes=5))
    assert "wrong-token-123" not in str(err.value)
    assert len(server.historical_requests) == 1


def test_a_refused_request_names_the_instrument_and_kites_reason_without_retrying(server: KiteFakeServer) -> None:
    unknown = Instrument("NSE", "NOSUCH", 999)
    with pytest.raises(BrokerError, match="NSE:NOSUCH .*invalid token") as err:
        client(server).minute_candles(unknown, DAYS[0], DAYS[0] + timedelta(minutes=5))
    assert not isinstance(err.value, HistoricalUnavailable)
    assert [r.status for r in server.historical_requests] == [400]


def test_chunks_cover_the_range_without_gaps_or_overlaps() -> None:
    start, end = datetime(2024, 1, 1, 9, 15, 30, 500, tzinfo=IST), datetime(2024, 4, 15, 15, 30, tzinfo=IST)
    chunks = minute_chunks(start, end)
    assert len(chunks) == 2
    assert chunks[0][0] == start.replace(microsecond=0) and chunks[-1][1] == end - timedelta(seconds=1)
    assert all(b[0] - a[1] == timedelta(seconds=1) for a, b in zip(chunks, chunks[1:]))
    assert all((to.date() - frm.date()).days < 60 for frm, to in chunks)
    with pytest.raises(ValueError, match="timezone-aware"):
        minute_chunks(datetime(2024, 1, 1), end)
