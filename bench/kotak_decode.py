"""Kotak SFeed binary decode: our KotakDecoder against the official SDK's split_batch + decode_packet.

    .venv/bin/python -m bench.kotak_decode [--frames 200] [--packets 50] [--repeat 5] [--profile]

All decode the SAME frames in one run; prints the best of ``--repeat`` runs as packets/s for each
and the ratios to the SDK (the bar is 3x, for the default decoder). ``compiled`` is the default
``KotakDecoder`` when brokers/kotak_neo/_speedups.pyx is built (it compiles the market-picture
frames: ``depth``, ``depth-cold`` and ``touchline``; the other sets run the same Python code on
both), ``pure`` the pure-Python reference ``PythonKotakDecoder``. Data sets, ``--packets``
packets a frame:

- ``depth``: market pictures at level 8 (144 bytes + 5 bid and 5 ask rows) whose snapshots evolve
  like a live book (the last price walks on its tick grid, cumulative volume rises, 1-4 of the
  10 depth rows change per snapshot);
- ``depth-cold``: the same, but every depth row of every packet is new (worst case for our caches);
- ``touchline``: level 4 market pictures (one bid, one ask);
- ``mini``: level 1 mini touch lines (54 bytes);
- ``index``: index packets (87 bytes);
- ``mixed``: depth, mini and index packets in turn in every frame (our general path: frames of
  one packet kind and length take a faster one).

The SDK (PyPI ``kotakneoapi``, module ``neo_api_client``) is optional: without it only our
figures are printed.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import struct
import time
from collections.abc import Callable
from datetime import datetime

from brokers.kotak_neo.protocol import KotakDecoder, PythonKotakDecoder
from core.ist import IST
from core.ticks import Instrument

try:
    from neo_api_client.websocket.feed.protocol import decode_packet, split_batch
except ImportError:  # the SDK is a test/bench dependency only
    decode_packet = split_batch = None

SESSION = 1_795_491_900  # 2026-11-24 09:15 IST
NSE_CM = 1
DIVIDERS = {1: 100}
_HEADER = struct.Struct("<HHbBBBB")
_MP = struct.Struct("<IqqqqqIIIIIqIIIIhiIdiIIIIIBI")
_ROW = struct.Struct("<qii")
_MINI = struct.Struct("<IqIqIiiIBI")
_INDEX = struct.Struct("<IiiiiiQiiidBi21s")


def _market_picture(level: int, token: int, ltp: int, qty: int, volume: int, ts: int, bids: list, asks: list) -> bytes:
    rows = b"".join(_ROW.pack(q, p, o) for p, q, o in bids + asks)
    body = _MP.pack(
        token, 250_000, 360_000, volume, ts, ts, ltp - 150, ltp - 80, ltp + 200, ltp - 400, ltp, qty, ltp - 3, 0,
        len(bids), len(asks), 1, 57, 0, volume * ltp / 100, 80, ltp * 2, ltp // 2, ltp * 3, ltp // 3, 1, 2, 1,
    )  # fmt: skip
    n = 9 + len(body) + len(rows)
    return _HEADER.pack(n, 7208, NSE_CM, level, 0, 7, 0) + body + rows


def _mini(token: int, ltp: int, qty: int, ts: int) -> bytes:
    return _HEADER.pack(54, 7208, NSE_CM, 1, 0, 7, 0) + _MINI.pack(token, ts, ltp, qty, ltp - 80, 57, 80, 1, 2, 1)


def _index(token: int, value: int, ts: int) -> bytes:
    body = _INDEX.pack(
        token, value - 50, value - 80, value + 90, value - 120, value, ts, value * 2, value // 2, 57, 0.0, 2, 1, b"IDX%d" % token
    )
    return _HEADER.pack(87, 7207, NSE_CM, 0, 0, 7, 0) + body


def build_frames(kind: str, frames: int, packets: int, seed: int = 7) -> tuple[list[bytes], dict[str, Instrument]]:
    """``frames`` frames of ``packets`` packets of one kind; instrument i appears once per frame.

    Each instrument keeps a price-keyed book (tick 0.05): per snapshot the last price moves by at
    most a tick, 1-4 of the ten visible levels change quantity and orders, and the levels that did
    not change keep their exact (price, quantity, orders) as in a live book.
    """
    rng = random.Random(seed)
    cold = kind == "depth-cold"
    tokens = list(range(1000, 1000 + packets))
    ltps = {t: rng.randrange(10_000, 500_000, 5) for t in tokens}  # 100.00 .. 5000.00
    books: dict[int, dict[int, tuple[int, int]]] = {t: {} for t in tokens}
    volumes = dict.fromkeys(tokens, 0)
    out = []
    for f in range(frames):
        ts = SESSION + f // 4  # several frames a second: timestamps repeat within and across frames
        body = []
        for t in tokens:
            ltp = ltps[t] = max(500, ltps[t] + 5 * rng.choice((-1, 0, 0, 0, 1)))
            qty = rng.randint(1, 500)
            volumes[t] += qty
            each = ("depth", "mini", "index")[t % 3] if kind == "mixed" else kind
            if each == "mini":
                body.append(_mini(t, ltp, qty, ts))
                continue
            if each == "index":
                body.append(_index(t, ltp, ts))
                continue
            book = books[t]
            prices = [ltp - 5 * (i + 1) for i in range(5)] + [ltp + 5 * (i + 1) for i in range(5)]
            changed = set(rng.sample(range(10), rng.randint(1, 4)))
            for i, p in enumerate(prices):
                if cold or i in changed or p not in book:
                    book[p] = (rng.randint(1, 5000) * 1000 + f if cold else rng.randint(1, 5000), rng.randint(1, 30))
            levels = [(p, *book[p]) for p in prices]
            if kind == "touchline":
                body.append(_market_picture(4, t, ltp, qty, volumes[t], ts, levels[:1], levels[5:6]))
            else:
                body.append(_market_picture(8, t, ltp, qty, volumes[t], ts, levels[:5], levels[5:]))
        out.append(b"".join(body))
    name = "IDX{}" if kind == "index" else "SYM{}"
    instruments = {f"nse_cm|{t}": Instrument("NSE", name.format(t), t) for t in tokens}
    return out, instruments


def best_of(repeat: int, fn: Callable[[bytes], object], frames: list[bytes]) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for frame in frames:
            fn(frame)
        best = min(best, time.perf_counter() - t0)
    return best


def sdk_decode(frame: bytes) -> list:
    """What the SDK's feed client does with a binary frame, minus its delivery to callbacks."""
    out = []
    for packet in split_batch(frame):
        message = decode_packet(packet, DIVIDERS)
        if message is not None:
            out.append(message)
    return out


def _timed(cls: type[PythonKotakDecoder], frames: list[bytes], instruments: dict[str, Instrument], repeat: int) -> float:
    receive = datetime.fromtimestamp(SESSION, IST)
    decoder = cls(instruments, DIVIDERS)
    assert len(decoder.decode(frames[0], receive)) == len(instruments), "every packet of the set must decode to a tick"
    # A fresh decoder per run would measure cold caches only in the first repeat; the live
    # decoder lives for the whole day, so keep one and let the caches work as they would.
    decoder = cls(instruments, DIVIDERS)
    return best_of(repeat, lambda frame: decoder.decode(frame, receive), frames)


def run(kind: str, frames: list[bytes], instruments: dict[str, Instrument], repeat: int) -> float | None:
    """Prints one line for the set; returns the default decoder's ratio to the SDK (None without the SDK)."""
    total = len(frames) * len(instruments)
    t_pure = _timed(PythonKotakDecoder, frames, instruments, repeat)
    t_compiled = _timed(KotakDecoder, frames, instruments, repeat) if KotakDecoder.compiled else None
    line = f"{kind:10s} packets={total:,}  "
    line += "compiled not built " if t_compiled is None else f"compiled {total / t_compiled:>10,.0f} packets/s  "
    line += f"pure {total / t_pure:>10,.0f} packets/s"
    t_ours = t_pure if t_compiled is None else t_compiled
    if decode_packet is None:
        print(f"{line}   SDK: not installed (pip install kotakneoapi) - no ratio")
        return None
    t_sdk = best_of(repeat, sdk_decode, frames)
    assert len(sdk_decode(frames[0])) == total // len(frames)
    ratios = f"ratio pure {t_sdk / t_pure:5.1f}x"
    if t_compiled is not None:
        ratios = f"ratio compiled {t_sdk / t_compiled:5.1f}x  {ratios}"
    print(f"{line}   SDK {total / t_sdk:>10,.0f} packets/s   {ratios}")
    return t_sdk / t_ours


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--packets", type=int, default=50, help="packets per frame")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="print a cProfile of our decoder (depth set)")
    args = ap.parse_args()

    ratios = []
    for kind in ("depth", "depth-cold", "touchline", "mini", "index", "mixed"):
        frames, instruments = build_frames(kind, args.frames, args.packets)
        ratio = run(kind, frames, instruments, args.repeat)
        if ratio is not None:
            ratios.append(ratio)
    if ratios:
        verdict = "meets" if min(ratios) >= 3 else "MISSES"
        which = "compiled" if KotakDecoder.compiled else "pure"
        print(f"lowest ratio ({which}, the default decoder) {min(ratios):.1f}x: {verdict} the 3x bar")

    if args.profile:
        frames, instruments = build_frames("depth", args.frames, args.packets)
        decoder = KotakDecoder(instruments, DIVIDERS)
        receive = datetime.fromtimestamp(SESSION, IST)
        profile = cProfile.Profile()
        profile.enable()
        for frame in frames:
            decoder.decode(frame, receive)
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(8)


if __name__ == "__main__":
    main()
