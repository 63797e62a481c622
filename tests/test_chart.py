"""``--chart``: a PNG of the size asked for with one candle body per stored candle, gaps and
backfilled candles counted as marked, clear errors (exit 2); matplotlib never enters the daemon."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from PIL import Image

from candles.model import Candle
from core.ist import IST
from storage.base import CandleStore, WatchRecord
from storage.postgres import PostgresStore
from storage.sqlite import SQLiteStore
from testkit.cli import MAIN, ROOT, main_env, run_main

pytestmark = pytest.mark.slow  # each case runs main.py as a process

MONDAY = date(2024, 1, 15)
OPEN = datetime(2024, 1, 15, 9, 15, tzinfo=IST)
FIVE = timedelta(minutes=5)
INFY = (("NSE", "INFY"),)
UNWATCHED = range(20, 24)  # 10:55 to 11:15: nobody watched 10:55 to 11:13, and no candle was stored
EMPTY = 40  # 12:35: watched, but no trade (candle rule 5)
BACKFILLED = range(50, 54)  # 13:25 to 13:45 from the broker's history
PARTIAL = 24  # 11:15: the first bucket after the unwatched span
STORED = [i for i in range(75) if i not in UNWATCHED and i != EMPTY]  # 09:15 to 15:25: 75 buckets, 70 candles


def candle(i: int, symbol: str = "INFY", exchange: str = "NSE", day: date = MONDAY) -> Candle:
    bucket = datetime.combine(day, OPEN.timetz()) + i * FIVE
    p = Decimal("1500.05") + i
    source = "backfill" if i in BACKFILLED else "partial" if i == PARTIAL else "live"
    return Candle(
        exchange=exchange, symbol=symbol, interval="5m", bucket=bucket, open=p, high=p + 3, low=p - 2, close=p + 1,
        volume=1000 + i, oi=None, tick_count=10, first_tick=bucket, last_tick=bucket + timedelta(seconds=290),
        cum_volume=None, final=True, source=source,
    )  # fmt: skip


@dataclass
class Where:
    """A migrated store holding the day, and the environment that points main.py at it."""

    store: CandleStore
    env: dict[str, str]


def _fill(store: CandleStore) -> None:
    store.migrate()
    store.upsert([candle(i) for i in STORED])
    at = OPEN.timestamp()
    store.record_watched("a", [WatchRecord("open", at - 60, INFY), WatchRecord("close", at + 100 * 60, INFY)])
    store.record_watched("b", [WatchRecord("open", at + 118 * 60, INFY), WatchRecord("close", at + 7 * 3600, INFY)])


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[Where]:
    (tmp_path / "data").mkdir()
    path = tmp_path / "data" / "candles.db"
    w = Where(SQLiteStore(path), main_env(SQLITE_PATH=str(path), DATA_DIR=str(tmp_path / "data")))
    _fill(w.store)
    yield w
    w.store.close()


def chart(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return run_main("--chart", *args, cwd=tmp_path, env=env, timeout=180)


def drawn(stdout: str) -> int:
    found = re.search(r" (\d+) candles? drawn,", stdout)
    assert found, stdout
    return int(found.group(1))


def check_day(tmp_path: Path, where: Where) -> None:
    png = tmp_path / "infy.png"
    proc = chart(tmp_path, where.env, "NSE:INFY", "--interval", "5m", "--from", "2024-01-15", "--to", "2024-01-15",
                 "--out", str(png), "--width", "1000", "--height", "640")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"{png}: 1000x640 px, 70 candles drawn, 2 gaps marked (18 min unwatched in 1, 1 without a candle), "
        "5 backfilled marked (4 backfill, 1 partial)"
    ], "the unwatched 10:55-11:13 is one shaded span, 12:35 one empty bucket; 4 backfill and 1 partial candle"
    with Image.open(png) as image:
        assert image.format == "PNG"
        assert image.size == (1000, 640)
    assert "WARNING" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr  # no font or data warnings


def test_chart_of_a_day_draws_every_stored_candle_and_marks_the_gaps_and_backfill_sqlite(tmp_path: Path, sqlite: Where):
    check_day(tmp_path, sqlite)
    # a part of the day, in times: 11:00 to 12:00 holds the buckets 11:15 to 11:55
    png = tmp_path / "hour.png"
    proc = chart(tmp_path, sqlite.env, "NSE:INFY", "--interval", "5m", "--from", "2024-01-15T11:00",
                 "--to", "2024-01-15T12:00", "--out", str(png))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert drawn(proc.stdout) == len([i for i in STORED if 21 <= i < 33]) == 9
    assert "1 gap marked (13 min unwatched in 1, 0 without a candle)" in proc.stdout
    with Image.open(png) as image:
        assert image.size == (1600, 900)  # the default size
    # without --from/--to: the day of the newest candle
    proc = chart(tmp_path, sqlite.env, "NSE:INFY", "--interval", "5m", "--out", str(png), "--width", "800", "--height", "500")
    assert proc.returncode == 0, proc.stderr
    assert drawn(proc.stdout) == 70
    with Image.open(png) as image:
        assert image.size == (800, 500)


def test_chart_reads_postgresql_too(tmp_path: Path, pg_dsn: str):
    store = PostgresStore(pg_dsn)
    try:
        _fill(store)
        (tmp_path / "data").mkdir()
        check_day(tmp_path, Where(store, main_env(PG_CONN_STR=pg_dsn, DATA_DIR=str(tmp_path / "data"))))
    finally:
        store.close()


def test_chart_of_a_continuous_series_stitches_each_days_contract(tmp_path: Path, sqlite: Where):
    tue, wed = MONDAY + timedelta(days=1), MONDAY + timedelta(days=2)
    dec, jan = "NIFTY24JANFUT", "NIFTY24FEBFUT"
    both = [candle(i, sym, "NFO", day) for sym in (dec, jan) for day in (tue, wed) for i in range(6)]
    sqlite.store.upsert([c for c in both if c.source == "live"])
    sqlite.store.record_roll("NFO", "NIFTY-I", tue, dec)
    sqlite.store.record_roll("NFO", "NIFTY-I", wed, jan)
    png = tmp_path / "nifty.png"
    proc = chart(tmp_path, sqlite.env, "NFO:NIFTY-I", "--interval", "5m", "--from", tue.isoformat(), "--to", wed.isoformat(),
                 "--out", str(png))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert drawn(proc.stdout) == 12, "six candles of each day's contract, not both contracts' 24"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("NSE:TCS",), "unknown symbol NSE:TCS: sqlite:"),
        (("NSE:TCS",), "has candles of 1 symbol: NSE:INFY"),
        (("NSE:INFY", "--interval", "1m"), "no 1m candles of NSE:INFY in sqlite:"),
        (("NSE:INFY", "--interval", "1m"), "it has 5m: use --interval 5m"),
        (("NSE:INFY", "--interval", "7m"), "unknown interval '7m'"),
        (
            ("NSE:INFY", "--interval", "5m", "--from", "2024-01-20", "--to", "2024-01-22"),
            "no 5m candles of NSE:INFY in 2024-01-20 to 2024-01-22 (IST)",
        ),  # fmt: skip
        (
            ("NSE:INFY", "--interval", "5m", "--from", "2024-01-20", "--to", "2024-01-22"),
            "the last before it is at 2024-01-15 15:25; choose --from/--to around it",
        ),  # fmt: skip
        (
            ("NSE:INFY", "--interval", "5m", "--from", "2024-01-08", "--to", "2024-01-12"),
            "the first after it is at 2024-01-15 09:15",
        ),  # fmt: skip
        (("NSE:INFY", "--interval", "5m", "--from", "yesterday"), "--from 'yesterday' is not a time: write 2026-11-24T09:15"),
        (
            ("NSE:INFY", "--interval", "5m", "--from", "2024-01-16", "--to", "2024-01-15"),
            "--from 2024-01-16 is not before --to 2024-01-15 (IST): give the earlier time first",
        ),  # fmt: skip
        (("NSE:INFY", "--out", "missing/infy.png"), "the folder missing does not exist"),
        (("NSE:INFY", "--out", "infy.jpg"), "the chart is a PNG"),
        (("NSE:INFY", "--out", "."), "is a folder"),
        (("NSE:INFY", "--out", None), "--chart needs --out PATH.png"),
        (("NFO:NIFTY-I",), "no contracts recorded for the continuous series NFO:NIFTY-I"),
        (("NSE:INFY", "--width", "50"), "argument --width: '50' is not a whole number from 200 to 10000"),
    ],
)
def test_chart_errors_name_the_problem_and_exit_2(tmp_path: Path, sqlite: Where, args: tuple, message: str):
    out = ["--out", str(tmp_path / "x.png")] if "--out" not in args else []
    argv = [a for a in (*args, *out) if a is not None]
    if argv[-1] == "--out":
        argv.pop()
    proc = chart(tmp_path, sqlite.env, *argv)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr, proc.stderr
    assert proc.stdout == "" and not (tmp_path / "x.png").exists()


def test_chart_without_mplfinance_names_the_pip_command(tmp_path: Path, sqlite: Where):
    shadow = tmp_path / "shadow" / "mplfinance"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'mplfinance'\")\n", encoding="utf-8")
    env = {**sqlite.env, "PYTHONPATH": str(tmp_path / "shadow")}
    proc = chart(tmp_path, env, "NSE:INFY", "--interval", "5m", "--out", str(tmp_path / "x.png"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--chart draws with mplfinance, which cannot be imported" in proc.stderr
    assert "pip install -r requirements.txt (or pip install 'mplfinance>=0.12.10b0,<0.13')" in proc.stderr


def test_the_daemons_modules_never_import_matplotlib(tmp_path: Path):
    """``-X importtime`` lists every module a run imports: --help builds the whole parser (every
    venue's options) through cli.app; the wiring's own modules are imported as the daemon does."""
    help_run = subprocess.run([sys.executable, "-X", "importtime", MAIN, "--help"], cwd=tmp_path, env=main_env(),
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    assert help_run.returncode == 0, help_run.stderr
    assert "--chart SYM" in help_run.stdout
    code = "import sys, cli.app, cli.daemon, pipeline.service; print(sorted({m.split('.')[0] for m in sys.modules}))"
    wiring = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=ROOT, env=main_env(),
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert wiring.returncode == 0, wiring.stderr
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in (help_run.stderr + wiring.stderr).splitlines()}
    assert "cli" in imported and "pipeline" in imported, "importtime's listing was read"
    assert not imported & {"matplotlib", "mplfinance", "PIL"}, sorted(imported & {"matplotlib", "mplfinance", "PIL"})
