"""The daemon as a process: simulator → aggregator → store, checked against the reference."""

import signal
import time
from datetime import datetime

import pytest

from brokers.sim.client import read_tape
from candles.model import Interval, parse_intervals
from core.ist import IST
from storage.postgres import PostgresStore
from storage.sqlite import SQLiteStore
from testkit.cli import main_env, run_main, session_calendar, start_main
from testkit.reference import candle_to_dict, reference_candles, watched_again

pytestmark = pytest.mark.slow  # every test runs main.py

SIM_START = "2026-11-24T09:15:00+05:30"
SYMBOLS = ["NSE:INFY", "NSE:TCS", "NSE:NIFTY 50"]


def _stored(store, intervals, symbols=SYMBOLS):
    rows = {}
    for sym in symbols:
        exchange, name = sym.split(":")
        for iv in intervals:
            for candle in store.latest(exchange, name, iv.name, limit=10_000):
                key, value = candle_to_dict(candle)
                rows[key] = (value, candle.final)
    return rows


def _assert_matches_reference(tape, stored, intervals, grace=2.0, unwatched=None):
    ticks = read_tape(tape)
    assert len(ticks) > 500, "the simulator produced too few ticks for a meaningful check"
    expected = reference_candles(ticks, intervals, unwatched=unwatched)
    for value in expected.values():
        value.pop("source", None)  # the values only: where a restart's span ends is the daemon's clock
    assert {k: v for k, (v, _) in stored.items()} == expected
    last_clock = max(t.receive_ts.timestamp() for t in ticks)
    for (_, _, iv_name, bucket), (_, final) in stored.items():
        end = bucket + Interval.parse(iv_name).seconds
        if end + grace + 1 < last_clock:  # long closed before shutdown
            assert final, f"{iv_name} candle at {datetime.fromtimestamp(bucket, IST)} should be final"


def test_sim_run_into_postgres_equals_reference_from_its_own_ticks(tmp_path, pg_dsn):
    tape = tmp_path / "tape.jsonl"
    intervals = parse_intervals("1m,5m,15m")
    proc = run_main(
        "--broker", "sim", "--symbols", *SYMBOLS, "--intervals", "1m,5m,15m",
        "--seed", "11", "--sim-speed", "60", "--sim-start", SIM_START, "--sim-tick-rate", "2",
        "--duration", "12", "--sim-tape", str(tape),
        cwd=tmp_path, env=main_env(PG_CONN_STR=pg_dsn),
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    store = PostgresStore(pg_dsn)
    try:
        stored = _stored(store, intervals)
    finally:
        store.close()
    # 12 wall seconds at 60x is about 12 simulated minutes
    one_minute = [k for k in stored if k[2] == "1m" and k[1] == "INFY"]
    assert 9 <= len(one_minute) <= 14
    _assert_matches_reference(tape, stored, intervals)


def test_sigterm_flushes_open_candles_as_non_final_and_exits_zero_with_status_lines(tmp_path):
    tape = tmp_path / "tape.jsonl"
    proc = start_main(
        "--broker", "sim", "--symbols", *SYMBOLS, "--intervals", "1m,1h",
        "--seed", "5", "--sim-speed", "60", "--sim-start", SIM_START, "--sim-tape", str(tape),
        cwd=tmp_path, env=main_env(STATUS_INTERVAL_SECONDS="1"),
    )
    time.sleep(6)
    proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert time.monotonic() - started < 10
    assert "flushed" in err
    status = [line for line in err.splitlines() if "status:" in line]
    assert len(status) >= 3, err  # a status line every STATUS_INTERVAL_SECONDS
    assert "ticks/s" in status[-1] and "queue depth" in status[-1] and "store lag" in status[-1]
    store = SQLiteStore(tmp_path / "data" / "marketfeed.db")
    try:
        intervals = parse_intervals("1m,1h")
        stored = _stored(store, intervals)
    finally:
        store.close()
    hourly = [final for (_, _, iv, _), (_, final) in stored.items() if iv == "1h"]
    assert hourly and not any(hourly), "the open 1h candles must be stored non-final"
    _assert_matches_reference(tape, stored, intervals)


def test_readme_demo_shows_one_minute_candles_in_the_read_only_view(tmp_path):
    proc = run_main(
        "--broker", "sim", "--symbols", "NSE:INFY", "NSE:TCS", "--sim-speed", "30", "--duration", "5",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    view = run_main("--show-candles", "NSE:INFY", "--limit", "5", cwd=tmp_path)
    assert view.returncode == 0, view.stderr
    lines = view.stdout.splitlines()
    assert lines[0].startswith("NSE:INFY 1m")
    rows = [line for line in lines[3:] if line.strip()]
    assert 1 <= len(rows) <= 5
    assert any(row.split()[-2] == "final" for row in rows)
    assert all(row.split()[-1] in ("live", "partial") for row in rows)  # where each candle came from


def test_test_database_passes_on_postgres_and_leaves_no_probe_behind(tmp_path, pg_dsn):
    proc = run_main("--test-database", cwd=tmp_path, env=main_env(PG_CONN_STR=pg_dsn))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "result" in proc.stdout and "OK" in proc.stdout
    store = PostgresStore(pg_dsn)
    try:
        assert store.latest("NSE", "MARKETFEED-SELFTEST", "1m") == []
        assert store.schema_version() >= 1
    finally:
        store.close()


def test_symbols_from_db_streams_the_enabled_watchlist(tmp_path, pg_dsn):
    from storage.base import WatchlistEntry

    store = PostgresStore(pg_dsn)
    store.migrate()
    store.set_watchlist([WatchlistEntry("NSE", "INFY", True, 5), WatchlistEntry("NSE", "TCS", False, 9)])
    store.close()
    proc = run_main(
        "--broker", "sim", "--symbols-from-db", "--sim-speed", "60", "--duration", "4",
        cwd=tmp_path, env=main_env(PG_CONN_STR=pg_dsn),
    )
    assert proc.returncode == 0, proc.stderr
    store = PostgresStore(pg_dsn)
    try:
        assert store.latest("NSE", "INFY", "1m")
        assert store.latest("NSE", "TCS", "1m") == []
    finally:
        store.close()


def _open(kind, tmp_path, request):
    if kind == "postgres":
        dsn = request.getfixturevalue("pg_dsn")
        return PostgresStore(dsn), main_env(PG_CONN_STR=dsn)
    return SQLiteStore(tmp_path / "data" / "marketfeed.db"), main_env()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_restart_inside_a_bucket_loses_nothing_and_counts_no_volume_twice(tmp_path, request, kind):
    intervals = parse_intervals("1m,15m")
    first, second = tmp_path / "tape1.jsonl", tmp_path / "tape2.jsonl"
    store, env = _open(kind, tmp_path, request)
    # the simulated day is an exchange holiday: the calendar would count no unwatched time in it; a
    # special session opens it, as it would a Muhurat session
    env = {**env, "MARKET_CALENDAR_FILE": session_calendar(tmp_path, SIM_START[:10])}
    common = ["--broker", "sim", "--symbols", *SYMBOLS, "--intervals", "1m,15m", "--seed", "21", "--sim-speed", "60"]
    proc = run_main(*common, "--sim-start", SIM_START, "--duration", "6", "--sim-tape", str(first), cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    # the second run starts where the first one's clock stopped: the same deterministic stream goes on
    stopped = max(t.receive_ts.timestamp() for t in read_tape(first)) + 0.001
    assert (stopped - 1_795_491_900) % 900 > 60, "the restart should fall inside a 15m bucket"
    restart_at = datetime.fromtimestamp(stopped, IST).isoformat()
    proc = run_main(*common, "--sim-start", restart_at, "--duration", "6", "--sim-tape", str(second), cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "resumed" in proc.stderr
    with (tmp_path / "both.jsonl").open("w") as out:
        out.write(first.read_text() + second.read_text())
    before = read_tape(first)
    seen = max(t.exchange_ts.timestamp() for t in before)
    try:
        stored = _stored(store, intervals)
        # the second run's feed came up a moment (many simulated seconds) after it started
        resumed = watched_again(store, stopped, [tuple(s.split(":")) for s in SYMBOLS])
    finally:
        store.close()
    # rule 8: the daemon did not watch from the newest tick it had seen until its feed was up again,
    # so a bucket that began in between counts its volume from its own first tick
    _assert_matches_reference(tmp_path / "both.jsonl", stored, intervals, unwatched=[(len(before), seen, resumed)])


def test_database_down_mid_run_keeps_the_daemon_running_and_loses_nothing(tmp_path):
    from testkit.pg import PostgresServer

    tape = tmp_path / "tape.jsonl"
    intervals = parse_intervals("1m")
    with PostgresServer() as server:
        server.start()
        dsn = server.create_database("outage")
        proc = start_main(
            "--broker", "sim", "--symbols", *SYMBOLS, "--seed", "3", "--sim-speed", "60",
            "--sim-start", SIM_START, "--duration", "16", "--sim-tape", str(tape),
            cwd=tmp_path, env=main_env(PG_CONN_STR=dsn + " connect_timeout=2"),
        )
        time.sleep(4)
        server.stop()  # about five simulated minutes of candles close while it is down
        time.sleep(5)
        assert proc.poll() is None, "the daemon must keep running while the database is down"
        server.start()
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "store unavailable" in err
        store = PostgresStore(dsn)
        try:
            stored = _stored(store, intervals)
        finally:
            store.close()
    _assert_matches_reference(tape, stored, intervals)
