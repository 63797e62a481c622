# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""The compiled twin of ``publishers/nats.py``'s ``TickEncoder.encode_batch`` (Cython).

``publishers/nats.py`` is the reference: the payload, the subjects and the caches are written and
explained there. ``compiled_encoder(TickEncoder, _SMALL)`` returns its subclass whose
``encode_batch`` is this loop; everything else (``head``, ``_time``, ``encode``, the caches
themselves) is the reference's, so a cache miss takes the same path and leaves the same state.

What changes is how one tick is read and its command put together: a ``TickData``'s fields are
read from its slots directly (see ``FIELDS``), and instead of two f-strings (the payload, then the
command around it) and a text object per number, the parts are copied once into the command's own
string, the quantities, volumes and OI that are plain ``int`` written in C. That holds when every
part is ASCII, which it is unless the subject prefix is not; any other tick (a non-ASCII prefix, a
number that is not a plain ``int``) is formatted by the reference's own expression. The property
test (tests/test_nats_encoder_property.py) drives both encoders with the same random ticks and
requires identical commands and state.
"""

from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_CheckExact
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_GET_LENGTH
from libc.string cimport memcpy

from types import MemberDescriptorType

from core.ticks import TickData

include "publishers._speedups.pxi"

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object)
    void* PyUnicode_DATA(object)
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)

cdef extern from "structmember.h":
    ctypedef struct PyMemberDef:
        int type
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member
    int T_OBJECT_EX

# The tick's fields the encoder reads. ``TickData`` keeps them in slots: a slot's member descriptor
# (docs.python.org, "__slots__" and "Defining Extension Types: members") reads the object pointer at
# a fixed offset of the instance, or raises AttributeError where it is empty. For a plain
# ``TickData`` the loop reads that pointer itself, without the attribute lookup around it; anything
# else (a subclass, another type of tick) and an empty slot go through ``getattr``.
FIELDS = ("exchange", "symbol", "token", "exchange_ts", "receive_ts", "last_quantity", "volume", "oi", "last_price")
cdef enum:
    EXCHANGE, SYMBOL, TOKEN, EXCHANGE_TS, RECEIVE_TS, LAST_QUANTITY, VOLUME, OI, LAST_PRICE, N_FIELDS
cdef Py_ssize_t _offsets[N_FIELDS]


cdef object _slotted(type cls):
    """``cls`` when each of ``FIELDS`` is a slot of it read by the default attribute lookup (the
    offsets then in ``_offsets``), else None."""
    if cls.__getattribute__ is not object.__getattribute__ or hasattr(cls, "__getattr__"):
        return None
    for i, name in enumerate(FIELDS):
        found = next((klass.__dict__[name] for klass in cls.__mro__ if name in klass.__dict__), None)
        if type(found) is not MemberDescriptorType:
            return None
        member = (<PyMemberDescrObject*><PyObject*>found).d_member
        if member.type != T_OBJECT_EX:
            return None
        _offsets[i] = member.offset
    return cls


cdef object _tick_type = _slotted(TickData)


cdef inline object _field(object t, int field, bint slotted):
    """``getattr(t, FIELDS[field])``."""
    cdef PyObject* value
    if slotted:
        value = (<PyObject**>(<char*><PyObject*>t + _offsets[field]))[0]
        if value is not NULL:
            return <object>value
    return getattr(t, FIELDS[field])

_small = None  # publishers.nats._SMALL, set by compiled_encoder

cdef enum:
    NUMBER = 24  # room for a long long's digits and sign


cdef struct Part:
    const char* data
    Py_ssize_t size


cdef inline bint _ascii(object text, Part* part):
    """Point ``part`` at ``text``'s characters when it is an ASCII str (one byte each)."""
    if not isinstance(text, str) or not PyUnicode_IS_ASCII(text):
        return False
    part.data = <const char*>PyUnicode_DATA(text)
    part.size = PyUnicode_GET_LENGTH(text)
    return True


cdef inline Py_ssize_t _digits(long long value, char* buf):
    """``value`` in decimal at the end of ``buf`` (NUMBER bytes); the number of characters."""
    cdef unsigned long long u = <unsigned long long>value
    if value < 0:
        u = 0 - u  # the magnitude, in unsigned arithmetic: negating the lowest long long overflows
    cdef Py_ssize_t i = NUMBER
    while True:
        i -= 1
        buf[i] = <char>(48 + u % 10)
        u //= 10
        if u == 0:
            break
    if value < 0:
        i -= 1
        buf[i] = 45  # '-'
    return NUMBER - i


cdef inline bint _number(object value, char* buf, Part* part):
    """``null`` or the digits of a plain ``int`` that fits a long long, as the reference writes
    them (``str`` of an int); False for anything else."""
    cdef int overflow = 0
    cdef long long v
    cdef Py_ssize_t n
    if value is None:
        part.data = "null"
        part.size = 4
        return True
    if not PyLong_CheckExact(value):
        return False
    v = PyLong_AsLongLongAndOverflow(value, &overflow)
    if overflow:
        return False
    n = _digits(v, buf)
    part.data = buf + NUMBER - n
    part.size = n
    return True


cdef inline void _put(char* out, Py_ssize_t* at, Part part):
    memcpy(out + at[0], part.data, part.size)
    at[0] += part.size


cdef object _qty_text(object qty):
    """The reference's ``qty`` expression, for what is not a plain int."""
    return "null" if qty is None else _small[qty] if 0 <= qty < 4096 else qty


def encode_batch(self, batch, list commands):
    """``TickEncoder.encode_batch``."""
    cdef dict heads = self._heads
    cdef dict times = self._times
    cdef object last, received_ms, last_ts = None, tail = None
    cdef object found, ts, received, qty, volume, oi, price, body, command
    cdef object t_qty, t_volume, t_oi  # the texts of numbers not written in C
    cdef Part p_pub, p_start, p_price, p_qty, p_volume, p_oi, p_tail, p_len
    cdef char b_qty[NUMBER]
    cdef char b_volume[NUMBER]
    cdef char b_oi[NUMBER]
    cdef char b_len[NUMBER]
    cdef bint tail_ascii = False
    cdef Py_ssize_t size, at
    cdef char* out
    cdef bint slotted
    last, received_ms = self._received
    for t in batch:
        slotted = type(t) is _tick_type
        found = heads.get((_field(t, EXCHANGE, slotted), _field(t, SYMBOL, slotted)))
        if found is None or found[3] != _field(t, TOKEN, slotted):
            found = self.head(t)
        ts = _field(t, EXCHANGE_TS, slotted)
        received = _field(t, RECEIVE_TS, slotted)
        if ts is not last_ts or received is not last:  # the same objects run on within a frame
            if received is not last:
                last = received
                received_ms = str(round(received.timestamp() * 1000))
            last_ts = ts
            fragment = times.get(ts) or self._time(ts)
            tail = f'{fragment},"received_ms":{received_ms}}}'
            tail_ascii = _ascii(tail, &p_tail)
        qty = _field(t, LAST_QUANTITY, slotted)
        volume = _field(t, VOLUME, slotted)
        oi = _field(t, OI, slotted)
        price = str(_field(t, LAST_PRICE, slotted))
        # a number's text is kept in a variable: its part points into it until the command is made
        t_qty = None if _number(qty, b_qty, &p_qty) else _qty_text(qty)
        t_volume = None if _number(volume, b_volume, &p_volume) else f"{volume}"
        t_oi = None if _number(oi, b_oi, &p_oi) else f"{oi}"
        if (
            tail_ascii
            and _ascii(found[1], &p_pub)
            and _ascii(found[2], &p_start)
            and _ascii(price, &p_price)
            and (t_qty is None or _ascii(t_qty, &p_qty))
            and (t_volume is None or _ascii(t_volume, &p_volume))
            and (t_oi is None or _ascii(t_oi, &p_oi))
        ):
            # body: {start}{price}","qty":{qty},"volume":{volume},"oi":{oi},{tail}
            size = p_start.size + p_price.size + 8 + p_qty.size + 10 + p_volume.size + 6 + p_oi.size + 1 + p_tail.size
            p_len.size = _digits(size, b_len)
            p_len.data = b_len + NUMBER - p_len.size
            command = PyUnicode_New(p_pub.size + p_len.size + 2 + size + 2, 127)
            out = <char*>PyUnicode_DATA(command)
            at = 0
            _put(out, &at, p_pub)
            _put(out, &at, p_len)
            memcpy(out + at, b"\r\n", 2)
            at += 2
            _put(out, &at, p_start)
            _put(out, &at, p_price)
            memcpy(out + at, b'","qty":', 8)
            at += 8
            _put(out, &at, p_qty)
            memcpy(out + at, b',"volume":', 10)
            at += 10
            _put(out, &at, p_volume)
            memcpy(out + at, b',"oi":', 6)
            at += 6
            _put(out, &at, p_oi)
            out[at] = 44  # ','
            at += 1
            _put(out, &at, p_tail)
            memcpy(out + at, b"\r\n", 2)
            commands.append(command)
            continue
        body = (
            f'{found[2]}{price}","qty":{_qty_text(qty)},'
            f'"volume":{"null" if volume is None else volume},"oi":{"null" if oi is None else oi},{tail}'
        )  # the reference's expression
        commands.append(f"{found[1]}{len(body)}\r\n{body}\r\n")
    self._received = (last, received_ms)


def compiled_encoder(base, small):
    """``base`` (the reference ``TickEncoder``) with the compiled ``encode_batch``."""
    global _small
    _small = small
    return type(
        "TickEncoder",
        (base,),
        {
            "__doc__": base.__doc__,
            "__module__": base.__module__,
            "__qualname__": "TickEncoder",
            "compiled": True,
            "encode_batch": encode_batch,
        },
    )
