"""Bad input: one clear line on stderr, a non-zero exit, never a traceback."""

import pytest

from testkit.cli import main_env, run_main
from testkit.waiting import free_port

pytestmark = pytest.mark.slow  # every test runs main.py


def _closed_port() -> int:
    return free_port()  # nothing listens there, and no other test takes it meanwhile (testkit/waiting.py)


def _assert_one_line_error(proc, *needles: str) -> None:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_unknown_interval_is_rejected(tmp_path):
    proc = run_main("--broker", "sim", "--symbols", "INFY", "--intervals", "1m,7x", cwd=tmp_path)
    _assert_one_line_error(proc, "unknown interval '7x'")
    assert proc.returncode == 2


def test_interval_setting_error_names_the_variable(tmp_path):
    proc = run_main("--symbols", "INFY", cwd=tmp_path, env=main_env(CANDLE_INTERVALS="2x"))
    assert proc.returncode == 2
    assert "CANDLE_INTERVALS is invalid" in proc.stderr and "Traceback" not in proc.stderr


def test_empty_watchlist_table_is_a_clear_error(tmp_path):
    proc = run_main("--broker", "sim", "--symbols-from-db", cwd=tmp_path)
    _assert_one_line_error(proc, "watchlist table", "no enabled rows")


def test_no_symbols_at_all_is_a_clear_error(tmp_path):
    proc = run_main("--broker", "sim", cwd=tmp_path)
    _assert_one_line_error(proc, "no symbols to stream")


def test_malformed_symbols_file_line_is_reported_with_its_number(tmp_path):
    (tmp_path / "watch.txt").write_text("NSE:INFY\n\n# comment\nNSE:TCS:EXTRA\n")
    proc = run_main("--broker", "sim", "--symbols-file", "watch.txt", cwd=tmp_path)
    _assert_one_line_error(proc, "watch.txt:4:", "more than one ':'")


def test_unreachable_database_stops_start_up_without_leaking_the_password(tmp_path):
    dsn = f"postgresql://feeder:hunter2-secret@127.0.0.1:{_closed_port()}/candles?connect_timeout=2"
    proc = run_main("--broker", "sim", "--symbols", "INFY", cwd=tmp_path, env=main_env(PG_CONN_STR=dsn))
    _assert_one_line_error(proc, "PostgreSQL")
    assert proc.returncode == 1
    assert "hunter2-secret" not in proc.stderr + proc.stdout


def test_test_database_reports_failure_for_unreachable_database(tmp_path):
    dsn = f"host=127.0.0.1 port={_closed_port()} user=feeder password=hunter2-secret dbname=x connect_timeout=2"
    proc = run_main("--test-database", cwd=tmp_path, env=main_env(PG_CONN_STR=dsn))
    assert proc.returncode == 1
    assert "FAILED" in proc.stdout
    assert "Traceback" not in proc.stderr
    assert "hunter2-secret" not in proc.stderr + proc.stdout


def test_kotak_without_credentials_names_the_variables(tmp_path):
    proc = run_main("--broker", "kotak", "--symbols", "INFY", cwd=tmp_path)
    assert proc.returncode == 2
    assert "KOTAK_MPIN is missing" in proc.stderr and "KOTAK_TOTP_SECRET is missing" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_show_candles_on_a_missing_sqlite_file_does_not_create_it(tmp_path):
    proc = run_main("--show-candles", "NSE:INFY", cwd=tmp_path)
    _assert_one_line_error(proc)
    assert not (tmp_path / "data" / "marketfeed.db").exists()


@pytest.mark.parametrize("text", ["09:15", "2024-13-01"])
def test_backfill_takes_whole_days_for_from_and_to(tmp_path, text):
    """--from/--to are read as text (--chart takes times too); --backfill wants a day."""
    proc = run_main("--backfill", "--symbols", "INFY", "--from", text, cwd=tmp_path)
    _assert_one_line_error(proc, f"--from '{text}' is not a date: write it as YYYY-MM-DD")
    assert proc.returncode == 2
