"""``--backfill`` against the fake Kite server, whose tape is the truth: a day's candles equal the
reference built from the tape, final live candles are kept, holidays skipped, a 403 said once
with nothing written, and a killed or stopped run resumes where it stopped."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest

from candles.model import BACKFILL, LIVE, PARTIAL, Candle, Interval, parse_intervals
from cli.app import main
from core.ist import IST
from storage.sqlite import SQLiteStore
from testkit.cli import main_env, run_main, start_main
from testkit.fakes.kite_server import DEFAULT_START_EPOCH, FakeInstrument, KiteFakeServer, TapeTick, random_tape
from testkit.reference import reference_candles

DAY = datetime(2024, 1, 15, tzinfo=IST)  # a Monday
OPEN, CLOSE = DAY.replace(hour=9, minute=15), DAY.replace(hour=15, minute=30)
EQUITIES = (FakeInstrument(408065, "NSE", "INFY"), FakeInstrument(738561, "NSE", "RELIANCE"))
FIELDS = ("open", "high", "low", "close", "volume", "oi")


@pytest.fixture
def server() -> Iterator[KiteFakeServer]:
    with KiteFakeServer() as s:
        yield s


def kite_env(server: KiteFakeServer, root: Path) -> dict[str, str]:
    return {
        "KITE_API_KEY": server.api_key,
        "KITE_ACCESS_TOKEN": server.access_token,
        "KITE_API_URL": server.api_url,
        "SQLITE_PATH": str(root / "candles.db"),
        "DATA_DIR": str(root / "data"),
    }


def run(server: KiteFakeServer, root: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    for name, value in kite_env(server, root).items():
        monkeypatch.setenv(name, value)
    return main(["--backfill", *args])


def day_tape(instruments=EQUITIES, seconds: int = 1800, start: int = DEFAULT_START_EPOCH) -> list[TapeTick]:
    """``seconds`` of trading from ``start``, each instrument led by a pre-open trade at 09:08 (so
    its first session tick is measured against that tick's cumulative volume, as live candles are)."""
    tape = random_tape(instruments, seconds=seconds, start_epoch=start)
    pre = []
    for inst in instruments:
        first = next(t for t in tape if t.token == inst.token)
        pre.append(TapeTick(inst.token, first.last_price, 1, first.volume - first.last_quantity, start - 7 * 60))
    return pre + tape


def reference(tape: list[TapeTick], intervals: str, instruments=EQUITIES) -> dict:
    names = {i.token: i for i in instruments}
    arrivals = [
        SimpleNamespace(
            exchange="NSE",
            symbol=names[t.token].tradingsymbol,
            last_price=t.last_price,
            volume=t.volume,
            oi=t.oi,
            exchange_ts=datetime.fromtimestamp(t.exchange_ts, IST),
        )  # fmt: skip
        for t in tape
    ]
    ref = reference_candles(arrivals, parse_intervals(intervals))
    return {
        key: {f: v[f] for f in FIELDS}
        for key, v in ref.items()
        if OPEN.timestamp() <= key[3] < CLOSE.timestamp()  # buckets that start in the session
    }


def stored(root: Path) -> dict:
    with sqlite3.connect(root / "candles.db") as db:
        rows = db.execute("SELECT exchange, symbol, interval, bucket FROM candles").fetchall()
    store = SQLiteStore(root / "candles.db", read_only=True)
    try:
        out = {}
        for exchange, symbol, interval in {r[:3] for r in rows}:
            for c in store.between(exchange, symbol, interval, DAY, DAY + timedelta(days=30)):
                out[(c.exchange, c.symbol, c.interval, int(c.bucket.timestamp()))] = c
        return out
    finally:
        store.close()


def test_a_day_backfilled_into_an_empty_store_equals_the_reference_of_the_tape(
    server: KiteFakeServer, in_process: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tape = day_tape()
    server.send_ticks(tape)
    code = run(server, in_process, monkeypatch, "--symbols", "NSE:INFY", "NSE:RELIANCE", "--from", "2024-01-15",
               "--to", "2024-01-15", "--intervals", "1m,5m,15m")  # fmt: skip
    assert code == 0
    got = stored(in_process)
    want = reference(tape, "1m,5m,15m")
    assert {k: {f: getattr(c, f) for f in FIELDS} for k, c in got.items()} == want
    assert {c.interval for c in got.values()} == {"1m", "5m", "15m"}
    assert all(c.source == BACKFILL and c.final for c in got.values())
    assert [r.status for r in server.historical_requests] == [200, 200]  # one request a symbol
    out = capsys.readouterr().out
    assert "2 of 2 symbols, 2 symbol-days, 2 requests (0 retried)" in out
    assert f"{len(want)} candles written" in out
    assert not list((in_process / "data").glob("backfill-*.done"))  # a finished request leaves no state
    # the day's session is known now: no gap left (--show-gaps, the daemon's count)
    store = SQLiteStore(in_process / "candles.db", read_only=True)
    try:
        spans = store.watched(DAY.timestamp(), DAY.timestamp() + 86_400)
    finally:
        store.close()
    session = (DAY.replace(hour=9, minute=15).timestamp(), DAY.replace(hour=15, minute=30).timestamp())
    assert spans == {("NSE", "INFY"): [session], ("NSE", "RELIANCE"): [session]}


def live(bucket: datetime, source: str, final: bool, price: str = "1.00") -> Candle:
    p = Decimal(price)
    return Candle("NSE", "INFY", "1m", bucket, p, p, p, p, 7, 0, 3, bucket, bucket, 7, final, source)


def test_a_final_live_candle_is_kept_and_a_partial_one_is_replaced(
    server: KiteFakeServer, in_process: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tape = day_tape(EQUITIES[:1], seconds=180)
    server.send_ticks(tape)
    store = SQLiteStore(in_process / "candles.db")
    store.migrate()
    kept = live(OPEN, LIVE, True)
    store.upsert([kept, live(OPEN + timedelta(minutes=1), PARTIAL, True), live(OPEN + timedelta(minutes=2), LIVE, False)])
    store.close()
    assert run(server, in_process, monkeypatch, "--symbols", "NSE:INFY", "--from", "2024-01-15", "--to", "2024-01-15",
               "--intervals", "1m") == 0  # fmt: skip
    got = stored(in_process)
    want = reference(tape, "1m")
    key = ("NSE", "INFY", "1m", int(OPEN.timestamp()))
    assert got[key] == kept
    for minute in (1, 2):
        k = ("NSE", "INFY", "1m", int((OPEN + timedelta(minutes=minute)).timestamp()))
        assert got[k].source == BACKFILL and {f: getattr(got[k], f) for f in FIELDS} == want[k]
    assert "1 kept because a final live candle holds the bucket" in capsys.readouterr().out


def test_a_holiday_and_a_weekend_are_skipped(server: KiteFakeServer, in_process: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    thursday = int(datetime(2024, 1, 25, 9, 15, tzinfo=IST).timestamp())
    friday = thursday + 86_400  # Republic Day: NSE is closed
    for start in (thursday, friday):
        server.send_ticks(random_tape(EQUITIES[:1], seconds=120, start_epoch=start))
    assert run(server, in_process, monkeypatch, "--symbols", "INFY", "--from", "2024-01-25", "--to", "2024-01-28",
               "--intervals", "1m,1d") == 0  # fmt: skip
    days = {c.bucket.date() for c in stored(in_process).values()}
    assert days == {datetime(2024, 1, 25).date()}
    (asked,) = server.historical_requests
    assert (asked.query["from"], asked.query["to"]) == ("2024-01-25 09:15:00", "2024-01-25 15:29:59")


def test_an_app_without_historical_access_is_told_the_fix_and_nothing_is_written(
    server: KiteFakeServer, in_process: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    server.send_ticks(day_tape())
    server.historical_access = False
    code = run(server, in_process, monkeypatch, "--symbols", "INFY", "RELIANCE", "--from", "2024-01-15", "--to", "2024-01-15")
    assert code == 3
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        line for line in err.splitlines() if "historical data add-on" in line
    ]
    assert err.count("historical data add-on") == 1 and server.access_token not in err
    assert len(server.historical_requests) == 1  # asked once, not once a symbol
    assert stored(in_process) == {}


def test_without_kite_settings_backfill_says_what_to_set(in_process: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--broker", "kotak", "--backfill", "--symbols", "INFY"]) == 2
    assert "KITE_API_KEY" in capsys.readouterr().err


# -- as a process: killed, stopped, resumed --------------------------------------------------------

MANY = tuple(FakeInstrument(1000 * 256 + n * 256 + 1, "NSE", f"SYM{n:02d}") for n in range(12))


def _done_lines(root: Path) -> int:
    return len(_done_symbols(root))


def _done_symbols(root: Path) -> set[str]:
    return {line.split()[0] for p in (root / "data").glob("backfill-*.done") for line in p.read_text().splitlines()}


def _kill_after(proc, root: Path, lines: int, sig: int) -> None:
    deadline = time.monotonic() + 60
    while _done_lines(root) < lines:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the backfill recorded no progress"
        time.sleep(0.05)
    proc.send_signal(sig)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_or_stopped_backfill_resumes_where_it_stopped(tmp_path: Path, sig: int) -> None:
    with KiteFakeServer(instruments=MANY) as server:
        server.send_ticks(random_tape(MANY, seconds=120))
        args = ["--backfill", "--symbols", *[f"NSE:{i.tradingsymbol}" for i in MANY], "--from", "2024-01-15",
                "--to", "2024-01-15", "--intervals", "1m,5m"]  # fmt: skip
        env = main_env(**kite_env(server, tmp_path))
        proc = start_main(*args, cwd=tmp_path, env=env)
        _kill_after(proc, tmp_path, 4, sig)
        out, err = proc.communicate(timeout=60)
        if sig == signal.SIGTERM:
            assert proc.returncode == 0, err
            assert "backfill stopped by SIGTERM after" in out and "run the same command again to resume" in out
        done = _done_symbols(tmp_path)
        assert 4 <= len(done) < len(MANY)
        again = run_main(*args, cwd=tmp_path, env=env)
        assert again.returncode == 0, again.stderr
        asked = [r.token for r in server.historical_requests]
        for inst in MANY:  # the symbols done before the kill are not asked again; the others are
            assert asked.count(inst.token) == 1 if f"NSE:{inst.tradingsymbol}" in done else asked.count(inst.token) >= 1
        done = len(done)
        assert f"{done} symbol-days done by an earlier run" in again.stdout
        got = stored(tmp_path)
    assert {(k[1], k[2]) for k in got} == {(i.tradingsymbol, iv) for i in MANY for iv in ("1m", "5m")}
    assert not list((tmp_path / "data").glob("backfill-*.done"))


def test_symbols_are_fetched_concurrently_within_the_limit_and_equal_the_reference(
    in_process: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with KiteFakeServer(instruments=MANY) as server:
        tape = day_tape(MANY, seconds=300)
        server.send_ticks(tape)
        server.historical_delay = 0.5  # each reply: longer than a third of the limit's second
        code = run(server, in_process, monkeypatch, "--symbols", *[f"NSE:{i.tradingsymbol}" for i in MANY],
                   "--from", "2024-01-15", "--to", "2024-01-15", "--intervals", "1m,5m")  # fmt: skip
        asked = sorted(server.historical_requests, key=lambda r: r.at)
    assert code == 0
    assert [r.status for r in asked] == [200] * len(MANY)  # no 429
    assert max(sum(1 for u in asked if r.at <= u.at < r.at + 1.0) for r in asked) <= 3
    # requests overlap: one was sent while an earlier one's reply was still being held
    assert any(b.at - a.at < server.historical_delay for a, b in zip(asked, asked[1:]))
    got = stored(in_process)
    assert {k: {f: getattr(c, f) for f in FIELDS} for k, c in got.items()} == reference(tape, "1m,5m", MANY)
    assert f"{len(MANY)} of {len(MANY)} symbols, {len(MANY)} symbol-days, {len(MANY)} requests (0 retried)" in (
        capsys.readouterr().out
    )
    assert not list((in_process / "data").glob("backfill-*.done"))


def test_the_done_file_keeps_whole_lines_when_written_from_several_threads(tmp_path: Path) -> None:
    from cli.backfill import DoneFile

    days = [DAY.date() + timedelta(days=n) for n in range(50)]
    done = DoneFile(tmp_path, {"request": 1})
    threads = [threading.Thread(target=lambda k=k: [done.add(f"NSE:S{k}", [d]) for d in days]) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    done.close(finished=False)
    again = DoneFile(tmp_path, {"request": 1})
    assert again.done == {(f"NSE:S{k}", d) for k in range(8) for d in days}
    assert len(again.path.read_text().splitlines()) == 8 * 50


def test_the_interval_roll_up_sums_minute_volumes() -> None:
    from candles.rollup import roll_up

    minutes = [live(OPEN + timedelta(minutes=m), BACKFILL, True, p) for m, p in enumerate(["2.00", "3.00", "1.00", "2.50"])]
    (five,) = roll_up(minutes, Interval.parse("5m"))
    assert (five.open, five.high, five.low, five.close, five.volume) == (Decimal("2.00"), Decimal("3.00"), Decimal("1.00"),
                                                                          Decimal("2.50"), 28)  # fmt: skip
    assert five.bucket == OPEN and five.interval == "5m"
