"""The tick journal: snapshot + numbered batches, recovered after a kill."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest

from brokers.kite.protocol import KiteFrameSource
from core.ist import IST
from core.ticks import TickData
from pipeline.journal import TickJournal

KITE_CODECS = {KiteFrameSource.codec: KiteFrameSource.loads}


def tick(n: int) -> TickData:
    at = datetime(2026, 11, 24, 9, 15, n % 60, tzinfo=IST)
    return TickData("sim", "NSE", "INFY", 0, Decimal("1500.05") + n, 5, 1000 + n, None, at, at)


def seen(t: TickData) -> tuple:
    """What the aggregator reads of a tick: all the journal keeps."""
    return (t.broker, t.exchange, t.symbol, t.last_price, t.volume, t.oi, t.exchange_ts, t.receive_ts)


def test_recovery_restores_the_snapshot_and_adds_the_batches_numbered_after_it(tmp_path):
    journal = TickJournal(tmp_path)
    journal.checkpoint({"state": 0}, covered=0)
    with journal.lock:
        journal.append([tick(1)])
        journal.append([tick(2), tick(3)])
    # batch 3 was queued before the checkpoint but not yet taken by the aggregator (covered = 2)
    with journal.lock:
        journal.append([tick(4)])
    seq = journal.checkpoint({"state": 2}, covered=2)
    with journal.lock:
        journal.append([tick(5)])
    journal.release(seq)
    journal.close()  # killed here

    again = TickJournal(tmp_path)
    state, batches = again.recover()
    assert state == {"state": 2}
    assert [[t.last_price for t in b] for b in batches] == [[Decimal("1504.05")], [Decimal("1505.05")]]
    assert seen(batches[0][0]) == seen(tick(4))
    assert again.number == 4  # numbering goes on after what is on disk


def test_an_unreleased_checkpoint_is_not_trusted_and_a_record_cut_short_is_ignored(tmp_path):
    journal = TickJournal(tmp_path)
    journal.checkpoint("first", covered=0)
    with journal.lock:
        journal.append([tick(1)])
    journal.checkpoint("second", covered=1)  # its earlier candles never reached the spool
    with journal.lock:
        journal.append([tick(2)])
    journal.close()
    last = sorted(tmp_path.glob("ticks-*.jnl"))[-1]
    with open(last, "ab") as f:
        f.write(b"T\x40\x00\x00\x00partial")
    state, batches = TickJournal(tmp_path).recover()
    assert state == "first"
    assert [seen(b[0]) for b in batches] == [seen(tick(1)), seen(tick(2))]


def test_release_keeps_the_segment_before_the_checkpoint_and_drops_older_ones(tmp_path):
    journal = TickJournal(tmp_path)
    seqs = [journal.checkpoint(k, covered=0) for k in range(4)]
    journal.release(seqs[-1])
    assert [p.name for p in sorted(tmp_path.glob("ticks-*.jnl"))] == ["ticks-00000003.jnl", "ticks-00000004.jnl"]
    journal.close()
    assert TickJournal(tmp_path).recover() == (3, [])


# ---- the service's checkpoints ---------------------------------------------------------------


def _service(tmp_path, intervals: str, now: float, journal: TickJournal | None = None):
    from brokers.sim.client import SimBroker, SimClock
    from candles.model import parse_intervals
    from core.ticks import Instrument
    from pipeline.service import Service
    from storage.spool import Spool
    from storage.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "candles.db")
    store.migrate()
    broker = SimBroker(SimClock(now), seed=1)
    service = Service(
        broker, store, [Instrument("NSE", "INFY")], parse_intervals(intervals), clock=lambda: now,
        spool=Spool(tmp_path / "spool"), journal=journal,
    )  # fmt: skip
    return service, store


def test_checkpoints_fall_mid_bucket_away_from_the_closes(tmp_path):
    at_0915_10 = datetime(2026, 11, 24, 9, 15, 10, tzinfo=IST).timestamp()
    service, store = _service(tmp_path, "1m,5m", at_0915_10)
    # due at 09:16:10; 1m buckets close at hh:mm:02 (grace 2 s): moved to 09:16:32
    assert service._checkpoint_delay() == 82.0
    service.checkpoint_seconds = 30.0  # due at 09:15:40: moved to 09:16:32 too
    assert service._checkpoint_delay() == 82.0
    store.close()
    service, store = _service(tmp_path / "daily", "1d", at_0915_10)
    assert service._checkpoint_delay() == 60.0  # closes a day apart: no need to move
    store.close()


def test_a_journal_from_another_version_is_ignored_and_the_store_resumes(tmp_path, caplog):
    journal = TickJournal(tmp_path / "journal")
    journal.checkpoint({"an": "old pickled aggregator"}, covered=0)
    journal.close()
    at = datetime(2026, 11, 24, 9, 15, 10, tzinfo=IST).timestamp()
    service, store = _service(tmp_path, "1m", at, TickJournal(tmp_path / "journal"))
    assert service._recover_from_journal() is False
    assert "ignoring the tick journal" in caplog.text
    store.close()


def test_a_snapshot_given_in_pieces_is_written_as_they_come_and_recovered_whole(tmp_path):
    journal = TickJournal(tmp_path)
    written: list[bytes] = []

    def pieces():
        for part in (b"head", b"-one", b"-two"):
            written.append(part)
            yield part

    journal.checkpoint(pieces(), covered=0)
    assert written == [b"head", b"-one", b"-two"]
    with journal.lock:
        journal.append([tick(4)])
    journal.close()
    state, batches = TickJournal(tmp_path).recover()
    assert state == b"head-one-two"
    assert [seen(b[0]) for b in batches] == [seen(tick(4))]


def test_a_snapshot_cut_short_by_a_kill_is_not_trusted(tmp_path):
    journal = TickJournal(tmp_path)
    journal.checkpoint(iter([b"first"]), covered=0)
    with journal.lock:
        journal.append([tick(1)])
    journal.close()
    # killed while the next checkpoint was being written: its length is still the placeholder 0
    (tmp_path / "ticks-00000002.jnl").write_bytes(b"C\x00\x00\x00\x00" + b"\x01" * 8 + b"partial state")
    state, batches = TickJournal(tmp_path).recover()
    assert state == b"first"
    assert [seen(b[0]) for b in batches] == [seen(tick(1))]


def test_equal_prices_spelt_differently_come_back_as_they_were_spelt(tmp_path):
    journal = TickJournal(tmp_path)
    journal.checkpoint(iter([b"state"]), covered=0)
    at = datetime(2026, 11, 24, 9, 15, 1, tzinfo=IST)
    spellings = [Decimal("1.5"), Decimal("1.50"), Decimal("1.5"), Decimal("1.500")]
    with journal.lock:
        journal.append([TickData("sim", "NSE", "INFY", 0, p, 1, 10, None, at, at) for p in spellings])
    journal.close()
    _, batches = TickJournal(tmp_path).recover()
    assert [str(t.last_price) for t in batches[0]] == ["1.5", "1.50", "1.5", "1.500"]


# ---- frames journalled as frames (the Kite feed) ----------------------------------------------


def _kite_frames():
    """A Kite decoder as the daemon runs it, and frames encoded by the fake Kite server."""
    import dataclasses

    from brokers.kite.protocol import KiteDecoder
    from core.ticks import Instrument
    from testkit.fakes.kite_server import DEFAULT_INSTRUMENTS, TapeTick, encode_frame, encode_packet, is_index

    insts = {i.token: Instrument(i.exchange, i.tradingsymbol, i.token) for i in DEFAULT_INSTRUMENTS}
    decoder = KiteDecoder(insts, timed_only=True)
    epoch = int(datetime(2026, 11, 24, 9, 15, tzinfo=IST).timestamp())

    def frame(second: int, n: int = 40) -> bytes:
        ticks = [
            TapeTick(token, Decimal("100.05") + k + second, last_quantity=k + 1, volume=1000 * second + k, oi=k,
                     exchange_ts=epoch + second)
            for k, token in enumerate([t for t in insts if not is_index(t)][:n])
        ]  # fmt: skip
        return encode_frame([encode_packet(t, "full") for t in ticks])

    def without_depth(ticks):
        return [dataclasses.replace(t, depth=None) for t in ticks]

    return decoder, frame, epoch, without_depth


def test_a_frame_batch_is_kept_as_its_frame_and_replays_in_order_after_older_segments_are_gone(tmp_path):
    from core.ticks import FrameBatch

    decoder, frame, epoch, without_depth = _kite_frames()

    def batch(second: int) -> FrameBatch:
        data = frame(second)
        received = epoch + second + 0.25
        return FrameBatch(decoder.decode(data, datetime.fromtimestamp(received, IST)), decoder.source, received, data)

    journal = TickJournal(tmp_path)
    journal.checkpoint("s0", covered=0)
    delivered = [batch(1), [tick(2)], batch(3), batch(4)]
    assert len(delivered[0]) > 1 and delivered[0][0].depth is not None
    with journal.lock:
        journal.append(delivered[0])
        journal.append(delivered[1])
    journal.checkpoint("s1", covered=1)
    with journal.lock:
        journal.append(delivered[2])  # its source is written again: the older segment may be deleted
    seq = journal.checkpoint("s2", covered=2)
    with journal.lock:
        journal.append(delivered[3])
    journal.release(seq)
    journal.close()
    assert not (tmp_path / "ticks-00000001.jnl").exists()

    kinds = {p.name: [k for k, _ in TickJournal._records(p)] for p in sorted(tmp_path.glob("ticks-*.jnl"))}
    assert kinds == {"ticks-00000002.jnl": [b"S", b"K", b"F"], "ticks-00000003.jnl": [b"S", b"K", b"F"]}
    kept = [len(r) for p in sorted(tmp_path.glob("ticks-*.jnl")) for k, r in TickJournal._records(p) if k == b"F"]
    assert kept == [20 + 3 + 66 * len(b) for b in delivered[2:]]  # head, count, 66 of each packet's 184 bytes

    state, batches = TickJournal(tmp_path).recover(KITE_CODECS)
    assert state == "s2"
    assert [without_depth(b) for b in batches] == [without_depth(delivered[2]), without_depth(delivered[3])]
    # and the mixed order of rows and frames holds from an earlier snapshot
    journal = TickJournal(tmp_path)
    (tmp_path / "released").write_text("2")
    state, batches = journal.recover(KITE_CODECS)
    assert state == "s1"
    assert [len(b) for b in batches] == [len(delivered[2]), len(delivered[3])]


def test_rows_and_frames_interleave_in_their_numbers_order(tmp_path):
    from core.ticks import FrameBatch

    decoder, frame, epoch, without_depth = _kite_frames()
    journal = TickJournal(tmp_path)
    journal.checkpoint("s0", covered=0)
    delivered: list = []
    with journal.lock:
        for second in range(1, 7):
            if second % 2:
                delivered.append([tick(second), tick(second + 60)])
            else:
                data = frame(second, n=3)
                received = epoch + second + 0.5
                ticks = decoder.decode(data, datetime.fromtimestamp(received, IST))
                delivered.append(FrameBatch(ticks, decoder.source, received, data))
            journal.append(delivered[-1])
    journal.close()
    _, batches = TickJournal(tmp_path).recover(KITE_CODECS)
    assert [[seen(t) for t in b] for b in batches] == [[seen(t) for t in b] for b in delivered]


def test_a_frame_naming_a_source_its_segment_never_wrote_is_refused(tmp_path):
    import struct

    journal = TickJournal(tmp_path)
    journal.checkpoint("s0", covered=0)
    journal.close()
    payload = struct.pack("<QId", 1, 7, 0.0) + b"\x00\x00\x00"
    with open(tmp_path / "ticks-00000001.jnl", "ab") as f:
        f.write(b"F" + struct.pack("<I", len(payload)) + payload)
    with pytest.raises(ValueError, match="names source 7, not written before it"):
        TickJournal(tmp_path).recover()


def test_frames_of_a_codec_the_journal_was_not_given_are_refused_by_name(tmp_path):
    from core.ticks import FrameBatch

    decoder, frame, epoch, _ = _kite_frames()
    journal = TickJournal(tmp_path)
    journal.checkpoint("s0", covered=0)
    data = frame(1)
    with journal.lock:
        journal.append(FrameBatch(decoder.decode(data, datetime.fromtimestamp(epoch, IST)), decoder.source, epoch, data))
    journal.close()
    with pytest.raises(ValueError, match="frames of codec 'kite', which this feed cannot replay"):
        TickJournal(tmp_path).recover({})
    state, batches = TickJournal(tmp_path).recover(KITE_CODECS)
    assert state == "s0" and len(batches) == 1


def _journal_of(tmp_path, chunks) -> TickJournal:
    """A journal holding one checkpoint of ``chunks``, as a killed daemon leaves it."""
    journal = TickJournal(tmp_path / "journal")
    journal.checkpoint(chunks, covered=0)
    journal.close()
    return TickJournal(tmp_path / "journal")


def _service_with(tmp_path, journal: TickJournal, now: float, **candle_settings):
    from brokers.sim.client import SimBroker, SimClock
    from candles.model import parse_intervals
    from core.ticks import Instrument
    from pipeline.service import Service
    from storage.spool import Spool
    from storage.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "candles.db")
    store.migrate()
    service = Service(
        SimBroker(SimClock(now), seed=1), store, [Instrument("NSE", "INFY")], parse_intervals("1m"),
        clock=lambda: now, spool=Spool(tmp_path / "spool"), journal=journal, **candle_settings,
    )  # fmt: skip
    return service, store


@pytest.mark.parametrize(
    ("written", "now_set", "named"),
    [({"grace": 30.0}, {"grace": 2.0}, "CANDLE_GRACE_SECONDS"),
     ({"emit_empty": True}, {"emit_empty": False}, "CANDLE_EMIT_EMPTY")],
)  # fmt: skip
def test_a_journal_written_with_other_candle_settings_is_ignored_and_the_store_resumes(tmp_path, caplog, written, now_set, named):
    from candles import snapshot
    from candles.aggregator import CandleAggregator
    from candles.model import parse_intervals

    at = datetime(2026, 11, 24, 9, 15, 10, tzinfo=IST).timestamp()
    old = CandleAggregator(parse_intervals("1m"), lambda: at, **written)
    service, store = _service_with(tmp_path, _journal_of(tmp_path, snapshot.snapshot_chunks(old)), at, **now_set)
    try:
        assert service._recover_from_journal() is False
        assert (service.aggregator.grace, service.aggregator.emit_empty) == (
            now_set.get("grace", 2.0), now_set.get("emit_empty", False))  # fmt: skip
        assert f"tick journal in {tmp_path / 'journal'} was written for other {named}" in caplog.text
    finally:
        store.close()


def test_a_snapshot_that_fails_to_restore_for_any_reason_is_ignored_with_a_warning(tmp_path, caplog):
    import marshal
    import struct

    from candles import snapshot
    from candles.aggregator import CandleAggregator
    from candles.model import parse_intervals

    at = datetime(2026, 11, 24, 9, 15, 10, tzinfo=IST).timestamp()
    head = next(snapshot.snapshot_chunks(CandleAggregator(parse_intervals("1m"), lambda: at)))
    broken = marshal.dumps(("NSE", "INFY", [], [12345], None, [], 0, 0, None))  # lists a day it does not hold
    journal = _journal_of(tmp_path, iter([head, struct.pack("<I", len(broken)) + broken]))  # written in pieces
    service, store = _service_with(tmp_path, journal, at)
    try:
        assert service._recover_from_journal() is False
        assert f"ignoring the tick journal in {tmp_path / 'journal'}" in caplog.text and "resuming from the store" in caplog.text
    finally:
        store.close()


@pytest.mark.parametrize("grace", [float("nan"), float("inf")])
def test_the_aggregator_refuses_a_grace_that_is_not_a_finite_number(grace):
    from candles.aggregator import CandleAggregator
    from candles.model import parse_intervals

    with pytest.raises(ValueError, match="grace must be a finite number"):
        CandleAggregator(parse_intervals("1m"), lambda: 0.0, grace=grace)


def test_the_journal_is_added_again_on_its_own_clock_so_buckets_closed_before_the_kill_take_no_late_ticks(tmp_path):
    """Two and a half minutes of ticks after the checkpoint: the minutes that ended before the kill
    close as they did live, each candle once, no tick late; the minute open at the kill is partial."""
    from candles import snapshot
    from candles.aggregator import CandleAggregator
    from candles.model import PARTIAL, parse_intervals

    start = datetime(2026, 11, 24, 9, 15, 0, tzinfo=IST).timestamp()
    journal = TickJournal(tmp_path / "journal")
    journal.checkpoint(snapshot.snapshot_chunks(CandleAggregator(parse_intervals("1m"), lambda: start)), covered=0)
    with journal.lock:
        for second in range(150):
            at = datetime.fromtimestamp(start + second, IST)
            journal.append([TickData("sim", "NSE", "INFY", 0, Decimal(1500 + second % 7), 5, 1000 + second, None, at, at)])
    journal.close()  # killed at 09:17:30

    now = start + 200
    service, store = _service_with(tmp_path, TickJournal(tmp_path / "journal"), now)
    try:
        assert service._recover_from_journal() is True
        assert service.aggregator.stats.late_ticks == 0
        emitted = [c for _ in range(service._candles.qsize()) for c in service._candles.get_nowait()]
        minutes = [(c.bucket.minute, c.tick_count, c.volume, c.source) for c in emitted]
        assert minutes == [(15, 60, 59, "live"), (16, 60, 60, "live"), (17, 30, 30, PARTIAL)]
    finally:
        store.close()
