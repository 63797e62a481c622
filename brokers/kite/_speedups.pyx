# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""The compiled twin of ``brokers/kite/protocol.py``'s per-packet decode (Cython).

``brokers/kite/protocol.py`` is the reference: the packet layouts, the malformed-input rules and
the reasons for the caches are written and explained there. This file mirrors
``KiteDecoder.decode``, ``_decode_full_frame`` and ``_decode_full_frame_without_depth`` step for
step, reading the big-endian fields straight from the frame's bytes instead of through
``struct``. ``compiled_decoder(KiteDecoder)`` returns the subclass using it; everything else
(instrument table, caches, ``parse_text``, ``DecodeStats``) stays the reference's.

The values are those the reference builds: prices, depth levels and exchange times come from the
decoder's own caches (``brokers.codec``), so a compiled and a pure decoder hand out the same
shared objects (until a full cache is cleared: see "the token table" below); the deferred
``Depth`` keeps the raw 120-byte book and the same level cache as its source. ``TickData`` and
``Depth`` are built as ``core.fastnew`` builds them (a genuine instance, its slots filled without
the frozen ``__setattr__``), here by storing each field at its slot's offset
(``brokers/_tick_slots.pxi``, shared with Kotak's decoder).

The property test (tests/test_kite_speedups.py) drives both decoders with the same random frames
and requires identical ticks and counters.
"""

import sys

from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from cpython.mem cimport PyMem_Calloc, PyMem_Free
from cpython.dict cimport PyDict_GetItem
from cpython.tuple cimport PyTuple_GET_ITEM
from cpython.long cimport PyLong_FromUnsignedLong
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint32_t, int32_t

from core.ticks import Depth, TickData

include "brokers.kite._speedups.pxi"


# Packet lengths (Kite Connect's WebSocket docs, "Binary market data"), as in the reference.
cdef enum:
    LTP_LEN = 8
    INDEX_QUOTE_LEN = 28
    INDEX_FULL_LEN = 32
    QUOTE_LEN = 44
    FULL_LEN = 184
    FULL_RECORD_LEN = 2 + FULL_LEN
    DEPTH_OFFSET = 64  # the depth block: 10 entries of 12 bytes to the end of a full packet
    DEPTH_LEN = FULL_LEN - DEPTH_OFFSET
    # offsets of the u32 fields read (token at 0); ``_FULL``, ``_QUOTE`` and ``_INDEX_TS`` there
    PRICE_AT = 4
    QUANTITY_AT = 8
    VOLUME_AT = 16
    OI_AT = 48
    FULL_TS_AT = 60
    INDEX_TS_AT = 28

# Set by compiled_decoder from the reference module: the broker name and the malformed kinds.
cdef str BROKER = "kite"
cdef object TRUNCATED_FRAME, PACKET_OVERRUN, UNKNOWN_LENGTH, TRAILING_BYTES


# ------------------------------------------------------------------ building TickData and Depth

include "brokers/_tick_slots.pxi"


cdef inline object _deferred_depth(object book, object levels):
    """``core.fastnew.deferred_depth(book, levels)``: the levels are built on first read."""
    depth = PyType_GenericAlloc(DEPTH_TYPE, 0)
    _put(depth, DEPTH_AT[0], None)
    _put(depth, DEPTH_AT[1], None)
    _put(depth, DEPTH_AT[2], book)
    _put(depth, DEPTH_AT[3], levels)
    return depth


del _s, _built


# ------------------------------------------------------------------ reading the frame

cdef inline uint32_t _u32(const unsigned char *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline Py_ssize_t _u16(const unsigned char *p) noexcept nogil:
    return (<Py_ssize_t>p[0] << 8) | p[1]


cdef inline object _cached(object cache, object key):
    """``cache[key]`` for a value cache of ``brokers.codec``: a dict hit, else its ``__missing__``."""
    cdef PyObject *hit = PyDict_GetItem(cache, key)
    if hit is NULL:
        return cache[key]
    return <object>hit


# ------------------------------------------------------------------ the token table

# The reference looks each packet's token up in a dict and its price up in the price cache: two
# dict lookups with fresh int keys, each a few cache misses once the caches hold many entries
# (9,000 instruments walking through their prices fill a price cache of 131,072 within minutes).
# Here the token table is an open-addressing array keyed by the raw u32, and each instrument's row
# remembers its last two raw prices and their Decimals (most packets repeat a price: a depth change
# at the same last price, or the bid/ask bounce). Both fall back to the reference's caches, so the
# values are the same objects the reference hands out, until a full cache is cleared: from then on
# a remembered Decimal is an equal one from before the clear.

ctypedef struct Row:
    uint32_t token
    PyObject *token_obj  # the table's int: every tick of the instrument shares it
    PyObject *exchange
    PyObject *symbol
    PyObject *prices
    PyObject *levels
    uint32_t raw0, raw1  # the last two raw prices, newest first
    PyObject *price0     # their Decimals (owned), NULL until seen
    PyObject *price1


cdef class _Table:
    """A ``_table`` (token -> entry dict) as a C array for the decoding thread; rebuilt when the
    decoder's ``_table`` is replaced (a subscription change)."""

    cdef readonly object table  # the decoder's (entries, source) this was built from
    cdef list keep              # the entries' items: alive while the rows point at them
    cdef Row *rows
    cdef int32_t *slots         # open addressing over rows, -1 empty
    cdef Py_ssize_t n
    cdef uint32_t shift
    cdef uint32_t last_ts       # the last exchange second seen, across frames
    cdef object last_dt

    def __cinit__(self, tuple table):
        self.table = table
        entries = table[0]
        self.keep = [(token, entry) for token, entry in entries.items() if type(token) is int and 0 <= token <= 0xFFFFFFFF]
        cdef Py_ssize_t n = len(self.keep), size = 8, i, slot
        cdef uint32_t bits = 3
        while size < 2 * n:
            size <<= 1
            bits += 1
        self.shift = 32 - bits
        self.rows = <Row*>PyMem_Calloc(max(n, 1), sizeof(Row))
        self.slots = <int32_t*>PyMem_Calloc(size, sizeof(int32_t))
        if self.rows is NULL or self.slots is NULL:
            raise MemoryError()
        for slot in range(size):
            self.slots[slot] = -1
        self.n = n
        self.last_ts = 0
        self.last_dt = None
        cdef Row *row
        for i in range(n):
            token, entry = self.keep[i]
            row = &self.rows[i]
            row.token = token
            row.token_obj = <PyObject*>token
            row.exchange = PyTuple_GET_ITEM(entry, 0)
            row.symbol = PyTuple_GET_ITEM(entry, 1)
            row.prices = PyTuple_GET_ITEM(entry, 2)
            row.levels = PyTuple_GET_ITEM(entry, 3)
            slot = <Py_ssize_t>((row.token * 2654435761u) >> self.shift)
            while self.slots[slot] != -1:
                slot = (slot + 1) & (size - 1)
            self.slots[slot] = <int32_t>i

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self.rows is not NULL:
            for i in range(self.n):
                Py_XDECREF(self.rows[i].price0)
                Py_XDECREF(self.rows[i].price1)
            PyMem_Free(self.rows)
        PyMem_Free(self.slots)

    cdef inline Row* find(self, uint32_t token) noexcept:
        cdef uint32_t mask = (1u << (32 - self.shift)) - 1
        cdef uint32_t slot = (token * 2654435761u) >> self.shift
        cdef int32_t i
        while True:
            i = self.slots[slot]
            if i < 0:
                return NULL
            if self.rows[i].token == token:
                return &self.rows[i]
            slot = (slot + 1) & mask

    cdef inline object time(self, object times, uint32_t ts):
        """``times[ts]``, remembering the last second across frames (a frame's packets share it)."""
        if ts != self.last_ts or self.last_dt is None:
            self.last_dt = _cached(times, PyLong_FromUnsignedLong(ts))
            self.last_ts = ts
        return self.last_dt


cdef inline object _price(Row *row, uint32_t raw):
    """``prices[raw]`` for the row's instrument, its last two prices remembered."""
    cdef PyObject *swap
    if row.price0 is not NULL and row.raw0 == raw:
        return <object>row.price0
    if row.price1 is not NULL and row.raw1 == raw:
        swap = row.price0
        row.price0 = row.price1
        row.price1 = swap
        row.raw1 = row.raw0
        row.raw0 = raw
        return <object>row.price0
    value = _cached(<object>row.prices, PyLong_FromUnsignedLong(raw))
    Py_XDECREF(row.price1)
    row.price1 = row.price0
    row.raw1 = row.raw0
    Py_INCREF(value)
    row.price0 = <PyObject*>value
    row.raw0 = raw
    return value


cdef _Table _table_of(object decoder, tuple table):
    """The decoder's C token table for ``table``, built on its first frame and after a change."""
    fast = getattr(decoder, "_fast", None)  # unset until the first frame
    if fast is None or (<_Table>fast).table is not table:
        fast = decoder._fast = _Table(table)
    return <_Table>fast


# ------------------------------------------------------------------ the decode

cdef list _decode(object decoder, const unsigned char[::1] frame, object receive_ts):
    """``KiteDecoder.decode``."""
    stats = decoder.stats
    stats.frames += 1
    cdef Py_ssize_t end = frame.shape[0]
    if end < 2:
        stats.heartbeats += 1
        return []
    table = decoder._table
    decoder.source = table[1]
    cdef _Table fast = _table_of(decoder, table)
    cdef const unsigned char *p = &frame[0]
    cdef Py_ssize_t count = _u16(p)
    cdef list ticks
    if count and end == 2 + count * FULL_RECORD_LEN:
        ticks = _decode_full_frame(decoder, p, count, receive_ts, fast, decoder.depth)
        if ticks is not None:
            return ticks
    ticks = []
    times = decoder._times
    cdef bint timed_only = decoder.timed_only
    cdef bint with_depth = decoder.depth
    cdef dict last_plain = decoder.last_plain
    cdef Py_ssize_t pos = 2, start, length, seen = 0, unknown = 0, untimed = 0, n
    cdef const unsigned char *packet
    cdef uint32_t ts
    cdef Row *row
    for n in range(count):
        start = pos + 2
        if start > end:
            decoder._malformed(TRUNCATED_FRAME, f"frame of {end} bytes announces {count} packets, has {seen}")
            break
        length = _u16(p + pos)
        pos = start + length
        if pos > end:
            decoder._malformed(PACKET_OVERRUN, f"packet of {length} bytes at offset {start} overruns a {end}-byte frame")
            break
        seen += 1
        packet = p + start
        if length == FULL_LEN:
            row = fast.find(_u32(packet))
            if row is NULL:
                unknown += 1
                continue
            depth = None
            if with_depth:
                depth = _deferred_depth(
                    PyBytes_FromStringAndSize(<const char*>packet + DEPTH_OFFSET, DEPTH_LEN), <object>row.levels
                )
            ts = _u32(packet + FULL_TS_AT)
            ticks.append(
                _tick(
                    <object>row.exchange, <object>row.symbol, <object>row.token_obj, _price(row, _u32(packet + PRICE_AT)),
                    PyLong_FromUnsignedLong(_u32(packet + QUANTITY_AT)), PyLong_FromUnsignedLong(_u32(packet + VOLUME_AT)),
                    PyLong_FromUnsignedLong(_u32(packet + OI_AT)),
                    fast.time(times, ts) if ts else receive_ts, receive_ts, depth,
                )
            )
        elif length == QUOTE_LEN:
            if timed_only:
                untimed += 1
                continue
            row = fast.find(_u32(packet))
            if row is NULL:
                unknown += 1
                continue
            ticks.append(
                _tick(
                    <object>row.exchange, <object>row.symbol, <object>row.token_obj, _price(row, _u32(packet + PRICE_AT)),
                    PyLong_FromUnsignedLong(_u32(packet + QUANTITY_AT)), PyLong_FromUnsignedLong(_u32(packet + VOLUME_AT)),
                    None, receive_ts, receive_ts, None,
                )
            )
        elif length == LTP_LEN or length == INDEX_QUOTE_LEN or length == INDEX_FULL_LEN:
            if timed_only and length != INDEX_FULL_LEN:
                untimed += 1
                continue
            row = fast.find(_u32(packet))
            if row is NULL:
                unknown += 1
                continue
            exchange_ts = receive_ts
            if length == INDEX_FULL_LEN:
                ts = _u32(packet + INDEX_TS_AT)
                if ts:
                    exchange_ts = fast.time(times, ts)
            token = <object>row.token_obj
            tick = _tick(
                <object>row.exchange, <object>row.symbol, token, _price(row, _u32(packet + PRICE_AT)),
                None, None, None, exchange_ts, receive_ts, None,
            )
            ticks.append(tick)
            last_plain[token] = tick
        else:
            decoder._malformed(UNKNOWN_LENGTH, f"packet of {length} bytes (expected 8, 28, 32, 44 or 184)")
    else:
        if pos != end:
            decoder._malformed(TRAILING_BYTES, f"{end - pos} bytes after the {count} announced packets")
    if untimed:
        stats.untimed_skipped += untimed
    stats.packets += seen
    stats.unknown_tokens += unknown
    stats.ticks += len(ticks)
    return ticks


cdef list _decode_full_frame(
    object decoder, const unsigned char *p, Py_ssize_t count, object receive_ts, _Table fast, bint with_depth
):
    """``_decode_full_frame`` and ``_decode_full_frame_without_depth``: a frame of ``count`` full
    packets; None if a length says otherwise."""
    times = decoder._times
    cdef list ticks = []
    cdef Py_ssize_t unknown = 0, n
    cdef const unsigned char *packet
    cdef uint32_t ts
    cdef Row *row
    depth = None
    for n in range(count):
        packet = p + 2 + n * FULL_RECORD_LEN
        if _u16(packet) != FULL_LEN:
            return None  # sizes only add up by coincidence: let the general path sort it out
        packet += 2
        row = fast.find(_u32(packet))
        if row is NULL:
            unknown += 1
            continue
        ts = _u32(packet + FULL_TS_AT)
        if with_depth:
            depth = _deferred_depth(PyBytes_FromStringAndSize(<const char*>packet + DEPTH_OFFSET, DEPTH_LEN), <object>row.levels)
        ticks.append(
            _tick(
                <object>row.exchange, <object>row.symbol, <object>row.token_obj, _price(row, _u32(packet + PRICE_AT)),
                PyLong_FromUnsignedLong(_u32(packet + QUANTITY_AT)), PyLong_FromUnsignedLong(_u32(packet + VOLUME_AT)),
                PyLong_FromUnsignedLong(_u32(packet + OI_AT)), fast.time(times, ts) if ts else receive_ts, receive_ts, depth,
            )
        )
    stats = decoder.stats
    stats.packets += len(ticks) + unknown
    stats.unknown_tokens += unknown
    stats.ticks += len(ticks)
    return ticks


def decode(self, const unsigned char[::1] frame not None, receive_ts):
    """Decode one binary frame; ``receive_ts`` (aware) stands in where a packet has no time."""
    return _decode(self, frame, receive_ts)


def compiled_decoder(base):
    """``base`` (the reference ``KiteDecoder``) with the compiled decode."""
    global BROKER, TRUNCATED_FRAME, PACKET_OVERRUN, UNKNOWN_LENGTH, TRAILING_BYTES
    reference = sys.modules[base.__module__]
    BROKER = reference.BROKER
    TRUNCATED_FRAME = reference.TRUNCATED_FRAME
    PACKET_OVERRUN = reference.PACKET_OVERRUN
    UNKNOWN_LENGTH = reference.UNKNOWN_LENGTH
    TRAILING_BYTES = reference.TRAILING_BYTES
    return type(
        "KiteDecoder",
        (base,),
        {
            "__doc__": base.__doc__,
            "__module__": base.__module__,
            "__qualname__": "KiteDecoder",
            "__slots__": ("_fast",),
            "compiled": True,
            "decode": decode,
        },
    )
