"""The Kotak SFeed codec: spec vectors, every packet kind, control replies, bad input, and the official SDK as oracle."""

from __future__ import annotations

import dataclasses
import json
import struct
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brokers.kotak_neo import protocol
from brokers.kotak_neo.protocol import (
    AUTH_FAILED,
    AUTH_OK,
    AUTH_UNSUPPORTED_FORMAT,
    BAD_JSON,
    BAD_LENGTH,
    BAD_MESSAGE,
    DEPTH,
    EMPTY_FRAME,
    EXCHANGE_SEGMENTS,
    FULL_DEPTH,
    INDEX,
    MAX_TOKENS_PER_FRAME,
    OTHER,
    SCRIPS,
    SCRIPS_LITE,
    SEGMENT_EXCHANGES,
    SEGMENT_IDS,
    SHORT_CAS_REFERENCE,
    SHORT_INDEX,
    SHORT_MARKET_PICTURE,
    SHORT_MARKET_STATUS,
    SHORT_MINI,
    SUBSCRIBE_ACK,
    TRAILING_BYTES,
    TRUNCATED_PACKET,
    UNKNOWN_PACKET,
    ControlMessage,
    KotakDecoder,
    MarketStatus,
    auth_frame,
    instrument_key,
    instruments_by_key,
    parse_control,
    parse_key,
    snapshot,
    split_batch,
    subscribe,
    subscribe_exchange,
    unsubscribe,
    unsubscribe_exchange,
)
from core.ist import IST
from core.ticks import Depth, DepthLevel, Instrument, TickData

RECEIVED = datetime(2026, 11, 24, 9, 15, 30, 123456, tzinfo=IST)
SECONDS = 1_795_491_900  # 2026-11-24 09:15:00 IST
AT = datetime(2026, 11, 24, 9, 15, tzinfo=IST)
TCS = 11536  # nse_cm

# the test vector of Kotak's websocket.md (section 10): a mini touch line for nse_cm 11536
DOC_VECTOR = bytes.fromhex(
    "36 00 28 1c 01 01 00 07 00 10 2d 00 00 80 26 b4 68 00 00 00 00 40 e2 01 00 32 00 00 00 00 00 00 00 90 dc 01 00"
    " 77 00 00 00 b0 05 00 00 01 00 00 00 02 01 00 00 00"
)
# The auth response: the success body of the SDK's own client tests
AUTH_REPLY = (
    '{"message_code":1119,"id":"SFD_CPROD_701","version":1,"exchanges":{"nse_cm":{"value":1,"divider":100},'
    '"nse_fo":{"value":2,"divider":100},"cde_fo":{"value":3,"divider":10000000},"bse_cd":{"value":7,"divider":10000000}}}'
)
ACK_DOC = (
    '{"message_code":1109,"error_code":0,"description":"SUBSCRIBED",'
    '"data":{"nse_cm|1333":{"cas_status":1,"trading_symbols":"HDFCBANK-EQ"}}}'
)
ACK_SDK = '{"message_code":1109,"message":"Subscribed","trading_symbols":{"nse_cm|2885":"RELIANCE-EQ"}}'

# --- packet builders: the full layouts of Kotak's websocket.md, written independently of the codec ---

_HEADER = struct.Struct("<HHbBBBB")
_MP = struct.Struct("<IqqqqqIIIIIqIIIIhiIdiIIIIIBI")
_ROW = struct.Struct("<qii")
_MINI = struct.Struct("<IqIqIiiIBI")
_INDEX = struct.Struct("<IiiiiiQiiidBi21s")
_STATUS = struct.Struct("<H5s")
_CAS = struct.Struct("<iiqq15s")  # the docs' 48-byte layout


def header(n: int, code: int, exchange_id: int = 1, level: int = 0) -> bytes:
    return _HEADER.pack(n, code, exchange_id, level, 0, 7, 0)


def market_picture(
    token: int = TCS, *, level: int = 8, exchange_id: int = 1, ltp: int = 123456, volume: int = 1000, ltq: int = 5, oi: int = 0,
    ltt: int = SECONDS, lut: int = SECONDS, bids: tuple = ((123450, 10, 1),), asks: tuple = ((123460, 20, 2),),
    counts: tuple[int, int] | None = None, rows: tuple | None = None, code: int = 7208,
) -> bytes:  # fmt: skip
    """A market picture; bids/asks are (price, quantity, orders); ``rows`` overrides the rows sent."""
    nb, na = counts if counts is not None else (len(bids), len(asks))
    body = _MP.pack(
        token, 7000, 8000, volume, ltt, lut, ltp + 100, ltp + 50, ltp + 200, ltp // 2, ltp, ltq, ltp + 3, ltp + 1,
        nb, na, 1, 119, oi, 1.5e9, 1456, ltp * 2, ltp // 2, ltp * 3, ltp // 3, 1, 2, 1,
    )  # fmt: skip
    sent = rows if rows is not None else tuple(bids) + tuple(asks)
    raw = b"".join(_ROW.pack(q, p, o) for p, q, o in sent)
    return header(9 + len(body) + len(raw), code, exchange_id, level) + body + raw


def mini(
    token: int = TCS, *, exchange_id: int = 1, ltp: int = 123456, ltq: int = 50, ltt: int = SECONDS, close: int = 122000
) -> bytes:
    return header(54, 7208, exchange_id, 1) + _MINI.pack(token, ltt, ltp, ltq, close, 119, 1456, 1, 2, 1)


def index(
    token: int = 26000, *, exchange_id: int = 1, value: int = 2345670, ltt: int = SECONDS, name: bytes = b"Nifty 50"
) -> bytes:
    body = _INDEX.pack(
        token, value - 50, value - 80, value + 90, value - 120, value, ltt, value * 2, value // 2, 57, 1e12, 2, 1, name
    )
    return header(87, 7207, exchange_id) + body


def status(code: int, text: bytes = b"OPEN", exchange_id: int = 1) -> bytes:
    return header(16, 105, exchange_id) + _STATUS.pack(code, text)


def cas(token: int = TCS, ref_price: int = 123400) -> bytes:
    return header(48, 104) + _CAS.pack(token, ref_price, 10, 5, b"")


def decoder(*keys: str, dividers: dict | None = None) -> KotakDecoder:
    keys = keys or (f"nse_cm|{TCS}",)
    return KotakDecoder({k: Instrument("NSE", f"S{k.split('|')[1]}", int(k.split("|")[1])) for k in keys}, dividers)


def general_path(*packets: bytes) -> bytes:
    """A frame the uniform fast path declines (it starts with a market status packet)."""
    return status(1) + b"".join(packets)


# --- the spec's vectors -------------------------------------------------------------------------


def test_doc_vector_decodes_to_the_documented_mini_touch_line() -> None:
    assert split_batch(DOC_VECTOR) == [DOC_VECTOR]
    (tick,) = decoder().decode(DOC_VECTOR, RECEIVED)
    assert tick == TickData(
        broker="kotak_neo", exchange="NSE", symbol=f"S{TCS}", token=TCS, last_price=Decimal("1234.56"), last_quantity=50,
        volume=None, oi=None, exchange_ts=datetime(2025, 8, 31, 16, 10, tzinfo=IST), receive_ts=RECEIVED, depth=None,
    )  # fmt: skip
    assert str(tick.last_price) == "1234.56"


def test_auth_frame_is_byte_for_byte_the_spec_example() -> None:
    expected = (
        '{"user":"<UCC>","auth":"<session sid>","format":"native_batch","source":"NEOTRADEAPI","platform":"Web",'
        '"version":"1.2.3","sdk_version":2,"sdk_date":"2026-08-07T09:41:17.667Z","conn_req_time":1723456789000,"sessionValidation":false}'
    )
    assert auth_frame("<UCC>", "<session sid>", conn_req_time_ms=1723456789000) == expected


def test_auth_reply_example_gives_dividers_keyed_by_exchange_id() -> None:
    message = parse_control(AUTH_REPLY)
    assert message.kind == AUTH_OK and message.code == 1119 and message.ok
    assert message.dividers == {1: 100, 2: 100, 3: 10_000_000, 7: 10_000_000}


def test_control_frames_are_compact_json_in_the_documented_shape() -> None:
    assert subscribe(["nse_cm|11536", "nse_cm|1594"]) == [
        '{"event":"subscribeScrips","inputtoken":"nse_cm|11536,nse_cm|1594","ack_symbol":true}'
    ]
    assert unsubscribe(["nse_cm|11536"]) == ['{"event":"unsubscribeScrips","inputtoken":"nse_cm|11536"}']
    assert subscribe(["nse_cm|Nifty 50", "bse_cm|SENSEX"], INDEX) == [
        '{"event":"subscribeIndices","inputtoken":"nse_cm|Nifty 50,bse_cm|SENSEX","ack_symbol":true}'
    ]
    assert snapshot(["nse_cm|1333"], DEPTH) == ['{"event":"snapshotDepth","inputtoken":"nse_cm|1333","ack_symbol":true}']
    assert subscribe_exchange() == '{"event":"subscribeExchange"}'
    assert unsubscribe_exchange() == '{"event":"unsubscribeExchange"}'


@pytest.mark.parametrize(
    ("intent", "sub", "unsub", "snap"),
    [
        (SCRIPS_LITE, "subscribeScripsLite", "unsubscribeScripsLite", "snapshotScripsLite"),
        (SCRIPS, "subscribeScrips", "unsubscribeScrips", "snapshotScrips"),
        (DEPTH, "subscribeDepth", "unsubscribeDepth", "snapshotDepth"),
        (FULL_DEPTH, "subscribeFullDepth", "unsubscribeFullDepth", None),
        (INDEX, "subscribeIndices", "unsubscribeIndices", "snapshotIndices"),
    ],
)
def test_every_intent_uses_the_spec_event_names(intent: str, sub: str, unsub: str, snap: str | None) -> None:
    assert json.loads(subscribe(["nse_cm|1"], intent)[0])["event"] == sub
    assert json.loads(unsubscribe(["nse_cm|1"], intent)[0])["event"] == unsub
    if snap is None:
        with pytest.raises(ValueError, match="no snapshot"):
            snapshot(["nse_cm|1"], intent)
    else:
        assert json.loads(snapshot(["nse_cm|1"], intent)[0]) == {"event": snap, "inputtoken": "nse_cm|1", "ack_symbol": True}


# --- client frames: chunking and validation ------------------------------------------------------


def test_subscribe_frames_carry_at_most_100_keys_in_order() -> None:
    keys = [f"nse_cm|{i}" for i in range(1, 251)]
    frames = subscribe(keys, DEPTH)
    tokens = [json.loads(f)["inputtoken"].split(",") for f in frames]
    assert [len(t) for t in tokens] == [100, 100, 50]
    assert sum(tokens, []) == keys
    assert all(json.loads(f)["ack_symbol"] is True for f in frames)
    assert [len(json.loads(f)["inputtoken"].split(",")) for f in unsubscribe(keys, DEPTH)] == [100, 100, 50]
    assert len(subscribe(keys[:100])) == 1 and len(subscribe(keys[:101])) == 2
    assert [len(json.loads(f)["inputtoken"].split(",")) for f in subscribe(keys[:7], per_frame=3)] == [3, 3, 1]


def test_no_keys_give_no_frames_and_repeated_keys_are_sent_once() -> None:
    assert subscribe([]) == [] and unsubscribe(iter(())) == []
    (frame,) = subscribe(["nse_cm|1", "nse_fo|1", "nse_cm|1"])
    assert json.loads(frame)["inputtoken"] == "nse_cm|1,nse_fo|1"


@pytest.mark.parametrize("per_frame", [0, 101, -1, True])
def test_frames_larger_than_100_or_empty_are_refused(per_frame: int) -> None:
    with pytest.raises(ValueError, match="per_frame"):
        subscribe(["nse_cm|1"], per_frame=per_frame)


@pytest.mark.parametrize(
    "bad", ["1594", "NSE|1594", "nse_cm|", "nse_cm|1,2", "nse_cm| 1594", "xyz|1", 1594, "nse_cm|a|b"]
)  # fmt: skip
def test_malformed_keys_are_refused_before_any_frame_is_built(bad: object) -> None:
    keys = [f"nse_cm|{i}" for i in range(150)] + [bad]
    with pytest.raises(ValueError, match="instrument key"):
        subscribe(keys)  # type: ignore[arg-type]


def test_a_single_string_is_not_taken_for_a_list_of_keys() -> None:
    with pytest.raises(ValueError, match="list of instrument keys"):
        subscribe("nse_cm|1594")


def test_unknown_intent_is_refused_with_the_valid_choices() -> None:
    with pytest.raises(ValueError, match="scrips_lite, scrips, depth, full_depth, index"):
        subscribe(["nse_cm|1"], "quote")


@pytest.mark.parametrize(("user", "sid"), [("", "sid"), ("UCC", ""), (None, "sid")])
def test_auth_frame_refuses_empty_credentials_and_names_the_fix(user: object, sid: object) -> None:
    with pytest.raises(ValueError, match="UCC|sid of the MPIN"):
        auth_frame(user, sid, conn_req_time_ms=1)  # type: ignore[arg-type]


def test_auth_frame_takes_the_connect_time_from_the_caller() -> None:
    frame = json.loads(auth_frame("AB123", "9f1c-sid", conn_req_time_ms=5, session_validation=True))
    assert (frame["user"], frame["auth"], frame["conn_req_time"], frame["sessionValidation"]) == ("AB123", "9f1c-sid", 5, True)
    with pytest.raises(ValueError, match="epoch milliseconds"):
        auth_frame("AB123", "sid", conn_req_time_ms=1.5)  # type: ignore[arg-type]


# --- instrument keys ------------------------------------------------------------------------------


def test_instrument_keys_use_the_scrip_code_or_the_index_name() -> None:
    assert instrument_key(Instrument("NSE", "INFY", 1594)) == "nse_cm|1594"
    assert instrument_key(Instrument("NFO", "NIFTY26NOVFUT", 52175)) == "nse_fo|52175"
    assert instrument_key(Instrument("MCX", "CRUDEOIL", 499095)) == "mcx_fo|499095"
    assert instrument_key(Instrument("NSE", "Nifty 50")) == "nse_cm|Nifty 50"
    assert instrument_key(Instrument("BSE", "SENSEX")) == "bse_cm|SENSEX"
    insts = [Instrument("NSE", "INFY", 1594), Instrument("BSE", "INFY", 500209)]
    assert instruments_by_key(insts) == {"nse_cm|1594": insts[0], "bse_cm|500209": insts[1]}


@dataclasses.dataclass(frozen=True, slots=True)
class NamedInstrument(Instrument):
    feed_name: str = ""


def test_an_index_is_keyed_by_its_feed_name_when_it_has_one() -> None:
    nifty = NamedInstrument("NSE", "NIFTY 50", 0, Decimal("0.05"), "Nifty 50")
    assert instrument_key(nifty) == "nse_cm|Nifty 50"
    assert instrument_key(NamedInstrument("NSE", "INFY", 1594, Decimal("0.05"), "ignored")) == "nse_cm|1594"
    assert instrument_key(NamedInstrument("BSE", "SENSEX")) == "bse_cm|SENSEX"
    (tick,) = KotakDecoder(instruments_by_key([nifty])).decode(index(26000, name=b"Nifty 50"), RECEIVED)
    assert (tick.exchange, tick.symbol) == ("NSE", "NIFTY 50")  # candles keep the watchlist's spelling


@pytest.mark.parametrize(
    ("inst", "match"),
    [
        (Instrument("NASDAQ", "AAPL", 1), "not on Kotak Neo"),
        (Instrument("NSE", "X", -1), "not a Kotak scrip code"),
        (Instrument("NSE", "A,B"), "instrument key"),
    ],
)
def test_instruments_without_a_feed_key_are_refused(inst: Instrument, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        instrument_key(inst)


def test_exchange_and_segment_tables_are_inverse_and_cover_every_spec_segment() -> None:
    spec_ids = {
        "nse_cm": 1,
        "nse_fo": 2,
        "cde_fo": 3,
        "nse_com": 4,
        "bse_cm": 5,
        "bse_fo": 6,
        "bse_cd": 7,
        "bse_co": 8,
        "mcx_fo": 9,
        "ncd_co": 10,
    }
    assert dict(SEGMENT_IDS) == spec_ids
    assert set(EXCHANGE_SEGMENTS.values()) == set(spec_ids)
    assert all(SEGMENT_EXCHANGES[seg] == exchange for exchange, seg in EXCHANGE_SEGMENTS.items())
    assert parse_key("nse_cm|Nifty 50") == ("nse_cm", "Nifty 50")


def test_decoder_refuses_keys_that_are_not_feed_keys() -> None:
    with pytest.raises(ValueError, match="unknown segment"):
        KotakDecoder({"NSE:INFY|1594": Instrument("NSE", "INFY", 1594)})


# --- every packet kind -----------------------------------------------------------------------------


def test_depth_market_picture_carries_volume_oi_quantity_and_five_levels_a_side() -> None:
    bids = tuple((123450 - 5 * i, 100 + i, 1 + i) for i in range(5))
    asks = tuple((123460 + 5 * i, 200 + i, 2 + i) for i in range(5))
    packet = market_picture(ltp=123455, volume=987_654, ltq=75, oi=4321, lut=SECONDS + 2, ltt=SECONDS, bids=bids, asks=asks)
    assert len(packet) == 144 + 10 * 16
    (tick,) = decoder().decode(packet, RECEIVED)
    assert (tick.last_price, tick.volume, tick.last_quantity, tick.oi) == (Decimal("1234.55"), 987_654, 75, 4321)
    assert tick.exchange_ts == AT + timedelta(seconds=2)  # the last update time, not the last trade time
    assert tick.depth == Depth(
        tuple(DepthLevel(Decimal(p).scaleb(-2), q, o) for p, q, o in bids),
        tuple(DepthLevel(Decimal(p).scaleb(-2), q, o) for p, q, o in asks),
    )
    assert str(tick.depth.asks[4].price) == "1234.80"


def test_touch_line_reads_exactly_one_bid_and_one_ask_whatever_the_counts_say() -> None:
    rows = ((100, 1, 1), (101, 2, 2), (102, 3, 3), (103, 4, 4))
    (tick,) = decoder().decode(market_picture(level=4, counts=(5, 5), rows=rows), RECEIVED)
    assert tick.depth == Depth((DepthLevel(Decimal("1.00"), 1, 1),), (DepthLevel(Decimal("1.01"), 2, 2),))


def test_full_depth_reads_twenty_levels_a_side() -> None:
    bids = tuple((1000 - i, i, 1) for i in range(20))
    asks = tuple((2000 + i, i, 2) for i in range(20))
    (tick,) = decoder().decode(market_picture(level=16, bids=bids, asks=asks), RECEIVED)
    assert tick.depth is not None and len(tick.depth.bids) == 20 and len(tick.depth.asks) == 20
    assert tick.depth.asks[19] == DepthLevel(Decimal("20.19"), 19, 2)


def test_level_2_is_a_market_picture_too() -> None:
    (tick,) = decoder().decode(market_picture(level=2, bids=(), asks=()), RECEIVED)
    assert tick.depth == Depth((), ()) and tick.volume == 1000


def test_fewer_depth_rows_than_counts_keeps_the_rows_present_and_counts_it() -> None:
    dec = decoder()
    rows = ((100, 1, 1), (101, 2, 2), (102, 3, 3))
    (tick,) = dec.decode(market_picture(counts=(2, 5), rows=rows), RECEIVED)
    assert tick.depth is not None
    assert [lv.quantity for lv in tick.depth.bids] == [1, 2] and [lv.quantity for lv in tick.depth.asks] == [3]
    assert dec.stats.short_depth == 1 and dec.stats.malformed == {}


def test_rows_beyond_the_counts_are_not_read_as_depth() -> None:
    rows = ((100, 1, 1), (101, 2, 2), (102, 3, 3))
    (tick,) = decoder().decode(market_picture(counts=(1, 1), rows=rows), RECEIVED)
    assert tick.depth is not None and len(tick.depth.bids) == 1 and len(tick.depth.asks) == 1


@pytest.mark.parametrize(
    ("ltt", "lut", "expected"),
    [
        (SECONDS, SECONDS + 9, AT + timedelta(seconds=9)),
        (SECONDS, 0, AT),  # no update time: the last trade time
        (SECONDS, -2_209_008_600, AT),  # the SDK's 1900-01-01 IST sentinel
        (0, 0, RECEIVED),
        (-5, -2_209_008_600, RECEIVED),
        (0, SECONDS * 1000 + 250, AT + timedelta(milliseconds=250)),  # milliseconds, should the unit be so
        (0, 10**11, RECEIVED),  # neither seconds nor milliseconds of this era
    ],
)
def test_market_picture_time_is_update_time_else_trade_time_else_receive_time(ltt: int, lut: int, expected: datetime) -> None:
    (tick,) = decoder().decode(market_picture(ltt=ltt, lut=lut), RECEIVED)
    assert tick.exchange_ts == expected and tick.exchange_ts.utcoffset() == timedelta(hours=5, minutes=30)


def test_mini_touch_line_has_price_and_quantity_but_no_volume_oi_or_depth() -> None:
    (tick,) = decoder().decode(mini(ltp=98765, ltq=3, ltt=0), RECEIVED)
    assert (tick.last_price, tick.last_quantity, tick.volume, tick.oi, tick.depth) == (Decimal("987.65"), 3, None, None, None)
    assert tick.exchange_ts == RECEIVED


def test_index_packet_has_no_volume_and_carries_its_trade_time() -> None:
    dec = decoder("nse_cm|26000")
    (tick,) = dec.decode(index(26000, value=2345670, ltt=SECONDS), RECEIVED)
    assert (tick.token, tick.last_price, tick.volume, tick.last_quantity, tick.oi) == (26000, Decimal("23456.70"), None, None, None)
    assert tick.exchange_ts == AT and tick.depth is None


def test_negative_index_value_decodes_as_a_negative_price() -> None:
    (tick,) = decoder("nse_cm|26000").decode(index(26000, value=-150), RECEIVED)
    assert tick.last_price == Decimal("-1.50")


def test_index_subscribed_by_name_is_matched_by_name_then_by_token() -> None:
    dec = KotakDecoder({"nse_cm|Nifty 50": Instrument("NSE", "Nifty 50"), "bse_cm|SENSEX": Instrument("BSE", "SENSEX")})
    first = dec.decode(index(26000, name=b"Nifty 50") + index(1, exchange_id=5, name=b"SENSEX"), RECEIVED)
    again = dec.decode(index(26000, name=b"renamed") + index(26000, exchange_id=5, name=b"Nifty 50"), RECEIVED)
    assert [(t.exchange, t.symbol, t.token) for t in first] == [("NSE", "Nifty 50", 26000), ("BSE", "SENSEX", 1)]
    assert [(t.symbol, t.token) for t in again] == [("Nifty 50", 26000)]  # same name, other segment: not ours
    assert dec.stats.unknown_tokens == 1


def test_index_name_cut_to_21_bytes_matches_the_one_name_it_begins() -> None:
    dec = KotakDecoder(
        {
            "nse_cm|Nifty Financial Services": Instrument("NSE", "Nifty Financial Services"),
            "nse_cm|Nifty 50": Instrument("NSE", "Nifty 50"),
        }
    )
    (tick,) = dec.decode(index(27000, name=b"Nifty Financial Services"[:21]), RECEIVED)
    assert tick.symbol == "Nifty Financial Services"


def test_index_name_cut_short_is_not_guessed_when_two_names_begin_so() -> None:
    dec = KotakDecoder(
        {
            "nse_cm|Nifty Financial Services": Instrument("NSE", "Nifty Financial Services"),
            "nse_cm|Nifty Financial Services Ex-Bank": Instrument("NSE", "Nifty Financial Services Ex-Bank"),
        }
    )
    assert dec.decode(index(27000, name=b"Nifty Financial Services"[:21]), RECEIVED) == []
    assert dec.stats.unknown_tokens == 1


def test_market_status_packets_update_the_latest_status_per_segment() -> None:
    dec = decoder()
    frame = status(1, b"OPEN") + status(6, b"", exchange_id=2) + header(9, 6521, 5) + header(9, 6511, 1)
    assert dec.decode(frame, RECEIVED) == []
    assert dec.market_status == {
        "nse_cm": MarketStatus("nse_cm", 1, "Open", ""),
        "nse_fo": MarketStatus("nse_fo", 6, "ClosingStart", ""),
        "bse_cm": MarketStatus("bse_cm", 2, "Close", ""),
    }
    assert dec.stats.market_status == 4 and dec.stats.packets == 4 and dec.stats.malformed == {}


def test_market_status_text_on_the_wire_is_kept() -> None:
    dec = decoder()
    dec.decode(status(1, b"OPEN") + status(42, b"ODD"), RECEIVED)
    assert dec.market_status["nse_cm"] == MarketStatus("nse_cm", 42, "ODD", "ODD")
    dec.decode(status(2, b"CLOSE"), RECEIVED)
    assert dec.market_status["nse_cm"] == MarketStatus("nse_cm", 2, "Close", "CLOSE")


def test_closing_auction_reference_is_counted_not_turned_into_a_tick() -> None:
    dec = decoder()
    assert dec.decode(cas() + mini(), RECEIVED)[0].last_quantity == 50
    assert dec.stats.cas_references == 1 and dec.stats.ticks == 1


def test_one_frame_may_mix_every_packet_kind() -> None:
    dec = decoder(f"nse_cm|{TCS}", "nse_cm|26000")
    frame = mini(ltp=1) + market_picture(ltp=2) + index(26000, value=3) + status(1) + cas() + market_picture(level=4, ltp=5)
    assert [t.last_price for t in dec.decode(frame, RECEIVED)] == [
        Decimal("0.01"),
        Decimal("0.02"),
        Decimal("0.03"),
        Decimal("0.05"),
    ]
    assert dec.stats.packets == 6 and dec.stats.ticks == 4


@pytest.mark.parametrize(
    "packets",
    [
        [market_picture(ltp=100 + i, volume=i) for i in range(5)],
        [market_picture(level=4, ltp=100 + i) for i in range(3)],
        [mini(ltp=i) for i in range(4)],
        [index(26000, value=i) for i in range(4)],
        [market_picture(token=999)] * 2,
    ],
)
def test_uniform_frames_decode_the_same_as_mixed_ones(packets: list[bytes]) -> None:
    keys = (f"nse_cm|{TCS}", "nse_cm|26000")
    fast, slow = decoder(*keys), decoder(*keys)
    assert fast.decode(b"".join(packets), RECEIVED) == slow.decode(general_path(*packets), RECEIVED)
    assert (fast.stats.packets + 1, fast.stats.ticks, fast.stats.unknown_tokens) == (
        slow.stats.packets, slow.stats.ticks, slow.stats.unknown_tokens,
    )  # fmt: skip


def test_same_token_on_two_segments_are_two_instruments() -> None:
    dec = KotakDecoder({"nse_cm|1": Instrument("NSE", "A", 1), "bse_cm|1": Instrument("BSE", "B", 1)})
    ticks = dec.decode(mini(1, exchange_id=1) + mini(1, exchange_id=5) + mini(1, exchange_id=2), RECEIVED)
    assert [t.key for t in ticks] == ["NSE:A", "BSE:B"] and dec.stats.unknown_tokens == 1


def test_decoded_ticks_are_genuine_frozen_tickdata() -> None:
    (tick,) = decoder().decode(market_picture(), RECEIVED)
    assert type(tick) is TickData and type(tick.depth) is Depth and type(tick.depth.bids[0]) is DepthLevel
    with pytest.raises(dataclasses.FrozenInstanceError):
        tick.last_price = Decimal(1)  # type: ignore[misc]
    assert tick == dataclasses.replace(tick)
    assert hash(tick.depth.bids[0]) == hash(DepthLevel(**dataclasses.asdict(tick.depth.bids[0])))


def test_cached_values_are_reused_without_changing_results() -> None:
    dec = decoder()
    first = dec.decode(market_picture(), RECEIVED)
    again = dec.decode(market_picture(), RECEIVED)
    other = dec.decode(market_picture(ltp=123457, ltt=0, lut=0), datetime(2026, 11, 24, 3, 46, tzinfo=timezone.utc))
    assert first == again and first[0].depth is not None and again[0].depth is not None
    assert first[0].depth.bids[0] is again[0].depth.bids[0]  # immutable levels are shared, not rebuilt
    assert other[0].last_price == Decimal("1234.57") and other[0].exchange_ts.utcoffset() == timedelta(0)


# --- price dividers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exchange_id", "divider", "raw", "expected"),
    [
        (1, 100, 123456, "1234.56"),
        (1, 100, 122000, "1220.00"),  # decimals kept: exact to the tick
        (4, 10_000, 835_025, "83.5025"),  # nse_com
        (3, 10_000_000, 835_012_500, "83.5012500"),  # cde_fo
        (10, 1, 4321, "4321"),  # ncd_co
        (9, 8, 100, "12.5"),  # not a power of ten: still exact
    ],
)
def test_prices_are_exact_decimals_over_the_exchange_divider(exchange_id: int, divider: int, raw: int, expected: str) -> None:
    segment = protocol.ID_SEGMENTS[exchange_id]
    dec = KotakDecoder({f"{segment}|7": Instrument("X", "Y", 7)}, {exchange_id: divider})
    ticks = dec.decode(
        mini(7, exchange_id=exchange_id, ltp=raw) + market_picture(7, exchange_id=exchange_id, ltp=raw, bids=((raw, 1, 1),)),
        RECEIVED,
    )
    assert [str(t.last_price) for t in ticks] == [expected, expected]
    assert all(isinstance(t.last_price, Decimal) for t in ticks)
    assert ticks[1].depth is not None and str(ticks[1].depth.bids[0].price) == expected


def test_exchanges_the_auth_reply_leaves_out_divide_by_100() -> None:
    dec = KotakDecoder({"mcx_fo|5": Instrument("MCX", "M", 5), "cde_fo|5": Instrument("CDS", "C", 5)})
    dec.parse_text(AUTH_REPLY)
    ticks = dec.decode(mini(5, exchange_id=9, ltp=123456) + mini(5, exchange_id=3, ltp=835_012_500), RECEIVED)
    assert [str(t.last_price) for t in ticks] == ["1234.56", "83.5012500"]


def test_dividers_can_be_replaced_and_named_by_segment() -> None:
    dec = KotakDecoder({"nse_com|5": Instrument("NCO", "G", 5), "nse_cm|Nifty 50": Instrument("NSE", "Nifty 50")})
    assert dec.decode(index(9, name=b"Nifty 50"), RECEIVED)[0].last_price == Decimal("23456.70")
    dec.set_dividers({"nse_com": 10_000, 1: 10})
    ticks = dec.decode(mini(5, exchange_id=4, ltp=835_025) + index(9, name=b"renamed", value=5), RECEIVED)
    assert [str(t.last_price) for t in ticks] == ["83.5025", "0.5"]  # the index is still known by its token
    assert dec.dividers == {4: 10_000, 1: 10}
    with pytest.raises(ValueError, match="positive integer"):
        dec.set_dividers({1: 0})
    with pytest.raises(ValueError, match="exchange id"):
        dec.set_dividers({"nasdaq": 100})


def test_set_instruments_replaces_the_mapping() -> None:
    dec = decoder()
    dec.set_instruments({"nse_cm|42": Instrument("NSE", "NEW", 42)})
    assert [t.symbol for t in dec.decode(mini(TCS) + mini(42), RECEIVED)] == ["NEW"]
    assert dec.stats.unknown_tokens == 1


# --- control replies ----------------------------------------------------------------------------------


def test_both_subscribe_ack_shapes_give_the_trading_symbols() -> None:
    doc, sdk = parse_control(ACK_DOC), parse_control(ACK_SDK)
    assert (doc.kind, doc.code, doc.message, doc.error_code, doc.ok) == (SUBSCRIBE_ACK, 1109, "SUBSCRIBED", 0, True)
    assert doc.symbols == {"nse_cm|1333": "HDFCBANK-EQ"}
    assert (sdk.kind, sdk.message, sdk.error_code, sdk.ok) == (SUBSCRIBE_ACK, "Subscribed", None, True)
    assert sdk.symbols == {"nse_cm|2885": "RELIANCE-EQ"}
    index_ack = parse_control('{"message_code":1109,"trading_symbols":{"nse_cm|Nifty 50":"NIFTY 50"}}')
    assert index_ack.symbols == {"nse_cm|Nifty 50": "NIFTY 50"}


def test_subscribe_ack_with_an_error_code_is_not_ok() -> None:
    message = parse_control('{"message_code":1109,"error_code":7,"description":"LIMIT"}')
    assert message.kind == SUBSCRIBE_ACK and not message.ok and message.symbols == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"message_code":1117,"exchanges":{"nse_cm":{"divider":100}}}', ControlMessage(AUTH_OK, 1117, dividers={1: 100})),
        ('{"message_code":1120,"message":"Auth failed"}', ControlMessage(AUTH_FAILED, 1120, "Auth failed")),
        ('{"message_code":1117,"format":"native_fallback"}', ControlMessage(
            AUTH_UNSUPPORTED_FORMAT, 1117, format="native_fallback"
        )),
        ('{"message_code":"1119","exchanges":{}}', ControlMessage(AUTH_OK, 1119)),
        ('{"message_code":4242,"msg":"hello"}', ControlMessage(OTHER, 4242, "hello")),
        ('{"status":"error"}', ControlMessage(OTHER, None)),
        ('{"message_code":"\\u00b2"}', ControlMessage(OTHER, None)),  # a digit to str.isdigit, not to int()
        (b'{"message_code":1109}', ControlMessage(SUBSCRIBE_ACK, 1109)),
    ],
)  # fmt: skip
def test_control_replies_parse_into_kinds_a_client_can_switch_on(text: str, expected: ControlMessage) -> None:
    assert parse_control(text) == expected


def test_auth_failure_and_fallback_are_not_ok() -> None:
    assert not parse_control('{"message_code":1120}').ok
    assert not parse_control('{"message_code":1119,"format":"native_fallback"}').ok
    assert parse_control('{"message_code":1119,"format":"native_batch"}').ok


def test_divider_entries_are_read_leniently_as_the_spec_says() -> None:
    exchanges = {
        "nse_cm": {"value": 1},  # no divider: 100
        "mcx_fo": {"divider": 100},  # no value: id from the table
        "bse_cd": {"value": "7", "divider": "10000000"},
        "cde_fo": {"value": 3, "divider": 0},  # nonsense divider: 100
        "xyz": {"divider": 5},  # neither value nor a known name: skipped
        "nse_fo": 100,  # not an object: skipped
        "bse_fo": {"value": 6, "divider": 1e4},
    }
    message = parse_control(json.dumps({"message_code": 1117, "exchanges": exchanges}))
    assert message.dividers == {1: 100, 9: 100, 7: 10_000_000, 3: 100, 6: 10_000}


def test_parse_text_counts_messages_applies_dividers_and_counts_bad_text() -> None:
    dec = decoder()
    assert dec.parse_text(AUTH_REPLY).kind == AUTH_OK  # type: ignore[union-attr]
    assert dec.dividers[3] == 10_000_000
    assert dec.parse_text(ACK_SDK).symbols == {"nse_cm|2885": "RELIANCE-EQ"}  # type: ignore[union-attr]
    assert dec.parse_text("{not json") is None and dec.parse_text(b"\xff\xfe") is None and dec.parse_text("[1109]") is None
    assert dec.stats.text_messages == 2 and dec.stats.malformed == {BAD_JSON: 2, BAD_MESSAGE: 1}


@pytest.mark.parametrize("text", ["", "{", "[1]", "null", b"\x80"])
def test_parse_control_says_what_is_wrong_with_bad_text(text: str | bytes) -> None:
    with pytest.raises(ValueError, match="SFeed text frame"):
        parse_control(text)


# --- split_batch ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", []),
        (b"\x36", []),
        (DOC_VECTOR + DOC_VECTOR, [DOC_VECTOR, DOC_VECTOR]),
        (header(9, 6511), [header(9, 6511)]),  # a packet may be its header alone
        (DOC_VECTOR + b"\x08\x00" + bytes(6), [DOC_VECTOR]),  # N < 9 stops the split
        (DOC_VECTOR + b"\x00\x00" + DOC_VECTOR, [DOC_VECTOR]),  # so does N = 0, even with packets after it
        (DOC_VECTOR + DOC_VECTOR[:-1], [DOC_VECTOR]),  # the frame ends before N bytes
        (DOC_VECTOR + b"\x01", [DOC_VECTOR]),
        (b"\xff\xff" + bytes(100), []),
    ],
)
def test_split_batch_follows_the_length_prefix_and_stops_where_the_spec_says(data: bytes, expected: list[bytes]) -> None:
    assert split_batch(data) == expected
    assert split_batch(bytearray(data)) == expected and split_batch(memoryview(data)) == expected


# --- malformed input: counted by kind, skipped, never raised -------------------------------------------------


@pytest.mark.parametrize(
    ("data", "kind", "kept"),
    [
        (b"", EMPTY_FRAME, 0),
        (mini() + b"\x05\x00" + bytes(10), BAD_LENGTH, 1),
        (mini() + b"\x00\x00", BAD_LENGTH, 1),
        (mini() + mini()[:-1], TRUNCATED_PACKET, 1),
        (mini() + b"\x01", TRAILING_BYTES, 1),
        (header(100, 7208, 1, 8) + bytes(91) + mini(), SHORT_MARKET_PICTURE, 1),
        (header(40, 7208, 1, 1) + bytes(31) + mini(), SHORT_MINI, 1),
        (header(86, 7207) + bytes(77) + mini(), SHORT_INDEX, 1),
        (header(12, 105) + bytes(3) + mini(), SHORT_MARKET_STATUS, 1),
        (header(20, 104) + bytes(11) + mini(), SHORT_CAS_REFERENCE, 1),
        (header(9, 9999, 1, 0) + mini(), UNKNOWN_PACKET, 1),
        (header(20, 7208, 1, 3) + bytes(11) + mini(), UNKNOWN_PACKET, 1),
    ],
)
def test_malformed_packets_are_counted_by_kind_and_good_ones_kept(data: bytes, kind: str, kept: int) -> None:
    dec = decoder()
    ticks = dec.decode(data, RECEIVED)
    assert len(ticks) == kept and all(t.last_quantity == 50 for t in ticks)
    assert dec.stats.malformed == {kind: 1}


def test_a_short_packet_inside_a_uniform_looking_frame_takes_the_careful_path() -> None:
    dec = decoder()
    # two 54-byte "packets": the second says 40 bytes, so the frame is not uniform after all
    data = mini() + header(40, 7208, 1, 1) + bytes(31) + b"\x0e\x00" + bytes(12)
    assert len(data) == 108
    assert len(dec.decode(data, RECEIVED)) == 1
    assert dec.stats.malformed == {SHORT_MINI: 1, UNKNOWN_PACKET: 1}


def test_unknown_tokens_are_skipped_and_counted_in_every_path() -> None:
    dec = decoder()
    ticks = dec.decode(mini(1) + mini(), RECEIVED) + dec.decode(market_picture(2), RECEIVED)
    ticks += dec.decode(general_path(market_picture(3), mini(4), index(5)), RECEIVED)
    assert [t.token for t in ticks] == [TCS] and dec.stats.unknown_tokens == 5 and dec.stats.malformed == {}


def test_stats_count_frames_packets_and_ticks() -> None:
    dec = decoder()
    dec.decode(mini() + mini(1), RECEIVED)
    dec.decode(market_picture() + status(2), RECEIVED)
    dec.decode(b"", RECEIVED)
    s = dec.stats
    assert (s.frames, s.packets, s.ticks, s.unknown_tokens, s.market_status) == (3, 4, 2, 1, 1)
    assert s.malformed == {EMPTY_FRAME: 1}


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=700))
def test_random_bytes_never_raise(data: bytes) -> None:
    dec = decoder(f"nse_cm|{TCS}", "nse_cm|26000")
    ticks = dec.decode(data, RECEIVED)
    assert all(type(t) is TickData for t in ticks)
    assert dec.stats.packets == len(split_batch(data))


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.sampled_from(["mp8", "mp4", "mp16", "mini", "index", "status", "cas", "open"]), min_size=1, max_size=6), st.data()
)
def test_mutated_valid_frames_never_raise(kinds: list[str], data: st.DataObject) -> None:
    build = {
        "mp8": lambda: market_picture(bids=((1, 2, 3),) * 5, asks=((4, 5, 6),) * 5),
        "mp4": lambda: market_picture(level=4),
        "mp16": lambda: market_picture(level=16, bids=((1, 2, 3),) * 20, asks=((4, 5, 6),) * 20),
        "mini": lambda: mini(),
        "index": lambda: index(name=b"Nifty 50"),
        "status": lambda: status(1),
        "cas": lambda: cas(),
        "open": lambda: header(9, 6511),
    }
    raw = bytearray(b"".join(build[k]() for k in kinds))
    for _ in range(data.draw(st.integers(0, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "length"]))
        pos = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del raw[pos:]
        elif op == "insert":
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=4))
        elif len(raw) >= 2:  # rewrite the first packet's length
            raw[0:2] = struct.pack("<H", data.draw(st.integers(0, 0xFFFF)))
    dec = KotakDecoder({f"nse_cm|{TCS}": Instrument("NSE", "TCS", TCS), "nse_cm|Nifty 50": Instrument("NSE", "Nifty 50")})
    ticks = dec.decode(bytes(raw), RECEIVED)
    assert len(ticks) <= len(split_batch(bytes(raw)))
    assert all(t.exchange_ts.tzinfo is not None and isinstance(t.last_price, Decimal) for t in ticks)


_CONTROL_NAMES = [
    "message_code",
    "exchanges",
    "trading_symbols",
    "data",
    "format",
    "error_code",
    "message",
    "nse_cm",
    "value",
    "divider",
]
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(_CONTROL_NAMES), children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200), st.builds(json.dumps, _JSON)))
def test_random_text_never_raises_from_parse_text(text: str | bytes) -> None:
    dec = decoder()
    message = dec.parse_text(text)
    assert message is None or isinstance(message, ControlMessage)
    assert dec.stats.text_messages + sum(dec.stats.malformed.values()) == 1


# --- the official SDK (kotakneoapi, neo_api_client) as oracle ---------------------------------------------------

POWERS = [1, 100, 10_000, 10_000_000]  # the dividers the spec lists (as powers of ten both sides compute exactly)
u32 = st.integers(0, 2**32 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
u63 = st.integers(0, 2**63 - 1)  # a cumulative volume: a negative one is a damaged packet (counted, skipped)
times = st.one_of(st.just(0), st.just(-2_209_008_600), st.integers(946_684_800, 2_000_000_000))


@st.composite
def sdk_packets(draw: st.DrawFn) -> bytes:
    exchange_id = draw(st.integers(1, 10))
    token = draw(st.integers(1, 2**32 - 1))
    kind = draw(st.sampled_from(["mp", "mini", "index"]))
    if kind == "index":
        body = _INDEX.pack(
            token, *draw(st.lists(i32, min_size=5, max_size=5)), draw(st.integers(0, 2_000_000_000)),
            draw(i32), draw(i32), draw(i32), 0.0, draw(st.integers(0, 255)), draw(i32), draw(st.binary(max_size=21)),
        )  # fmt: skip
        return header(87, 7207, exchange_id) + body
    if kind == "mini":
        return header(54, 7208, exchange_id, 1) + _MINI.pack(
            token,
            draw(times),
            draw(u32),
            draw(i64),
            draw(u32),
            draw(i32),
            draw(i32),
            draw(u32),
            draw(st.integers(0, 255)),
            draw(u32),
        )
    level = draw(st.sampled_from([2, 4, 8, 16]))
    nb, na = draw(st.integers(0, 6)), draw(st.integers(0, 6))
    rows = draw(st.integers(0, 14))
    body = _MP.pack(
        token, draw(i64), draw(i64), draw(u63), draw(times), draw(times), *draw(st.lists(u32, min_size=5, max_size=5)), draw(i64),
        draw(u32), draw(u32), nb, na, draw(st.integers(-(2**15), 2**15 - 1)), draw(i32), draw(u32), 1.0, draw(i32),
        *draw(st.lists(u32, min_size=5, max_size=5)), draw(st.integers(0, 255)), draw(u32),
    )  # fmt: skip
    raw = b"".join(_ROW.pack(draw(i64), draw(i32), draw(i32)) for _ in range(rows))
    return header(9 + len(body) + len(raw), 7208, exchange_id, level) + body + raw


def _sdk() -> object:
    return pytest.importorskip(
        "neo_api_client.websocket.feed.protocol", reason="the official SDK (pip install kotakneoapi) is missing"
    )


def _ours_for(pkts: list[bytes], dividers: dict[int, int]) -> tuple[KotakDecoder, list[TickData]]:
    keys = {f"{protocol.ID_SEGMENTS[p[4]]}|{struct.unpack_from('<I', p, 9)[0]}" for p in pkts}
    dec = KotakDecoder({k: Instrument("X", k, 0) for k in keys}, dividers)
    return dec, dec.decode(b"".join(pkts), RECEIVED)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(sdk_packets(), min_size=1, max_size=6), st.lists(st.sampled_from(POWERS), min_size=10, max_size=10))
def test_decoded_values_match_the_official_sdk_field_by_field(pkts: list[bytes], powers: list[int]) -> None:
    sdk = _sdk()
    dividers = {i + 1: d for i, d in enumerate(powers)}
    frame = b"".join(pkts)
    assert split_batch(frame) == sdk.split_batch(frame) == pkts
    theirs = [sdk.decode_packet(p, dividers) for p in pkts]
    dec, ours = _ours_for(pkts, dividers)
    assert len(ours) == len(theirs) == len(pkts) and dec.stats.malformed == {}
    for raw, o, t in zip(pkts, ours, theirs):
        assert str(o.token) == t.instrument_token and protocol.ID_SEGMENTS[raw[4]] == t.exchange_segment
        # float(exact Decimal) and raw/divider are both the correctly rounded double of the same number
        assert float(o.last_price) == t.last_traded_price
        if t.type == "index":
            assert (o.volume, o.last_quantity, o.oi, o.depth) == (None, None, None, None)
            chosen = t.last_trade_time
        elif t.type == "scrip_lite":
            assert (o.last_quantity, o.volume, o.oi, o.depth) == (t.last_trade_qty, None, None, None)
            chosen = t.last_trade_time
        else:
            assert (o.last_quantity, o.volume, o.oi) == (t.last_trade_qty, t.volume_traded_today, t.open_interest)
            assert o.depth is not None
            for levels, sdk_levels in ((o.depth.bids, t.buy), (o.depth.asks, t.sell)):
                assert [(lv.quantity, lv.orders, float(lv.price)) for lv in levels] == [
                    (s.quantity, s.orders, s.price) for s in sdk_levels
                ]
            chosen = t.last_update_time if t.last_update_time > 0 else t.last_trade_time
        if 0 < chosen < 10**10:
            assert o.exchange_ts.timestamp() == chosen
        else:
            assert o.exchange_ts == RECEIVED


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=400), st.lists(sdk_packets(), max_size=4).map(b"".join).flatmap(
    lambda f: st.integers(0, len(f)).map(lambda cut: f[:cut]))))  # fmt: skip
def test_split_batch_matches_the_official_sdk(data: bytes) -> None:
    assert split_batch(data) == _sdk().split_batch(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(sdk_packets(), min_size=1, max_size=5), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), max_size=3))
def test_on_damaged_frames_we_keep_exactly_the_prices_the_sdk_can_decode(pkts: list[bytes], flips: list[tuple[int, int]]) -> None:
    sdk = _sdk()
    raw = bytearray(b"".join(pkts))
    for pos, bit in flips:
        raw[pos % len(raw)] ^= 1 << bit
    expected, keys = [], set()
    for packet in sdk.split_batch(bytes(raw)):
        try:
            message = sdk.decode_packet(packet, {})
        except struct.error:  # a packet shorter than its layout: we count it and go on
            continue
        if message is not None and message.type in ("scrip", "scrip_lite", "index") and packet[4] in protocol.ID_SEGMENTS:
            if message.type == "scrip" and message.volume_traded_today < 0:
                continue  # a negative cumulative volume: the SDK passes it on, we count the packet as damaged
            expected.append((int(message.instrument_token), message.last_traded_price))
            keys.add(f"{message.exchange_segment}|{message.instrument_token}")
    dec = KotakDecoder({k: Instrument("X", k, 0) for k in keys})
    assert [(t.token, float(t.last_price)) for t in dec.decode(bytes(raw), RECEIVED)] == expected


def test_sdk_decodes_the_doc_vector_as_the_spec_says() -> None:
    (message,) = [_sdk().decode_packet(p, {1: 100}) for p in _sdk().split_batch(DOC_VECTOR)]
    assert (message.instrument_token, message.last_traded_price, message.last_trade_qty) == ("11536", 1234.56, 50)
    assert (message.net_change, message.net_change_percent, message.close_price) == (14.56, 1.19, 1220.0)
    (ours,) = decoder().decode(DOC_VECTOR, RECEIVED)
    assert float(ours.last_price) == message.last_traded_price and ours.exchange_ts.timestamp() == message.last_trade_time


def test_sdk_decodes_status_and_closing_auction_packets_as_we_do() -> None:
    sdk = _sdk()
    theirs = sdk.decode_packet(status(6, b"", exchange_id=2), {})
    assert (theirs.exchange_segment, theirs.status_code) == ("nse_fo", 6)
    opened = sdk.decode_packet(header(9, 6511, 5), {})
    assert (opened.exchange_segment, opened.status_code) == ("bse_cm", 1)
    assert sdk.decode_packet(cas(), {1: 100}).ref_price == 1234.0  # the docs' 48-byte layout, read by its first 33 bytes
    dec = decoder()
    dec.decode(status(6, b"", exchange_id=2) + header(9, 6511, 5) + cas(), RECEIVED)
    assert dec.market_status["nse_fo"].code == 6 and dec.market_status["bse_cm"].code == 1 and dec.stats.cas_references == 1


def test_sdk_raises_on_a_short_packet_where_we_count_it() -> None:
    sdk = _sdk()
    short = header(100, 7208, 1, 8) + bytes(91)
    with pytest.raises(struct.error):
        sdk.decode_packet(short, {1: 100})
    dec = decoder()
    assert dec.decode(short, RECEIVED) == [] and dec.stats.malformed == {SHORT_MARKET_PICTURE: 1}


def test_segment_ids_and_events_match_the_sdk() -> None:
    pytest.importorskip("neo_api_client.websocket.feed.client", reason="the official SDK (pip install kotakneoapi) is missing")
    from neo_api_client.websocket.feed import client
    from neo_api_client.websocket.feed.models import EXCHANGE_NAME_TO_ID

    assert {k: v for k, v in EXCHANGE_NAME_TO_ID.items() if k != "none"} == dict(SEGMENT_IDS)
    for intent, (sub, unsub, snap) in protocol.INTENT_EVENTS.items():
        assert (client._SUBSCRIBE_EVENTS[intent], client._UNSUBSCRIBE_EVENTS[intent], client._SNAPSHOT_EVENTS.get(intent)) == (
            sub,
            unsub,
            snap,
        )


def test_auth_frame_matches_what_the_sdk_sends_apart_from_its_clock() -> None:
    pytest.importorskip("neo_api_client.websocket.feed.client", reason="the official SDK (pip install kotakneoapi) is missing")
    from neo_api_client.websocket.feed.client import SFeedWebSocket

    theirs = SFeedWebSocket(ucc="AB123", sid="sid-1")._build_auth_frame()
    ours = json.loads(auth_frame("AB123", "sid-1", conn_req_time_ms=theirs["conn_req_time"]))
    assert list(ours.items()) == list(theirs.items())


def test_sdk_reads_only_its_own_ack_shape_and_we_read_both() -> None:
    pytest.importorskip("neo_api_client.websocket.feed.client", reason="the official SDK (pip install kotakneoapi) is missing")
    from neo_api_client.websocket.feed.client import SFeedWebSocket

    ws = SFeedWebSocket()
    ws._handle_text_frame(ACK_SDK)
    assert ws.trading_symbols == parse_control(ACK_SDK).symbols
    ws = SFeedWebSocket()
    ws._handle_text_frame(ACK_DOC)
    assert ws.trading_symbols == {} and parse_control(ACK_DOC).symbols == {"nse_cm|1333": "HDFCBANK-EQ"}


def test_sdk_reads_the_example_auth_reply_to_the_same_dividers() -> None:
    """The SDK's _authenticate loop over ``exchanges``, run on the spec's example reply."""
    pytest.importorskip("neo_api_client.websocket.feed.models", reason="the official SDK (pip install kotakneoapi) is missing")
    from neo_api_client.websocket.feed.models import EXCHANGE_NAME_TO_ID

    theirs = {}
    for name, info in json.loads(AUTH_REPLY)["exchanges"].items():
        theirs[int(info.get("value", EXCHANGE_NAME_TO_ID.get(name)))] = info.get("divider", 100)
    assert parse_control(AUTH_REPLY).dividers == theirs


def test_max_tokens_per_frame_is_the_sdk_request_size() -> None:
    assert MAX_TOKENS_PER_FRAME == 100 and protocol.MAX_TOKENS_PER_CLIENT == 3000


# --- bounded memory under garbage ----------------------------------------------------------------------------


def test_a_packet_with_thousands_of_rows_decodes_without_leaving_its_struct_cached() -> None:
    rows = tuple((100 + i, i, 1) for i in range(3000))
    (tick,) = decoder().decode(market_picture(counts=(2, 3), rows=rows), RECEIVED)
    assert tick.depth is not None and (len(tick.depth.bids), len(tick.depth.asks)) == (2, 3)
    assert 3000 not in protocol._MP_STRUCTS and 3000 not in protocol._MP_RECORDS


def test_index_tokens_learned_by_name_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "_LEARNED_MAX", 3)
    dec = KotakDecoder({"nse_cm|Nifty 50": Instrument("NSE", "Nifty 50")})
    ticks = dec.decode(b"".join(index(token) for token in range(1, 11)), RECEIVED)
    assert len(ticks) == 10 and len(dec._learned) <= 3 and len(dec._by_number) <= 3


def test_a_market_picture_with_a_negative_cumulative_volume_is_counted_and_skipped() -> None:
    """A cumulative day volume below zero can only come from a damaged packet: the aggregator would
    take it for a new trading day."""
    from testkit.fakes.kotak_server import TapeTick, encode_tick

    good = TapeTick("nse_cm", 1594, Decimal("1500.05"), 5, 1000, 1_768_448_700)
    frame = encode_tick(good, "scrips")
    bad = bytearray(frame)
    bad[29:37] = (-5).to_bytes(8, "little", signed=True)  # volume @29 of the market picture
    dec = KotakDecoder({"nse_cm|1594": Instrument("NSE", "INFY", 1594)})
    assert dec.decode(bytes(bad) + frame, RECEIVED)[0].volume == 1000
    assert len(dec.decode(bytes(bad) + frame, RECEIVED)) == 1
    assert dec.stats.malformed["negative_volume"] == 2
