"""Derivatives universes in the daemon as a process, against the Kite fake with a realistic dump and
a moving underlying: the strikes subscribed at the server follow the index (no reconnect), the
limits refuse an oversized universe before anything is subscribed, and the contracts land in the
instruments table."""

from __future__ import annotations

import signal
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal

import pytest

from core.ist import IST
from storage.sqlite import SQLiteStore
from testkit.cli import kite_env as fake_kite_env
from testkit.cli import main_env, run_main, start_main
from testkit.fakes.kite_server import KiteFakeServer, derivatives_dump
from testkit.fakes.market import MovingUnderlying
from testkit.waiting import free_port, wait_until

TODAY = datetime.now(IST).date()
DUMP = derivatives_dump(TODAY, strikes_each_side=15)
BY_SYMBOL = {(i.exchange, i.tradingsymbol): i for i in DUMP}
NIFTY_50 = BY_SYMBOL[("NSE", "NIFTY 50")]


@pytest.fixture
def server() -> Iterator[KiteFakeServer]:
    with KiteFakeServer(instruments=DUMP, heartbeat_interval=0.5) as srv:
        yield srv


def kite_env(server: KiteFakeServer, **extra: str) -> dict[str, str]:
    return fake_kite_env(server, BACKFILL="false", STATUS_INTERVAL_SECONDS="1", **extra)


def subscribed_symbols(server: KiteFakeServer) -> set[str]:
    by_token = {i.token: i.tradingsymbol for i in DUMP}
    return {by_token[t] for c in server.connections for t in c.subscribed}


def weekly_strikes(symbols: set[str], side: str) -> list[int]:
    """The strikes of the NIFTY options subscribed (one expiry: the weekly)."""
    return sorted({int(s[-7:-2]) for s in symbols if s.startswith("NIFTY") and s.endswith(side)})


def test_option_strikes_follow_the_moving_underlying_on_the_live_connection(tmp_path, server):
    market = MovingUnderlying(server, NIFTY_50, "NIFTY", DUMP, Decimal("25010"))
    market.move("25010")  # the index's last snapshot: sent on subscription
    port = free_port()
    proc = start_main(
        "--broker", "kite", "--symbols", "NSE:INFY", "NFO:NIFTY OPT weekly ATM±3", "NFO:NIFTY FUT near",
        "--metrics-port", str(port), cwd=tmp_path, env=kite_env(server),
    )  # fmt: skip
    try:
        server.wait_subscribed([NIFTY_50.token], timeout=30)
        wait_until(lambda: len(weekly_strikes(subscribed_symbols(server), "CE")) == 7, 15, "the first strikes")
        symbols = subscribed_symbols(server)
        assert weekly_strikes(symbols, "CE") == weekly_strikes(symbols, "PE") == list(range(24850, 25151, 50))
        assert "INFY" in symbols and sum(s.endswith("FUT") for s in symbols) == 1
        handshakes = server.handshakes

        market.move("25030")  # past half-way to 25050, not by the hysteresis margin: no change
        time.sleep(1.5)
        assert weekly_strikes(subscribed_symbols(server), "CE") == list(range(24850, 25151, 50))

        market.move("25120")
        wait_until(
            lambda: weekly_strikes(subscribed_symbols(server), "CE") == list(range(24950, 25251, 50)), 10, "re-centring"
        )
        symbols = subscribed_symbols(server)
        assert weekly_strikes(symbols, "PE") == list(range(24950, 25251, 50))
        assert server.handshakes == handshakes  # changed on the live connection, no reconnect
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'marketfeed_universe_recentres_total{universe="NFO:NIFTY OPT weekly ATM±3"} 1.0' in metrics
        assert 'marketfeed_universe_atm{universe="NFO:NIFTY OPT weekly ATM±3"} 25100.0' in metrics
        assert 'marketfeed_universe_contracts{universe="NFO:NIFTY OPT weekly ATM±3"} 14.0' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-3000:]
    assert "re-centred, ATM 25000 -> 25100 (NSE:NIFTY 50 at 25120.00): +4" in err
    store = SQLiteStore(tmp_path / "data" / "marketfeed.db")
    stored = {c.symbol for c in store.instruments("NFO", "NIFTY")}
    assert len([s for s in stored if s.endswith("CE")]) == 9  # 24850 … 25250: every strike ever subscribed
    store.close()


def test_a_universe_over_the_broker_limit_is_refused_before_anything_is_subscribed(tmp_path):
    # a dump the size of Kite's (about 100k rows): NIFTY's and SENSEX's weekly chains list 2401 strikes each
    dump = derivatives_dump(TODAY, strikes_each_side=1200)
    with KiteFakeServer(instruments=dump) as server:
        result = run_main(
            "--broker", "kite", "--symbols", "NSE:INFY", "NFO:NIFTY OPT weekly ATM±2000", "BFO:SENSEX OPT weekly ATM±2000",
            cwd=tmp_path, env=kite_env(server), timeout=120,
        )  # fmt: skip
        assert server.handshakes == 0  # nothing was subscribed
    assert result.returncode == 1, result.stderr
    assert "9607 instruments exceed what kite allows: 3000 per connection x 3 connections = 9000" in result.stderr
    assert "1 symbols and universes of up to 9606 instruments" in result.stderr
    assert "NFO:NIFTY OPT weekly ATM±2000: 4802, BFO:SENSEX OPT weekly ATM±2000: 4802" in result.stderr


def test_the_simulator_refuses_universes_with_the_brokers_that_have_them(tmp_path):
    result = run_main("--broker", "sim", "--symbols", "NFO:NIFTY FUT near", "--duration", "2", cwd=tmp_path)
    assert result.returncode == 2
    assert "universe entries (FUT, OPT) need --broker kite or kotak_neo" in result.stderr


def test_sighup_replaces_a_universe_with_the_symbols_files_new_entry(tmp_path, server):
    market = MovingUnderlying(server, NIFTY_50, "NIFTY", DUMP, Decimal("25010"))
    market.move("25010")
    symbols = tmp_path / "symbols.txt"
    symbols.write_text("NSE:INFY\nNFO:NIFTY OPT weekly ATM±3  # calls and puts\n")
    proc = start_main("--broker", "kite", "--symbols-file", str(symbols), cwd=tmp_path, env=kite_env(server))
    try:
        wait_until(lambda: len(weekly_strikes(subscribed_symbols(server), "CE")) == 7, 30, "the first strikes")
        symbols.write_text("NSE:INFY\nNFO:NIFTY OPT weekly ATM±1 CE\n")
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: weekly_strikes(subscribed_symbols(server), "PE") == [], 10, "the puts unsubscribed")
        wait_until(lambda: weekly_strikes(subscribed_symbols(server), "CE") == [24950, 25000, 25050], 10, "ATM±1 calls")
        market.move("25120")  # the new universe follows the index too
        wait_until(lambda: weekly_strikes(subscribed_symbols(server), "CE") == [25050, 25100, 25150], 10, "re-centring")
        assert "NIFTY 50" in subscribed_symbols(server) and "INFY" in subscribed_symbols(server)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-3000:]
    assert "watchlist reloaded" in err


def test_the_same_universe_streams_the_same_contracts_on_kotak(tmp_path):
    from testkit.fakes.kotak_server import KotakFakeServer, derivatives_scrip_master
    from testkit.fakes.kotak_server import TapeTick as KotakTick

    rows = derivatives_scrip_master(TODAY, strikes_each_side=15)
    symbol_of = {f"{r.segment}|{r.token}": r.trading_symbol for r in rows if r.segment == "nse_fo"}

    def fo_symbols(server: KotakFakeServer) -> set[str]:
        return {symbol_of[k] for c in server.connections for k in c.subscriptions if k in symbol_of}

    def index_tick(price: str) -> KotakTick:
        return KotakTick("nse_cm", 26000, Decimal(price), 0, 0, int(time.time()))

    with KotakFakeServer(instruments=rows) as server:
        server.send_ticks([index_tick("25010")])  # the index's last snapshot, sent on subscription
        env = main_env(
            KOTAK_CONSUMER_KEY=server.consumer_key, KOTAK_MOBILE_NUMBER=server.mobile_number, KOTAK_UCC=server.ucc,
            KOTAK_MPIN=server.mpin, KOTAK_TOTP_SECRET=server.totp_secret, KOTAK_LOGIN_URL=server.login_url,
            BACKFILL="false", STATUS_INTERVAL_SECONDS="1",
        )  # fmt: skip
        proc = start_main(
            "--broker", "kotak_neo", "--symbols", "NFO:NIFTY OPT weekly ATM±3", "NFO:NIFTY FUT near", cwd=tmp_path, env=env
        )  # fmt: skip
        try:
            wait_until(lambda: len(weekly_strikes(fo_symbols(server), "CE")) == 7, 30, "the first strikes on Kotak")
            kotak_start = fo_symbols(server)
            server.send_ticks([index_tick("25120")])
            wait_until(lambda: weekly_strikes(fo_symbols(server), "PE") == list(range(24950, 25251, 50)), 10, "re-centring")
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-3000:]
    # the contracts Kite's dump names for the same entries at the same price: the same strikes, sides and expiry
    nifty = [i for i in DUMP if i.exchange == "NFO" and i.name == "NIFTY"]
    near = min(i.expiry for i in nifty if i.instrument_type == "FUT")
    weekly = min(i.expiry for i in nifty if i.instrument_type == "CE")
    kite_start = {i.tradingsymbol for i in nifty if i.instrument_type == "FUT" and i.expiry == near} | {
        i.tradingsymbol
        for i in nifty
        if i.instrument_type in ("CE", "PE") and i.expiry == weekly and 24850 <= int(i.strike) <= 25150
    }
    assert len(kotak_start) == len(kite_start) == 15
    assert kotak_start == kite_start  # Kotak's trading symbols of NFO contracts are spelled as Kite's


def test_test_broker_resolves_a_universe_and_checks_the_feed_with_its_reference(tmp_path, server):
    MovingUnderlying(server, NIFTY_50, "NIFTY", DUMP, Decimal("25010")).move("25010")
    entry = "NFO:NIFTY OPT weekly ATM±10"
    check = run_main("--broker", "kite", "--test-broker", "--symbols", entry, cwd=tmp_path, env=kite_env(server))
    assert check.returncode == 0, check.stdout + check.stderr
    weekly = min(i.expiry for i in DUMP if i.name == "NIFTY" and i.instrument_type == "CE")
    assert f"ok: NFO:NIFTY OPT weekly ATM±10: expiry {weekly}, 31 strikes listed, ATM measured against NSE:NIFTY 50" in check.stdout
    assert "first tick       ok: NSE:NIFTY 50 25010" in check.stdout
    bad = run_main("--broker", "kite", "--test-broker", "--symbols", "NFO:NIFTI FUT near", cwd=tmp_path, env=kite_env(server))
    assert bad.returncode == 1
    assert "universe         FAILED" in bad.stdout and "did you mean NIFTY?" in bad.stdout


def test_a_fresh_dump_without_the_universes_underlying_is_refused_for_the_cached_one(tmp_path, server):
    from kiteconnect import KiteConnect

    from brokers.kite.instruments import KiteInstruments

    yesterday = time.time() - 86_400
    kite = KiteConnect(server.api_key, access_token=server.access_token, root=server.api_url)
    KiteInstruments(kite, tmp_path / "data", clock=lambda: yesterday).load()  # yesterday's dump, cached
    server.instruments = tuple(i for i in DUMP if i.name != "NIFTY")  # today's lacks NIFTY's contracts
    MovingUnderlying(server, NIFTY_50, "NIFTY", DUMP, Decimal("25010")).move("25010")
    proc = start_main("--broker", "kite", "--symbols", "NFO:NIFTY OPT weekly ATM±1", cwd=tmp_path, env=kite_env(server))
    try:
        wait_until(lambda: len(weekly_strikes(subscribed_symbols(server), "CE")) == 3, 30, "the strikes from the cached dump")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-3000:]
    assert "has no futures or options of NIFTY" in err and "using the cached dump" in err
