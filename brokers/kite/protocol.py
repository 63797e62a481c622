"""Sans-I/O codec for the Kite Connect v3 market-data WebSocket ("KiteTicker").

Bytes in, ``TickData`` out, and JSON text for the client's requests: no sockets, no threads, no
clock (the caller passes the receive time). Layouts are those of Kite Connect's
WebSocket docs (https://kite.trade/docs/connect/v3/websocket/) and of pykiteconnect's parser
(``kiteconnect/ticker.py``, ``KiteTicker._parse_binary``).

This is the hot path of the Kite feed: a 3000-instrument full-mode connection delivers tens of
thousands of 184-byte packets a second, decoded in the socket thread. Hence the precompiled
structs, the caches of immutable values (prices, depth levels, timestamps: ``brokers.codec``),
the construction of the frozen value objects without their per-field ``object.__setattr__`` (see
``core.fastnew``), and the depth block handed over raw, decoded on first read (``Depth``): the
candle pipeline never reads it, and it was half the cost of a full packet.
"""

from __future__ import annotations

import json
import logging
import marshal
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from brokers.codec import LevelCache, MalformedCounter, PriceCache, TimeCache
from core import accel
from core.fastnew import deferred_depth as _deferred_depth
from core.fastnew import new_tick as _new_tick
from core.ist import IST
from core.ticks import DepthLevel, Instrument, TickData

log = logging.getLogger(__name__)

BROKER = "kite"
MODES = ("ltp", "quote", "full")

# Packet lengths; the mode of a packet is known from its length alone (Kite Connect's WebSocket docs, "Binary market data").
LTP_LEN = 8
INDEX_QUOTE_LEN = 28
INDEX_FULL_LEN = 32
QUOTE_LEN = 44
FULL_LEN = 184
_PRICE_ONLY_LENGTHS = frozenset((LTP_LEN, INDEX_QUOTE_LEN, INDEX_FULL_LEN))

# Segment (instrument_token & 0xff) -> decimal exponent of the price unit. pykiteconnect 5.2
# (EXCHANGE_MAP) is the authority: CDS 3 -> 1e-7, BCD 6 -> 1e-4, NCO 12 -> 1e-4, else 1e-2.
# Segment 7 is MCX, whose prices are in paise like NSE's (see the report on the NCO number).
SEGMENT_EXPONENT: Mapping[int, int] = {3: -7, 6: -4, 12: -4}
DEFAULT_EXPONENT = -2

# One unpack per packet kind; ``x`` pads skip the fields TickData does not carry.
_HDR = struct.Struct(">H")
_LTP = struct.Struct(">II")  # token, last price (also the head of the index packets)
_INDEX_TS = struct.Struct(">I")  # exchange timestamp at offset 28 of a 32-byte index packet
_QUOTE = struct.Struct(">III4xI")  # token, last price, last qty, volume
# token, last price, last qty, volume, OI, exchange timestamp (skips ATP, buy/sell qty, OHLC,
# last trade time, OI high/low)
_FULL = struct.Struct(">III4xI28xI8xI")
# The 10 depth entries as raw 10-byte keys (qty u32, price u32, orders u16; 2 bytes padding):
# a level that did not change since an earlier packet is a dict hit, not a new object.
_DEPTH = struct.Struct(">" + "10s2x" * 10)
_LEVEL = struct.Struct(">IIH")
# A frame of full packets only (the common case for a full-mode connection) is decoded with one
# iter_unpack over records of u16 length + 184-byte packet: no per-packet offset arithmetic.
# The depth block stays raw bytes: the Depth decodes it on first read (most consumers never do).
_FULL_RECORD = struct.Struct(">HIII4xI28xI8xI120s")
_FULL_RECORD_NO_DEPTH = struct.Struct(">HIII4xI28xI8xI120x")
_DEPTH_OFFSET = 64
_BOOK = struct.Struct("120s")
_FULL_RECORD_LEN = 2 + FULL_LEN


class _Levels(LevelCache):
    """raw 10-byte depth entry -> DepthLevel (``LevelCache``), and the ``DepthSource`` (core.ticks)
    of the deferred ``Depth`` of a full packet."""

    __slots__ = ()

    def depth_levels(self, raw: bytes) -> tuple[tuple[DepthLevel, ...], tuple[DepthLevel, ...]]:
        """The 120-byte depth block of a full packet -> (5 bids, 5 asks)."""
        k0, k1, k2, k3, k4, k5, k6, k7, k8, k9 = _DEPTH.unpack(raw)
        return (self[k0], self[k1], self[k2], self[k3], self[k4]), (self[k5], self[k6], self[k7], self[k8], self[k9])


@dataclass(frozen=True, slots=True)
class KiteMessage:
    """A JSON text message from the server: ``order`` postbacks, ``error`` and ``message`` texts."""

    type: str
    data: Any


@dataclass(slots=True)
class DecodeStats:
    """Counters of one decoder; ``malformed`` is keyed by what was wrong."""

    frames: int = 0
    packets: int = 0
    ticks: int = 0
    heartbeats: int = 0
    unknown_tokens: int = 0
    text_messages: int = 0
    untimed_skipped: int = 0  # packets without an exchange timestamp, skipped by a ``timed_only`` decoder
    malformed: dict[str, int] = field(default_factory=dict)


# Kinds of malformed input, as counted in DecodeStats.malformed.
TRUNCATED_FRAME = "truncated_frame"  # fewer packets than the frame header announces
PACKET_OVERRUN = "packet_overrun"  # a packet length runs past the end of the frame
UNKNOWN_LENGTH = "unknown_length"  # a packet of none of the five documented lengths
TRAILING_BYTES = "trailing_bytes"  # bytes after the announced packets
BAD_JSON = "bad_json"  # a text frame that is not JSON
BAD_MESSAGE = "bad_message"  # JSON, but not {"type": str, "data": ...}


# A full packet cut to what a candle reads: u16 length + the 64 bytes before the depth block.
_KEPT_LEN = 2 + _DEPTH_OFFSET
_KEPT_RUN = 32  # records cut per unpack
# _KEPT[n] cuts n consecutive full records
_KEPT = [struct.Struct(">" + f"{_KEPT_LEN}s{FULL_LEN - _DEPTH_OFFSET}x" * n) for n in range(_KEPT_RUN + 1)]
_KEPT_RECORD = struct.Struct(f">{_KEPT_LEN}s")
_NO_BOOK = bytes(FULL_LEN - _DEPTH_OFFSET)
_PACKED_WHOLE = b"\x00"  # first byte of a packed frame: the frame as received
_PACKED_CUT = b"\x01"  # ... the frame's full packets without their depth blocks


_Entry = tuple[str, str, PriceCache, _Levels]  # exchange, symbol, price and depth-level caches


class KiteFrameSource:
    """A decoder's table as it was when it decoded a frame: the ``FrameSource`` (core.ticks) of the
    Kite feed, kept once per journal segment (``dumps``/``loads``). ``pack`` drops the depth blocks
    of a frame of full packets (64 of 184 bytes kept, one unpack per 32 packets): the tick journal's
    cost and size."""

    __slots__ = ("timed_only", "instruments", "_decoder")
    codec = "kite"

    def __init__(self, timed_only: bool, instruments: tuple[tuple[int, str, str], ...]) -> None:
        self.timed_only = timed_only
        self.instruments = instruments  # (token, exchange, symbol)
        self._decoder: KiteDecoder | None = None

    def __repr__(self) -> str:
        return f"KiteFrameSource({len(self.instruments)} instruments, timed_only={self.timed_only})"

    def dumps(self) -> bytes:
        return marshal.dumps((self.timed_only, self.instruments))

    @classmethod
    def loads(cls, data: bytes) -> KiteFrameSource:
        try:
            timed_only, instruments = marshal.loads(data)
        except (EOFError, TypeError, ValueError) as exc:
            raise ValueError(f"not a Kite frame source ({exc})") from None
        return cls(bool(timed_only), tuple(tuple(row) for row in instruments))

    @staticmethod
    def pack(frame: bytes) -> bytes:
        count = frame[0] << 8 | frame[1] if len(frame) >= 2 else 0
        if count and len(frame) == 2 + count * _FULL_RECORD_LEN:
            parts: list[bytes] = []
            pos = 2
            run = _KEPT[_KEPT_RUN]
            for _ in range(count // _KEPT_RUN):
                parts += run.unpack_from(frame, pos)
                pos += _KEPT_RUN * _FULL_RECORD_LEN
            parts += _KEPT[count % _KEPT_RUN].unpack_from(frame, pos)
            kept = b"".join(parts)
            # every record a full packet (u16 length 184 = 00 b8), not sizes adding up by chance
            if kept[0::_KEPT_LEN] == bytes(count) and kept[1::_KEPT_LEN] == bytes((FULL_LEN,)) * count:
                return _PACKED_CUT + frame[:2] + kept
        return _PACKED_WHOLE + frame

    def replay(self, packed: bytes, receive_epoch: float) -> list[TickData]:
        """The ticks of a packed frame as the decoder gave them (depth aside), received at ``receive_epoch``."""
        if self._decoder is None:
            table = {token: Instrument(exchange, symbol, token) for token, exchange, symbol in self.instruments}
            self._decoder = KiteDecoder(table, timed_only=self.timed_only, depth=False)
        if packed[:1] == _PACKED_CUT:
            frame = packed[1:3] + b"".join(r + _NO_BOOK for (r,) in _KEPT_RECORD.iter_unpack(packed[3:]))
        elif packed[:1] == _PACKED_WHOLE:
            frame = packed[1:]
        else:
            raise ValueError(f"not a packed Kite frame (starts with {packed[:1]!r})")
        return self._decoder.decode(frame, datetime.fromtimestamp(receive_epoch, IST))


class KiteDecoder:
    """Decodes KiteTicker frames into ``TickData`` for the instruments it was given.

    ``instruments`` maps instrument_token -> Instrument; packets for other tokens are skipped and
    counted in ``stats.unknown_tokens``. Malformed input never raises: it is counted in
    ``stats.malformed`` (logged once per kind) and the good packets of the frame are kept.
    """

    __slots__ = ("stats", "timed_only", "depth", "last_plain", "source", "_table", "_times", "_exponents", "_malformed")
    compiled = False  # True on the compiled decode's subclass (see the end of this module)

    def __init__(self, instruments: Mapping[int, Instrument], *, timed_only: bool = False, depth: bool = True) -> None:
        #: skip packets that carry no exchange timestamp (quote 44, index quote 28, LTP 8). In full
        #: mode these are only the snapshot a new subscription gets before its mode change takes
        #: effect (subscriptions start in quote mode); placed by arrival time they would put a stale
        #: price into the current bucket. The full snapshot that follows carries the same values.
        self.timed_only = timed_only
        #: hand over the market depth of full packets (decoded on first read); without it full
        #: ticks have ``depth=None`` and cost less (the daemon's candles never read depth)
        self.depth = depth
        self.stats = DecodeStats()
        #: counts malformed input into stats.malformed, logging the first of each kind
        self._malformed = MalformedCounter(self.stats.malformed, BROKER, log)
        self._times = TimeCache()
        self._exponents: dict[int, tuple[PriceCache, _Levels]] = {}
        # token -> (exchange, symbol, prices, levels), and the same table as a KiteFrameSource:
        # replaced together (another thread may subscribe while this one decodes)
        self._table: tuple[dict[int, _Entry], KiteFrameSource] = ({}, KiteFrameSource(timed_only, ()))
        #: the table that decoded the last frame, as a KiteFrameSource: decodes it again
        self.source = self._table[1]
        #: the last tick without volume (index, LTP) per token: nothing but its time and price
        #: tells a copy of it (a resubscription's snapshot) from a new one
        self.last_plain: dict[int, TickData] = {}
        self.set_instruments(instruments)

    @property
    def heartbeats(self) -> int:
        return self.stats.heartbeats

    @property
    def unknown_tokens(self) -> int:
        return self.stats.unknown_tokens

    def set_instruments(self, instruments: Mapping[int, Instrument]) -> None:
        """Replace the token -> instrument mapping (e.g. after subscribing more symbols)."""
        entries = {}
        for token, inst in instruments.items():
            exponent = SEGMENT_EXPONENT.get(token & 0xFF, DEFAULT_EXPONENT)
            caches = self._exponents.get(exponent)
            if caches is None:
                prices = PriceCache(exponent)
                caches = self._exponents[exponent] = (prices, _Levels(prices, _LEVEL))
            entries[token] = (inst.exchange, inst.symbol, caches[0], caches[1])
        source = KiteFrameSource(self.timed_only, tuple((token, e[0], e[1]) for token, e in entries.items()))
        self._table = (entries, source)

    def decode(self, frame: bytes, receive_ts: datetime) -> list[TickData]:
        """Decode one binary frame; ``receive_ts`` (aware) stands in where a packet has no time."""
        stats = self.stats
        stats.frames += 1
        end = len(frame)
        if end < 2:
            stats.heartbeats += 1
            return []
        entries, self.source = self._table
        times = self._times
        new_tick = _new_tick
        ticks: list[TickData] = []
        append = ticks.append
        count = frame[0] << 8 | frame[1]
        if end == 2 + count * _FULL_RECORD_LEN and count:
            fast = self._decode_full_frame(frame, receive_ts, entries)
            if fast is not None:
                return fast
        pos = 2
        seen = 0
        unknown = 0
        for _ in range(count):
            start = pos + 2
            if start > end:
                self._malformed(TRUNCATED_FRAME, f"frame of {end} bytes announces {count} packets, has {seen}")
                break
            length = frame[pos] << 8 | frame[pos + 1]
            pos = start + length
            if pos > end:
                self._malformed(PACKET_OVERRUN, f"packet of {length} bytes at offset {start} overruns a {end}-byte frame")
                break
            seen += 1
            if length == FULL_LEN:
                token, price, quantity, volume, oi, ts = _FULL.unpack_from(frame, start)
                entry = entries.get(token)
                if entry is None:
                    unknown += 1
                    continue
                exchange, symbol, prices, levels = entry
                depth = None
                if self.depth:
                    (book,) = _BOOK.unpack_from(frame, start + _DEPTH_OFFSET)
                    depth = _deferred_depth(book, levels)
                append(
                    new_tick(
                        BROKER, exchange, symbol, token, prices[price], quantity, volume, oi,
                        times[ts] if ts else receive_ts, receive_ts, depth,
                    )
                )
            elif length == QUOTE_LEN:
                if self.timed_only:
                    stats.untimed_skipped += 1
                    continue
                token, price, quantity, volume = _QUOTE.unpack_from(frame, start)
                entry = entries.get(token)
                if entry is None:
                    unknown += 1
                    continue
                exchange, symbol, prices, _ = entry
                append(
                    new_tick(BROKER, exchange, symbol, token, prices[price], quantity, volume, None, receive_ts, receive_ts, None)
                )
            elif length in _PRICE_ONLY_LENGTHS:
                if self.timed_only and length != INDEX_FULL_LEN:
                    stats.untimed_skipped += 1
                    continue
                token, price = _LTP.unpack_from(frame, start)
                entry = entries.get(token)
                if entry is None:
                    unknown += 1
                    continue
                exchange, symbol, prices, _ = entry
                exchange_ts = receive_ts
                if length == INDEX_FULL_LEN:
                    (ts,) = _INDEX_TS.unpack_from(frame, start + 28)
                    if ts:
                        exchange_ts = times[ts]
                tick = new_tick(BROKER, exchange, symbol, token, prices[price], None, None, None, exchange_ts, receive_ts, None)
                append(tick)
                self.last_plain[token] = tick
            else:
                self._malformed(UNKNOWN_LENGTH, f"packet of {length} bytes (expected 8, 28, 32, 44 or 184)")
        else:
            if pos != end:
                self._malformed(TRAILING_BYTES, f"{end - pos} bytes after the {count} announced packets")
        stats.packets += seen
        stats.unknown_tokens += unknown
        stats.ticks += len(ticks)
        return ticks

    def _decode_full_frame(self, frame: bytes, receive_ts: datetime, entries: dict[int, _Entry]) -> list[TickData] | None:
        """Fast path for a frame of full packets only; None if a length says otherwise."""
        if not self.depth:
            return self._decode_full_frame_without_depth(frame, receive_ts, entries)
        entries_get = entries.get
        times = self._times
        new_tick = _new_tick
        new_depth = _deferred_depth
        ticks: list[TickData] = []
        append = ticks.append
        unknown = 0
        last_ts = 0  # the exchange second repeats across a frame: skip even the cache lookup
        last_dt = receive_ts
        for length, token, price, quantity, volume, oi, ts, book in _FULL_RECORD.iter_unpack(memoryview(frame)[2:]):
            if length != FULL_LEN:
                return None  # sizes only add up by coincidence: let the general path sort it out
            entry = entries_get(token)
            if entry is None:
                unknown += 1
                continue
            exchange, symbol, prices, levels = entry
            if ts != last_ts:
                last_ts = ts
                last_dt = times[ts] if ts else receive_ts
            append(
                new_tick(
                    BROKER, exchange, symbol, token, prices[price], quantity, volume, oi, last_dt, receive_ts,
                    new_depth(book, levels),
                )
            )
        stats = self.stats
        stats.packets += len(ticks) + unknown
        stats.unknown_tokens += unknown
        stats.ticks += len(ticks)
        return ticks

    def _decode_full_frame_without_depth(
        self, frame: bytes, receive_ts: datetime, entries: dict[int, _Entry]
    ) -> list[TickData] | None:
        """``_decode_full_frame`` for ``depth=False``: the depth block is skipped unread."""
        entries_get = entries.get
        times = self._times
        new_tick = _new_tick
        ticks: list[TickData] = []
        append = ticks.append
        unknown = 0
        last_ts = 0
        last_dt = receive_ts
        for length, token, price, quantity, volume, oi, ts in _FULL_RECORD_NO_DEPTH.iter_unpack(memoryview(frame)[2:]):
            if length != FULL_LEN:
                return None
            entry = entries_get(token)
            if entry is None:
                unknown += 1
                continue
            if ts != last_ts:
                last_ts = ts
                last_dt = times[ts] if ts else receive_ts
            append(new_tick(BROKER, entry[0], entry[1], token, entry[2][price], quantity, volume, oi, last_dt, receive_ts, None))
        stats = self.stats
        stats.packets += len(ticks) + unknown
        stats.unknown_tokens += unknown
        stats.ticks += len(ticks)
        return ticks

    def parse_text(self, text: str | bytes) -> KiteMessage | None:
        """Parse a JSON text frame ``{"type": ..., "data": ...}``; None (and counted) if malformed."""
        try:
            message = json.loads(text)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested deeper than the parser goes
            self._malformed(BAD_JSON, f"text frame is not JSON ({exc})")
            return None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            self._malformed(BAD_MESSAGE, 'text frame is not {"type": ..., "data": ...}')
            return None
        self.stats.text_messages += 1
        return KiteMessage(message["type"], message.get("data"))


# The reference implementation above is also the fallback. ``KiteDecoder`` is the compiled
# decode's subclass (brokers/kite/_speedups.pyx) when that is built from these sources, else this
# class; core.accel says which at start-up, and MARKETFEED_PURE_PYTHON=1 keeps this one.
PythonKiteDecoder = KiteDecoder
_compiled = accel.load("brokers.kite._speedups")
if _compiled is not None:
    KiteDecoder = _compiled.compiled_decoder(PythonKiteDecoder)  # type: ignore[misc]


def _token_list(tokens: Iterable[int]) -> list[int]:
    result = []
    for token in tokens:
        if isinstance(token, bool) or not isinstance(token, int) or not 0 < token < 1 << 32:
            raise ValueError(f"instrument token {token!r} is not a Kite instrument_token (a positive 32-bit integer)")
        result.append(token)
    return result


def _encode(action: str, value: Any) -> str:
    return json.dumps({"a": action, "v": value}, separators=(",", ":"))


def subscribe(tokens: Iterable[int]) -> str:
    """``{"a":"subscribe","v":[...]}``; the server starts new subscriptions in quote mode."""
    return _encode("subscribe", _token_list(tokens))


def unsubscribe(tokens: Iterable[int]) -> str:
    """``{"a":"unsubscribe","v":[...]}``."""
    return _encode("unsubscribe", _token_list(tokens))


def set_mode(mode: str, tokens: Iterable[int]) -> str:
    """``{"a":"mode","v":[mode,[...]]}``; send it after ``subscribe`` (before, it has no effect)."""
    if mode not in MODES:
        raise ValueError(f"unknown Kite mode {mode!r}: use one of {', '.join(MODES)}")
    return _encode("mode", [mode, _token_list(tokens)])
