"""The market calendar: sessions per exchange, holidays from the library, the override file."""

from __future__ import annotations

from datetime import date, datetime, time
from pathlib import Path

import pytest

from cli.app import main
from config.env import ConfigError
from config.market_calendar import build_calendar, library_holidays, read_overrides, staleness
from config.symbols import EXCHANGES
from core.ist import IST
from core.market_calendar import REGULAR_HOURS, MarketCalendar
from testkit.waiting import wait_until


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    found = library_holidays(tmp_path_factory.mktemp("calendar-cache"))
    assert found is not None, "exchange_calendars is not installed: pip install -r requirements.txt"
    return found


@pytest.fixture(scope="module")
def calendar(library) -> MarketCalendar:
    return build_calendar(library, read_overrides(None))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "calendar.toml"
    path.write_text(text, encoding="utf-8")
    return path


def ist(y: int, mo: int, d: int, h: int, mi: int) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=IST)


def test_every_watchlist_exchange_has_session_hours():
    assert set(REGULAR_HOURS) == set(EXCHANGES)


def test_a_normal_day_has_375_nse_session_minutes_from_0915_to_1529(calendar):
    minutes = calendar.session_minutes("NSE", date(2026, 12, 7))  # a Monday
    assert len(minutes) == 375
    assert (minutes[0], minutes[-1]) == (ist(2026, 12, 7, 9, 15), ist(2026, 12, 7, 15, 29))
    assert calendar.is_open("NSE", ist(2026, 12, 7, 15, 29))
    assert not calendar.is_open("NSE", ist(2026, 12, 7, 15, 30))
    assert not calendar.is_open("NSE", ist(2026, 12, 7, 9, 14)), "the pre-open is not a session minute"


def test_weekends_and_a_known_nse_holiday_have_no_sessions(calendar):
    assert calendar.sessions("NSE", date(2026, 12, 5)) == []  # Saturday
    assert calendar.sessions("NFO", date(2026, 12, 6)) == []  # Sunday
    diwali = date(2026, 11, 10)  # Diwali Balipratipada
    for exchange in ("NSE", "BSE", "NFO", "BFO"):
        assert calendar.sessions(exchange, diwali) == []
    assert calendar.day("NSE", diwali).closed_because == "holiday"
    assert calendar.session_minutes("NSE", date(2026, 12, 25)) == []  # Christmas


def test_an_adhoc_closure_and_a_budget_saturday_come_from_the_library(calendar):
    assert calendar.sessions("NSE", date(2026, 1, 15)) == []  # municipal elections, a Thursday
    assert calendar.session_minutes("NSE", date(2025, 2, 1))[0] == ist(2025, 2, 1, 9, 15)  # budget day, a Saturday
    assert calendar.sessions("MCX", date(2025, 2, 1)) == [], "the weekend sessions are the equity segment's"


def test_mcx_has_an_evening_session_that_closes_later_in_the_us_winter(calendar):
    summer = calendar.sessions("MCX", date(2026, 10, 30))  # US daylight saving until 1 November
    winter = calendar.sessions("MCX", date(2026, 11, 2))
    assert summer == [(ist(2026, 10, 30, 9, 0), ist(2026, 10, 30, 23, 30))]
    assert winter == [(ist(2026, 11, 2, 9, 0), ist(2026, 11, 2, 23, 55))]
    assert calendar.is_open("MCX", ist(2026, 11, 2, 21, 0))
    assert not calendar.is_open("NSE", ist(2026, 11, 2, 21, 0))
    assert calendar.sessions("MCX", date(2027, 3, 12))[0][1].time() == time(23, 55)  # US clocks change on 14 March
    assert calendar.sessions("MCX", date(2027, 3, 15))[0][1].time() == time(23, 30)
    assert calendar.sessions("CDS", date(2026, 12, 7)) == [(ist(2026, 12, 7, 9, 0), ist(2026, 12, 7, 17, 0))]


def test_a_muhurat_session_from_the_override_file_is_open_on_a_sunday(library, tmp_path):
    path = _write(tmp_path, """
[[session]]
date = 2026-11-08
exchanges = ["NSE", "NFO"]
open = "18:00"
close = "19:00"
note = "Muhurat trading"
""")
    calendar = build_calendar(library, read_overrides(path))
    minutes = calendar.session_minutes("NSE", date(2026, 11, 8))
    assert len(minutes) == 60 and minutes[0] == ist(2026, 11, 8, 18, 0)
    assert calendar.is_open("NFO", ist(2026, 11, 8, 18, 30))
    assert calendar.sessions("BSE", date(2026, 11, 8)) == [], "only the exchanges it names"
    assert calendar.next_open("NSE", ist(2026, 11, 7, 12, 0)) == ist(2026, 11, 8, 18, 0)


def test_an_override_closure_removes_a_trading_day(library, tmp_path):
    path = _write(tmp_path, """
[[closed]]
date = 2026-12-08
exchanges = ["NSE", "MCX"]
note = "exchange outage"
""")
    calendar = build_calendar(library, read_overrides(path))
    assert calendar.sessions("NSE", date(2026, 12, 8)) == []
    assert calendar.day("MCX", date(2026, 12, 8)).closed_because == "closed: exchange outage"
    assert calendar.sessions("BSE", date(2026, 12, 8)), "an exchange it does not name still trades"
    assert calendar.trading_days("NSE", date(2026, 12, 7), date(2026, 12, 11)) == [
        date(2026, 12, 7), date(2026, 12, 9), date(2026, 12, 10), date(2026, 12, 11)
    ]


def test_override_hours_change_the_regular_session_from_their_day_on(library, tmp_path):
    path = _write(tmp_path, '[[hours]]\nfrom = 2026-12-07\nexchanges = ["NFO"]\nopen = "09:15"\nclose = "15:45"\n')
    calendar = build_calendar(library, read_overrides(path))
    assert len(calendar.session_minutes("NFO", date(2026, 12, 4))) == 385, "the built-in 15:40 close until then"
    assert len(calendar.session_minutes("NFO", date(2026, 12, 7))) == 390
    assert len(calendar.session_minutes("BFO", date(2026, 12, 7))) == 385, "only the exchanges it names"
    assert len(calendar.session_minutes("NSE", date(2026, 12, 7))) == 375


def test_equity_derivatives_close_at_1540_from_3_august_2026_and_cash_still_at_1530(calendar):
    for exchange in ("NFO", "BFO"):
        assert calendar.sessions(exchange, date(2026, 7, 31)) == [(ist(2026, 7, 31, 9, 15), ist(2026, 7, 31, 15, 30))]
        assert calendar.sessions(exchange, date(2026, 8, 3)) == [(ist(2026, 8, 3, 9, 15), ist(2026, 8, 3, 15, 40))]
        assert calendar.is_open(exchange, ist(2026, 12, 7, 15, 35))
    assert calendar.sessions("NSE", date(2026, 8, 3))[0][1] == ist(2026, 8, 3, 15, 30)
    assert calendar.session_minutes("NFO", date(2026, 12, 7))[-1] == ist(2026, 12, 7, 15, 39)


MCX_AGRI = """
[[hours]]
from = 2025-01-01
exchanges = ["MCX"]
symbols = ["cottoncndy", "KAPAS"]
open = "09:00"
close = "21:00"
note = "internationally referenceable agri"

[[hours]]
from = 2025-01-01
exchanges = ["MCX"]
symbols = ["MENTHAOIL", "CARDAMOM"]
open = "09:00"
close = "17:00"

[[hours]]
from = 2027-01-04
exchanges = ["MCX"]
open = "09:00"
close = "23:00"
note = "a later change for the whole exchange"
"""


def test_mcx_agricultural_symbols_close_at_their_own_hours_from_the_override_file(library, tmp_path):
    calendar = build_calendar(library, read_overrides(_write(tmp_path, MCX_AGRI)))
    day = date(2026, 12, 7)
    assert calendar.sessions("MCX", day, "MENTHAOIL26DECFUT") == [(ist(2026, 12, 7, 9, 0), ist(2026, 12, 7, 17, 0))]
    assert calendar.sessions("MCX", day, "CottonCndy27JANFUT")[0][1] == ist(2026, 12, 7, 21, 0)
    assert calendar.session_minutes("MCX", day, "KAPAS27APRFUT")[-1] == ist(2026, 12, 7, 20, 59)
    assert calendar.sessions("MCX", day, "CRUDEOIL26DECFUT")[0][1] == ist(2026, 12, 7, 23, 55), "non-agri: the exchange's"
    assert calendar.sessions("MCX", day)[0][1] == ist(2026, 12, 7, 23, 55)
    assert not calendar.is_open("MCX", ist(2026, 12, 7, 18, 0), "CARDAMOM26DECFUT")
    assert calendar.is_open("MCX", ist(2026, 12, 7, 18, 0), "GOLD27FEBFUT")
    later = date(2027, 1, 4)
    assert calendar.sessions("MCX", later, "GOLD27FEBFUT")[0][1] == ist(2027, 1, 4, 23, 0)
    assert calendar.sessions("MCX", later, "MENTHAOIL27JANFUT")[0][1] == ist(2027, 1, 4, 17, 0), "a symbol's own entry wins"
    assert calendar.sessions("NSE", day, "MENTHAOIL") == calendar.sessions("NSE", day), "only the exchanges it names"
    assert calendar.sessions("MCX", date(2026, 12, 12), "MENTHAOIL26DECFUT") == [], "a Saturday: hours never add a day"


def test_trading_days_and_next_open_cross_the_year_boundary(calendar):
    days = calendar.trading_days("NSE", date(2025, 12, 24), date(2026, 1, 5))
    assert days == [date(2025, 12, 24), date(2025, 12, 26), date(2025, 12, 29), date(2025, 12, 30),
                    date(2025, 12, 31), date(2026, 1, 1), date(2026, 1, 2), date(2026, 1, 5)]  # fmt: skip
    assert calendar.next_open("NSE", ist(2025, 12, 31, 15, 30)) == ist(2026, 1, 1, 9, 15)
    assert calendar.next_open("NSE", ist(2026, 1, 2, 10, 0)) == ist(2026, 1, 2, 10, 0), "already open"


def test_bad_override_entries_are_refused_naming_each_and_its_fix(tmp_path):
    path = _write(tmp_path, """
holidays_listed_through = "next year"
[[session]]
date = "2026-14-06"
exchanges = ["NSX"]
open = "19:00"
close = "18:00"

[[closed]]
exchanges = ["MCX"]
when = 1

[[hours]]
from = 2026-12-07
exchanges = ["MCX"]
symbols = "COTTON"
open = "09:00"
close = "21:00"
""")
    with pytest.raises(ConfigError) as raised:
        read_overrides(path)
    text = str(raised.value)
    assert str(path) in text
    for expected in (
        "holidays_listed_through = 'next year': write a year",
        "[[session]] #1: date = '2026-14-06' is not a date: write date = 2026-11-08",
        "[[session]] #1: unknown exchange NSX: use NSE",
        "[[session]] #1: open 19:00 is not before close 18:00",
        "[[closed]] #1 lacks date",
        "[[closed]] #1 has unknown key 'when'",
        """[[hours]] #1 (from 2026-12-07): symbols = 'COTTON': write a list of trading symbol prefixes""",
    ):
        assert expected in text


def test_a_file_that_is_not_toml_is_refused_naming_the_file(tmp_path):
    path = _write(tmp_path, "[[session]\ndate = 2026-11-08\n")
    with pytest.raises(ConfigError, match="calendar.toml: not valid TOML"):
        read_overrides(path)


def test_a_calendar_without_holidays_for_this_or_next_year_is_reported_stale(library, tmp_path):
    calendar = build_calendar(library, read_overrides(None))
    assert library.last.year >= 2026
    assert staleness(calendar, read_overrides(None), date(library.last.year, 6, 1)) is None
    warning = staleness(calendar, read_overrides(None), date(library.last.year + 1, 2, 1))
    assert warning is not None and f"none for {library.last.year + 1}" in warning and "upgrade exchange_calendars" in warning
    december = staleness(calendar, read_overrides(None), date(library.last.year, 12, 6))
    assert december is not None and f"none for {library.last.year + 1}" in december
    listed = read_overrides(_write(tmp_path, f"holidays_listed_through = {library.last.year + 1}\n"))
    assert staleness(calendar, listed, date(library.last.year, 12, 6)) is None


def test_the_daemon_refuses_a_bad_calendar_file_before_logging_in(in_process, capsys):
    (in_process / "calendar.toml").write_text('[[closed]]\ndate = 2026-12-08\nexchanges = ["NSE", "XYZ"]\n')
    code = main(["--broker", "sim", "--symbols", "NSE:INFY", "--duration", "0.5"])
    assert code == 2
    err = capsys.readouterr().err
    assert "calendar.toml" in err and "[[closed]] #1 (date 2026-12-08): unknown exchange XYZ" in err


def test_the_daemon_logs_todays_sessions_at_start_up(in_process, capsys):
    code = main(["--broker", "sim", "--symbols", "NSE:INFY", "--duration", "0.5"])
    assert code == 0
    err: list[str] = []

    def logged() -> bool:  # the holidays are read beside the start, which does not wait for them
        err.extend(capsys.readouterr().err.splitlines())
        return any("market calendar: NSE" in line for line in err)

    wait_until(logged, 30, "the market calendar's start-up line")
    lines = [line for line in err if "market calendar: NSE" in line]
    assert ("NSE open today 09:15\u201315:30" in lines[0] or "NSE closed today (" in lines[0])
