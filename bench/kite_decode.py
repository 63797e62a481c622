"""Kite binary decode: our KiteDecoder, compiled and pure Python, against pykiteconnect's KiteTicker._parse_binary.

    .venv/bin/python -m bench.kite_decode [--frames 200] [--packets 50] [--repeat 7] [--profile]

All decode the SAME full-mode frames (184-byte packets with 5+5 depth) in one run, in interleaved
rounds (each decoder once per round, so a slow spell of the machine hits them all); prints the
median of ``--repeat`` rounds as packets per CPU second of this thread for each (on a shared
machine the wall clock also counts the time spent waiting for a core), and the ratios to
pykiteconnect. Two data sets:

- ``realistic``: each instrument's snapshots evolve like a live book (the last price walks on
  its tick grid, cumulative volume rises, 1-4 of the 10 depth levels change per snapshot);
- ``cold``: every depth level of every packet is new, the worst case for our value caches.

Two settings of our decoder: ``depth=False``, the daemon's (full ticks carry no depth; the candles
never read it), and ``depth=True`` with every tick's bids and asks read (what a consumer of depth
pays, like pykiteconnect, which always builds its depth dicts; the levels are built on that read).
``compiled`` is the default ``KiteDecoder`` when brokers/kite/_speedups.pyx is built
(scripts/build_ext.py), ``pure`` the reference ``PythonKiteDecoder``. The bar (40x) is on the
compiled decoder with ``depth=False``.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import statistics
import struct
import time
from collections.abc import Callable
from datetime import datetime

from kiteconnect import KiteTicker

from brokers.kite.protocol import KiteDecoder, PythonKiteDecoder
from core.ist import IST
from core.ticks import Instrument

BAR = 40

SESSION = 1_795_491_900  # 2026-11-24 09:15 IST
_HEAD = struct.Struct(">16I")
_LEVEL = struct.Struct(">IIHxx")


def _packet(token: int, ltp: int, qty: int, volume: int, oi: int, ts: int, bids: list, asks: list) -> bytes:
    head = _HEAD.pack(
        token, ltp, qty, ltp - 3, volume, 250_000, 360_000, ltp - 150, ltp + 200, ltp - 400, ltp - 80, ts, oi, oi + 10, oi - 10, ts
    )
    return head + b"".join(_LEVEL.pack(q, p, o) for p, q, o in bids + asks)


def build_frames(frames: int, packets: int, cold: bool, seed: int = 7) -> tuple[list[bytes], dict[int, Instrument]]:
    """``frames`` frames of ``packets`` full packets; instrument i appears once per frame.

    Each instrument keeps a price-keyed book (tick 0.05): per snapshot the last price moves by at
    most a tick, 1-4 of the ten visible levels change quantity and orders, and the levels that did
    not change keep their exact (price, quantity, orders) as in a live book.
    """
    rng = random.Random(seed)
    tokens = [(100_000 + i) << 8 | 1 for i in range(packets)]  # NSE equities
    ltps = {t: rng.randrange(10_000, 500_000, 5) for t in tokens}  # 100.00 .. 5000.00
    books: dict[int, dict[int, tuple[int, int]]] = {t: {} for t in tokens}
    volumes = dict.fromkeys(tokens, 0)
    ois = {t: rng.randint(0, 5_000_000) for t in tokens}
    out = []
    for f in range(frames):
        ts = SESSION + f // 4  # several frames a second: timestamps repeat within and across frames
        body = [struct.pack(">H", packets)]
        for t in tokens:
            ltp = ltps[t] = max(500, ltps[t] + 5 * rng.choice((-1, 0, 0, 0, 1)))
            qty = rng.randint(1, 500)
            volumes[t] += qty
            book = books[t]
            prices = [ltp - 5 * (i + 1) for i in range(5)] + [ltp + 5 * (i + 1) for i in range(5)]
            changed = set(rng.sample(range(10), rng.randint(1, 4)))
            for i, p in enumerate(prices):
                if cold or i in changed or p not in book:
                    book[p] = (rng.randint(1, 5000) * 1000 + f if cold else rng.randint(1, 5000), rng.randint(1, 30))
            levels = [(p, *book[p]) for p in prices]
            body.append(struct.pack(">H", 184) + _packet(t, ltp, qty, volumes[t], ois[t], ts, levels[:5], levels[5:]))
        out.append(b"".join(body))
    instruments = {t: Instrument("NSE", f"SYM{i:03d}", t) for i, t in enumerate(tokens)}
    return out, instruments


def decode_with(decoder_class: type, instruments: dict[int, Instrument], depth: bool) -> Callable[[bytes], list]:
    """One frame's decode as the benchmark times it; with ``depth``, every tick's depth is also read."""
    # A fresh decoder per round would measure cold caches only; the live decoder lives for the
    # whole day, so keep one and let the caches work as they would.
    decoder = decoder_class(instruments, depth=depth)
    decode = decoder.decode
    receive = datetime.fromtimestamp(SESSION, IST)
    if not depth:
        return lambda frame: decode(frame, receive)

    def with_depth(frame: bytes) -> list:
        ticks = decode(frame, receive)
        for t in ticks:
            t.depth.bids  # noqa: B018 - the read builds the levels
        return ticks

    return with_depth


def rounds(repeat: int, contenders: dict[str, Callable[[bytes], list]], frames: list[bytes]) -> dict[str, float]:
    """Median CPU seconds per contender over ``repeat`` rounds, each contender once per round."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeat):
        for name, fn in contenders.items():
            t0 = time.thread_time()
            for frame in frames:
                fn(frame)
            times[name].append(time.thread_time() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def run(name: str, frames: list[bytes], instruments: dict[int, Instrument], repeat: int) -> float | None:
    """Prints one data set's line; returns the compiled ``depth=False`` ratio (None when not built)."""
    parse_binary = KiteTicker.__new__(KiteTicker)._parse_binary  # the parser needs no connection state
    total = sum(struct.unpack_from(">H", f)[0] for f in frames)
    classes = {"pure": PythonKiteDecoder}
    if KiteDecoder.compiled:
        classes = {"compiled": KiteDecoder, **classes}
    contenders: dict[str, Callable[[bytes], list]] = {}
    for depth in (False, True):
        for kind, cls in classes.items():
            contenders[f"{kind}{'+depth' if depth else ''}"] = decode_with(cls, instruments, depth)
    contenders["pykiteconnect"] = parse_binary
    for fn in contenders.values():
        assert len(fn(frames[0])) == len(parse_binary(frames[0]))
    median = rounds(repeat, contenders, frames)
    pyk = median.pop("pykiteconnect")
    cells = "  ".join(f"{n} {total / t:>10,.0f}/s {pyk / t:5.1f}x" for n, t in median.items())
    print(f"{name:9s} packets={total:,}  pykiteconnect {total / pyk:>8,.0f}/s  {cells}")
    return pyk / median["compiled"] if "compiled" in median else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--packets", type=int, default=50, help="full-mode packets per frame")
    ap.add_argument("--repeat", type=int, default=7, help="rounds; the median of each is printed")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of the default decoder (realistic set)")
    args = ap.parse_args()

    if not KiteDecoder.compiled:
        print("compiled decoder not in use (not built, built from older sources, or MARKETFEED_PURE_PYTHON set)")
    ratios = []
    for name, cold in (("realistic", False), ("cold", True)):
        frames, instruments = build_frames(args.frames, args.packets, cold)
        ratios.append(run(name, frames, instruments, args.repeat))
    if None not in ratios:
        lowest = min(r for r in ratios if r is not None)
        print(f"lowest compiled depth=False ratio {lowest:.1f}x: {'meets' if lowest >= BAR else 'does NOT meet'} the {BAR}x bar")

    if args.profile:
        frames, instruments = build_frames(args.frames, args.packets, False)
        decoder = KiteDecoder(instruments, depth=False)
        receive = datetime.fromtimestamp(SESSION, IST)
        profile = cProfile.Profile()
        profile.enable()
        for frame in frames:
            decoder.decode(frame, receive)
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(8)


if __name__ == "__main__":
    main()
