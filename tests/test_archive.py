"""The tick archive (pipeline/archive.py, storage/tick_archive.py) and ``--replay``/``--verify``."""

from __future__ import annotations

import gc
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from core.ist import IST
from core.ticks import TickData
from pipeline.archive import TickArchiver
from storage import tick_archive as ta
from testkit.cli import ROOT, main_env, run_main, start_main

DAY = "2026-11-24"
SIM_START = "2026-11-24T09:14:30"  # before the first bucket: the archive covers every candle of the run


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _tick(exchange: str, symbol: str, price: str, ex: datetime, rx: datetime, **kw: object) -> TickData:
    fields = {"broker": "kite", "token": 408065, "last_quantity": 5, "volume": 1000, "oi": None} | kw
    return TickData(
        fields["broker"], exchange, symbol, fields["token"], Decimal(price), fields["last_quantity"],
        fields["volume"], fields["oi"], ex, rx,
    )  # fmt: skip


def _archive_all(root: Path, batches: list[list[TickData]], clock: Clock, **kw: object) -> TickArchiver:
    archiver = TickArchiver(root, clock, **kw)
    archiver.start(fresh=True)
    for batch in batches:
        archiver.put(batch)
    archiver.stop()
    return archiver


def test_round_trip_keeps_every_field_exactly_across_exchanges_and_ist_midnight(tmp_path):
    before = datetime(2026, 11, 24, 23, 59, 59, 999_999, tzinfo=IST)
    after = datetime(2026, 11, 25, 0, 0, 0, 1, tzinfo=IST)
    rx = datetime(2026, 11, 24, 23, 59, 59, 999_999, tzinfo=IST) + timedelta(microseconds=7)
    first = [
        _tick("NSE", "M&M", "1220.50", before, rx, last_quantity=None),
        _tick("NSE", "NIFTY 50", "24310.15", before, rx, volume=None, last_quantity=None, token=256265),
        _tick("MCX", "CRUDEOIL 26DEC FUT", "6120", before, rx, oi=123_456, volume=2**62, last_quantity=2**40),
        _tick("CDS", "USDINR25DECFUT", "83.2525000", before, rx, oi=0, token=0),
        _tick("BSE", "S&P BSE SENSEX", "1E+3", after, rx + timedelta(microseconds=1), broker="kotak_neo"),
        _tick("NSE", "M&M", "-0.05", after, rx + timedelta(microseconds=2), volume=0),
    ]
    second = [
        _tick("NSE", "M&M", f"{1220 + i / 20:.2f}", after + timedelta(seconds=i), rx + timedelta(seconds=i)) for i in range(5)
    ]
    clock = Clock(rx.timestamp())
    archiver = _archive_all(tmp_path, [first, second], clock)
    assert archiver.report().ticks_archived == len(first) + len(second)
    assert archiver.report().ticks_dropped == 0

    read = {}
    for day in ta.days(tmp_path):
        for exchange, paths in ta.parts(tmp_path, day).items():
            read[(day.isoformat(), exchange)] = [t for p in paths for t in ta.read_ticks(p)]
    expected: dict[tuple[str, str], list[TickData]] = {}
    for t in first + second:
        expected.setdefault((t.exchange_ts.astimezone(IST).date().isoformat(), t.exchange), []).append(t)
    assert read == expected
    for key, ticks in read.items():  # equal, and spelled the same (the scale is kept), times aware to the µs
        for got, want in zip(ticks, expected[key], strict=True):
            assert str(got.last_price) == str(want.last_price)
            assert got.exchange_ts.utcoffset() == timedelta(hours=5, minutes=30)
            assert (got.exchange_ts, got.receive_ts) == (want.exchange_ts, want.receive_ts)
    assert ("2026-11-24", "NSE") in read and ("2026-11-25", "NSE") in read

    # readable by pyarrow.dataset as one table, with the partitions as columns
    table = ds.dataset(tmp_path, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == len(first) + len(second)
    assert {"date", "exchange", "symbol", "price_units", "price_scale", "receive_ts"} <= set(table.column_names)
    assert pq.ParquetFile(next(tmp_path.rglob("part-*.parquet"))).metadata.row_group(0).column(0).compression == "ZSTD"


def test_a_full_queue_drops_and_counts_and_the_window_is_not_claimed_as_covered(tmp_path):
    start = datetime(2026, 11, 24, 10, 0, tzinfo=IST)
    clock = Clock(start.timestamp())
    archiver = TickArchiver(tmp_path, clock, max_ticks=1000, roll_seconds=60)
    batch = [_tick("NSE", "INFY", "1500.05", start, start, volume=i) for i in range(600)]
    archiver.put(batch)  # the thread is not running yet: nothing is taken off the queue
    archiver.put(list(batch))  # 1200 would wait: dropped whole, counted
    report = archiver.report()
    assert (report.ticks_waiting, report.ticks_dropped) == (600, 600)
    archiver.start()
    clock.now += 30
    archiver.stop()
    report = archiver.report()
    assert report.ticks_archived == 600 and report.ticks_dropped == 600
    assert report.problem() is not None and "600 ticks dropped" in report.problem()
    lines = (tmp_path / f"date={DAY}" / ta.COVERAGE).read_text().splitlines()
    assert len(lines) == 1 and '"dropped": 600' in lines[0]
    assert ta.coverage(tmp_path, start.date()) == []  # --verify compares nothing of that window

    # a window without drops is covered again, and health recovers after it
    again = TickArchiver(tmp_path, clock, max_ticks=1000)
    again.start()
    again.put(batch)
    clock.now += 30
    again.stop()
    assert again.report().problem() is None
    assert len(ta.coverage(tmp_path, start.date())) == 1


def test_memory_is_bounded_by_max_ticks_while_the_disk_is_slow(tmp_path, monkeypatch):
    start = datetime(2026, 11, 24, 10, 0, tzinfo=IST)
    clock = Clock(start.timestamp())
    archiver = TickArchiver(tmp_path, clock, max_ticks=5000)
    slow = ta.Columns.extend

    def stalled(self: ta.Columns, ticks: list[TickData]) -> None:
        time.sleep(0.05)
        slow(self, ticks)

    monkeypatch.setattr(ta.Columns, "extend", stalled)
    archiver.start()
    batch = [_tick("NSE", "INFY", "1500.05", start, start, volume=i) for i in range(100)]
    waiting = []
    for _ in range(400):
        archiver.put(batch)
        waiting.append(archiver.report().ticks_waiting)
    assert max(waiting) <= 5000
    archiver.stop()
    report = archiver.report()
    assert report.ticks_dropped > 0 and report.ticks_archived + report.ticks_dropped == 40_000


def _sim(tmp_path: Path, *extra: str, seed: str = "7") -> list[str]:
    return [
        "--broker", "sim", "--symbols", "NSE:INFY", "NSE:M&M", "BSE:TCS", "--intervals", "1m,5m",
        "--seed", seed, "--sim-speed", "60", "--sim-start", SIM_START, *extra,
    ]  # fmt: skip


def test_replay_verify_equals_the_store_and_catches_an_altered_candle(tmp_path):
    env = main_env(TICK_ARCHIVE_DIR=str(tmp_path / "archive"), TICK_ARCHIVE_ROLL_SECONDS="60")
    proc = run_main(*_sim(tmp_path, "--duration", "10"), cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "tick archive: every tick into" in proc.stderr

    verify = run_main("--replay", DAY, "--intervals", "1m,5m", "--verify", cwd=tmp_path, env=env)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert " 0 differ or missing, 0 extra" in verify.stdout
    compared = int(verify.stdout.split(" stored candles compared")[0].rsplit(" ", 1)[1].replace(",", ""))
    assert compared >= 20

    db = sqlite3.connect(tmp_path / "data" / "marketfeed.db")
    bucket, close = db.execute(
        "SELECT bucket, close FROM candles WHERE exchange='NSE' AND symbol='M&M' AND \"interval\"='1m' "
        "AND source='live' AND final=1 ORDER BY bucket LIMIT 1 OFFSET 3"
    ).fetchone()
    altered = str(Decimal(close) + Decimal("0.05"))
    db.execute(
        "UPDATE candles SET close=? WHERE exchange='NSE' AND symbol='M&M' AND \"interval\"='1m' AND bucket=?", (altered, bucket)
    )
    db.commit()
    db.close()
    verify = run_main("--replay", DAY, "--intervals", "1m,5m", "--verify", cwd=tmp_path, env=env)
    assert verify.returncode == 1, verify.stdout + verify.stderr
    when = datetime.fromtimestamp(bucket / 1e6, IST)
    differences = [line for line in verify.stdout.splitlines() if ": differs:" in line or ": missing" in line or ": extra" in line]
    assert differences == [f"NSE:M&M 1m {when:%Y-%m-%d %H:%M}: differs: close stored {altered} replayed {close}"]
    assert " 1 differ or missing, 0 extra" in verify.stdout

    # without --verify: the candles of the symbols asked for
    shown = run_main("--replay", DAY, "--symbols", "NSE:M&M", "--intervals", "1m", cwd=tmp_path, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "NSE:M&M 1m" in shown.stdout and f"{when:%Y-%m-%d %H:%M:%S}" in shown.stdout


def test_replay_without_the_archive_setting_names_it(tmp_path):
    proc = run_main("--replay", DAY, cwd=tmp_path)
    assert proc.returncode == 2
    assert "TICK_ARCHIVE_DIR" in proc.stderr


def test_a_kill_leaves_the_finished_files_readable_and_the_next_start_clears_the_leftover(tmp_path):
    archive = tmp_path / "archive"
    env = main_env(TICK_ARCHIVE_DIR=str(archive), TICK_ARCHIVE_ROLL_SECONDS="60")  # a simulated minute: 1 s
    proc = start_main(*_sim(tmp_path), cwd=tmp_path, env=env)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (len(list(archive.rglob("part-*.parquet"))) < 6 or not ta.leftovers(archive)):
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
    assert ta.leftovers(archive), "a part file should have been in progress at the kill"
    finished = sorted(archive.rglob("part-*.parquet"))
    assert len(finished) >= 6
    rows = sum(pq.read_table(p).num_rows for p in finished)
    assert ds.dataset(archive, format="parquet", partitioning="hive").count_rows() == rows > 0
    replay = run_main("--replay", DAY, "--intervals", "1m", cwd=tmp_path, env=env)
    assert replay.returncode == 0, replay.stderr
    assert f"{rows:,} ticks" in replay.stdout

    restart = run_main(*_sim(tmp_path, "--duration", "2", seed="8"), cwd=tmp_path, env=env)
    assert restart.returncode == 0, restart.stderr
    assert "unfinished when an earlier run was killed" in restart.stderr
    assert not ta.leftovers(archive)


def test_the_daemon_without_an_archive_never_imports_pyarrow(tmp_path):
    code = (
        "import sys; from cli.app import main; "
        "rc = main(['--broker', 'sim', '--symbols', 'NSE:INFY', '--sim-speed', '60', '--duration', '1.5']); "
        "print('pyarrow loaded' if any(m.split('.')[0] == 'pyarrow' for m in sys.modules) else 'pyarrow not loaded', rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=main_env(PYTHONPATH=str(ROOT)), capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert out.stdout.strip() == "pyarrow not loaded 0", out.stdout + out.stderr
    env = main_env(PYTHONPATH=str(ROOT), TICK_ARCHIVE_DIR=str(tmp_path / "a"))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "pyarrow loaded 0", out.stdout + out.stderr  # the check can see it


@pytest.mark.parametrize("price", ["NaN", "1" * 20])
def test_a_price_the_archive_cannot_keep_exactly_is_counted_not_guessed(tmp_path, price):
    start = datetime(2026, 11, 24, 10, 0, tzinfo=IST)
    clock = Clock(start.timestamp())
    good = [_tick("NSE", "INFY", "1500.05", start, start)]
    bad = [_tick("NSE", "INFY", price, start, start)]
    archiver = _archive_all(tmp_path, [good, bad, good], clock)
    report = archiver.report()
    assert (report.ticks_archived, report.ticks_dropped) == (2, 1)
    assert "cannot be archived exactly" in report.problem() or "more digits" in report.problem()


def test_replay_reads_every_tick_as_archived_in_order_with_chunks_and_symbols(tmp_path, monkeypatch):
    monkeypatch.setattr(ta, "ROW_GROUP", 4)  # several row groups, each with its own dictionaries
    start = datetime(2026, 11, 24, 10, 0, tzinfo=IST)
    prices = ["1220.50", "6120", "83.2525000", "1E+3", "-0.05", "1220.50", "0", "1220.5", "24310.15", "1220.50"]
    batch = [
        _tick(
            "NSE", ["M&M", "INFY", "NIFTY 50"][i % 3], price, start + timedelta(seconds=i // 2), start + timedelta(seconds=i),
            volume=None if i % 4 == 1 else 1000 + i, oi=None if i < 6 else i,
        )
        for i, price in enumerate(prices)
    ]  # fmt: skip
    _archive_all(tmp_path, [batch[:5], batch[5:]], Clock(start.timestamp()))
    (path,) = ta.parts(tmp_path, start.date())["NSE"]
    assert pq.ParquetFile(path).num_row_groups > 1
    archived = ta.read_ticks(path)
    assert archived == batch

    def seen(t: TickData) -> tuple:
        return (t.exchange, t.symbol, str(t.last_price), t.volume, t.oi, t.exchange_ts)

    for symbols in (None, {"M&M", "NIFTY 50"}):
        for chunk in (1, 3, 8192):
            chunks = list(ta.replay_chunks(path, "NSE", symbols, chunk))
            read = [seen(t) for c in chunks for t in c.ticks]  # noqa: B023 (each chunk read before the next)
            assert read == [], "a chunk's ticks are read before the next chunk is asked for"
            got, clocks = [], []
            for c in ta.replay_chunks(path, "NSE", symbols, chunk):
                ticks = list(c.ticks)
                assert len(ticks) == c.size and all(type(t) is ta.ReplayTick for t in ticks)
                got += [seen(t) for t in ticks]
                clocks.append(c.clock)
            wanted = [t for t in archived if symbols is None or t.symbol in symbols]
            assert got == [seen(t) for t in wanted]
            assert clocks[-1] == wanted[-1].receive_ts.timestamp()
            assert all(t.exchange_ts.utcoffset() == timedelta(hours=5, minutes=30) for t in archived)

    # a chunk left unread is skipped: the next chunk starts where it would have
    assert pq.ParquetFile(path).metadata.row_group(0).num_rows == 4
    chunks = ta.replay_chunks(path, "NSE", None, 2)
    next(chunks)
    assert [seen(t) for t in next(chunks).ticks] == [seen(t) for t in archived[2:4]]


@pytest.mark.parametrize("enabled", [True, False])
def test_replay_leaves_the_garbage_collector_as_it_found_it(tmp_path, enabled):
    from candles.model import parse_intervals
    from cli.replay import replay_day

    start = datetime(2026, 11, 24, 10, 0, tzinfo=IST)
    _archive_all(tmp_path, [[_tick("NSE", "INFY", "1500.05", start, start)]], Clock(start.timestamp()))
    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        candles, ticks, files = replay_day(tmp_path, start.date(), parse_intervals("1m"))
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()
    assert (len(candles), ticks, files) == (1, 1, 1)
