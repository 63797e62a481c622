"""The compiled Kite decoder (brokers/kite/_speedups.pyx) against its reference, the pure-Python
``KiteDecoder``: the same frames in, the same ticks and counters out, malformed input included."""

from __future__ import annotations

import dataclasses
import struct
from datetime import datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brokers.kite import protocol
from brokers.kite.protocol import PythonKiteDecoder
from core.ist import IST
from core.ticks import Instrument, TickData
from testkit.twins import Identities, assert_default_follows_the_switch, built_twin

RECEIVED = datetime(2026, 11, 24, 9, 15, 30, 250000, tzinfo=IST)
SESSION = 1_795_491_900  # 2026-11-24 09:15 IST
# Known tokens in every segment with its own price unit (NSE, CDS, BCD, MCX, index, NCO); the
# frames also carry tokens outside the table.
KNOWN = [(4000 + i) << 8 | seg for i, seg in enumerate((1, 3, 6, 7, 9, 12))]
UNKNOWN = [(9000 + i) << 8 | 1 for i in range(3)]
TABLE = {t: Instrument("NSE", f"S{t}", t) for t in KNOWN}


def compiled_decoder_class() -> type[PythonKiteDecoder]:
    """The compiled decoder class, even under MARKETFEED_PURE_PYTHON; skips when it is not built."""
    return built_twin("brokers.kite._speedups", "Kite decoder").compiled_decoder(PythonKiteDecoder)


# --- random frames --------------------------------------------------------------------------

u32 = st.integers(0, 2**32 - 1)
tokens = st.sampled_from(KNOWN + UNKNOWN)
# zero (no time), a few seconds that repeat across packets and frames, and any u32
times = st.one_of(st.just(0), st.integers(SESSION, SESSION + 3), u32)
prices = st.one_of(st.integers(0, 20), st.integers(10_000, 10_020), u32)  # repeats hit the price cache


# a depth entry (qty u32, price u32, orders u16, 2 bytes padding): from a small pool (level cache
# hits) or any 12 bytes
depth_entry = st.one_of(
    st.sampled_from([struct.pack(">IIHH", 5, 10_000, 1, 0), struct.pack(">IIHH", 7, 10_005, 2, 0)]),
    st.binary(min_size=12, max_size=12),
)


@st.composite
def full_packet(draw: st.DrawFn) -> bytes:
    """token, last price, last qty, ATP, volume, 6 words unread, last trade time, OI, OI high and
    low, exchange timestamp, and the 10 depth entries."""
    last_trade = draw(times)
    head = struct.pack(">5I", draw(tokens), draw(prices), draw(u32), draw(u32), draw(u32)) + draw(
        st.binary(min_size=24, max_size=24)
    )
    head += struct.pack(">2I", last_trade, draw(u32)) + draw(st.binary(min_size=8, max_size=8))
    head += struct.pack(">I", draw(st.one_of(st.just(last_trade), times)))
    return head + b"".join(draw(depth_entry) for _ in range(10))


@st.composite
def short_packet(draw: st.DrawFn) -> bytes:
    """LTP (8), index quote (28), index full (32) or quote (44)."""
    length = draw(st.sampled_from([8, 28, 32, 44]))
    words = [draw(tokens), draw(prices)] + draw(st.lists(u32, min_size=length // 4 - 2, max_size=length // 4 - 2))
    if length == 32:
        words[-1] = draw(times)
    return struct.pack(f">{len(words)}I", *words)


garbage_packet = st.binary(max_size=200).filter(lambda b: len(b) not in (8, 28, 32, 44, 184))


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    shape = draw(st.sampled_from(["full", "full", "mixed", "heartbeat", "random", "coincidence"]))
    if shape == "heartbeat":
        return draw(st.binary(max_size=1))
    if shape == "random":
        return draw(st.binary(max_size=400))
    if shape == "coincidence":  # sized like a frame of full packets, the lengths saying otherwise
        a = draw(st.sampled_from([8, 28, 44, 180, 2 * 184]))
        pkts = [draw(st.binary(min_size=a, max_size=a)), draw(st.binary(min_size=2 * 184 - a, max_size=2 * 184 - a))]
    elif shape == "full":
        pkts = draw(st.lists(full_packet(), min_size=1, max_size=6))
    else:
        pkts = draw(st.lists(st.one_of(full_packet(), short_packet(), garbage_packet), min_size=0, max_size=6))
    count = len(pkts)
    if draw(st.integers(0, 4)) == 0:  # announces more (truncated) or fewer (trailing bytes) packets
        count = draw(st.integers(0, 65535))
    data = struct.pack(">H", count) + b"".join(struct.pack(">H", len(p)) + p for p in pkts)
    cut = draw(st.sampled_from([0, 0, 0, 1, 2, 5, 100]))
    if cut:  # the frame ends early, maybe mid-packet
        data = data[: max(2, len(data) - cut)]
    if draw(st.integers(0, 5)) == 0:
        data += draw(st.binary(min_size=1, max_size=20))
    return data


# --- comparing two decoders' output -----------------------------------------------------------


def described(ticks: list[TickData], same: Identities, read_depth: bool) -> list[tuple]:
    """Every field of every tick (exact: reprs keep a Decimal's exponent and a datetime's zone),
    with the sharing of cached prices, times and depth levels."""
    out = []
    for t in ticks:
        assert type(t) is TickData
        fields = tuple(getattr(t, f.name) for f in dataclasses.fields(TickData) if f.name != "depth")
        row: tuple = (repr(fields), same(t.last_price), same(t.exchange_ts), t.receive_ts is RECEIVED)
        if t.depth is None:
            row += (None,)
        elif read_depth:
            levels = t.depth.bids + t.depth.asks
            row += (repr(levels), tuple(same(level) for level in levels), tuple(same(level.price) for level in levels))
        else:
            row += ("deferred",)
        out.append(row)
    return out


def state(decoder: PythonKiteDecoder) -> tuple:
    """The counters and what the client reads of a decoder besides the ticks."""
    last_plain = {token: (repr(t), t.last_price) for token, t in sorted(decoder.last_plain.items())}
    source = decoder.source
    return dataclasses.asdict(decoder.stats), last_plain, source.instruments, source.timed_only


# --- the property ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(
    st.lists(st.tuples(frames(), st.booleans()), min_size=1, max_size=12),
    st.booleans(),
    st.booleans(),
    st.integers(0, 12),
)
def test_compiled_and_pure_decoders_agree_frame_by_frame(
    run: list[tuple[bytes, bool]], timed_only: bool, depth: bool, retable_at: int
) -> None:
    compiled = compiled_decoder_class()(TABLE, timed_only=timed_only, depth=depth)
    pure = PythonKiteDecoder(TABLE, timed_only=timed_only, depth=depth)
    same_compiled, same_pure = Identities(), Identities()
    for i, (data, read_depth) in enumerate(run):
        if i == retable_at:  # a resubscription replaces the table mid-run
            smaller = {t: TABLE[t] for t in KNOWN[::2]}
            compiled.set_instruments(smaller)
            pure.set_instruments(smaller)
        got = compiled.decode(data, RECEIVED)
        want = pure.decode(data, RECEIVED)
        assert described(got, same_compiled, read_depth) == described(want, same_pure, read_depth)
        assert state(compiled) == state(pure)


# --- a few examples spelled out ---------------------------------------------------------------


def _frame(*packets: bytes) -> bytes:
    return struct.pack(">H", len(packets)) + b"".join(struct.pack(">H", len(p)) + p for p in packets)


def _full(token: int, price: int, ts: int) -> bytes:
    head = struct.pack(">16I", token, price, 3, price, 1000, 1, 2, price, price, price, price, ts, 7, 7, 7, ts)
    return head + b"".join(struct.pack(">IIHxx", 100 + i, price + i, i) for i in range(10))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        _frame(_full(KNOWN[0], 12345, SESSION), _full(UNKNOWN[0], 1, 0), _full(KNOWN[4], 99, 0)),  # the full-frame path
        _frame(_full(KNOWN[0], 12345, SESSION))[:-1],  # one byte short of a full frame
        _frame(_full(KNOWN[0], 1, SESSION), struct.pack(">II", KNOWN[1], 5), b"\x01" * 30)[:-3],  # mixed, cut, odd length
        struct.pack(">H", 3) + _frame(struct.pack(">II", KNOWN[2], 5))[2:],  # announces 3, has 1
        _frame(struct.pack(">II", KNOWN[2], 5)) + b"\x00\x00\x00",  # trailing bytes
    ],
)
def test_malformed_and_edge_frames_decode_alike(data: bytes) -> None:
    compiled = compiled_decoder_class()(TABLE)
    pure = PythonKiteDecoder(TABLE)
    same_compiled, same_pure = Identities(), Identities()
    assert described(compiled.decode(data, RECEIVED), same_compiled, True) == described(
        pure.decode(data, RECEIVED), same_pure, True
    )
    assert state(compiled) == state(pure)


def test_the_default_decoder_is_the_compiled_one_unless_forced_pure() -> None:
    compiled_decoder_class()  # skips when not built
    assert_default_follows_the_switch(protocol.KiteDecoder, PythonKiteDecoder)


def test_a_remembered_price_outlives_a_cleared_price_cache_with_the_same_value() -> None:
    """Each instrument's row remembers its last prices: after the shared price cache is cleared
    (it is, wholesale, when full) the compiled decoder hands out an equal Decimal from before the
    clear, where the reference builds a new one. Values, exponents included, stay the same."""
    compiled = compiled_decoder_class()(TABLE, timed_only=True)
    pure = PythonKiteDecoder(TABLE, timed_only=True)
    token = KNOWN[0]
    frames = [_frame(_full(token, price, SESSION)) for price in (12345, 12350, 12345, 12355)]
    first = compiled.decode(frames[0], RECEIVED)[0].last_price
    pure.decode(frames[0], RECEIVED)
    for decoder in (compiled, pure):
        for prices, _levels in decoder._exponents.values():
            prices.clear()
    for data in frames[1:]:
        got, want = compiled.decode(data, RECEIVED), pure.decode(data, RECEIVED)
        assert [repr(t) for t in got] == [repr(t) for t in want]
    again = compiled.decode(frames[0], RECEIVED)[0].last_price
    assert again is first  # the row's memory, not the cleared cache
    assert pure.decode(frames[0], RECEIVED)[0].last_price is not first
