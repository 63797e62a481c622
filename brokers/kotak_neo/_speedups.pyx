# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""The compiled twin of ``brokers/kotak_neo/protocol.py``'s uniform-frame decode (Cython).

``brokers/kotak_neo/protocol.py`` is the reference: the packet layouts, the malformed-input rules
and the reasons for the caches are written and explained there. This file mirrors the
market-picture branch of ``KotakDecoder._decode_uniform`` (a frame of market pictures at level
2, 4, 8 or 16, all of the first packet's length: what a depth subscription sends) step for step,
reading the little-endian fields straight from the frame's bytes instead of through ``struct``
(``_MP_RECORDS``: u16 length, u16 code, u8 exchange, u8 level; then u32 token, i64 volume, i64
last trade time, i64 last update time, u32 LTP, i64 last trade qty, u32 bid and ask counts, u32
OI, and 16-byte depth rows from offset 144). Every other frame (index, mini touch line, a record
that differs from the first) goes to the reference's ``_decode_uniform`` or, as there, to the
general path of ``decode``. ``compiled_decoder(KotakDecoder)`` returns the subclass using it;
everything else (instrument table, caches, ``decode``, ``parse_text``, ``DecodeStats``) stays
the reference's.

The values are those the reference builds, looked up in the same order: depth levels, exchange
times and prices come from the decoder's own caches (``brokers.codec``), so a compiled and a pure
decoder hand out the same shared objects. ``TickData`` and ``Depth`` (with its levels, not
deferred) are built as ``core.fastnew.new_tick`` / ``new_depth`` build them: a genuine instance,
its slots filled without the frozen ``__setattr__``, here by storing each field at its slot's
offset (``brokers/_tick_slots.pxi``, shared with Kite's decoder).

The property test (tests/test_kotak_speedups.py) drives both decoders with the same random frames
and requires identical ticks and counters.
"""

import sys

from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF
from cpython.dict cimport PyDict_GetItem
from cpython.tuple cimport PyTuple_GET_ITEM
from cpython.long cimport PyLong_FromUnsignedLong, PyLong_FromLongLong, PyLong_FromUnsignedLongLong
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint32_t, uint64_t, int64_t

from core.ticks import Depth, TickData

include "brokers.kotak_neo._speedups.pxi"


# The market picture (Kotak's websocket.md; the reference's ``_MP_HEAD`` behind the header
# "<HHBB3x"): offsets from the packet's first byte. ``compiled_decoder`` checks the reference
# still has these layouts and constants.
cdef enum:
    HEADER_LEN = 9
    MARKET_PICTURE_LEN = 144  # the fixed part; depth rows follow
    DEPTH_ROW_LEN = 16
    LEVEL_TOUCH_LINE = 4
    CODE_AT = 2
    EXCHANGE_AT = 4
    LEVEL_AT = 5
    TOKEN_AT = 9          # u32
    VOLUME_AT = 29        # i64
    LTT_AT = 37           # i64 last trade time
    LUT_AT = 45           # i64 last update time
    LTP_AT = 69           # u32
    LTQ_AT = 73           # i64
    BIDS_AT = 89          # u32
    ASKS_AT = 93          # u32
    OI_AT = 103           # u32

EXPECTED_MP_HEAD = "<I16xqqq16xIq8xII6xI37x"
EXPECTED_LEVELS = frozenset((2, 4, 8, 16))
EXPECTED_SPECIAL = frozenset((7207, 105, 104, 6511, 6521))

# Set by compiled_decoder from the reference module.
cdef str BROKER = "kotak_neo"
cdef object NEGATIVE_VOLUME = "negative_volume"
cdef object REFERENCE_UNIFORM = None  # the reference's _decode_uniform


# ------------------------------------------------------------------ building TickData and Depth

include "brokers/_tick_slots.pxi"


cdef inline object _depth(tuple bids, tuple asks):
    """``core.fastnew.new_depth(bids, asks)``: a Depth with its levels."""
    depth = PyType_GenericAlloc(DEPTH_TYPE, 0)
    _put(depth, DEPTH_AT[0], bids)
    _put(depth, DEPTH_AT[1], asks)
    _put(depth, DEPTH_AT[2], None)
    _put(depth, DEPTH_AT[3], None)
    return depth


_built = _depth((_s[0],), (_s[1], _s[2]))
if type(_built) is not Depth or _built != Depth((_s[0],), (_s[1], _s[2])):
    raise ImportError("Depth built from its slots differs from Depth(...): rebuild the compiled decoder")
del _s, _built


# ------------------------------------------------------------------ reading the frame

cdef inline uint32_t _u16(const unsigned char *p) noexcept nogil:
    return <uint32_t>p[0] | (<uint32_t>p[1] << 8)


cdef inline uint32_t _u32(const unsigned char *p) noexcept nogil:
    return <uint32_t>p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef inline int64_t _i64(const unsigned char *p) noexcept nogil:
    """A little-endian two's-complement int64 (struct's ``<q``)."""
    return <int64_t>(<uint64_t>_u32(p) | (<uint64_t>_u32(p + 4) << 32))


cdef inline object _cached(object cache, object key):
    """``cache[key]`` for a value cache of ``brokers.codec``: a dict hit, else its ``__missing__``."""
    cdef PyObject *hit = PyDict_GetItem(cache, key)
    if hit is NULL:
        return cache[key]
    return <object>hit


# ------------------------------------------------------------------ the decode

cdef inline tuple _levels(object levels, const unsigned char *rows, Py_ssize_t count):
    """``tuple(map(levels.__getitem__, raw))`` over ``count`` 16-byte rows, in order."""
    cdef list out = []
    cdef Py_ssize_t i
    for i in range(count):
        out.append(_cached(levels, PyBytes_FromStringAndSize(<const char*>rows + i * DEPTH_ROW_LEN, DEPTH_ROW_LEN)))
    return tuple(out)


cdef object _market_pictures(
    object decoder, const unsigned char *p, Py_ssize_t end, Py_ssize_t n0, uint32_t code0, uint32_t level0,
    object receive_ts,
):
    """The market-picture branch of ``KotakDecoder._decode_uniform``: ``end // n0`` packets of
    ``n0`` bytes; None (nothing counted) when a record's length, code or level differs."""
    cdef Py_ssize_t rows = (n0 - MARKET_PICTURE_LEN) // DEPTH_ROW_LEN
    if n0 < MARKET_PICTURE_LEN or (n0 - MARKET_PICTURE_LEN) % DEPTH_ROW_LEN:
        return None
    entries = decoder._by_number
    times = decoder._times
    cdef list ticks = []
    cdef Py_ssize_t unknown = 0, short_depth = 0, start, kept
    cdef const unsigned char *rec
    cdef uint32_t token, bids, asks
    cdef int64_t volume, ts, last_ts = 0
    cdef uint64_t want
    cdef bint touch_line = level0 == LEVEL_TOUCH_LINE
    cdef PyObject *hit
    cdef tuple book
    last_dt = None
    for start in range(0, end, n0):
        rec = p + start
        if _u16(rec) != <uint32_t>n0 or _u16(rec + CODE_AT) != code0 or rec[LEVEL_AT] != level0:
            return None
        token = _u32(rec + TOKEN_AT)
        hit = PyDict_GetItem(entries, PyLong_FromUnsignedLongLong((<uint64_t>rec[EXCHANGE_AT] << 32) | token))
        if hit is NULL:
            unknown += 1
            continue
        volume = _i64(rec + VOLUME_AT)
        if volume < 0:  # cumulative day volume cannot be negative: a damaged packet
            decoder._malformed(NEGATIVE_VOLUME, f"market picture of token {token} with volume {volume}")
            continue
        entry = <tuple><object>hit
        levels = <object>PyTuple_GET_ITEM(entry, 3)
        if touch_line:
            bids = asks = 1
        else:
            bids = _u32(rec + BIDS_AT)
            asks = _u32(rec + ASKS_AT)
        want = <uint64_t>bids + asks
        kept = rows
        if want < <uint64_t>rows:
            kept = <Py_ssize_t>want
        elif want > <uint64_t>rows:
            short_depth += 1
        book = _levels(levels, rec + MARKET_PICTURE_LEN, kept)
        ts = _i64(rec + LUT_AT)
        if ts <= 0:
            ts = _i64(rec + LTT_AT)
        if ts != last_ts:
            last_ts = ts
            last_dt = _cached(times, PyLong_FromLongLong(ts)) if ts > 0 else None
        ticks.append(
            _tick(
                <object>PyTuple_GET_ITEM(entry, 0), <object>PyTuple_GET_ITEM(entry, 1), PyLong_FromUnsignedLong(token),
                _cached(<object>PyTuple_GET_ITEM(entry, 2), PyLong_FromUnsignedLong(_u32(rec + LTP_AT))),
                PyLong_FromLongLong(_i64(rec + LTQ_AT)), PyLong_FromLongLong(volume),
                PyLong_FromUnsignedLong(_u32(rec + OI_AT)),
                last_dt if last_dt is not None else receive_ts, receive_ts,
                _depth(book[:bids], book[bids:]),
            )
        )
    stats = decoder.stats
    stats.packets += len(ticks) + unknown
    stats.unknown_tokens += unknown
    stats.short_depth += short_depth
    stats.ticks += len(ticks)
    return ticks


def _decode_uniform(self, frame, receive_ts, n0):
    """``KotakDecoder._decode_uniform``: market pictures here, every other kind by the reference."""
    cdef const unsigned char[::1] view = frame
    cdef const unsigned char *p = &view[0]
    cdef uint32_t code0 = _u16(p + CODE_AT)
    cdef uint32_t level0 = p[LEVEL_AT]
    if (level0 == 2 or level0 == 4 or level0 == 8 or level0 == 16) and not (
        code0 == 7207 or code0 == 105 or code0 == 104 or code0 == 6511 or code0 == 6521
    ):
        return _market_pictures(self, p, view.shape[0], n0, code0, level0, receive_ts)
    return REFERENCE_UNIFORM(self, frame, receive_ts, n0)


def compiled_decoder(base):
    """``base`` (the reference ``KotakDecoder``) with the compiled uniform-frame decode."""
    global BROKER, NEGATIVE_VOLUME, REFERENCE_UNIFORM
    reference = sys.modules[base.__module__]
    same = (
        reference._MP_HEAD == EXPECTED_MP_HEAD
        and reference.HEADER_LEN == HEADER_LEN
        and reference.MARKET_PICTURE_LEN == MARKET_PICTURE_LEN
        and reference.DEPTH_ROW_LEN == DEPTH_ROW_LEN
        and reference.LEVEL_TOUCH_LINE == LEVEL_TOUCH_LINE
        and reference.MARKET_PICTURE_LEVELS == EXPECTED_LEVELS
        and reference._SPECIAL_CODES == EXPECTED_SPECIAL
    )
    if not same:
        raise ImportError("the Kotak market picture layout changed: rebuild the compiled decoder")
    BROKER = reference.BROKER
    NEGATIVE_VOLUME = reference.NEGATIVE_VOLUME
    REFERENCE_UNIFORM = base._decode_uniform
    return type(
        "KotakDecoder",
        (base,),
        {
            "__doc__": base.__doc__,
            "__module__": base.__module__,
            "__qualname__": "KotakDecoder",
            "__slots__": (),
            "compiled": True,
            "_decode_uniform": _decode_uniform,
        },
    )
