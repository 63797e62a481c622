"""Kite's instruments dump through kiteconnect against the fake server: the derivative contracts it
yields, its cache, and a refresh that never loses a good dump to a bad download."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from kiteconnect import KiteConnect

from brokers.base import BrokerError
from brokers.kite.instruments import KiteInstruments
from core.contracts import Contract
from testkit.fakes.kite_server import KiteFakeServer, derivatives_dump

DAY = 1_795_491_900.0  # 2026-11-24 09:15 IST, a Tuesday
TODAY = date(2026, 11, 24)
YESTERDAY = DAY - 86_400


@pytest.fixture
def server() -> Iterator[KiteFakeServer]:
    with KiteFakeServer(instruments=derivatives_dump(TODAY, strikes_each_side=4)) as srv:
        yield srv


def _kite(server: KiteFakeServer) -> KiteConnect:
    return KiteConnect(server.api_key, access_token=server.access_token, root=server.api_url)


def _downloads(server: KiteFakeServer) -> int:
    return len([r for r in server.rest_requests if r[1] == "/instruments"])


def _cache_yesterday(server: KiteFakeServer, cache: Path) -> Path:
    KiteInstruments(_kite(server), cache, clock=lambda: YESTERDAY).load()
    (path,) = cache.glob("kite-instruments-*.csv")
    assert path.name == "kite-instruments-2026-11-23.csv"
    return path


def test_futures_and_options_become_contracts_with_exact_strikes_and_expiry_dates(server, tmp_path):
    contracts = KiteInstruments(_kite(server), tmp_path, clock=lambda: DAY).contracts()
    by_symbol = {c.symbol: c for c in contracts}
    assert by_symbol["NIFTY26NOV25000CE"] == Contract(
        "NFO", "NIFTY26NOV25000CE", "NIFTY", "CE", date(2026, 11, 24), Decimal(25000), 65, Decimal("0.05"),
        by_symbol["NIFTY26NOV25000CE"].token,
    )  # fmt: skip
    assert str(by_symbol["NIFTY26NOV25000CE"].strike) == "25000" and str(by_symbol["NIFTY26NOV25000CE"].tick_size) == "0.05"
    fut = by_symbol["SENSEX26NOVFUT"]
    assert (fut.exchange, fut.kind, fut.expiry, fut.strike, fut.lot_size) == ("BFO", "FUT", date(2026, 11, 26), None, 20)
    crude = by_symbol["CRUDEOIL26DECFUT"]
    assert (crude.underlying, crude.tick_size, crude.lot_size) == ("CRUDEOIL", Decimal(1), 100)
    underlyings = {(c.exchange, c.symbol): (c.underlying, c.kind) for c in contracts if c.expiry is None}
    assert underlyings == {
        ("NSE", "NIFTY 50"): ("NIFTY", "IDX"),
        ("NSE", "NIFTY BANK"): ("BANKNIFTY", "IDX"),
        ("BSE", "SENSEX"): ("SENSEX", "IDX"),
        ("NSE", "RELIANCE"): ("RELIANCE", "EQ"),
    }  # INFY and TCS have no derivatives in this dump; USDINR is not on NFO/BFO
    weekly = [c for c in contracts if c.underlying == "NIFTY" and c.kind == "PE" and c.expiry == date(2026, 12, 1)]
    assert sorted(c.strike for c in weekly) == [Decimal(24800 + 50 * k) for k in range(9)]
    assert all(type(c.strike) is Decimal and type(c.expiry) is date for c in contracts if c.is_option)


def test_contracts_and_symbols_read_back_from_the_cache_equal_the_downloaded_ones(server, tmp_path):
    fresh = KiteInstruments(_kite(server), tmp_path, clock=lambda: DAY)
    before = _downloads(server)
    cached = KiteInstruments(_kite(server), tmp_path, clock=lambda: DAY)
    assert cached.contracts() == fresh.contracts() and cached.load() == fresh.load()
    assert _downloads(server) == before + 1  # the first one downloaded, the second read the file
    assert cached.load()[("NSE", "NIFTY 50")].tick_size == Decimal("0.05")  # an index's 0 tick: values move on 0.05


def test_a_cache_file_in_the_old_format_is_downloaded_again_and_replaced(server, tmp_path):
    path = tmp_path / "kite-instruments-2026-11-24.csv"
    path.write_text("instrument_token,exchange,tradingsymbol,tick_size\n408065,NSE,INFY,0.05\n")
    table = KiteInstruments(_kite(server), tmp_path, clock=lambda: DAY)
    assert len(table.load()) == len(server.instruments) and table.contracts()
    assert path.read_text().startswith("instrument_token,exchange,tradingsymbol,name,")


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("garbage", "the Kite instruments dump was garbled or cut short (KeyError"),
        ("truncated", "the Kite instruments dump was garbled or cut short (TypeError"),
        ("no_name_column", "lacks the column(s) name, segment"),
        ("too_few_rows", "fewer than 50% of the"),
        ("unreachable", "could not download the Kite instruments dump: ConnectionError"),
    ],
)
def test_a_bad_download_falls_back_to_yesterdays_dump_and_keeps_it(server, tmp_path, caplog, fault, reason):
    old = _cache_yesterday(server, tmp_path)
    kept = old.read_bytes()
    kite = _kite(server)
    full = server.instruments_csv()
    if fault == "garbage":
        server.instruments_reply = (200, b"<html><body>502 Bad Gateway</body></html>\n\x00\x01garbage,,,\n")
    elif fault == "truncated":  # cut mid-row, as a dropped connection leaves it
        server.instruments_reply = (200, full[: len(full) // 2].encode())
    elif fault == "no_name_column":
        lines = [",".join(f for i, f in enumerate(line.split(",")) if i not in (3, 10)) for line in full.splitlines()]
        server.instruments_reply = (200, "\n".join(lines).encode())
    elif fault == "too_few_rows":
        server.instruments = server.instruments[: len(server.instruments) // 3]
    else:
        kite = KiteConnect("k", access_token="t", root="http://127.0.0.1:9")
    table = KiteInstruments(kite, tmp_path, clock=lambda: DAY)
    with caplog.at_level(logging.WARNING, logger="brokers.kite.instruments"):
        contracts = table.contracts()
    assert table.fallback == old and len(table.load()) == len(derivatives_dump(TODAY, strikes_each_side=4))
    assert {c.underlying for c in contracts} >= {"NIFTY", "BANKNIFTY", "SENSEX", "RELIANCE", "CRUDEOIL"}
    assert old.read_bytes() == kept and [p.name for p in tmp_path.iterdir()] == [old.name]  # kept, nothing half-written
    (warning,) = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "using the cached dump" in r.getMessage()
    ]
    assert reason in warning and str(old) in warning


def test_a_dump_without_a_required_underlying_is_refused_and_the_cached_one_used(server, tmp_path, caplog):
    old = _cache_yesterday(server, tmp_path)
    server.instruments = tuple(i for i in server.instruments if i.name != "SENSEX")  # still 70% of the rows
    table = KiteInstruments(_kite(server), tmp_path, clock=lambda: DAY, required=["nifty", "SENSEX"])
    with caplog.at_level(logging.WARNING, logger="brokers.kite.instruments"):
        assert any(c.underlying == "SENSEX" for c in table.contracts())
    assert table.fallback == old
    assert "has no futures or options of SENSEX" in caplog.text


def test_a_failed_refresh_keeps_todays_dump_byte_for_byte(server, tmp_path):
    table = KiteInstruments(_kite(server), tmp_path, clock=lambda: DAY)
    table.load()
    path = table.cache_path()
    kept = path.read_bytes()
    server.instruments_reply = (200, b"instrument_token,exchange\n1,NSE\n")
    table.refresh()
    assert table.fallback == path and path.read_bytes() == kept and len(table.load()) == len(server.instruments)
    server.instruments_reply = None
    table.refresh()  # a good download replaces it
    assert table.fallback is None and [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize("body", [b"garbage\n\x00,\n", b""])
def test_a_bad_first_download_with_nothing_cached_is_a_clear_error(server, tmp_path, body):
    server.instruments_reply = (200, body)
    with pytest.raises(
        BrokerError, match=r"Kite instruments dump .*; no earlier dump is cached in .* to fall back on: check the connection"
    ):
        KiteInstruments(_kite(server), tmp_path, clock=lambda: DAY).load()
    assert list(tmp_path.iterdir()) == []


def test_an_unreadable_cache_file_is_not_a_fallback_and_the_error_says_so(server, tmp_path):
    (tmp_path / "kite-instruments-2026-11-23.csv").write_text("instrument_token,exchange,tradingsymbol,tick_size\n1,NSE,X,0.05\n")
    kite = KiteConnect("k", access_token="t", root="http://127.0.0.1:9")
    with pytest.raises(BrokerError, match="no earlier dump is cached"):
        KiteInstruments(kite, tmp_path, clock=lambda: DAY).load()


def test_a_slow_download_logs_the_seconds_it_has_taken_until_it_ends(server, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="marketfeed")
    server.instruments_delay = 1.6  # one blocking pykiteconnect call: no count of rows or bytes to show
    KiteInstruments(_kite(server), tmp_path, clock=lambda: DAY).load()
    lines = [r.getMessage() for r in caplog.records if r.name == "marketfeed"]
    assert "downloading the Kite instruments dump: 1 s so far" in lines, lines
    assert lines[-1].startswith("downloading the Kite instruments dump: done in "), lines
