"""Turn ticks into OHLCV candles for several intervals at once (ARCHITECTURE.md, "Candle rules").

Pure logic: no I/O, no threads, no logging on the tick path. Time comes from the clock the caller
injects (float epoch seconds); a tick is placed by its exchange timestamp.

How the rules map onto the state kept here:

* Per symbol: one ``_SymDay`` per IST day classifies ticks as trades or quote-only updates
  (rule 4) from the cumulative day volume, and notices a drop in that volume (rule 3: the feed
  started a new trading day).
* Per symbol and interval: one ``_Series`` holds the retained buckets (open ones, and closed
  ones younger than the revision horizon so late ticks can revise them, rule 6) and, per day,
  the little that survives eviction (``_SeriesDay``).
* Volume of a bucket = max cumulative volume seen in it minus the max seen in earlier buckets of
  the same day (or the day's baseline). It is computed when a candle is emitted, not per tick.
* Per symbol, ticks that fall inside the current bucket of every interval (nearly all of them)
  are folded into one accumulator on the ``_Symbol`` (the same OHLC / count / max-volume / OI
  state a bucket keeps) instead of into each interval's bucket. The accumulator is merged into
  those buckets (``_drain``) before anything reads them: before a tick that falls outside that
  window, before a volume reset, and in ``advance()``/``flush()``. The merge is exact: every
  field is a max, min, sum or "latest by exchange time, last arrival on ties".
* Closing is driven by ``advance()``: buckets are filed by their close time (bucket end + grace)
  in a heap of distinct times; since buckets share grid boundaries, one heap entry closes
  thousands of buckets.
* A closed bucket is kept packed (``_pack_bucket``: one ``bytes`` object of about 140 bytes instead
  of an object pointing at half a dozen number objects, about 290 bytes) for the rest of its
  revision horizon: three quarters of the retained buckets are such closed 1m buckets. Packing
  happens a few thousand buckets per ``advance()`` after their candles went out; the series' newest
  bucket and the gap filler's reference stay objects. A late tick that lands in a packed bucket
  unpacks it (``_inflate``) and it is packed again later.

Documented approximations (exact for any feed whose ticks are reordered by fewer than
``reorder_memory`` positions per symbol, and whose buckets hold one IST day each):

* Out-of-order classification remembers the last ``reorder_memory`` (ts, volume) arrivals per
  symbol-day; older arrivals are folded into a floor treated as older than any tick.
* A bucket spanning IST midnight (e.g. 1h 23:15-00:15) keeps the volume of the earlier day as a
  carry when a tick of the later day arrives; a tick of the earlier day arriving after that
  still moves price and OI but adds no volume.
"""

from __future__ import annotations

import heapq
import struct
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from candles.model import LIVE, PARTIAL, Candle, Interval, new_candle
from core import accel
from core.ist import IST, ist_date

__all__ = ["AggregatorStats", "CandleAggregator", "PythonCandleAggregator", "TickLike"]

_DAY = 86_400
_IST_OFFSET = 19_800
_NO_VOLUME = -1  # "no cumulative volume seen": the feed's volumes are never negative
_INF = float("inf")
_EMPTY_ARRIVAL = (_INF, _NO_VOLUME)  # a free slot of the arrivals ring: later than any tick, no volume


class TickLike(Protocol):
    """What the aggregator reads from a tick (``brokers.base.TickData`` fits; candles must not
    import brokers)."""

    @property
    def exchange(self) -> str: ...

    @property
    def symbol(self) -> str: ...

    @property
    def last_price(self) -> Decimal: ...

    @property
    def volume(self) -> int | None:  # cumulative volume of the day; None when the feed has none
        ...

    @property
    def oi(self) -> int | None: ...

    @property
    def exchange_ts(self) -> datetime:  # timezone-aware
        ...


@dataclass(slots=True)
class AggregatorStats:
    """Counters since start (``open_buckets`` is a gauge)."""

    ticks: int = 0
    trades: int = 0
    quotes: int = 0
    late_ticks: int = 0  # ticks that landed in a bucket that had already closed (and revised it)
    dropped_ticks: int = 0  # ticks whose bucket closed more than revision_horizon ago
    volume_resets: int = 0  # cumulative volume fell within an IST day: the feed began a new day
    open_buckets: int = 0


class _SymDay:
    """Trade classification state of one symbol on one IST day."""

    __slots__ = ("day", "start", "end", "latest_ts", "run_max", "hist", "pos", "floor", "baseline", "plain_ts", "plain_price")

    def __init__(self, day: int, memory: int = 1) -> None:
        self.day = day
        self.start = day * _DAY - _IST_OFFSET  # epoch range of the IST day, for a cheap check
        self.end = self.start + _DAY
        self.latest_ts = -_INF
        self.run_max = _NO_VOLUME  # max volume of the day (since the last reset)
        # the last ``memory`` arrivals, for out-of-order ticks: a ring of (exchange ts, volume) pairs
        # in one flat array of floats (no object per tick; volumes stay exact below 2**53)
        self.hist = array("d", _EMPTY_ARRIVAL * memory)
        self.pos = 0  # where the next arrival goes (an even index)
        self.floor: float = _NO_VOLUME  # max volume of arrivals that fell out of ``hist``
        self.baseline: int | None = None  # first volume seen that day: what traded before we started
        self.plain_ts = -_INF  # exchange ts and price of the last tick without volume
        self.plain_price: object = None


_NO_DAY = _SymDay(-(10**9))  # sentinel: contains no timestamp
_NO_DAY.end = _NO_DAY.start


class _SeriesDay:
    """What one (symbol, interval) remembers about a day beyond its retained buckets."""

    __slots__ = ("sym_day", "evicted_max", "baseline", "last_trade")

    def __init__(self, sym_day: _SymDay) -> None:
        self.sym_day = sym_day
        self.evicted_max = _NO_VOLUME  # max volume of this day's buckets already evicted
        self.baseline: int | None = None  # set by seed(): keeps the stored candle's volume
        self.last_trade: _Bucket | None = None  # newest bucket with a trade (emit_empty fills)


class _Series:
    __slots__ = ("symbol", "name", "width", "offset", "buckets", "days", "cur", "gap")

    def __init__(self, symbol: _Symbol, name: str, width: int, offset: int) -> None:
        self.symbol = symbol
        self.name = name
        self.width = width
        self.offset = offset  # any bucket start; the grid is offset + k * width
        self.buckets: dict[int, _Bucket] = {}  # retained buckets by start
        self.days: dict[int, _SeriesDay] = {}
        self.cur: _Bucket | None = None  # newest bucket: where nearly every tick goes
        # start of the latest unwatched span (``unwatched``) until a tick lands after it: the
        # first bucket entered after it counts its volume from its own first tick (rule 8)
        self.gap: float | None = None


class _Symbol:
    __slots__ = (
        "exchange", "symbol", "series", "days", "cur", "lo", "hi", "dirty", "watch_from", "gap_since",
        "count", "open", "high", "low", "close", "first_ts", "last_ts", "maxcum", "oi", "oi_ts",
    )  # fmt: skip

    def __init__(self, exchange: str, symbol: str, watch_from: float = -_INF) -> None:
        self.exchange = exchange
        self.symbol = symbol
        # watched without a break since ``watch_from``: a bucket starting earlier is partial (rule 8);
        # ``gap_since`` is when the latest unwatched span began
        self.watch_from = watch_from
        self.gap_since = -_INF
        self.series: list[_Series] = []
        self.days: dict[int, _SymDay] = {}
        self.cur = _NO_DAY
        # the window [lo, hi): inside every interval's current bucket, all open, all of one IST day
        self.lo = _INF
        self.hi = -_INF
        self.dirty = False  # the accumulator holds ticks not yet merged into the buckets
        self._clear()

    def _clear(self) -> None:
        """Empty the accumulator (the fields mean what they mean on a ``_Bucket``)."""
        self.count = 0
        self.open: Decimal | None = None
        self.high: Decimal | None = None
        self.low: Decimal | None = None
        self.close: Decimal | None = None
        self.first_ts = _INF
        self.last_ts = -_INF
        self.maxcum = _NO_VOLUME
        self.oi: int | None = None
        self.oi_ts = -_INF


# A packed closed bucket: maxcum, day, flags (1: no frozen_cum, 2: no OI, 4: partial), count, carry,
# frozen_cum, oi, emitted_volume, base, first_ts, last_ts, oi_ts; then "open high low close" as ASCII text when count > 0
# (the exact spelling of each Decimal). maxcum and day lead: _volume reads only them.
_REC = struct.Struct("<qiBqqqqqqddd")
_REC_KEY = struct.Struct("<qi")
_PACK_PER_ADVANCE = 2048  # closed buckets packed per advance() call: a 15m close spreads over a few calls

_GRID: dict[int, int] = {}  # bucket boundaries: one int object per boundary, shared by every symbol's buckets


def _shared(n: int) -> int:
    found = _GRID.get(n)
    if found is None:
        if len(_GRID) >= 8192:
            _GRID.clear()
        found = _GRID[n] = n
    return found


class _Bucket:
    __slots__ = (
        "series", "start", "end", "day", "sday", "open", "high", "low", "close", "first_ts", "last_ts", "count",
        "maxcum", "carry", "frozen_cum", "oi", "oi_ts", "closed", "emitted_volume", "partial", "base",
    )  # fmt: skip

    def __init__(self, series: _Series, start: int, sday: _SeriesDay) -> None:
        self.series = series
        self.start = _shared(start)
        self.end = _shared(start + series.width)
        self.day = sday.sym_day.day  # the IST day whose volume this bucket holds
        self.sday = sday
        self.open: Decimal | None = None
        self.high: Decimal | None = None
        self.low: Decimal | None = None
        self.close: Decimal | None = None
        self.first_ts = _INF
        self.last_ts = -_INF
        self.count = 0  # trades
        self.maxcum = _NO_VOLUME  # max cumulative volume of ticks in the bucket (this day, this reset)
        self.carry = 0  # volume counted before a volume reset (or a day change) inside the bucket
        self.frozen_cum: int | None = None  # cumulative volume before that reset
        self.oi: int | None = None
        self.oi_ts = -_INF
        self.closed = False
        self.emitted_volume = -1
        sym = series.symbol  # rule 8: a bucket overlapping the latest unwatched span is partial
        self.partial = start < sym.watch_from and self.end > sym.gap_since
        # rule 8: the cumulative volume its volume counts from when it was entered after an
        # unwatched span (its first tick's); _NO_VOLUME: from the earlier buckets as rule 3 says
        self.base = _NO_VOLUME


def _file(index: dict[float, list], heap: list[float], at: float, item: object) -> None:
    found = index.get(at)
    if found is None:
        index[at] = [item]
        heapq.heappush(heap, at)
    else:
        found.append(item)


def _pack_bucket(b: _Bucket) -> bytes | None:
    """A closed bucket as one record; None when a field does not fit (it then stays an object)."""
    if b.count:
        o, h, lo, c = b.open, b.high, b.low, b.close
        if type(o) is not Decimal or type(h) is not Decimal or type(lo) is not Decimal or type(c) is not Decimal:
            return None
        text = f"{o!s} {h!s} {lo!s} {c!s}".encode("ascii")  # str(): the spelling, without format()'s parsing
    else:
        text = b""
    frozen = b.frozen_cum
    oi = b.oi
    try:
        return _REC.pack(
            b.maxcum, b.day, (frozen is None) | (oi is None) << 1 | b.partial << 2, b.count, b.carry, frozen or 0,
            oi or 0, b.emitted_volume, b.base, b.first_ts, b.last_ts, b.oi_ts,
        ) + text  # fmt: skip
    except (struct.error, OverflowError):
        return None


class CandleAggregator:
    """Builds candles for every interval from one stream of ticks.

    ``add()`` places ticks and returns revisions of candles already closed; ``advance()`` closes
    what the clock says is due; ``flush()`` snapshots what is still open (at shutdown);
    ``seed()`` resumes from stored candles after a restart. Not thread-safe: one pipeline thread
    owns it.
    """

    # The per-symbol state's classes. The compiled path (``candles/_speedups.pyx``, chosen at the
    # end of this module) subclasses this one with its own typed versions of them.
    _symbol_type: type = _Symbol
    _series_type: type = _Series
    _day_type: type = _SymDay
    _bucket_type: type = _Bucket
    _no_day: object = _NO_DAY
    compiled = False  # True on the compiled path's subclass

    def __init__(
        self,
        intervals: Sequence[Interval],
        clock: Callable[[], float],
        *,
        grace: float = 2.0,
        emit_empty: bool = False,
        revision_horizon: float = 900.0,
        reorder_memory: int = 32,
    ) -> None:
        unique = {iv.name: iv for iv in intervals}
        if not unique:
            raise ValueError("no interval given: pass at least one, e.g. parse_intervals('1m,5m')")
        if not 0 <= grace < _INF:  # NaN too: it would close nothing and poison the journal's snapshot
            raise ValueError(f"grace must be a finite number >= 0 seconds, got {grace}")
        if revision_horizon < 0:
            raise ValueError(f"revision_horizon must be >= 0 seconds, got {revision_horizon}")
        if reorder_memory < 1:
            raise ValueError(f"reorder_memory must be >= 1 ticks, got {reorder_memory}")
        self.intervals: tuple[Interval, ...] = tuple(unique.values())
        self._specs = tuple((iv.name, iv.seconds, iv.bucket_start(0.0)) for iv in self.intervals)
        self._clock = clock
        self._grace = float(grace)
        self._horizon = float(revision_horizon)
        self._emit_empty = emit_empty
        self._memory = reorder_memory
        self._symbols: dict[tuple[str, str], _Symbol] = {}
        self._by_name: dict[str, _Symbol] = {}
        self._closing: dict[float, list[_Bucket]] = {}  # close time -> open buckets
        self._closing_heap: list[float] = []
        self._evicting: dict[float, list[_Series]] = {}  # eviction time -> series of the closed buckets
        self._evicting_heap: list[float] = []
        self._to_pack: list[_Bucket] = []  # closed buckets to pack (``_pack_some``)
        self._prune_at = -_INF
        self._bucket_dt: dict[float, datetime] = {}
        self._dirty: list[_Symbol] = []  # symbols whose accumulator may hold ticks
        self._watch_from = -_INF  # what symbols seen for the first time are watched since (rule 8)
        # rule 8: the latest unwatched span (since, until) declared for a key not seen yet, applied
        # when its first tick comes (a symbol without a tick before an outage is judged by it too)
        self._pending: dict[tuple[str, str], tuple[float, float]] = {}
        self.stats = AggregatorStats()

    # ---- public ------------------------------------------------------------------------------
    def add(self, ticks: Iterable[TickLike]) -> list[Candle]:
        """Place ticks in their buckets. Returns candles of already-closed buckets that these
        ticks revised (final=True), plus flat gap candles when ``emit_empty``."""
        now = self._clock()
        out: list[Candle] = []
        touched: dict[_Bucket, None] = {}
        symbols = self._symbols
        by_name = self._by_name
        ring = 2 * self._memory
        dirty = self._dirty
        last_dt: object = None
        ts = 0.0
        n_ticks = n_trades = n_late = n_dropped = n_early_dropped = 0
        for tick in ticks:
            n_ticks += 1
            sym = by_name.get(tick.symbol)  # the symbol is nearly always the key: one str lookup
            if sym is None or sym.exchange != tick.exchange:
                sym = symbols.get((tick.exchange, tick.symbol))
                if sym is None:
                    sym = self._new_symbol(tick.exchange, tick.symbol)
            dt = tick.exchange_ts
            if dt is not last_dt:  # decoders share one datetime per exchange second
                last_dt = dt
                ts = dt.timestamp()
            sd = sym.cur
            fast = sym.lo <= ts < sym.hi  # the window lies inside sym.cur's day
            if not fast and not sd.start <= ts < sd.end:
                found = self._sym_day_for(sym, ts, now)
                if found is None:
                    n_dropped += 1
                    n_early_dropped += 1  # neither a trade nor a quote
                    continue
                sd = found

            # rule 4: a trade iff the cumulative volume rose above what earlier ticks showed
            v = tick.volume
            if v is None:
                # no volume (an index, LTP mode): every tick is a trade, except an exact repeat of
                # the previous one (a resubscribe snapshot), which carries nothing new
                price = tick.last_price
                trade = ts != sd.plain_ts or price != sd.plain_price
                sd.plain_ts = ts
                sd.plain_price = price
                if ts > sd.latest_ts:
                    sd.latest_ts = ts
            else:
                if sd.baseline is None:
                    sd.baseline = v
                latest = sd.latest_ts
                if ts > latest:
                    sd.latest_ts = ts
                    top = sd.run_max
                    if v > top:
                        trade = True
                        sd.run_max = v
                    elif v == top:
                        trade = False
                    else:  # rule 3: volume fell on a newer tick: the feed began a new trading day
                        if sym.dirty:
                            self._drain(sym, out)
                        self._reset_day(sym, sd)
                        trade = True
                        sd.run_max = v
                elif ts == latest:
                    # a lower volume within the same exchange second is a reordered update
                    # (timestamps have one-second resolution), not a new day
                    if v > sd.run_max:
                        trade = True
                        sd.run_max = v
                    else:
                        trade = False
                else:
                    top = sd.floor
                    hist = sd.hist
                    for i in range(0, len(hist), 2):
                        if hist[i + 1] > top and hist[i] <= ts:
                            top = hist[i + 1]
                    trade = v > top
                    if v > sd.run_max:
                        sd.run_max = v
                hist = sd.hist
                pos = sd.pos
                folded = hist[pos + 1]  # the arrival ``memory`` ticks ago leaves the ring
                if folded > sd.floor:
                    sd.floor = folded
                hist[pos] = ts
                hist[pos + 1] = v
                pos += 2
                sd.pos = pos if pos < ring else 0

            n_trades += trade
            price = tick.last_price
            if fast:  # the fast path: into the accumulator (same rules as below)
                if trade:
                    n = sym.count
                    if n:
                        if ts >= sym.last_ts:
                            sym.close = price
                            sym.last_ts = ts
                        elif ts < sym.first_ts:
                            sym.open = price
                            sym.first_ts = ts
                        if price > sym.high:  # type: ignore[operator]
                            sym.high = price
                        elif price < sym.low:  # type: ignore[operator]
                            sym.low = price
                    else:
                        sym.open = sym.high = sym.low = sym.close = price
                        sym.first_ts = sym.last_ts = ts
                    sym.count = n + 1
                if v is not None and v > sym.maxcum:
                    sym.maxcum = v
                if ts >= sym.oi_ts:
                    sym.oi = tick.oi
                    sym.oi_ts = ts
                if not sym.dirty:
                    sym.dirty = True
                    dirty.append(sym)
                continue
            placed = self._place(sym, sd, ts, v, trade, price, tick.oi, now, out, touched)
            n_late += placed & 1
            n_dropped += placed >> 1

        st = self.stats
        st.ticks += n_ticks
        st.trades += n_trades
        st.quotes += n_ticks - n_trades - n_early_dropped
        st.late_ticks += n_late
        st.dropped_ticks += n_dropped
        if touched:
            self._emit_revisions(touched, out)
        return out

    def _place(
        self, sym: _Symbol, sd: _SymDay, ts: float, v: int | None, trade: bool, price: Decimal, oi: int | None, now: float,
        out: list[Candle], touched: dict[_Bucket, None],
    ) -> int:  # fmt: skip
        """The slow path of ``add``: a tick outside ``sym``'s window, placed in each interval's bucket
        (located or created). Returns 1 if it was late (revised a closed bucket), | 2 if an interval
        dropped it (beyond the horizon)."""
        if sym.dirty:  # ticks in the accumulator arrived before this one: merge them first
            self._drain(sym, out)
        day = sd.day
        locate = self._locate
        emit_empty = self._emit_empty
        late = dropped = False
        for ser in sym.series:
            b = ser.cur
            if b is None or b.closed or not b.start <= ts < b.end:
                b = locate(ser, sd, ts, now)
                if b is None:
                    dropped = True
                    continue
                if b.closed:
                    late = True
                    touched[b] = None
            if ser.gap is not None and b.end > ser.gap and ts >= ser.gap:  # (an older tick is a repeat)
                self._end_gap(ser, b, v, sym.watch_from)
            if trade:
                n = b.count
                if n:
                    if ts >= b.last_ts:
                        b.close = price
                        b.last_ts = ts
                    elif ts < b.first_ts:
                        b.open = price
                        b.first_ts = ts
                    if price > b.high:  # type: ignore[operator]
                        b.high = price
                    elif price < b.low:  # type: ignore[operator]
                        b.low = price
                else:
                    b.open = b.high = b.low = b.close = price
                    b.first_ts = b.last_ts = ts
                    if emit_empty:
                        self._fill_gap(b, out)
                b.count = n + 1
            if v is not None:
                if b.day == day:
                    if v > b.maxcum:
                        b.maxcum = v
                elif day > b.day:
                    self._switch_day(b, sd)
                    b.maxcum = v
            if ts >= b.oi_ts:
                b.oi = oi
                b.oi_ts = ts
        if not dropped:
            self._set_window(sym, sd)
        return late | dropped << 1

    def advance(self, now: float | None = None) -> list[Candle]:
        """Close every open bucket whose end + grace <= now; returns their candles (final=True).
        Also forgets closed buckets older than the revision horizon."""
        if now is None:
            now = self._clock()
        out: list[Candle] = []
        heap = self._closing_heap
        if heap and heap[0] <= now:
            self._drain_all(out)
            self._close_due(now, out)
        heap = self._evicting_heap
        if heap and heap[0] <= now:
            self._evict(now)
        if now >= self._prune_at:
            self._prune_days(now)
        if self._to_pack:
            self._pack_some(_PACK_PER_ADVANCE)
        return out

    def _close_due(self, now: float, out: list[Candle]) -> None:
        """Close the buckets filed to close at or before ``now`` (their accumulators are merged):
        their candles go to ``out``, they are filed for eviction and queued for packing."""
        heap = self._closing_heap
        closing = self._closing
        horizon = self._horizon
        while heap and heap[0] <= now:
            at = heapq.heappop(heap)
            batch = closing.pop(at)
            for b in batch:
                b.closed = True
                b.series.symbol.hi = -_INF  # its window ends with the bucket
            _file_many(self._evicting, self._evicting_heap, at + horizon, [b.series for b in batch])
            self.stats.open_buckets -= len(batch)
            for b in batch:
                if b.count:
                    out.append(self._candle(b, True))
            self._to_pack.extend(batch)

    def flush(self) -> list[Candle]:
        """Candles of every open bucket with a trade, final=False. The buckets stay open.
        (With ``emit_empty``, flat candles of gaps the pending ticks close come first.)"""
        out: list[Candle] = []
        self._drain_all(out)
        out.extend(self._candle(b, False) for batch in self._closing.values() for b in batch if b.count)
        return out

    def seed(self, candles: Iterable[Candle]) -> None:
        """Resume after a restart from the newest stored candle of each (exchange, symbol,
        interval): its bucket is recreated so later ticks merge into it without losing the part
        seen before the restart or counting its volume twice. Call before the first add()."""
        now = self._clock()
        grace = self._grace
        horizon = self._horizon
        index = {name: i for i, (name, _, _) in enumerate(self._specs)}
        for c in sorted(candles, key=lambda c: c.bucket):
            i = index.get(c.interval)
            if i is None:
                continue
            last = c.last_tick.timestamp()
            day = ist_date(last)
            if now >= (day + 1) * _DAY - _IST_OFFSET + _DAY + grace + horizon:
                continue  # from a day no tick can revise any more
            key = (c.exchange, c.symbol)
            sym = self._symbols.get(key) or self._new_symbol(c.exchange, c.symbol)
            ser = sym.series[i]
            start = int(c.bucket.timestamp())
            if start in ser.buckets:
                continue
            sd = sym.days.get(day) or self._new_sym_day(sym, day)
            cum = c.cum_volume
            if cum is not None:
                # the day so far reached ``cum``: classify later ticks against it
                sd.run_max = max(sd.run_max, cum)
                sd.floor = max(sd.floor, cum)
                sd.baseline = cum if sd.baseline is None else max(sd.baseline, cum)
            sd.latest_ts = max(sd.latest_ts, last)
            if cum is None and c.tick_count and last >= sd.plain_ts:
                # a feed without volume: an exact repeat of the last tick is not a new trade
                sd.plain_ts = last
                sd.plain_price = c.close
            sday = self._series_day(ser, sd)
            if cum is not None and sday.baseline is None:
                sday.baseline = cum - c.volume  # so that this bucket keeps its stored volume
            b = self._bucket_type(ser, start, sday)
            if c.tick_count:
                b.open, b.high, b.low, b.close = c.open, c.high, c.low, c.close
                b.first_ts = c.first_tick.timestamp()
                b.last_ts = last
                b.count = c.tick_count
                if sday.last_trade is None or start > sday.last_trade.start:
                    sday.last_trade = b
            if cum is None:
                b.carry = c.volume
            else:
                b.maxcum = cum
            b.oi = c.oi
            b.oi_ts = last
            b.partial = c.source != LIVE  # revisions keep what it was (rule 8)
            close_at = b.end + grace
            if now >= close_at + horizon:  # too old to revise: remember only its volume
                if b.maxcum > sday.evicted_max:
                    sday.evicted_max = b.maxcum
                continue
            ser.buckets[_shared(start)] = b
            if ser.cur is None or start > ser.cur.start:
                ser.cur = b
            if now >= close_at and c.final:
                b.closed = True
                b.emitted_volume = c.volume
                _file(self._evicting, self._evicting_heap, close_at + horizon, ser)
                self._to_pack.append(b)
            else:  # open, or stored non-final and overdue: the next advance() closes it once
                _file(self._closing, self._closing_heap, close_at, b)
                self.stats.open_buckets += 1

    def unwatched(self, since: float, until: float, keys: Iterable[tuple[str, str]] | None = None) -> None:
        """The feed was not watched from ``since`` to ``until`` (epoch seconds; ``since`` may be
        ``-inf``: nothing was watched before) for these (exchange, symbol) keys, for every symbol
        when None (a start: call it once the open buckets are resumed). Rule 8: open buckets
        overlapping that span become partial, and so does any bucket created later that starts
        before ``until`` and ends after ``since``; each series' first bucket entered after the span
        counts its volume from its own first tick if it starts after ``since``. A key with no
        tick yet is judged by the span when its first tick comes. Spans are declared oldest first
        (the caller leaves out the parts outside the exchange's sessions: nothing trades there).

        A span that begins by the time the last one declared ended continues it: the two are one
        span (a start declares up to its restore, then the feed's first connection the rest). And
        a series whose first tick has not come since an earlier span keeps that span's beginning
        for the volume rule: what traded then is in the cumulative volume too."""
        syms: list[_Symbol] = []
        if keys is None:
            if until > self._watch_from:
                self._watch_from = until
            syms = list(self._symbols.values())
        else:
            for key in keys:
                sym = self._symbols.get(key)
                if sym is not None:
                    syms.append(sym)
                else:
                    earlier = self._pending.get(key)
                    if earlier is None:
                        self._pending[key] = (since, until)
                    else:  # no tick yet since the earlier span: the volume rule goes by its beginning
                        self._pending[key] = (min(since, earlier[0]), max(until, earlier[1]))
        for sym in syms:
            if since > sym.watch_from or since < sym.gap_since:  # a new span, or one that began earlier
                sym.gap_since = since
            if until > sym.watch_from:
                sym.watch_from = until
            sym.hi = -_INF  # the next tick takes the slow path, where the gap is ended
            for ser in sym.series:
                if ser.gap is None or since < ser.gap:  # no tick has ended an earlier span yet: it goes on
                    ser.gap = since
                for b in ser.buckets.values():
                    if type(b) is not bytes and not b.closed and b.start < until and b.end > since:
                        b.partial = True

    def keys(self) -> list[tuple[str, str]]:
        """The (exchange, symbol) of every symbol with state here (ticks taken or seeded)."""
        return list(self._symbols)

    def went_down(
        self,
        since: float,
        keys: Iterable[tuple[str, str]],
        trades: Callable[[tuple[str, str], float, float], bool] | None = None,
    ) -> list[Candle]:
        """Rule 8, the moment a feed connection's drop is noticed (its last frame at ``since``): the
        buckets of ``keys`` that reach past ``since`` become partial now, so that an open one closing
        before the connection is back is not written ``live``. One that already closed live (the drop
        is noticed after a stall timeout) is returned, partial, to be written again. ``trades((exchange,
        symbol), a, b)`` False: nothing can trade from ``a`` to ``b`` (outside the sessions), and that bucket
        stays as it is. The span itself is declared when the connection is back (``unwatched``)."""
        out: list[Candle] = []
        for sym in map(self._symbols.get, keys):
            if sym is None:
                continue
            for ser in sym.series:
                for start, b in list(ser.buckets.items()):
                    if start + ser.width <= since or (type(b) is not bytes and b.partial):
                        continue
                    if trades is not None and not trades((sym.exchange, sym.symbol), max(since, start), start + ser.width):
                        continue
                    if type(b) is bytes:
                        b = self._inflate(ser, start, b)
                        if b.partial:
                            continue
                    b.partial = True
                    if b.closed and b.count:
                        out.append(self._candle(b, True))
        return out

    def last_seen(self) -> float:
        """The newest exchange time of any tick taken (or seeded); ``-inf`` before the first."""
        return max((sd.latest_ts for sym in self._symbols.values() for sd in sym.days.values()), default=-_INF)

    @property
    def grace(self) -> float:
        return self._grace

    @property
    def emit_empty(self) -> bool:
        return self._emit_empty

    # ---- internals ---------------------------------------------------------------------------
    def _new_symbol(self, exchange: str, symbol: str) -> _Symbol:
        sym = self._symbol_type(exchange, symbol, self._watch_from)
        sym.series = [self._series_type(sym, name, width, offset) for name, width, offset in self._specs]
        pending = self._pending.pop((exchange, symbol), None) if self._pending else None
        if pending is not None:  # an unwatched span declared before its first tick (rule 8)
            since, until = pending
            if until > sym.watch_from:
                sym.watch_from = until
            sym.gap_since = since
            for ser in sym.series:
                ser.gap = since
        self._symbols[(exchange, symbol)] = sym
        self._by_name.setdefault(symbol, sym)  # the first exchange's; others go by (exchange, symbol)
        return sym

    @staticmethod
    def _set_window(sym: _Symbol, sd: _SymDay) -> None:
        """Where the next ticks of ``sym`` may take the fast path: inside the current bucket of
        every interval, while all are open and hold the volume of ``sd``'s day."""
        lo = sd.start
        hi = sd.end
        day = sd.day
        for ser in sym.series:
            b = ser.cur
            if b is None or b.closed or b.day != day or ser.gap is not None:  # a gap ends on the slow path
                sym.hi = -_INF
                return
            if b.start > lo:
                lo = b.start
            if b.end < hi:
                hi = b.end
        sym.lo = lo
        sym.hi = hi

    @staticmethod
    def _end_gap(ser: _Series, b: _Bucket, v: int | None, until: float) -> None:
        """The first tick after an unwatched span (``ser.gap`` to ``until``) that lands in a bucket
        reaching past its start. If the bucket began inside the span, the cumulative volume before
        its first tick is unknown (what traded while unwatched is in it): rule 8 counts its volume
        from that tick. A bucket that began after the span was watched whole: the resubscription's
        snapshot, which carries the volume traded meanwhile, came before it."""
        if ser.gap < b.start < until and v is not None and b.maxcum < 0 and not b.carry:  # type: ignore[operator]
            b.base = v
        ser.gap = None

    def _drain(self, sym: _Symbol, out: list[Candle]) -> None:
        """Merge the accumulator into the window's buckets (each interval's current bucket)."""
        n = sym.count
        cum = sym.maxcum
        oi_ts = sym.oi_ts
        for ser in sym.series:
            b = ser.cur
            assert b is not None  # the window lies inside it
            if n:
                m = b.count
                if m:
                    if sym.last_ts >= b.last_ts:
                        b.close = sym.close
                        b.last_ts = sym.last_ts
                    if sym.first_ts < b.first_ts:
                        b.open = sym.open
                        b.first_ts = sym.first_ts
                    if sym.high > b.high:  # type: ignore[operator]
                        b.high = sym.high
                    if sym.low < b.low:  # type: ignore[operator]
                        b.low = sym.low
                else:
                    b.open, b.high, b.low, b.close = sym.open, sym.high, sym.low, sym.close
                    b.first_ts = sym.first_ts
                    b.last_ts = sym.last_ts
                    if self._emit_empty:
                        self._fill_gap(b, out)
                b.count = m + n
            if cum > b.maxcum:  # same day: the window holds only buckets of the accumulator's day
                b.maxcum = cum
            if oi_ts >= b.oi_ts:
                b.oi = sym.oi
                b.oi_ts = oi_ts
        sym._clear()
        sym.dirty = False

    def _drain_all(self, out: list[Candle]) -> None:
        for sym in self._dirty:
            if sym.dirty:
                self._drain(sym, out)
        self._dirty.clear()

    def _new_sym_day(self, sym: _Symbol, day: int) -> _SymDay:
        sd = self._day_type(day, self._memory)
        sym.days[day] = sd
        if day >= sym.cur.day:
            sym.cur = sd
        return sd

    def _sym_day_for(self, sym: _Symbol, ts: float, now: float) -> _SymDay | None:
        day = ist_date(ts)
        sd = sym.days.get(day)
        if sd is None:
            if now >= self._day_forgotten_at(day):
                return None  # every bucket of that day is beyond the revision horizon
            sd = self._new_sym_day(sym, day)
        return sd

    def _day_forgotten_at(self, day: int) -> float:
        # the bucket holding the last instant of ``day`` ends at most one day after midnight
        return (day + 1) * _DAY - _IST_OFFSET + _DAY + self._grace + self._horizon

    @staticmethod
    def _series_day(ser: _Series, sd: _SymDay) -> _SeriesDay:
        sday = ser.days.get(sd.day)
        if sday is None:
            sday = ser.days[sd.day] = _SeriesDay(sd)
        return sday

    def _locate(self, ser: _Series, sd: _SymDay, ts: float, now: float) -> _Bucket | None:
        """The bucket for ``ts``, created if needed; None when it is beyond the horizon."""
        width = ser.width
        offset = ser.offset
        start = int((ts - offset) // width * width + offset)  # == Interval.bucket_start(ts)
        b = ser.buckets.get(start)
        if b is None:
            start = _shared(start)  # the key of ser.buckets lives as long as the bucket
        close_at = start + width + self._grace
        if b is not None:
            if type(b) is bytes:  # packed, hence closed
                if now >= close_at + self._horizon:
                    return None
                return self._inflate(ser, start, b)
            if b.closed and now >= close_at + self._horizon:
                return None
            return b
        if now >= close_at + self._horizon:
            return None
        b = self._bucket_type(ser, start, self._series_day(ser, sd))
        ser.buckets[start] = b
        cur = ser.cur
        if cur is None or start > cur.start:
            ser.cur = b
            if cur is not None and cur.closed:  # no longer the newest: it may be packed now
                self._to_pack.append(cur)
        if now >= close_at:  # its time has passed: born closed, the tick is late
            b.closed = True
            _file(self._evicting, self._evicting_heap, close_at + self._horizon, ser)
            self._to_pack.append(b)
        else:
            _file(self._closing, self._closing_heap, close_at, b)
            self.stats.open_buckets += 1
        return b

    def _volume(self, b: _Bucket) -> int:
        """carry + max(0, maxcum - base): base is the max volume of earlier buckets of the same
        day (retained or evicted), else the day's baseline."""
        top = b.maxcum
        if top < 0:
            return b.carry
        return self._volume_of(b.series, b.start, b.day, b.sday, top, b.carry, b.base)

    @staticmethod
    def _volume_of(ser: _Series, start: int, day: int, sday: _SeriesDay, top: int, carry: int, floor: int) -> int:
        """``_volume`` of the bucket of ``ser`` at ``start`` that holds these (packed or not)."""
        base = sday.evicted_max
        unpack = _REC_KEY.unpack_from
        for other_start, other in ser.buckets.items():
            if other_start < start:
                if type(other) is bytes:
                    m, d = unpack(other)
                else:
                    m = other.maxcum
                    d = other.day
                if m > base and d == day:
                    base = m
        if base < 0:
            baseline = sday.baseline if sday.baseline is not None else sday.sym_day.baseline
            base = top if baseline is None else baseline
        if floor > base:  # entered after an unwatched span (rule 8)
            base = floor
        return carry + top - base if top > base else carry

    def _candle(self, b: _Bucket, final: bool, volume: int | None = None) -> Candle:
        if volume is None:
            volume = self._volume(b)
        if final:
            b.emitted_volume = volume
        ser = b.series
        sym = ser.symbol
        return new_candle(
            sym.exchange,
            sym.symbol,
            ser.name,
            self._bucket_time(b.start),
            b.open,  # type: ignore[arg-type]  # set: only buckets with a trade become candles
            b.high,  # type: ignore[arg-type]
            b.low,  # type: ignore[arg-type]
            b.close,  # type: ignore[arg-type]
            volume,
            b.oi,
            b.count,
            self._bucket_time(b.first_ts),  # tick times: whole seconds shared by many candles
            self._bucket_time(b.last_ts),
            b.maxcum if b.maxcum >= 0 else b.frozen_cum,
            final,
            PARTIAL if b.partial else LIVE,
        )

    def _bucket_time(self, at: float) -> datetime:
        """``at`` as an IST datetime, made once per distinct time (bucket starts, tick seconds)."""
        dt = self._bucket_dt.get(at)
        if dt is None:
            if len(self._bucket_dt) > 4096:
                self._bucket_dt.clear()
            dt = self._bucket_dt[at] = datetime.fromtimestamp(at, IST)
        return dt

    def _emit_revisions(self, touched: dict[_Bucket, None], out: list[Candle]) -> None:
        """Re-emit closed buckets that late ticks changed, and later closed buckets of the same
        series whose volume moved because an earlier bucket's cumulative volume rose."""
        for ser in dict.fromkeys(b.series for b in touched):
            buckets = ser.buckets
            for start in sorted(buckets):
                b = buckets[start]
                if type(b) is bytes:  # packed: not touched; re-emitted only if its volume moved
                    top, day, _, count, carry, _, _, emitted, floor = _REC.unpack_from(b)[:9]
                    sday = ser.days.get(day)
                    if not count or sday is None:
                        continue
                    volume = carry if top < 0 else self._volume_of(ser, start, day, sday, top, carry, floor)
                    if volume != emitted:
                        out.append(self._candle(self._inflate(ser, start, b), True, volume))
                elif b.closed and b.count:
                    volume = self._volume(b)
                    if b in touched or volume != b.emitted_volume:
                        out.append(self._candle(b, True, volume))

    def _evict(self, now: float) -> None:
        """Forget closed buckets whose revision horizon has passed; keep their volume per day."""
        heap = self._evicting_heap
        evicting = self._evicting
        unpack = _REC_KEY.unpack_from
        while heap and heap[0] <= now:
            at = heapq.heappop(heap)
            end = round(at - self._horizon - self._grace)  # filed at end + grace + horizon
            for ser in evicting.pop(at):
                b = ser.buckets.pop(end - ser.width, None)
                if b is None:
                    continue
                if type(b) is bytes:
                    maxcum, day = unpack(b)
                    sday = ser.days.get(day)
                else:
                    if ser.cur is b:
                        ser.cur = None
                    maxcum = b.maxcum
                    sday = b.sday
                if sday is not None and maxcum > sday.evicted_max:
                    sday.evicted_max = maxcum

    def _pack_some(self, limit: int) -> None:
        """Pack up to ``limit`` of the closed buckets waiting for it: not the series' newest (ticks
        go there; it is packed once a newer one exists), not the gap filler's reference."""
        todo = self._to_pack
        batch = todo[-limit:]
        del todo[-limit:]
        for b in batch:
            ser = b.series
            if ser.cur is b or not b.closed:
                continue
            buckets = ser.buckets
            start = b.start
            sday = b.sday
            if buckets.get(start) is not b or sday.last_trade is b or ser.days.get(b.day) is not sday:
                continue
            rec = _pack_bucket(b)
            if rec is not None:
                buckets[start] = rec

    def _inflate(self, ser: _Series, start: int, rec: bytes) -> _Bucket:
        """The packed bucket of ``ser`` at ``start`` as an object again (in ``ser.buckets`` too)."""
        maxcum, day, flags, count, carry, frozen, oi, emitted, base, first_ts, last_ts, oi_ts = _REC.unpack_from(rec)
        b = self._bucket_type.__new__(self._bucket_type)
        b.series = ser
        b.start = start = _shared(start)
        b.end = _shared(start + ser.width)
        b.day = day
        sday = ser.days.get(day)
        if sday is None:  # not kept when packed (packing requires it); a safe stand-in all the same
            sday = _SeriesDay(ser.symbol.days.get(day) or self._day_type(day))
        b.sday = sday
        if count:
            o, h, lo, c = rec[_REC.size :].decode("ascii").split(" ")
            b.open, b.high, b.low, b.close = Decimal(o), Decimal(h), Decimal(lo), Decimal(c)
        else:
            b.open = b.high = b.low = b.close = None
        b.first_ts, b.last_ts, b.count, b.maxcum, b.carry = first_ts, last_ts, count, maxcum, carry
        b.frozen_cum = None if flags & 1 else frozen
        b.oi = None if flags & 2 else oi
        b.oi_ts = oi_ts
        b.closed = True
        b.emitted_volume = emitted
        b.partial = bool(flags & 4)
        b.base = base
        ser.buckets[start] = b
        self._to_pack.append(b)  # packed again once the late ticks are in
        return b

    def _inflate_all(self, ser: _Series) -> None:
        for start, b in list(ser.buckets.items()):
            if type(b) is bytes:
                self._inflate(ser, start, b)

    def _fill_gap(self, b: _Bucket, out: list[Candle]) -> None:
        """emit_empty: flat candles between the previous trade bucket of the day and ``b``."""
        sday = b.sday
        prev = sday.last_trade
        if prev is not None and b.start <= prev.start:
            return  # a late trade behind the newest one: nothing to fill
        sday.last_trade = b
        if prev is None:
            return
        ser = b.series
        sym = ser.symbol
        cum = prev.maxcum if prev.maxcum >= 0 else prev.frozen_cum
        px = prev.close
        assert px is not None  # prev had a trade
        for start in range(prev.start + ser.width, b.start, ser.width):
            at = self._bucket_time(start)
            # no trade seen is no trade made only while watched (rule 8)
            unseen = start < sym.watch_from and start + ser.width > sym.gap_since
            source = PARTIAL if unseen else LIVE
            out.append(new_candle(sym.exchange, sym.symbol, ser.name, at, px, px, px, px, 0, prev.oi, 0, at, at, cum, True, source))

    def _reset_day(self, sym: _Symbol, sd: _SymDay) -> None:
        """Cumulative volume fell inside an IST day: the feed started a new trading day. Volume
        counted so far stays with its buckets (as carry); from now on the base is 0."""
        self.stats.volume_resets += 1
        day = sd.day
        for ser in sym.series:
            self._inflate_all(ser)  # rare: the whole series as objects, packed again later
            frozen = [(b, self._volume(b)) for b in ser.buckets.values() if b.day == day and b.maxcum >= 0]
            for b, volume in frozen:  # compute all first: volumes depend on each other's maxcum
                b.carry = volume
                b.frozen_cum = b.maxcum
                b.maxcum = _NO_VOLUME
                b.base = _NO_VOLUME
            sday = ser.days.get(day)
            if sday is not None:
                sday.evicted_max = _NO_VOLUME
                sday.baseline = None
        sd.run_max = _NO_VOLUME
        sd.hist = array("d", _EMPTY_ARRIVAL * self._memory)
        sd.pos = 0
        sd.floor = _NO_VOLUME
        sd.baseline = 0

    def _switch_day(self, b: _Bucket, sd: _SymDay) -> None:
        """A tick of a later IST day in a bucket spanning midnight: keep the earlier day's volume
        as carry, count the later day's from its own baseline."""
        if b.maxcum >= 0:
            b.carry = self._volume(b)
            b.frozen_cum = b.maxcum
        b.base = _NO_VOLUME
        b.day = sd.day
        b.sday = self._series_day(b.series, sd)

    def _prune_days(self, now: float) -> None:
        """Forget per-day state once no tick of that day can be placed any more (daily)."""
        cutoff = ist_date(now - _DAY - self._grace - self._horizon) - 1  # days <= cutoff are done
        while self._day_forgotten_at(cutoff + 1) <= now:
            cutoff += 1
        for sym in self._symbols.values():
            if sym.days and min(sym.days) <= cutoff:
                for day in [d for d in sym.days if d <= cutoff]:
                    del sym.days[day]
                if sym.cur.day <= cutoff:
                    sym.cur = self._no_day
                for ser in sym.series:
                    for day in [d for d in ser.days if d <= cutoff]:
                        ser.days.pop(day).last_trade = None  # its bucket points back at it: no cycle left behind
        if self._pending:  # spans of keys that never had a tick, ended before any bucket still placed
            done = (cutoff + 1) * _DAY - _IST_OFFSET - _DAY
            self._pending = {key: span for key, span in self._pending.items() if span[1] > done}
        self._prune_at = self._day_forgotten_at(cutoff + 1)


def _file_many(index: dict[float, list], heap: list[float], at: float, items: list) -> None:
    found = index.get(at)
    if found is None:
        index[at] = items
        heapq.heappush(heap, at)
    else:
        found.extend(items)


# The reference implementation above is also the fallback. ``CandleAggregator`` is the compiled
# path's subclass (candles/_speedups.pyx) when that is built from these sources, else this class;
# core.accel says which at start-up, and MARKETFEED_PURE_PYTHON=1 keeps this one.
PythonCandleAggregator = CandleAggregator
_compiled = accel.load("candles._speedups")
if _compiled is not None:
    CandleAggregator = _compiled.compiled_aggregator(PythonCandleAggregator, _GRID, _SeriesDay, _REC)  # type: ignore[misc]
