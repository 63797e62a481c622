"""One behaviour contract for every CandleStore, run against SQLite and a real PostgreSQL.

Decimal policy: a price comes back equal to what went in and with the same scale
(Decimal('1234.50') stays '1234.50'); exponent forms are stored as fixed point
(Decimal('1E+2') comes back as Decimal('100')); an instrument's strike and tick size alike
(Decimal('24050.00') and Decimal('24050') are equal and each comes back printed as it went in).
PostgreSQL ``numeric`` does this natively; SQLite stores ``format(d, "f")`` text.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import psycopg2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg2 import sql

from candles.model import BACKFILL, LIVE, PARTIAL, SOURCES, Candle
from candles.reconcile import Reconciliation
from core.contracts import Contract
from core.ist import IST
from storage import open_store
from storage.base import CandleStore, StoreError, StoreUnavailable, WatchlistEntry
from storage.migrations import LATEST_VERSION, MIGRATIONS, SCHEMA_MIGRATIONS_POSTGRES, SCHEMA_MIGRATIONS_SQLITE
from storage.postgres import PostgresStore, redact_dsn
from storage.sqlite import SQLiteStore
from testkit.pg import PostgresServer, free_port

T0 = datetime(2024, 5, 6, 9, 15, tzinfo=IST)
MINUTE = timedelta(minutes=1)


def make_candle(
    symbol: str = "INFY",
    bucket: datetime = T0,
    *,
    exchange: str = "NSE",
    interval: str = "1m",
    price: str = "1500.25",
    **changes: object,
) -> Candle:
    p = Decimal(price)
    candle = Candle(
        exchange=exchange,
        symbol=symbol,
        interval=interval,
        bucket=bucket,
        open=p,
        high=p + Decimal("2.50"),
        low=p - Decimal("1.05"),
        close=p + Decimal("0.45"),
        volume=12_345,
        oi=None,
        tick_count=42,
        first_tick=bucket + timedelta(seconds=1, microseconds=250_001),
        last_tick=bucket + timedelta(seconds=59, microseconds=999_999),
        cum_volume=1_000_000,
        final=True,
    )
    return replace(candle, **changes)


@dataclass
class Backend:
    """How to open a store on one fresh database, and raw SQL access to that database."""

    name: str
    open: Callable[..., CandleStore]
    query: Callable[[str], list[tuple]]


def _sqlite_backend(tmp_path: Path) -> Backend:
    path = tmp_path / "db" / "candles.db"

    def query(text: str) -> list[tuple]:
        conn = sqlite3.connect(path)
        try:
            with conn:
                return conn.execute(text).fetchall()
        finally:
            conn.close()

    return Backend("sqlite", lambda **kw: SQLiteStore(path, **kw), query)


def _postgres_backend(dsn: str) -> Backend:
    def query(text: str) -> list[tuple]:
        conn = psycopg2.connect(dsn)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(text)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    return Backend("postgres", lambda **kw: PostgresStore(dsn, **kw), query)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return _sqlite_backend(tmp_path)
    return _postgres_backend(request.getfixturevalue("pg_dsn"))


@pytest.fixture
def store(backend: Backend) -> Iterator[CandleStore]:
    """A migrated, empty store."""
    s = backend.open()
    s.migrate()
    yield s
    s.close()


# -- migrations ---------------------------------------------------------------------------------


def test_migrate_on_an_empty_database_reaches_the_latest_version_and_records_it(backend: Backend) -> None:
    s = backend.open()
    try:
        assert s.schema_version() == 0
        assert s.migrate() == LATEST_VERSION
        assert s.schema_version() == LATEST_VERSION
        rows = backend.query("SELECT version, description, applied_at FROM schema_migrations ORDER BY version")
        assert [(v, d) for v, d, _ in rows] == [(m.version, m.description) for m in MIGRATIONS]
        assert all(applied is not None for *_, applied in rows)
    finally:
        s.close()


def test_migrate_again_is_a_no_op_that_keeps_data(backend: Backend) -> None:
    s = backend.open()
    try:
        s.migrate()
        s.upsert([make_candle()])
        before = backend.query("SELECT version, applied_at FROM schema_migrations ORDER BY version")
        assert s.migrate() == LATEST_VERSION
        other = backend.open()  # a second process starting up
        try:
            assert other.migrate() == LATEST_VERSION
        finally:
            other.close()
        assert backend.query("SELECT version, applied_at FROM schema_migrations ORDER BY version") == before
        assert s.latest("NSE", "INFY", "1m") == [make_candle()]
    finally:
        s.close()


def test_database_with_a_newer_schema_version_is_refused_with_upgrade_advice(backend: Backend) -> None:
    s = backend.open()
    try:
        s.migrate()
        newer = LATEST_VERSION + 1
        backend.query(f"INSERT INTO schema_migrations (version, description) VALUES ({newer}, 'from the future')")
        with pytest.raises(StoreError, match=rf"schema version {newer}.*upgrade marketfeed"):
            s.migrate()
        assert s.schema_version() == newer  # nothing was rolled back or rewritten
    finally:
        s.close()


def test_reading_an_unmigrated_database_says_to_run_the_daemon_first(backend: Backend) -> None:
    s = backend.open()
    try:
        with pytest.raises(StoreError, match="no candle tables yet"):
            s.latest("NSE", "INFY", "1m")
    finally:
        s.close()


# -- writing candles ----------------------------------------------------------------------------


def test_writing_the_same_candle_twice_keeps_one_row_with_the_same_values(store: CandleStore) -> None:
    c = make_candle()
    store.upsert([c])
    store.upsert([c])
    assert store.latest("NSE", "INFY", "1m") == [c]


def test_upsert_revises_a_closed_candle(store: CandleStore) -> None:
    c = make_candle()
    store.upsert([c])
    revised = replace(c, high=Decimal("1510.00"), volume=c.volume + 100, tick_count=c.tick_count + 1,
                      last_tick=c.last_tick + timedelta(seconds=3), oi=777, cum_volume=1_000_100)
    store.upsert([revised])
    assert store.latest("NSE", "INFY", "1m") == [revised]


def test_non_final_candle_becomes_final_when_rewritten(store: CandleStore) -> None:
    open_bucket = make_candle(final=False, tick_count=3)
    store.upsert([open_bucket])
    assert store.latest("NSE", "INFY", "1m")[0].final is False
    closed = replace(open_bucket, final=True, tick_count=40)
    store.upsert([closed])
    assert store.latest("NSE", "INFY", "1m") == [closed]


def test_a_batch_with_the_same_key_twice_keeps_the_last_version(store: CandleStore) -> None:
    first = make_candle(final=False)
    last = replace(first, close=Decimal("1501.00"), final=True)
    store.upsert([first, make_candle("TCS"), last])
    assert store.latest("NSE", "INFY", "1m") == [last]
    assert len(store.latest("NSE", "TCS", "1m")) == 1


def test_a_batch_of_5000_candles_is_written_by_one_upsert(store: CandleStore) -> None:
    symbols = ["INFY", "TCS", "SBIN", "RELIANCE", "HDFCBANK"]
    batch = [make_candle(sym, T0 + i * MINUTE) for sym in symbols for i in range(1000)]
    store.upsert(batch)
    for sym in symbols:
        newest = store.latest("NSE", sym, "1m", limit=1000)
        assert len(newest) == 1000
        assert newest[0] == make_candle(sym, T0 + 999 * MINUTE)
        assert newest[-1] == make_candle(sym, T0)


def test_a_batch_that_fails_part_way_writes_nothing(store: CandleStore) -> None:
    good = [make_candle("INFY", T0 + i * MINUTE) for i in range(10)]
    too_big = make_candle("TCS", volume=2**63)  # beyond bigint
    with pytest.raises(StoreError):
        store.upsert([*good, too_big])
    assert store.latest("NSE", "INFY", "1m") == []
    store.upsert(good)  # the store is still usable afterwards
    assert len(store.latest("NSE", "INFY", "1m")) == 10


def test_a_bad_row_deep_in_a_large_batch_is_refused_as_bad_data_and_writes_nothing(store: CandleStore) -> None:
    # Far past the first piece of the batch the store has already sent: the error must still
    # name the row's problem (not pass for an outage to retry forever) and roll the batch back.
    good = [make_candle("INFY", T0 + i * MINUTE) for i in range(3000)]
    bad = make_candle("TCS", close=Decimal("NaN"))
    with pytest.raises(StoreError, match="refusing price") as info:
        store.upsert([*good, bad])
    assert not isinstance(info.value, StoreUnavailable)
    assert store.latest("NSE", "INFY", "1m") == []
    store.upsert(good[:5])
    assert len(store.latest("NSE", "INFY", "1m")) == 5


def test_delete_removes_only_the_given_candles(store: CandleStore) -> None:
    probe, keep = make_candle("SELFTEST"), make_candle("INFY")
    store.upsert([probe, keep])
    assert store.delete([probe]) == 1  # type: ignore[attr-defined]
    assert store.delete([probe]) == 0  # type: ignore[attr-defined]
    assert store.latest("NSE", "SELFTEST", "1m") == []
    assert store.latest("NSE", "INFY", "1m") == [keep]


def test_naive_datetimes_are_refused(store: CandleStore) -> None:
    with pytest.raises(StoreError, match="timezone-aware"):
        store.upsert([make_candle(bucket=datetime(2024, 5, 6, 9, 15))])


# -- exact values -------------------------------------------------------------------------------


@pytest.mark.parametrize("price", ["1234.55", "0.05", "99999.95", "12.3456", "1234.50", "100", "0.0000001"])
def test_prices_round_trip_as_exact_decimals_keeping_their_scale(store: CandleStore, price: str) -> None:
    d = Decimal(price)
    store.upsert([make_candle(open=d, high=d, low=d, close=d)])
    (got,) = store.latest("NSE", "INFY", "1m")
    for value in (got.open, got.high, got.low, got.close):
        assert isinstance(value, Decimal)
        assert value == d
        assert format(value, "f") == price


def test_exponent_form_prices_come_back_in_fixed_point(store: CandleStore) -> None:
    store.upsert([make_candle(open=Decimal("1E+2"), close=Decimal("1.5E-3"))])
    (got,) = store.latest("NSE", "INFY", "1m")
    assert (format(got.open, "f"), format(got.close, "f")) == ("100", "0.0015")


prices = st.integers(min_value=0, max_value=6).flatmap(
    lambda places: st.decimals(min_value=-10**7, max_value=10**9, places=places,
                               allow_nan=False, allow_infinity=False)
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(o=prices, h=prices, lo=prices, c=prices)
def test_any_fixed_point_price_round_trips_exactly(store: CandleStore, o: Decimal, h: Decimal, lo: Decimal,
                                                   c: Decimal) -> None:
    store.upsert([make_candle(open=o, high=h, low=lo, close=c)])
    (got,) = store.latest("NSE", "INFY", "1m")
    assert [format(v, "f") for v in (got.open, got.high, got.low, got.close)] == [
        format(v, "f") for v in (o, h, lo, c)
    ]


def test_times_come_back_aware_in_ist_with_microseconds(store: CandleStore) -> None:
    bucket = datetime(2024, 5, 6, 3, 45, tzinfo=timezone.utc)  # 09:15 IST
    first = datetime(2024, 5, 6, 3, 45, 0, 1, tzinfo=timezone.utc)
    last = datetime(2024, 5, 6, 5, 45, 59, 999_999, tzinfo=timezone(timedelta(hours=2)))  # 09:15:59 IST
    store.upsert([make_candle(bucket=bucket, first_tick=first, last_tick=last)])
    (got,) = store.latest("NSE", "INFY", "1m")
    for stored, given_ in ((got.bucket, bucket), (got.first_tick, first), (got.last_tick, last)):
        assert stored == given_
        assert stored.utcoffset() == timedelta(hours=5, minutes=30)
        assert stored.microsecond == given_.microsecond
    assert got.bucket == T0
    assert got.last_tick.isoformat() == "2024-05-06T09:15:59.999999+05:30"


def test_optional_oi_and_cumulative_volume_round_trip_as_none_or_int(store: CandleStore) -> None:
    store.upsert([make_candle("INFY", oi=None, cum_volume=None), make_candle("NIFTYFUT", oi=9_876_543_210)])
    assert store.latest("NSE", "INFY", "1m")[0].oi is None
    assert store.latest("NSE", "INFY", "1m")[0].cum_volume is None
    assert store.latest("NSE", "NIFTYFUT", "1m")[0].oi == 9_876_543_210


@pytest.mark.parametrize("symbol", ["NIFTY 50", "M&M", "BAJAJ-AUTO", "A\\B", "TAB\tSEP", "LINE\nBREAK", "CR\rX", "\\N", "ÄÖ₹"])
def test_any_symbol_text_round_trips(store: CandleStore, symbol: str) -> None:
    c = make_candle(symbol)
    store.upsert([c])
    assert store.latest("NSE", symbol, "1m") == [c]


# -- reading ------------------------------------------------------------------------------------


def test_latest_returns_one_series_newest_first_up_to_the_limit(store: CandleStore) -> None:
    series = [make_candle("INFY", T0 + i * MINUTE) for i in range(30)]
    # written out of order, with neighbours in other series, exchanges and intervals
    store.upsert(series[15:] + series[:15])
    store.upsert([make_candle("TCS", T0), make_candle("INFY", T0, interval="5m"),
                  make_candle("INFY", T0 + 40 * MINUTE, exchange="BSE")])
    assert store.latest("NSE", "INFY", "1m", limit=5) == series[:-6:-1]
    assert store.latest("NSE", "INFY", "1m") == series[:-21:-1]  # default limit 20
    assert store.latest("NSE", "INFY", "1m", limit=100) == series[::-1]
    assert store.latest("NSE", "WIPRO", "1m") == []


def test_between_returns_one_series_in_a_half_open_range_oldest_first(store: CandleStore) -> None:
    series = [make_candle("INFY", T0 + i * MINUTE) for i in range(10)]
    store.upsert(series[5:] + series[:5] + [make_candle("TCS", T0 + MINUTE), make_candle("INFY", T0, interval="5m")])
    assert store.between("NSE", "INFY", "1m", T0 + 2 * MINUTE, T0 + 6 * MINUTE) == series[2:6]
    assert store.between("NSE", "INFY", "1m", T0 + 20 * MINUTE, T0 + 30 * MINUTE) == []


def test_window_returns_the_newest_candles_of_a_half_open_range_oldest_first(store: CandleStore) -> None:
    series = [make_candle("INFY", T0 + i * MINUTE) for i in range(10)]
    store.upsert(series[5:] + series[:5] + [make_candle("TCS", T0 + MINUTE), make_candle("INFY", T0, interval="5m"),
                                            make_candle("INFY", T0 + 3 * MINUTE, exchange="BSE")])  # fmt: skip
    assert store.window("NSE", "INFY", "1m", T0 + 2 * MINUTE, T0 + 8 * MINUTE, 3) == series[5:8]
    assert store.window("NSE", "INFY", "1m", T0, T0 + 8 * MINUTE, 100) == series[:8]
    assert store.window("NSE", "INFY", "1m", T0, T0 + 8 * MINUTE, 0) == []
    assert store.window("NSE", "INFY", "1m", T0 + 20 * MINUTE, T0 + 30 * MINUTE, 5) == []
    assert store.window("NSE", "WIPRO", "1m", T0, T0 + 30 * MINUTE, 5) == []


def test_series_lists_every_stored_exchange_symbol_and_interval_once_in_key_order(store: CandleStore) -> None:
    assert store.series() == []
    store.upsert([make_candle("INFY", T0 + i * MINUTE) for i in range(50)]
                 + [make_candle("INFY", T0, interval="5m"), make_candle("TCS", T0), make_candle("TCS", T0 + MINUTE),
                    make_candle("INFY", T0, exchange="BSE"), make_candle("M&M", T0, exchange="NSE", interval="1d")])  # fmt: skip
    assert store.series() == [("BSE", "INFY", "1m"), ("NSE", "INFY", "1m"), ("NSE", "INFY", "5m"),
                              ("NSE", "M&M", "1d"), ("NSE", "TCS", "1m")]  # fmt: skip


# -- provenance (candle rule 8) ------------------------------------------------------------------


def test_migration_2_marks_existing_candles_live_and_refuses_an_unknown_source(backend: Backend) -> None:
    version_1 = MIGRATIONS[0].sqlite if backend.name == "sqlite" else MIGRATIONS[0].postgres
    first_tick = "1714967101250001" if backend.name == "sqlite" else "'2024-05-06 09:15:01+05:30'"
    s = backend.open()  # creates the SQLite file; migrated below, once it is at version 1
    backend.query(SCHEMA_MIGRATIONS_SQLITE if backend.name == "sqlite" else SCHEMA_MIGRATIONS_POSTGRES)
    for statement in version_1:
        backend.query(statement)
    backend.query("INSERT INTO schema_migrations (version, description) VALUES (1, 'candles and watchlist')")
    backend.query(
        'INSERT INTO candles (exchange, symbol, "interval", bucket, open, high, low, close, volume, oi, '
        "tick_count, first_tick, last_tick, cum_volume, final) VALUES ('NSE', 'INFY', '1m', "
        f"{first_tick}, '1500', '1502', '1499', '1501', 10, NULL, 3, {first_tick}, {first_tick}, 99, "
        f"{'1' if backend.name == 'sqlite' else 'true'})"
    )
    try:
        assert s.migrate() == LATEST_VERSION
        [old] = s.latest("NSE", "INFY", "1m")
        assert old.source == LIVE
        with pytest.raises(StoreError) as info:
            s.upsert([make_candle("TCS", source="guessed")])
        assert not isinstance(info.value, StoreUnavailable)
        assert s.latest("NSE", "TCS", "1m") == []
    finally:
        s.close()


@pytest.mark.parametrize("source", SOURCES)
def test_every_source_round_trips(store: CandleStore, source: str) -> None:
    c = make_candle(source=source)
    store.upsert([c])
    assert store.latest("NSE", "INFY", "1m") == [c]


def test_a_backfill_candle_fills_an_empty_bucket(store: CandleStore) -> None:
    c = make_candle(source=BACKFILL, tick_count=0)
    store.upsert([c])
    assert store.latest("NSE", "INFY", "1m") == [c]


def test_a_backfill_candle_replaces_a_partial_one(store: CandleStore) -> None:
    store.upsert([make_candle(source=PARTIAL, volume=11_317)])
    mended = make_candle(source=BACKFILL, volume=19_669)
    store.upsert([mended])
    assert store.latest("NSE", "INFY", "1m") == [mended]


def test_a_backfill_candle_never_overwrites_a_final_live_one(store: CandleStore) -> None:
    live = make_candle(source=LIVE, final=True)
    store.upsert([live])
    store.upsert([make_candle(source=BACKFILL, volume=1, price="1400")])
    assert store.latest("NSE", "INFY", "1m") == [live]


def test_a_backfill_candle_replaces_a_live_one_that_is_not_final(store: CandleStore) -> None:
    store.upsert([make_candle(source=LIVE, final=False)])  # flushed at a shutdown: cut short
    mended = make_candle(source=BACKFILL, volume=20_000)
    store.upsert([mended])
    assert store.latest("NSE", "INFY", "1m") == [mended]


def test_a_backfill_candle_replaces_an_earlier_backfill(store: CandleStore) -> None:
    store.upsert([make_candle(source=BACKFILL, volume=1)])
    again = make_candle(source=BACKFILL, volume=2)
    store.upsert([again])
    assert store.latest("NSE", "INFY", "1m") == [again]


def test_a_forced_backfill_overwrites_a_final_live_candle(store: CandleStore) -> None:
    store.upsert([make_candle(source=LIVE, final=True)])
    reconciled = make_candle(source=BACKFILL, volume=7)
    store.upsert([reconciled], force=True)
    assert store.latest("NSE", "INFY", "1m") == [reconciled]


@pytest.mark.parametrize("stored", SOURCES)
def test_a_live_candle_replaces_whatever_is_stored(store: CandleStore, stored: str) -> None:
    store.upsert([make_candle(source=stored, final=True)])
    revised = make_candle(source=LIVE, volume=99, final=True)
    store.upsert([revised])
    assert store.latest("NSE", "INFY", "1m") == [revised]


@pytest.mark.parametrize("stored", [LIVE, PARTIAL])
def test_a_partial_candle_replaces_a_live_or_partial_one(store: CandleStore, stored: str) -> None:
    store.upsert([make_candle(source=stored, final=True)])
    revised = make_candle(source=PARTIAL, volume=99, final=True)
    store.upsert([revised])
    assert store.latest("NSE", "INFY", "1m") == [revised]


@pytest.mark.parametrize("final", [True, False])
def test_a_partial_candle_never_replaces_a_backfill_one(store: CandleStore, final: bool) -> None:
    """A late tick revising a cut-short bucket, or a restart replaying it, after the bucket was mended."""
    mended = make_candle(source=BACKFILL, volume=19_669)
    store.upsert([mended])
    store.upsert([make_candle(source=PARTIAL, volume=11_317, final=final)])
    assert store.latest("NSE", "INFY", "1m") == [mended]


def test_a_backfill_batch_skips_only_the_final_live_buckets(store: CandleStore) -> None:
    live = make_candle(bucket=T0, source=LIVE)
    partial = make_candle(bucket=T0 + MINUTE, source=PARTIAL)
    store.upsert([live, partial])
    backfill = [make_candle(bucket=T0 + i * MINUTE, source=BACKFILL, volume=5) for i in range(3)]
    store.upsert(backfill)
    assert store.latest("NSE", "INFY", "1m") == [backfill[2], backfill[1], live]


def test_latest_per_series_gives_the_newest_candle_of_each_series_since_a_time(store: CandleStore) -> None:
    since = T0 + 10 * MINUTE
    infy_1m = [make_candle("INFY", T0 + i * MINUTE, final=i < 12) for i in range(13)]
    infy_5m = [make_candle("INFY", T0 + i * 5 * MINUTE, interval="5m") for i in range(3)]
    tcs_1m = [make_candle("TCS", since)]
    stale = [make_candle("SBIN", T0 + 9 * MINUTE)]  # before since: not resumed
    store.upsert(infy_1m + infy_5m + tcs_1m + stale)
    got = store.latest_per_series(since.timestamp())
    assert sorted(got, key=lambda c: (c.exchange, c.symbol, c.interval)) == [infy_1m[-1], infy_5m[-1], tcs_1m[0]]
    assert store.latest_per_series((T0 + 100 * MINUTE).timestamp()) == []


def test_watchlist_lists_enabled_rows_highest_priority_first(store: CandleStore) -> None:
    assert store.watchlist() == []
    store.set_watchlist([
        WatchlistEntry("NSE", "TCS", priority=5),
        WatchlistEntry("NSE", "INFY", priority=10),
        WatchlistEntry("BSE", "INFY", priority=5),
        WatchlistEntry("NSE", "SBIN", enabled=False, priority=99),
        WatchlistEntry("NSE", "ACC"),
    ])
    assert [(e.exchange, e.symbol, e.priority) for e in store.watchlist()] == [
        ("NSE", "INFY", 10), ("BSE", "INFY", 5), ("NSE", "TCS", 5), ("NSE", "ACC", 0)
    ]
    store.set_watchlist([WatchlistEntry("NSE", "INFY", enabled=False), WatchlistEntry("NSE", "SBIN", priority=1)])
    assert [e.symbol for e in store.watchlist()] == ["INFY", "TCS", "SBIN", "ACC"]
    assert all(e.enabled for e in store.watchlist())


# -- reconciliation -----------------------------------------------------------------------------


def _result(symbol: str, day: date = date(2024, 5, 6), **counts: int) -> Reconciliation:
    return Reconciliation(day, "NSE", symbol, **counts, checked_at=T0 + timedelta(hours=7, microseconds=123))


def test_reconciliation_results_round_trip_by_day_in_symbol_order(store: CandleStore) -> None:
    tcs = _result("TCS", compared=375, mismatched=2, close_diff=1, volume_diff=1, volume_preopen=1, missing_here=3)
    infy = _result("INFY", compared=370, missing_at_kite=1, open_diff=4, high_diff=5, low_diff=6,
                   partial_skipped=2, backfill_skipped=3)  # fmt: skip
    other_day = _result("INFY", day=date(2024, 5, 7), compared=1)
    store.record_reconciliations([tcs, infy, other_day])
    assert store.reconciliations(date(2024, 5, 6)) == [infy, tcs]
    assert store.reconciliations(date(2024, 5, 7)) == [other_day]
    assert store.reconciliations(date(2024, 5, 8)) == []


def test_reconciling_a_day_again_replaces_its_result(store: CandleStore) -> None:
    store.record_reconciliations([_result("INFY", compared=10, mismatched=1, close_diff=1)])
    again = _result("INFY", compared=12)
    store.record_reconciliations([again])
    assert store.reconciliations(date(2024, 5, 6)) == [again]


# -- instruments --------------------------------------------------------------------------------

EXPIRY = date(2024, 5, 30)
SEEN = date(2024, 5, 6)


def _contract(symbol: str, kind: str = "CE", strike: str | None = "24050.00", **changes: object) -> Contract:
    contract = Contract(
        exchange="NFO",
        symbol=symbol,
        underlying="NIFTY",
        kind=kind,
        expiry=EXPIRY,
        strike=None if strike is None else Decimal(strike),
        lot_size=25,
        tick_size=Decimal("0.05"),
        token=12_345_678,
    )
    return replace(contract, **changes)


NIFTY_INDEX = Contract("NSE", "NIFTY 50", "NIFTY", "IDX", None, None, 0, Decimal("0.05"), 256_265)
NIFTY_FUT = _contract("NIFTY24MAYFUT", "FUT", None, token=13_238_786)
NIFTY_CE = _contract("NIFTY2453024050CE", "CE", "24050.00", token=9_990_001)
NIFTY_PE = _contract("NIFTY2453024050PE", "PE", "24050", token=9_990_002)  # as a master printing no decimals
NIFTY_JUN_CE = _contract("NIFTY24JUN24100CE", "CE", "24100.5", expiry=date(2024, 6, 27), token=9_990_003)
CRUDE_FUT = Contract("MCX", "CRUDEOIL24MAYFUT", "CRUDEOIL", "FUT", date(2024, 5, 17), None, 100, Decimal("1"), 4_294_967_296)


def test_instruments_round_trip_exactly_in_exchange_underlying_expiry_order(store: CandleStore) -> None:
    everything = [NIFTY_JUN_CE, CRUDE_FUT, NIFTY_PE, NIFTY_INDEX, NIFTY_CE, NIFTY_FUT]
    store.record_instruments(everything, SEEN)
    assert store.instruments() == [CRUDE_FUT, NIFTY_CE, NIFTY_PE, NIFTY_FUT, NIFTY_JUN_CE, NIFTY_INDEX]
    assert store.instruments(underlying="NIFTY") == [NIFTY_CE, NIFTY_PE, NIFTY_FUT, NIFTY_JUN_CE, NIFTY_INDEX]
    assert store.instruments(exchange="NFO", underlying="NIFTY") == [NIFTY_CE, NIFTY_PE, NIFTY_FUT, NIFTY_JUN_CE]
    assert store.instruments(exchange="MCX") == [CRUDE_FUT]
    assert store.instruments(exchange="BFO") == []
    for c in everything:
        assert store.instrument(c.exchange, c.symbol) == c
        assert store.instrument_seen(c.exchange, c.symbol) == (SEEN, SEEN)
    assert store.instrument("NFO", "NIFTY24MAY24000CE") is None
    assert store.instrument_seen("NFO", "NIFTY24MAY24000CE") is None


def test_a_row_without_expiry_comes_before_the_dated_ones_of_its_exchange_and_underlying(store: CandleStore) -> None:
    crude_spot = Contract("MCX", "CRUDEOIL", "CRUDEOIL", "IDX", None, None, 0, Decimal("1"), 1)  # made up: NULL order
    store.record_instruments([CRUDE_FUT, crude_spot], SEEN)
    assert store.instruments(exchange="MCX") == [crude_spot, CRUDE_FUT]


def test_strikes_and_tick_sizes_come_back_as_the_master_printed_them(store: CandleStore) -> None:
    store.record_instruments([NIFTY_CE, NIFTY_PE, NIFTY_JUN_CE, CRUDE_FUT], SEEN)
    ce, pe, jun = (store.instrument("NFO", c.symbol) for c in (NIFTY_CE, NIFTY_PE, NIFTY_JUN_CE))
    assert ce is not None and pe is not None and jun is not None
    assert ce.strike == pe.strike == Decimal(24050)  # equal as numbers ...
    assert (str(ce.strike), str(pe.strike), str(jun.strike)) == ("24050.00", "24050", "24100.5")  # ... printed as given
    assert (str(ce.tick_size), str(store.instrument("MCX", CRUDE_FUT.symbol).tick_size)) == ("0.05", "1")
    assert all(isinstance(c.strike, Decimal) and isinstance(c.tick_size, Decimal) for c in (ce, pe, jun))


def test_exponent_form_strikes_come_back_in_fixed_point(store: CandleStore) -> None:
    store.record_instruments([replace(NIFTY_CE, strike=Decimal("2.405E+4"), tick_size=Decimal("5E-2"))], SEEN)
    got = store.instrument("NFO", NIFTY_CE.symbol)
    assert got is not None
    assert (str(got.strike), str(got.tick_size)) == ("24050", "0.05")


def test_recording_a_contract_again_keeps_first_seen_moves_last_seen_and_takes_the_new_metadata(
    store: CandleStore,
) -> None:
    store.record_instruments([NIFTY_CE, NIFTY_FUT], SEEN)
    revised = replace(NIFTY_CE, lot_size=75, tick_size=Decimal("0.10"), token=9_990_111)
    store.record_instruments([revised], SEEN + timedelta(days=3))
    assert store.instrument("NFO", NIFTY_CE.symbol) == revised
    assert store.instrument_seen("NFO", NIFTY_CE.symbol) == (SEEN, SEEN + timedelta(days=3))
    assert store.instrument_seen("NFO", NIFTY_FUT.symbol) == (SEEN, SEEN)  # not in the second call: untouched
    store.record_instruments([NIFTY_CE], SEEN + timedelta(days=3))  # the same day again: the newest call wins
    assert store.instrument("NFO", NIFTY_CE.symbol) == NIFTY_CE


def test_an_older_resolution_moves_first_seen_back_and_leaves_the_newer_metadata(store: CandleStore) -> None:
    newer = replace(NIFTY_CE, lot_size=75)
    store.record_instruments([newer], SEEN)
    store.record_instruments([NIFTY_CE], SEEN - timedelta(days=10))
    assert store.instrument("NFO", NIFTY_CE.symbol) == newer
    assert store.instrument_seen("NFO", NIFTY_CE.symbol) == (SEEN - timedelta(days=10), SEEN)


def test_a_batch_naming_a_contract_twice_keeps_the_last(store: CandleStore) -> None:
    store.record_instruments([NIFTY_CE, replace(NIFTY_CE, lot_size=50)], SEEN)
    assert store.instruments() == [replace(NIFTY_CE, lot_size=50)]


def test_a_whole_option_chain_is_recorded_by_one_call(store: CandleStore) -> None:
    chain = [
        _contract(f"NIFTY24MAY{strike}{kind}", kind, str(strike), token=strike * 10 + (kind == "PE"))
        for strike in range(18_000, 30_000, 5)
        for kind in ("CE", "PE")
    ]
    store.record_instruments(chain, SEEN)
    assert sorted(store.instruments(), key=lambda c: c.symbol) == sorted(chain, key=lambda c: c.symbol)


def test_an_expired_contracts_row_stays_and_its_candles_join_to_it(store: CandleStore) -> None:
    store.record_instruments([NIFTY_CE, NIFTY_JUN_CE], SEEN)
    store.record_instruments([NIFTY_CE, NIFTY_JUN_CE], EXPIRY)  # its last day in a universe
    after = EXPIRY + timedelta(days=1)
    store.record_instruments([NIFTY_JUN_CE], after)  # the next day's universe no longer has it
    candles = [make_candle(NIFTY_CE.symbol, T0 + i * MINUTE, exchange="NFO", price="112.35") for i in range(3)]
    store.upsert(candles)

    assert NIFTY_CE in store.instruments(exchange="NFO", underlying="NIFTY")
    assert store.instrument_seen("NFO", NIFTY_CE.symbol) == (SEEN, EXPIRY)
    assert store.instrument_seen("NFO", NIFTY_JUN_CE.symbol) == (SEEN, after)
    joined = [
        (c, store.instrument(c.exchange, c.symbol))
        for c in store.between("NFO", NIFTY_CE.symbol, "1m", T0, T0 + 3 * MINUTE)
    ]
    assert [c for c, _ in joined] == candles
    for candle, contract in joined:
        assert contract == NIFTY_CE
        assert (contract.underlying, contract.kind, contract.expiry) == ("NIFTY", "CE", EXPIRY)
        assert candle.close * contract.lot_size == Decimal("2820.00")  # premium per lot: 112.80 x 25


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        (replace(NIFTY_CE, kind="CALL"), "kind must be one of FUT, CE, PE, IDX, EQ"),
        (replace(NIFTY_CE, strike=24050.0), "strike must be a finite Decimal"),  # type: ignore[arg-type]
        (replace(NIFTY_CE, strike=Decimal("NaN")), "strike must be a finite Decimal"),
        (replace(NIFTY_CE, tick_size="0.05"), "tick_size must be a finite Decimal"),  # type: ignore[arg-type]
        (replace(NIFTY_CE, expiry=datetime(2024, 5, 30, 15, 30, tzinfo=IST)), "expiry must be a date"),
        (replace(NIFTY_CE, lot_size=25.0), "lot_size and token must be whole numbers"),  # type: ignore[arg-type]
        (replace(NIFTY_CE, symbol=""), "exchange and symbol must be non-empty"),
    ],
)
def test_a_contract_that_cannot_be_stored_is_refused_by_name_and_nothing_is_written(
    store: CandleStore, bad: Contract, problem: str
) -> None:
    with pytest.raises(StoreError, match=rf"refusing instrument .*{problem}.*fix the instrument master's parser"):
        store.record_instruments([NIFTY_FUT, bad], SEEN)
    assert store.instruments() == []


def test_the_day_seen_must_be_a_date(store: CandleStore) -> None:
    with pytest.raises(StoreError, match="must be a date"):
        store.record_instruments([NIFTY_CE], datetime(2024, 5, 6, 9, 15, tzinfo=IST))  # type: ignore[arg-type]
    assert store.instruments() == []


def test_migration_5_adds_instruments_to_a_store_at_version_4_keeping_its_candles(backend: Backend) -> None:
    s = backend.open()  # creates the SQLite file; brought to version 4 below
    backend.query(SCHEMA_MIGRATIONS_SQLITE if backend.name == "sqlite" else SCHEMA_MIGRATIONS_POSTGRES)
    for m in MIGRATIONS[:4]:
        for statement in m.sqlite if backend.name == "sqlite" else m.postgres:
            backend.query(statement)
        description = m.description.replace("'", "''")
        backend.query(f"INSERT INTO schema_migrations (version, description) VALUES ({m.version}, '{description}')")
    try:
        assert s.schema_version() == 4
        s.upsert([make_candle(NIFTY_CE.symbol, exchange="NFO")])
        with pytest.raises(StoreError, match="no candle tables yet"):  # the table is missing: said so
            s.instruments()
        assert s.migrate() == LATEST_VERSION
        assert s.latest("NFO", NIFTY_CE.symbol, "1m") == [make_candle(NIFTY_CE.symbol, exchange="NFO")]
        s.record_instruments([NIFTY_CE], SEEN)
        assert s.instrument("NFO", NIFTY_CE.symbol) == NIFTY_CE
        if backend.name == "sqlite":
            indexes = backend.query("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'instruments'")
        else:
            indexes = backend.query("SELECT indexname FROM pg_indexes WHERE tablename = 'instruments'")
        assert ("instruments_underlying_expiry_idx",) in indexes
    finally:
        s.close()


# -- rolls of continuous futures series ---------------------------------------------------------

DEC, JAN, FEB = "NIFTY26DECFUT", "NIFTY27JANFUT", "NIFTY27FEBFUT"
MON = date(2026, 12, 28)


def test_rolls_are_listed_by_day_per_exchange_and_series(store: CandleStore) -> None:
    store.record_roll("NFO", "NIFTY-I", MON + timedelta(days=2), JAN)
    store.record_roll("NFO", "NIFTY-I", MON, DEC)
    store.record_roll("NFO", "NIFTY-I", MON + timedelta(days=1), JAN)
    store.record_roll("NFO", "NIFTY-II", MON, JAN)  # another series of the same underlying
    store.record_roll("BFO", "NIFTY-I", MON, "NIFTY-ON-BFO")  # the same name on another exchange
    assert store.rolls("NFO", "NIFTY-I") == [(MON, DEC), (MON + timedelta(days=1), JAN), (MON + timedelta(days=2), JAN)]
    assert store.rolls("NFO", "NIFTY-II") == [(MON, JAN)]
    assert store.rolls("BFO", "NIFTY-I") == [(MON, "NIFTY-ON-BFO")]
    assert store.rolls("NFO", "NIFTY-III") == []
    assert all(type(day) is date for day, _ in store.rolls("NFO", "NIFTY-I"))


def test_recording_a_day_again_replaces_its_contract(store: CandleStore) -> None:
    store.record_roll("NFO", "NIFTY-I", MON, DEC)
    store.record_roll("NFO", "NIFTY-I", MON + timedelta(days=1), DEC)
    store.record_roll("NFO", "NIFTY-I", MON + timedelta(days=1), JAN)  # resolved again with roll=1
    store.record_roll("NFO", "NIFTY-I", MON + timedelta(days=1), JAN)  # and again: nothing changes
    assert store.rolls("NFO", "NIFTY-I") == [(MON, DEC), (MON + timedelta(days=1), JAN)]


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (("NFO", "NIFTY-I", datetime(2026, 12, 28, 9, 15, tzinfo=IST), DEC), "the day must be a date"),
        (("NFO", "NIFTY", MON, DEC), "the series must be an underlying and -I, -II or -III"),
        (("NFO", "NIFTY-IV", MON, DEC), "the series must be an underlying and -I, -II or -III"),
        (("NFO", "NFO:NIFTY-I", MON, DEC), "without the exchange"),
        (("NFO", "NIFTY-I", MON, ""), "exchange and symbol must be non-empty"),
    ],
)
def test_a_roll_that_cannot_be_stored_is_refused_by_name(store: CandleStore, args: tuple, problem: str) -> None:
    with pytest.raises(StoreError, match=rf"refusing roll .*{problem}"):
        store.record_roll(*args)
    assert store.rolls("NFO", "NIFTY-I") == []


def test_migration_6_adds_rolls_to_a_store_at_version_5_keeping_its_data(backend: Backend) -> None:
    s = backend.open()
    backend.query(SCHEMA_MIGRATIONS_SQLITE if backend.name == "sqlite" else SCHEMA_MIGRATIONS_POSTGRES)
    for m in MIGRATIONS[:5]:
        for statement in m.sqlite if backend.name == "sqlite" else m.postgres:
            backend.query(statement)
        description = m.description.replace("'", "''")
        backend.query(f"INSERT INTO schema_migrations (version, description) VALUES ({m.version}, '{description}')")
    try:
        assert s.schema_version() == 5
        s.upsert([make_candle(NIFTY_FUT.symbol, exchange="NFO")])
        s.record_instruments([NIFTY_FUT], SEEN)
        with pytest.raises(StoreError, match="no candle tables yet"):
            s.rolls("NFO", "NIFTY-I")
        assert s.migrate() == LATEST_VERSION  # 6 and any after it
        assert s.latest("NFO", NIFTY_FUT.symbol, "1m") == [make_candle(NIFTY_FUT.symbol, exchange="NFO")]
        assert s.instrument("NFO", NIFTY_FUT.symbol) == NIFTY_FUT
        s.record_roll("NFO", "NIFTY-I", SEEN, NIFTY_FUT.symbol)
        assert s.rolls("NFO", "NIFTY-I") == [(SEEN, NIFTY_FUT.symbol)]
    finally:
        s.close()


# -- SQLite specifics ---------------------------------------------------------------------------


def test_sqlite_creates_the_parent_directory_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "candles.db"
    s = SQLiteStore(path)
    s.migrate()
    s.close()
    assert path.is_file()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_sqlite_read_only_on_a_missing_file_names_the_path_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "candles.db"
    with pytest.raises(StoreError, match=str(path)):
        SQLiteStore(path, read_only=True)
    assert not path.parent.exists()


def test_sqlite_read_only_reads_what_the_writer_wrote_and_refuses_writes(tmp_path: Path) -> None:
    path = tmp_path / "candles.db"
    writer = SQLiteStore(path)
    writer.migrate()
    writer.upsert([make_candle()])
    viewer = SQLiteStore(path, read_only=True)
    try:
        assert viewer.latest("NSE", "INFY", "1m") == [make_candle()]
        writer.upsert([make_candle("TCS")])
        assert len(viewer.latest("NSE", "TCS", "1m")) == 1  # sees commits made while open
        with pytest.raises(StoreError, match="read-only"):
            viewer.upsert([make_candle()])
        with pytest.raises(StoreError, match="read-only"):
            viewer.migrate()
    finally:
        viewer.close()
        writer.close()


# -- PostgreSQL specifics -----------------------------------------------------------------------


@pytest.mark.parametrize("form", ["url", "keyvalue"])
def test_unreachable_postgres_raises_store_unavailable_saying_what_to_check_without_the_password(
    form: str,
) -> None:
    port = free_port()  # nothing listens there
    secret = "s3cr3t-Pa55"
    dsn = (f"postgresql://feeder:{secret}@127.0.0.1:{port}/marketfeed" if form == "url"
           else f"host=127.0.0.1 port={port} user=feeder password={secret} dbname=marketfeed")
    s = PostgresStore(dsn, connect_timeout=2)
    for call in (s.migrate, lambda: s.upsert([make_candle()]), s.watchlist):
        with pytest.raises(StoreUnavailable) as info:
            call()
        message = str(info.value)
        assert f"cannot reach PostgreSQL at 127.0.0.1:{port} (connection refused)" in message
        assert "check PG_CONN_STR and that the server is running" in message
        assert secret not in message
        assert "\n" not in message
        assert info.value.__suppress_context__  # libpq's own text is not chained into tracebacks
    assert secret not in s.description and secret not in repr(s)


def test_postgres_description_redacts_the_password_in_either_dsn_form() -> None:
    assert redact_dsn("postgresql://feeder:hunter2@db.example:6543/candles?sslmode=require") == (
        "postgresql://feeder:***@db.example:6543/candles?sslmode=require"
    )
    assert redact_dsn("postgresql://feeder@db/candles?password=hunter2") == "postgresql://feeder@db/candles?password=***"
    kv = redact_dsn("host=db port=5432 user=feeder password='hun ter2' dbname=candles")
    assert "hun" not in kv and "password=***" in kv and "host=db" in kv
    with pytest.raises(StoreError) as info:
        PostgresStore("host=db password hunter2")
    assert "hunter2" not in str(info.value)


def test_postgres_description_has_one_scheme_prefix() -> None:
    assert PostgresStore("postgresql://feeder:hunter2@db/candles").description == "postgresql://feeder:***@db/candles"
    assert PostgresStore("postgres://db/candles", read_only=True).description == "postgres://db/candles (read-only)"
    assert PostgresStore("host=db").description == "postgresql:host=db"


@pytest.mark.slow
def test_postgres_store_reconnects_after_the_server_comes_back() -> None:
    with PostgresServer() as server:
        dsn = server.create_database("reconnect")
        s = PostgresStore(dsn)
        try:
            s.migrate()
            s.upsert([make_candle()])
            server.stop()
            with pytest.raises(StoreUnavailable, match="check that the server is running"):
                s.upsert([make_candle("TCS")])
            with pytest.raises(StoreUnavailable, match="cannot reach PostgreSQL"):
                s.upsert([make_candle("TCS")])
            server.start()
            s.upsert([make_candle("TCS")])  # the caller's retry succeeds
            assert [c.symbol for c in s.latest_per_series(T0.timestamp())] == ["INFY", "TCS"]
            # a connection that died while idle fails one call, then the next reconnects
            server.stop()
            server.start()
            with pytest.raises(StoreUnavailable, match="lost the connection"):
                s.watchlist()
            assert s.watchlist() == []
        finally:
            s.close()


def test_postgres_read_only_store_reads_but_cannot_write(pg_dsn: str) -> None:
    writer = PostgresStore(pg_dsn)
    writer.migrate()
    writer.upsert([make_candle()])
    writer.close()
    viewer = PostgresStore(pg_dsn, read_only=True)
    try:
        assert viewer.latest("NSE", "INFY", "1m") == [make_candle()]
        with pytest.raises(StoreError):
            viewer.upsert([make_candle("TCS")])
    finally:
        viewer.close()


# -- open_store ---------------------------------------------------------------------------------


def test_open_store_uses_sqlite_when_no_postgres_is_configured(tmp_path: Path) -> None:
    for conn_str in (None, "", "   "):
        s = open_store(conn_str, str(tmp_path / "x" / "candles.db"))
        assert isinstance(s, SQLiteStore)
        s.close()


def test_open_store_uses_postgres_when_configured_and_does_not_connect_yet(tmp_path: Path) -> None:
    s = open_store(f"postgresql://u:pw@127.0.0.1:{free_port()}/db", str(tmp_path / "candles.db"))
    assert isinstance(s, PostgresStore)
    assert "pw" not in s.description
    assert not (tmp_path / "candles.db").exists()
    s.close()


def test_open_store_read_only_passes_through(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no candle database"):
        open_store(None, str(tmp_path / "candles.db"), read_only=True)


@pytest.mark.slow
def test_wrong_postgres_password_says_to_check_the_credentials_without_echoing_them() -> None:
    with PostgresServer() as server:
        server.execute(sql.SQL("CREATE ROLE feeder LOGIN PASSWORD 'right-one'"))
        server.stop()
        hba = server.datadir / "pg_hba.conf"
        hba.write_text("local all all trust\nhost all postgres 127.0.0.1/32 trust\n"
                       "host all all 127.0.0.1/32 scram-sha-256\n")
        server.start()
        s = PostgresStore(f"postgresql://feeder:wr0ng-Secret@127.0.0.1:{server.port}/postgres")
        with pytest.raises(StoreUnavailable) as info:
            s.migrate()
        message = str(info.value)
        assert f"PostgreSQL at 127.0.0.1:{server.port} rejected the login for user 'feeder'" in message
        assert "check the user and password in PG_CONN_STR" in message
        assert "wr0ng-Secret" not in message
        ok = PostgresStore(f"postgresql://feeder:right-one@127.0.0.1:{server.port}/postgres")
        assert ok.schema_version() == 0
        ok.close()
