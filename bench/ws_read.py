"""Reading WebSocket frames: ``brokers.ws.FeedSocket`` against websocket-client's ``WebSocket``.

    .venv/bin/python -m bench.ws_read [--frames 1000] [--repeat 3]

A writer thread sends ``--frames`` binary frames into one end of a socket pair as fast as the
reader takes them; the reader calls ``recv_data(control_frame=True)`` on the other end, as the
feed's connection threads do. Printed: the reader thread's CPU per frame (``time.thread_time``),
the two readers alternating, for a 28 KB frame (150 full Kite packets: a connection of 3,000
instruments at 20 frames a second) and a 280 KB one (1,500 packets: 2 frames a second).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import struct
import threading
import time

import websocket

from brokers.ws import FeedSocket

SIZES = (2 + 150 * 186, 2 + 1500 * 186)


def frame(payload: bytes) -> bytes:
    """One final, unmasked binary frame as a server sends it."""
    n = len(payload)
    if n < 126:
        head = bytes((0x82, n))
    elif n < 65536:
        head = bytes((0x82, 126)) + struct.pack(">H", n)
    else:
        head = bytes((0x82, 127)) + struct.pack(">Q", n)
    return head + payload


def cpu_per_frame(cls: type[websocket.WebSocket], frames: int, size: int) -> float:
    """Microseconds of the reading thread's CPU per frame."""
    ours, theirs = socket.socketpair()
    ws = cls(skip_utf8_validation=True)
    ws.sock = ours
    ws.connected = True
    ours.settimeout(1.0)
    data = frame(os.urandom(size))

    def write() -> None:
        for _ in range(frames):
            theirs.sendall(data)

    writer = threading.Thread(target=write)
    writer.start()
    start = time.thread_time()
    for _ in range(frames):
        ws.recv_data(control_frame=True)
    used = time.thread_time() - start
    writer.join()
    ours.close()
    theirs.close()
    return used / frames * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    for size in SIZES:
        runs: dict[str, list[float]] = {"websocket-client": [], "FeedSocket": []}
        for _ in range(a.repeat):
            runs["websocket-client"].append(cpu_per_frame(websocket.WebSocket, a.frames, size))
            runs["FeedSocket"].append(cpu_per_frame(FeedSocket, a.frames, size))
        theirs, ours = (statistics.median(v) for v in runs.values())
        print(
            f"{size:>7,} B frames: websocket-client {theirs:6.1f} us, FeedSocket {ours:6.1f} us of CPU a frame "
            f"(medians of {a.repeat}): {theirs / ours:.1f}x"
        )


if __name__ == "__main__":
    main()
