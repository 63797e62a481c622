"""KotakScripMaster against the fake's scrip master over real HTTP: watchlist symbols resolve to the tokens,
tick sizes and feed keys of the per-segment CSV files; only the segments needed are downloaded; the files are
cached per IST day and a bad cache is fetched again; failures say what to check."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from brokers.base import BrokerError
from brokers.kotak_neo.instruments import KotakInstrument, KotakScripMaster
from brokers.kotak_neo.protocol import instrument_key, instruments_by_key
from core.ist import IST
from core.ticks import Instrument
from testkit.fakes.kotak_server import DEFAULT_INSTRUMENTS, ERROR_SHAPES, FakeInstrument, KotakFakeServer, synthetic_instruments

T0 = 1768448700.0  # 2026-01-15 09:15 IST
DAY = 86400
CONSUMER_KEY = "ck-scrip-master-secret-key-0042"


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def server(clock: Clock) -> Iterator[KotakFakeServer]:
    with KotakFakeServer(consumer_key=CONSUMER_KEY, clock=clock) as srv:
        yield srv


def master(server: KotakFakeServer, cache_dir: Path, clock: Clock, consumer_key: str = CONSUMER_KEY) -> KotakScripMaster:
    return KotakScripMaster(server.api_url, consumer_key, cache_dir, clock=clock, timeout=5.0)


def cached_files(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in cache_dir.iterdir())


def day_of(now: float) -> str:
    return datetime.fromtimestamp(now, IST).date().isoformat()


def expect_broker_error(call: Any) -> BrokerError:
    with pytest.raises(BrokerError) as info:
        call()
    return info.value


# ---------------------------------------------------------------------------------------------- resolving

#: watchlist entry -> (token, tick size, feed_name, feed key)
EXPECTED = {
    ("NSE", "INFY"): (1594, Decimal("0.05"), "", "nse_cm|1594"),
    ("NSE", "TCS"): (11536, Decimal("0.05"), "", "nse_cm|11536"),
    ("NSE", "RELIANCE"): (2885, Decimal("0.05"), "", "nse_cm|2885"),
    ("BSE", "INFY"): (500209, Decimal("0.05"), "", "bse_cm|500209"),
    ("NSE", "NIFTY 50"): (0, Decimal("0.05"), "Nifty 50", "nse_cm|Nifty 50"),
    ("BSE", "SENSEX"): (0, Decimal("0.05"), "SENSEX", "bse_cm|SENSEX"),
    ("NFO", "NIFTY26JANFUT"): (52168, Decimal("0.10"), "", "nse_fo|52168"),
    ("NFO", "NIFTY26JAN26000CE"): (52213, Decimal("0.05"), "", "nse_fo|52213"),
    ("CDS", "USDINR26JANFUT"): (1201, Decimal("0.0025"), "", "cde_fo|1201"),
    ("MCX", "CRUDEOIL26JANFUT"): (451669, Decimal("1"), "", "mcx_fo|451669"),
}


def test_watchlist_symbols_resolve_to_the_scrip_master_tokens_tick_sizes_and_feed_keys(
    server: KotakFakeServer, tmp_path: Path, clock: Clock
) -> None:
    known, unknown = master(server, tmp_path, clock).resolve(list(EXPECTED))
    assert unknown == []
    assert [(i.exchange, i.symbol) for i in known] == list(EXPECTED)  # the watchlist's spelling, in its order
    for inst in known:
        token, tick, feed_name, key = EXPECTED[(inst.exchange, inst.symbol)]
        assert isinstance(inst, KotakInstrument) and isinstance(inst, Instrument)
        assert (inst.token, inst.tick_size, inst.feed_name) == (token, tick, feed_name), inst
        assert instrument_key(inst) == key
    assert set(instruments_by_key(known)) == {v[3] for v in EXPECTED.values()}


def test_an_index_keeps_the_watchlist_symbol_and_carries_kotaks_spelling_as_feed_name(
    server: KotakFakeServer, tmp_path: Path, clock: Clock
) -> None:
    (nifty, lower), _ = master(server, tmp_path, clock).resolve([("NSE", "NIFTY 50"), ("NSE", "nifty 50")])
    assert (nifty.symbol, nifty.token, nifty.feed_name, nifty.key) == ("NIFTY 50", 0, "Nifty 50", "NSE:NIFTY 50")
    assert (lower.symbol, lower.feed_name) == ("nifty 50", "Nifty 50")
    assert instrument_key(nifty) == instrument_key(lower) == "nse_cm|Nifty 50"


def test_unknown_symbols_are_returned_by_name_and_the_rest_still_resolve(
    server: KotakFakeServer, tmp_path: Path, clock: Clock
) -> None:
    pairs = [("NSE", "NOSUCHSCRIP"), ("NSE", "INFY"), ("LSE", "VOD"), ("NFO", "NIFTY99DECFUT"), ("MCX", "CRUDEOIL26JANFUT")]
    known, unknown = master(server, tmp_path, clock).resolve(pairs)
    assert [(i.key, i.token) for i in known] == [("NSE:INFY", 1594), ("MCX:CRUDEOIL26JANFUT", 451669)]
    assert unknown == ["NSE:NOSUCHSCRIP", "LSE:VOD", "NFO:NIFTY99DECFUT"]


def test_three_hundred_synthetic_instruments_resolve_with_their_tokens(tmp_path: Path, clock: Clock) -> None:
    synthetic = synthetic_instruments(300)
    with KotakFakeServer(consumer_key=CONSUMER_KEY, clock=clock, instruments=DEFAULT_INSTRUMENTS + synthetic) as server:
        pairs = [("NSE", s.symbol_name) for s in synthetic]
        known, unknown = master(server, tmp_path, clock).resolve(pairs)
        assert unknown == []
        assert [i.token for i in known] == [s.token for s in synthetic] == list(range(100_001, 100_301))
        assert len(instruments_by_key(known)) == 300
        assert server.csv_downloads == 1


# ---------------------------------------------------------------------------------------------- downloads and the cache


def test_only_the_segments_the_watchlist_needs_are_downloaded(server: KotakFakeServer, tmp_path: Path, clock: Clock) -> None:
    scrips = master(server, tmp_path, clock)
    scrips.resolve([("NSE", "INFY"), ("NSE", "TCS"), ("NSE", "NIFTY 50")])
    assert (server.file_paths_requests, server.csv_downloads) == (1, 1)
    assert cached_files(tmp_path) == [f"kotak-scrips-nse_cm-{day_of(T0)}.csv"]
    scrips.resolve([("NSE", "RELIANCE"), ("NFO", "NIFTY26JANFUT")])
    assert (server.file_paths_requests, server.csv_downloads) == (1, 2)  # the file list is asked for once
    scrips.resolve(list(EXPECTED))
    assert server.csv_downloads == 5  # nse_cm, nse_fo, bse_cm, cde_fo, mcx_fo; never bse_fo
    assert server.file_paths_requests == 1
    assert not any("bse_fo" in name for name in cached_files(tmp_path))


def test_a_second_master_on_the_same_day_reads_the_cache_and_downloads_nothing(
    server: KotakFakeServer, tmp_path: Path, clock: Clock
) -> None:
    first, _ = master(server, tmp_path, clock).resolve(list(EXPECTED))
    counts = (server.file_paths_requests, server.csv_downloads)
    clock.now += 6 * 3600  # later the same IST day
    second, unknown = master(server, tmp_path, clock).resolve(list(EXPECTED))
    assert (server.file_paths_requests, server.csv_downloads) == counts
    assert second == first and unknown == []


def test_a_new_ist_day_downloads_again_and_removes_the_old_days_cache_files(
    server: KotakFakeServer, tmp_path: Path, clock: Clock
) -> None:
    master(server, tmp_path, clock).resolve([("NSE", "INFY"), ("NFO", "NIFTY26JANFUT")])
    yesterday = day_of(clock.now)
    assert cached_files(tmp_path) == [f"kotak-scrips-nse_cm-{yesterday}.csv", f"kotak-scrips-nse_fo-{yesterday}.csv"]
    clock.now += DAY
    today = day_of(clock.now)
    known, _ = master(server, tmp_path, clock).resolve([("NSE", "INFY"), ("NFO", "NIFTY26JANFUT")])
    assert [i.token for i in known] == [1594, 52168]
    assert (server.file_paths_requests, server.csv_downloads) == (2, 4)
    assert cached_files(tmp_path) == [f"kotak-scrips-nse_cm-{today}.csv", f"kotak-scrips-nse_fo-{today}.csv"]


def test_one_master_running_past_midnight_ist_fetches_the_new_days_files(
    server: KotakFakeServer, tmp_path: Path, clock: Clock
) -> None:
    scrips = master(server, tmp_path, clock)
    scrips.resolve([("NSE", "INFY")])
    clock.now += DAY
    known, _ = scrips.resolve([("NSE", "INFY")])
    assert known[0].token == 1594
    assert (server.file_paths_requests, server.csv_downloads) == (2, 2)  # the file list is dated: asked for again
    assert cached_files(tmp_path) == [f"kotak-scrips-nse_cm-{day_of(clock.now)}.csv"]


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("", id="empty"),
        pytest.param("\x00\x00\x7f garbage that is not a scrip master \x00", id="garbage"),
        pytest.param("pSymbolX,pTrdSymbol\n1594,INFY-EQ\n", id="no-pSymbol-column"),
        pytest.param("pSymbol,pGroup,pExchSeg,pInstType,pSymbolName,pTrdSymbol\n", id="header-only"),
    ],
)
def test_an_unusable_cached_file_is_downloaded_again_and_replaced(
    content: str, server: KotakFakeServer, tmp_path: Path, clock: Clock
) -> None:
    path = tmp_path / f"kotak-scrips-nse_cm-{day_of(T0)}.csv"
    path.write_text(content, encoding="utf-8")
    known, unknown = master(server, tmp_path, clock).resolve([("NSE", "INFY")])
    assert unknown == [] and known[0].token == 1594
    assert (server.file_paths_requests, server.csv_downloads) == (1, 1)
    assert path.read_text(encoding="utf-8").startswith("pSymbol,")
    master(server, tmp_path, clock).resolve([("NSE", "INFY")])
    assert server.csv_downloads == 1  # the replaced cache is good


def test_a_cached_file_with_a_utf8_byte_order_mark_is_read(server: KotakFakeServer, tmp_path: Path, clock: Clock) -> None:
    master(server, tmp_path, clock).resolve([("NSE", "INFY")])
    path = tmp_path / f"kotak-scrips-nse_cm-{day_of(T0)}.csv"
    path.write_text("\ufeff" + path.read_text(encoding="utf-8"), encoding="utf-8")
    known, _ = master(server, tmp_path, clock).resolve([("NSE", "TCS")])
    assert known[0].token == 11536 and server.csv_downloads == 1


def test_the_csv_is_read_as_utf8_whatever_charset_the_server_omits(tmp_path: Path, clock: Clock) -> None:
    accented = FakeInstrument("nse_cm", 7001, "CAFE-EQ", "CAFE", "CAFÉ COFFEE DAY – ENTERPRISES", "EQ")
    with KotakFakeServer(consumer_key=CONSUMER_KEY, clock=clock, instruments=(*DEFAULT_INSTRUMENTS, accented)) as server:
        known, _ = master(server, tmp_path, clock).resolve([("NSE", "CAFE")])
        assert known[0].token == 7001
        cached = (tmp_path / f"kotak-scrips-nse_cm-{day_of(T0)}.csv").read_text(encoding="utf-8")
        assert "CAFÉ COFFEE DAY – ENTERPRISES" in cached  # text/csv without a charset is still UTF-8


class RenamedColumnServer(KotakFakeServer):
    """Serves CSV files whose pSymbol column has another name, as if Kotak changed the format."""

    def _csv(self, path: str) -> Any:
        reply = super()._csv(path)
        if reply[0] != 200:
            return reply
        return reply[0], reply[1].replace("pSymbol,", "pScripCode,", 1), reply[2]


def test_a_downloaded_csv_without_a_psymbol_column_is_a_clear_error_and_is_not_cached(tmp_path: Path, clock: Clock) -> None:
    with RenamedColumnServer(consumer_key=CONSUMER_KEY, clock=clock) as server:
        exc = expect_broker_error(lambda: master(server, tmp_path, clock).resolve([("NSE", "INFY")]))
        assert "nse_cm" in str(exc) and "pSymbol" in str(exc) and "format" in str(exc)
        assert cached_files(tmp_path) == []  # the next start downloads again instead of trusting a bad file


# ---------------------------------------------------------------------------------------------- failures

FILE_PATHS_FAULTS: list[str | int] = [*ERROR_SHAPES, 400, 401, 403, 404, 429, 500, 502, 503, 504]


@pytest.mark.parametrize("shape", FILE_PATHS_FAULTS, ids=str)
def test_a_failed_file_list_is_a_broker_error_naming_kotak_consumer_key_and_a_retry_works(
    shape: str | int, server: KotakFakeServer, tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    scrips = master(server, tmp_path, clock)
    server.fail_next("file_paths", shape)
    exc = expect_broker_error(lambda: scrips.resolve([("NSE", "INFY")]))
    status = ERROR_SHAPES[shape][0] if isinstance(shape, str) else shape
    assert "KOTAK_CONSUMER_KEY" in str(exc) and f"HTTP {status}" in str(exc), str(exc)
    assert server.csv_downloads == 0 and cached_files(tmp_path) == []
    known, _ = scrips.resolve([("NSE", "INFY")])  # the failure is not remembered
    assert known[0].token == 1594 and server.file_paths_requests == 2
    for text in (str(exc), repr(scrips), caplog.text):
        assert CONSUMER_KEY not in text


def test_a_wrong_consumer_key_is_a_broker_error_naming_kotak_consumer_key(
    server: KotakFakeServer, tmp_path: Path, clock: Clock
) -> None:
    exc = expect_broker_error(lambda: master(server, tmp_path, clock, "ck-not-the-key").resolve([("NSE", "INFY")]))
    assert "KOTAK_CONSUMER_KEY" in str(exc) and "HTTP 401" in str(exc) and "ck-not-the-key" not in str(exc)


def test_an_unreachable_scrip_master_service_is_a_clear_broker_error(tmp_path: Path, clock: Clock) -> None:
    with KotakFakeServer(consumer_key=CONSUMER_KEY, clock=clock) as server:
        url = server.api_url
    scrips = KotakScripMaster(url, CONSUMER_KEY, tmp_path, clock=clock, timeout=5.0)
    exc = expect_broker_error(lambda: scrips.resolve([("NSE", "INFY")]))
    assert url in str(exc) and "ConnectionError" in str(exc)


def test_a_failed_csv_download_is_a_clear_error_and_the_next_try_downloads(
    server: KotakFakeServer, tmp_path: Path, clock: Clock
) -> None:
    scrips = master(server, tmp_path, clock)
    server.fail_next("csv", 503)
    exc = expect_broker_error(lambda: scrips.resolve([("NSE", "INFY")]))
    assert "nse_cm" in str(exc) and "HTTP 503" in str(exc) and "try again" in str(exc)
    assert cached_files(tmp_path) == []
    known, _ = scrips.resolve([("NSE", "INFY")])
    assert known[0].token == 1594 and server.csv_downloads == 2 and server.file_paths_requests == 1


def test_symbols_of_a_segment_the_file_list_does_not_offer_are_unknown_and_the_rest_resolve(
    server: KotakFakeServer, tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    known, unknown = master(server, tmp_path, clock).resolve([("BCD", "USDINR26JANFUT"), ("NSE", "INFY"), ("BCD", "EURINR")])
    assert [i.token for i in known] == [1594]
    assert unknown == ["BCD:USDINR26JANFUT", "BCD:EURINR"]
    assert "no file for segment bse_cd" in caplog.text
    assert server.csv_downloads == 1


def test_the_consumer_key_is_not_in_the_repr(server: KotakFakeServer, tmp_path: Path, clock: Clock) -> None:
    scrips = master(server, tmp_path, clock)
    assert CONSUMER_KEY not in repr(scrips) and server.api_url in repr(scrips)


def test_indices_resolve_by_their_known_feed_names_when_the_scrip_master_lists_no_index_rows(
    tmp_path: Path, clock: Clock
) -> None:
    with KotakFakeServer(consumer_key=CONSUMER_KEY, clock=clock, index_rows=False) as srv:
        pairs = [("NSE", "NIFTY 50"), ("NSE", "Nifty Bank"), ("BSE", "SENSEX"), ("NSE", "NIFTY NOSUCH")]
        known, unknown = master(srv, tmp_path, clock).resolve(pairs)
    assert unknown == ["NSE:NIFTY NOSUCH"]
    assert [(i.symbol, i.token, instrument_key(i)) for i in known] == [
        ("NIFTY 50", 0, "nse_cm|Nifty 50"), ("Nifty Bank", 0, "nse_cm|Nifty Bank"), ("SENSEX", 0, "bse_cm|SENSEX"),
    ]  # fmt: skip
