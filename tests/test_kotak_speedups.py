"""The compiled Kotak decoder (brokers/kotak_neo/_speedups.pyx) against its reference, the
pure-Python ``KotakDecoder``: the same frames in, the same ticks and counters out, malformed input
included."""

from __future__ import annotations

import dataclasses
import struct
from datetime import datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brokers.kotak_neo import protocol
from brokers.kotak_neo.protocol import PythonKotakDecoder
from core.ist import IST
from core.ticks import Instrument, TickData
from testkit.twins import Identities, assert_default_follows_the_switch, built_twin

RECEIVED = datetime(2026, 11, 24, 9, 15, 30, 250000, tzinfo=IST)
SESSION = 1_795_491_900  # 2026-11-24 09:15 IST
NSE_CM, BSE_CM, CDE_FO = 1, 5, 3
# nse_cm divides by 100 (a power of ten), bse_cm by 7 (DividedPriceCache), cde_fo by 10^7
DIVIDERS = {NSE_CM: 100, BSE_CM: 7, CDE_FO: 10_000_000}
KNOWN = [1594, 2885, 11536, 7]
UNKNOWN = [99_999, 0, 2**32 - 1]
TABLE = {
    **{f"{seg}|{t}": Instrument(exch, f"{exch}{t}", t) for t in KNOWN for seg, exch in (("nse_cm", "NSE"), ("bse_cm", "BSE"))},
    f"cde_fo|{KNOWN[0]}": Instrument("CDS", "USDINR", KNOWN[0]),
    "nse_cm|Nifty 50": Instrument("NSE", "Nifty 50"),
}


def compiled_decoder_class() -> type[PythonKotakDecoder]:
    """The compiled decoder class, even under MARKETFEED_PURE_PYTHON; skips when it is not built."""
    return built_twin("brokers.kotak_neo._speedups", "Kotak decoder").compiled_decoder(PythonKotakDecoder)


# --- packets: Kotak's websocket.md layouts, written independently of the codec ---------------------

_HEADER = struct.Struct("<HHBBBBB")
_MP = struct.Struct("<IqqqqqIIIIIqIIIIhiIdiIIIIIBI")
_ROW = struct.Struct("<qii")
_MINI = struct.Struct("<IqIqIiiIBI")
_INDEX = struct.Struct("<IiiiiiQiiidBi21s")

u32 = st.integers(0, 2**32 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
tokens = st.sampled_from(KNOWN + UNKNOWN)
exchanges = st.sampled_from([NSE_CM, NSE_CM, BSE_CM, CDE_FO, 2])
# no time (0, negative, the SDK's 1900 sentinel), seconds repeating across packets and frames,
# milliseconds, and any int64
times = st.one_of(st.sampled_from([0, -1, -2_208_988_800]), st.integers(SESSION, SESSION + 2), st.just(SESSION * 1000 + 250), i64)
prices = st.one_of(st.integers(0, 20), st.integers(10_000, 10_010), u32)  # repeats hit the price cache
volumes = st.one_of(st.integers(0, 10**6), st.integers(-3, -1), i64)
counts = st.one_of(st.integers(0, 12), u32)
# a depth row (qty i64, price i32, orders i32): from a small pool (level cache hits) or any 16 bytes
rows = st.one_of(
    st.sampled_from([_ROW.pack(5, 10_000, 1), _ROW.pack(7, 10_005, 2), _ROW.pack(-1, -5, 0)]),
    st.binary(min_size=16, max_size=16),
)


@st.composite
def market_picture(draw: st.DrawFn, level: int, n_rows: int, code: int = 7208) -> bytes:
    ltt = draw(times)
    body = _MP.pack(
        draw(tokens), draw(i64), draw(i64), draw(volumes), ltt, draw(st.one_of(st.just(ltt), times)),
        draw(u32), draw(u32), draw(u32), draw(u32), draw(prices), draw(i64), draw(u32), draw(u32),
        draw(counts), draw(counts), 1, 57, draw(u32), 1.5, 80, 1, 2, 3, 4, 5, 1, 2,
    )  # fmt: skip
    raw = b"".join(draw(rows) for _ in range(n_rows))
    return _HEADER.pack(9 + len(body) + len(raw), code, draw(exchanges), level, 0, 7, 0) + body + raw


@st.composite
def mini(draw: st.DrawFn) -> bytes:
    body = _MINI.pack(draw(tokens), draw(times), draw(prices), draw(i64), 1, 2, 3, 4, 5, 6)
    return _HEADER.pack(54, 7208, draw(exchanges), 1, 0, 7, 0) + body


@st.composite
def index(draw: st.DrawFn) -> bytes:
    name = draw(st.sampled_from([b"Nifty 50", b"NIFTY BANK", b""]))
    value = draw(st.integers(-(2**31), 2**31 - 1))
    body = _INDEX.pack(draw(tokens), 1, 2, 3, 4, value, max(draw(times), 0), 1, 2, 3, 0.0, 2, 1, name)
    return _HEADER.pack(87, 7207, draw(exchanges), 0, 0, 7, 0) + body


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    shape = draw(st.sampled_from(["pictures", "pictures", "pictures", "odd_one", "mini", "index", "mixed"]))
    if shape == "mini":
        return b"".join(draw(st.lists(mini(), min_size=1, max_size=5)))
    if shape == "index":
        return b"".join(draw(st.lists(index(), min_size=1, max_size=5)))
    level = draw(st.sampled_from([2, 4, 8, 16]))
    n_rows = draw(st.one_of(st.integers(0, 3), st.integers(0, 22)))
    pkts = draw(st.lists(market_picture(level, n_rows), min_size=1, max_size=6))
    if shape == "odd_one":  # one record mid-frame says another length, code or level: the fast path must give up
        i = draw(st.integers(0, len(pkts) - 1))
        what = draw(st.sampled_from(["length", "code", "level"]))
        packet = bytearray(pkts[i])
        if what == "length":
            struct.pack_into("<H", packet, 0, draw(st.sampled_from([9, 54, 87, 143, len(packet) - 16, len(packet) + 16, 65535])))
        elif what == "code":
            struct.pack_into("<H", packet, 2, draw(st.sampled_from([7207, 105, 104, 6511, 7209, 1])))
        else:
            packet[5] = draw(st.sampled_from([1, 2, 4, 8, 16, 0, 255]))
        pkts[i] = bytes(packet)
    elif shape == "mixed":
        pkts += draw(st.lists(st.one_of(mini(), index()), min_size=1, max_size=3))
        pkts = draw(st.permutations(pkts))
    return b"".join(pkts)


# --- comparing two decoders' output -----------------------------------------------------------


def described(ticks: list[TickData], same: Identities) -> list[tuple]:
    """Every field of every tick (exact: reprs keep a Decimal's exponent and a datetime's zone),
    with the sharing of cached prices, times and depth levels."""
    out = []
    for t in ticks:
        assert type(t) is TickData
        fields = tuple(getattr(t, f.name) for f in dataclasses.fields(TickData) if f.name != "depth")
        row: tuple = (repr(fields), same(t.last_price), same(t.exchange_ts), t.receive_ts is RECEIVED)
        if t.depth is None:
            row += (None,)
        else:
            assert t.depth._source is None  # built with its levels, not deferred
            levels = t.depth.bids + t.depth.asks
            row += (
                repr(t.depth.bids), repr(t.depth.asks), tuple(same(level) for level in levels),
                tuple(same(level.price) for level in levels),
            )  # fmt: skip
        out.append(row)
    return out


def state(decoder: PythonKotakDecoder) -> tuple:
    """The counters and what else a decoder keeps of the frames."""
    return dataclasses.asdict(decoder.stats), dict(decoder.market_status)


# --- the property ---------------------------------------------------------------------------


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(frames(), min_size=1, max_size=10), st.integers(0, 10))
def test_compiled_and_pure_decoders_agree_frame_by_frame(run: list[bytes], retable_at: int) -> None:
    compiled = compiled_decoder_class()(TABLE, DIVIDERS)
    pure = PythonKotakDecoder(TABLE, DIVIDERS)
    same_compiled, same_pure = Identities(), Identities()
    for i, data in enumerate(run):
        if i == retable_at:  # a resubscription replaces the table mid-run
            smaller = dict(list(TABLE.items())[::2])
            compiled.set_instruments(smaller)
            pure.set_instruments(smaller)
        got = compiled.decode(data, RECEIVED)
        want = pure.decode(data, RECEIVED)
        assert described(got, same_compiled) == described(want, same_pure)
        assert state(compiled) == state(pure)


# --- a few examples spelled out ---------------------------------------------------------------


def _picture(token: int, *, level: int = 8, volume: int = 1000, bids: int = 1, asks: int = 1, n_rows: int = 2,
             ltt: int = SESSION, lut: int = SESSION, exchange: int = NSE_CM, ltp: int = 123456) -> bytes:  # fmt: skip
    body = _MP.pack(token, 0, 0, volume, ltt, lut, 0, 0, 0, 0, ltp, 5, 0, 0, bids, asks, 1, 57, 9, 1.5, 80, 1, 2, 3, 4, 5, 1, 2)
    raw = b"".join(_ROW.pack(10 + i, ltp - 5 + 10 * (i % 2), i) for i in range(n_rows))
    return _HEADER.pack(9 + len(body) + len(raw), 7208, exchange, level, 0, 7, 0) + body + raw


@pytest.mark.parametrize(
    "data",
    [
        _picture(1594) + _picture(99_999) + _picture(2885, exchange=BSE_CM),  # known, unknown, divided price
        _picture(1594, volume=-1) + _picture(2885),  # negative volume: skipped and counted
        _picture(1594, level=4, bids=5, asks=5, n_rows=10),  # touch line: one bid, one ask whatever the counts
        _picture(1594, bids=5, asks=5, n_rows=2),  # short depth
        _picture(1594, bids=2**32 - 1, asks=2**32 - 1, n_rows=2),  # counts beyond any row count
        _picture(1594, bids=0, asks=1, n_rows=4),  # rows beyond the counts: trimmed
        _picture(1594, n_rows=0, bids=0, asks=0),
        _picture(1594, ltt=0, lut=0) + _picture(2885, ltt=-5, lut=0) + _picture(7, ltt=SESSION, lut=-1),  # no time
        _picture(1594) + _picture(2885, level=16),  # a different level mid-frame
        _picture(1594, volume=-1) + _picture(2885, level=2),  # counted twice, as the reference does
        _picture(1594, n_rows=3)[:-16] + b"\x00" * 16,
    ],
)
def test_edge_frames_decode_alike(data: bytes) -> None:
    compiled = compiled_decoder_class()(TABLE, DIVIDERS)
    pure = PythonKotakDecoder(TABLE, DIVIDERS)
    same_compiled, same_pure = Identities(), Identities()
    for _ in range(2):
        assert described(compiled.decode(data, RECEIVED), same_compiled) == described(pure.decode(data, RECEIVED), same_pure)
        assert state(compiled) == state(pure)


def test_the_default_decoder_is_the_compiled_one_unless_forced_pure() -> None:
    compiled_decoder_class()  # skips when not built
    assert_default_follows_the_switch(protocol.KotakDecoder, PythonKotakDecoder)
