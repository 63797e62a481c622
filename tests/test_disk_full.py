"""A full disk under DATA_DIR and the SQLite file: ridden out, said out loud, and written once space returns.

Each test mounts a small tmpfs of its own and fills it with a file, as a log or a core dump would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from brokers.sim.client import SimBroker, SimClock, read_tape
from candles.model import Candle, parse_intervals
from core.ist import IST
from core.ticks import Instrument
from ops.http import HttpServer
from pipeline.journal import TickJournal
from pipeline.service import Service
from storage.base import CandleStore, StoreUnavailable
from storage.postgres import PostgresStore
from storage.spool import Spool
from storage.sqlite import SQLiteStore
from testkit.cli import main_env, start_main
from testkit.reference import candle_to_dict, reference_candles
from testkit.waiting import free_port, wait_until

START = 1_795_491_900.0  # 2026-11-24 09:15 IST
SPEED = 600.0  # a simulated minute every 0.1 wall seconds
SYMBOLS = [Instrument("NSE", "INFY"), Instrument("NSE", "TCS"), Instrument("NSE", "SBIN")]
NO_SPACE = "no space left on device (Errno 28)"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of 8 MiB mounted for this test only."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill needs root (CI runs the tests as root)")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): a container without CAP_SYS_ADMIN?")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the disk refuses: the disk is full."""
    filler = disk / "filler"
    block = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError as exc:
            assert exc.errno == 28, exc
    with open(filler, "ab", buffering=0) as f:  # the last pages' slack too
        try:
            while True:
                f.write(b"\0" * 512)
        except OSError:
            pass
    return filler


def candle(minute: int) -> Candle:
    bucket = datetime(2026, 11, 24, 9, 15, tzinfo=IST) + timedelta(minutes=minute)
    return Candle(
        "NSE", f"S{minute % 977}", "1m", bucket, Decimal("1500.00"), Decimal("1501.10"), Decimal("1499.95"),
        Decimal("1500.05"), 1234, None, 17, bucket + timedelta(seconds=1), bucket + timedelta(seconds=59), 99_000, True,
    )  # fmt: skip


# ---- the spool and the SQLite store on a full disk -----------------------------------------------


def test_an_append_the_full_disk_refuses_leaves_the_spool_as_it_was_and_later_appends_read_back_in_order(small_disk):
    spool = Spool(small_disk / "spool")
    first = [candle(m) for m in range(3)]
    spool.append(first)
    size = spool.size_bytes
    filler = fill(small_disk)
    with pytest.raises(OSError, match="No space left on device"):
        spool.append([candle(m) for m in range(10, 10_010)])
    assert (spool.size_bytes, spool.depth) == (size, 3)  # nothing of the refused batch counts or stays
    filler.unlink()
    later = [candle(20_000), candle(20_001)]
    assert spool.append(later) == 2
    assert [c for _, chunk in spool.chunks() for c in chunk] == first + later
    assert spool.torn == 0
    spool.close()


def test_sqlite_on_a_full_disk_is_unavailable_for_now_not_a_refused_candle_and_writes_once_space_returns(small_disk):
    store = SQLiteStore(small_disk / "candles.db")
    store.migrate()
    batch = [candle(m) for m in range(20_000)]
    filler = fill(small_disk)
    with pytest.raises(StoreUnavailable, match="database or disk is full"):
        store.upsert(batch)
    filler.unlink()
    store.upsert(batch)
    assert len(store.latest("NSE", "S5", "1m", limit=100)) == len([c for c in batch if c.symbol == "S5"])
    store.close()


# ---- the daemon's service on a full disk ---------------------------------------------------------


def _get(port: int, path: str) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _healthz(port: int) -> tuple[int, dict]:
    status, body = _get(port, "/healthz")
    return status, json.loads(body)


def _metric(port: int, name: str) -> float:
    _, body = _get(port, "/metrics")
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} not in /metrics")


def _stored(store: CandleStore, intervals) -> dict:
    rows = {}
    for inst in SYMBOLS:
        for iv in intervals:
            for c in store.latest(inst.exchange, inst.symbol, iv.name, limit=10_000):
                key, value = candle_to_dict(c)
                rows[key] = value
    return rows


def _ride_out_a_full_disk(store: CandleStore, disk: Path, tape: Path) -> None:
    """The simulator into ``store`` with the spool and the journal on ``disk``: fill the disk,
    check what every channel says, free it, and check that the store ends as the ticks say."""
    intervals = parse_intervals("1m")
    clock = SimClock(START, SPEED)
    broker = SimBroker(clock, seed=3, tick_rate=1.0, tape_path=tape)
    journal = TickJournal(disk / "journal")
    service = Service(
        broker, store, SYMBOLS, intervals, clock=clock, spool=Spool(disk / "spool"), journal=journal
    )  # fmt: skip
    metrics = HttpServer(service.health, port=0)
    service.start()
    metrics.start()
    stats = service.writer.stats
    try:
        wait_until(lambda: stats.candles_written >= 6, 20.0, "the first candles written")
        filler = fill(disk)
        wait_until(lambda: _healthz(metrics.port)[0] == 503, 20.0, "/healthz 503 on a full disk")
        wait_until(lambda: service.health().candles_in_memory >= 30, 20.0, "ten simulated minutes of candles in memory")
        status, body = _healthz(metrics.port)
        assert status == 503, body
        (problem,) = [p for p in body["problems"] if p.startswith("spool ")]
        assert f"spool {disk / 'spool' / 'candles.spool'}: {NO_SPACE}" in problem
        assert "candles wait in memory, limit 100000" in problem
        assert any(p.startswith(f"tick journal {disk / 'journal'}: {NO_SPACE}") for p in body["problems"]), body
        assert service.health().state == "degraded"
        assert service.health().heartbeat(0.0)["candles_in_memory"] >= 30
        assert _metric(metrics.port, "marketfeed_storage_fault") == 1
        assert _metric(metrics.port, "marketfeed_candles_waiting_in_memory") >= 30
        assert service.writer.is_alive()

        written = stats.candles_written
        filler.unlink()
        wait_until(lambda: stats.in_memory == 0 and stats.candles_written > written + 30, 20.0, "writing resumed")
        wait_until(lambda: _healthz(metrics.port)[0] == 200, 20.0, "/healthz ok again")
        assert _metric(metrics.port, "marketfeed_storage_fault") == 0
        assert stats.dropped == stats.rejected_candles == 0
    finally:
        metrics.stop()
        assert service.stop(), "the store did not take every candle at shutdown"
        journal.close()
        service.spool.close()
    assert _stored(store, intervals) == reference_candles(read_tape(tape), intervals)


def test_sqlite_and_spool_on_a_disk_that_fills_up_degrade_then_write_every_candle_once_space_returns(small_disk, tmp_path):
    store = SQLiteStore(small_disk / "candles.db")
    store.migrate()
    try:
        _ride_out_a_full_disk(store, small_disk, tmp_path / "tape.jsonl")
    finally:
        store.close()


def test_postgres_with_the_spool_on_a_disk_that_fills_up_degrades_then_writes_every_candle(small_disk, tmp_path, pg_dsn):
    store = PostgresStore(pg_dsn)
    store.migrate()
    try:
        _ride_out_a_full_disk(store, small_disk, tmp_path / "tape.jsonl")
    finally:
        store.close()


# ---- the daemon as a process ----------------------------------------------------------------------


@pytest.mark.slow
def test_the_daemon_on_a_full_disk_answers_503_naming_it_and_writes_again_once_space_returns(small_disk, tmp_path):
    tape = tmp_path / "tape.jsonl"
    port = free_port()
    env = main_env(
        DATA_DIR=str(small_disk / "data"), SQLITE_PATH=str(small_disk / "marketfeed.db"), METRICS_PORT=str(port),
        STATUS_INTERVAL_SECONDS="1",
    )  # fmt: skip
    proc = start_main(
        "--broker", "sim", "--symbols", *(i.key for i in SYMBOLS), "--intervals", "1m", "--seed", "4",
        "--sim-speed", "120", "--sim-start", "2026-11-24T09:15:00+05:30", "--sim-tape", str(tape),
        cwd=tmp_path, env=env,
    )  # fmt: skip
    try:
        wait_until(lambda: _answers(port) and _metric(port, "marketfeed_candles_written_total") >= 3, 30.0, "candles")
        filler = fill(small_disk)
        wait_until(lambda: _healthz(port)[0] == 503, 20.0, "/healthz 503 on a full disk")
        assert any(NO_SPACE in p for p in _healthz(port)[1]["problems"]), _healthz(port)
        wait_until(lambda: _metric(port, "marketfeed_candles_waiting_in_memory") >= 6, 20.0, "candles in memory")
        written = _metric(port, "marketfeed_candles_written_total")
        filler.unlink()
        wait_until(lambda: _metric(port, "marketfeed_candles_written_total") > written + 6, 20.0, "writing resumed")
        wait_until(lambda: _healthz(port)[0] == 200, 20.0, "/healthz 200 again")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    assert f"{NO_SPACE}: closed candles wait in memory" in err
    degraded = [line.split("; DEGRADED: ", 1)[1] for line in err.splitlines() if "status: " in line and "; DEGRADED: " in line]
    assert any(f"spool {small_disk / 'data' / 'spool'}" in line for line in degraded), err  # the status line says it too
    assert "writable again" in err
    intervals = parse_intervals("1m")
    store = SQLiteStore(small_disk / "marketfeed.db")
    try:
        assert _stored(store, intervals) == reference_candles(read_tape(tape), intervals)
    finally:
        store.close()


def _answers(port: int) -> bool:
    try:
        _get(port, "/healthz")
    except OSError:
        time.sleep(0.1)
        return False
    return True


def test_a_journal_on_a_full_disk_degrades_until_a_checkpoint_covers_the_ticks_it_missed(small_disk, tmp_path):
    """The spool and the store have room; only the tick journal's disk is full. Ticks keep flowing,
    health names the journal (a kill now would lose open buckets' ticks), and once the disk takes
    writes again a checkpoint covers the missed batches and health is clear by itself."""
    intervals = parse_intervals("1m")
    clock = SimClock(START, SPEED)
    store = SQLiteStore(tmp_path / "candles.db")
    store.migrate()
    journal = TickJournal(small_disk / "journal")
    service = Service(
        SimBroker(clock, seed=5, tick_rate=1.0), store, SYMBOLS, intervals, clock=clock,
        spool=Spool(tmp_path / "spool"), journal=journal,
    )  # fmt: skip
    service.start()
    try:
        wait_until(lambda: service.stats.ticks > 0, 10.0, "the first ticks")
        filler = fill(small_disk)
        wait_until(lambda: service.health().journal_fault is not None, 10.0, "the journal's fault in health")
        health = service.health()
        assert health.state == "degraded"
        (problem,) = [p for p in health.problems if p.startswith("tick journal ")]
        assert problem.startswith(f"tick journal {small_disk / 'journal'}: {NO_SPACE}: a kill now would lose"), problem
        ticks = service.stats.ticks
        wait_until(lambda: service.stats.ticks > ticks + 30, 10.0, "ticks flowing on")
        assert service.writer.stats.spool_fault is None  # the spool has room: only the journal is named

        filler.unlink()
        wait_until(lambda: service.health().journal_fault is None, 20.0, "a checkpoint to cover the missed ticks")
        assert service.health().state == "running"
    finally:
        assert service.stop()
        journal.close()
        service.spool.close()
        store.close()


def test_candles_beyond_the_memory_limit_drop_the_oldest_and_say_so_and_the_rest_are_written(small_disk, tmp_path, caplog):
    import queue

    from pipeline.writer import Writer

    store = SQLiteStore(tmp_path / "candles.db")  # the store's disk has room; the spool's is full
    store.migrate()
    candles: queue.Queue = queue.Queue()
    writer = Writer(store, Spool(small_disk / "spool"), candles, memory_limit=5)
    filler = fill(small_disk)
    writer.start()
    try:
        for m in range(8):
            candles.put([candle(m)])
        # the count of drops goes up before the count in memory is set: wait for both
        wait_until(
            lambda: writer.stats.dropped == 3 and writer.stats.in_memory == 5, 20.0, "the 3 oldest candles dropped beyond the limit"
        )
        assert writer.stats.candles_written == 0
        assert "5 closed candles wait in memory, the limit: the oldest are dropped" in caplog.text

        filler.unlink()
        wait_until(lambda: writer.stats.candles_written == 5, 20.0, "the candles kept in memory written")
        assert "(3 were dropped beyond the limit of 5)" in caplog.text
    finally:
        candles.put(None)
        writer.join(10)
        writer.spool.close()
    stored = {c.symbol for m in range(8) for c in store.latest("NSE", f"S{m}", "1m", limit=10)}
    store.close()
    assert stored == {f"S{m}" for m in range(3, 8)}  # the oldest went, the newest were kept
