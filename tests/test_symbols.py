import re

import pytest

from candles.model import parse_intervals
from config.symbols import SymbolError, load_symbols_file, parse_symbol, parse_symbols


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("NSE:INFY", ("NSE", "INFY")),
        ("infy", ("NSE", "INFY")),
        (" bse:tcs ", ("BSE", "TCS")),
        ("NSE:M&M", ("NSE", "M&M")),
        ("NSE:BAJAJ-AUTO", ("NSE", "BAJAJ-AUTO")),
        ("NSE:NIFTY 50", ("NSE", "NIFTY 50")),
    ],
)
def test_symbols_parse_with_nse_as_the_default_exchange(text, expected):
    assert parse_symbol(text) == expected


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("XYZ:INFY", "unknown exchange 'XYZ'"),
        ("NSE:", "empty symbol"),
        (":INFY", "empty exchange"),
        ("NSE:IN:FY", "more than one"),
        ("NSE:IN$FY", "characters"),
    ],
)
def test_malformed_symbols_are_rejected_with_the_reason(text, complaint):
    with pytest.raises(SymbolError, match=complaint):
        parse_symbol(text)


def test_duplicates_are_dropped_keeping_order():
    assert parse_symbols(["TCS", "NSE:INFY", "nse:tcs"]) == [("NSE", "TCS"), ("NSE", "INFY")]


def test_symbols_file_skips_comments_blanks_and_duplicates(tmp_path):
    f = tmp_path / "symbols.txt"
    f.write_text("# my list\nNSE:INFY\n\n  TCS   # cash\nNSE:INFY\nBSE:RELIANCE\n")
    assert load_symbols_file(f) == [("NSE", "INFY"), ("NSE", "TCS"), ("BSE", "RELIANCE")]


def test_malformed_line_in_symbols_file_is_reported_with_its_line_number(tmp_path):
    f = tmp_path / "symbols.txt"
    f.write_text("NSE:INFY\n# fine\nFOO:BAR\n")
    with pytest.raises(SymbolError, match=r"symbols\.txt:3: .*unknown exchange 'FOO'"):
        load_symbols_file(f)


def test_missing_symbols_file_is_a_clear_error(tmp_path):
    with pytest.raises(SymbolError, match=r"symbols file .*nope.txt. does not exist: check --symbols-file"):
        load_symbols_file(tmp_path / "nope.txt")


def test_symbols_file_starting_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "watch.txt"
    path.write_bytes("\ufeffNSE:INFY\nTCS\n".encode())
    assert load_symbols_file(path) == [("NSE", "INFY"), ("NSE", "TCS")]


def test_symbols_file_that_is_not_text_names_the_file_and_the_line(tmp_path):
    path = tmp_path / "watch.txt"
    path.write_bytes(b"NSE:INFY\n\x89PNG\r\n\x1a\n")
    with pytest.raises(SymbolError, match=re.escape(f"{path}:2: not UTF-8 text (byte 9)")):
        load_symbols_file(path)


@pytest.mark.parametrize("text", ["1M", "5M", "1m,1M"])
def test_a_capital_m_interval_is_refused_as_minute_or_month(text):
    with pytest.raises(ValueError, match=r"ambiguous interval '\dM': write \dm for minutes \(months are not an interval"):
        parse_intervals(text)
    assert [i.name for i in parse_intervals("1m,1H,1D")] == ["1m", "1h", "1d"]  # only M is ambiguous


def test_an_empty_intervals_option_is_an_error_not_the_default(tmp_path, monkeypatch):
    import argparse

    from cli.daemon import run_daemon
    from config.settings import Settings

    args = argparse.Namespace(intervals="", duration=None, shard=None)
    with pytest.raises(ValueError, match="no interval given"):
        run_daemon(Settings(), args)


def test_shard_with_zero_parts_says_the_number_of_parts_must_be_at_least_one():
    from cli.errors import UsageError
    from cli.watchlist import parse_shard

    with pytest.raises(UsageError, match="the number of parts must be at least 1"):
        parse_shard("1/0")
    with pytest.raises(UsageError, match="the part must be between 1 and 3"):
        parse_shard("4/3")


def test_watchlist_table_rows_are_checked_like_symbols_and_bad_rows_skipped_with_a_warning(tmp_path, caplog):
    import argparse

    from cli.watchlist import watchlist
    from storage.base import WatchlistEntry
    from storage.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "candles.db")
    store.migrate()
    store.set_watchlist([WatchlistEntry("nse", "tcs", True, 9), WatchlistEntry("XYZ", "FOO", True, 8),
                         WatchlistEntry("NSE", "BAD;SYM", True, 7), WatchlistEntry(" bse ", "Infy ", True, 6)])  # fmt: skip
    args = argparse.Namespace(symbols=[], symbols_file=None, symbols_from_db=True)
    try:
        assert watchlist(args, store) == [("NSE", "TCS"), ("BSE", "INFY")]
    finally:
        store.close()
    assert "('XYZ', 'FOO') skipped" in caplog.text and "unknown exchange" in caplog.text
    assert "('NSE', 'BAD;SYM') skipped" in caplog.text
