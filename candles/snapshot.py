"""The aggregator's state as bytes and back: what the tick journal's checkpoints keep.

Marshalled plain tuples (prices as text), one chunk per symbol after a head: many times faster to
write and read than pickling the object graph, and written out piece by piece so that the whole
state never exists twice in memory. A snapshot written by another ``VERSION`` is refused.
"""

from __future__ import annotations

import marshal
import struct
from array import array
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

from candles.aggregator import (
    AggregatorStats,
    CandleAggregator,
    _Bucket,
    _compiled,  # the compiled aggregator's module (None on the pure path)
    _Series,
    _SeriesDay,
    _shared,
    _SymDay,
)
from candles.model import Interval

VERSION = 6  # 5: candle provenance (partial buckets, unwatched spans); 6: spans of keys not seen yet
_CHUNK = struct.Struct("<I")  # length of each marshalled chunk of a snapshot


def snapshot(agg: CandleAggregator) -> bytes:
    """The whole state as bytes, for ``restore``: marshalled plain tuples (prices as text), many
    times faster to write and read than pickling the object graph. Changes nothing."""
    return b"".join(snapshot_chunks(agg))


def snapshot_chunks(agg: CandleAggregator, state: Callable[[Any, Any], tuple] | None = None) -> Iterator[bytes]:
    """``snapshot()`` in pieces, one per symbol after a head, to be written out as they come:
    the whole state never exists twice in memory (at 9,000 symbols it is about 18 MB, and the
    copies of it left the process's heap larger for good). Do not touch the aggregator until
    the iterator is exhausted. ``state``: what writes one symbol (default: ``symbol_state``, or its
    compiled twin for a compiled aggregator)."""
    st = agg.stats
    head = (
        VERSION, [iv.name for iv in agg.intervals], agg._grace, agg._horizon, agg._emit_empty,
        agg._memory, agg._prune_at, agg._watch_from, agg._pending,
        (st.ticks, st.trades, st.quotes, st.late_ticks, st.dropped_ticks, st.volume_resets, st.open_buckets),
    )  # fmt: skip
    pack = _CHUNK.pack
    chunk = marshal.dumps(head)
    yield pack(len(chunk)) + chunk
    if state is None:
        state = _compiled.symbol_state if _compiled is not None and getattr(type(agg), "compiled", False) else symbol_state
    no_day = agg._no_day
    for sym in agg._symbols.values():
        # marshalled per symbol: only one symbol's tuples exist at a time (at 9,000 symbols the
        # whole state as tuples took about 190 MB for a moment)
        chunk = marshal.dumps(state(sym, no_day))
        yield pack(len(chunk)) + chunk


def symbol_state(sym: Any, no_day: Any) -> tuple:
    """One symbol's state as the snapshot's plain tuples (prices as text). The compiled
    aggregator's state is written by the compiled twin of this function (candles/_speedups.pyx),
    which gives the same tuples."""
    sym_days = {id(sd): sd for sd in sym.days.values()}
    series = []
    for ser in sym.series:
        sdays = {id(x): x for x in ser.days.values()}
        for b in ser.buckets.values():
            if type(b) is not bytes:  # a packed one's is ser.days[its day]
                sdays.setdefault(id(b.sday), b.sday)
        for x in sdays.values():
            sym_days.setdefault(id(x.sym_day), x.sym_day)
        sday_index = {k: i for i, k in enumerate(sdays)}
        listed_sdays = {id(x) for x in ser.days.values()}
        buckets = [
            (start, b) if type(b) is bytes else
            (b.start, b.day, sday_index[id(b.sday)],
             (str(b.open), str(b.high), str(b.low), str(b.close)) if b.count else None,
             b.first_ts, b.last_ts, b.count, b.maxcum, b.carry, b.frozen_cum, b.oi, b.oi_ts, b.closed, b.emitted_volume,
             b.partial, b.base)
            for start, b in ser.buckets.items()
        ]  # fmt: skip
        sday_rows = []
        for x in sdays.values():
            lt = x.last_trade
            if lt is None:
                last = None
            elif ser.buckets.get(lt.start) is lt:
                last = lt.start
            else:  # evicted, still the gap filler's reference: keep what it reads
                last = (lt.start, lt.maxcum, lt.frozen_cum, str(lt.close), lt.oi)
            sday_rows.append((id(x.sym_day), x.evicted_max, x.baseline, last, id(x) in listed_sdays))
        series.append((sday_rows, buckets, None if ser.cur is None else ser.cur.start, ser.gap))
    day_rows = [
        (
            key,
            sd.day,
            sd.latest_ts,
            sd.run_max,
            (sd.hist.tolist(), sd.pos),
            sd.floor,
            sd.baseline,
            sd.plain_ts,
            None if sd.plain_price is None else str(sd.plain_price),
        )
        for key, sd in sym_days.items()
    ]
    listed = [id(sd) for sd in sym.days.values()]
    acc = (
        (sym.count, (str(sym.open), str(sym.high), str(sym.low), str(sym.close)) if sym.count else None,
         sym.first_ts, sym.last_ts, sym.maxcum, sym.oi, sym.oi_ts)
        if sym.dirty else None
    )  # fmt: skip
    cur = id(sym.cur) if sym.cur is not no_day else None
    return (sym.exchange, sym.symbol, day_rows, listed, cur, series, sym.lo, sym.hi, acc, sym.watch_from, sym.gap_since)


def restore(data: bytes, clock: Callable[[], float], kind: type[CandleAggregator] | None = None) -> CandleAggregator:
    """An aggregator in the state ``snapshot`` saved. Raises ``ValueError`` for anything else
    (e.g. a snapshot of another format version). ``kind``: the class to restore into (default:
    ``CandleAggregator``, compiled when built); either path restores what either wrote."""
    if not isinstance(data, bytes):
        raise ValueError(f"not a snapshot of the aggregator but a {type(data).__name__}")
    size = _CHUNK.size
    chunks = []
    pos = 0
    while pos < len(data):
        if pos + size > len(data):
            raise ValueError("not a snapshot of the aggregator (cut short)")
        (length,) = _CHUNK.unpack_from(data, pos)
        pos += size + length
        if pos > len(data):
            raise ValueError("not a snapshot of the aggregator (cut short)")
        chunks.append(data[pos - length : pos])
    try:
        head = marshal.loads(chunks[0]) if chunks else None
    except (EOFError, TypeError, ValueError) as exc:
        raise ValueError(f"not a snapshot of the aggregator ({exc})") from None
    if not isinstance(head, tuple) or not head or head[0] != VERSION:
        raise ValueError("the snapshot was written by another version of the aggregator")
    symbols = chunks[1:]
    _, names, grace, horizon, emit_empty, memory, prune_at, watch_from, pending, counters = head
    agg = (kind or CandleAggregator)(
        [Interval.parse(n) for n in names], clock, grace=grace, emit_empty=emit_empty, revision_horizon=horizon,
        reorder_memory=memory,
    )  # fmt: skip
    agg._prune_at = prune_at
    agg._watch_from = watch_from
    agg._pending = pending
    agg.stats = AggregatorStats(*counters)
    closing: dict[float, list[_Bucket]] = {}
    evicting: dict[float, list[_Series]] = {}
    to_pack = agg._to_pack
    day_type = agg._day_type
    bucket_type = agg._bucket_type
    new = bucket_type.__new__
    decimals: dict[str, Decimal] = {}  # one object per price, as the decoders share them

    def dec(text: str) -> Decimal:
        value = decimals.get(text)
        if value is None:
            value = decimals[text] = Decimal(text)
        return value

    for raw in symbols:
        exchange, symbol, day_rows, listed, cur, series, win_lo, win_hi, acc, sym_watch_from, gap_since = marshal.loads(raw)
        sym = agg._new_symbol(exchange, symbol)
        sym.watch_from, sym.gap_since = sym_watch_from, gap_since
        sym_days: dict[int, _SymDay] = {}
        for key, day, latest_ts, run_max, (hist, pos), floor, baseline, plain_ts, plain_price in day_rows:
            sd = sym_days[key] = day_type(day, 0)
            sd.hist = array("d", hist)
            sd.pos = pos
            sd.latest_ts, sd.run_max, sd.floor, sd.baseline = latest_ts, run_max, floor, baseline
            sd.plain_ts, sd.plain_price = plain_ts, None if plain_price is None else dec(plain_price)
        for key in listed:
            sym.days[sym_days[key].day] = sym_days[key]
        sym.cur = agg._no_day if cur is None else sym_days[cur]
        for ser, (sday_rows, buckets, cur_start, gap) in zip(sym.series, series):
            ser.gap = gap
            sdays = []
            lasts = []
            for sym_day_key, evicted_max, baseline, last, is_listed in sday_rows:
                x = _SeriesDay(sym_days[sym_day_key])
                x.evicted_max, x.baseline = evicted_max, baseline
                if is_listed:
                    ser.days[x.sym_day.day] = x
                sdays.append(x)
                lasts.append(last)
            width = ser.width
            for row in buckets:
                if len(row) == 2:  # a packed closed bucket, kept as it is
                    start, rec = row
                    start = _shared(start)
                    ser.buckets[start] = rec
                    evicting.setdefault(_shared(start + width) + grace + horizon, []).append(ser)
                    continue
                (start, day, sday, ohlc, first_ts, last_ts, count, maxcum, carry, frozen_cum, oi, oi_ts, closed,
                 emitted, partial, base) = row  # fmt: skip
                b = new(bucket_type)
                start = _shared(start)
                b.series, b.start, b.end, b.day, b.sday = ser, start, _shared(start + width), day, sdays[sday]
                if ohlc is None:
                    b.open = b.high = b.low = b.close = None
                else:
                    b.open, b.high, b.low, b.close = dec(ohlc[0]), dec(ohlc[1]), dec(ohlc[2]), dec(ohlc[3])
                b.first_ts, b.last_ts, b.count = first_ts, last_ts, count
                b.maxcum, b.carry, b.frozen_cum, b.oi, b.oi_ts = maxcum, carry, frozen_cum, oi, oi_ts
                b.closed, b.emitted_volume, b.partial, b.base = closed, emitted, partial, base
                ser.buckets[start] = b
                at = b.end + grace
                if closed:
                    evicting.setdefault(at + horizon, []).append(ser)
                    to_pack.append(b)
                else:
                    closing.setdefault(at, []).append(b)
            for x, last in zip(sdays, lasts):
                if isinstance(last, tuple):
                    lt = new(bucket_type)
                    lt.series = ser
                    lt.start, lt.maxcum, lt.frozen_cum, close, lt.oi = last
                    lt.close = dec(close)
                    x.last_trade = lt
                elif last is not None:
                    x.last_trade = ser.buckets[last]
            ser.cur = None if cur_start is None else ser.buckets.get(cur_start)
        sym.lo, sym.hi = win_lo, win_hi
        if acc is not None:
            sym.count, ohlc, sym.first_ts, sym.last_ts, sym.maxcum, sym.oi, sym.oi_ts = acc
            if ohlc is not None:
                sym.open, sym.high, sym.low, sym.close = dec(ohlc[0]), dec(ohlc[1]), dec(ohlc[2]), dec(ohlc[3])
            sym.dirty = True
            agg._dirty.append(sym)
    agg._closing, agg._evicting = closing, evicting
    agg._closing_heap = sorted(closing)
    agg._evicting_heap = sorted(evicting)
    return agg
