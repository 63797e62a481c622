"""Coverage and gaps: what the daemon watched, and the session minutes it did not."""

from __future__ import annotations

from datetime import date, datetime, time
from decimal import Decimal

import pytest

from brokers.base import WatchChange
from brokers.kite.client import KiteBroker
from candles.model import Interval
from core.gaps import gap_minutes, gaps
from core.ist import IST
from core.market_calendar import Closure, Hours, MarketCalendar, SpecialSession
from core.ticks import Instrument
from pipeline.coverage import Coverage
from pipeline.service import Service
from storage import open_store
from storage.base import WatchlistEntry, WatchRecord
from storage.spool import Spool
from testkit.cli import run_main
from testkit.fakes.kite_server import DEFAULT_INSTRUMENTS, KiteFakeServer, TapeTick
from testkit.waiting import wait_until

INSTRUMENTS = {i.token: Instrument(i.exchange, i.tradingsymbol, i.token) for i in DEFAULT_INSTRUMENTS}
INFY = 408065
T10 = datetime(2026, 12, 7, 10, 0, tzinfo=IST).timestamp()  # a Monday, 10:00 IST


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def tick(price: str, volume: int, at: float) -> TapeTick:
    return TapeTick(INFY, Decimal(price), last_quantity=5, volume=volume, exchange_ts=int(at))


def test_a_feed_outage_makes_its_bucket_partial_and_the_next_bucket_counts_from_its_first_tick(tmp_path):
    clock = Clock(T10 - 30)  # 10:00 begins after the start's unwatched span
    store = open_store(None, str(tmp_path / "c.db"))
    store.migrate()
    with KiteFakeServer(heartbeat_interval=0.3) as server:
        broker = KiteBroker(
            server.api_key, server.access_token, ws_url=server.ws_url, instruments=INSTRUMENTS,
            backoff_initial=0.05, backoff_max=0.2, clock=clock,
        )  # fmt: skip
        inst = INSTRUMENTS[INFY]
        service = Service(
            broker, store, [inst], [Interval.parse("1m")], clock=clock, spool=Spool(tmp_path / "spool"),
            calendar=MarketCalendar(),  # 10:00 on a Monday: the outage lies in the session
        )  # fmt: skip
        service.start()
        try:
            server.wait_subscribed([INFY])
            clock.now = T10 + 5
            server.send_ticks([tick("100", 1000, T10 + 5)])
            wait_until(lambda: service.stats.ticks >= 1, 5, "the first tick")
            clock.now = T10 + 20
            server.reject_tokens()
            seen = server.last_connection_id
            server.drop_all()
            wait_until(lambda: broker.auth_failed is not None, 5, "the feed to stop at the refused token")
            clock.now = T10 + 90  # the outage spans the 10:01 boundary
            server.reject_tokens(False)
            broker.set_access_token(server.access_token)  # the connection starts again
            server.wait_subscribed([INFY], after=seen, mode="full")  # (its snapshots are sent by then)
            wait_until(lambda: service.stats.ticks >= 2, 5, "the snapshot of the new subscription")
            for n, t in enumerate([tick("101", 1500, T10 + 95), tick("102", 1600, T10 + 100)]):
                before = service.stats.ticks
                server.send_ticks([t])
                wait_until(lambda: service.stats.ticks > before, 5, f"tick {n + 1} after the outage")  # noqa: B023
            clock.now = T10 + 125  # 10:01 closes
            wait_until(lambda: len(store.latest("NSE", "INFY", "1m")) == 2, 5, "both candles stored")
        finally:
            service.stop()
        spans = store.watched(T10, T10 + 3600)[("NSE", "INFY")]
        candles = {c.bucket.timestamp(): c for c in store.latest("NSE", "INFY", "1m")}
        store.close()
    first, second = candles[T10], candles[T10 + 60]
    assert first.source == "partial", "the outage inside 10:00 must make it partial"
    assert (second.source, second.volume) == ("partial", 100), "10:01 counts from its own first tick, not the outage's"
    assert len(spans) == 2 and spans[0][1] <= T10 + 20 and spans[1][0] == T10 + 90, f"two watched spans: {spans}"


def _outage(server: KiteFakeServer, broker: KiteBroker, service: Service, clock: Clock, back: float) -> None:
    """The feed's connection goes down at the clock's time and is subscribed again at ``back``."""
    ticks = service.stats.ticks
    server.reject_tokens()
    seen = server.last_connection_id
    server.drop_all()
    wait_until(lambda: broker.auth_failed is not None, 5, "the feed to stop at the refused token")
    clock.now = back
    server.reject_tokens(False)
    broker.set_access_token(server.access_token)
    server.wait_subscribed([INFY], after=seen, mode="full")
    wait_until(lambda: service.stats.ticks > ticks, 5, "the snapshot of the new subscription")


def test_a_start_before_the_open_and_an_outage_after_the_close_leave_the_day_live(tmp_path):
    """Rule 8 counts only session minutes: started at 08:00 and down from 15:40 to 15:50, the daemon
    missed nothing of NSE's 09:15-15:30 session, so the day and the 15:15 hour are live."""
    clock = Clock(T10 - 2 * 3600)  # 08:00 IST on a Monday
    store = open_store(None, str(tmp_path / "c.db"))
    store.migrate()
    intervals = [Interval.parse("1h"), Interval.parse("1d")]
    with KiteFakeServer(heartbeat_interval=0.3) as server:
        broker = KiteBroker(
            server.api_key, server.access_token, ws_url=server.ws_url, instruments=INSTRUMENTS,
            backoff_initial=0.05, backoff_max=0.2, clock=clock,
        )  # fmt: skip
        service = Service(
            broker, store, [INSTRUMENTS[INFY]], intervals, clock=clock, spool=Spool(tmp_path / "spool"),
            calendar=MarketCalendar(),
        )  # fmt: skip
        service.start()
        try:
            server.wait_subscribed([INFY])
            for n, (price, volume, at) in enumerate([("100", 1000, T10 - 2400), ("101", 1500, T10 + 18000),
                                                     ("102", 1600, T10 + 19740)]):  # fmt: skip
                clock.now = at + 1
                server.send_ticks([tick(price, volume, at)])
                wait_until(lambda: service.stats.ticks > n, 5, f"tick {n + 1}")  # noqa: B023
            clock.now = T10 + 20400  # 15:40
            _outage(server, broker, service, clock, T10 + 21000)  # back at 15:50
            clock.now = T10 + 21300
        finally:
            service.stop()  # flushes the open 15:15 hour and the day
        hour = store.latest("NSE", "INFY", "1h", limit=1)[0]
        (day,) = store.latest("NSE", "INFY", "1d")
        store.close()
    assert hour.bucket.timestamp() == T10 + 15 * 60 + 5 * 3600, f"the newest hour is 15:15: {hour}"
    assert hour.source == "live", "an outage outside the session missed nothing of the 15:15 hour"
    assert (day.source, day.volume) == ("live", 600), "watched all session from before the open: a live day"


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    dsn = request.getfixturevalue("pg_dsn") if request.param == "postgres" else None
    s = open_store(dsn, str(tmp_path / "c.db"))
    s.migrate()
    yield s
    s.close()


def test_watched_spans_are_stored_per_run_and_a_killed_run_ends_at_its_last_extend(store):
    keys = (("NSE", "INFY"), ("NSE", "TCS"))
    store.record_watched("a", [WatchRecord("open", T10, keys), WatchRecord("extend", T10 + 60)])
    store.record_watched("a", [WatchRecord("close", T10 + 90, keys[:1]), WatchRecord("extend", T10 + 120)])
    store.record_watched("a", [WatchRecord("close", T10 + 90, keys[:1])])  # again: nothing changes
    # run "a" was killed: TCS's span ends at the last extend; run "b" starts later
    store.record_watched("b", [WatchRecord("open", T10 + 300, keys), WatchRecord("extend", T10 + 360)])
    spans = store.watched(T10, T10 + 3600)
    assert spans == {
        ("NSE", "INFY"): [(T10, T10 + 90), (T10 + 300, T10 + 360)],
        ("NSE", "TCS"): [(T10, T10 + 120), (T10 + 300, T10 + 360)],
    }
    assert store.watched(T10, T10 + 3600, [("NSE", "TCS")]).keys() == {("NSE", "TCS")}


def test_a_span_the_history_answered_for_is_stored_whole_and_counts_as_covered(store):
    keys = (("NSE", "INFY"), ("NSE", "TCS"))
    store.record_watched("backfill", [WatchRecord("known", T10 + 60, keys, until=T10 + 180)])
    store.record_watched("backfill", [WatchRecord("known", T10 + 60, keys[:1], until=T10 + 240)])  # a later, longer answer
    store.record_watched("backfill", [WatchRecord("known", T10 + 60, keys[:1], until=T10 + 120)])  # never shortens
    spans = store.watched(T10, T10 + 3600)
    assert spans == {("NSE", "INFY"): [(T10 + 60, T10 + 240)], ("NSE", "TCS"): [(T10 + 60, T10 + 180)]}
    sessions = [(datetime.fromtimestamp(T10, IST), datetime.fromtimestamp(T10 + 300, IST))]
    assert gaps(sessions, spans[("NSE", "INFY")]) == [(T10, T10 + 60), (T10 + 240, T10 + 300)]


MONDAY = date(2026, 12, 7)


def test_gaps_are_the_session_minutes_no_span_covers_whole():
    cal = MarketCalendar()
    sessions = cal.sessions("NSE", MONDAY)
    open_ = sessions[0][0].timestamp()
    watched = [(open_ - 5, T10 + 60 + 20), (T10 + 180 + 10, open_ + 7 * 3600)]
    assert gaps(sessions, watched) == [(T10 + 60, T10 + 240)], "10:01, 10:02 and 10:03 are gaps"
    assert gap_minutes(sessions, []) == 375
    assert gap_minutes(sessions, [], until=open_ + 150) == 2, "only minutes already over count"


def test_a_weekend_and_a_holiday_have_no_gaps_and_a_watched_muhurat_session_is_covered():
    sunday = date(2026, 11, 8)
    muhurat = SpecialSession(sunday, frozenset({"NSE"}), time(18, 0), time(19, 0), "Muhurat trading")
    cal = MarketCalendar(special_sessions=[muhurat], closures=[Closure(MONDAY, frozenset({"NSE"}))])
    assert gaps(cal.sessions("NSE", date(2026, 11, 7)), []) == [], "a Saturday has no session minutes"
    assert gaps(cal.sessions("NSE", MONDAY), []) == [], "a holiday has no session minutes"
    start = datetime.combine(sunday, time(17, 59), IST).timestamp()
    assert gap_minutes(cal.sessions("NSE", sunday), [(start, start + 3700)]) == 0
    assert gap_minutes(cal.sessions("NSE", sunday), []) == 60, "the Muhurat hour counts when unwatched"


def test_coverage_sums_todays_gap_minutes_over_the_symbols_it_watches():
    cov = Coverage()
    cal = MarketCalendar()
    open_ = cal.sessions("NSE", MONDAY)[0][0].timestamp()
    keys = [("NSE", "INFY"), ("NSE", "TCS")]
    cov.change(WatchChange(True, open_, tuple(keys)))
    cov.change(WatchChange(False, open_ + 125, (keys[0],)))
    unwatched, record = cov.change(WatchChange(True, open_ + 300, (keys[0],)))
    assert unwatched == [(open_ + 125, [keys[0]])] and record.kind == "open"
    # INFY missed 09:17 to 09:19 (3 minutes); TCS nothing; at 09:25 both are still watched
    assert cov.gap_minutes(cal, keys, open_ + 600) == 3


def test_a_symbol_first_watched_after_the_start_was_unwatched_since_its_last_span_or_the_day_began():
    """A reload or a universe's new strike: the bucket it joins in the middle of is not all watched
    (candle rule 8), and the day before it is a gap the backfill may mend."""
    cov = Coverage()
    cal = MarketCalendar()
    open_ = cal.sessions("NFO", MONDAY)[0][0].timestamp()
    day_start = datetime.combine(MONDAY, time(0, 0), IST).timestamp()
    start_keys = [("NFO", "NIFTY26DECFUT")]
    cov.seen.update(start_keys)  # what the service's start declares itself
    earlier = ("NFO", "NIFTY26D0825100CE")
    cov.load({earlier: [(open_, open_ + 600)]})  # an earlier run watched it 09:15-09:25
    unwatched, _ = cov.change(WatchChange(True, open_ + 30, tuple(start_keys)))
    assert unwatched == []
    new = ("NFO", "NIFTY26D0825200CE")
    unwatched, _ = cov.change(WatchChange(True, open_ + 3600 + 17, (new, earlier)))
    assert sorted(unwatched) == [(day_start, [new]), (open_ + 600, [earlier])]
    cov.change(WatchChange(False, open_ + 4000, (new,)))  # re-centred away, then back: since it left
    unwatched, _ = cov.change(WatchChange(True, open_ + 5000, (new,)))
    assert unwatched == [(open_ + 4000, [new])]
    assert cov.change(WatchChange(True, open_ + 5001, (new,)))[0] == []  # a second up is no news


def test_coverage_counts_an_mcx_agricultural_symbols_evening_as_no_gap():
    agri = Hours(date(2025, 1, 1), frozenset({"MCX"}), time(9, 0), time(17, 0), symbols=("MENTHAOIL",))
    cal = MarketCalendar(hours=[agri])
    cov = Coverage()
    open_ = cal.sessions("MCX", MONDAY)[0][0].timestamp()
    keys = [("MCX", "MENTHAOIL26DECFUT"), ("MCX", "GOLD27FEBFUT")]
    cov.change(WatchChange(True, open_, tuple(keys)))
    cov.change(WatchChange(False, open_ + 8 * 3600, tuple(keys)))  # the feed stopped at 17:00
    at_1800 = open_ + 9 * 3600
    assert cov.gap_minutes(cal, keys[:1], at_1800) == 0, "mentha oil closed at 17:00"
    assert cov.gap_minutes(cal, keys, at_1800) == 60, "gold trades on until 23:55"


@pytest.mark.slow
def test_show_gaps_prints_the_unwatched_session_minutes_merged_per_symbol(tmp_path):
    (tmp_path / "data").mkdir()
    store = open_store(None, str(tmp_path / "data" / "marketfeed.db"))
    store.migrate()
    infy = (("NSE", "INFY"),)
    ten = datetime(2024, 1, 15, 10, 0, tzinfo=IST).timestamp()  # a Monday
    close = datetime(2024, 1, 15, 15, 30, tzinfo=IST).timestamp()
    store.record_watched("a", [WatchRecord("open", ten - 3600, infy), WatchRecord("close", ten + 70, infy)])
    store.record_watched("b", [WatchRecord("open", ten + 230, infy), WatchRecord("close", close, infy)])
    store.close()
    proc = run_main("--show-gaps", "NSE:INFY", "--date", "2024-01-15", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "NSE:INFY 2024-01-15 10:01–10:04 IST (3 min)"
    weekend = run_main("--show-gaps", "NSE:INFY", "--date", "2024-01-14", cwd=tmp_path)
    assert weekend.stdout.strip().startswith("no gaps on 2024-01-14"), weekend.stdout + weekend.stderr


@pytest.mark.slow
def test_show_gaps_lists_watchlist_symbols_that_were_never_watched(tmp_path):
    (tmp_path / "data").mkdir()
    store = open_store(None, str(tmp_path / "data" / "marketfeed.db"))
    store.migrate()
    open_ = datetime(2024, 1, 15, 9, 15, tzinfo=IST).timestamp()  # a Monday
    close = datetime(2024, 1, 15, 15, 30, tzinfo=IST).timestamp()
    infy = (("NSE", "INFY"),)
    store.record_watched("a", [WatchRecord("open", open_ - 60, infy), WatchRecord("close", close, infy)])
    store.set_watchlist([WatchlistEntry("NSE", "TCS", True, 0)])
    store.close()
    (tmp_path / "symbols.txt").write_text("NSE:SBIN\n", encoding="utf-8")
    args = ("--symbols", "NSE:RELIANCE", "--symbols-file", "symbols.txt", "--date", "2024-01-15")
    proc = run_main("--show-gaps", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"NSE:{name} 2024-01-15 09:15–15:30 IST (375 min)" for name in ("RELIANCE", "SBIN", "TCS")
    ], "every watchlist symbol never watched has the whole session as its gap; INFY, watched all day, has none"
