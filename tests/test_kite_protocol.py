"""The Kite binary/text codec: golden vectors, every packet kind, bad input, and the official parser as oracle."""

from __future__ import annotations

import dataclasses
import json
import pickle
import struct
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kiteconnect import KiteTicker

from brokers.kite.protocol import (
    BAD_JSON,
    BAD_MESSAGE,
    PACKET_OVERRUN,
    TRAILING_BYTES,
    TRUNCATED_FRAME,
    UNKNOWN_LENGTH,
    KiteDecoder,
    KiteFrameSource,
    KiteMessage,
    set_mode,
    subscribe,
    unsubscribe,
)
from core.ist import IST
from core.ticks import Depth, DepthLevel, Instrument, TickData

RECEIVED = datetime(2021, 7, 5, 10, 41, 30, 123456, tzinfo=IST)
INFY = 408065  # NSE (segment 1)

# Golden vectors: Zerodha's mock quote packet (kiteconnect-mocks ticker_quote.packet)
GOLDEN_QUOTE = bytes.fromhex(
    "00063a01 00026683 00000001 00026569 0011f1b2 0003e9ff 00058037 000264f3 0002673c 000261c9 0002646c".replace(" ", "")
)
# The full packet as far as Kite Connect's WebSocket docs document it: the quote head, exchange timestamp
# 0x60e2947f (10:41:27 IST) and first bid `00000005 0002669c 0001 0000`; the rest is filled in here.
GOLDEN_FULL = (
    GOLDEN_QUOTE
    + struct.pack(">5I", 0x60E2947F, 0, 0, 0, 0x60E2947F)
    + bytes.fromhex("00000005 0002669c 0001 0000".replace(" ", ""))
    + b"".join(struct.pack(">IIHxx", 10 * i, 157340 - 5 * i, i) for i in range(1, 5))
    + b"".join(struct.pack(">IIHxx", 20 * i, 157320 + 5 * i, i + 1) for i in range(5))
)


def frame(*packets: bytes) -> bytes:
    return struct.pack(">H", len(packets)) + b"".join(struct.pack(">H", len(p)) + p for p in packets)


def decoder(*tokens: int) -> KiteDecoder:
    return KiteDecoder({t: Instrument("NSE", f"T{t}", t) for t in tokens or (INFY,)})


def ltp_packet(token: int, price: int) -> bytes:
    return struct.pack(">II", token, price)


def index_packet(token: int, price: int, ts: int | None = None) -> bytes:
    body = struct.pack(">7I", token, price, price + 10, price // 2, price + 5, price + 7, 7)
    return body if ts is None else body + struct.pack(">I", ts)


def full_packet(token: int, price: int, volume: int = 1000, oi: int = 0, ts: int = 1_625_461_887) -> bytes:
    head = struct.pack(">16I", token, price, 3, price, volume, 1, 2, price, price, price, price, ts, oi, oi, oi, ts)
    return head + b"".join(struct.pack(">IIHxx", 100 + i, price + i, i) for i in range(10))


# --- golden vectors -------------------------------------------------------------------------


def test_golden_quote_packet_decodes_to_documented_values() -> None:
    (tick,) = decoder().decode(frame(GOLDEN_QUOTE), RECEIVED)
    assert tick == TickData(
        broker="kite", exchange="NSE", symbol=f"T{INFY}", token=INFY, last_price=Decimal("1573.15"), last_quantity=1,
        volume=1175986, oi=None, exchange_ts=RECEIVED, receive_ts=RECEIVED, depth=None,
    )  # fmt: skip
    assert str(tick.last_price) == "1573.15"


def test_golden_full_packet_decodes_timestamp_and_first_bid() -> None:
    (tick,) = decoder().decode(frame(GOLDEN_FULL), RECEIVED)
    assert tick.last_price == Decimal("1573.15") and tick.volume == 1175986 and tick.last_quantity == 1
    assert tick.exchange_ts == datetime(2021, 7, 5, 10, 41, 27, tzinfo=IST)
    assert tick.exchange_ts.utcoffset() is not None
    assert tick.depth is not None
    assert tick.depth.bids[0] == DepthLevel(Decimal("1573.40"), 5, 1)
    assert str(tick.depth.bids[0].price) == "1573.40"
    assert len(tick.depth.bids) == 5 and len(tick.depth.asks) == 5
    assert tick.depth.asks[0] == DepthLevel(Decimal("1573.20"), 0, 1)
    assert tick.oi == 0


# --- every packet kind ----------------------------------------------------------------------


def test_ltp_packet_carries_price_only_and_uses_receive_time() -> None:
    (tick,) = decoder().decode(frame(ltp_packet(INFY, 123456)), RECEIVED)
    assert (tick.last_price, tick.last_quantity, tick.volume, tick.oi, tick.depth) == (Decimal("1234.56"), None, None, None, None)
    assert tick.exchange_ts == RECEIVED == tick.receive_ts


def test_index_quote_packet_has_no_volume_and_uses_receive_time() -> None:
    nifty = 256265  # segment 9
    (tick,) = decoder(nifty).decode(frame(index_packet(nifty, 2_345_670)), RECEIVED)
    assert tick.last_price == Decimal("23456.70") and tick.volume is None and tick.last_quantity is None
    assert tick.exchange_ts == RECEIVED and tick.depth is None and tick.oi is None


def test_index_full_packet_carries_exchange_timestamp_in_ist() -> None:
    nifty = 256265
    (tick,) = decoder(nifty).decode(frame(index_packet(nifty, 2_345_670, ts=1_625_461_887)), RECEIVED)
    assert tick.exchange_ts == datetime(2021, 7, 5, 10, 41, 27, tzinfo=IST) and tick.exchange_ts.tzinfo is IST
    assert tick.volume is None


def test_zero_exchange_timestamp_counts_as_absent() -> None:
    nifty = 256265
    ticks = decoder(nifty, INFY).decode(frame(index_packet(nifty, 100, ts=0), full_packet(INFY, 100, ts=0)), RECEIVED)
    assert [t.exchange_ts for t in ticks] == [RECEIVED, RECEIVED]
    (only_full,) = decoder().decode(frame(full_packet(INFY, 100, ts=0)), RECEIVED)  # the all-full fast path
    assert only_full.exchange_ts == RECEIVED


def test_quote_packet_has_volume_but_no_oi_or_depth() -> None:
    (tick,) = decoder().decode(frame(GOLDEN_QUOTE), RECEIVED)
    assert tick.volume == 1175986 and tick.oi is None and tick.depth is None


def test_full_packet_carries_oi_depth_and_cumulative_volume() -> None:
    (tick,) = decoder().decode(frame(full_packet(INFY, 150_000, volume=987_654, oi=4321)), RECEIVED)
    assert tick.volume == 987_654 and tick.oi == 4321 and tick.last_quantity == 3
    assert isinstance(tick.depth, Depth)
    assert [lv.quantity for lv in tick.depth.bids + tick.depth.asks] == list(range(100, 110))
    assert [lv.orders for lv in tick.depth.bids + tick.depth.asks] == list(range(10))
    assert tick.depth.asks[4].price == Decimal("1500.09")


def test_one_frame_may_mix_every_packet_kind() -> None:
    nifty = 256265
    packets = [ltp_packet(INFY, 1), index_packet(nifty, 2), index_packet(nifty, 3, ts=1), GOLDEN_QUOTE, full_packet(INFY, 5)]
    ticks = decoder(nifty, INFY).decode(frame(*packets), RECEIVED)
    assert [t.last_price for t in ticks] == [Decimal("0.01"), Decimal("0.02"), Decimal("0.03"), Decimal("1573.15"), Decimal("0.05")]


def test_timed_only_decoder_skips_the_untimed_subscribe_snapshot_and_counts_it() -> None:
    nifty = 256265
    packets = [ltp_packet(INFY, 1), index_packet(nifty, 2), index_packet(nifty, 3, ts=1), GOLDEN_QUOTE, full_packet(INFY, 5)]
    dec = KiteDecoder({t: Instrument("NSE", f"T{t}", t) for t in (nifty, INFY)}, timed_only=True)
    ticks = dec.decode(frame(*packets), RECEIVED)
    assert [t.last_price for t in ticks] == [Decimal("0.03"), Decimal("0.05")]
    assert all(t.exchange_ts != RECEIVED for t in ticks)
    assert dec.stats.untimed_skipped == 3 and dec.stats.ticks == 2


def test_decoded_ticks_are_genuine_frozen_tickdata() -> None:
    (tick,) = decoder().decode(frame(full_packet(INFY, 150_000)), RECEIVED)
    assert type(tick) is TickData and type(tick.depth) is Depth and type(tick.depth.bids[0]) is DepthLevel
    with pytest.raises(dataclasses.FrozenInstanceError):
        tick.last_price = Decimal(1)  # type: ignore[misc]
    assert tick == dataclasses.replace(tick)
    assert hash(tick.depth.bids[0]) == hash(DepthLevel(**dataclasses.asdict(tick.depth.bids[0])))


# --- price divisors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("segment", "raw", "expected"),
    [
        (1, 123456, "1234.56"),  # NSE: paise
        (1, 123400, "1234.00"),  # exponent kept: exact to the tick
        (3, 835_012_500, "83.5012500"),  # CDS: 1e-7
        (6, 835_025, "83.5025"),  # BCD: 1e-4
        (12, 835_025, "83.5025"),  # NCO (pykiteconnect 5.2 EXCHANGE_MAP: 12)
        (7, 512_345, "5123.45"),  # MCX is segment 7: paise, not 1e-4
        (9, 2_345_670, "23456.70"),  # indices
    ],
)
def test_price_divisor_follows_the_token_segment_exactly(segment: int, raw: int, expected: str) -> None:
    token = 1234 << 8 | segment
    (tick,) = decoder(token).decode(frame(ltp_packet(token, raw)), RECEIVED)
    assert isinstance(tick.last_price, Decimal) and str(tick.last_price) == expected


def test_depth_prices_use_the_segment_divisor_too() -> None:
    cds = 77 << 8 | 3
    (tick,) = decoder(cds).decode(frame(full_packet(cds, 835_000_000)), RECEIVED)
    assert tick.depth is not None and tick.depth.bids[1].price == Decimal("83.5000001")


# --- heartbeats, unknown tokens, malformed input --------------------------------------------


@pytest.mark.parametrize("data", [b"", b"\x00"])
def test_frames_shorter_than_two_bytes_are_heartbeats(data: bytes) -> None:
    dec = decoder()
    assert dec.decode(data, RECEIVED) == []
    assert dec.heartbeats == 1 and dec.stats.malformed == {}


def test_unknown_tokens_are_skipped_and_counted_in_every_path() -> None:
    dec = decoder()
    stranger = 999 << 8 | 1
    mixed = dec.decode(frame(ltp_packet(stranger, 1), GOLDEN_QUOTE, full_packet(stranger, 2)), RECEIVED)
    all_full = dec.decode(frame(full_packet(stranger, 1), full_packet(INFY, 2)), RECEIVED)
    assert [t.token for t in mixed + all_full] == [INFY, INFY]
    assert dec.unknown_tokens == 3 and dec.stats.malformed == {}


def test_truncated_frame_keeps_the_packets_before_the_cut() -> None:
    dec = decoder()
    data = struct.pack(">H", 3) + frame(GOLDEN_QUOTE)[2:] + b"\x00"  # announces 3, has 1 and a stray byte
    assert [t.volume for t in dec.decode(data, RECEIVED)] == [1175986]
    assert dec.stats.malformed == {TRUNCATED_FRAME: 1}


def test_packet_length_running_past_the_frame_end_is_counted() -> None:
    dec = decoder()
    data = frame(GOLDEN_QUOTE, GOLDEN_QUOTE)[:-10]
    assert len(dec.decode(data, RECEIVED)) == 1
    assert dec.stats.malformed == {PACKET_OVERRUN: 1}


def test_unknown_packet_length_is_skipped_and_the_next_packet_kept() -> None:
    dec = decoder()
    assert len(dec.decode(frame(b"\x00" * 12, GOLDEN_QUOTE), RECEIVED)) == 1
    assert dec.stats.malformed == {UNKNOWN_LENGTH: 1}


def test_bytes_after_the_announced_packets_are_counted_but_packets_kept() -> None:
    dec = decoder()
    assert len(dec.decode(frame(GOLDEN_QUOTE) + b"junk", RECEIVED)) == 1
    assert dec.stats.malformed == {TRAILING_BYTES: 1}


def test_frame_sized_like_full_packets_but_with_other_lengths_takes_the_careful_path() -> None:
    dec = decoder()
    data = struct.pack(">H", 2) + struct.pack(">H", 180) + bytes(180) + struct.pack(">H", 188) + bytes(188)
    assert len(data) == 2 + 2 * 186
    assert dec.decode(data, RECEIVED) == []
    assert dec.stats.malformed == {UNKNOWN_LENGTH: 2}


def test_stats_count_frames_packets_and_ticks() -> None:
    dec = decoder()
    dec.decode(frame(GOLDEN_QUOTE, ltp_packet(1, 1)), RECEIVED)
    dec.decode(frame(full_packet(INFY, 1), full_packet(INFY, 2)), RECEIVED)
    dec.decode(b"\x00", RECEIVED)
    s = dec.stats
    assert (s.frames, s.packets, s.ticks, s.heartbeats, s.unknown_tokens) == (3, 4, 3, 1, 1)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    dec = decoder()
    ticks = dec.decode(data, RECEIVED)
    assert all(type(t) is TickData for t in ticks)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.sampled_from(["ltp", "iq", "if", "q", "f"]), min_size=1, max_size=6),
    st.data(),
)
def test_mutated_valid_frames_never_raise(kinds: list[str], data: st.DataObject) -> None:
    nifty = 256265
    build = {
        "ltp": lambda: ltp_packet(INFY, 1),
        "iq": lambda: index_packet(nifty, 2),
        "if": lambda: index_packet(nifty, 3, 4),
        "q": lambda: GOLDEN_QUOTE,
        "f": lambda: GOLDEN_FULL,
    }
    raw = bytearray(frame(*(build[k]() for k in kinds)))
    for _ in range(data.draw(st.integers(0, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del raw[pos:]
        else:
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=4))
    dec = decoder(nifty, INFY)
    ticks = dec.decode(bytes(raw), RECEIVED)
    assert len(ticks) <= len(kinds) + 2
    assert all(t.exchange_ts.tzinfo is not None for t in ticks)


# --- cross-check against pykiteconnect's own parser -----------------------------------------

SEGMENTS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 12]
u31 = st.integers(0, 2**31 - 1)


@st.composite
def packets(draw: st.DrawFn) -> bytes:
    token = draw(st.integers(1, 2**23 - 1)) << 8 | draw(st.sampled_from(SEGMENTS))
    kind = draw(st.sampled_from([8, 28, 32, 44, 184]))
    if kind in (8, 28, 32):
        words = [token] + draw(st.lists(u31, min_size=kind // 4 - 1, max_size=kind // 4 - 1))
        return struct.pack(f">{len(words)}I", *words)
    ts = st.one_of(st.just(0), st.integers(946_684_800, 2_000_000_000))  # 2000-01-01 .. 2033
    head = [token] + draw(st.lists(u31, min_size=10, max_size=10))
    if kind == 44:
        return struct.pack(">11I", *head)
    head += [draw(ts), draw(u31), draw(u31), draw(u31), draw(ts)]
    depth = b"".join(struct.pack(">IIHH", draw(u31), draw(u31), draw(st.integers(0, 65535)), 0) for _ in range(10))
    return struct.pack(">16I", *head) + depth


def _pyk_ts_matches(theirs: datetime | None, ours: datetime, raw: int) -> bool:
    # pykiteconnect: naive datetime in the host's local zone, and 0 becomes 1970-01-01 (not "absent")
    return theirs == datetime.fromtimestamp(raw) and (ours == RECEIVED if raw == 0 else ours.timestamp() == raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(packets(), min_size=1, max_size=8))
def test_decoded_values_match_pykiteconnect_field_by_field(pkts: list[bytes]) -> None:
    data = frame(*pkts)
    tokens = {struct.unpack_from(">I", p)[0] for p in pkts}
    ours = KiteDecoder({t: Instrument("X", str(t), t) for t in tokens}).decode(data, RECEIVED)
    theirs = KiteTicker.__new__(KiteTicker)._parse_binary(data)  # the parser needs no connection state
    assert len(ours) == len(theirs) == len(pkts)
    for raw, o, t in zip(pkts, ours, theirs):
        assert o.token == t["instrument_token"]
        # float(exact Decimal) and raw/divisor are both the correctly rounded double of the same number
        assert float(o.last_price) == t["last_price"]
        kind = len(raw)
        if kind in (8, 28, 32):
            assert o.last_quantity is None and o.volume is None and o.oi is None and o.depth is None
            assert "volume_traded" not in t
            if kind == 32:
                assert _pyk_ts_matches(t["exchange_timestamp"], o.exchange_ts, struct.unpack_from(">I", raw, 28)[0])
            else:
                assert o.exchange_ts == RECEIVED
            continue
        assert o.last_quantity == t["last_traded_quantity"] and o.volume == t["volume_traded"]
        if kind == 44:
            assert o.oi is None and o.depth is None and o.exchange_ts == RECEIVED
            continue
        assert o.oi == t["oi"]
        assert _pyk_ts_matches(t["exchange_timestamp"], o.exchange_ts, struct.unpack_from(">I", raw, 60)[0])
        assert o.depth is not None
        for side, levels in (("buy", o.depth.bids), ("sell", o.depth.asks)):
            assert len(levels) == len(t["depth"][side]) == 5
            for ol, tl in zip(levels, t["depth"][side]):
                assert (ol.quantity, ol.orders, float(ol.price)) == (tl["quantity"], tl["orders"], tl["price"])


def test_pykiteconnect_quirk_zero_timestamp_is_1970_not_absent() -> None:
    (theirs,) = KiteTicker.__new__(KiteTicker)._parse_binary(frame(full_packet(INFY, 1, ts=0)))
    assert theirs["exchange_timestamp"] == datetime.fromtimestamp(0)  # naive, host-local
    (ours,) = decoder().decode(frame(full_packet(INFY, 1, ts=0)), RECEIVED)
    assert ours.exchange_ts == RECEIVED


def test_cached_values_are_reused_without_changing_results() -> None:
    dec = decoder()
    first = dec.decode(frame(full_packet(INFY, 150_000)), RECEIVED)
    again = dec.decode(frame(full_packet(INFY, 150_000)), RECEIVED)
    other = dec.decode(frame(full_packet(INFY, 150_005)), datetime(2021, 7, 5, 5, 11, 31, tzinfo=timezone.utc))
    assert first == again
    assert first[0].depth is not None and again[0].depth is not None
    assert first[0].depth.bids[0] is again[0].depth.bids[0]  # immutable levels are shared, not rebuilt
    assert other[0].last_price == Decimal("1500.05") and other[0].receive_ts.utcoffset().total_seconds() == 0


# --- text frames ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"type": "order", "data": {"order_id": "1"}}', KiteMessage("order", {"order_id": "1"})),
        ('{"type": "error", "data": "Can\'t subscribe to more than 3000 instruments."}',
         KiteMessage("error", "Can't subscribe to more than 3000 instruments.")),
        (b'{"type": "message", "data": "hello"}', KiteMessage("message", "hello")),
    ],
)  # fmt: skip
def test_text_messages_parse_into_kite_messages(text: str | bytes, expected: KiteMessage) -> None:
    dec = decoder()
    assert dec.parse_text(text) == expected and dec.stats.text_messages == 1


@pytest.mark.parametrize(
    ("text", "kind"), [("{not json", BAD_JSON), (b"\xff\xfe", BAD_JSON), ("[1, 2]", BAD_MESSAGE), ('{"data": 1}', BAD_MESSAGE)]
)
def test_malformed_text_messages_return_none_and_are_counted(text: str | bytes, kind: str) -> None:
    dec = decoder()
    assert dec.parse_text(text) is None
    assert dec.stats.malformed == {kind: 1}


# --- client -> server -------------------------------------------------------------------------


def test_requests_are_compact_json_in_the_documented_shape() -> None:
    assert subscribe([408065, 884737]) == '{"a":"subscribe","v":[408065,884737]}'
    assert unsubscribe((408065,)) == '{"a":"unsubscribe","v":[408065]}'
    assert set_mode("full", [408065]) == '{"a":"mode","v":["full",[408065]]}'
    assert json.loads(set_mode("ltp", iter([1, 2]))) == {"a": "mode", "v": ["ltp", [1, 2]]}


def test_unknown_mode_is_refused_with_the_valid_choices() -> None:
    with pytest.raises(ValueError, match="ltp, quote, full"):
        set_mode("FULL", [408065])


@pytest.mark.parametrize("bad", [0, -1, 2**32, "408065", True, 1.5])
def test_tokens_that_are_not_32_bit_positive_integers_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="instrument token"):
        subscribe([bad])  # type: ignore[list-item]


def test_depth_is_decoded_on_first_read_and_equals_an_eagerly_built_one() -> None:
    from dataclasses import FrozenInstanceError

    from core.ticks import DepthLevel

    packets = [full_packet(INFY, 150_000 + i) for i in range(3)]
    mixed = frame(ltp_packet(INFY, 1), *packets)  # the general path
    for ticks in (decoder().decode(frame(*packets), RECEIVED), decoder().decode(mixed, RECEIVED)[1:]):
        depth = ticks[0].depth
        assert depth._source is not None  # nothing built yet
        expected = Depth(
            tuple(DepthLevel(Decimal(f"1500.0{i}"), 100 + i, i) for i in range(5)),
            tuple(DepthLevel(Decimal(f"1500.0{5 + i}"), 105 + i, 5 + i) for i in range(5)),
        )
        assert depth == expected and hash(depth) == hash(expected) and repr(depth) == repr(expected)
        assert depth._source is None and type(depth.bids) is tuple and len(depth.asks) == 5
        assert pickle.loads(pickle.dumps(ticks[1])) == ticks[1]
        with pytest.raises(FrozenInstanceError):
            depth.bids = ()  # type: ignore[misc]


def test_without_depth_full_ticks_carry_everything_else() -> None:
    packets = [full_packet(INFY, 150_000 + i, volume=1000 + i, oi=7) for i in range(3)]
    for raw in (frame(*packets), frame(ltp_packet(INFY, 1), *packets)):  # the fast and the general path
        with_depth = KiteDecoder({INFY: Instrument("NSE", f"T{INFY}", INFY)}).decode(raw, RECEIVED)
        without = KiteDecoder({INFY: Instrument("NSE", f"T{INFY}", INFY)}, depth=False).decode(raw, RECEIVED)
        assert [t.depth for t in without] == [None] * len(without)
        assert [dataclasses.replace(t, depth=None) for t in with_depth] == without


# --- decoding a frame again (the tick journal) -----------------------------------------------


def _as_candle_reads(ticks: list[TickData]) -> list[TickData]:
    """A tick as a candle reads it, and as a frame's replay gives it: everything but the depth."""
    return [dataclasses.replace(t, depth=None) for t in ticks]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(packets(), min_size=1, max_size=40), st.booleans(), st.integers(0, 3), st.data())
def test_a_packed_frame_replays_to_the_ticks_it_was_decoded_to(pkts: list[bytes], timed_only: bool, cuts: int, data) -> None:
    tokens = sorted({struct.unpack_from(">I", p)[0] for p in pkts})
    known = tokens[: max(1, len(tokens) - 1)]  # one token unknown to the decoder (when there are two)
    dec = KiteDecoder({t: Instrument("X", f"S{t}", t) for t in known}, timed_only=timed_only)
    raw = frame(*pkts)
    for _ in range(cuts):  # damage: kept packets must come back the same, damage and all
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw = raw[:pos] + bytes([raw[pos] ^ 0x10]) + raw[pos + 1 :]
    epoch = 1_625_461_890.123456
    ticks = dec.decode(raw, datetime.fromtimestamp(epoch, IST))
    source = KiteFrameSource.loads(dec.source.dumps())  # as the journal keeps it
    packed = source.pack(raw)
    assert _as_candle_reads(source.replay(packed, epoch)) == _as_candle_reads(ticks)


def test_a_frame_of_full_packets_is_packed_without_its_depth_blocks() -> None:
    tokens = [(k << 8) | 1 for k in range(1, 71)]  # 70 packets: two runs of 32 and a tail of 6
    dec = decoder(*tokens)
    raw = frame(*(full_packet(t, 150_000 + t % 997, volume=t) for t in tokens))
    ticks = dec.decode(raw, RECEIVED)
    packed = dec.source.pack(raw)
    assert len(raw) == 2 + 70 * 186 and len(packed) == 1 + 2 + 70 * 66
    assert _as_candle_reads(dec.source.replay(packed, RECEIVED.timestamp())) == _as_candle_reads(ticks)
    # sized like full packets by coincidence: kept whole
    odd = struct.pack(">H", 2) + struct.pack(">H", 180) + bytes(180) + struct.pack(">H", 188) + bytes(188)
    assert dec.source.pack(odd) == b"\x00" + odd
    with pytest.raises(ValueError, match="not a packed Kite frame"):
        dec.source.replay(b"\x07" + raw, 0.0)


def test_the_source_of_a_frame_is_the_table_that_decoded_it_not_a_later_one() -> None:
    dec = decoder(INFY)
    raw = frame(full_packet(INFY, 157_315))
    ticks = dec.decode(raw, RECEIVED)
    source = dec.source
    dec.set_instruments({INFY: Instrument("BSE", "INFY-B", INFY)})  # e.g. another thread subscribing
    assert dec.source is source
    assert [t.symbol for t in source.replay(source.pack(raw), RECEIVED.timestamp())] == ["T408065"] == [t.symbol for t in ticks]
    assert [t.exchange for t in dec.decode(raw, RECEIVED)] == ["BSE"] and dec.source is not source
    assert repr(source) == "KiteFrameSource(1 instruments, timed_only=False)"
