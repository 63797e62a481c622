# The TickData (and Depth) building the compiled decoders share: included by
# brokers/kite/_speedups.pyx and brokers/kotak_neo/_speedups.pyx after each declares ``BROKER``.
# A TickData is built as ``core.fastnew.new_tick`` builds it: a genuine instance, its slots filled
# without the frozen ``__setattr__``, here by storing each field at its slot's offset, read from
# the classes' slot descriptors when the module is imported (and checked against ``TickData(...)``).

cdef extern from "Python.h":
    # The slot descriptor of a ``__slots__`` name: where the slot lives in the instance.
    ctypedef struct PyMemberDef:
        int type
        Py_ssize_t offset
        int flags
    ctypedef struct PyMemberDescrObject:
        PyMemberDef *d_member
    PyTypeObject PyMemberDescr_Type
    object PyType_GenericAlloc(PyTypeObject *type, Py_ssize_t nitems)

cdef extern from "structmember.h":
    int T_OBJECT_EX
    int READONLY


cdef tuple TICK_FIELDS = (
    "broker", "exchange", "symbol", "token", "last_price", "last_quantity", "volume", "oi",
    "exchange_ts", "receive_ts", "depth",
)
cdef tuple DEPTH_SLOTS = ("_bids", "_asks", "_raw", "_source")
cdef Py_ssize_t TICK_AT[11]
cdef Py_ssize_t DEPTH_AT[4]
cdef PyTypeObject *TICK_TYPE = <PyTypeObject*>TickData  # the module's globals keep both classes alive
cdef PyTypeObject *DEPTH_TYPE = <PyTypeObject*>Depth


cdef int _slot_offsets(type cls, tuple names, Py_ssize_t *out) except -1:
    """The offsets of ``names`` in an instance of ``cls``, each a plain object slot of ``cls`` itself."""
    if tuple(cls.__slots__) != names or cls.__new__ is not object.__new__:
        raise ImportError(f"{cls.__name__} no longer has the slots {names}: rebuild the compiled decoder")
    for i, name in enumerate(names):
        descr = cls.__dict__[name]
        if type(descr) is not <object><PyObject*>&PyMemberDescr_Type:
            raise ImportError(f"{cls.__name__}.{name} is not a slot")
        member = (<PyMemberDescrObject*>descr).d_member
        if member.type != T_OBJECT_EX or member.flags & READONLY:
            raise ImportError(f"{cls.__name__}.{name} is not a plain object slot")
        out[i] = member.offset
    return 0


cdef inline void _put(object obj, Py_ssize_t offset, object value):
    """Store ``value`` in the (empty) slot at ``offset`` of a freshly allocated ``obj``."""
    Py_INCREF(value)
    (<PyObject**>((<char*><PyObject*>obj) + offset))[0] = <PyObject*>value


cdef inline object _tick(
    object exchange, object symbol, object token, object price, object quantity, object volume,
    object oi, object exchange_ts, object receive_ts, object depth,
):
    """``core.fastnew.new_tick(BROKER, ...)``: a genuine, frozen TickData."""
    tick = PyType_GenericAlloc(TICK_TYPE, 0)
    _put(tick, TICK_AT[0], BROKER)
    _put(tick, TICK_AT[1], exchange)
    _put(tick, TICK_AT[2], symbol)
    _put(tick, TICK_AT[3], token)
    _put(tick, TICK_AT[4], price)
    _put(tick, TICK_AT[5], quantity)
    _put(tick, TICK_AT[6], volume)
    _put(tick, TICK_AT[7], oi)
    _put(tick, TICK_AT[8], exchange_ts)
    _put(tick, TICK_AT[9], receive_ts)
    _put(tick, TICK_AT[10], depth)
    return tick


_slot_offsets(TickData, TICK_FIELDS, TICK_AT)
_slot_offsets(Depth, DEPTH_SLOTS, DEPTH_AT)
_s = tuple(object() for _ in TICK_FIELDS)
_built = _tick(_s[1], _s[2], _s[3], _s[4], _s[5], _s[6], _s[7], _s[8], _s[9], _s[10])
if type(_built) is not TickData or _built != TickData(BROKER, *_s[1:]):
    raise ImportError("TickData built from its slots differs from TickData(...): rebuild the compiled decoder")
# (``_s`` and ``_built`` are left for the including module to check its Depth with, then delete)
