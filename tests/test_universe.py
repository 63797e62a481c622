"""Derivatives universes: the watchlist syntax (config/universe.py) and its resolution (core/universe.py)."""

import re
from datetime import date
from decimal import Decimal

import pytest

from config.symbols import SymbolError, parse_symbol
from config.universe import parse_entries, parse_entry
from core.contracts import Contract
from core.universe import UniverseError, UniverseSpec, atm_reference, option_expiry, resolve_universe

D = date.fromisoformat
MONDAY = D("2026-01-05")


def fut(exchange, underlying, expiry, lot=75):
    e = D(expiry)
    return Contract(exchange, f"{underlying}{e:%y%b}FUT".upper(), underlying, "FUT", e, None, lot, Decimal("0.05"))


def opts(exchange, underlying, expiry, strikes, lot=75):
    e = D(expiry)
    return [
        Contract(exchange, f"{underlying}{e:%y%m%d}{s}{kind}", underlying, kind, e, Decimal(s), lot, Decimal("0.05"))
        for s in strikes
        for kind in ("CE", "PE")
    ]


def cash(exchange, symbol, kind, underlying=None):
    return Contract(exchange, symbol, underlying or symbol, kind, None, None, 1, Decimal("0.05"))


def steps(low, high, step):
    return [str(s) for s in range(low, high + 1, step)]


# NIFTY: weeklies on Tuesdays, 50-point strikes near the money and 100-point farther out; the
# monthlies (the last expiry of each month) list 100-point strikes only.
NIFTY_WEEKLY = steps(23500, 23700, 100) + steps(23750, 24250, 50) + steps(24300, 24500, 100)
CONTRACTS = [
    *opts("NFO", "NIFTY", "2026-01-06", NIFTY_WEEKLY),
    *opts("NFO", "NIFTY", "2026-01-13", NIFTY_WEEKLY),
    *opts("NFO", "NIFTY", "2026-01-20", NIFTY_WEEKLY),
    *opts("NFO", "NIFTY", "2026-01-27", steps(23000, 25000, 100)),
    *opts("NFO", "NIFTY", "2026-02-03", NIFTY_WEEKLY),
    *opts("NFO", "NIFTY", "2026-02-24", steps(23000, 25000, 100)),
    fut("NFO", "NIFTY", "2026-01-27"),
    fut("NFO", "NIFTY", "2026-02-24"),
    fut("NFO", "NIFTY", "2026-03-31"),
    # BANKNIFTY: monthlies only, 100-point strikes
    *opts("NFO", "BANKNIFTY", "2026-01-27", steps(50000, 52000, 100), lot=30),
    *opts("NFO", "BANKNIFTY", "2026-02-24", steps(50000, 52000, 100), lot=30),
    fut("NFO", "BANKNIFTY", "2026-01-27", lot=30),
    # SENSEX: weeklies on Thursdays (a different weekday: nothing may assume one)
    *opts("BFO", "SENSEX", "2026-01-08", steps(79000, 81000, 100), lot=20),
    *opts("BFO", "SENSEX", "2026-01-15", steps(79000, 81000, 100), lot=20),
    *opts("BFO", "SENSEX", "2026-01-29", steps(79000, 81000, 100), lot=20),
    fut("BFO", "SENSEX", "2026-01-29", lot=20),
    # a stock with its own cash row, one without
    *opts("NFO", "RELIANCE", "2026-01-27", steps(1400, 1600, 20), lot=500),
    fut("NFO", "RELIANCE", "2026-01-27", lot=500),
    cash("NSE", "RELIANCE", "EQ"),
    *opts("NFO", "TATASTEEL", "2026-01-27", steps(150, 170, 1), lot=5500),
    fut("NFO", "TATASTEEL", "2026-01-27", lot=5500),
    cash("NSE", "NIFTY 50", "IDX"),
    # MCX: monthly futures; options expiring a few days before the future
    fut("MCX", "CRUDEOIL", "2026-01-19", lot=100),
    fut("MCX", "CRUDEOIL", "2026-02-18", lot=100),
    fut("MCX", "CRUDEOIL", "2026-03-19", lot=100),
    fut("MCX", "CRUDEOIL", "2026-04-20", lot=100),
    *opts("MCX", "CRUDEOIL", "2026-01-15", steps(5000, 6000, 50), lot=100),
]


def resolve(text, price=None, today=MONDAY, contracts=CONTRACTS):
    return resolve_universe(parse_entry(text), contracts, None if price is None else Decimal(price), today)


def keys(found):
    return [f"{c.strike}{c.kind}" if c.strike is not None else c.symbol for c in found]


def expiries(found):
    return sorted({str(c.expiry) for c in found})


# --- the syntax ---------------------------------------------------------------------------------

SPECS = [
    ("NFO:NIFTY FUT", UniverseSpec("NFO", "NIFTY", "FUT")),
    ("NFO:NIFTY FUT next", UniverseSpec("NFO", "NIFTY", "FUT", series=(1,))),
    ("NFO:NIFTY FUT far", UniverseSpec("NFO", "NIFTY", "FUT", series=(2,))),
    ("nfo:nifty fut near, next", UniverseSpec("NFO", "NIFTY", "FUT", series=(0, 1))),
    ("MCX:CRUDEOIL FUT roll=3", UniverseSpec("MCX", "CRUDEOIL", "FUT", roll=3)),
    ("BFO:SENSEX FUT", UniverseSpec("BFO", "SENSEX", "FUT")),
    ("NFO:NIFTY OPT weekly ATM±10", UniverseSpec("NFO", "NIFTY", "OPT", expiry="weekly", above=10, below=10)),
    ("NFO:NIFTY OPT weekly ATM+-10", UniverseSpec("NFO", "NIFTY", "OPT", expiry="weekly", above=10, below=10)),
    ("NFO:NIFTY OPT weekly ATM ± 10", UniverseSpec("NFO", "NIFTY", "OPT", expiry="weekly", above=10, below=10)),
    (
        "NFO:NIFTY OPT next-weekly ATM±5 CE",
        UniverseSpec("NFO", "NIFTY", "OPT", expiry="next-weekly", above=5, below=5, sides=("CE",)),
    ),
    (
        "NFO:BANKNIFTY OPT monthly ATM±10 PE",
        UniverseSpec("NFO", "BANKNIFTY", "OPT", expiry="monthly", above=10, below=10, sides=("PE",)),
    ),
    ("NFO:NIFTY OPT next-monthly ATM", UniverseSpec("NFO", "NIFTY", "OPT", expiry="next-monthly")),
    ("NFO:NIFTY OPT 2026-12-24 ATM±10", UniverseSpec("NFO", "NIFTY", "OPT", expiry=D("2026-12-24"), above=10, below=10)),
    ("NFO:NIFTY OPT weekly ATM+3-5", UniverseSpec("NFO", "NIFTY", "OPT", expiry="weekly", above=3, below=5)),
    (
        "NFO:NIFTY OPT ATM±2 PE weekly roll=0",
        UniverseSpec("NFO", "NIFTY", "OPT", expiry="weekly", above=2, below=2, sides=("PE",), roll=0),
    ),
    (
        "NFO:NIFTY OPT weekly ATM±10 on NSE:NIFTY 50",
        UniverseSpec("NFO", "NIFTY", "OPT", expiry="weekly", above=10, below=10, reference=("NSE", "NIFTY 50")),
    ),
    (
        "NFO:RELIANCE OPT monthly ATM±5 on fut",
        UniverseSpec("NFO", "RELIANCE", "OPT", expiry="monthly", above=5, below=5, reference="FUT"),
    ),
]


@pytest.mark.parametrize(("text", "spec"), SPECS, ids=[t for t, _ in SPECS])
def test_each_universe_form_parses_to_its_spec_and_prints_back_canonically(text, spec):
    assert parse_entry(text) == spec
    assert parse_entry(str(spec)) == spec


@pytest.mark.parametrize(
    "text", ["NSE:INFY", "infy", " bse:tcs ", "NSE:M&M", "NSE:BAJAJ-AUTO", "NSE:NIFTY 50", "NFO:NIFTY26JAN24000CE"]
)
def test_plain_entries_parse_exactly_as_plain_symbols(text):
    assert parse_entry(text) == parse_symbol(text)


def test_plain_entry_errors_are_the_plain_symbol_errors():
    for text in ["XYZ:INFY", "NSE:", "NSE:IN$FY"]:
        with pytest.raises(SymbolError) as plain:
            parse_symbol(text)
        with pytest.raises(SymbolError, match=re.escape(str(plain.value))):
            parse_entry(text)


def test_entries_mixing_plain_symbols_and_universes_drop_duplicates_in_order():
    assert parse_entries(["NSE:NIFTY 50", "NFO:NIFTY FUT", "nse:nifty 50", "NFO:NIFTY FUT near"]) == [
        ("NSE", "NIFTY 50"),
        UniverseSpec("NFO", "NIFTY", "FUT"),
    ]


BAD = [
    ("NSE:NIFTY FUT", r"NSE is a cash market; NIFTY's futures and options trade on NFO: write NFO:NIFTY FUT"),
    ("BSE:SENSEX OPT weekly ATM", r"trade on BFO: write BFO:SENSEX OPT weekly"),
    ("NIFTY FUT", r"names no exchange: a universe names its derivatives exchange, NFO:NIFTY FUT"),
    ("XYZ:NIFTY FUT", r"unknown exchange 'XYZ': a universe names one of NFO, BFO, MCX, CDS, BCD, e.g. NFO:NIFTY FUT"),
    ("NFO: FUT", r"names no underlying before FUT: write NFO:NIFTY FUT"),
    ("NFO:NIFTY FUTURES", r"write FUT, not FUTURES: NFO:NIFTY FUT \[near\|next\|far"),
    ("NFO:NIFTY OPTIONS weekly", r"write OPT, not OPTIONS"),
    ("NFO:NIFTY WEEKLY", r"no trading symbol on NFO has a space; for a universe write NFO:NIFTY FUT .* or NFO:NIFTY OPT weekly"),
    (
        "NFO:NIFTY FUT nxt",
        r"'NXT' is not a futures series \(near, next or far\): write NFO:NIFTY FUT \[near\|next\|far\|near,next\]",
    ),
    ("NFO:NIFTY FUT near next", r"names futures twice: list them once, comma-separated"),
    ("NFO:NIFTY FUT ATM±2", r"ATM±2 belongs to options: write NFO:NIFTY OPT weekly\|"),
    ("NFO:NIFTY FUT on FUT", r"'on' names the price an option universe's ATM is measured against; futures need none"),
    ("NFO:NIFTY FUT roll=x", r"roll takes a whole number of days, e.g. roll=2"),
    ("NFO:NIFTY FUT roll=1 roll=2", r"names roll twice"),
    (
        "NFO:NIFTY OPT ATM±10",
        r"names no expiry: add weekly, next-weekly, monthly, next-monthly or a date \(YYYY-MM-DD\): .*OPT weekly ATM±10",
    ),
    (
        "NFO:NIFTY OPT weekly",
        r"names no strikes: add ATM±N for N strikes either side of the money: .*e.g. NFO:NIFTY OPT weekly ATM±10",
    ),
    ("NFO:NIFTY OPT weekly ATM10", r"'ATM10' is not a strike range: write ATM±N or ATM\+-N .* ATM\+A-B \(A above, B below\)"),
    ("NFO:NIFTY OPT weekly ATM±", r"'ATM±' is not a strike range"),
    ("NFO:NIFTY OPT weekly monthly ATM", r"names an expiry twice \(the second is MONTHLY\): keep one"),
    ("NFO:NIFTY OPT weekly ATM±1 ATM±2", r"names strikes twice"),
    ("NFO:NIFTY OPT weekly ATM CE PE", r"names a side twice .*: keep one"),
    ("NFO:NIFTY OPT week ATM", r"WEEK is not an option expiry: write weekly, next-weekly, monthly, next-monthly or a date"),
    ("NFO:NIFTY OPT next ATM", r"NEXT is not an option expiry: .*\(near, next and far are for futures: NFO:NIFTY FUT"),
    ("NFO:NIFTY OPT weekly ATM calls", r"write CE for calls, e.g. NFO:NIFTY OPT weekly ATM±10 CE"),
    ("NFO:NIFTY OPT weekly ATM foo", r"'FOO' is not part of an option universe: NFO:NIFTY OPT weekly\|"),
    ("NFO:NIFTY OPT 2026-02-30 ATM", r"2026-02-30 is not a date: write the expiry as YYYY-MM-DD, e.g. 2026-12-24"),
    ("NFO:NIFTY OPT 2026-02-24 ATM roll=2", r"an explicit date never moves: drop roll=2"),
    (
        "NFO:NIFTY OPT weekly ATM on",
        r"'on' names nothing: write 'on FUT' \(the near future\) or 'on EXCHANGE:SYMBOL', e.g. on NSE:NIFTY 50",
    ),
    (
        "NFO:NIFTY OPT weekly ATM on XYZ:FOO",
        r"after 'on', 'XYZ:FOO' names unknown exchange 'XYZ'.*write 'on FUT' or 'on EXCHANGE:SYMBOL'",
    ),
    ("NIFTY OPT weekly ATM on NSE:NIFTY 50", r"names no exchange: a universe names its derivatives exchange, NFO:NIFTY OPT"),
]


@pytest.mark.parametrize(("text", "complaint"), BAD, ids=[t for t, _ in BAD])
def test_a_bad_universe_entry_is_refused_with_the_right_form(text, complaint):
    with pytest.raises(SymbolError, match=complaint) as refused:
        parse_entry(text)
    assert str(refused.value).startswith(repr(text))


# --- futures ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "symbols"),
    [
        ("NFO:NIFTY FUT", ["NIFTY26JANFUT"]),
        ("NFO:NIFTY FUT next", ["NIFTY26FEBFUT"]),
        ("NFO:NIFTY FUT far", ["NIFTY26MARFUT"]),
        ("NFO:NIFTY FUT near,next", ["NIFTY26JANFUT", "NIFTY26FEBFUT"]),
        ("NFO:NIFTY FUT far,near", ["NIFTY26MARFUT", "NIFTY26JANFUT"]),
        ("MCX:CRUDEOIL FUT", ["CRUDEOIL26JANFUT"]),
        ("MCX:CRUDEOIL FUT near,next,far", ["CRUDEOIL26JANFUT", "CRUDEOIL26FEBFUT", "CRUDEOIL26MARFUT"]),
        ("NFO:RELIANCE FUT", ["RELIANCE26JANFUT"]),
        ("BFO:SENSEX FUT", ["SENSEX26JANFUT"]),
    ],
)
def test_futures_are_named_by_expiry_order(text, symbols):
    assert [c.symbol for c in resolve(text)] == symbols


def test_a_future_is_watched_through_its_expiry_day_without_roll():
    assert [c.symbol for c in resolve("MCX:CRUDEOIL FUT", today=D("2026-01-19"))] == ["CRUDEOIL26JANFUT"]
    assert [c.symbol for c in resolve("MCX:CRUDEOIL FUT", today=D("2026-01-20"))] == ["CRUDEOIL26FEBFUT"]


@pytest.mark.parametrize(
    ("today", "near"),
    [("2026-01-15", "CRUDEOIL26JANFUT"), ("2026-01-16", "CRUDEOIL26FEBFUT"), ("2026-01-19", "CRUDEOIL26FEBFUT")],
)
def test_roll_moves_near_to_the_next_contract_n_days_before_expiry(today, near):
    # roll=3: from 2026-01-16, three days before the 19th, January's contract is gone
    assert [c.symbol for c in resolve("MCX:CRUDEOIL FUT roll=3", today=D(today))] == [near]


def test_roll_zero_leaves_a_contract_on_its_expiry_day():
    assert [c.symbol for c in resolve("MCX:CRUDEOIL FUT roll=0", today=D("2026-01-18"))] == ["CRUDEOIL26JANFUT"]
    assert [c.symbol for c in resolve("MCX:CRUDEOIL FUT near,next roll=0", today=D("2026-01-19"))] == [
        "CRUDEOIL26FEBFUT",
        "CRUDEOIL26MARFUT",
    ]


def test_a_series_the_master_does_not_list_says_what_it_lists():
    with pytest.raises(
        UniverseError,
        match=r"far is the third BANKNIFTY future expiring on or after 2026-01-05, and the "
        r"instrument master lists only 1 such future \(2026-01-27\)",
    ):
        resolve("NFO:BANKNIFTY FUT near,far")


# --- option expiries ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "today", "expiry"),
    [
        ("weekly", "2026-01-05", "2026-01-06"),
        ("weekly", "2026-01-06", "2026-01-06"),  # on its expiry day
        ("weekly", "2026-01-07", "2026-01-13"),
        ("next-weekly", "2026-01-05", "2026-01-13"),
        ("weekly", "2026-01-21", "2026-01-27"),  # the monthly is the nearest expiry of any kind
        ("monthly", "2026-01-05", "2026-01-27"),
        ("monthly", "2026-01-27", "2026-01-27"),
        ("monthly", "2026-01-28", "2026-02-24"),  # rolled to next month's once January's has expired
        ("next-monthly", "2026-01-05", "2026-02-24"),
        ("weekly roll=1", "2026-01-05", "2026-01-13"),  # the day before the 6th's expiry: gone
        ("weekly roll=1", "2026-01-04", "2026-01-06"),
        ("monthly roll=2", "2026-01-25", "2026-02-24"),
        ("2026-01-20", "2026-01-05", "2026-01-20"),
    ],
)
def test_option_expiries_come_from_the_listed_dates(rule, today, expiry):
    spec = parse_entry(f"NFO:NIFTY OPT {rule} ATM")
    assert option_expiry(spec, CONTRACTS, D(today)) == D(expiry)


def test_option_expiries_follow_another_weekday_when_the_master_does():
    assert expiries(resolve("BFO:SENSEX OPT weekly ATM", "80000")) == ["2026-01-08"]
    assert expiries(resolve("BFO:SENSEX OPT monthly ATM", "80000")) == ["2026-01-29"]
    assert expiries(resolve("NFO:BANKNIFTY OPT weekly ATM", "51000")) == ["2026-01-27"]  # monthlies only: the nearest


def test_an_unlisted_expiry_date_names_the_nearest_listed_ones():
    with pytest.raises(
        UniverseError,
        match=r"lists no NIFTY options on NFO expiring 2026-01-21: the nearest listed are "
        r"2026-01-13, 2026-01-20, 2026-01-27",
    ):
        resolve("NFO:NIFTY OPT 2026-01-21 ATM", "24000")


def test_a_past_expiry_date_is_refused():
    with pytest.raises(UniverseError, match=r"2026-01-06 has passed: name a later expiry"):
        resolve("NFO:NIFTY OPT 2026-01-06 ATM", "24000", today=D("2026-01-07"))


def test_next_weekly_without_a_second_expiry_says_so():
    with pytest.raises(
        UniverseError, match=r"next-weekly is the second MIDCPNIFTY option expiry .* lists only 1 expiry \(2026-01-27\)"
    ):
        resolve("NFO:MIDCPNIFTY OPT next-weekly ATM", "13000", contracts=opts("NFO", "MIDCPNIFTY", "2026-01-27", ["13000"]))


# --- strikes ------------------------------------------------------------------------------------


def test_atm_at_a_strike_takes_n_strikes_either_side_calls_and_puts():
    assert keys(resolve("NFO:NIFTY OPT weekly ATM±2", "24000")) == [
        f"{s}{k}" for s in (23900, 23950, 24000, 24050, 24100) for k in ("CE", "PE")
    ]


@pytest.mark.parametrize(
    ("price", "atm"),
    [("24000", 24000), ("24020", 24000), ("24030.5", 24050), ("24024.95", 24000), ("24025", 24000), ("24075", 24050)],
)
def test_atm_is_the_nearest_strike_and_a_tie_takes_the_lower(price, atm):
    assert keys(resolve("NFO:NIFTY OPT weekly ATM CE", price)) == [f"{atm}CE"]


def test_the_strike_step_comes_from_the_expirys_own_strikes():
    # the weekly lists 50-point strikes here, the monthly 100-point ones
    assert keys(resolve("NFO:NIFTY OPT weekly ATM±1 CE", "24010")) == ["23950CE", "24000CE", "24050CE"]
    assert keys(resolve("NFO:NIFTY OPT monthly ATM±1 CE", "24010")) == ["23900CE", "24000CE", "24100CE"]
    assert keys(resolve("NFO:BANKNIFTY OPT monthly ATM±2 PE", "51049")) == ["50800PE", "50900PE", "51000PE", "51100PE", "51200PE"]
    assert keys(resolve("NFO:TATASTEEL OPT monthly ATM±1 CE", "160.4")) == ["159CE", "160CE", "161CE"]


def test_strikes_the_master_does_not_list_are_absent_not_replaced():
    # 50-point steps from ATM 24100: 24300 is listed, 24150..24250 are, 24350 and 24400's neighbour 24450 are not
    assert keys(resolve("NFO:NIFTY OPT weekly ATM+6-0 CE", "24100")) == [
        "24100CE",
        "24150CE",
        "24200CE",
        "24250CE",
        "24300CE",
        "24400CE",
    ]
    without = [c for c in CONTRACTS if c.strike != Decimal("24050")]
    assert keys(resolve("NFO:NIFTY OPT weekly ATM±2 CE", "24000", contracts=without)) == [
        "23900CE",
        "23950CE",
        "24000CE",
        "24100CE",
    ]


def test_asymmetric_ranges_and_one_side():
    assert keys(resolve("NFO:NIFTY OPT weekly ATM+1-3 PE", "24000")) == ["23850PE", "23900PE", "23950PE", "24000PE", "24050PE"]
    assert {c.kind for c in resolve("NFO:NIFTY OPT weekly ATM±3 CE", "24000")} == {"CE"}


def test_the_range_stops_at_the_last_listed_strike():
    assert keys(resolve("NFO:NIFTY OPT weekly ATM±3 CE", "30000")) == ["24200CE", "24300CE", "24400CE", "24500CE"]


def test_resolved_options_are_the_masters_own_rows():
    found = resolve("NFO:BANKNIFTY OPT next-monthly ATM PE", "51000")
    assert found == [c for c in CONTRACTS if c.symbol == "BANKNIFTY26022451000PE"]
    assert found[0].lot_size == 30


def test_options_without_a_price_name_the_symbol_to_price():
    with pytest.raises(
        UniverseError, match=r"finding the money needs the last price of NSE:NIFTY 50: fetch it and pass it as underlying_price"
    ):
        resolve("NFO:NIFTY OPT weekly ATM±10")
    with pytest.raises(UniverseError, match=r"the underlying's price 0 is not a positive number"):
        resolve("NFO:NIFTY OPT weekly ATM±10", "0")


def test_futures_need_no_price():
    assert atm_reference(parse_entry("NFO:NIFTY FUT"), CONTRACTS, MONDAY) is None
    assert resolve("NFO:NIFTY FUT", None)


def test_an_unknown_underlying_suggests_the_masters_spelling():
    with pytest.raises(UniverseError, match=r"lists no NIFTI options on NFO: did you mean NIFTY\?"):
        resolve("NFO:NIFTI OPT weekly ATM", "24000")
    with pytest.raises(
        UniverseError, match=r"lists no GOLD futures on MCX: check the name as the master spells it \(e.g. CRUDEOIL\)"
    ):
        resolve("MCX:GOLD FUT")
    with pytest.raises(UniverseError, match=r"lists no USDINR futures on CDS: it lists no futures on CDS at all"):
        resolve("CDS:USDINR FUT")


# --- what the money is measured against ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reference"),
    [
        ("NFO:NIFTY OPT weekly ATM", ("NSE", "NIFTY 50")),
        ("NFO:BANKNIFTY OPT monthly ATM", ("NSE", "NIFTY BANK")),
        ("BFO:SENSEX OPT weekly ATM", ("BSE", "SENSEX")),
        ("NFO:RELIANCE OPT monthly ATM", ("NSE", "RELIANCE")),  # its own EQ row
        ("NFO:RELIANCE OPT monthly ATM on FUT", ("NFO", "RELIANCE26JANFUT")),
        ("NFO:NIFTY OPT weekly ATM on NSE:NIFTY 50", ("NSE", "NIFTY 50")),
        ("NFO:TATASTEEL OPT monthly ATM on NSE:TATASTEEL", ("NSE", "TATASTEEL")),
        ("MCX:CRUDEOIL OPT weekly ATM", ("MCX", "CRUDEOIL26JANFUT")),  # no cash market: the near future
        ("MCX:CRUDEOIL OPT weekly ATM roll=0", ("MCX", "CRUDEOIL26FEBFUT")),  # the near future by the same roll
    ],
)
def test_the_atm_reference(text, reference):
    today = D("2026-01-19") if "roll=0" in text else MONDAY
    assert atm_reference(parse_entry(text), CONTRACTS, today) == reference


def test_a_stock_without_its_own_row_asks_for_an_on_clause():
    with pytest.raises(
        UniverseError,
        match=r"no NSE row for TATASTEEL to measure the money against: name one with "
        r"'on NSE:SYMBOL', or measure against the near future with 'on FUT'",
    ):
        resolve("NFO:TATASTEEL OPT monthly ATM±1")


def test_mcx_options_resolve_against_the_near_futures_price():
    assert keys(resolve("MCX:CRUDEOIL OPT weekly ATM±1 CE", "5530")) == ["5500CE", "5550CE", "5600CE"]
