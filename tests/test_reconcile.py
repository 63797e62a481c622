"""``--reconcile DATE`` against the fake Kite server, whose tape is the truth: live candles built
from the same tape match Kite's minutes; a changed price or volume is a mismatch of that field
(exit 1); partial and backfill candles are not compared; holes and extra candles are counted; the
first minute's pre-open volume at Kite is the one known difference; a holiday has nothing to compare."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from candles.model import BACKFILL, LIVE, PARTIAL, Candle
from candles.reconcile import Reconciliation
from cli.app import main
from core.ist import IST
from storage.sqlite import SQLiteStore
from testkit.fakes.kite_server import KiteFakeServer, TapeTick, random_tape
from tests.test_backfill import EQUITIES, day_tape, kite_env, reference

DAY = date(2024, 1, 15)  # a Monday
MINUTE = timedelta(minutes=1)


@pytest.fixture
def server() -> Iterator[KiteFakeServer]:
    with KiteFakeServer() as s:
        yield s


def live_candles(tape: list[TapeTick]) -> list[Candle]:
    """The final live 1m candles the daemon builds from ``tape`` (the reference builder's)."""
    out = []
    for (exchange, symbol, _, epoch), v in reference(tape, "1m").items():
        bucket = datetime.fromtimestamp(epoch, IST)
        out.append(Candle(exchange, symbol, "1m", bucket, v["open"], v["high"], v["low"], v["close"], v["volume"],
                          v["oi"], 1, bucket, bucket, None, True, LIVE))  # fmt: skip
    return sorted(out, key=lambda c: (c.symbol, c.bucket))


def store_candles(root: Path, candles: list[Candle]) -> None:
    store = SQLiteStore(root / "candles.db")
    store.migrate()
    store.upsert(candles, force=True)
    store.close()


def results(root: Path, day: date = DAY) -> dict[str, Reconciliation]:
    store = SQLiteStore(root / "candles.db", read_only=True)
    try:
        return {r.symbol: r for r in store.reconciliations(day)}
    finally:
        store.close()


def run(server: KiteFakeServer, root: Path, monkeypatch: pytest.MonkeyPatch, day: str = "2024-01-15",
        symbols: tuple[str, ...] = ("NSE:INFY", "NSE:RELIANCE")) -> int:  # fmt: skip
    for name, value in kite_env(server, root).items():
        monkeypatch.setenv(name, value)
    return main(["--reconcile", day, "--symbols", *symbols])


def _diffs(r: Reconciliation) -> tuple[int, ...]:
    return (r.mismatched, r.open_diff, r.high_diff, r.low_diff, r.close_diff, r.volume_diff, r.missing_here,
            r.missing_at_kite, r.partial_skipped, r.backfill_skipped)  # fmt: skip


def test_live_candles_built_from_the_same_tape_match_kite(
    server: KiteFakeServer, in_process: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tape = day_tape()
    server.send_ticks(tape)
    candles = live_candles(tape)
    store_candles(in_process, candles)
    assert run(server, in_process, monkeypatch) == 0
    got = results(in_process)
    assert set(got) == {"INFY", "RELIANCE"}
    for symbol, r in got.items():
        assert r.compared == sum(c.symbol == symbol for c in candles) > 20
        assert _diffs(r) == (0,) * 10 and r.volume_preopen == 0
    out = capsys.readouterr().out
    assert f"reconcile 2024-01-15: 2 symbols, {len(candles)} buckets compared, 0 mismatched, 0 missing here, 0 at Kite" in out


def test_a_tampered_close_is_reported_as_a_close_mismatch_and_exits_1(
    server: KiteFakeServer, in_process: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tape = day_tape()
    server.send_ticks(tape)
    candles = live_candles(tape)
    i = next(n for n, c in enumerate(candles) if c.symbol == "INFY" and c.bucket.minute == 20)
    candles[i] = replace(candles[i], close=candles[i].close + Decimal("0.05"))
    store_candles(in_process, candles)
    assert run(server, in_process, monkeypatch) == 1
    infy, reliance = results(in_process)["INFY"], results(in_process)["RELIANCE"]
    assert (infy.mismatched, infy.close_diff, infy.open_diff, infy.high_diff, infy.low_diff, infy.volume_diff) == (1, 1, 0, 0, 0, 0)
    assert _diffs(reliance) == (0,) * 10
    out = capsys.readouterr().out
    assert "1 mismatched (close 1)" in out
    assert "  NSE:INFY: 1 mismatched (close 1), 0 missing at Kite" in out and "NSE:RELIANCE:" not in out


def test_a_changed_volume_is_a_volume_mismatch_not_a_price_one(
    server: KiteFakeServer, in_process: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tape = day_tape(EQUITIES[:1])
    server.send_ticks(tape)
    candles = live_candles(tape)
    candles[5] = replace(candles[5], volume=candles[5].volume + 1)
    store_candles(in_process, candles)
    assert run(server, in_process, monkeypatch, symbols=("NSE:INFY",)) == 1
    r = results(in_process)["INFY"]
    assert (r.mismatched, r.volume_diff, r.open_diff + r.high_diff + r.low_diff + r.close_diff) == (1, 1, 0)


def test_kites_pre_open_volume_in_the_first_minute_is_counted_apart_not_as_a_mismatch(
    server: KiteFakeServer, in_process: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # no pre-open trade on the tape: Kite's 09:15 minute counts the day's volume from zero, the live
    # candle from the first tick the daemon saw
    tape = random_tape(EQUITIES[:1], seconds=600)
    server.send_ticks(tape)
    store_candles(in_process, live_candles(tape))
    assert run(server, in_process, monkeypatch, symbols=("NSE:INFY",)) == 0
    r = results(in_process)["INFY"]
    assert (r.volume_preopen, r.volume_diff, r.mismatched) == (1, 0, 0)
    assert "1 first minutes with Kite's pre-open volume (expected)" in capsys.readouterr().out


def test_partial_and_backfill_candles_are_counted_not_compared(
    server: KiteFakeServer, in_process: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tape = day_tape(EQUITIES[:1])
    server.send_ticks(tape)
    candles = live_candles(tape)
    odd = Decimal("0.05")
    candles[0] = replace(candles[0], source=PARTIAL, close=candles[0].close + odd, volume=1)  # a start inside the bucket
    candles[7] = replace(candles[7], source=BACKFILL, high=candles[7].high + odd)
    candles[9] = replace(candles[9], final=False, low=candles[9].low - odd)  # a stop cut it short
    store_candles(in_process, candles)
    assert run(server, in_process, monkeypatch, symbols=("NSE:INFY",)) == 0
    r = results(in_process)["INFY"]
    assert (r.partial_skipped, r.backfill_skipped, r.mismatched, r.compared) == (2, 1, 0, len(candles) - 3)


def test_a_hole_is_counted_and_a_candle_kite_lacks_is_suspicious(
    server: KiteFakeServer, in_process: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tape = day_tape(EQUITIES[:1], seconds=600)  # trading from 09:15 to 09:25 only
    server.send_ticks(tape)
    candles = live_candles(tape)
    del candles[3]
    store_candles(in_process, candles)
    assert run(server, in_process, monkeypatch, symbols=("NSE:INFY",)) == 0  # a hole alone: --backfill fills it
    assert (results(in_process)["INFY"].missing_here, results(in_process)["INFY"].missing_at_kite) == (1, 0)
    extra = replace(candles[-1], bucket=datetime(2024, 1, 15, 15, 0, tzinfo=IST))
    store_candles(in_process, [extra])
    assert run(server, in_process, monkeypatch, symbols=("NSE:INFY",)) == 1
    again = results(in_process)["INFY"]  # the same day run again: replaced, not added
    assert (again.missing_here, again.missing_at_kite, again.mismatched) == (1, 1, 0)
    assert "  NSE:INFY: 0 mismatched, 1 missing at Kite, 1 missing here" in capsys.readouterr().out


def test_a_holiday_has_nothing_to_compare_and_asks_kite_nothing(
    server: KiteFakeServer, in_process: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(server, in_process, monkeypatch, day="2024-01-26") == 0  # Republic Day
    out = capsys.readouterr().out
    assert "reconcile 2024-01-26: not a trading day on NSE (weekend or holiday): nothing to compare" in out
    assert server.historical_requests == []
    assert results(in_process, date(2024, 1, 26)) == {}


def test_a_day_in_the_future_is_refused(in_process: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--reconcile", "2999-01-01", "--symbols", "INFY"]) == 2
    assert "is in the future" in capsys.readouterr().err
