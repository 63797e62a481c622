"""The compiled aggregator (candles/_speedups.pyx) against the pure-Python reference.

Both are driven with the same random operations: batches of ticks (several symbols, out of order
and late, quote-only repeats, ticks without volume, a volume that falls (a new trading day), ticks
across IST midnight and beyond the revision horizon), clock advances, unwatched spans, dropped
connections, flushes and snapshot round trips, the snapshot written by one path and restored by
the other. Every candle emitted, in order, the statistics and the final flush must be identical.
"""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from candles import snapshot
from candles.aggregator import CandleAggregator, PythonCandleAggregator, _pack_bucket
from candles.model import parse_intervals
from core import accel
from core.ist import IST
from core.ticks import TickData

pytestmark = pytest.mark.skipif(
    not CandleAggregator.compiled,
    reason=f"the compiled aggregator is not in use ({accel.report()[1]}); run scripts/bootstrap.sh",
)

DAY0 = datetime(2024, 1, 15, 23, 45, tzinfo=IST).timestamp()  # 15 minutes before IST midnight
SYMBOLS = (("NSE", "INFY"), ("NSE", "TCS"), ("BSE", "INFY"), ("NFO", "NIFTY24JANFUT"))
PRICES = tuple(Decimal(p) for p in ("99.95", "100", "100.00", "100.05", "1E+2", "101.5", "98", "0.05", "2500.10"))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


_seconds: dict[int, datetime] = {}


def _at(offset: int) -> datetime:
    """One shared datetime per second, as the decoders hand them over."""
    dt = _seconds.get(offset)
    if dt is None:
        dt = _seconds[offset] = datetime.fromtimestamp(DAY0 + offset, IST)
    return dt


ticks = st.builds(
    lambda key, at, price, volume, oi: (key, at, price, volume, oi),
    st.sampled_from(SYMBOLS),
    # seconds from the clock's time: mostly the last few (same-second ties), some late, some far
    # behind the revision horizon, a few ahead
    st.one_of(st.integers(-3, 1), st.integers(-400, 30), st.integers(-2000, -900)),
    st.sampled_from(PRICES),
    # the step from the symbol's last cumulative volume: up (a trade), 0 (a quote), down (a new
    # trading day, or an old tick); None: no volume (an index); or a jump to a huge volume
    st.one_of(st.integers(1, 50), st.just(0), st.integers(-60, -1), st.none(), st.sampled_from([2**53 - 1, 2**64])),
    st.one_of(st.none(), st.integers(0, 10**6)),
)

operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.lists(ticks, min_size=1, max_size=40)),
        st.tuples(st.just("advance"), st.integers(1, 400)),
        st.tuples(st.just("unwatched"), st.integers(-120, 0), st.integers(0, 60), st.booleans()),
        st.tuples(st.just("went_down"), st.integers(-90, 0)),
        st.tuples(st.just("flush")),
        st.tuples(st.just("snapshot"), st.booleans()),
    ),
    min_size=3,
    max_size=40,
)


class Twin:
    """One path's aggregator, its clock, and everything it returned."""

    def __init__(self, kind: type, intervals: str, emit_empty: bool) -> None:
        self.kind = kind
        self.clock = Clock(DAY0)
        self.agg = kind(parse_intervals(intervals), self.clock, emit_empty=emit_empty, reorder_memory=4)
        self.out: list = []


def _spelled(candles: list) -> list[tuple]:
    """Candles field by field, prices as their exact spelling (100.50 is not 100.5 in the store)."""
    return [tuple(str(v) if isinstance(v, Decimal) else v for v in (getattr(c, f.name) for f in fields(c))) for c in candles]


def _tick(key: tuple[str, str], at: int, price: Decimal, volume: int | None, oi: int | None) -> TickData:
    exchange, symbol = key
    return TickData("test", exchange, symbol, 0, price, 1, volume, oi, _at(at), _at(at))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    ops=operations,
    intervals=st.sampled_from(["1m", "1m,5m", "1m,5m,15m,1h", "15m,1d"]),
    emit_empty=st.booleans(),
)
def test_compiled_and_pure_aggregators_emit_the_same_candles(ops, intervals, emit_empty) -> None:
    twins = [Twin(PythonCandleAggregator, intervals, emit_empty), Twin(CandleAggregator, intervals, emit_empty)]
    base = 0
    volumes: dict[tuple[str, str], int] = {}
    for op in ops:
        kind = op[0]
        if kind == "add":
            batch = []
            for key, at, price, step, oi in op[1]:
                if step is None:
                    volume = None
                else:
                    volume = step if step > 2**52 else max(0, volumes.get(key, 1000) + step)
                    volumes[key] = volume
                batch.append(_tick(key, base + at, price, volume, oi))
        for twin in twins:
            now = DAY0 + base
            twin.clock.now = now
            if kind == "add":
                twin.out.append(("add", _spelled(twin.agg.add(batch))))
            elif kind == "advance":
                twin.clock.now = now + op[1]
                twin.out.append(("advance", _spelled(twin.agg.advance())))
            elif kind == "unwatched":
                keys = None if op[3] else [SYMBOLS[0], SYMBOLS[2]]
                twin.agg.unwatched(now + op[1] - 30, now + op[2], keys)
            elif kind == "went_down":
                twin.out.append(("went_down", _spelled(twin.agg.went_down(now + op[1], [SYMBOLS[0], SYMBOLS[3]]))))
            elif kind == "flush":
                twin.out.append(("flush", _spelled(twin.agg.flush())))
            else:  # a snapshot, restored by this path or by the other one
                data = snapshot.snapshot(twin.agg)
                # the compiled state is written by the compiled twin of symbol_state: the same bytes
                assert data == b"".join(snapshot.snapshot_chunks(twin.agg, snapshot.symbol_state))
                other = twins[1].kind if twin.kind is twins[0].kind else twins[0].kind
                twin.agg = snapshot.restore(data, twin.clock, other if op[1] else twin.kind)
        if kind == "advance":
            base += op[1]
    for twin in twins:
        twin.out.append(("final", _spelled(twin.agg.flush())))
    pure, compiled = twins
    assert compiled.out == pure.out
    assert compiled.agg.stats == pure.agg.stats
    assert compiled.agg.last_seen() == pure.agg.last_seen()
    assert sorted(compiled.agg.keys()) == sorted(pure.agg.keys())
    assert _retained(compiled.agg) == _retained(pure.agg)


def _retained(agg) -> dict:
    """Every retained bucket: packed records as they are, objects as the reference would pack them."""
    state = {}
    for key, sym in agg._symbols.items():
        for ser in sym.series:
            for start, b in ser.buckets.items():
                state[key, ser.name, start] = ("record", b) if type(b) is bytes else ("object", b.closed, _pack_bucket(b))
    return state


def test_the_compiled_packing_writes_the_reference_record() -> None:
    from candles import _speedups

    clock = Clock(DAY0)
    agg = CandleAggregator(parse_intervals("1m,5m"), clock)
    agg.add([_tick(SYMBOLS[0], 1, PRICES[1], 1000, 5), _tick(SYMBOLS[0], 2, PRICES[3], 1010, None)])
    agg.add([_tick(SYMBOLS[1], 3, PRICES[4], None, 7), _tick(SYMBOLS[1], 4, PRICES[2], None, 2**70)])
    clock.now = DAY0 + 70
    agg.advance()
    buckets = [b for sym in agg._symbols.values() for ser in sym.series for b in ser.buckets.values() if type(b) is not bytes]
    assert len(buckets) == 4
    records = [_speedups.pack_bucket(b) for b in buckets]
    assert records == [_pack_bucket(b) for b in buckets]
    assert None in records and sum(r is not None for r in records) >= 2  # an OI beyond 64 bits stays an object


def test_a_snapshot_restores_into_either_path_and_both_go_on_alike() -> None:
    """A fixed example of the round trip the property test draws: ticks mid-bucket, a snapshot by
    the compiled path restored by the pure one and the other way round, then the same ticks."""
    first = [_tick(SYMBOLS[0], 10, PRICES[1], 1000, 5), _tick(SYMBOLS[0], 20, PRICES[3], 1010, 6)]
    then = [_tick(SYMBOLS[0], 30, PRICES[0], 1030, 7), _tick(SYMBOLS[0], 70, PRICES[5], 1050, 8)]
    results = []
    for writer, reader in ((CandleAggregator, PythonCandleAggregator), (PythonCandleAggregator, CandleAggregator)):
        clock = Clock(DAY0 + 25)
        agg = writer(parse_intervals("1m,5m"), clock)
        agg.add(first)
        restored = snapshot.restore(snapshot.snapshot(agg), clock, reader)
        assert type(restored) is reader
        clock.now = DAY0 + 75
        restored.add(then)
        clock.now = DAY0 + 200
        results.append((restored.advance(), restored.flush()))
    assert results[0] == results[1]
    closed, _ = results[0]
    minute = next(c for c in closed if c.interval == "1m" and c.bucket == datetime.fromtimestamp(DAY0, IST))
    assert (minute.open, minute.close, minute.volume, minute.tick_count) == (PRICES[1], PRICES[0], 30, 3)
