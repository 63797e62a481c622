"""The durable spool: candles on disk before they count, replayed after an outage or a restart."""

from __future__ import annotations

import json
import signal
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from brokers.sim.client import read_tape
from candles.model import LIVE, PARTIAL, SOURCES, Candle, parse_intervals
from core.ist import IST
from storage.postgres import PostgresStore
from storage.spool import Spool, SpoolError, decode, encode, encoder
from testkit.cli import main_env, run_main, session_calendar, start_main
from testkit.pg import PostgresServer
from testkit.reference import candle_to_dict, reference_candles, watched_again

SIM_START = "2026-11-24T09:15:00+05:30"
SYMBOLS = ["NSE:INFY", "NSE:TCS", "NSE:NIFTY 50"]


def candle(minute: int, close: str = "1500.05", final: bool = True, oi: int | None = None) -> Candle:
    bucket = datetime(2026, 11, 24, 9, 15, tzinfo=IST) + timedelta(minutes=minute)
    return Candle(
        "NSE", "INFY", "1m", bucket, Decimal("1500.00"), Decimal("1501.10"), Decimal("1499.95"), Decimal(close),
        1234, oi, 17, bucket + timedelta(seconds=1), bucket + timedelta(seconds=59), 99_000, final,
    )  # fmt: skip


def test_a_spooled_candle_reads_back_exactly():
    for c in (candle(0), candle(1, "0.0025", final=False, oi=5_000_000)):
        assert decode(encode(c)) == c


def json_line(c: Candle) -> bytes:
    """The spool's line format as plain ``json.dumps`` writes it (what spools on disk hold)."""
    fields = [
        c.exchange, c.symbol, c.interval, c.bucket.timestamp(), str(c.open), str(c.high), str(c.low), str(c.close),
        c.volume, c.oi, c.tick_count, None if c.first_tick is None else c.first_tick.timestamp(),
        None if c.last_tick is None else c.last_tick.timestamp(), c.cum_volume, c.final, c.source,
    ]  # fmt: skip
    return (json.dumps(fields, separators=(",", ":")) + "\n").encode()


_times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.sampled_from([IST, timezone.utc])
)
_prices = st.decimals(allow_nan=False, allow_infinity=False, places=4, min_value=-(10**9), max_value=10**9)
_counts = st.integers(min_value=0, max_value=2**63 - 1)


@given(
    st.lists(
        st.builds(
            Candle, st.sampled_from(["NSE", "BSE", "NFO"]), st.text(max_size=12), st.sampled_from(["1m", "5m", "15m"]),
            _times, _prices, _prices, _prices, _prices, _counts, st.none() | _counts, _counts,
            st.none() | _times, st.none() | _times, st.none() | _counts, st.booleans(), st.sampled_from(SOURCES),
        ),  # fmt: skip
        max_size=20,
    )
)
def test_a_batch_encodes_line_for_line_as_json_would_and_reads_back_equal(batch):
    encode_one = encoder()  # one encoder for the batch: its remembered names and times are reused
    for c in batch + batch:
        line = encode_one(c)
        assert line == json_line(c)
        assert decode(line) == c


def test_append_counts_depth_and_clear_empties_the_file(tmp_path):
    spool = Spool(tmp_path)
    assert spool.append([candle(0), candle(1)]) == 2 and spool.depth == 2
    assert spool.size_bytes > 0
    spool.clear()
    assert spool.depth == 0 and spool.size_bytes == 0
    spool.close()


def test_an_append_of_several_thousand_candles_keeps_every_one_in_order(tmp_path):
    # More than one piece of the append's encoding, passed as a one-shot iterator.
    spool = Spool(tmp_path)
    batch = [candle(m, close=f"1500.{m % 100:02d}") for m in range(2_345)]
    assert spool.append(iter(batch)) == 2_345 and spool.depth == 2_345
    assert spool.append(iter([])) == 0 and spool.depth == 2_345
    spool.close()
    again = Spool(tmp_path)
    assert [c for _, chunk in again.chunks(size=1_000) for c in chunk] == batch
    again.close()


def test_a_spool_written_before_candles_had_a_source_replays_as_live_candles(tmp_path):
    old = candle(0)
    new = replace(candle(1), source=PARTIAL)
    line = encode(old)
    assert line.endswith(b',"live"]\n')
    (tmp_path / "candles.spool").write_bytes(line[: -len(b',"live"]\n')] + b"]\n" + encode(new))
    spool = Spool(tmp_path)
    [(_, replayed)] = list(spool.chunks())
    spool.close()
    assert replayed == [old, new]
    assert [c.source for c in replayed] == [LIVE, PARTIAL]
    assert spool.torn == 0


def test_a_reopened_spool_replays_in_order_and_resumes_after_a_partial_replay(tmp_path):
    spool = Spool(tmp_path)
    spool.append([candle(m) for m in range(5)])
    spool.close()
    again = Spool(tmp_path)
    assert again.depth == 5
    (end, first), *rest = list(again.chunks(size=2))
    assert [c.bucket.minute for c in first] == [15, 16]
    again.replayed(end, len(first))  # the store took the first chunk, then went away
    assert again.depth == 3
    assert [c.bucket.minute for _, chunk in again.chunks(size=2) for c in chunk] == [17, 18, 19]
    again.close()


def test_a_line_cut_short_by_a_crash_is_dropped_and_later_appends_stay_readable(tmp_path):
    spool = Spool(tmp_path)
    spool.append([candle(0), candle(1)])
    spool.close()
    with open(tmp_path / "candles.spool", "ab") as f:
        f.write(encode(candle(2))[:30])  # killed in the middle of an append
    again = Spool(tmp_path)
    again.append([candle(3)])
    assert [c.bucket.minute for _, chunk in again.chunks() for c in chunk] == [15, 16, 18]
    assert again.torn == 0
    again.close()


def test_a_second_process_on_the_same_spool_is_refused_with_what_to_do(tmp_path):
    spool = Spool(tmp_path)
    with pytest.raises(SpoolError, match="give each daemon its own DATA_DIR"):
        Spool(tmp_path)
    spool.close()
    Spool(tmp_path).close()  # free again once the first one closed


def _stored(store, intervals) -> dict:
    """Every stored candle of SYMBOLS as the reference's dicts; closes the store."""
    try:
        rows = {}
        for sym in SYMBOLS:
            exchange, name = sym.split(":")
            for iv in intervals:
                for c in store.latest(exchange, name, iv.name, limit=10_000):
                    key, value = candle_to_dict(c)
                    rows[key] = value
        return rows
    finally:
        store.close()


@pytest.mark.slow
def test_candles_closed_while_the_database_is_down_survive_a_shutdown_and_are_written_by_the_next_start(tmp_path):
    intervals = parse_intervals("1m,15m")
    first, second = tmp_path / "tape1.jsonl", tmp_path / "tape2.jsonl"
    common = ["--broker", "sim", "--symbols", *SYMBOLS, "--intervals", "1m,15m", "--seed", "8", "--sim-speed", "60"]
    with PostgresServer() as server:
        server.start()
        dsn = server.create_database("spool")
        env = main_env(PG_CONN_STR=dsn + " connect_timeout=2", STATUS_INTERVAL_SECONDS="1")
        proc = start_main(*common, "--sim-start", SIM_START, "--sim-tape", str(first), cwd=tmp_path, env=env)
        time.sleep(3)
        server.stop()  # the rest of this run's candles, open ones included, can only go to the spool
        time.sleep(4)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "remain in the spool" in err
        assert (tmp_path / "data" / "spool" / "candles.spool").stat().st_size > 0
        status = [line for line in err.splitlines() if "status:" in line]
        assert any(" spool 0," not in line for line in status[-3:]), status  # the depth is reported

        server.start()
        stopped = max(t.receive_ts.timestamp() for t in read_tape(first)) + 0.001
        restart_at = datetime.fromtimestamp(stopped, IST).isoformat()
        proc = run_main(*common, "--sim-start", restart_at, "--duration", "4", "--sim-tape", str(second), cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stderr
        assert "the spool holds" in proc.stderr
        assert (tmp_path / "data" / "spool" / "candles.spool").stat().st_size == 0
        stored = _stored(PostgresStore(dsn), intervals)
    arrivals = read_tape(first) + read_tape(second)
    assert stored == reference_candles(arrivals, intervals)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
@pytest.mark.slow
def test_a_daemon_killed_with_sigkill_resumes_its_open_buckets_and_the_table_equals_the_reference(tmp_path, request, kind):
    intervals = parse_intervals("1m,15m")
    first, second = tmp_path / "tape1.jsonl", tmp_path / "tape2.jsonl"
    # the simulated day is an exchange holiday: the calendar would count no unwatched time in it
    # (once it has loaded, in the background); a special session opens it
    env = main_env(STATUS_INTERVAL_SECONDS="1", MARKET_CALENDAR_FILE=session_calendar(tmp_path, SIM_START[:10]))
    if kind == "postgres":
        dsn = request.getfixturevalue("pg_dsn")
        env = {**env, "PG_CONN_STR": dsn}
    common = ["--broker", "sim", "--symbols", *SYMBOLS, "--intervals", "1m,15m", "--seed", "13", "--sim-speed", "60"]
    proc = start_main(*common, "--sim-start", SIM_START, "--sim-tape", str(first), cwd=tmp_path, env=env)
    time.sleep(5.5)  # about five and a half simulated minutes: the 1m and 15m buckets are mid-way
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=20)
    # the tape is written as ticks are handed over; what the killed run never handed over, it never saw
    stopped = max(t.receive_ts.timestamp() for t in read_tape(first)) + 0.001
    restart_at = datetime.fromtimestamp(stopped, IST).isoformat()
    proc = run_main(*common, "--sim-start", restart_at, "--duration", "4", "--sim-tape", str(second), cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "resumed the open buckets from the tick journal" in proc.stderr
    if kind == "postgres":
        store = PostgresStore(dsn)
    else:
        from storage.sqlite import SQLiteStore

        store = SQLiteStore(tmp_path / "data" / "marketfeed.db")
    # the restarted run's feed came up a moment (many simulated seconds) after it started
    resumed = watched_again(store, stopped, [tuple(s.split(":")) for s in SYMBOLS])
    stored = _stored(store, intervals)  # (and closes the store)
    # rule 8: nothing was watched from the newest tick the killed run had taken until the feed was
    # up again, so a bucket that began in between counts its volume from its own first tick
    before = read_tape(first)
    seen = max(t.exchange_ts.timestamp() for t in before)
    expected = reference_candles(before + read_tape(second), intervals, unwatched=[(len(before), seen, resumed)])
    for value in expected.values():
        value.pop("source")  # the values only: where the restart's span ends is the daemon's clock
    assert len(expected) > 10
    diff = {k: (stored.get(k), expected.get(k)) for k in stored.keys() | expected.keys() if stored.get(k) != expected.get(k)}
    assert not diff, f"stored vs reference (seen {seen}, restarted {stopped}, watched again {resumed}): {diff}"
