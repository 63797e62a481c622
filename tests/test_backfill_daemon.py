"""The daemon's own backfill (pipeline/backfill.py): which buckets it asks for, when, and what it
hands the writer; retries and refusals. A small in-memory history stands for the broker's (the
Kite fake serves the real one in the process-level tests)."""

from __future__ import annotations

import logging
import signal
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from brokers.base import BrokerError, HistoryUnavailable
from candles.model import BACKFILL, LIVE, Candle, Interval, parse_intervals
from core.ist import IST
from core.market_calendar import MarketCalendar
from pipeline import backfill
from pipeline.backfill import Backfiller, Filled
from pipeline.reconcile import DailyReconciler
from storage.sqlite import SQLiteStore
from testkit.cli import main_env, run_main, start_main
from testkit.fakes import kotak_server as kotak
from testkit.fakes.kite_server import DEFAULT_INSTRUMENTS, KiteFakeServer, TapeTick, historical_candles, random_tape
from testkit.reference import reference_candles
from testkit.waiting import free_port, wait_until
from tests.test_kite_end_to_end import as_arrivals
from tests.test_kotak_end_to_end import as_arrivals as kotak_arrivals
from tests.test_kotak_end_to_end import kotak_env

MONDAY_10 = datetime(2026, 12, 7, 10, 0, tzinfo=IST).timestamp()
INFY = ("NSE", "INFY")
TCS = ("NSE", "TCS")


def minute(key: tuple[str, str], at: float, price: str, volume: int) -> Candle:
    bucket = datetime.fromtimestamp(at, IST)
    p = Decimal(price)
    return Candle(key[0], key[1], "1m", bucket, p, p + 1, p - 1, p, volume, None, 0, bucket, bucket, None, True)


class History:
    """Every minute of the day has a candle; ``fail`` makes the next calls raise."""

    name = "test history"

    def __init__(self) -> None:
        self.asked: list[tuple[tuple[str, str], float, float]] = []
        self.fail: list[BaseException] = []  # raised by the next calls, whatever the symbol
        self.fail_for: dict[tuple[str, str], list[BaseException]] = {}  # by the next calls for a symbol
        self.unknown: set[tuple[str, str]] = set()

    def prepare(self, keys: list[tuple[str, str]]) -> None:
        pass

    def minute_candles(self, exchange: str, symbol: str, start: datetime, end: datetime) -> list[Candle] | None:
        key = (exchange, symbol)
        self.asked.append((key, start.timestamp(), end.timestamp()))
        if self.fail:
            raise self.fail.pop(0)
        if self.fail_for.get(key):
            raise self.fail_for[key].pop(0)
        if key in self.unknown:
            return None
        out = []
        t = start.timestamp()
        while t < end.timestamp():
            out.append(minute(key, t, str(100 + int((t - MONDAY_10) // 60)), 10))
            t += 60
        return out


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(intervals: str = "1m", delay: float = 60.0, calendar: MarketCalendar | None = None):
    history = History()
    clock = Clock(MONDAY_10)
    emitted: list[Candle] = []
    filled: list[Filled] = []
    cal = MarketCalendar() if calendar is None else calendar
    b = Backfiller(history, parse_intervals(intervals), emitted.extend, filled.append, lambda: cal, delay=delay, clock=clock)
    return b, history, clock, emitted, filled


def test_an_outage_is_mended_once_its_minutes_have_ended_and_settled():
    b, history, clock, emitted, filled = make("1m", delay=60)
    clock.now = MONDAY_10 + 150  # the feed came back at 10:02:30 after going down at 10:00:30
    b.want([INFY], MONDAY_10 + 30, MONDAY_10 + 150)
    b.step()
    assert history.asked == []  # 10:02 has not ended: nothing yet
    clock.now = MONDAY_10 + 180 + 59
    b.step()
    assert history.asked == []  # ended, not settled
    clock.now = MONDAY_10 + 240
    b.step()
    assert history.asked == [(INFY, MONDAY_10, MONDAY_10 + 180)]  # 10:00, 10:01, 10:02: both neighbours too
    assert [(c.bucket.timestamp(), c.source, c.final) for c in emitted] == [(MONDAY_10 + i * 60, BACKFILL, True) for i in range(3)]
    assert filled == [Filled((INFY,), MONDAY_10, MONDAY_10 + 180)]
    assert b.stats.pending == 0


def test_coarser_buckets_wait_for_their_own_end_and_are_rolled_up_from_the_whole_buckets_minutes():
    b, history, clock, emitted, _ = make("1m,5m", delay=0)
    clock.now = MONDAY_10 + 150
    b.want([INFY], MONDAY_10 + 90, MONDAY_10 + 150)  # 10:01:30 to 10:02:30
    clock.now = MONDAY_10 + 180
    b.step()
    assert history.asked == [(INFY, MONDAY_10 + 60, MONDAY_10 + 180)]
    assert {c.interval for c in emitted} == {"1m"}
    clock.now = MONDAY_10 + 300
    b.step()
    assert history.asked[-1] == (INFY, MONDAY_10, MONDAY_10 + 300)  # the whole 10:00 bucket
    (five,) = [c for c in emitted if c.interval == "5m"]
    assert (five.bucket.timestamp(), five.open, five.close, five.volume) == (MONDAY_10, Decimal(100), Decimal(104), 50)
    assert five.high == Decimal(105) and five.low == Decimal(99)
    assert five.source == BACKFILL and five.final


def test_a_span_outside_the_sessions_asks_nothing_and_one_across_the_close_stops_at_it():
    b, history, clock, emitted, _ = make("1m,1h", delay=0)
    close = datetime(2026, 12, 7, 15, 30, tzinfo=IST).timestamp()
    clock.now = close + 3600
    b.want([INFY], close + 60, close + 1800)  # after the close
    b.step()
    assert history.asked == [] and b.stats.pending == 0
    b.want([INFY], close - 90, close + 1800)  # 15:28:30 to 16:00
    b.step()
    # 1m: 15:28 and 15:29; 1h: the 15:15 bucket, which ends at the close
    assert history.asked == [(INFY, close - 15 * 60, close + 45 * 60)]
    assert sorted((c.interval, c.bucket.strftime("%H:%M")) for c in emitted) == [
        ("1h", "15:15"), ("1m", "15:28"), ("1m", "15:29"),
    ]  # fmt: skip


def test_a_weekend_start_after_a_friday_kill_mends_fridays_rest():
    b, history, clock, emitted, filled = make("1m,1d", delay=60)
    friday_kill = datetime(2026, 12, 4, 15, 0, 30, tzinfo=IST).timestamp()
    clock.now = datetime(2026, 12, 6, 12, 0, tzinfo=IST).timestamp()  # Sunday
    b.want([INFY], friday_kill, clock.now)
    b.step()
    friday = datetime(2026, 12, 4, tzinfo=IST).timestamp()
    assert history.asked == [(INFY, friday, friday + 86_400)]  # one request: the day holds every minute due
    minutes = sorted(c.bucket.strftime("%H:%M") for c in emitted if c.interval == "1m")
    assert minutes[0] == "15:00" and minutes[-1] == "15:29" and len(minutes) == 30
    (day,) = [c for c in emitted if c.interval == "1d"]
    assert day.volume == 375 * 10  # the whole session's minutes (09:15-15:30) from the history
    assert filled[0].since == friday


def test_the_spans_wait_for_the_calendar():
    history = History()
    clock = Clock(MONDAY_10 + 600)
    calendar: list[MarketCalendar] = []
    b = Backfiller(history, parse_intervals("1m"), lambda c: None, lambda f: None,
                   lambda: calendar[0] if calendar else None, delay=0, clock=clock)  # fmt: skip
    b.want([INFY], MONDAY_10, MONDAY_10 + 60)
    b.step()
    assert history.asked == []
    calendar.append(MarketCalendar())
    b.step()
    assert history.asked == [(INFY, MONDAY_10, MONDAY_10 + 60)]


def test_a_failing_request_is_tried_again_with_backoff_then_left_as_a_gap(caplog):
    b, history, clock, emitted, filled = make("1m", delay=0)
    clock.now = MONDAY_10 + 120
    history.fail_for = {INFY: [BrokerError("HTTP 502")] * backfill.ATTEMPTS, TCS: [BrokerError("HTTP 502")]}
    b.want([INFY, TCS], MONDAY_10, MONDAY_10 + 60)
    b.step()
    assert [k for k, _, _ in history.asked] == [INFY, TCS]  # one failing symbol does not hold up the others
    assert b.stats.pending == 2 and b.stats.failures == 2
    clock.now += backfill.RETRY_S - 1
    b.step()
    assert len(history.asked) == 2  # the backoff has not passed
    for attempt in range(1, backfill.ATTEMPTS):
        clock.now += backfill.RETRY_S * 2 ** (attempt - 1)
        b.step()
    assert b.stats.given_up == 1 and b.stats.pending == 0
    assert "backfill of NSE:INFY given up after 4 tries (HTTP 502): its gaps stay recorded" in caplog.text
    assert [c.symbol for c in emitted] == ["TCS"]  # mended at its second try
    assert [f.keys for f in filled] == [(TCS,)]  # INFY's minute stays a gap


def test_a_lasting_refusal_is_said_once_and_nothing_more_is_asked(caplog):
    b, history, clock, emitted, _ = make("1m", delay=0)
    clock.now = MONDAY_10 + 600
    history.fail = [HistoryUnavailable("no historical add-on (403)", lasting=True)]
    b.want([INFY, TCS], MONDAY_10, MONDAY_10 + 60)
    b.step()
    assert b.problem == "backfill: no historical add-on (403)"
    b.want([INFY], MONDAY_10 + 60, MONDAY_10 + 120)
    clock.now += 3600
    b.step()
    assert len(history.asked) == 1 and emitted == [] and b.stats.pending == 0
    assert caplog.text.count("backfill off for this run") == 1


def test_a_refused_token_pauses_the_backfill_until_a_new_one_is_taken():
    b, history, clock, emitted, _ = make("1m", delay=0)
    clock.now = MONDAY_10 + 600
    history.fail = [HistoryUnavailable("token expired (403)")]
    b.want([INFY], MONDAY_10, MONDAY_10 + 60)
    b.step()
    assert b.problem is not None and emitted == []
    clock.now += backfill.TOKEN_RETRY_S
    b.step()
    assert b.problem is None and len(emitted) == 1


def test_an_unknown_symbol_leaves_its_gap_and_the_others_are_mended(caplog):
    b, history, clock, emitted, filled = make("1m", delay=0)
    clock.now = MONDAY_10 + 600
    history.unknown = {TCS}
    b.want([INFY, TCS], MONDAY_10, MONDAY_10 + 60)
    b.step()
    assert [c.symbol for c in emitted] == ["INFY"]
    assert [f.keys for f in filled] == [(INFY,)]
    assert "test history does not know NSE:TCS: its gaps stay recorded" in caplog.text


@pytest.mark.parametrize("days", [3, 90])
def test_a_span_is_asked_for_at_most_sixty_days_back(days):
    b, history, clock, _, _ = make("1m", delay=0)
    clock.now = MONDAY_10
    b.want([INFY], MONDAY_10 - days * 86_400, MONDAY_10 - 3600)  # the span ends before Monday's open
    b.step()
    ((_, lo, hi),) = history.asked
    assert MONDAY_10 - days * 86_400 <= lo
    assert MONDAY_10 - 3600 - lo <= backfill.MAX_SPAN_DAYS * 86_400
    assert hi == datetime(2026, 12, 4, 15, 30, tzinfo=IST).timestamp()  # Friday's close


# ---- the daily check against the broker (pipeline/reconcile.py) ------------------------------------

MONDAY = datetime(2026, 12, 7, tzinfo=IST).date()
CLOSE = datetime(2026, 12, 7, 15, 30, tzinfo=IST).timestamp()


def stored_day(store, key: tuple[str, str], *, wrong_at: float | None = None) -> None:
    """The day's minutes as the history has them (live, final); one of them wrong if asked."""
    history = History()
    day = [
        replace(c, source=LIVE, close=c.close + (1 if c.bucket.timestamp() == wrong_at else 0))
        for c in history.minute_candles(*key, datetime.fromtimestamp(CLOSE - 375 * 60, IST), datetime.fromtimestamp(CLOSE, IST))
    ]
    store.upsert(day)


@pytest.fixture
def day_store(tmp_path):
    store = SQLiteStore(tmp_path / "candles.db")
    store.migrate()
    yield store
    store.close()


def test_after_the_close_each_symbols_day_is_compared_once_and_stored(day_store, caplog):
    caplog.set_level(logging.INFO)
    stored_day(day_store, INFY, wrong_at=CLOSE - 3600)
    stored_day(day_store, TCS)
    history, clock = History(), Clock(CLOSE + 30)
    check = DailyReconciler(history, day_store, lambda: [INFY, TCS], delay=60, clock=clock)
    calendar = MarketCalendar()
    assert check.due(calendar) is None  # the history has not settled yet
    clock.now = CLOSE + 61
    assert check.due(calendar) == MONDAY
    check.run(calendar, MONDAY, lambda: False)
    assert [k for k, _, _ in history.asked] == [INFY, TCS]
    results = {r.symbol: r for r in day_store.reconciliations(MONDAY)}
    assert (results["INFY"].compared, results["INFY"].mismatched, results["INFY"].close_diff) == (375, 1, 1)
    assert (results["TCS"].compared, results["TCS"].mismatched) == (375, 0)
    assert (check.day, check.mismatches) == (MONDAY, 1)
    assert "reconcile 2026-12-07: 2 symbols, 750 buckets compared, 1 mismatched (close 1)" in caplog.text
    assert "NSE:INFY: 1 mismatched (close 1)" in caplog.text
    assert check.due(calendar) is None  # done


def test_a_day_an_earlier_run_compared_is_not_asked_again_and_gives_the_metric(day_store):
    stored_day(day_store, INFY, wrong_at=CLOSE - 60)
    first = DailyReconciler(History(), day_store, lambda: [INFY], delay=60, clock=Clock(CLOSE + 120))
    first.run(MarketCalendar(), MONDAY, lambda: False)
    history = History()
    again = DailyReconciler(history, day_store, lambda: [INFY], delay=60, clock=Clock(CLOSE + 3600))
    assert again.due(MarketCalendar()) is None
    assert history.asked == [] and (again.day, again.mismatches) == (MONDAY, 1)


def test_a_weekend_has_nothing_to_compare():
    history = History()
    sunday_night = datetime(2026, 12, 6, 23, 0, tzinfo=IST).timestamp()
    check = DailyReconciler(history, None, lambda: [INFY], delay=60, clock=Clock(sunday_night))  # type: ignore[arg-type]
    assert check.due(MarketCalendar()) is None and history.asked == []


def test_the_backfill_thread_runs_the_days_check_and_the_metric_shows_it(day_store):
    from ops.http import HttpServer
    from pipeline.health import Health

    stored_day(day_store, INFY, wrong_at=CLOSE - 120)
    history, clock = History(), Clock(CLOSE + 120)
    check = DailyReconciler(history, day_store, lambda: [INFY], delay=60, clock=clock)
    b = Backfiller(history, parse_intervals("1m"), lambda c: None, lambda f: None, lambda: MarketCalendar(),
                   delay=60, clock=clock, reconciler=check)  # fmt: skip
    b.step()
    assert check.mismatches == 1
    health = Health(stopping=False, time=datetime.now(IST), uptime_s=1, broker="kite", broker_problem=None,
                    connections=(), symbols=1, ticks=0, last_tick_age_s=None, candles_written=0, rejected_candles=0,
                    store_errors=0, spool_depth=0, store="sqlite", store_up=True, late_ticks=0, dropped_ticks=0,
                    pipeline_alive=True, pipeline_max_age=10, reauths=0, version="test",
                    reconcile_day=check.day, reconcile_mismatches=check.mismatches)  # fmt: skip
    server = HttpServer(lambda: health)
    server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    finally:
        server.stop()
    assert "marketfeed_reconcile_mismatches 1.0" in text


# ---- the daemon as a user runs it: the Kite fake, real processes, the wall clock -------------------

STOCKS = [i for i in DEFAULT_INSTRUMENTS if f"{i.exchange}:{i.tradingsymbol}" in ("NSE:INFY", "NSE:RELIANCE")]


def open_all_day(root: Path, opens: float | None = None) -> Path:
    """A calendar file with NSE in session all of today and tomorrow (IST): the test runs at any hour.
    ``opens`` (epoch seconds, on a minute): the first day is that one's and its session opens then
    (a daemon started before it has no gap before it). Each day's regular session is closed first:
    on a trading day a special session is added to it, and the day would open at 09:15."""
    first = datetime.now(IST) if opens is None else datetime.fromtimestamp(opens, IST)
    days = ((first.date(), "00:00" if opens is None else f"{first:%H:%M}"), (first.date() + timedelta(days=1), "00:00"))
    path = root / "calendar.toml"
    path.write_text(
        "".join(
            f'[[closed]]\ndate = {day.isoformat()}\nexchanges = ["NSE"]\n\n'
            f'[[session]]\ndate = {day.isoformat()}\nexchanges = ["NSE"]\nopen = "{start}"\nclose = "23:59"\n\n'
            for day, start in days
        )
    )
    return path


class Tape:
    """Hands each tape tick to ``send`` (a fake's ``send_ticks``) once the wall clock reaches its
    exchange second, whether or not the daemon is connected (the fake's history keeps it either way)."""

    def __init__(self, send: Callable[[list[TapeTick]], object], ticks: list[TapeTick]) -> None:
        self.send = send
        self.ticks = ticks
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self.sent < len(self.ticks) and not self._stop.wait(0.1):
            now = time.time()
            due = self.sent
            while due < len(self.ticks) and self.ticks[due].exchange_ts <= now:
                due += 1
            if due > self.sent:
                self.send(self.ticks[self.sent : due])
                self.sent = due

    def wait(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert self.sent == len(self.ticks), "the tape did not finish"

    def stop(self) -> None:
        self._stop.set()


def minute_rows(root: Path) -> dict[tuple[str, int], Candle]:
    store = SQLiteStore(root / "data" / "marketfeed.db")
    try:
        return {
            (c.symbol, int(c.bucket.timestamp())): c
            for i in STOCKS
            for c in store.latest("NSE", i.tradingsymbol, "1m", limit=10_000)
        }
    finally:
        store.close()


def ohlcv(values: dict | Candle) -> tuple:
    if isinstance(values, Candle):
        return (values.open, values.high, values.low, values.close, values.volume)
    return tuple(values[f] for f in ("open", "high", "low", "close", "volume"))


def kite_minutes(server: KiteFakeServer) -> dict[tuple[str, int], tuple]:
    """The fake's historical minute candles (what Kite's history answers), as OHLCV."""
    out = {}
    for inst in STOCKS:
        for row in historical_candles(server.history(inst.token), "minute", 0, 2**31):
            bucket = int(datetime.strptime(row[0], "%Y-%m-%dT%H:%M:%S%z").timestamp())
            out[(inst.tradingsymbol, bucket)] = tuple(Decimal(repr(p)).quantize(Decimal("0.01")) for p in row[1:5]) + (row[5],)
    return out


def kite_reference(tape: list[TapeTick]) -> dict:
    """The minute candles the live rules make of the whole tape, as the Kite feed sends it."""
    return reference_candles(as_arrivals(tape), [Interval.parse("1m")])


def check_minutes(root: Path, server: KiteFakeServer, reference: dict, mended: set[int], first: int | None = None) -> None:
    """Every minute of the tape is stored; ``mended`` (and the tape's first minute, watched from
    part-way) are ``backfill`` and equal the fake's history; the rest are ``live``, final and equal
    the ``reference`` of the whole tape (unchanged by the backfill)."""
    rows = minute_rows(root)
    history = kite_minutes(server)
    assert set(rows) == set(history), "a minute of the tape is missing, or one was made up"
    for (symbol, bucket), candle in sorted(rows.items()):
        where = f"{symbol} {datetime.fromtimestamp(bucket, IST):%H:%M}"
        if bucket in mended:
            assert candle.source == BACKFILL, f"{where} is {candle.source}, not mended"
        elif bucket != first:
            assert candle.source == LIVE and candle.final, f"{where} is {candle.source}, should be live"
        if candle.source == BACKFILL:
            assert ohlcv(candle) == history[(symbol, bucket)], where
        else:
            assert ohlcv(candle) == ohlcv(reference[("NSE", symbol, "1m", bucket)]), where


def kite_settings(server: KiteFakeServer) -> dict[str, str]:
    return {
        "KITE_API_KEY": server.api_key, "KITE_API_SECRET": server.api_secret, "KITE_WS_URL": server.ws_url,
        "KITE_API_URL": server.api_url, "KITE_ACCESS_TOKEN": server.access_token,
    }  # fmt: skip


def backfill_env(server: KiteFakeServer, root: Path, opens: float | None = None) -> dict[str, str]:
    return main_env(
        **kite_settings(server), FEED_STALL_SECONDS="2", STATUS_INTERVAL_SECONDS="5", BACKFILL_DELAY_SECONDS="1",
        MARKET_CALENDAR_FILE=str(open_all_day(root, opens)),
    )  # fmt: skip


def mended(root: Path, bucket: int) -> bool:
    rows = minute_rows(root)
    return all((i.tradingsymbol, bucket) in rows and rows[(i.tradingsymbol, bucket)].source == BACKFILL for i in STOCKS)


def next_minute(t: float, at_least: float) -> int:
    m = int(t // 60 * 60) + 60
    return m if m - t >= at_least else m + 60


def wait_for(what: str, timeout: float, check) -> None:  # noqa: ANN001
    wait_until(check, timeout, what)


ARGS = ("--broker", "kite", "--symbols", "NSE:INFY", "NSE:RELIANCE", "--intervals", "1m")


@pytest.mark.slow
def test_a_daemon_killed_for_a_minute_and_a_half_has_every_minute_after_its_restart(tmp_path):
    """SIGKILL 35 s into minute M, back 2 s into M+2: M+1 was never watched, M and M+2 only in part.
    All three are mended from the history; the minutes watched whole stay as they were."""
    with KiteFakeServer(heartbeat_interval=0.5, instruments=DEFAULT_INSTRUMENTS) as server:
        env = backfill_env(server, tmp_path)
        proc = start_main(*ARGS, cwd=tmp_path, env=env)
        tape = None
        try:
            server.wait_subscribed([i.token for i in STOCKS], timeout=30, mode="full")
            start = int(time.time()) + 1
            m = next_minute(start, 20)
            tape = Tape(server.send_ticks, random_tape(STOCKS, seconds=m + 150 - start, seed=3, start_epoch=start))
            time.sleep(max(0.0, m + 35 - time.time()))
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
            killed = server.last_connection_id
            time.sleep(max(0.0, m + 122 - time.time()))
            proc = start_main(*ARGS, cwd=tmp_path, env=env)
            server.wait_subscribed([i.token for i in STOCKS], timeout=30, mode="full", after=killed)
            tape.wait(60)
            wait_for("M+2 mended", 60, lambda: mended(tmp_path, m + 120))
        finally:
            if tape is not None:
                tape.stop()
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "resumed the open buckets from the tick journal" in err
        assert "Traceback" not in err
        check_minutes(tmp_path, server, kite_reference(tape.ticks), {m, m + 60, m + 120}, start // 60 * 60)


# ---- feed outages: the daemon stays up, the broker's feed goes away and comes back -----------------


class Daemon:
    """main.py in the background, its stderr read as it comes (a run of minutes would fill the pipe)."""

    def __init__(self, *args: str, cwd: Path, env: dict[str, str]) -> None:
        cwd.mkdir(exist_ok=True)
        self.proc = start_main(*args, cwd=cwd, env=env)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True)  # type: ignore[arg-type]
        self._reader.start()

    def stop(self) -> tuple[int, str]:
        """SIGTERM; the exit status and everything it logged."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        self._reader.join(10)
        return self.proc.returncode, "".join(self.lines)


def sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.time()))


def gap_metric(port: int) -> float | None:
    """``marketfeed_gap_minutes`` from the daemon's /metrics; None while it is absent."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("marketfeed_gap_minutes "):
                return float(line.split()[1])
    return None


def show_gaps(root: Path, env: dict[str, str], day: float) -> list[str]:
    """``--show-gaps`` of the watched symbols, run beside the daemon (SQLite in WAL mode lets it read)."""
    symbols = [f"NSE:{i.tradingsymbol}" for i in STOCKS]
    date = f"{datetime.fromtimestamp(day, IST):%Y-%m-%d}"
    proc = run_main("--show-gaps", *symbols, "--date", date, cwd=root, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def gap_lines(since: int, until: int) -> list[str]:
    """What ``--show-gaps`` prints for the minutes ``[since, until)`` of every watched symbol."""
    a, b = datetime.fromtimestamp(since, IST), datetime.fromtimestamp(until, IST)
    return [f"NSE:{i.tradingsymbol} {a:%Y-%m-%d %H:%M}–{b:%H:%M} IST ({(until - since) // 60} min)" for i in STOCKS]


def no_gaps(day: float) -> str:
    """What ``--show-gaps`` prints when every session minute of ``day`` so far was watched or mended."""
    return f"no gaps on {datetime.fromtimestamp(day, IST):%Y-%m-%d} in sqlite:data/marketfeed.db (read-only)"


def closed_live(root: Path, bucket: int) -> bool:
    rows = minute_rows(root)
    return all((i.tradingsymbol, bucket) in rows and rows[(i.tradingsymbol, bucket)].final for i in STOCKS)


@pytest.mark.slow
def test_a_kite_feed_down_for_ninety_seconds_is_a_gap_until_its_minutes_are_mended(tmp_path):
    """The feed goes down 30 s into minute M (the session's first) and comes back 90 s later; the
    daemon reconnects within its backoff (at most 30 s), inside M+2. While it is down, --show-gaps
    and the gap metric show M; then M, M+1 and M+2 are mended from the history, the gap is gone,
    and M+3, watched whole, is live."""
    tokens = [i.token for i in STOCKS]
    port = free_port()
    with KiteFakeServer(heartbeat_interval=0.5, instruments=DEFAULT_INSTRUMENTS) as server:
        m = next_minute(time.time(), 15)  # the session opens at M: the daemon is up before it
        env = backfill_env(server, tmp_path, opens=m)
        daemon = Daemon(*ARGS, "--metrics-port", str(port), cwd=tmp_path, env=env)
        tape = None
        try:
            server.wait_subscribed(tokens, timeout=30, mode="full")
            assert time.time() < m, "the daemon took more than 15 s to subscribe"
            tape = Tape(server.send_ticks, random_tape(STOCKS, seconds=240, seed=4, start_epoch=m))
            sleep_until(m + 30)
            dropped = server.last_connection_id
            server.go_down(True)
            sleep_until(m + 61)
            during = show_gaps(tmp_path, env, m)
            wait_for("the gap metric counts M", m + 119 - time.time(), lambda: (gap_metric(port) or 0) >= len(STOCKS))
            sleep_until(m + 120)
            server.go_down(False)
            server.wait_subscribed(tokens, timeout=40, mode="full", after=dropped)
            back = time.time()
            wait_for("M+2 mended", m + 200 - time.time(), lambda: mended(tmp_path, m + 120))
            wait_for("the gap metric back to 0", 75, lambda: gap_metric(port) == 0)
            tape.wait(60)
            wait_for("M+3 closed", 30, lambda: closed_live(tmp_path, m + 180))
        finally:
            if tape is not None:
                tape.stop()
            code, err = daemon.stop()
        assert code == 0, err
        assert "Traceback" not in err
        assert "handshake refused: HTTP 503" in err
        assert m + 120 <= back < m + 180, f"resubscribed {back - m:.1f} s after M"
        assert during == gap_lines(m, m + 60), during
        assert show_gaps(tmp_path, env, m) == [no_gaps(m)]
        check_minutes(tmp_path, server, kite_reference(tape.ticks), {m, m + 60, m + 120})


#: the Kotak scrip master's token of each Kite instrument in STOCKS
KOTAK_TOKENS = {408065: 1594, 738561: 2885}
KOTAK_KEYS = {f"nse_cm|{token}" for token in KOTAK_TOKENS.values()}
KOTAK_ARGS = ("--broker", "kotak", "--symbols", "NSE:INFY", "NSE:RELIANCE", "--intervals", "1m")


def as_kotak(t: TapeTick) -> kotak.TapeTick:
    """The same trade as Kotak's feed sends it (same price, quantities, cumulative volume and times):
    the two fakes' tapes make the same minute candles."""
    return kotak.TapeTick(
        "nse_cm", KOTAK_TOKENS[t.token], t.last_price, t.last_quantity, t.volume, t.exchange_ts,
        last_trade_ts=t.last_trade_ts, average_price=t.average_price, total_buy_quantity=t.total_buy_quantity,
        total_sell_quantity=t.total_sell_quantity, open=t.open, high=t.high, low=t.low, close=t.close,
    )  # fmt: skip


def kotak_connections(server: kotak.KotakFakeServer) -> int:
    """Live Kotak connections that carry both symbols (one per daemon)."""
    return sum(1 for c in server.connections if c.authenticated and KOTAK_KEYS <= set(c.subscriptions))


@pytest.mark.slow
def test_a_kotak_feed_outage_is_mended_from_kite_with_its_settings_and_stays_a_gap_without(tmp_path):
    """Two Kotak daemons watch the same symbols through the same 70 s outage of Kotak's feed (down
    15 s into minute M, the session's first; back inside M+1); a Kite fake gets the same trades. The
    one without Kite's settings says backfill is off and why, keeps M and M+1 as a gap and mends
    nothing; the one with them mends M and M+1 from Kite's history and has no gap left. M+2 is live
    in both."""
    with kotak.KotakFakeServer() as feed, KiteFakeServer(instruments=DEFAULT_INSTRUMENTS) as kite:
        m = next_minute(time.time(), 15)  # the session opens at M: the daemons are up before it
        settings = {"BACKFILL_DELAY_SECONDS": "1", "STATUS_INTERVAL_SECONDS": "5",
                    "MARKET_CALENDAR_FILE": str(open_all_day(tmp_path, opens=m))}  # fmt: skip
        plain_dir, mending_dir = tmp_path / "plain", tmp_path / "mending"
        plain_env = kotak_env(feed, **settings)
        mending_env = kotak_env(feed, **settings, **kite_settings(kite))
        daemons = [Daemon(*KOTAK_ARGS, cwd=plain_dir, env=plain_env), Daemon(*KOTAK_ARGS, cwd=mending_dir, env=mending_env)]
        tape = None
        try:
            wait_for("both daemons subscribed", 30, lambda: kotak_connections(feed) == 2)
            assert time.time() < m, "the daemons took more than 15 s to subscribe"
            trades = random_tape(STOCKS, seconds=180, seed=6, start_epoch=m)
            tape = Tape(lambda batch: (kite.send_ticks(batch), feed.send_ticks([as_kotak(t) for t in batch])), trades)
            sleep_until(m + 15)
            feed.go_down(True)
            sleep_until(m + 61)
            during = [show_gaps(plain_dir, plain_env, m), show_gaps(mending_dir, mending_env, m)]
            sleep_until(m + 85)
            feed.go_down(False)
            wait_for("both daemons resubscribed", 40, lambda: kotak_connections(feed) == 2)
            back = time.time()
            wait_for("M+1 mended", m + 140 - time.time(), lambda: mended(mending_dir, m + 60))
            tape.wait(60)
            wait_for("M+2 closed", 30, lambda: closed_live(plain_dir, m + 120) and closed_live(mending_dir, m + 120))
        finally:
            if tape is not None:
                tape.stop()
            (plain_code, plain_err), (mending_code, mending_err) = [d.stop() for d in daemons]
        assert plain_code == 0 and mending_code == 0, plain_err + mending_err
        assert "Traceback" not in plain_err + mending_err
        assert m + 85 <= back < m + 120, f"resubscribed {back - m:.1f} s after M"
        assert during == [gap_lines(m, m + 60)] * 2, during
        reference = reference_candles(kotak_arrivals([as_kotak(t) for t in tape.ticks]), [Interval.parse("1m")])
        assert reference == kite_reference(tape.ticks)  # one list of trades: both feeds make the same minutes

        # without Kite's settings: the gap stays, said why, and nothing is made up
        assert "backfill: off: kotak_neo has no candle history and Kite's settings are not there" in plain_err
        assert show_gaps(plain_dir, plain_env, m) == gap_lines(m, m + 120)
        rows = minute_rows(plain_dir)
        assert not [c for c in rows.values() if c.source == BACKFILL]
        for (symbol, bucket), candle in rows.items():
            if bucket < m + 120:
                assert candle.source != LIVE, f"{symbol} {datetime.fromtimestamp(bucket, IST):%H:%M} was not watched whole"
            else:
                assert candle.source == LIVE and ohlcv(candle) == ohlcv(reference[("NSE", symbol, "1m", bucket)])

        # with them: M and M+1 from Kite's history, no gap left
        assert "backfill: unwatched buckets are mended from Kite's historical API" in mending_err
        assert show_gaps(mending_dir, mending_env, m) == [no_gaps(m)]
        check_minutes(mending_dir, kite, reference, {m, m + 60})
