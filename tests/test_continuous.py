"""Continuous futures series (NIFTY-I ...): each day's candles from the contract recorded for it,
read from SQLite and a real PostgreSQL, and shown by --show-candles."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from candles.model import Candle
from cli.app import main
from core.ist import IST
from storage.base import CandleStore, StoreError
from storage.continuous import (
    Roll,
    continuous_candles,
    latest_continuous,
    roll_changes,
    series_index,
    series_name,
)
from storage.postgres import PostgresStore
from storage.sqlite import SQLiteStore

DEC, JAN = "NIFTY26DECFUT", "NIFTY27JANFUT"
MON, TUE, WED, THU = (date(2026, 12, 28) + timedelta(days=i) for i in range(4))
MINUTE = timedelta(minutes=1)
PRICE = {DEC: Decimal("26010.50"), JAN: Decimal("26175.00")}  # the next month trades at a premium


def at(day: date, minute: int = 0) -> datetime:
    return datetime.combine(day, time(9, 15), IST) + minute * MINUTE


def candle(symbol: str, day: date, minute: int, interval: str = "1m") -> Candle:
    bucket = at(day, minute) if interval == "1m" else datetime.combine(day, time(), IST)
    p = PRICE[symbol] + minute
    return Candle(
        exchange="NFO", symbol=symbol, interval=interval, bucket=bucket, open=p, high=p + 2, low=p - 1, close=p + 1,
        volume=750 + minute, oi=12_000_000, tick_count=30, first_tick=bucket + timedelta(seconds=1),
        last_tick=bucket + timedelta(seconds=58), cum_volume=100_000 + minute, final=True,
    )  # fmt: skip


@dataclass
class Where:
    """A migrated store and the setting that points the CLI at the same database."""

    store: CandleStore
    env: dict[str, str]


@pytest.fixture(params=["sqlite", "postgres"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Where]:
    if request.param == "sqlite":
        path = tmp_path / "candles.db"
        w = Where(SQLiteStore(path), {"SQLITE_PATH": str(path)})
    else:
        dsn = request.getfixturevalue("pg_dsn")
        w = Where(PostgresStore(dsn), {"PG_CONN_STR": dsn})
    w.store.migrate()
    yield w
    w.store.close()


@pytest.fixture
def store(where: Where) -> CandleStore:
    """Both contracts traded Monday to Thursday (3 minutes each day, and a 1d candle); the near
    series took December's on Monday, January's from Tuesday, and nothing was recorded for
    Wednesday (the daemon did not run); Thursday January's again."""
    s = where.store
    s.upsert([candle(sym, day, m) for sym in (DEC, JAN) for day in (MON, TUE, WED, THU) for m in range(3)])
    s.upsert([candle(sym, day, 0, "1d") for sym in (DEC, JAN) for day in (MON, TUE, WED, THU)])
    for day, symbol in ((MON, DEC), (TUE, JAN), (THU, JAN)):
        s.record_roll("NFO", "NIFTY-I", day, symbol)
    s.record_roll("NFO", "NIFTY-II", MON, JAN)
    return s


def test_each_day_comes_from_its_recorded_contract_never_both(store: CandleStore) -> None:
    got = continuous_candles(store, "NFO", "NIFTY-I", "1m", at(MON), at(THU + timedelta(days=1)))
    expected = [candle(sym, day, m) for sym, day in ((DEC, MON), (JAN, TUE), (JAN, THU)) for m in range(3)]
    assert got == expected  # Wednesday has no roll: no candles, though both contracts have some
    assert [c.bucket for c in got] == sorted(c.bucket for c in got)  # bucket order, one candle a bucket
    assert {c.symbol for c in got if c.bucket.date() == MON} == {DEC}
    assert {c.symbol for c in got if c.bucket.date() == TUE} == {JAN}


def test_a_day_without_a_recorded_roll_has_no_candles(store: CandleStore) -> None:
    assert continuous_candles(store, "NFO", "NIFTY-I", "1m", at(WED), at(THU)) == []
    assert continuous_candles(store, "NFO", "NIFTY-I", "1m", at(MON) - timedelta(days=7), at(MON)) == []
    assert continuous_candles(store, "NFO", "NIFTY-III", "1m", at(MON), at(THU)) == []  # no rolls at all


def test_the_window_cuts_inside_a_day_and_the_daily_candle_follows_the_roll(store: CandleStore) -> None:
    assert continuous_candles(store, "NFO", "NIFTY-I", "1m", at(MON, 1), at(TUE, 1)) == [
        candle(DEC, MON, 1), candle(DEC, MON, 2), candle(JAN, TUE, 0),
    ]  # fmt: skip
    daily = continuous_candles(store, "NFO", "NIFTY-I", "1d", at(MON) - timedelta(days=1), at(THU) + timedelta(days=1))
    assert [(c.symbol, c.bucket.date()) for c in daily] == [(DEC, MON), (JAN, TUE), (JAN, THU)]
    assert continuous_candles(store, "NFO", "NIFTY-II", "1m", at(MON), at(THU)) == [candle(JAN, MON, m) for m in range(3)]


def test_naive_times_are_refused(store: CandleStore) -> None:
    with pytest.raises(StoreError, match="timezone-aware"):
        continuous_candles(store, "NFO", "NIFTY-I", "1m", datetime(2026, 12, 28), at(THU))


def test_the_newest_candles_cross_the_roll_newest_first(store: CandleStore) -> None:
    assert latest_continuous(store, "NFO", "NIFTY-I", "1m", 5) == [
        candle(JAN, THU, 2), candle(JAN, THU, 1), candle(JAN, THU, 0), candle(JAN, TUE, 2), candle(JAN, TUE, 1),
    ]  # fmt: skip
    everything = latest_continuous(store, "NFO", "NIFTY-I", "1m", 100)
    assert everything == list(reversed(continuous_candles(store, "NFO", "NIFTY-I", "1m", at(MON), at(THU, 60))))
    assert len(everything) == 9
    assert latest_continuous(store, "NFO", "NIFTY-III", "1m", 5) == []


def test_series_names() -> None:
    assert [series_index(s) for s in ("NIFTY-I", "NIFTY-II", "NIFTY-III", "BAJAJ-AUTO-II")] == [0, 1, 2, 1]
    assert [series_index(s) for s in ("NIFTY", "NIFTY-IV", "-I", "NIFTY26DECFUT", "NIFTY-i", "BAJAJ-AUTO")] == [None] * 6
    assert [series_name("BANKNIFTY", i) for i in range(3)] == ["BANKNIFTY-I", "BANKNIFTY-II", "BANKNIFTY-III"]
    with pytest.raises(ValueError, match="0 \\(near\\), 1 \\(next\\) and 2 \\(far\\)"):
        series_name("NIFTY", 3)


def test_roll_changes_are_the_days_the_contract_differs_from_the_day_before() -> None:
    rolls = [(MON, DEC), (TUE, JAN), (THU, JAN)]
    assert roll_changes(rolls) == [Roll(TUE, DEC, JAN)]
    assert str(Roll(TUE, DEC, JAN)) == "rolled NIFTY26DECFUT -> NIFTY27JANFUT on 2026-12-29"
    assert roll_changes(rolls[:1]) == roll_changes([]) == []


# -- --show-candles -----------------------------------------------------------------------------


def show(where: Where, in_process: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
         *args: str) -> list[str]:  # fmt: skip
    for name, value in where.env.items():
        monkeypatch.setenv(name, value)
    assert main(["--show-candles", *args]) == 0
    return capsys.readouterr().out.splitlines()


def test_show_candles_prints_the_stitched_series_with_the_roll(
    store: CandleStore, where: Where, in_process: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = show(where, in_process, monkeypatch, capsys, "NFO:NIFTY-I", "--limit", "7")
    assert lines[0].startswith("NFO:NIFTY-I 1m — newest 7 from ")
    assert "contracts recorded for 3 days, 2026-12-28 to 2026-12-31" in lines[0]
    assert lines[1].split()[-1] == "contract"
    body = lines[3:]
    assert body == [
        *(_line(candle(DEC, MON, m)) for m in (2,)),
        "-- rolled NIFTY26DECFUT -> NIFTY27JANFUT on 2026-12-29",
        *(_line(candle(JAN, day, m)) for day in (TUE, THU) for m in range(3)),
    ]
    assert [row.split()[-1] for row in body if not row.startswith("--")] == [DEC] + [JAN] * 6


def test_show_candles_notes_a_roll_after_the_newest_candle_and_leaves_out_rolls_before_the_first(
    store: CandleStore, where: Where, in_process: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store.record_roll("NFO", "NIFTY-I", THU + timedelta(days=1), "NIFTY27FEBFUT")  # today: no candles yet
    lines = show(where, in_process, monkeypatch, capsys, "NFO:NIFTY-I", "--limit", "3")
    assert lines[3:] == [
        *(_line(candle(JAN, THU, m)) for m in range(3)),
        "-- rolled NIFTY27JANFUT -> NIFTY27FEBFUT on 2027-01-01",
    ]


def test_show_candles_of_a_series_without_rolls_says_how_one_is_recorded(
    store: CandleStore, where: Where, in_process: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (line,) = show(where, in_process, monkeypatch, capsys, "NFO:BANKNIFTY-II")
    assert line.startswith("no rolls recorded for the continuous series NFO:BANKNIFTY-II in ")
    assert "while a FUT universe entry of its underlying is streamed" in line
    assert "'NFO:BANKNIFTY FUT near,next' records BANKNIFTY-I and BANKNIFTY-II" in line


def test_show_candles_of_a_contract_is_the_plain_view(
    store: CandleStore, where: Where, in_process: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = show(where, in_process, monkeypatch, capsys, f"NFO:{DEC}", "--limit", "2")
    assert lines[0].startswith(f"NFO:{DEC} 1m — newest 2 from ")
    assert lines[3:] == [_line(candle(DEC, THU, 1))[: -len(DEC) - 2], _line(candle(DEC, THU, 2))[: -len(DEC) - 2]]


def _line(c: Candle) -> str:
    return (
        f"{c.bucket:%Y-%m-%d %H:%M:%S} {c.open:>10} {c.high:>10} {c.low:>10} {c.close:>10} {c.volume:>10} "
        f"{c.tick_count:>6}  final  live  {c.symbol}"
    )
