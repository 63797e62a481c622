"""Sans-I/O codec for the Kotak Neo SFeed ``native_batch`` market-data WebSocket.

Bytes in, ``TickData`` out, and JSON text for the client's requests: no sockets, no threads, no
clock (the caller passes the receive time, and the connect time the auth frame carries). Layouts
are those of Kotak's WebSocket docs (github.com/Kotak-Neo/Kotak-Neo,
``docs/market-data-apis/websocket.md``); the official SDK (``kotakneoapi``,
``neo_api_client/websocket/feed/protocol.py``) decodes the same frames to the same values.

Instrument keys
---------------
The feed names an instrument ``<segment>|<token>``: ``nse_cm|1594`` is a scrip by its scrip
master code (``pSymbol``), ``nse_cm|Nifty 50`` an index by its name. An ``Instrument`` maps onto a
key as follows (``instrument_key``):

* ``exchange`` gives the segment through ``EXCHANGE_SEGMENTS`` (``NSE`` -> ``nse_cm``, ``NFO`` ->
  ``nse_fo``, ``MCX`` -> ``mcx_fo`` ...; ``SEGMENT_EXCHANGES`` is the reverse);
* ``token > 0`` is the numeric scrip code: ``Instrument("NSE", "INFY", 1594)`` is ``nse_cm|1594``;
* ``token == 0`` means the feed knows the instrument by name, which is how indices are subscribed:
  ``Instrument("NSE", "Nifty 50")`` is ``nse_cm|Nifty 50``. The name is the instrument's
  ``feed_name`` when it has one (Kotak's spelling, kept apart from the watchlist's ``NIFTY 50``
  in ``symbol``), else its ``symbol``.

``KotakDecoder`` takes a mapping key -> Instrument (``instruments_by_key`` builds one). Index
packets carry a numeric token and a 21-byte name: an index subscribed by name is matched by that
name (a name cut short by the 21 bytes matches the one subscribed name it begins) the first time,
and by its token after that. ``TickData.token`` is the numeric token of the packet.

Values
------
Prices are exact ``Decimal`` values: the raw integer over the exchange's divider from the auth
reply (100 when the reply names none), keeping the divider's decimals (``1220.00``, never
``1220.0000001``). Times are Unix seconds (the spec's test vector: 1756636800 = 2025-08-31 16:10
IST); a market picture is placed at its last update time, else its last trade time; zero and
negative times (the SDK's 1900-01-01 sentinel) mean none, and the receive time stands in. Values
of 10^12 to 10^13 are read as milliseconds, should the unit the spec leaves open turn out so.

This is the hot path of the Kotak feed, decoded in the socket thread: hence the precompiled
structs, the caches of immutable values (prices, depth levels, times: ``brokers.codec``) and the
construction of the frozen value objects without their per-field ``object.__setattr__`` (see
``core.fastnew``).
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from brokers.codec import DividedPriceCache, LevelCache, MalformedCounter, PriceCache, TimeCache, price_cache
from core import accel
from core.fastnew import new_depth as _new_depth
from core.fastnew import new_tick as _new_tick
from core.ticks import Instrument, TickData

log = logging.getLogger(__name__)

BROKER = "kotak_neo"

# --- segments, exchanges, limits ---------------------------------------------------------------

#: segment name (the part of a key before ``|``) -> exchange id of the binary header
SEGMENT_IDS: Mapping[str, int] = {
    "nse_cm": 1, "nse_fo": 2, "cde_fo": 3, "nse_com": 4, "bse_cm": 5,
    "bse_fo": 6, "bse_cd": 7, "bse_co": 8, "mcx_fo": 9, "ncd_co": 10,
}  # fmt: skip
#: exchange id -> segment name
ID_SEGMENTS: Mapping[int, str] = {v: k for k, v in SEGMENT_IDS.items()}
#: ``Instrument.exchange`` -> segment name (the names NSE, NFO, CDS, BCD, MCX, NCO as the Kite feed uses them)
EXCHANGE_SEGMENTS: Mapping[str, str] = {
    "NSE": "nse_cm", "NFO": "nse_fo", "CDS": "cde_fo", "NCO": "nse_com", "BSE": "bse_cm",
    "BFO": "bse_fo", "BCD": "bse_cd", "BCO": "bse_co", "MCX": "mcx_fo", "NCDEX": "ncd_co",
}  # fmt: skip
#: segment name -> ``Instrument.exchange``
SEGMENT_EXCHANGES: Mapping[str, str] = {v: k for k, v in EXCHANGE_SEGMENTS.items()}

#: tokens one subscribe/unsubscribe/snapshot frame carries at most (the SDKs' request size)
MAX_TOKENS_PER_FRAME = 100
#: input tokens one client may hold, a running total across all intents (Kotak's websocket.md, section 4)
MAX_TOKENS_PER_CLIENT = 3000
#: seconds between WebSocket pings: the feed has no application heartbeat, the SDK pings at 20 s
PING_INTERVAL = 20
#: price divider of an exchange the auth reply gives none for
DEFAULT_DIVIDER = 100

# --- message codes, levels, sizes --------------------------------------------------------------

AUTH_OK_CODES = (1117, 1119)  # 1119 "initial connect" carries the same body; the SDK accepts both
AUTH_FAILED_CODE = 1120
SUBSCRIBE_ACK_CODE = 1109

MSG_CAS_REFERENCE = 104
MSG_MARKET_STATUS = 105
MSG_MARKET_OPEN = 6511
MSG_MARKET_CLOSE = 6521
MSG_INDEX = 7207
MSG_MARKET_PICTURE = 7208  # both the mini touch line and the market picture; the level tells them apart

LEVEL_MINI = 1
LEVEL_TOUCH_LINE = 4
LEVEL_DEPTH = 8
LEVEL_FULL_DEPTH = 16
MARKET_PICTURE_LEVELS = frozenset((2, LEVEL_TOUCH_LINE, LEVEL_DEPTH, LEVEL_FULL_DEPTH))

HEADER_LEN = 9
MINI_LEN = 54
INDEX_LEN = 87
MARKET_PICTURE_LEN = 144  # the fixed part; depth rows follow
DEPTH_ROW_LEN = 16
MARKET_STATUS_LEN = 16
# Kotak's docs give 48 bytes (four fields and 15 more); the SDK reads the four fields only (33 bytes)
CAS_REFERENCE_LEN = 33

#: market status codes (packet 105) -> the spec's names
MARKET_STATUS_NAMES: Mapping[int, str] = {
    1: "Open", 2: "Close", 3: "PreopenShutdown", 4: "NormalMktPreopenEnded", 5: "AuctionStatusChange",
    6: "ClosingStart", 7: "ClosingEnd", 8: "CtsCloseForCas", 9: "RevisedPriceBandCompleted", 10: "CasStart",
    11: "MarketOrderRestricted", 12: "CasEnd",
}  # fmt: skip

# --- subscription intents -----------------------------------------------------------------------

SCRIPS_LITE = "scrips_lite"  # mini touch line (level 1)
SCRIPS = "scrips"  # touch line (level 4)
DEPTH = "depth"  # market picture with depth (level 8)
FULL_DEPTH = "full_depth"  # level 16 (the SDK only)
INDEX = "index"
#: intent -> (subscribe, unsubscribe, snapshot) events; full depth has no snapshot
INTENT_EVENTS: Mapping[str, tuple[str, str, str | None]] = {
    SCRIPS_LITE: ("subscribeScripsLite", "unsubscribeScripsLite", "snapshotScripsLite"),
    SCRIPS: ("subscribeScrips", "unsubscribeScrips", "snapshotScrips"),
    DEPTH: ("subscribeDepth", "unsubscribeDepth", "snapshotDepth"),
    FULL_DEPTH: ("subscribeFullDepth", "unsubscribeFullDepth", None),
    INDEX: ("subscribeIndices", "unsubscribeIndices", "snapshotIndices"),
}

# --- control replies ----------------------------------------------------------------------------

AUTH_OK = "auth_ok"  # 1117/1119: authenticated; ``dividers`` holds the price dividers
AUTH_FAILED = "auth_failed"  # 1120: the server closes the socket next; log in again
AUTH_UNSUPPORTED_FORMAT = "auth_unsupported_format"  # 1117/1119 answering "native_fallback": a layout we do not decode
SUBSCRIBE_ACK = "subscribe_ack"  # 1109: ``symbols`` maps each subscribed key to its trading symbol
OTHER = "other"  # any other JSON object: see ``code`` and ``message``

# --- kinds of malformed input, as counted in DecodeStats.malformed ----------------------------------

EMPTY_FRAME = "empty_frame"  # a binary frame of no bytes
BAD_LENGTH = "bad_length"  # a packet length below the 9-byte header: the rest of the frame is unreadable
TRUNCATED_PACKET = "truncated_packet"  # a packet length running past the end of the frame
TRAILING_BYTES = "trailing_bytes"  # one byte after the last packet, too short for a length
SHORT_MARKET_PICTURE = "short_market_picture"  # shorter than its fixed 144 bytes
SHORT_MINI = "short_mini_touch_line"  # shorter than 54 bytes
SHORT_INDEX = "short_index"  # shorter than 87 bytes
SHORT_MARKET_STATUS = "short_market_status"  # shorter than 16 bytes
SHORT_CAS_REFERENCE = "short_cas_reference"  # shorter than 33 bytes
NEGATIVE_VOLUME = "negative_volume"  # a market picture whose cumulative volume is below zero: skipped
UNKNOWN_PACKET = "unknown_packet"  # a message code and level the spec routes nowhere
BAD_JSON = "bad_json"  # a text frame that is not JSON
BAD_MESSAGE = "bad_message"  # JSON, but not an object

# --- value caches and structs -------------------------------------------------------------------

# Bounds of the decoder's own tables (the value caches are brokers.codec's).
_UNMATCHED_MAX = 1 << 12
_LEARNED_MAX = 1 << 12
_MAX_CACHED_ROWS = 64  # full depth is 20 + 20 rows

# Bodies start after the 9-byte header; ``x`` pads skip the fields TickData does not carry.
# Market picture @9: token, (total buy/sell qty), volume, last trade time, last update time,
# (open, close, high, low), LTP, last trade qty, (avg price, indicative close), buy and sell depth
# counts, (trading status, net change %), OI, and the 37 bytes up to @144 where depth rows start.
_MP_HEAD = "<I16xqqq16xIq8xII6xI37x"
_MINI = struct.Struct("<IqIq")  # @9: token, last trade time, LTP, last trade qty
_INDEX = struct.Struct("<I16xiQ")  # @9: token, (open, close, high, low), index value, last trade time
_INDEX_NAME = struct.Struct("<21s")  # @66
_STATUS = struct.Struct("<H5s")  # @9: status code, status text
_ROW = struct.Struct("<qii")  # depth row: quantity, price, orders
_U16 = struct.Struct("<H")
_FRAME_SEPARATORS = (",", ":")


# A frame whose packets all have the length and kind of its first (the common case: one
# subscription level per connection) is decoded with one iter_unpack over records that include
# the header: no per-packet offset arithmetic. Length, code and level are checked per record.
_MINI_RECORD = struct.Struct("<HHBB3xIqIq21x")
_INDEX_RECORD = struct.Struct("<HHBB3xI16xiQ46x")


class _MarketPictureStructs(dict):
    """depth row count -> one struct reading the market picture and that many raw 16-byte rows.

    The row count follows from the packet length, so one ``unpack_from`` reads a whole packet;
    a row that did not change since an earlier packet is then a dict hit, not a new object.
    ``header=True`` structs read the packet from its first byte (for the uniform-frame path).
    """

    __slots__ = ("header",)

    def __init__(self, header: bool) -> None:
        super().__init__()
        self.header = header

    def __missing__(self, rows: int) -> struct.Struct:
        head = "<HHBB3x" + _MP_HEAD[1:] if self.header else _MP_HEAD
        value = struct.Struct(head + "16s" * rows)
        if rows <= _MAX_CACHED_ROWS:  # a garbage length must not leave a 4000-row struct behind
            self[rows] = value
        return value


_MP_STRUCTS = _MarketPictureStructs(header=False)
_MP_RECORDS = _MarketPictureStructs(header=True)


# --- values -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ControlMessage:
    """A JSON text frame from the server; ``kind`` is one of AUTH_OK, AUTH_FAILED,
    AUTH_UNSUPPORTED_FORMAT, SUBSCRIBE_ACK, OTHER."""

    kind: str
    code: int | None
    message: str = ""
    #: AUTH_OK: exchange id -> price divider (exchanges the reply names; the rest divide by 100)
    dividers: Mapping[int, int] = field(default_factory=dict, hash=False)
    #: SUBSCRIBE_ACK: instrument key (``nse_cm|2885``, ``nse_cm|Nifty 50``) -> trading symbol
    symbols: Mapping[str, str] = field(default_factory=dict, hash=False)
    #: SUBSCRIBE_ACK: the ``error_code`` of the docs' shape (0 = subscribed); None when absent
    error_code: int | None = None
    #: AUTH_OK / AUTH_UNSUPPORTED_FORMAT: the ``format`` the server answered with, if any
    format: str | None = None

    @property
    def ok(self) -> bool:
        """False for a failed auth, an unsupported format, or an ack with a non-zero error code."""
        if self.kind in (AUTH_FAILED, AUTH_UNSUPPORTED_FORMAT):
            return False
        return not self.error_code


@dataclass(frozen=True, slots=True)
class MarketStatus:
    """The latest market status of one segment (packets 105, 6511 open, 6521 close)."""

    segment: str  # nse_cm, ... (the exchange id as text when the spec names none)
    code: int  # see MARKET_STATUS_NAMES
    name: str  # the spec's name of the code; the wire text when the code is not in the table
    text: str  # the status text on the wire ("" for 6511/6521, which have no body)


@dataclass(slots=True)
class DecodeStats:
    """Counters of one decoder; ``malformed`` is keyed by what was wrong."""

    frames: int = 0
    packets: int = 0
    ticks: int = 0
    unknown_tokens: int = 0
    market_status: int = 0  # status packets (105, 6511, 6521); the latest is in KotakDecoder.market_status
    cas_references: int = 0  # closing-auction reference packets (104): counted, not decoded into ticks
    short_depth: int = 0  # market pictures carrying fewer depth rows than their counts (the rows present are kept)
    text_messages: int = 0
    malformed: dict[str, int] = field(default_factory=dict)


# --- keys ---------------------------------------------------------------------------------------


def parse_key(key: str) -> tuple[str, str]:
    """``"nse_cm|1594"`` -> ``("nse_cm", "1594")``; ValueError saying what is wrong otherwise."""
    if not isinstance(key, str) or "|" not in key:
        raise ValueError(f"instrument key {key!r} is not '<segment>|<token or index name>', e.g. 'nse_cm|1594'")
    segment, token = key.split("|", 1)
    if segment not in SEGMENT_IDS:
        raise ValueError(f"instrument key {key!r}: unknown segment {segment!r}; use one of {', '.join(SEGMENT_IDS)}")
    if not token or token != token.strip() or "," in token or "|" in token:
        raise ValueError(f"instrument key {key!r}: the token must be a scrip code or index name without ',' or '|'")
    return segment, token


def instrument_key(inst: Instrument) -> str:
    """The feed's key of ``inst``: ``<segment>|<token>``, or ``<segment>|<name>`` when token is 0 (indices),
    the name being ``inst.feed_name`` if the instrument has one, else ``inst.symbol``."""
    segment = EXCHANGE_SEGMENTS.get(inst.exchange)
    if segment is None:
        raise ValueError(f"{inst.key}: exchange {inst.exchange!r} is not on Kotak Neo; use one of {', '.join(EXCHANGE_SEGMENTS)}")
    if isinstance(inst.token, bool) or not isinstance(inst.token, int) or inst.token < 0:
        raise ValueError(f"{inst.key}: token {inst.token!r} is not a Kotak scrip code (a positive integer, or 0 for an index)")
    key = f"{segment}|{inst.token if inst.token else getattr(inst, 'feed_name', '') or inst.symbol}"
    parse_key(key)
    return key


def instruments_by_key(instruments: Iterable[Instrument]) -> dict[str, Instrument]:
    """The mapping ``KotakDecoder`` takes: feed key -> instrument."""
    return {instrument_key(inst): inst for inst in instruments}


# --- client -> server ---------------------------------------------------------------------------


def auth_frame(
    user: str,
    sid: str,
    *,
    conn_req_time_ms: int,
    source: str = "NEOTRADEAPI",
    platform: str = "Web",
    version: str = "1.2.3",
    sdk_version: int = 2,
    sdk_date: str = "2026-08-07T09:41:17.667Z",
    session_validation: bool = False,
) -> str:
    """The first frame on a new socket: ``user`` is the UCC, ``sid`` the session sid of the MPIN
    validate step (not the JWT); ``conn_req_time_ms`` is the caller's clock in epoch milliseconds.
    The defaults are what the official SDK sends."""
    for name, value, what in (("user", user, "the client code (UCC)"), ("sid", sid, "the sid of the MPIN validate reply")):
        if not isinstance(value, str) or not value:
            raise ValueError(f"SFeed auth: {name} is empty; pass {what}")
    if isinstance(conn_req_time_ms, bool) or not isinstance(conn_req_time_ms, int) or conn_req_time_ms < 0:
        raise ValueError(f"SFeed auth: conn_req_time_ms {conn_req_time_ms!r} is not epoch milliseconds")
    return json.dumps(
        {
            "user": user, "auth": sid, "format": "native_batch", "source": source, "platform": platform,
            "version": version, "sdk_version": sdk_version, "sdk_date": sdk_date,
            "conn_req_time": conn_req_time_ms, "sessionValidation": session_validation,
        },
        separators=_FRAME_SEPARATORS,
    )  # fmt: skip


def _key_list(keys: Iterable[str]) -> list[str]:
    if isinstance(keys, str):
        raise ValueError(f"pass a list of instrument keys, not the single string {keys!r}")
    result = []
    for key in keys:
        parse_key(key)
        result.append(key)
    return list(dict.fromkeys(result))  # a repeated key would count twice against the 3000


def _token_frames(event: str, keys: Iterable[str], per_frame: int, ack_symbol: bool) -> list[str]:
    if isinstance(per_frame, bool) or not isinstance(per_frame, int) or not 1 <= per_frame <= MAX_TOKENS_PER_FRAME:
        raise ValueError(f"per_frame {per_frame!r} must be 1 to {MAX_TOKENS_PER_FRAME}")
    tokens = _key_list(keys)  # all validated before any frame exists: none goes out half-sent
    frames = []
    for i in range(0, len(tokens), per_frame):
        message: dict[str, Any] = {"event": event, "inputtoken": ",".join(tokens[i : i + per_frame])}
        if ack_symbol:
            message["ack_symbol"] = True
        frames.append(json.dumps(message, separators=_FRAME_SEPARATORS))
    return frames


def _events(intent: str) -> tuple[str, str, str | None]:
    events = INTENT_EVENTS.get(intent)
    if events is None:
        raise ValueError(f"unknown SFeed intent {intent!r}: use one of {', '.join(INTENT_EVENTS)}")
    return events


def subscribe(keys: Iterable[str], intent: str = SCRIPS, *, per_frame: int = MAX_TOKENS_PER_FRAME) -> list[str]:
    """Subscribe frames, at most ``per_frame`` keys each, asking for the 1109 trading-symbol ack.

    Keys are validated (all of them, before any frame is built) and de-duplicated in order; no
    keys give no frames. The server keeps at most ``MAX_TOKENS_PER_CLIENT`` across all intents.
    """
    return _token_frames(_events(intent)[0], keys, per_frame, True)


def unsubscribe(keys: Iterable[str], intent: str = SCRIPS, *, per_frame: int = MAX_TOKENS_PER_FRAME) -> list[str]:
    """Unsubscribe frames, at most ``per_frame`` keys each (no ``ack_symbol``, as the SDK sends them)."""
    return _token_frames(_events(intent)[1], keys, per_frame, False)


def snapshot(keys: Iterable[str], intent: str = SCRIPS, *, per_frame: int = MAX_TOKENS_PER_FRAME) -> list[str]:
    """Snapshot frames: the replies arrive as ordinary binary packets. Full depth has no snapshot."""
    event = _events(intent)[2]
    if event is None:
        raise ValueError(f"SFeed has no snapshot for {intent!r}: use {SCRIPS!r} or {DEPTH!r}")
    return _token_frames(event, keys, per_frame, True)


def subscribe_exchange() -> str:
    """Ask for market status packets (105) of every segment."""
    return '{"event":"subscribeExchange"}'


def unsubscribe_exchange() -> str:
    return '{"event":"unsubscribeExchange"}'


# --- server -> client: text -----------------------------------------------------------------------


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.isascii():
        try:
            return int(value)
        except ValueError:  # not a number, or too many digits
            return None
    return None


def _dividers(exchanges: object) -> dict[int, int]:
    """``{"nse_cm": {"value": 1, "divider": 100}, ...}`` -> {1: 100, ...}; id from ``value``, else the table."""
    result: dict[int, int] = {}
    if not isinstance(exchanges, dict):
        return result
    for name, info in exchanges.items():
        if not isinstance(info, dict):
            continue
        exchange_id = _as_int(info.get("value"))
        if exchange_id is None:
            exchange_id = SEGMENT_IDS.get(name)
        if exchange_id is None:
            continue
        divider = _as_int(info.get("divider"))
        result[exchange_id] = divider if divider is not None and divider > 0 else DEFAULT_DIVIDER
    return result


def _ack_symbols(data: dict) -> dict[str, str]:
    """Both 1109 shapes: the SDK's top-level ``trading_symbols`` map and the docs' ``data`` of objects."""
    symbols: dict[str, str] = {}
    top = data.get("trading_symbols")
    if isinstance(top, dict):
        symbols.update((k, v) for k, v in top.items() if isinstance(v, str))
    nested = data.get("data")
    if isinstance(nested, dict):
        for key, info in nested.items():
            if isinstance(info, dict) and isinstance(info.get("trading_symbols"), str):
                symbols[key] = info["trading_symbols"]
    return symbols


def parse_control(text: str | bytes) -> ControlMessage:
    """Parse one JSON text frame; ValueError if it is not a JSON object."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError too; RecursionError: nested too deep
        raise ValueError(f"SFeed text frame is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"SFeed text frame is JSON but not an object: {type(data).__name__}")
    return _control(data)


def _control(data: dict) -> ControlMessage:
    code = _as_int(data.get("message_code"))
    message = next((v for k in ("message", "description", "msg") if isinstance(v := data.get(k), str)), "")
    fmt = data.get("format") if isinstance(data.get("format"), str) else None
    if code in AUTH_OK_CODES:
        if fmt == "native_fallback":
            return ControlMessage(AUTH_UNSUPPORTED_FORMAT, code, message, format=fmt)
        return ControlMessage(AUTH_OK, code, message, dividers=_dividers(data.get("exchanges")), format=fmt)
    if code == AUTH_FAILED_CODE:
        return ControlMessage(AUTH_FAILED, code, message)
    if code == SUBSCRIBE_ACK_CODE:
        return ControlMessage(SUBSCRIBE_ACK, code, message, symbols=_ack_symbols(data), error_code=_as_int(data.get("error_code")))
    return ControlMessage(OTHER, code, message, error_code=_as_int(data.get("error_code")))


# --- server -> client: binary ---------------------------------------------------------------------


def split_batch(frame: bytes) -> list[bytes]:
    """The packets of a binary frame, as the SDK splits it: a u16 length ``N`` (which counts
    itself) at each offset; stop when ``N < 9`` or the frame ends before ``N`` bytes."""
    packets = []
    offset = 0
    end = len(frame)
    while offset + 2 <= end:
        (size,) = _U16.unpack_from(frame, offset)
        if size < HEADER_LEN or offset + size > end:
            break
        packets.append(bytes(frame[offset : offset + size]))
        offset += size
    return packets


# decoder entry: exchange, symbol, price cache, level cache
_Entry = tuple[str, str, PriceCache | DividedPriceCache, LevelCache]
_SPECIAL_CODES = frozenset((MSG_INDEX, MSG_MARKET_STATUS, MSG_CAS_REFERENCE, MSG_MARKET_OPEN, MSG_MARKET_CLOSE))


def _index_name(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("utf-8", "replace").strip()


class KotakDecoder:
    """Decodes SFeed frames into ``TickData`` for the instruments it was given.

    ``instruments`` maps feed keys (``nse_cm|1594``, ``nse_cm|Nifty 50``; see ``instrument_key``)
    to instruments; packets for other tokens are skipped and counted in ``stats.unknown_tokens``.
    Prices are divided by ``dividers`` (exchange id or segment name -> divider; 100 where absent),
    which ``parse_text`` replaces from the auth reply. Malformed input never raises: it is counted
    in ``stats.malformed`` (logged once per kind) and the good packets of the frame are kept.

    ``set_instruments`` and ``set_dividers`` may run in another thread than ``decode``: they
    build new lookup tables and swap them in; a frame being decoded finishes with the old ones.
    """

    compiled = False  # True on the compiled decode's subclass (see the end of this module)

    __slots__ = (
        "stats", "market_status", "_instruments", "_dividers", "_caches", "_by_number", "_by_name", "_learned",
        "_unmatched", "_times", "_malformed",
    )  # fmt: skip

    def __init__(self, instruments: Mapping[str, Instrument], dividers: Mapping[int | str, int] | None = None) -> None:
        self.stats = DecodeStats()
        #: counts malformed input into stats.malformed, logging the first of each kind
        self._malformed = MalformedCounter(self.stats.malformed, BROKER, log)
        #: segment -> its latest MarketStatus
        self.market_status: dict[str, MarketStatus] = {}
        self._times = TimeCache()
        self._caches: dict[int, tuple[PriceCache | DividedPriceCache, LevelCache]] = {}
        self._dividers: dict[int, int] = {}
        self._instruments: dict[tuple[int, int | str], Instrument] = {}
        self._by_number: dict[int, _Entry] = {}
        self._by_name: dict[tuple[int, str], _Entry] = {}
        self._learned: dict[int, tuple[int, str]] = {}  # index token key -> the name it was matched by
        self._unmatched: set[int] = set()
        if dividers:
            self.set_dividers(dividers, rebuild=False)
        self.set_instruments(instruments)

    @property
    def dividers(self) -> dict[int, int]:
        """Exchange id -> divider in force (exchanges not listed divide by 100)."""
        return dict(self._dividers)

    def set_instruments(self, instruments: Mapping[str, Instrument]) -> None:
        """Replace the key -> instrument mapping (e.g. after subscribing more symbols).

        ValueError for a key that is not ``<segment>|<token or index name>``.
        """
        parsed: dict[tuple[int, int | str], Instrument] = {}
        for key, inst in instruments.items():
            segment, token = parse_key(key)
            parsed[(SEGMENT_IDS[segment], int(token) if token.isascii() and token.isdigit() else token.casefold())] = inst
        self._instruments = parsed
        self._learned = {}
        self._unmatched = set()
        self._rebuild()

    def set_dividers(self, dividers: Mapping[int | str, int], *, rebuild: bool = True) -> None:
        """Replace the price dividers: exchange id (or segment name) -> positive integer."""
        parsed: dict[int, int] = {}
        for exchange, divider in dividers.items():
            exchange_id = SEGMENT_IDS.get(exchange) if isinstance(exchange, str) else exchange
            if isinstance(exchange_id, bool) or not isinstance(exchange_id, int):
                raise ValueError(f"divider key {exchange!r} is neither an exchange id nor one of {', '.join(SEGMENT_IDS)}")
            if isinstance(divider, bool) or not isinstance(divider, int) or divider <= 0:
                raise ValueError(f"divider {divider!r} of exchange {exchange!r} is not a positive integer")
            parsed[exchange_id] = divider
        self._dividers = parsed
        if rebuild:
            self._rebuild()

    def _caches_for(self, exchange_id: int) -> tuple[PriceCache | DividedPriceCache, LevelCache]:
        divider = self._dividers.get(exchange_id, DEFAULT_DIVIDER)
        caches = self._caches.get(divider)
        if caches is None:
            prices = price_cache(divider)
            caches = self._caches[divider] = (prices, LevelCache(prices, _ROW))
        return caches

    def _rebuild(self) -> None:
        by_number: dict[int, _Entry] = {}
        by_name: dict[tuple[int, str], _Entry] = {}
        for (exchange_id, token), inst in self._instruments.items():
            prices, levels = self._caches_for(exchange_id)
            entry = (inst.exchange, inst.symbol, prices, levels)
            if isinstance(token, int):
                by_number[exchange_id << 32 | token] = entry
            else:
                by_name[(exchange_id, token)] = entry
        for number, name in tuple(self._learned.items()):
            if name in by_name:
                by_number[number] = by_name[name]
        self._by_number = by_number
        self._by_name = by_name

    def _match_index(self, frame: bytes, pos: int, exchange_id: int, token: int) -> _Entry | None:
        """An index packet whose token is not (yet) known: match it by name and remember the token."""
        number = exchange_id << 32 | token
        if number in self._unmatched:
            return None
        (raw,) = _INDEX_NAME.unpack_from(frame, pos + 66)
        name = _index_name(raw).casefold()
        key = (exchange_id, name)
        entry = self._by_name.get(key)
        if entry is None and len(name) >= 20:  # possibly cut to fit its 21 bytes
            hits = [k for k in self._by_name if k[0] == exchange_id and k[1].startswith(name)]
            if len(hits) == 1:
                key = hits[0]
                entry = self._by_name[key]
        if entry is None:
            if len(self._unmatched) >= _UNMATCHED_MAX:
                self._unmatched.clear()
            self._unmatched.add(number)
            return None
        if len(self._learned) >= _LEARNED_MAX:  # only a server sending one name under endless tokens gets here
            self._learned = {}
            self._rebuild()
        self._learned[number] = key
        self._by_number[number] = entry
        return entry

    def decode(self, frame: bytes, receive_ts: datetime) -> list[TickData]:
        """Decode one binary frame; ``receive_ts`` (aware) stands in where a packet has no time."""
        stats = self.stats
        stats.frames += 1
        end = len(frame)
        if not end:
            self._malformed(EMPTY_FRAME, "binary frame of 0 bytes")
            return []
        if end >= HEADER_LEN:
            first = frame[0] | frame[1] << 8
            if first >= HEADER_LEN and not end % first:
                fast = self._decode_uniform(frame, receive_ts, first)
                if fast is not None:
                    return fast
        by_number = self._by_number
        times = self._times
        mp_structs = _MP_STRUCTS
        new_tick = _new_tick
        new_depth = _new_depth
        ticks: list[TickData] = []
        append = ticks.append
        pos = 0
        packets = 0
        unknown = 0
        short_depth = 0
        last_ts = 0  # the exchange second repeats across a frame: skip even the cache lookup
        last_dt: datetime | None = None
        while pos < end:
            if end - pos < 2:
                self._malformed(TRAILING_BYTES, f"{end - pos} byte after the last packet of a {end}-byte frame")
                break
            n = frame[pos] | frame[pos + 1] << 8
            if n < HEADER_LEN:
                self._malformed(BAD_LENGTH, f"packet length {n} at offset {pos} (a packet has at least 9 bytes)")
                break
            start = pos
            pos += n
            if pos > end:
                self._malformed(TRUNCATED_PACKET, f"packet of {n} bytes at offset {start} overruns a {end}-byte frame")
                break
            packets += 1
            code = frame[start + 2] | frame[start + 3] << 8
            level = frame[start + 5]
            if code in _SPECIAL_CODES:
                if code != MSG_INDEX:
                    self._other_packet(frame, start, n, code)
                    continue
                if n < INDEX_LEN:
                    self._malformed(SHORT_INDEX, f"index packet of {n} bytes (expected {INDEX_LEN})")
                    continue
                exchange_id = frame[start + 4]
                token, value, ts = _INDEX.unpack_from(frame, start + 9)
                entry = by_number.get(exchange_id << 32 | token)
                if entry is None:
                    entry = self._match_index(frame, start, exchange_id, token)
                    if entry is None:
                        unknown += 1
                        continue
                exchange, symbol, prices, _ = entry
                if ts != last_ts:
                    last_ts = ts
                    last_dt = times[ts]
                price = prices[value]
                append(new_tick(BROKER, exchange, symbol, token, price, None, None, None, last_dt or receive_ts, receive_ts, None))
            elif level in MARKET_PICTURE_LEVELS:
                if n < MARKET_PICTURE_LEN:
                    self._malformed(SHORT_MARKET_PICTURE, f"market picture of {n} bytes (expected at least {MARKET_PICTURE_LEN})")
                    continue
                rows = (n - MARKET_PICTURE_LEN) >> 4
                token, volume, ltt, lut, ltp, ltq, bids, asks, oi, *raw = mp_structs[rows].unpack_from(frame, start + 9)
                entry = by_number.get(frame[start + 4] << 32 | token)
                if entry is None:
                    unknown += 1
                    continue
                if volume < 0:  # cumulative day volume cannot be negative: a damaged packet
                    self._malformed(NEGATIVE_VOLUME, f"market picture of token {token} with volume {volume}")
                    continue
                exchange, symbol, prices, levels = entry
                if level == LEVEL_TOUCH_LINE:  # always exactly one bid and one ask, whatever the counts say
                    bids = asks = 1
                want = bids + asks
                if want < rows:
                    del raw[want:]
                elif want > rows:
                    short_depth += 1
                book = tuple(map(levels.__getitem__, raw))
                ts = lut if lut > 0 else ltt
                if ts != last_ts:
                    last_ts = ts
                    last_dt = times[ts] if ts > 0 else None
                append(
                    new_tick(
                        BROKER, exchange, symbol, token, prices[ltp], ltq, volume, oi, last_dt or receive_ts, receive_ts,
                        new_depth(book[:bids], book[bids:]),
                    )
                )  # fmt: skip
            elif level == LEVEL_MINI:
                if n < MINI_LEN:
                    self._malformed(SHORT_MINI, f"mini touch line of {n} bytes (expected {MINI_LEN})")
                    continue
                token, ts, ltp, ltq = _MINI.unpack_from(frame, start + 9)
                entry = by_number.get(frame[start + 4] << 32 | token)
                if entry is None:
                    unknown += 1
                    continue
                exchange, symbol, prices, _ = entry
                if ts != last_ts:
                    last_ts = ts
                    last_dt = times[ts] if ts > 0 else None
                append(
                    new_tick(BROKER, exchange, symbol, token, prices[ltp], ltq, None, None, last_dt or receive_ts, receive_ts, None)
                )
            else:
                self._malformed(UNKNOWN_PACKET, f"message code {code} at level {level} (the spec routes neither)")
        stats.packets += packets
        stats.unknown_tokens += unknown
        stats.short_depth += short_depth
        stats.ticks += len(ticks)
        return ticks

    def _decode_uniform(self, frame: bytes, receive_ts: datetime, n0: int) -> list[TickData] | None:
        """Fast path for a frame of market pictures, of mini touch lines or of index packets only,
        all ``n0`` bytes long; None (nothing counted) when a record says otherwise or the kind has
        no fast path. An index matched by name here is remembered even if None is returned: that
        is harmless, the general path would have matched it the same way."""
        code0 = frame[2] | frame[3] << 8
        level0 = frame[5]
        if code0 in _SPECIAL_CODES and (code0 != MSG_INDEX or n0 != INDEX_LEN):
            return None
        entries_get = self._by_number.get
        times = self._times
        new_tick = _new_tick
        ticks: list[TickData] = []
        append = ticks.append
        unknown = 0
        short_depth = 0
        last_ts = 0
        last_dt: datetime | None = None
        if code0 == MSG_INDEX:
            for i, (n, code, exchange_id, _, token, value, ts) in enumerate(_INDEX_RECORD.iter_unpack(frame)):
                if n != n0 or code != code0:
                    return None
                entry = entries_get(exchange_id << 32 | token)
                if entry is None:
                    entry = self._match_index(frame, i * n0, exchange_id, token)
                    if entry is None:
                        unknown += 1
                        continue
                exchange, symbol, prices, _ = entry
                if ts != last_ts:
                    last_ts = ts
                    last_dt = times[ts]
                price = prices[value]
                append(new_tick(BROKER, exchange, symbol, token, price, None, None, None, last_dt or receive_ts, receive_ts, None))
        elif level0 in MARKET_PICTURE_LEVELS:
            rows, odd = divmod(n0 - MARKET_PICTURE_LEN, DEPTH_ROW_LEN)
            if rows < 0 or odd:
                return None
            new_depth = _new_depth
            touch_line = level0 == LEVEL_TOUCH_LINE
            records = _MP_RECORDS[rows].iter_unpack(frame)
            for n, code, exchange_id, level, token, volume, ltt, lut, ltp, ltq, bids, asks, oi, *raw in records:
                if n != n0 or code != code0 or level != level0:
                    return None
                entry = entries_get(exchange_id << 32 | token)
                if entry is None:
                    unknown += 1
                    continue
                if volume < 0:  # cumulative day volume cannot be negative: a damaged packet
                    self._malformed(NEGATIVE_VOLUME, f"market picture of token {token} with volume {volume}")
                    continue
                exchange, symbol, prices, levels = entry
                if touch_line:
                    bids = asks = 1
                want = bids + asks
                if want < rows:
                    del raw[want:]
                elif want > rows:
                    short_depth += 1
                book = tuple(map(levels.__getitem__, raw))
                ts = lut if lut > 0 else ltt
                if ts != last_ts:
                    last_ts = ts
                    last_dt = times[ts] if ts > 0 else None
                append(
                    new_tick(
                        BROKER, exchange, symbol, token, prices[ltp], ltq, volume, oi, last_dt or receive_ts, receive_ts,
                        new_depth(book[:bids], book[bids:]),
                    )
                )  # fmt: skip
        elif level0 == LEVEL_MINI and n0 == MINI_LEN:
            for n, code, exchange_id, level, token, ts, ltp, ltq in _MINI_RECORD.iter_unpack(frame):
                if n != n0 or code != code0 or level != level0:
                    return None
                entry = entries_get(exchange_id << 32 | token)
                if entry is None:
                    unknown += 1
                    continue
                exchange, symbol, prices, _ = entry
                if ts != last_ts:
                    last_ts = ts
                    last_dt = times[ts] if ts > 0 else None
                append(
                    new_tick(BROKER, exchange, symbol, token, prices[ltp], ltq, None, None, last_dt or receive_ts, receive_ts, None)
                )
        else:
            return None
        stats = self.stats
        stats.packets += len(ticks) + unknown
        stats.unknown_tokens += unknown
        stats.short_depth += short_depth
        stats.ticks += len(ticks)
        return ticks

    def _other_packet(self, frame: bytes, start: int, n: int, code: int) -> None:
        """Market status (105, 6511, 6521) and closing-auction reference (104) packets."""
        exchange_id = frame[start + 4]
        if exchange_id > 127:  # a signed byte on the wire
            exchange_id -= 256
        segment = ID_SEGMENTS.get(exchange_id, str(exchange_id))
        if code == MSG_CAS_REFERENCE:
            if n < CAS_REFERENCE_LEN:
                self._malformed(SHORT_CAS_REFERENCE, f"closing-auction reference of {n} bytes (expected {CAS_REFERENCE_LEN})")
                return
            self.stats.cas_references += 1
            return
        if code == MSG_MARKET_STATUS:
            if n < MARKET_STATUS_LEN:
                self._malformed(SHORT_MARKET_STATUS, f"market status of {n} bytes (expected {MARKET_STATUS_LEN})")
                return
            status, raw = _STATUS.unpack_from(frame, start + 9)
            text = _index_name(raw)
        else:  # no body: the code says open or close
            status, text = (1 if code == MSG_MARKET_OPEN else 2), ""
        self.stats.market_status += 1
        name = MARKET_STATUS_NAMES.get(status) or text or f"status {status}"
        self.market_status[segment] = MarketStatus(segment, status, name, text)

    def parse_text(self, text: str | bytes) -> ControlMessage | None:
        """Parse a JSON text frame; None (and counted) if malformed.

        An auth reply's dividers replace this decoder's (a reconnect's reply may differ).
        """
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError too; RecursionError: nested too deep
            self._malformed(BAD_JSON, f"text frame is not JSON ({exc})")
            return None
        if not isinstance(data, dict):
            self._malformed(BAD_MESSAGE, f"text frame is JSON but not an object: {type(data).__name__}")
            return None
        message = _control(data)
        self.stats.text_messages += 1
        if message.kind == AUTH_OK:
            self.set_dividers(message.dividers)
        return message


# The reference implementation above is also the fallback. ``KotakDecoder`` is the compiled
# decode's subclass (brokers/kotak_neo/_speedups.pyx: the market-picture frames of
# ``_decode_uniform``) when that is built from these sources, else this class; core.accel says
# which at start-up, and MARKETFEED_PURE_PYTHON=1 keeps this one.
PythonKotakDecoder = KotakDecoder
_compiled = accel.load("brokers.kotak_neo._speedups")
if _compiled is not None:
    KotakDecoder = _compiled.compiled_decoder(PythonKotakDecoder)  # type: ignore[misc]
