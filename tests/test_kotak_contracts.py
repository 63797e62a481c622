"""Derivatives universes on Kotak Neo: the scrip master's futures and options as ``Contract``s, read from the
fake's nse_fo/bse_fo/mcx_fo files over HTTP (the official SDK reads the same files to the same values), the
same universes resolved from them as from Kite's dump, and a refresh that never loses a good file to a bad one."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterator
from dataclasses import replace
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from kiteconnect import KiteConnect

from brokers.base import BrokerError
from brokers.kite.instruments import KiteInstruments
from brokers.kotak_neo.factory import open_broker
from brokers.kotak_neo.instruments import KotakScripMaster
from brokers.kotak_neo.settings import Settings
from brokers.registry import FeedContext
from config.universe import parse_entry
from core.contracts import Contract
from core.ist import IST
from core.universe import UniverseSpec, atm_reference, resolve_universe
from testkit.fakes.kite_server import KiteFakeServer, derivatives_dump
from testkit.fakes.kotak_server import (
    KotakFakeServer,
    derivatives_scrip_master,
    truncated_scrip_csv,
)

os.environ.setdefault("NEO_LOG_FILE_ENABLED", "false")  # importing the SDK would otherwise create ./logs/
from neo_api_client import NeoAPI  # noqa: E402
from neo_api_client.utils import neo_utility  # noqa: E402

DAY = 1_795_491_900.0  # 2026-11-24 09:15 IST, a Tuesday
TODAY = date(2026, 11, 24)
YESTERDAY = DAY - 86_400
STRIKES = 4
CONSUMER_KEY = "ck-contracts-0042"
SEGMENT_OF = {"NFO": "nse_fo", "BFO": "bse_fo", "MCX": "mcx_fo"}


@pytest.fixture
def kotak() -> Iterator[KotakFakeServer]:
    with KotakFakeServer(consumer_key=CONSUMER_KEY, clock=lambda: DAY, instruments=derivatives_scrip_master(TODAY, STRIKES)) as srv:
        yield srv


def master(server: KotakFakeServer, cache: Path, now: float = DAY, **kwargs: Any) -> KotakScripMaster:
    return KotakScripMaster(server.api_url, CONSUMER_KEY, cache, clock=lambda: now, timeout=5.0, **kwargs)


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[Contract], list[Contract], KotakScripMaster]]:
    """Kite's contracts (through kiteconnect) and Kotak's, from the two fakes' masters of the same day."""
    kite_dir, kotak_dir = tmp_path_factory.mktemp("kite"), tmp_path_factory.mktemp("kotak")
    with KiteFakeServer(instruments=derivatives_dump(TODAY, strikes_each_side=STRIKES)) as kite_server:
        kite = KiteConnect(kite_server.api_key, access_token=kite_server.access_token, root=kite_server.api_url)
        kite_contracts = KiteInstruments(kite, kite_dir, clock=lambda: DAY).contracts()
    with KotakFakeServer(consumer_key=CONSUMER_KEY, clock=lambda: DAY, instruments=derivatives_scrip_master(TODAY, STRIKES)) as srv:
        scrips = master(srv, kotak_dir)
        yield kite_contracts, scrips.contracts(), scrips


def kite_rows() -> dict[tuple[str, str], tuple[Any, ...]]:
    """What the Kite fake lists, read straight from its rows: the contracts both masters must describe."""
    return {
        (k.exchange, k.tradingsymbol): (
            k.name, k.instrument_type, date.fromisoformat(k.expiry), None if k.instrument_type == "FUT" else k.strike,
            k.lot_size, k.tick_size,
        )
        for k in derivatives_dump(TODAY, strikes_each_side=STRIKES)
        if k.exchange in SEGMENT_OF and k.instrument_type in ("FUT", "CE", "PE")
    }  # fmt: skip


def shape(c: Contract) -> tuple[Any, ...]:
    """A contract as the numbers' text: 25000 and 25000.00 would compare equal as Decimals, not as text."""
    return (c.underlying, c.kind, c.expiry, None if c.strike is None else str(c.strike), c.lot_size, str(c.tick_size))


# ---------------------------------------------------------------------------------------------- parsing


def test_futures_and_options_are_the_files_rows_with_exact_expiries_strikes_lots_and_ticks(both) -> None:
    _, contracts, _ = both
    derivatives = {(c.exchange, c.symbol): shape(c) for c in contracts if c.expiry is not None}
    assert derivatives == kite_rows()  # every future and option of NFO, BFO and MCX, expired ones included
    by_symbol = {c.symbol: c for c in contracts}
    ce = by_symbol["NIFTY26NOV25000CE"]
    assert ce == Contract("NFO", "NIFTY26NOV25000CE", "NIFTY", "CE", TODAY, Decimal(25000), 65, Decimal("0.05"), ce.token)
    assert (str(ce.strike), str(ce.tick_size)) == ("25000", "0.05")
    fut = by_symbol["SENSEX26NOVFUT"]
    assert (fut.exchange, fut.kind, fut.expiry, fut.strike, fut.lot_size) == ("BFO", "FUT", date(2026, 11, 26), None, 20)
    crude = by_symbol["CRUDEOIL26DECFUT"]
    assert (crude.exchange, crude.expiry, crude.tick_size, crude.lot_size) == ("MCX", date(2026, 12, 18), Decimal(1), 100)
    assert by_symbol["CRUDEOIL24JANFUT"].expiry == date(2024, 1, 19)
    assert all(type(c.strike) is Decimal and type(c.expiry) is date and type(c.token) is int for c in contracts if c.is_option)


def test_tokens_are_the_files_psymbol_and_the_underlyings_rows_are_named_as_a_watchlist_names_them(both) -> None:
    _, contracts, _ = both
    fake = {(i.segment, i.trading_symbol): i.token for i in derivatives_scrip_master(TODAY, STRIKES)}
    assert all(c.token == fake[(SEGMENT_OF[c.exchange], c.symbol)] for c in contracts if c.expiry is not None)
    underlyings = {
        (c.exchange, c.symbol): (c.underlying, c.kind, c.token, c.lot_size, c.tick_size) for c in contracts if c.expiry is None
    }
    assert underlyings == {
        ("NSE", "NIFTY 50"): ("NIFTY", "IDX", 0, 0, Decimal("0.05")),
        ("NSE", "NIFTY BANK"): ("BANKNIFTY", "IDX", 0, 0, Decimal("0.05")),
        ("BSE", "SENSEX"): ("SENSEX", "IDX", 0, 0, Decimal("0.05")),
        ("NSE", "RELIANCE"): ("RELIANCE", "EQ", 2885, 1, Decimal("0.05")),
    }  # indices are subscribed by name (token 0); INFY and TCS have no derivatives here


def test_expiries_are_read_in_each_segments_epoch(kotak: KotakFakeServer) -> None:
    """nse_fo counts seconds from 1980-01-01 00:00 IST; mcx_fo's 23:59:59 UTC is the expiry day though in IST it is the next."""

    def raw(segment: str, symbol: str) -> int:
        header, *lines = kotak.scrip_master_csv(segment).splitlines()
        rows = [dict(zip(header.split(","), line.split(","))) for line in lines]
        return int(next(r for r in rows if r["pTrdSymbol"] == symbol)["pExpiryDate"])

    nifty = raw("nse_fo", "NIFTY26NOV25000CE")
    assert datetime.fromtimestamp(nifty, IST).date() == date(2016, 11, 24)  # ten years early read as Unix time
    assert datetime.fromtimestamp(nifty + 315513000, IST) == datetime(2026, 11, 24, 14, 30, tzinfo=IST)
    crude = raw("mcx_fo", "CRUDEOIL26DECFUT")
    assert datetime.fromtimestamp(crude, IST).date() == date(2026, 12, 19)  # what an IST reading would wrongly give
    assert datetime.fromtimestamp(raw("bse_fo", "SENSEX26NOVFUT"), IST) == datetime(2026, 11, 26, 14, 30, tzinfo=IST)


def test_the_official_sdk_reads_the_same_expiries_strikes_and_lots_from_the_fakes_files(
    both, kotak: KotakFakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kotakneoapi's ``search_scrip`` (pandas over the same CSV, its own expiry epochs) agrees with our contracts."""
    _, contracts, _ = both
    ours = {(SEGMENT_OF[c.exchange], c.symbol): c for c in contracts if c.expiry is not None}
    monkeypatch.setenv("NEO_SCRIP_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(neo_utility, "PROD_BASE_URL", kotak.api_url)
    client = NeoAPI(consumer_key=kotak.consumer_key, environment="prod")  # the scrip master needs no login
    seen = 0
    for segment, name in (("nse_fo", "nifty"), ("nse_fo", "reliance"), ("bse_fo", "sensex"), ("mcx_fo", "crudeoil")):
        rows = client.search_scrip(exchange_segment=segment, symbol=name)
        assert isinstance(rows, list) and rows, rows
        for r in rows:
            c = ours[(segment, r["pTrdSymbol"])]
            strike = None if r["pOptionType"].upper() == "XX" else Decimal(repr(r["dStrikePrice;"])) / 100
            assert (r["pSymbol"], r["pExpiryDate"], r["lLotSize"], strike) == (
                c.token, c.expiry.strftime("%d%b%Y"), c.lot_size, c.strike,
            ), r  # fmt: skip
            seen += 1
    assert seen == sum(1 for c in ours.values() if c.underlying in ("NIFTY", "BANKNIFTY", "RELIANCE", "SENSEX", "CRUDEOIL"))


# ---------------------------------------------------------------------------------------------- universes

UNIVERSES = [
    ("NFO:NIFTY FUT near,next,far", None),
    ("NFO:NIFTY OPT weekly ATM±3", "25010"),
    ("NFO:NIFTY OPT next-weekly ATM+2-1 CE", "24990"),
    ("NFO:NIFTY OPT monthly ATM±4", "25000"),
    ("NFO:BANKNIFTY FUT near roll=3", None),
    ("NFO:BANKNIFTY OPT monthly ATM±2 PE", "56040"),
    ("NFO:RELIANCE OPT monthly ATM±3", "1403.5"),
    ("NFO:RELIANCE OPT next-monthly ATM±1 on FUT", "1400"),
    ("BFO:SENSEX FUT near", None),
    ("BFO:SENSEX OPT weekly ATM±2", "82075"),
    ("MCX:CRUDEOIL FUT near,next", None),
    ("MCX:CRUDEOIL OPT monthly ATM±2", "5512"),
]


@pytest.mark.parametrize(("text", "price"), UNIVERSES, ids=[t for t, _ in UNIVERSES])
def test_a_universe_names_the_same_contracts_on_kite_and_kotak(both, text: str, price: str | None) -> None:
    kite_contracts, kotak_contracts, scrips = both
    spec = parse_entry(text)
    assert isinstance(spec, UniverseSpec)
    on_kite = resolve_universe(spec, kite_contracts, None if price is None else Decimal(price), TODAY)
    on_kotak = resolve_universe(spec, kotak_contracts, None if price is None else Decimal(price), TODAY)
    assert on_kite and [(c.exchange, *shape(c)) for c in on_kotak] == [(c.exchange, *shape(c)) for c in on_kite]
    reference = atm_reference(spec, kotak_contracts, TODAY)
    assert reference == atm_reference(spec, kite_contracts, TODAY)
    if reference is not None:  # the price the ATM is measured against can be subscribed on Kotak
        assert scrips.resolve([reference])[1] == []


def test_resolve_finds_every_contract_by_its_exchange_and_symbol(both) -> None:
    _, contracts, scrips = both
    known, unknown = scrips.resolve([(c.exchange, c.symbol) for c in contracts])
    assert unknown == []
    assert [(i.exchange, i.symbol, i.token, i.tick_size) for i in known] == [
        (c.exchange, c.symbol, c.token, c.tick_size) for c in contracts
    ]


# ---------------------------------------------------------------------------------------------- the broker


def test_the_broker_lists_contracts_resolves_them_and_answers_from_the_new_files_after_a_refresh(tmp_path: Path) -> None:
    today = datetime.now(IST).date()
    with KotakFakeServer(instruments=derivatives_scrip_master(today, 2)) as server:
        settings = Settings(
            consumer_key=server.consumer_key, mobile_number=server.mobile_number, ucc=server.ucc, mpin=server.mpin,
            totp_secret=server.totp_secret, login_url=server.login_url,
        )  # fmt: skip
        broker, _ = open_broker(settings, FeedContext(str(tmp_path), None, argparse.Namespace()))
        before = broker.contracts()
        assert {c.underlying for c in before} == {"NIFTY", "BANKNIFTY", "RELIANCE", "SENSEX", "CRUDEOIL"}
        known, unknown = broker.resolve([(c.exchange, c.symbol) for c in before])
        assert unknown == [] and [i.token for i in known] == [c.token for c in before]
        wider = derivatives_scrip_master(today, 3)  # the next files list a strike more either side
        listed = {i.trading_symbol for i in derivatives_scrip_master(today, 2)}
        new = next(i for i in wider if i.segment == "nse_fo" and i.trading_symbol not in listed)
        server.list_instruments(wider)
        assert broker.resolve([("NFO", new.trading_symbol)])[1] == [f"NFO:{new.trading_symbol}"]  # today's files stay
        broker.refresh_instruments(["NIFTY", "SENSEX"])
        (found,), unknown = broker.resolve([("NFO", new.trading_symbol)])
        assert unknown == [] and found.token == new.token
        assert any(c.symbol == new.trading_symbol for c in broker.contracts())


# ---------------------------------------------------------------------------------------------- refresh and fallback


def cache_yesterday(server: KotakFakeServer, cache: Path) -> dict[str, Path]:
    master(server, cache, YESTERDAY).contracts()
    files = {p.name.split("-")[2]: p for p in cache.glob("kotak-scrips-*.csv")}
    assert set(files) == {"nse_fo", "bse_fo", "mcx_fo", "nse_cm", "bse_cm"}
    assert all(p.name.endswith("-2026-11-23.csv") for p in files.values())
    return files


def without_column(text: str, column: str) -> str:
    lines = text.splitlines()
    drop = lines[0].split(",").index(column)
    return "\n".join(",".join(f for i, f in enumerate(line.split(",")) if i != drop) for line in lines) + "\n"


def renamed_nifty(server: KotakFakeServer) -> None:
    """NIFTY's contracts listed under another name: the row count stays, NIFTY is gone."""
    server.list_instruments(
        tuple(
            replace(i, symbol_name="NIFTYX", trading_symbol="NIFTYX" + i.trading_symbol[5:])
            if i.segment == "nse_fo" and i.symbol_name == "NIFTY"
            else i
            for i in server.instruments
        )
    )


FAULTS = [
    ("garbage", "the nse_fo scrip master has no pSymbol column: its format changed"),
    ("truncated", "the nse_fo scrip master has"),
    ("no_option_type_column", "the nse_fo scrip master has no pOptionType column"),
    ("error_page", "the nse_fo scrip master download failed with HTTP 503"),
    ("no_nifty", "the nse_fo scrip master has no futures or options of NIFTY"),
]


@pytest.mark.parametrize(("fault", "reason"), FAULTS, ids=[f for f, _ in FAULTS])
def test_a_bad_download_keeps_yesterdays_cached_file_with_a_warning_naming_it_and_why(
    kotak: KotakFakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, fault: str, reason: str
) -> None:
    old = cache_yesterday(kotak, tmp_path)
    kept = old["nse_fo"].read_bytes()
    yesterdays = {c for c in master(kotak, tmp_path, YESTERDAY).contracts() if c.exchange == "NFO"}
    full = kotak.scrip_master_csv("nse_fo")
    if fault == "garbage":
        kotak.scrip_replies["nse_fo"] = (200, "<html><body>502 Bad Gateway</body></html>\n\x01garbage,,,\n")
    elif fault == "truncated":  # cut mid-row, as a dropped connection leaves it
        kotak.scrip_replies["nse_fo"] = (200, truncated_scrip_csv(full, 0.4))
        reason = f"fewer than 50% of the {len(full.splitlines()) - 1} in {old['nse_fo'].name}: taken for a truncated download"
    elif fault == "no_option_type_column":
        kotak.scrip_replies["nse_fo"] = (200, without_column(full, "pOptionType"))
    elif fault == "error_page":
        kotak.scrip_replies["nse_fo"] = (503, "<html>Service Unavailable</html>")
    else:
        renamed_nifty(kotak)
    scrips = master(kotak, tmp_path, DAY, required=["nifty", "SENSEX"])
    with caplog.at_level(logging.WARNING, logger="brokers.kotak_neo.instruments"):
        contracts = scrips.contracts()
    assert scrips.fallback == {"nse_fo": old["nse_fo"]}
    assert {c for c in contracts if c.exchange == "NFO"} == yesterdays
    assert old["nse_fo"].read_bytes() == kept and not scrips.cache_path("nse_fo").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [old["nse_fo"].name] + [f"kotak-scrips-{s}-2026-11-24.csv" for s in ("bse_fo", "mcx_fo", "nse_cm", "bse_cm")]
    )  # the other segments' good downloads replaced yesterday's files; nothing half-written
    (warning,) = [r.getMessage() for r in caplog.records if "using the cached nse_fo scrip master" in r.getMessage()]
    assert reason in warning and str(old["nse_fo"]) in warning, warning
    assert scrips.resolve([("NFO", "NIFTY26NOV25000CE")])[1] == []  # resolve answers from the same table


def test_an_unreachable_kotak_falls_back_to_every_cached_file(kotak: KotakFakeServer, tmp_path: Path, caplog) -> None:
    old = cache_yesterday(kotak, tmp_path)
    yesterdays = master(kotak, tmp_path, YESTERDAY).contracts()
    with KotakFakeServer(consumer_key=CONSUMER_KEY) as gone:
        url = gone.api_url
    scrips = KotakScripMaster(url, CONSUMER_KEY, tmp_path, clock=lambda: DAY, timeout=5.0)
    with caplog.at_level(logging.WARNING, logger="brokers.kotak_neo.instruments"):
        assert scrips.contracts() == yesterdays
    assert scrips.fallback == old
    assert "could not list Kotak's scrip master files" in caplog.text and "ConnectionError" in caplog.text


def test_a_failed_refresh_keeps_the_tables_and_todays_file_and_a_good_one_replaces_them(
    kotak: KotakFakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scrips = master(kotak, tmp_path)
    before = scrips.contracts()
    path = scrips.cache_path("nse_fo")
    kept = path.read_bytes()
    kotak.scrip_replies["nse_fo"] = (200, truncated_scrip_csv(kotak.scrip_master_csv("nse_fo"), 0.3))
    with caplog.at_level(logging.WARNING, logger="brokers.kotak_neo.instruments"):
        scrips.refresh(["NIFTY"])
    assert "keeping the nse_fo scrip master downloaded on 2026-11-24" in caplog.text
    assert scrips.contracts() == before and path.read_bytes() == kept
    kotak.scrip_replies.clear()
    kotak.list_instruments(derivatives_scrip_master(TODAY, STRIKES + 1))
    scrips.refresh()
    after = scrips.contracts()
    assert len(after) > len(before) and scrips.fallback == {} and path.read_bytes() != kept
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"kotak-scrips-{s}-2026-11-24.csv" for s in ("nse_fo", "bse_fo", "mcx_fo", "nse_cm", "bse_cm")
    )


@pytest.mark.parametrize(
    "reply",
    [(200, "<html>garbage</html>\n"), (200, ""), (503, "Service Unavailable")],
    ids=["garbage", "empty", "http-503"],
)
def test_a_failed_first_download_with_nothing_cached_is_a_clear_error(
    kotak: KotakFakeServer, tmp_path: Path, reply: tuple[int, str]
) -> None:
    kotak.scrip_replies["nse_fo"] = reply
    no_cache = r"nse_fo scrip master .*; no earlier nse_fo scrip master is cached in .* to fall back on"
    with pytest.raises(BrokerError, match=no_cache):
        master(kotak, tmp_path).contracts()
    assert not list(tmp_path.glob("kotak-scrips-nse_fo-*"))


def test_an_unreadable_cached_file_is_not_a_fallback_and_the_error_says_so(kotak: KotakFakeServer, tmp_path: Path) -> None:
    (tmp_path / "kotak-scrips-nse_fo-2026-11-23.csv").write_text("pSymbolX,pTrdSymbol\n1,X\n", encoding="utf-8")
    kotak.scrip_replies["nse_fo"] = (503, "")
    with pytest.raises(BrokerError, match="no earlier nse_fo scrip master is cached"):
        master(kotak, tmp_path).contracts()
