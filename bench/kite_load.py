"""Kite load generator for bench/end_to_end.py: a fake Kite server that streams full-mode ticks fast.

    .venv/bin/python -m bench.kite_load serve --instruments 9000 [--seed 1]
    .venv/bin/python -m bench.kite_load kiteticker --root ws://127.0.0.1:PORT --api-key K --access-token T --instruments 9000

``serve`` runs ``testkit.fakes.kite_server.KiteFakeServer`` for the REST calls (instruments dump,
profile) and the WebSocket handshake and subscribe/mode messages, and adds a fast send path: every
instrument's 184-byte full packet lives in a numpy record, the fields that change per tick (last
price, quantities, cumulative volume, buy/sell totals, high/low, last-trade and exchange time,
depth) are patched for a whole frame at once, and each frame carries hundreds of packets (as the
real feed does), each token at most once per frame. Exchange times are the wall clock's epoch
seconds at the moment the frame is built. At start it checks its packets byte for byte against the
fake's own ``encode_packet``.

It prints JSON lines on stdout (``{"event": "ready", "ws_url": ..., "api_url": ...}`` first) and
reads commands as JSON lines on stdin:

- ``{"cmd": "wait_subscribed", "tokens": N, "connections": C, "timeout": S}``: until C connections
  hold N tokens in full mode between them; answers ``subscribed``.
- ``{"cmd": "stream", "rate": R, "seconds": S, "log": PATH | null, "fps": F}``: R ticks/s spread
  over the live connections in proportion to their tokens, F frames/s per connection (raised when
  a frame would need a token twice), for S seconds; every tick sent is appended to PATH as a
  ``LOG`` record (instrument number, raw price, volume, exchange time) in the order sent.
  ``progress`` lines every second, then ``streamed`` (ticks sent, seconds, frames, ticks that met
  a closed connection, bytes still in the socket buffers, how far the sender fell behind schedule).
- ``{"cmd": "stats"}`` and ``{"cmd": "quit"}``.

``kiteticker`` runs pykiteconnect's ``KiteTicker`` (one per 3000 tokens, all on one Twisted
reactor, as a user of the official client would) in full mode, counts the ticks its ``on_ticks``
gets, and prints ``{"ticks": N, "t": epoch}`` every 0.1 s from a separate thread.
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, BinaryIO

import numpy as np

from testkit.fakes.kite_server import (
    DEFAULT_INSTRUMENTS,
    OP_BINARY,
    DepthLevel,
    FakeInstrument,
    KiteFakeServer,
    TapeTick,
    encode_packet,
)

TICK = 5  # 0.05 in paise: the price grid of every instrument here
MIN_PRICE = 1_000  # 10.00: keeps every depth price positive
MAX_PER_CONNECTION = 3000
_QTY = np.array([1, 1, 2, 5, 10, 25, 50, 100], dtype=np.int64)
_SLOTS = 16  # price-keyed book: the level at price p is slot (p // TICK) % 16 of the instrument's table

# One u16 length + 184-byte full packet, big-endian, packed (Kite Connect's WebSocket docs).
REC = np.dtype(
    [
        ("length", ">u2"), ("token", ">u4"), ("ltp", ">u4"), ("qty", ">u4"), ("avg", ">u4"), ("volume", ">u4"),
        ("buy", ">u4"), ("sell", ">u4"), ("open", ">u4"), ("high", ">u4"), ("low", ">u4"), ("close", ">u4"),
        ("ltt", ">u4"), ("oi", ">u4"), ("oi_high", ">u4"), ("oi_low", ">u4"), ("ts", ">u4"),
        ("depth", [("qty", ">u4"), ("price", ">u4"), ("orders", ">u2"), ("pad", ">u2")], (10,)),
    ]
)  # fmt: skip
assert REC.itemsize == 186

# What the feed sent, one record per tick, in the order sent (per connection).
LOG = np.dtype([("i", "<u4"), ("price", "<u4"), ("volume", "<u4"), ("ts", "<u4")])


def bench_instruments(n: int, first: int = 0) -> list[FakeInstrument]:
    """The watchlist: ``n`` NSE equities ``SYN00000`` … (from number ``first``: another shard's) with
    tokens of segment 1 (prices in paise)."""
    return [
        FakeInstrument(((100_000 + k) << 8) | 1, "NSE", f"SYN{k:05d}", name=f"SYNTHETIC {k}") for k in range(first, first + n)
    ]


class Book:
    """Per-instrument market state for ``instruments``; ``ticks`` moves a selection one tick on."""

    def __init__(self, instruments: Sequence[FakeInstrument], seed: int = 1) -> None:
        n = len(instruments)
        self.rng = np.random.default_rng(seed)
        rng = self.rng
        self.tokens = np.array([i.token for i in instruments], dtype=np.int64)
        self.index_of = {int(t): k for k, t in enumerate(self.tokens)}
        self.price = rng.integers(100, 8000, n).astype(np.int64) * 100
        self.close = self.price + rng.integers(-40, 41, n) * TICK
        self.open = self.price.copy()
        self.high = self.price.copy()
        self.low = self.price.copy()
        self.volume = rng.integers(1, 200, n).astype(np.int64) * 10  # the pre-open volume
        self.last_qty = self.volume.copy()
        self.ltt = np.full(n, int(time.time()) - 30, dtype=np.int64)
        self.book_qty = rng.integers(1, 500, (n, _SLOTS)).astype(np.int64)
        self.book_orders = rng.integers(1, 20, (n, _SLOTS)).astype(np.int64)
        template = np.zeros(n, dtype=REC)
        template["length"] = 184
        template["token"] = self.tokens
        self.template = template
        self._offsets = np.array([-1, -2, -3, -4, -5, 1, 2, 3, 4, 5], dtype=np.int64) * TICK

    def ticks(self, sel: np.ndarray, now: int) -> tuple[np.ndarray, np.ndarray]:
        """Move instruments ``sel`` (no repeats) one snapshot on at exchange time ``now``; returns their
        packets (``REC``) and log records (``LOG``). About 3 in 4 snapshots are trades (the price steps
        0-2 ticks, volume rises); the rest are quotes (price and volume unchanged, book moves)."""
        rng = self.rng
        k = len(sel)
        trade = rng.random(k) < 0.75
        step = rng.integers(-2, 3, k) * TICK
        price = np.maximum(self.price[sel] + np.where(trade, step, 0), MIN_PRICE)
        qty = _QTY[rng.integers(0, len(_QTY), k)]
        volume = self.volume[sel] + np.where(trade, qty, 0)
        last_qty = np.where(trade, qty, self.last_qty[sel])
        ltt = np.where(trade, now, self.ltt[sel])
        high = np.maximum(self.high[sel], price)
        low = np.minimum(self.low[sel], price)
        self.price[sel] = price
        self.volume[sel] = volume
        self.last_qty[sel] = last_qty
        self.ltt[sel] = ltt
        self.high[sel] = high
        self.low[sel] = low
        # 1-2 levels of the price-keyed book change per snapshot; the others keep their values
        for _ in range(2):
            slot = rng.integers(0, _SLOTS, k)
            self.book_qty[sel, slot] = rng.integers(1, 500, k)
            self.book_orders[sel, slot] = rng.integers(1, 20, k)

        rec = self.template[sel]
        rec["ltp"] = price
        rec["qty"] = last_qty
        rec["avg"] = (self.open[sel] + price) // 2
        rec["volume"] = volume
        levels = price[:, None] + self._offsets[None, :]
        slots = (levels // TICK) % _SLOTS
        depth_qty = np.take_along_axis(self.book_qty[sel], slots, axis=1)
        rec["buy"] = depth_qty[:, :5].sum(axis=1) * 40
        rec["sell"] = depth_qty[:, 5:].sum(axis=1) * 40
        rec["open"] = self.open[sel]
        rec["high"] = high
        rec["low"] = low
        rec["close"] = self.close[sel]
        rec["ltt"] = ltt
        rec["ts"] = now
        depth = rec["depth"]
        depth["qty"] = depth_qty
        depth["price"] = levels
        depth["orders"] = np.take_along_axis(self.book_orders[sel], slots, axis=1)

        log = np.empty(k, dtype=LOG)
        log["i"] = sel
        log["price"] = price
        log["volume"] = volume
        log["ts"] = now
        return rec, log


def frame_of(rec: np.ndarray) -> bytes:
    """A binary message: u16 packet count, then the (length-prefixed) packets."""
    return struct.pack(">H", len(rec)) + rec.tobytes()


def check_encoding(book: Book) -> None:
    """The fast packets equal the fake server's ``encode_packet`` for the same snapshots."""
    sel = np.arange(min(20, len(book.tokens)))
    rec, _ = book.ticks(sel, int(time.time()))
    for r in rec:
        paise = Decimal("0.01")
        levels = [DepthLevel(int(d["qty"]), int(d["price"]) * paise, int(d["orders"])) for d in r["depth"]]
        tick = TapeTick(
            int(r["token"]), int(r["ltp"]) * paise, int(r["qty"]), int(r["volume"]), int(r["ts"]),
            oi=0, last_trade_ts=int(r["ltt"]), average_price=int(r["avg"]) * paise,
            total_buy_quantity=int(r["buy"]), total_sell_quantity=int(r["sell"]), open=int(r["open"]) * paise,
            high=int(r["high"]) * paise, low=int(r["low"]) * paise, close=int(r["close"]) * paise,
            bids=tuple(levels[:5]), asks=tuple(levels[5:]),
        )  # fmt: skip
        expected = struct.pack(">H", 184) + encode_packet(tick, "full")
        if r.tobytes() != expected:
            raise AssertionError(f"fast packet for token {int(r['token'])} differs from encode_packet")


class LoadServer(KiteFakeServer):
    """The fake Kite server plus a send path for pre-built frames (written on the server's loop)."""

    def __init__(self, instruments: Sequence[FakeInstrument]) -> None:
        super().__init__(instruments=[*instruments, *DEFAULT_INSTRUMENTS], heartbeat_interval=1.0)
        self.dropped = 0  # ticks whose connection had closed when their frame was due

    def streams(self) -> list[tuple[Any, list[int]]]:
        """(connection, tokens it holds in full mode) for every live connection."""
        with self._lock:
            return [(c, [t for t, m in c.subscribed.items() if m == "full"]) for c in self._conns.values()]

    def post(self, conn: Any, frame: bytes) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._write, conn, frame)

    def _write(self, conn: Any, frame: bytes) -> None:
        if conn.closed or conn.writer.is_closing():
            self.dropped += frame[0] << 8 | frame[1]
            return
        conn.send(OP_BINARY, frame)

    def flush(self) -> None:
        """Until every frame posted so far has been handed to its socket."""
        self._call(lambda: None)

    def buffered(self) -> int:
        """Bytes written to the sockets that the kernel has not taken yet (the client is behind)."""
        return self._call(lambda: sum(c.writer.transport.get_write_buffer_size() for c in self._conns.values()))


def _emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def stream(
    server: LoadServer, book: Book, rate: float, seconds: float, fps: float, log: BinaryIO | None,
    progress: Callable[..., None] = _emit,
) -> dict[str, Any]:  # fmt: skip
    """Send ``rate`` ticks/s for ``seconds`` over the live connections; returns the ``streamed`` fields."""
    streams = [(conn, np.array([book.index_of[t] for t in tokens if t in book.index_of], dtype=np.int64))
               for conn, tokens in server.streams()]  # fmt: skip
    streams = [(conn, idx) for conn, idx in streams if len(idx)]
    if not streams:
        raise RuntimeError("no connection holds any of the bench's tokens in full mode")
    total = sum(len(idx) for _, idx in streams)
    for _, idx in streams:
        book.rng.shuffle(idx)
    shares = [rate * len(idx) / total for _, idx in streams]
    fps = max(fps, max(math.ceil(share / len(idx)) for share, (_, idx) in zip(shares, streams)))
    slots = max(1, round(seconds * fps))
    cursors = [0] * len(streams)
    sent = [0] * len(streams)
    frames = 0
    max_behind = 0.0
    dropped_before = server.dropped
    start = time.monotonic()
    next_report = start + 1.0
    for j in range(slots):
        due_at = start + j / fps
        wait = due_at - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        else:
            max_behind = max(max_behind, -wait)
        now = int(time.time())
        for c, (conn, idx) in enumerate(streams):
            want = round(shares[c] * (j + 1) / fps) - sent[c]
            n = len(idx)
            while want > 0:
                take = min(want, n)
                pos = cursors[c]
                sel = idx[pos : pos + take] if pos + take <= n else np.concatenate((idx[pos:], idx[: pos + take - n]))
                cursors[c] = (pos + take) % n
                rec, records = book.ticks(sel, now)
                server.post(conn, frame_of(rec))
                if log is not None:
                    log.write(records.tobytes())
                sent[c] += take
                want -= take
                frames += 1
        if time.monotonic() >= next_report:
            next_report += 1.0
            progress("progress", sent=sum(sent), elapsed=round(time.monotonic() - start, 3), behind=round(max_behind, 3))
    server.flush()
    elapsed = max(seconds, time.monotonic() - start)
    if log is not None:
        log.flush()
    return {
        "sent": sum(sent),
        "seconds": round(elapsed, 3),
        "frames": frames,
        "fps": fps,
        "dropped": server.dropped - dropped_before,
        "buffered": server.buffered(),
        "behind": round(max_behind, 3),
    }


def serve(args: argparse.Namespace) -> int:
    instruments = bench_instruments(args.instruments, args.first)
    book = Book(instruments, seed=args.seed)
    check_encoding(Book(instruments[:20], seed=args.seed))
    with LoadServer(instruments) as server:
        _emit(
            "ready", ws_url=server.ws_url, api_url=server.api_url, api_key=server.api_key, api_secret=server.api_secret,
            access_token=server.access_token, instruments=len(instruments),
        )  # fmt: skip
        for line in sys.stdin:
            if not line.strip():
                continue
            cmd = json.loads(line)
            what = cmd.get("cmd")
            if what == "quit":
                break
            if what == "stats":
                _emit("stats", handshakes=server.handshakes, connections=len(server.connections), dropped=server.dropped,
                      buffered=server.buffered())  # fmt: skip
            elif what == "wait_subscribed":
                deadline = time.monotonic() + float(cmd.get("timeout", 60))
                while True:
                    streams = server.streams()
                    held = sum(len(tokens) for _, tokens in streams)
                    if held >= cmd["tokens"] and len(streams) == cmd["connections"]:
                        _emit("subscribed", tokens=held, connections=len(streams), handshakes=server.handshakes)
                        break
                    if time.monotonic() > deadline:
                        where = f"on {len(streams)} connections"
                        _emit("error", message=f"{held} of {cmd['tokens']} tokens subscribed in full mode {where}")
                        break
                    time.sleep(0.1)
            elif what == "stream":
                path = cmd.get("log")
                log = open(path, "ab") if path else None  # noqa: SIM115 - closed below
                try:
                    result = stream(server, book, float(cmd["rate"]), float(cmd["seconds"]), float(cmd.get("fps", 20)), log)
                finally:
                    if log is not None:
                        log.close()
                _emit("streamed", **result)
            else:
                _emit("error", message=f"unknown command {what!r}")
    return 0


def kiteticker(args: argparse.Namespace) -> int:
    from kiteconnect import KiteTicker
    from twisted.internet import reactor

    tokens = [i.token for i in bench_instruments(args.instruments)]
    count = [0]
    tickers = []
    for start in range(0, len(tokens), MAX_PER_CONNECTION):
        chunk = tokens[start : start + MAX_PER_CONNECTION]
        kws = KiteTicker(args.api_key, args.access_token, root=args.root, reconnect=False)

        def on_connect(ws: KiteTicker, response: Any, chunk: list[int] = chunk) -> None:
            ws.subscribe(chunk)
            ws.set_mode(ws.MODE_FULL, chunk)

        def on_ticks(ws: KiteTicker, ticks: list[dict[str, Any]]) -> None:
            count[0] += len(ticks)

        def on_close(ws: KiteTicker, code: int, reason: Any) -> None:
            sys.stderr.write(f"kiteticker: connection closed: {code} {reason}\n")

        kws.on_connect = on_connect
        kws.on_ticks = on_ticks
        kws.on_close = on_close
        tickers.append(kws)

    def report() -> None:
        while True:
            sys.stdout.write(json.dumps({"ticks": count[0], "t": time.time()}) + "\n")
            sys.stdout.flush()
            time.sleep(0.1)

    threading.Thread(target=report, name="report", daemon=True).start()
    for kws in tickers:
        reactor.callWhenRunning(kws.connect)
    reactor.run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("serve", help="the fake Kite server with the fast send path")
    s.add_argument("--instruments", type=int, default=9000)
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--first", type=int, default=0, help="number of the first instrument (SYN<first>...): a shard's own")
    k = sub.add_parser("kiteticker", help="pykiteconnect's KiteTicker counting ticks")
    k.add_argument("--root", required=True)
    k.add_argument("--api-key", required=True)
    k.add_argument("--access-token", required=True)
    k.add_argument("--instruments", type=int, default=9000)
    args = ap.parse_args(argv)
    return serve(args) if args.what == "serve" else kiteticker(args)


if __name__ == "__main__":
    raise SystemExit(main())
