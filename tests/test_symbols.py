import pytest

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
    with pytest.raises(SymbolError, match="cannot read symbols file"):
        load_symbols_file(tmp_path / "nope.txt")
