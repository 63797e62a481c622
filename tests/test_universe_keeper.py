"""Universes kept current while the daemon streams (pipeline/universe.py): the ATM's hysteresis,
re-centring on a moving underlying, the daily rebuild and futures roll on an injected clock, and the
record in the store. The broker is the real Kite client reading the fake server's instruments dump."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from decimal import Decimal

import pytest
from kiteconnect import KiteConnect

from brokers.kite.client import KiteBroker
from brokers.kite.instruments import KiteInstruments
from config.universe import parse_entry
from core.ist import IST
from core.market_calendar import MarketCalendar
from core.ticks import TickData
from pipeline.universe import Universes, recentre
from storage.sqlite import SQLiteStore
from testkit.fakes.kite_server import DERIVATIVE_SPECS, KiteFakeServer, derivatives_dump, monthly_expiries, option_expiries

TODAY = date(2026, 11, 24)  # a Tuesday
STRIKES = [Decimal(s) for s in range(24_500, 25_501, 50)]


def D(x: str | int) -> Decimal:
    return Decimal(str(x))


# ---------------------------------------------------------------------- the ATM and its hysteresis


def test_the_atm_starts_at_the_nearest_strike_and_a_price_between_two_takes_the_lower():
    assert recentre(STRIKES, None, D("25012.40"), 1, 0.25) == D(25000)
    assert recentre(STRIKES, None, D("25025"), 1, 0.25) == D(25000)
    assert recentre(STRIKES, None, D("25025.05"), 1, 0.25) == D(25050)


def test_the_centre_moves_only_past_the_half_way_point_by_the_hysteresis_margin():
    centre = D(25000)
    # half-way to 25050 is 25025; a quarter step (12.5) past it is 25037.5
    assert recentre(STRIKES, centre, D("25030"), 1, 0.25) == centre
    assert recentre(STRIKES, centre, D("25037.45"), 1, 0.25) == centre
    assert recentre(STRIKES, centre, D("25037.55"), 1, 0.25) == D(25050)
    assert recentre(STRIKES, centre, D("24962.45"), 1, 0.25) == D(24950)
    # without hysteresis the half-way point itself is enough
    assert recentre(STRIKES, centre, D("25025.05"), 1, 0.0) == D(25050)
    # a jump lands on the strike nearest the price, not one step over
    assert recentre(STRIKES, centre, D("25190"), 1, 0.25) == D(25200)


def test_a_price_hovering_at_a_boundary_does_not_flap():
    centre, moves = D(25000), 0
    for price in ["25026", "25024", "25030", "25020", "25036", "25014", "25038", "25030", "25020", "25014", "25026"]:
        new = recentre(STRIKES, centre, D(price), 1, 0.25)
        moves += new != centre
        centre = new
    assert moves == 1 and centre == D(25050)  # 25038 moved it; back to 25014 is not past 25012.5
    assert recentre(STRIKES, centre, D("25012.45"), 1, 0.25) == D(25000)


def test_more_recentre_steps_wait_for_a_larger_move():
    centre = D(25000)
    assert recentre(STRIKES, centre, D("25060"), 2, 0.25) == centre
    assert recentre(STRIKES, centre, D("25087.45"), 2, 0.25) == centre
    assert recentre(STRIKES, centre, D("25087.55"), 2, 0.25) == D(25100)


# ---------------------------------------------------------------------- against the Kite fake


def ist(day: date, hh: int, mm: int) -> float:
    return datetime(day.year, day.month, day.day, hh, mm, tzinfo=IST).timestamp()


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def server() -> Iterator[KiteFakeServer]:
    with KiteFakeServer(instruments=derivatives_dump(TODAY, strikes_each_side=15)) as srv:
        yield srv


def kite_broker(server: KiteFakeServer, tmp_path, clock: Clock) -> KiteBroker:
    kite = KiteConnect(server.api_key, access_token=server.access_token, root=server.api_url)
    master = KiteInstruments(kite, tmp_path / "cache", clock=clock)
    dump = master.load()
    return KiteBroker(
        server.api_key, server.access_token, ws_url=server.ws_url, instruments={i.token: i for i in dump.values()}, master=master
    )


def index_tick(broker: KiteBroker, price: str) -> TickData:
    (inst,), _ = broker.resolve([("NSE", "NIFTY 50")])
    now = datetime.now(IST)
    return TickData("kite", "NSE", "NIFTY 50", inst.token, D(price), None, None, None, now, now)


class Applied:
    def __init__(self) -> None:
        self.calls: list[list[tuple[str, str]]] = []

    def __call__(self, keys: list[tuple[str, str]]) -> None:
        self.calls.append(keys)


def strikes_of(keys: list[tuple[str, str]], suffix: str) -> list[int]:
    return sorted({int(s[-7:-2]) for e, s in keys if e == "NFO" and s.endswith(suffix) and s.startswith("NIFTY")})


def test_options_wait_for_the_reference_price_then_follow_it_with_hysteresis(server, tmp_path, caplog):
    clock = Clock(ist(TODAY, 10, 0))
    broker = kite_broker(server, tmp_path, clock)
    store = SQLiteStore(tmp_path / "db.sqlite")
    store.migrate()
    uni = Universes([parse_entry("NFO:NIFTY OPT weekly ATM±2"), parse_entry("NFO:NIFTY FUT near,next")], broker, store, clock=clock)
    uni.build()
    start = uni.pairs()
    assert start[0] == ("NSE", "NIFTY 50")  # the reference is subscribed with the universe
    assert strikes_of(start, "CE") == []  # no price yet: no strikes
    assert len([s for e, s in start if s.endswith("FUT")]) == 2
    assert uni.report().notes == ("universe NFO:NIFTY OPT weekly ATM±2 waits for the first price of NSE:NIFTY 50",)

    applied = Applied()
    uni.start(applied)
    uni.stop()  # stepped by hand from here
    caplog.set_level(logging.INFO, "marketfeed")

    uni.observe([index_tick(broker, "25012.40")])
    assert uni.step(clock()) is True
    assert strikes_of(applied.calls[-1], "CE") == [24900, 24950, 25000, 25050, 25100]
    assert strikes_of(applied.calls[-1], "PE") == [24900, 24950, 25000, 25050, 25100]
    assert uni.report().notes == ()

    for price in ("25030", "25037.45", "25020"):  # inside the hysteresis band: nothing changes
        uni.observe([index_tick(broker, price)])
        assert uni.step(clock()) is False
    uni.observe([index_tick(broker, "25040")])
    assert uni.step(clock()) is True
    assert strikes_of(applied.calls[-1], "CE") == [24950, 25000, 25050, 25100, 25150]
    report = uni.report()
    assert report.recentres == 1 and dict(report.atm) == {"NFO:NIFTY OPT weekly ATM±2": D(25050)}
    assert any("re-centred, ATM 25000 -> 25050 (NSE:NIFTY 50 at 25040): +2" in r.getMessage() for r in caplog.records)

    # every contract ever subscribed is in the instruments table, with its metadata
    stored = {c.symbol: c for c in store.instruments("NFO", "NIFTY")}
    assert {s for e, s in applied.calls[-1] if e == "NFO"} <= set(stored)
    assert any(s.endswith("24900CE") for s in stored)  # left the window, still recorded
    some = next(c for c in stored.values() if c.symbol.endswith("25150PE"))
    assert (some.kind, some.strike, some.lot_size, some.tick_size) == ("PE", D(25150), 65, D("0.05"))


def test_a_universe_the_master_cannot_satisfy_names_the_problem(server, tmp_path):
    from core.universe import UniverseError

    clock = Clock(ist(TODAY, 10, 0))
    broker = kite_broker(server, tmp_path, clock)
    uni = Universes([parse_entry("NFO:NIFTYY OPT weekly ATM±2")], broker, None, clock=clock)
    with pytest.raises(UniverseError, match="did you mean NIFTY"):
        uni.build()


def test_futures_roll_and_options_move_to_the_next_expiry_at_the_daily_rebuild(server, tmp_path, caplog):
    nifty = next(s for s in DERIVATIVE_SPECS if s.name == "NIFTY")
    expiry = monthly_expiries(nifty, TODAY)[0]
    day = expiry - timedelta(days=3)
    clock = Clock(ist(day, 15, 0))
    broker = kite_broker(server, tmp_path, clock)
    store = SQLiteStore(tmp_path / "db.sqlite")
    store.migrate()
    uni = Universes([parse_entry("NFO:NIFTY FUT near roll=1")], broker, store, clock=clock)
    uni.build()
    near = [s for _, s in uni.pairs()]
    assert near == [f"NIFTY{expiry:%y}{expiry:%b}FUT".upper()]
    applied = Applied()
    uni.start(applied)
    uni.stop()
    caplog.set_level(logging.INFO, "marketfeed")
    downloads = len([r for r in server.rest_requests if r[1] == "/instruments"])

    clock.t = ist(day + timedelta(days=1), 8, 29)  # before the rebuild time (08:30 without a calendar)
    assert uni.step() is False
    clock.t = ist(day + timedelta(days=1), 8, 31)  # expiry - 2: roll=1 keeps the contract one more day
    assert uni.step() is False
    assert len([r for r in server.rest_requests if r[1] == "/instruments"]) == downloads + 1  # the master fetched again
    clock.t = ist(day + timedelta(days=2), 8, 31)  # expiry - 1: rolled
    assert uni.step() is True
    following = monthly_expiries(nifty, TODAY)[1]
    assert [s for _, s in applied.calls[-1]] == [f"NIFTY{following:%y}{following:%b}FUT".upper()]
    assert uni.report().rebuilds == 2
    assert any("rolled" in r.getMessage() for r in caplog.records)
    assert store.rolls("NFO", "NIFTY-I") == [
        (day, near[0]),
        (day + timedelta(days=1), near[0]),
        (day + timedelta(days=2), f"NIFTY{following:%y}{following:%b}FUT".upper()),
    ]


def test_a_weekly_option_universe_moves_to_the_next_expiry_after_its_expiry_day(server, tmp_path):
    nifty = next(s for s in DERIVATIVE_SPECS if s.name == "NIFTY")
    weekly = [d for d, _ in option_expiries(nifty, TODAY)]
    clock = Clock(ist(weekly[0], 10, 0))  # the expiry day itself: still that expiry
    broker = kite_broker(server, tmp_path, clock)
    uni = Universes([parse_entry("NFO:NIFTY OPT weekly ATM±1 CE")], broker, None, clock=clock)
    uni.build()
    applied = Applied()
    uni.start(applied)
    uni.stop()
    uni.observe([index_tick(broker, "25010")])
    assert uni.step() is True
    code = {s for _, s in applied.calls[-1] if s.endswith("CE")}
    assert len(code) == 3 and all(s.startswith(f"NIFTY{weekly[0]:%y}") for s in code)
    clock.t = ist(weekly[0] + timedelta(days=1), 8, 31)
    assert uni.step() is True  # rebuilt: the next weekly, centred at once on the last price
    after = [s for _, s in applied.calls[-1] if s.endswith("CE")]
    assert len(after) == 3 and not set(after) & code
    assert uni.report().atm == (("NFO:NIFTY OPT weekly ATM±1 CE", D(25000)),)
    strikes = {c.expiry for c in broker.contracts() if c.symbol in after}
    assert strikes == {weekly[1]}


def test_the_rebuild_waits_for_the_calendar_a_lead_before_the_first_session_and_skips_closed_days(server, tmp_path):
    saturday = TODAY + timedelta(days=4)  # 2026-11-28
    clock = Clock(ist(saturday - timedelta(days=1), 15, 0))
    broker = kite_broker(server, tmp_path, clock)
    calendar = MarketCalendar()  # weekends closed, no holidays
    uni = Universes(
        [parse_entry("NFO:NIFTY FUT near")], broker, None, clock=clock, calendar=lambda: calendar,
        rebuild_lead=timedelta(minutes=30),
    )  # fmt: skip
    uni.build()
    uni.start(Applied())
    uni.stop()
    for day in (saturday, saturday + timedelta(days=1)):
        clock.t = ist(day, 10, 0)
        uni.step()
        assert uni.rebuilds == 0  # NFO is closed on the weekend: nothing to rebuild for
    monday = saturday + timedelta(days=2)
    clock.t = ist(monday, 8, 44)  # NFO opens 09:15: the rebuild is due at 08:45
    uni.step()
    assert uni.rebuilds == 0
    clock.t = ist(monday, 8, 45)
    uni.step()
    assert uni.rebuilds == 1 and uni.day == monday


def test_an_entry_the_rebuild_cannot_resolve_keeps_its_contracts_and_says_so(server, tmp_path):
    nifty = next(s for s in DERIVATIVE_SPECS if s.name == "NIFTY")
    expiry = option_expiries(nifty, TODAY)[0][0]
    clock = Clock(ist(expiry, 10, 0))
    broker = kite_broker(server, tmp_path, clock)
    uni = Universes([parse_entry(f"NFO:NIFTY OPT {expiry} ATM±1 PE")], broker, None, clock=clock)
    uni.build()
    applied = Applied()
    uni.start(applied)
    uni.stop()
    uni.observe([index_tick(broker, "25010")])
    assert uni.step() is True and uni.report().problems == ()
    clock.t = ist(expiry + timedelta(days=1), 9, 0)
    assert uni.step() is False  # nothing to move to: the day before's contracts stay subscribed
    (problem,) = uni.report().problems
    assert problem.startswith(f"universe NFO:NIFTY OPT {expiry} ATM±1 PE: not resolved for {expiry + timedelta(days=1)}")
    assert f"{expiry} has passed: name a later expiry or a rule such as weekly" in problem
    assert "its 3 contracts of the day before stay" in problem
