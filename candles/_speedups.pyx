# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""The compiled twin of ``candles/aggregator.py``'s per-tick path (Cython).

``candles/aggregator.py`` is the reference: every rule is written and explained there, and this
file mirrors these pieces of it line for line, with typed state instead of attribute lookups:

* the per-symbol state (``Symbol``, ``SymDay``, ``Series``, ``Bucket``: the same fields as
  ``_Symbol``, ``_SymDay``, ``_Series`` and ``_Bucket``, as C fields, all of them readable and
  writable from Python, so the rest of the aggregator and the snapshot code work on either kind);
* ``add``: the tick loop, trade classification (rules 3 and 4), the in-window accumulator, and
  ``_place``/``_locate``/``_set_window`` for a tick outside its symbol's window; what those call
  rarely (inflating a packed bucket, ending a gap, a new day) is the reference's own method;
* ``_drain``/``_drain_all``: merging the accumulator into the buckets, once per symbol per
  ``advance()``;
* ``_close_due``, ``_candle``/``_volume``/``_volume_of`` and ``_pack_some``: closing, the candles
  and packing closed buckets.

``compiled_aggregator(CandleAggregator, ...)`` returns the subclass using them. The property test
(tests/test_hotpath_property.py) drives both with the same random ticks and requires identical
candles, statistics and snapshots.

Volumes and OI stay Python ints (any size, compared as Python compares them); prices stay the
decoders' ``Decimal`` objects. What becomes a C number is what the reference keeps as floats
(exchange times) and the trade count.
"""

from cpython.array cimport array
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_CheckExact
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE

from array import array as _new_array
from dataclasses import fields as _fields
from datetime import datetime
from decimal import Decimal
from struct import error as struct_error
from heapq import heappop, heappush
from types import MemberDescriptorType

try:
    from _collections import _tuplegetter
except ImportError:  # another Python implementation: ticks are read by getattr
    _tuplegetter = None


cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        const char* name
        int type
        Py_ssize_t offset
        int flags
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member
    int T_OBJECT_EX
    object PyType_GenericAlloc(PyTypeObject* type, Py_ssize_t nitems)

from candles.model import LIVE, PARTIAL, Candle
from core.ist import IST

include "candles._speedups.pxi"

cdef double INF = float("inf")
cdef long long DAY = 86400
cdef long long IST_OFFSET = 19800
cdef long long NO_VOLUME = -1

# set by compiled_aggregator from candles.aggregator: the shared grid of bucket boundaries and the
# per-day class of a series (a plain Python class there)
cdef dict _grid = {}
_SeriesDay = None
_REC = None  # candles.aggregator._REC: a packed closed bucket's fixed part


cdef inline object _shared(object n):
    """``candles.aggregator._shared``: one int object per bucket boundary (the same dict)."""
    found = _grid.get(n)
    if found is None:
        if len(_grid) >= 8192:
            _grid.clear()
        _grid[n] = n
        found = n
    return found


# ---- reading a tick's fields -------------------------------------------------------------------
# A tick is any object with these attributes (``candles.aggregator.TickLike``). Reading one through
# getattr costs a type lookup and a descriptor call, about a third of this loop's time; for the
# two kinds the daemon hands over, a ``__slots__`` class (core.ticks.TickData) and a named tuple
# (the tick archive's replay), each field is read at its known place instead, once the type's
# layout is checked. Any other type is read by getattr.

cdef enum:
    F_EXCHANGE, F_SYMBOL, F_PRICE, F_VOLUME, F_OI, F_TS, N_FIELDS

FIELDS = ("exchange", "symbol", "last_price", "volume", "oi", "exchange_ts")

cdef enum:
    BY_GETATTR, BY_SLOT, BY_INDEX


cdef class _Reader:
    """How to read the fields of one tick type."""

    cdef int kind
    cdef Py_ssize_t at[6]
    cdef Py_ssize_t size  # BY_INDEX: the tuple's length

    def __init__(self, type cls):
        self.kind = BY_GETATTR
        if cls.__getattribute__ is object.__getattribute__ and _member_offsets(cls, FIELDS, self.at):
            self.kind = BY_SLOT
        elif issubclass(cls, tuple) and cls.__getattribute__ is tuple.__getattribute__ and _tuple_indexes(cls, self.at):
            self.kind = BY_INDEX
            self.size = len(cls._fields)

    cdef inline object get(self, object tick, int field):
        cdef PyObject* p
        if self.kind == BY_SLOT:
            p = (<PyObject**>((<char*><PyObject*>tick) + self.at[field]))[0]
            if p is not NULL:
                return <object>p
        elif self.kind == BY_INDEX and PyTuple_GET_SIZE(tick) == self.size:
            return <object>PyTuple_GET_ITEM(tick, self.at[field])
        return getattr(tick, FIELDS[field])  # unset slot: raises as getattr does


def _static(type cls, str name):
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return klass.__dict__[name]
    return None


cdef bint _member_offsets(type cls, tuple names, Py_ssize_t* at) except -1:
    """Where each of ``names`` lives in an instance of ``cls`` (``at``), if each is a plain object slot."""
    cdef PyMemberDescrObject* member
    for i, name in enumerate(names):
        desc = _static(cls, name)
        if type(desc) is not MemberDescriptorType:
            return False
        member = <PyMemberDescrObject*><PyObject*>desc
        if member.d_member.type != T_OBJECT_EX:
            return False
        at[i] = member.d_member.offset
    return True


cdef bint _tuple_indexes(type cls, Py_ssize_t* at):
    fields = getattr(cls, "_fields", None)
    if _tuplegetter is None or type(fields) is not tuple:
        return False
    for i, name in enumerate(FIELDS):
        if name not in fields or type(_static(cls, name)) is not _tuplegetter:
            return False
        at[i] = fields.index(name)
        if _static(cls, name).__get__(tuple(range(len(fields)))) != at[i]:  # the getter reads that item
            return False
    return True


cdef dict _readers = {}


cdef _Reader _reader_for(object tick):
    cls = type(tick)
    found = _readers.get(cls)
    if found is None:
        if len(_readers) > 64:
            _readers.clear()
        found = _readers[cls] = _Reader(cls)
    return <_Reader>found


cdef inline double _int_double(object v) except? -1.0:
    """``float(v)`` of an int (a volume for the arrivals ring, a bucket boundary): a C conversion
    when it fits 64 bits (rounded to nearest, ties to even, as ``float(int)`` rounds), else Python's."""
    cdef int overflow = 0
    cdef long long n
    if PyLong_CheckExact(v):
        n = PyLong_AsLongLongAndOverflow(v, &overflow)
        if not overflow:
            return <double>n
    return float(v)


cdef class SymDay:
    """``candles.aggregator._SymDay`` with typed fields."""

    cdef public long long day
    cdef public double start, end, latest_ts, floor, plain_ts
    cdef public object run_max
    cdef public array hist
    cdef public Py_ssize_t pos
    cdef public object baseline, plain_price

    def __init__(self, long long day, int memory=1):
        self.day = day
        self.start = day * DAY - IST_OFFSET
        self.end = self.start + DAY
        self.latest_ts = -INF
        self.run_max = NO_VOLUME
        self.hist = _new_array("d", (INF, -1.0)) * memory  # one copy of a two-item array, not 2 * memory conversions
        self.pos = 0
        self.floor = NO_VOLUME
        self.baseline = None
        self.plain_ts = -INF
        self.plain_price = None


NO_DAY = SymDay(-(10**9))
NO_DAY.end = NO_DAY.start


cdef class Symbol:
    """``candles.aggregator._Symbol`` with typed fields."""

    cdef public str exchange, symbol
    cdef public double watch_from, gap_since, lo, hi
    cdef public list series
    cdef public dict days
    cdef public SymDay cur
    cdef public bint dirty
    cdef public long long count
    cdef public object maxcum, open, high, low, close, oi
    cdef public double first_ts, last_ts, oi_ts

    def __init__(self, str exchange, str symbol, double watch_from=-INF):
        self.exchange = exchange
        self.symbol = symbol
        self.watch_from = watch_from
        self.gap_since = -INF
        self.series = []
        self.days = {}
        self.cur = NO_DAY
        self.lo = INF
        self.hi = -INF
        self.dirty = False
        self.clear()

    cdef inline void clear(self):
        self.count = 0
        self.open = self.high = self.low = self.close = None
        self.first_ts = INF
        self.last_ts = -INF
        self.maxcum = NO_VOLUME
        self.oi = None
        self.oi_ts = -INF

    def _clear(self):
        self.clear()


cdef class Series:
    """``candles.aggregator._Series`` with typed fields."""

    cdef public Symbol symbol
    cdef public str name
    cdef public object width, offset  # Python ints: bucket arithmetic stays the reference's
    cdef public dict buckets, days
    cdef public object cur, gap

    def __init__(self, Symbol symbol, str name, width, offset):
        self.symbol = symbol
        self.name = name
        self.width = width
        self.offset = offset
        self.buckets = {}
        self.days = {}
        self.cur = None
        self.gap = None


cdef class Bucket:
    """``candles.aggregator._Bucket`` with typed fields (the ones the per-tick path reads are C
    numbers; the rest stay Python objects, exactly as the reference keeps them)."""

    cdef public object series, start, end, day, sday
    cdef public object open, high, low, close
    cdef public double first_ts, last_ts, oi_ts
    cdef public long long count
    cdef public object maxcum, carry, frozen_cum, oi, emitted_volume, base
    cdef public bint closed, partial

    def __init__(self, Series series, start, sday):
        self.series = series
        self.start = _shared(start)
        self.end = _shared(start + series.width)
        self.day = sday.sym_day.day
        self.sday = sday
        self.open = self.high = self.low = self.close = None
        self.first_ts = INF
        self.last_ts = -INF
        self.count = 0
        self.maxcum = NO_VOLUME
        self.carry = 0
        self.frozen_cum = None
        self.oi = None
        self.oi_ts = -INF
        self.closed = False
        self.emitted_volume = -1
        sym = series.symbol
        self.partial = start < sym.watch_from and self.end > sym.gap_since
        self.base = NO_VOLUME


# ---- candles -----------------------------------------------------------------------------------
# ``CandleAggregator._candle`` and the volume it reports, with the Candle built as
# ``candles.model.new_candle`` builds it (a genuine frozen instance, its slots filled directly).

CANDLE_FIELDS = tuple(f.name for f in _fields(Candle))
cdef Py_ssize_t CANDLE_AT[16]
cdef PyTypeObject* CANDLE_TYPE = <PyTypeObject*>Candle


cdef inline void _put(object obj, Py_ssize_t offset, object value):
    Py_INCREF(value)
    (<PyObject**>((<char*><PyObject*>obj) + offset))[0] = <PyObject*>value


cdef object _new_candle(tuple values):
    candle = PyType_GenericAlloc(CANDLE_TYPE, 0)
    for i in range(16):
        _put(candle, CANDLE_AT[i], <object>PyTuple_GET_ITEM(values, i))
    return candle


if len(CANDLE_FIELDS) != 16 or tuple(Candle.__slots__) != CANDLE_FIELDS or not _member_offsets(Candle, CANDLE_FIELDS, CANDLE_AT):
    raise ImportError("Candle's fields are not the 16 slots this module was built for: rebuild it")
_probe = tuple(object() for _ in CANDLE_FIELDS)
if _new_candle(_probe) != Candle(*_probe) or type(_new_candle(_probe)) is not Candle:
    raise ImportError("a Candle built from its slots differs from Candle(...): rebuild the compiled aggregator")
del _probe


cdef inline object _time(object agg, object at):
    """``CandleAggregator._bucket_time``."""
    cache = <dict>agg._bucket_dt
    dt = cache.get(at)
    if dt is None:
        if len(cache) > 4096:
            cache.clear()
        dt = datetime.fromtimestamp(at, IST)
        cache[at] = dt
    return dt


cdef inline object _le_int(const unsigned char* p, int size):
    """A little-endian signed integer of ``size`` bytes (a packed record's field)."""
    cdef unsigned long long u = 0
    cdef int k
    for k in range(size):
        u |= (<unsigned long long>p[k]) << (8 * k)
    if size == 4:
        return <int><unsigned int>u
    return <long long>u


def _volume_of(Series ser, start, day, sday, top, carry, floor):
    """``CandleAggregator._volume_of``."""
    cdef const unsigned char* p
    base = sday.evicted_max
    for other_start, other in ser.buckets.items():
        if other_start < start:
            if type(other) is bytes:
                if PyBytes_GET_SIZE(other) < 12:
                    raise ValueError("a packed bucket shorter than its key")
                p = <const unsigned char*>PyBytes_AS_STRING(other)
                m = _le_int(p, 8)
                d = _le_int(p + 8, 4)
            else:
                m = (<Bucket?>other).maxcum
                d = (<Bucket>other).day
            if m > base and d == day:
                base = m
    if base < 0:
        baseline = sday.baseline if sday.baseline is not None else sday.sym_day.baseline
        base = top if baseline is None else baseline
    if floor > base:  # entered after an unwatched span (rule 8)
        base = floor
    return carry + top - base if top > base else carry


cdef object _bucket_volume(Bucket b):
    top = b.maxcum
    if top < 0:
        return b.carry
    return _volume_of(b.series, b.start, b.day, b.sday, top, b.carry, b.base)


def _volume(self, Bucket b):
    """``CandleAggregator._volume``."""
    return _bucket_volume(b)


def _candle(self, Bucket b, final, volume=None):
    """``CandleAggregator._candle``."""
    return _make_candle(self, b, final, volume)


cdef object _make_candle(object self, Bucket b, object final, object volume):
    if volume is None:
        volume = _bucket_volume(b)
    if final:
        b.emitted_volume = volume
    cdef Series ser = b.series
    cdef Symbol sym = ser.symbol
    cum = b.maxcum if b.maxcum >= 0 else b.frozen_cum
    return _new_candle((
        sym.exchange, sym.symbol, ser.name, _time(self, b.start), b.open, b.high, b.low, b.close, volume, b.oi,
        b.count, _time(self, b.first_ts), _time(self, b.last_ts), cum, final, PARTIAL if b.partial else LIVE,
    ))


cdef void _drain_symbol(object agg, Symbol sym, list out, bint emit_empty) except *:
    """``CandleAggregator._drain``."""
    cdef long long n = sym.count, m
    cdef object cum = sym.maxcum
    cdef double oi_ts = sym.oi_ts
    cdef Bucket b
    cdef Series ser
    for ser in sym.series:
        found = ser.cur
        if found is None:
            raise AssertionError("the window lies inside each interval's current bucket")
        b = <Bucket?>found
        if n:
            m = b.count
            if m:
                if sym.last_ts >= b.last_ts:
                    b.close = sym.close
                    b.last_ts = sym.last_ts
                if sym.first_ts < b.first_ts:
                    b.open = sym.open
                    b.first_ts = sym.first_ts
                if sym.high is not b.high and sym.high > b.high:
                    b.high = sym.high
                if sym.low is not b.low and sym.low < b.low:
                    b.low = sym.low
            else:
                b.open = sym.open
                b.high = sym.high
                b.low = sym.low
                b.close = sym.close
                b.first_ts = sym.first_ts
                b.last_ts = sym.last_ts
                if emit_empty:
                    agg._fill_gap(b, out)
            b.count = m + n
        if cum > b.maxcum:
            b.maxcum = cum
        if oi_ts >= b.oi_ts:
            b.oi = sym.oi
            b.oi_ts = oi_ts
    sym.clear()
    sym.dirty = False


cdef inline void _file(dict index, list heap, object at, object item) except *:
    """``candles.aggregator._file``."""
    found = index.get(at)
    if found is None:
        index[at] = [item]
        heappush(heap, at)
    else:
        (<list>found).append(item)


cdef object _locate(object agg, Series ser, SymDay sd, object ts, object now):
    """``CandleAggregator._locate`` (the same arithmetic, on the same Python numbers)."""
    width = ser.width
    offset = ser.offset
    start = int((ts - offset) // width * width + offset)  # == Interval.bucket_start(ts)
    buckets = ser.buckets
    b = buckets.get(start)
    if b is None:
        start = _shared(start)  # the key of ser.buckets lives as long as the bucket
    close_at = start + width + agg._grace
    horizon = agg._horizon
    if b is not None:
        if type(b) is bytes:  # packed, hence closed
            if now >= close_at + horizon:
                return None
            return agg._inflate(ser, start, b)
        if (<Bucket?>b).closed and now >= close_at + horizon:
            return None
        return b
    if now >= close_at + horizon:
        return None
    day = sd.day
    days = ser.days
    sday = days.get(day)
    if sday is None:
        sday = days[day] = _SeriesDay(sd)
    nb = Bucket(ser, start, sday)
    buckets[start] = nb
    cur = ser.cur
    if cur is None or start > (<Bucket?>cur).start:
        ser.cur = nb
        if cur is not None and (<Bucket>cur).closed:  # no longer the newest: it may be packed now
            agg._to_pack.append(cur)
    if now >= close_at:  # its time has passed: born closed, the tick is late
        nb.closed = True
        _file(agg._evicting, agg._evicting_heap, close_at + horizon, ser)
        agg._to_pack.append(nb)
    else:
        _file(agg._closing, agg._closing_heap, close_at, nb)
        agg.stats.open_buckets += 1
    return nb


cdef void _set_window(Symbol sym, SymDay sd) except *:
    """``CandleAggregator._set_window``."""
    cdef double lo = sd.start, hi = sd.end, start, end
    cdef Bucket b
    cdef Series ser
    day = sd.day
    for ser in sym.series:
        found = ser.cur
        if found is None:
            sym.hi = -INF
            return
        b = <Bucket?>found
        if b.closed or b.day != day or ser.gap is not None:  # a gap ends on the slow path
            sym.hi = -INF
            return
        start = _int_double(b.start)
        end = _int_double(b.end)
        if start > lo:
            lo = start
        if end < hi:
            hi = end
    sym.lo = lo
    sym.hi = hi


cdef int _place(object agg, Symbol sym, SymDay sd, double ts, object v, bint trade, object price, object oi,
                object now, list out, dict touched, bint emit_empty) except -1:
    """``CandleAggregator._place``: a tick outside the window, into each interval's bucket."""
    cdef Bucket b
    cdef Series ser
    cdef bint late = False, dropped = False
    cdef long long n
    cdef object boxed = None  # ts as the float the Python methods take, made once
    if sym.dirty:
        _drain_symbol(agg, sym, out, emit_empty)
    day = sd.day
    cdef double start, end
    for ser in sym.series:
        found = ser.cur
        if found is not None:
            b = <Bucket?>found
            start = _int_double(b.start)
            end = _int_double(b.end)
            if b.closed or not start <= ts < end:
                found = None
        if found is None:
            if boxed is None:
                boxed = ts
            found = _locate(agg, ser, sd, boxed, now)
            if found is None:
                dropped = True
                continue
            b = <Bucket?>found
            if b.closed:
                late = True
                touched[b] = None
        gap = ser.gap
        if gap is not None and b.end > gap and ts >= gap:  # (an older tick is a repeat)
            agg._end_gap(ser, b, v, sym.watch_from)
        if trade:
            n = b.count
            if n:
                if ts >= b.last_ts:
                    b.close = price
                    b.last_ts = ts
                elif ts < b.first_ts:
                    b.open = price
                    b.first_ts = ts
                if price > b.high:
                    b.high = price
                elif price < b.low:
                    b.low = price
            else:
                b.open = b.high = b.low = b.close = price
                b.first_ts = b.last_ts = ts
                if emit_empty:
                    agg._fill_gap(b, out)
            b.count = n + 1
        if v is not None:
            if b.day == day:
                if v > b.maxcum:
                    b.maxcum = v
            elif day > b.day:
                agg._switch_day(b, sd)
                b.maxcum = v
        if ts >= b.oi_ts:
            b.oi = oi
            b.oi_ts = ts
    if not dropped:
        _set_window(sym, sd)
    return late | dropped << 1


def _drain(self, Symbol sym, list out):
    _drain_symbol(self, sym, out, self._emit_empty)


def _drain_all(self, list out):
    cdef list dirty = self._dirty
    cdef bint emit_empty = self._emit_empty
    cdef Symbol sym
    for found in dirty:
        sym = <Symbol>found
        if sym.dirty:
            _drain_symbol(self, sym, out, emit_empty)
    del dirty[:]


# ---- closing and packing -----------------------------------------------------------------------

def _close_due(self, now, list out):
    """``CandleAggregator._close_due``."""
    cdef list heap = self._closing_heap
    cdef dict closing = self._closing
    cdef dict evicting = self._evicting
    cdef list evicting_heap = self._evicting_heap
    cdef list to_pack = self._to_pack
    cdef Bucket b
    cdef Series ser
    cdef Py_ssize_t closed = 0
    horizon = self._horizon
    while heap and heap[0] <= now:
        at = heappop(heap)
        batch = <list>closing.pop(at)
        series = []
        for found in batch:
            b = <Bucket?>found
            b.closed = True
            ser = <Series?>b.series
            ser.symbol.hi = -INF  # its window ends with the bucket
            series.append(ser)
        key = at + horizon  # candles.aggregator._file_many
        filed = evicting.get(key)
        if filed is None:
            evicting[key] = series
            heappush(evicting_heap, key)
        else:
            (<list>filed).extend(series)
        closed += len(batch)
        for found in batch:
            b = <Bucket>found
            if b.count:
                out.append(_make_candle(self, b, True, None))
        to_pack.extend(batch)
    self.stats.open_buckets -= closed


def _pack_some(self, Py_ssize_t limit):
    """``CandleAggregator._pack_some``, with ``candles.aggregator._pack_bucket`` for each."""
    cdef list todo = self._to_pack
    cdef Bucket b
    cdef Series ser
    batch = todo[-limit:]
    del todo[-limit:]
    for found in batch:
        b = <Bucket?>found
        ser = <Series?>b.series
        if ser.cur is b or not b.closed:
            continue
        start = b.start
        sday = b.sday
        if ser.buckets.get(start) is not b or sday.last_trade is b or ser.days.get(b.day) is not sday:
            continue
        rec = _pack_bucket(b)
        if rec is not None:
            ser.buckets[start] = rec


cdef object _pack_bucket(Bucket b):
    """``candles.aggregator._pack_bucket``: the same record, byte for byte."""
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
        ) + text
    except (struct_error, OverflowError):
        return None


def pack_bucket(Bucket b):
    """The record ``_pack_some`` keeps for ``b`` (for the tests: it must equal the reference's)."""
    return _pack_bucket(b)


def add(self, ticks):
    """``CandleAggregator.add``."""
    now_boxed = self._clock()  # passed on as it came, as the reference does
    cdef list out = []
    cdef dict touched = {}
    cdef dict symbols = self._symbols
    cdef dict by_name = self._by_name
    cdef Py_ssize_t ring = 2 * self._memory
    cdef list dirty = self._dirty
    cdef bint emit_empty = self._emit_empty
    cdef object last_dt = None
    cdef double ts = 0.0, latest, top_d, folded
    cdef Py_ssize_t n_ticks = 0, n_trades = 0, n_late = 0, n_dropped = 0, n_early_dropped = 0
    cdef Py_ssize_t i, size, pos, placed
    cdef Symbol sym
    cdef SymDay sd
    cdef bint fast, trade, inside
    cdef long long n
    cdef double* hist
    cdef _Reader r = None
    cdef object tick_type = None
    for tick in ticks:
        n_ticks += 1
        if type(tick) is not tick_type:
            tick_type = type(tick)
            r = _reader_for(tick)
        name = r.get(tick, F_SYMBOL)
        found = by_name.get(name)  # the symbol is nearly always the key: one str lookup
        exchange = r.get(tick, F_EXCHANGE)
        if found is None or (<Symbol>found).exchange != exchange:
            found = symbols.get((exchange, name))
            if found is None:
                found = self._new_symbol(exchange, name)
        sym = <Symbol?>found
        dt = r.get(tick, F_TS)
        if dt is not last_dt:  # decoders share one datetime per exchange second
            last_dt = dt
            ts = dt.timestamp()
        sd = sym.cur
        fast = sym.lo <= ts < sym.hi
        if not fast and not sd.start <= ts < sd.end:
            found = self._sym_day_for(sym, ts, now_boxed)
            if found is None:
                n_dropped += 1
                n_early_dropped += 1
                continue
            sd = <SymDay?>found

        # rule 4: a trade iff the cumulative volume rose above what earlier ticks showed
        v = r.get(tick, F_VOLUME)
        if v is None:
            price = r.get(tick, F_PRICE)
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
                        _drain_symbol(self, sym, out, emit_empty)
                    self._reset_day(sym, sd)
                    trade = True
                    sd.run_max = v
            elif ts == latest:
                if v > sd.run_max:
                    trade = True
                    sd.run_max = v
                else:
                    trade = False
            else:
                top_d = sd.floor
                hist = sd.hist.data.as_doubles
                size = len(sd.hist)
                for i in range(0, size, 2):
                    if hist[i + 1] > top_d and hist[i] <= ts:
                        top_d = hist[i + 1]
                trade = v > top_d
                if v > sd.run_max:
                    sd.run_max = v
            hist = sd.hist.data.as_doubles
            pos = sd.pos
            folded = hist[pos + 1]  # the arrival ``memory`` ticks ago leaves the ring
            if folded > sd.floor:
                sd.floor = folded
            hist[pos] = ts
            hist[pos + 1] = _int_double(v)
            pos += 2
            sd.pos = pos if pos < ring else 0

        n_trades += trade
        price = r.get(tick, F_PRICE)
        if fast:  # into the accumulator
            if trade:
                n = sym.count
                if n:
                    # the decoders share one Decimal per price: the same object as the high, the low
                    # or the close (a price between them) is neither above the high nor below the low
                    inside = price is sym.close or price is sym.high or price is sym.low
                    if ts >= sym.last_ts:
                        sym.close = price
                        sym.last_ts = ts
                    elif ts < sym.first_ts:
                        sym.open = price
                        sym.first_ts = ts
                    if not inside:
                        if price > sym.high:
                            sym.high = price
                        elif price < sym.low:
                            sym.low = price
                else:
                    sym.open = sym.high = sym.low = sym.close = price
                    sym.first_ts = sym.last_ts = ts
                sym.count = n + 1
            if v is not None and v > sym.maxcum:
                sym.maxcum = v
            if ts >= sym.oi_ts:
                sym.oi = r.get(tick, F_OI)
                sym.oi_ts = ts
            if not sym.dirty:
                sym.dirty = True
                dirty.append(sym)
            continue
        placed = _place(self, sym, sd, ts, v, trade, price, r.get(tick, F_OI), now_boxed, out, touched, emit_empty)
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


def compiled_aggregator(base, grid, series_day, rec):
    """``base`` (the reference ``CandleAggregator``) with the compiled per-tick path; ``grid``,
    ``series_day`` and ``rec``: that module's ``_GRID``, ``_SeriesDay`` and ``_REC``."""
    global _grid, _SeriesDay, _REC
    _grid = grid
    _SeriesDay = series_day
    _REC = rec
    return type(
        "CandleAggregator",
        (base,),
        {
            "__doc__": base.__doc__,
            "__module__": base.__module__,
            "__qualname__": "CandleAggregator",
            "compiled": True,
            "_symbol_type": Symbol,
            "_series_type": Series,
            "_day_type": SymDay,
            "_bucket_type": Bucket,
            "_no_day": NO_DAY,
            "add": add,
            "_drain": _drain,
            "_drain_all": _drain_all,
            "_candle": _candle,
            "_close_due": _close_due,
            "_pack_some": _pack_some,
            "_volume": _volume,
            "_volume_of": staticmethod(_volume_of),
        },
    )


def symbol_state(Symbol sym, no_day):
    """``candles.snapshot.symbol_state`` for the compiled state: one symbol's state as the
    snapshot's plain tuples (prices as text), the same tuples, read from the fields directly."""
    cdef Series ser
    cdef Bucket b
    cdef SymDay sd
    cdef dict sym_days = {}, sdays, sday_index
    cdef set listed_sdays
    cdef list series = [], buckets, sday_rows, day_rows
    for sd in sym.days.values():
        sym_days[id(sd)] = sd
    for ser in sym.series:
        sdays = {}
        for x in ser.days.values():
            sdays[id(x)] = x
        for obj in ser.buckets.values():
            if type(obj) is not bytes:  # a packed one's is ser.days[its day]
                b = <Bucket>obj
                key = id(b.sday)
                if key not in sdays:
                    sdays[key] = b.sday
        for x in sdays.values():
            key = id(x.sym_day)
            if key not in sym_days:
                sym_days[key] = x.sym_day
        sday_index = {k: i for i, k in enumerate(sdays)}
        listed_sdays = {id(x) for x in ser.days.values()}
        buckets = []
        for start, obj in ser.buckets.items():
            if type(obj) is bytes:
                buckets.append((start, obj))
                continue
            b = <Bucket>obj
            buckets.append((
                b.start, b.day, sday_index[id(b.sday)],
                (str(b.open), str(b.high), str(b.low), str(b.close)) if b.count else None,
                b.first_ts, b.last_ts, b.count, b.maxcum, b.carry, b.frozen_cum, b.oi, b.oi_ts, b.closed, b.emitted_volume,
                b.partial, b.base,
            ))
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
    day_rows = []
    for key, obj in sym_days.items():
        sd = <SymDay>obj
        day_rows.append((
            key, sd.day, sd.latest_ts, sd.run_max, (sd.hist.tolist(), sd.pos), sd.floor, sd.baseline, sd.plain_ts,
            None if sd.plain_price is None else str(sd.plain_price),
        ))
    listed = [id(x) for x in sym.days.values()]
    acc = (
        (sym.count, (str(sym.open), str(sym.high), str(sym.low), str(sym.close)) if sym.count else None,
         sym.first_ts, sym.last_ts, sym.maxcum, sym.oi, sym.oi_ts)
        if sym.dirty else None
    )
    cur = id(sym.cur) if sym.cur is not no_day else None
    return (sym.exchange, sym.symbol, day_rows, listed, cur, series, sym.lo, sym.hi, acc, sym.watch_from, sym.gap_since)
