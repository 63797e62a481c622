"""Fuzz both market-data decoders with random and mutated frames: no exception may escape.

    .venv/bin/python -m bench.fuzz_decoders [--seed 1] [--frames 1000000] [--replay kite:INDEX]

``--frames`` are split across ``KiteDecoder`` and ``KotakDecoder`` (half each). Every frame is
built from its own seed (``--seed`` and its index), so any one of them can be rebuilt alone
(``--replay kite:123456``). The valid material comes from the fake servers' spec-faithful
encoders (``testkit/fakes``): a deterministic tape of every packet kind, then per frame one recipe:

- ``valid``: packets as the server sends them (must decode completely, without a malformed count);
- ``mutated``: packet-level changes (duplicated, dropped, spliced, length fields and counts
  altered, Kotak codes, levels and depth counts altered, timestamps, volumes and prices set to
  boundary values) and byte-level ones (bit flips, truncation, garbage appended or inserted,
  bytes erased, boundary values written at random offsets);
- ``shaped``: a valid frame layout (count, lengths, headers) around random packet bodies that
  carry known tokens, so random fields reach the tick builders of both paths;
- ``random`` and ``empty``: random bytes of random length, and frames of 0 to 2 bytes;
- ``text``: JSON text frames through ``parse_text``: the servers' messages, mutated, random bytes
  and text, deep nesting, huge numbers, other encodings.

Each frame is decoded inside ``try``; an exception escaping a decoder is a failure, and so is a
decoded tick breaking an invariant (exact ``Decimal`` prices, aware datetimes, volume ``None``
or an ``int`` >= 0, a known instrument). Exits 1 after printing, per decoder, the first failing
frame of each kind (exception, or the invariant it breaks) as hex, with the seed and index that
rebuild it.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import struct
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal

from brokers.kite import protocol as kite
from brokers.kotak_neo import protocol as kotak
from brokers.kotak_neo.instruments import KotakInstrument
from core.ist import IST
from core.ticks import Depth, DepthLevel, Instrument, TickData
from testkit.fakes import kite_server as kite_fake
from testkit.fakes import kotak_server as kotak_fake

DECODERS = ("kite", "kotak")
RECEIVED = datetime(2026, 1, 15, 9, 15, 30, 250_000, tzinfo=IST)

# Values at the edges of the wire fields and of the decoders' own ranges (time units, signs).
BOUNDARY_INTS = (
    0, 1, -1, 2**31 - 1, 2**31, 2**32 - 1, 2**63 - 1, -(2**63), 10**10 - 1, 10**10, 10**12 - 1, 10**12,
    10**13 - 1, 10**13, 1_768_448_700, 1_768_448_700_123, -2_209_008_600,
)  # fmt: skip


def _boundary(rng: random.Random, size: int, order: str) -> bytes:
    value = rng.choice(BOUNDARY_INTS) if rng.random() < 0.8 else rng.getrandbits(8 * size)
    return (value % (1 << 8 * size)).to_bytes(size, "big" if order == ">" else "little")


def _garbage(rng: random.Random, low: int = 1, high: int = 64) -> bytes:
    return rng.randbytes(rng.randint(low, high))


# --- byte-level mutations (both decoders) ------------------------------------------------------


def _flip(rng: random.Random, raw: bytearray) -> None:
    for _ in range(rng.choice((1, 1, 1, 2, 4, 8))):
        if raw:
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)


def _truncate(rng: random.Random, raw: bytearray) -> None:
    del raw[rng.randint(0, len(raw)) :]


def _extend(rng: random.Random, raw: bytearray) -> None:
    raw += _garbage(rng)


def _insert(rng: random.Random, raw: bytearray) -> None:
    pos = rng.randint(0, len(raw))
    raw[pos:pos] = _garbage(rng, 1, 16)


def _erase(rng: random.Random, raw: bytearray) -> None:
    pos = rng.randint(0, len(raw))
    del raw[pos : pos + rng.randint(1, 32)]


def _overwrite(rng: random.Random, raw: bytearray, order: str) -> None:
    size = rng.choice((1, 2, 4, 8))
    if len(raw) >= size:
        pos = rng.randint(0, len(raw) - size)
        raw[pos : pos + size] = _boundary(rng, size, order)


BYTE_OPS = ("flip", "truncate", "extend", "insert", "erase", "overwrite")


def mutate_bytes(rng: random.Random, raw: bytearray, order: str, steps: list[str]) -> None:
    for _ in range(rng.choice((0, 1, 1, 1, 2, 3))):
        op = rng.choice(BYTE_OPS)
        steps.append(op)
        if op == "overwrite":
            _overwrite(rng, raw, order)
        else:
            {"flip": _flip, "truncate": _truncate, "extend": _extend, "insert": _insert, "erase": _erase}[op](rng, raw)


# --- the material ------------------------------------------------------------------------------


@dataclass
class Corpus:
    """Valid packets of one decoder, grouped for the recipes, and its text messages."""

    packets: list[bytes]  # every kind; known tokens but for one packet per mode or kind
    uniform: dict[tuple, list[bytes]]  # (kind, length) -> packets of a frame one fast path decodes
    texts: list[str]
    tokens: list[int]  # known tokens (Kite) / known (exchange id, token) numbers (Kotak)


def kite_corpus(seed: int) -> tuple[Corpus, dict[int, Instrument]]:
    insts = kite_fake.DEFAULT_INSTRUMENTS
    tape = kite_fake.random_tape(insts, seconds=90, seed=seed)
    packets: list[bytes] = []
    uniform: dict[tuple, list[bytes]] = {}
    for tick in tape:
        for mode in kite_fake.MODES:
            packet = kite_fake.encode_packet(tick, mode)
            packets.append(packet)
            uniform.setdefault((mode, len(packet)), []).append(packet)
    nse = next(t for t in tape if t.token & 0xFF == 1)
    stranger = replace(nse, token=(999_999 << 8) | 1)  # a token the decoder was not given
    packets += [kite_fake.encode_packet(stranger, mode) for mode in kite_fake.MODES]
    texts = [
        json.dumps({"type": "order", "data": {"order_id": "240115000000123", "status": "COMPLETE", "tradingsymbol": "INFY",
                                              "exchange": "NSE", "quantity": 1, "average_price": 1573.15, "tag": None}}),
        json.dumps({"type": "error", "data": "Invalid `api_key` or `access_token`."}),
        json.dumps({"type": "message", "data": "Market is closed for the day."}),
        json.dumps({"type": "error", "data": {"nested": [1, 2, {"x": "y"}]}}),
        json.dumps({"type": 1, "data": "type is not a string"}),
        "[]", "null", '"text"', "1e400", "{}",
    ]  # fmt: skip
    instruments = {i.token: Instrument(i.exchange, i.tradingsymbol, i.token) for i in insts}
    return Corpus(packets, uniform, texts, sorted(instruments)), instruments


LONG_INDEX = "Nifty Midcap Select Index"  # longer than the 21 bytes of the wire name: matched by its prefix


def kotak_corpus(seed: int) -> tuple[Corpus, dict[str, Instrument]]:
    long_index = kotak_fake.FakeInstrument("nse_cm", 26121, LONG_INDEX, "MIDCPNIFTY", LONG_INDEX, inst_type="INDEX",
                                           lot_size=0, is_index=True)  # fmt: skip
    insts = (*kotak_fake.DEFAULT_INSTRUMENTS, long_index)
    tape = kotak_fake.random_tape(insts, seconds=90, seed=seed)
    by_id = {(i.segment, i.token): i for i in insts}
    packets: list[bytes] = []
    uniform: dict[tuple, list[bytes]] = {}
    for tick in tape:
        inst = by_id[(tick.segment, tick.token)]
        if inst.is_index:
            out = [("index", kotak_fake.encode_index(tick, inst.trading_symbol.encode()[:21].decode()))]
        else:
            intents = ("scrips_lite", "scrips", "depth", "full_depth")
            out = [(intent, kotak_fake.encode_tick(tick, intent, inst)) for intent in intents]
        for kind, packet in out:
            packets.append(packet)
            uniform.setdefault((kind, len(packet)), []).append(packet)
    stranger = replace(tape[0], token=999_999)
    packets.append(kotak_fake.encode_market_picture(stranger, 8))
    others = [kotak_fake.encode_market_status(seg, code) for seg in ("nse_cm", "bse_cm", "mcx_fo") for code in (1, 2, 5, 12, 99)]
    others += [kotak_fake.encode_market_event("nse_fo", opened) for opened in (True, False)]
    others.append(kotak_fake.encode_cas("nse_cm", 1594, Decimal("1573.15"), 1200, 300))
    packets += others
    exchanges = {seg: {"value": kotak_fake.EXCHANGE_IDS[seg], "divider": d} for seg, d in kotak_fake.DEFAULT_DIVIDERS.items()}
    symbols = {i.feed_key: i.trading_symbol for i in insts}
    texts = [
        json.dumps({"message_code": 1117, "id": "SFD_CPROD_701", "version": 1, "exchanges": exchanges}),
        json.dumps({"message_code": 1119, "id": "SFD_CPROD_701", "version": 1, "exchanges": exchanges}),
        json.dumps({"message_code": 1117, "format": "native_fallback", "exchanges": exchanges}),
        json.dumps({"message_code": 1120, "message": "invalid or expired session"}),
        json.dumps({"message_code": 1109, "error_code": 0, "description": "SUBSCRIBED",
                    "data": {k: {"cas_status": 1, "trading_symbols": s} for k, s in symbols.items()}}),
        json.dumps({"message_code": 1109, "message": "Subscribed", "trading_symbols": symbols}),
        json.dumps({"message_code": 1109, "error_code": 1, "description": "Subscription limit of 3000 input tokens exceeded",
                    "data": {}, "trading_symbols": {}}),
        json.dumps({"message_code": "2001", "msg": "server going down"}),
        "[]", "null", "3", "{}",
    ]  # fmt: skip
    instruments = {}
    for i in insts:
        exchange = kotak.SEGMENT_EXCHANGES[i.segment]
        if i.is_index:
            instruments[i.feed_key] = KotakInstrument(exchange, i.trading_symbol.upper(), 0, feed_name=i.trading_symbol)
        else:
            instruments[i.key] = KotakInstrument(exchange, i.trading_symbol, i.token)
    numbers = sorted({kotak_fake.EXCHANGE_IDS[i.segment] << 32 | i.token for i in insts})
    return Corpus(packets, uniform, texts, numbers), instruments


# --- Kite frames -------------------------------------------------------------------------------

KITE_LENGTHS = (kite.LTP_LEN, kite.INDEX_QUOTE_LEN, kite.INDEX_FULL_LEN, kite.QUOTE_LEN, kite.FULL_LEN)
# offsets and sizes of fields worth boundary values, by packet length (Kite Connect's WebSocket docs)
KITE_FIELDS = {
    8: ((0, 4), (4, 4)),
    28: ((0, 4), (4, 4)),
    32: ((0, 4), (4, 4), (28, 4)),
    44: ((0, 4), (4, 4), (8, 4), (16, 4)),
    184: ((0, 4), (4, 4), (8, 4), (16, 4), (44, 4), (48, 4), (60, 4), (64, 4), (68, 4), (72, 2)),
}


def kite_assemble(packets: list[bytes], lengths: dict[int, int], count: int | None) -> bytearray:
    raw = bytearray(struct.pack(">H", len(packets) if count is None else count))
    for i, p in enumerate(packets):
        raw += struct.pack(">H", lengths.get(i, len(p))) + p
    return raw


def kite_frame(rng: random.Random, corpus: Corpus) -> tuple[str, bytes]:
    """One Kite binary frame and the recipe that built it."""
    roll = rng.random()
    if roll < 0.04:
        return "empty", rng.choice((b"", b"\x00", b"\x01", b"\x00\x00", b"\xff"))
    if roll < 0.12:
        size = rng.choice((rng.randint(0, 8), rng.randint(0, 400), 2 + 186 * rng.randint(1, 4)))
        return "random", rng.randbytes(size)
    if roll < 0.30:
        return "shaped", kite_shaped(rng, corpus)
    if rng.random() < 0.4:  # one mode per frame, as a connection in that mode gets (full: the fast path)
        group = corpus.uniform[rng.choice(list(corpus.uniform))]
        packets = [rng.choice(group) for _ in range(rng.randint(1, 12))]
    else:
        packets = [rng.choice(corpus.packets) for _ in range(rng.randint(1, 8))]
    if roll < 0.36:
        return "valid", bytes(kite_fake.encode_frame(packets))
    steps: list[str] = []
    lengths: dict[int, int] = {}
    count: int | None = None
    for _ in range(rng.choice((0, 1, 1, 2, 3))):
        op = rng.choice(("dup", "drop", "splice", "length", "count", "field"))
        steps.append(op)
        if op == "dup" and packets:
            i = rng.randrange(len(packets))
            packets.insert(rng.randint(0, len(packets)), packets[i])
        elif op == "drop" and packets:
            del packets[rng.randrange(len(packets))]
        elif op == "splice":
            a, b = rng.choice(corpus.packets), rng.choice(corpus.packets)
            packets.insert(rng.randint(0, len(packets)), a[: rng.randint(0, len(a))] + b[rng.randint(0, len(b)) :])
        elif op == "length" and packets:
            i = rng.randrange(len(packets))
            n = len(packets[i])
            value = rng.choice((0, 1, n - 1, n + 1, n + rng.randint(2, 8), 0xFFFF, rng.choice(KITE_LENGTHS), rng.getrandbits(16)))
            lengths[i] = max(0, min(0xFFFF, value))
        elif op == "count":
            n = len(packets)
            count = max(0, min(0xFFFF, rng.choice((0, n - 1, n + 1, n + 5, 0xFFFF, rng.getrandbits(16)))))
        elif op == "field" and packets:
            i = rng.randrange(len(packets))
            spots = KITE_FIELDS.get(len(packets[i]))
            if spots:
                pos, size = rng.choice(spots)
                p = bytearray(packets[i])
                p[pos : pos + size] = _boundary(rng, size, ">")
                packets[i] = bytes(p)
    raw = kite_assemble(packets, lengths, count)
    mutate_bytes(rng, raw, ">", steps)
    return "mutated:" + "+".join(steps or ["none"]), bytes(raw)


def kite_shaped(rng: random.Random, corpus: Corpus) -> bytes:
    """A frame laid out right (count, lengths) around random bodies with known tokens."""
    length = rng.choice(KITE_LENGTHS) if rng.random() < 0.5 else None  # None: lengths mixed
    packets = []
    for _ in range(rng.randint(1, 10)):
        n = length or rng.choice(KITE_LENGTHS)
        packets.append(struct.pack(">I", rng.choice(corpus.tokens)) + rng.randbytes(n - 4))
    return bytes(kite_fake.encode_frame(packets))


def kite_expected(frame: bytes, known: set[int], timed_only: bool) -> int:
    """Ticks a complete decode of a valid frame yields: known tokens, and timed packets only if asked."""
    count = frame[0] << 8 | frame[1]
    pos, n = 2, 0
    for _ in range(count):
        length = frame[pos] << 8 | frame[pos + 1]
        token = int.from_bytes(frame[pos + 2 : pos + 6], "big")
        if token in known and (not timed_only or length in (kite.FULL_LEN, kite.INDEX_FULL_LEN)):
            n += 1
        pos += 2 + length
    return n


# --- Kotak frames ------------------------------------------------------------------------------

KOTAK_CODES = (kotak.MSG_MARKET_PICTURE, kotak.MSG_INDEX, kotak.MSG_MARKET_STATUS, kotak.MSG_CAS_REFERENCE,
               kotak.MSG_MARKET_OPEN, kotak.MSG_MARKET_CLOSE)  # fmt: skip
KOTAK_LEVELS = (0, 1, 2, 3, 4, 8, 16, 255)
# offsets and sizes of fields worth boundary values (Kotak's websocket.md), by message code and level
KOTAK_MP_FIELDS = ((9, 4), (29, 8), (37, 8), (45, 8), (69, 4), (73, 8), (89, 4), (93, 4), (103, 4), (144, 8), (152, 4))
KOTAK_MINI_FIELDS = ((9, 4), (13, 8), (21, 4), (25, 8))
KOTAK_INDEX_FIELDS = ((9, 4), (29, 4), (33, 8))


def _kotak_fields(packet: bytes) -> tuple[tuple[int, int], ...]:
    code = packet[2] | packet[3] << 8
    if code == kotak.MSG_INDEX:
        return KOTAK_INDEX_FIELDS
    if code == kotak.MSG_MARKET_PICTURE:
        return KOTAK_MINI_FIELDS if packet[5] == kotak.LEVEL_MINI else KOTAK_MP_FIELDS
    return ((9, 2),)


def kotak_frame(rng: random.Random, corpus: Corpus) -> tuple[str, bytes]:
    """One Kotak binary frame and the recipe that built it."""
    roll = rng.random()
    if roll < 0.04:
        return "empty", rng.choice((b"", b"\x00", b"\x09", b"\x09\x00", b"\xff"))
    if roll < 0.12:
        size = rng.choice((rng.randint(0, 8), rng.randint(0, 600), rng.choice((54, 87, 304)) * rng.randint(1, 4)))
        return "random", rng.randbytes(size)
    if roll < 0.30:
        return "shaped", kotak_shaped(rng, corpus)
    if rng.random() < 0.4:  # one kind and length per frame, as a connection with one intent gets (the fast path)
        group = corpus.uniform[rng.choice(list(corpus.uniform))]
        packets = [rng.choice(group) for _ in range(rng.randint(1, 12))]
    else:
        packets = [rng.choice(corpus.packets) for _ in range(rng.randint(1, 8))]
    if roll < 0.36:
        return "valid", b"".join(packets)
    steps: list[str] = []
    for _ in range(rng.choice((0, 1, 1, 2, 3))):
        op = rng.choice(("dup", "drop", "splice", "length", "code", "level", "counts", "field", "name"))
        steps.append(op)
        if op == "dup" and packets:
            packets.insert(rng.randint(0, len(packets)), rng.choice(packets))
        elif op == "drop" and packets:
            del packets[rng.randrange(len(packets))]
        elif op == "splice":
            a, b = rng.choice(corpus.packets), rng.choice(corpus.packets)
            packets.insert(rng.randint(0, len(packets)), a[: rng.randint(0, len(a))] + b[rng.randint(0, len(b)) :])
        elif packets:
            i = rng.randrange(len(packets))
            p = bytearray(packets[i])
            if op == "length" and len(p) >= 2:
                n = len(p)
                value = rng.choice((0, 1, 8, 9, n - 1, n + 1, n + rng.randint(2, 64), 0xFFFF, 54, 87, 144, rng.getrandbits(16)))
                p[0:2] = struct.pack("<H", max(0, min(0xFFFF, value)))
            elif op == "code" and len(p) >= 4:
                p[2:4] = struct.pack("<H", rng.choice(KOTAK_CODES) if rng.random() < 0.8 else rng.getrandbits(16))
            elif op == "level" and len(p) >= 6:
                p[5] = rng.choice(KOTAK_LEVELS)
            elif op == "counts" and len(p) >= 97:  # buy/sell depth counts of a market picture
                for pos in rng.sample((89, 93), rng.randint(1, 2)):
                    p[pos : pos + 4] = struct.pack("<I", rng.choice((0, 1, 2, 5, 6, 20, 21, 40, 2**31, 2**32 - 1)))
            elif op == "field" and len(p) >= 9:
                pos, size = rng.choice(_kotak_fields(bytes(p)))
                if len(p) >= pos + size:
                    p[pos : pos + size] = _boundary(rng, size, "<")
            elif op == "name" and len(p) >= 87:  # the 21-byte name of an index packet
                p[66:87] = rng.choice((rng.randbytes(21), b"\xff" * 21, LONG_INDEX.encode()[: rng.randint(0, 21)].ljust(21, b"\0"),
                                       "नि".encode().ljust(21, b"\0"), bytes(21)))  # fmt: skip
            packets[i] = bytes(p)
    raw = bytearray(b"".join(packets))
    mutate_bytes(rng, raw, "<", steps)
    return "mutated:" + "+".join(steps or ["none"]), bytes(raw)


def kotak_shaped(rng: random.Random, corpus: Corpus) -> bytes:
    """Packets with right lengths, codes and levels around random bodies with known tokens."""
    kinds = (("mini", 54, 7208, 1), ("index", 87, 7207, 0), ("mp4", 176, 7208, 4), ("mp8", 304, 7208, 8),
             ("mp16", 784, 7208, 16), ("mp2", 144 + 16 * rng.randint(0, 4), 7208, 2))  # fmt: skip
    uniform = rng.random() < 0.5
    kind = rng.choice(kinds)
    out = []
    for _ in range(rng.randint(1, 8)):
        _, n, code, level = kind if uniform else rng.choice(kinds)
        number = rng.choice(corpus.tokens)
        head = struct.pack("<HHBBBBB", n, code, number >> 32, level, 0, rng.getrandbits(8), 0)
        out.append(head + struct.pack("<I", number & 0xFFFFFFFF) + rng.randbytes(n - 13))
    return b"".join(out)


# --- text frames -------------------------------------------------------------------------------


def _json_value(rng: random.Random, depth: int = 0) -> object:
    roll = rng.random()
    if depth > 3 or roll < 0.5:
        return rng.choice((None, True, False, 0, -1, 1117, 1120, 1109, 2**64, 10**30, 1.5, 1e308, -0.0, "", "x", "1117",
                           "١٢٣", "100", "nse_cm", "native_fallback", "\ud800" if rng.random() < 0.1 else "ok"))  # fmt: skip
    if roll < 0.75:
        return [_json_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = ("type", "data", "message_code", "exchanges", "nse_cm", "value", "divider", "trading_symbols", "error_code",
            "message", "format", "description", "msg")  # fmt: skip
    return {rng.choice(keys): _json_value(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def _replace_somewhere(rng: random.Random, doc: object) -> object:
    """``doc`` with one value somewhere inside replaced by a random JSON value."""
    if isinstance(doc, dict) and doc and rng.random() < 0.7:
        key = rng.choice(list(doc))
        return {**doc, key: _replace_somewhere(rng, doc[key])}
    if isinstance(doc, list) and doc and rng.random() < 0.7:
        i = rng.randrange(len(doc))
        return [*doc[:i], _replace_somewhere(rng, doc[i]), *doc[i + 1 :]]
    return _json_value(rng)


def text_frame(rng: random.Random, corpus: Corpus) -> tuple[str, str | bytes]:
    """One text frame as str or bytes (the clients pass the WebSocket payload as bytes)."""
    base = rng.choice(corpus.texts)
    roll = rng.random()
    if roll < 0.15:
        recipe, text = "text:valid", base
    elif roll < 0.35:
        recipe, text = "text:value", json.dumps(_replace_somewhere(rng, json.loads(base)))
    elif roll < 0.60:
        raw = bytearray(base.encode())
        steps: list[str] = []
        mutate_bytes(rng, raw, "<", steps)
        return "text:mutated:" + "+".join(steps or ["none"]), bytes(raw) if rng.random() < 0.5 else raw.decode("utf-8", "replace")
    elif roll < 0.70:
        depth = rng.choice((10, 500, 999, 1000, 3000, 20000, 100000))
        opener, closer = rng.choice((("[", "]"), ('{"a":', "}"), ('{"type":"error","data":[', "]}")))
        recipe, text = f"text:nested{depth}", opener * depth + "1" + closer * depth
    elif roll < 0.78:
        digits = rng.choice((20, 400, 4300, 4301, 10000))
        shape = rng.choice(('{"message_code":%s}', '{"type":"error","data":%s}', "[%s]"))
        recipe, text = f"text:digits{digits}", shape % ("9" * digits)
    elif roll < 0.86:
        encoding = rng.choice(("utf-16", "utf-16-le", "utf-32", "utf-8-sig", "latin-1", "cp1252"))
        return f"text:{encoding}", base.replace("Subscribed", "Souscrit é").encode(encoding, "replace")
    elif roll < 0.93:
        return "text:random-bytes", rng.randbytes(rng.randint(0, 200))
    else:
        chars = (chr(rng.choice((rng.randint(0, 127), rng.randint(0, 0x10FFFF)))) for _ in range(rng.randint(0, 60)))
        recipe, text = "text:random-str", "".join(chars)
    if rng.random() < 0.5:
        return recipe, text.encode("utf-8", "surrogatepass")
    return recipe, text


# --- invariants --------------------------------------------------------------------------------


def _aware(value: object) -> bool:
    return type(value) is datetime and value.utcoffset() is not None


def _exact(price: object, exponent: int | None) -> bool:
    """A finite Decimal; with a power-of-ten divider, exactly raw x 10^exponent (the decoders' scaleb)."""
    if type(price) is not Decimal or not price.is_finite():
        return False
    return exponent is None or price.as_tuple().exponent == exponent


def tick_problem(t: object, known: set[str], exponent: Callable[[TickData], int | None]) -> tuple[str, str] | None:
    """(kind, what) is wrong with a decoded tick, or None."""
    if type(t) is not TickData:
        return "type", f"decoded a {type(t).__name__}, not a TickData"
    if t.key not in known:
        return "instrument", f"tick for {t.key}, an instrument the decoder was not given"
    exp = exponent(t)
    if not _exact(t.last_price, exp):
        return "price", f"last_price {t.last_price!r} is not an exact Decimal (exponent {exp})"
    if not _aware(t.exchange_ts) or not _aware(t.receive_ts):
        return "time", f"naive or non-datetime time: exchange_ts={t.exchange_ts!r} receive_ts={t.receive_ts!r}"
    if t.volume is not None and (type(t.volume) is not int or t.volume < 0):
        return "volume", f"volume {t.volume!r} is neither None nor an int >= 0"
    for name in ("last_quantity", "oi"):
        value = getattr(t, name)
        if value is not None and type(value) is not int:
            return "type", f"{name} {value!r} is neither None nor an int"
    if t.depth is not None:
        if type(t.depth) is not Depth or type(t.depth.bids) is not tuple or type(t.depth.asks) is not tuple:
            return "depth", f"depth {t.depth!r} is not a Depth of tuples"
        for level in t.depth.bids + t.depth.asks:
            if type(level) is not DepthLevel or not _exact(level.price, exp) or type(level.quantity) is not int:
                return "depth", f"depth level {level!r} is not a DepthLevel with an exact Decimal price"
    return None


# --- the run -----------------------------------------------------------------------------------


@dataclass
class Failure:
    index: int
    recipe: str
    frame: str | bytes
    what: str


@dataclass
class Tally:
    binary: int = 0
    text: int = 0
    ticks: int = 0
    decode_s: float = 0.0
    exceptions: int = 0
    breaches: Counter = field(default_factory=Counter)  # invariant kind -> frames breaking it
    recipes: Counter = field(default_factory=Counter)
    first: dict[str, Failure] = field(default_factory=dict)  # "exception" or invariant kind -> its first frame

    def fail(self, kind: str, failure: Failure) -> None:
        if kind == "exception":
            self.exceptions += 1
        else:
            self.breaches[kind] += 1
        self.first.setdefault(kind, failure)


class Target:
    """One decoder family: its frames, its decoders, and the invariants of its ticks."""

    def __init__(self, name: str, seed: int) -> None:
        self.name = name
        self.seed = seed
        self.salt = DECODERS.index(name)
        self.decoders: list[kite.KiteDecoder] | list[kotak.KotakDecoder]
        if name == "kite":
            self.corpus, kite_instruments = kite_corpus(seed)
            # the live client decodes full mode with timed_only: both configurations take frames in turn
            self.decoders = [kite.KiteDecoder(kite_instruments), kite.KiteDecoder(kite_instruments, timed_only=True)]
            self.make = kite_frame
            self.known_tokens = set(kite_instruments)
            self.exponents = {t: kite.SEGMENT_EXPONENT.get(t & 0xFF, kite.DEFAULT_EXPONENT) for t in kite_instruments}
            instruments: dict = kite_instruments
        else:
            self.corpus, instruments = kotak_corpus(seed)
            self.decoders = [kotak.KotakDecoder(instruments, kotak_fake.DEFAULT_DIVIDERS)]
            self.make = kotak_frame
            self.known_tokens = set()
            self._refresh_kotak_exponents()
        self.known = {inst.key for inst in instruments.values()}

    def _refresh_kotak_exponents(self) -> None:
        """Exponents by exchange name under the dividers in force: an auth reply (mutated or not) replaces them,
        even by one that is no power of ten (then no exponent: the price is a quotient)."""
        dividers = self.decoders[0].dividers  # type: ignore[union-attr]
        self.exponents = {}
        for exchange, segment in kotak.EXCHANGE_SEGMENTS.items():
            divider = dividers.get(kotak.SEGMENT_IDS[segment], kotak.DEFAULT_DIVIDER)
            digits = len(str(divider)) - 1
            self.exponents[exchange] = -digits if divider == 10**digits else None

    def exponent(self, t: TickData) -> int | None:
        return self.exponents[t.token if self.name == "kite" else t.exchange]

    def frame(self, index: int) -> tuple[bool, str, str | bytes]:
        """Frame ``index`` of this target, rebuilt from its own seed: (is_text, recipe, frame)."""
        rng = random.Random((self.seed << 33) | (self.salt << 32) | index)
        if rng.random() < 0.12:
            return (True, *text_frame(rng, self.corpus))
        return (False, *self.make(rng, self.corpus))

    def run_one(self, index: int, tally: Tally, perf: Callable[[], float] = time.perf_counter) -> None:
        is_text, recipe, data = self.frame(index)
        tally.recipes["text" if is_text else recipe.split(":")[0]] += 1
        decoder = self.decoders[index % len(self.decoders)]
        try:
            if is_text:
                tally.text += 1
                t0 = perf()
                decoder.parse_text(data)
                tally.decode_s += perf() - t0
                if self.name == "kotak":
                    self._refresh_kotak_exponents()
                return
            tally.binary += 1
            malformed_before = sum(decoder.stats.malformed.values())
            t0 = perf()
            ticks = decoder.decode(data, RECEIVED)  # type: ignore[arg-type]
            tally.decode_s += perf() - t0
        except Exception:  # noqa: BLE001 - what the run is looking for
            tally.fail("exception", Failure(index, recipe, data, traceback.format_exc()))
            return
        tally.ticks += len(ticks)
        problem = next((p for t in ticks if (p := tick_problem(t, self.known, self.exponent)) is not None), None)
        if problem is None and recipe == "valid":
            problem = self._incomplete(decoder, data, ticks, malformed_before)  # type: ignore[arg-type]
        if problem is not None:
            tally.fail(problem[0], Failure(index, recipe, data, problem[1]))

    def _incomplete(self, decoder: kite.KiteDecoder | kotak.KotakDecoder, data: bytes, ticks: list[TickData],
                    malformed_before: int) -> tuple[str, str] | None:  # fmt: skip
        """What a valid frame's decode missed: a malformed count, or (Kite) a packet of a known token."""
        if sum(decoder.stats.malformed.values()) != malformed_before:
            return "valid frame", f"a valid frame was counted as malformed: {decoder.stats.malformed}"
        if isinstance(decoder, kite.KiteDecoder):
            want = kite_expected(data, self.known_tokens, decoder.timed_only)
            if len(ticks) != want:
                return "valid frame", f"a valid frame decoded to {len(ticks)} ticks, expected {want}"
        return None

    def malformed(self) -> Counter:
        total: Counter = Counter()
        for d in self.decoders:
            total.update(d.stats.malformed)
        return total


HEX_SHOWN = 4096  # bytes of a failing frame printed; --replay prints all of it


def _hex(data: str | bytes, limit: int | None = None) -> str:
    raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
    if limit is None or len(raw) <= limit:
        return raw.hex()
    return f"{raw[:limit].hex()} ... (the first {limit:,} of {len(raw):,} bytes: --replay prints all)"


def describe(target: Target, kind: str, failure: Failure, frames: int) -> str:
    data = failure.frame
    form = "bytes" if isinstance(data, bytes) else "str, shown as utf-8"
    return (
        f"FIRST {'EXCEPTION' if kind == 'exception' else f'{kind.upper()} BREACH'} ({target.name} frame {failure.index}, "
        f"recipe {failure.recipe}, {form}, {len(data):,} long):\n{failure.what.rstrip()}\n"
        f"frame hex: {_hex(data, HEX_SHOWN)}\n"
        f"rebuild it:  .venv/bin/python -m bench.fuzz_decoders --seed {target.seed} --replay {target.name}:{failure.index}\n"
        f"rerun all:   .venv/bin/python -m bench.fuzz_decoders --seed {target.seed} --frames {frames}"
    )


def replay(seed: int, spec: str) -> int:
    name, _, index_text = spec.partition(":")
    if name not in DECODERS or not index_text.isdigit():
        raise SystemExit(f"--replay {spec!r}: write DECODER:INDEX, DECODER one of {', '.join(DECODERS)}")
    target = Target(name, seed)
    index = int(index_text)
    is_text, recipe, data = target.frame(index)
    print(f"{name} frame {index} (seed {seed}): recipe {recipe}, {'text' if is_text else 'binary'}, {len(data):,} long")
    print(f"hex: {_hex(data)}")
    tally = Tally()
    target.run_one(index, tally)  # a fresh decoder: a failure needing earlier frames' state shows only in the full rerun
    for failure in tally.first.values():
        print(failure.what.rstrip())
    if tally.first:
        return 1
    print(f"decoded without failure: {tally.ticks} ticks, malformed {dict(target.malformed())}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1, help="a non-negative integer; the same seed builds the same frames")
    ap.add_argument("--frames", type=int, default=1_000_000, help="frames in all, split across both decoders")
    ap.add_argument("--replay", metavar="DECODER:INDEX", help="rebuild and decode one frame (kite:123 or kotak:123)")
    args = ap.parse_args()
    if args.seed < 0 or args.frames < 0:
        ap.error("--seed and --frames must be >= 0")
    # The decoders log each kind of malformed input once; the counts below say more than those lines.
    logging.getLogger("brokers").setLevel(logging.ERROR)
    if args.replay:
        return replay(args.seed, args.replay)

    shares = {"kite": args.frames - args.frames // 2, "kotak": args.frames // 2}
    print(f"seed {args.seed}: {args.frames:,} frames, {shares['kite']:,} Kite and {shares['kotak']:,} Kotak")
    failed = False
    for name in DECODERS:
        target = Target(name, args.seed)
        tally = Tally()
        t0 = time.perf_counter()
        for index in range(shares[name]):
            target.run_one(index, tally)
        wall = time.perf_counter() - t0
        frames = tally.binary + tally.text
        malformed = target.malformed()
        print(
            f"{name:5s}  frames {frames:>9,} (binary {tally.binary:,}, text {tally.text:,})   "
            f"{frames / tally.decode_s if tally.decode_s else 0:>9,.0f} frames/s decoding "
            f"({frames / wall if wall else 0:,.0f} frames/s with building and checks, {wall:.1f} s)"
        )
        breaches = ", ".join(f"{k} {v:,}" for k, v in sorted(tally.breaches.items())) or "none"
        print(f"       ticks decoded {tally.ticks:,}   exceptions escaped {tally.exceptions:,}   invariant breaches: {breaches}")
        print(f"       recipes: {', '.join(f'{k} {v:,}' for k, v in sorted(tally.recipes.items()))}")
        print(f"       malformed ({sum(malformed.values()):,}): {', '.join(f'{k} {v:,}' for k, v in sorted(malformed.items()))}")
        for kind, failure in tally.first.items():
            failed = True
            print(describe(target, kind, failure, args.frames))
    print("FAIL: see the first failure above" if failed else "OK: no exception escaped, every tick kept its invariants")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
