"""``brokers.ws.FeedSocket`` reads exactly what websocket-client's ``WebSocket`` reads.

Both readers get the same random stream of server frames (RFC 6455 section 5.2: data frames,
fragmented messages with control frames between the fragments, pings, pongs, closes, masked frames,
reserved bits, unknown opcodes, non-minimal lengths), written into a socket pair in the same random
pieces. After each piece each reader is read until it times out; the messages, the timeouts, the
errors and the pongs sent back must be the same, piece by piece.
"""

from __future__ import annotations

import os
import socket
import struct

import pytest
import websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brokers.ws import READ_SIZE, FeedSocket

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
TIMEOUT_S = 0.002
PIECE_MAX = 100_000


def frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bytes | None = None, wide: int = 0) -> bytes:
    """One frame as a server (or, masked, a misbehaving one) writes it; ``wide`` forces the 16-bit
    (1) or 64-bit (2) length form for a short payload."""
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    n = len(payload)
    m = 0x80 if mask is not None else 0
    if n < 126 and not wide:
        head += bytes([m | n])
    elif n < 65536 and wide != 2:
        head += bytes([m | 126]) + struct.pack(">H", n)
    else:
        head += bytes([m | 127]) + struct.pack(">Q", n)
    if mask is not None:
        head += mask
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + payload


payloads = st.one_of(
    st.binary(max_size=40),
    st.binary(min_size=120, max_size=400),
    st.sampled_from([b"", "h\u00e9llo".encode(), b"\xff\xfe", os.urandom(70_000)]),
)
control_payloads = st.one_of(st.binary(max_size=20), st.sampled_from([b"\x03\xe8", b"\x03\xe8bye", b"\x0f\xa0x", b"\x01"]))


@st.composite
def plain(draw: st.DrawFn) -> bytes:
    return frame(draw(st.sampled_from([BINARY, BINARY, TEXT])), draw(payloads), wide=draw(st.sampled_from([0, 0, 0, 1, 2])))


@st.composite
def control(draw: st.DrawFn) -> bytes:
    opcode = draw(st.sampled_from([PING, PONG, PING]))
    return frame(opcode, draw(st.binary(max_size=20)))


@st.composite
def fragmented(draw: st.DrawFn) -> bytes:
    parts = draw(st.lists(payloads, min_size=2, max_size=4))
    out = frame(draw(st.sampled_from([BINARY, TEXT])), parts[0], fin=False)
    for i, part in enumerate(parts[1:], 1):
        if draw(st.booleans()):
            out += draw(control())  # control frames may come between fragments
        out += frame(CONT, part, fin=i == len(parts) - 1)
    return out


@st.composite
def odd(draw: st.DrawFn) -> bytes:
    """Frames websocket-client refuses or treats specially."""
    kind = draw(st.integers(0, 7))
    data = draw(st.binary(max_size=30))
    if kind == 0:
        return frame(BINARY, data, mask=draw(st.binary(min_size=4, max_size=4)))
    if kind == 1:
        return frame(BINARY, data, rsv=draw(st.integers(1, 7)))
    if kind == 2:
        return frame(draw(st.sampled_from([0x3, 0x7, 0xB, 0xF])), data)
    if kind == 3:
        return frame(CONT, data)  # no message to continue
    if kind == 4:
        return frame(PING, data + bytes(130))  # too long for a control frame
    if kind == 5:
        return frame(PING, data, fin=False)
    if kind == 6:  # a new message while a fragmented one is open
        return frame(BINARY, data, fin=False) + frame(draw(st.sampled_from([BINARY, TEXT])), data)
    return frame(CLOSE, draw(control_payloads))


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    frames = draw(st.lists(st.one_of(plain(), plain(), plain(), control(), fragmented(), odd()), min_size=1, max_size=8))
    data = b"".join(frames)
    if draw(st.booleans()):
        data += frame(CLOSE, b"\x03\xe8")
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    if draw(st.integers(0, 3)) == 0:  # a piece that splits headers byte by byte
        start = draw(st.integers(0, max(0, len(data) - 12)))
        cuts = sorted(set(cuts + list(range(start, min(len(data), start + 12)))))
    # no piece larger than the socket pair's buffer (the readers empty it between pieces)
    cuts = sorted(set(cuts + list(range(PIECE_MAX, len(data), PIECE_MAX))))
    return data, cuts


def run(cls: type[websocket.WebSocket], data: bytes, cuts: list[int], utf8: bool, eof: bool) -> list:
    """What ``cls`` reads of ``data`` written in the pieces ``cuts`` marks, and the bytes it sent back."""
    ours, theirs = socket.socketpair()
    ws = cls(skip_utf8_validation=not utf8)
    ws.sock = ours
    ws.connected = True
    ours.settimeout(TIMEOUT_S)
    theirs.setblocking(False)
    out: list = []
    bounds = [0, *cuts, len(data)]
    try:
        for i in range(len(bounds) - 1):
            theirs.sendall(data[bounds[i] : bounds[i + 1]])
            if eof and i == len(bounds) - 2:
                theirs.shutdown(socket.SHUT_WR)
            while True:
                try:
                    opcode, payload = ws.recv_data(control_frame=True)
                except websocket.WebSocketTimeoutException:
                    out.append("timeout")
                    break
                except Exception as exc:  # noqa: BLE001 - the error itself is what is compared
                    out.append((type(exc).__name__, str(exc)))
                    return out + [sent(theirs)]
                out.append((opcode, bytes(payload)))
                if opcode == CLOSE:
                    return out + [sent(theirs)]
        return out + [sent(theirs)]
    finally:
        ours.close()
        theirs.close()


def sent(sock: socket.socket) -> list[bytes]:
    """The frames the reader sent back (pongs, close), unmasked: their masks are random."""
    raw = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        raw += chunk
    frames = []
    while raw:
        n = raw[1] & 0x7F
        head = 2
        if n == 126:
            n, head = struct.unpack(">H", raw[2:4])[0], 4
        key = raw[head : head + 4]
        body = raw[head + 4 : head + 4 + n]
        frames.append(bytes([raw[0]]) + bytes(b ^ key[i % 4] for i, b in enumerate(body)))
        raw = raw[head + 4 + n :]
    return frames


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(streams(), st.booleans(), st.booleans())
def test_feed_socket_reads_what_websocket_client_reads(stream: tuple[bytes, list[int]], utf8: bool, eof: bool) -> None:
    data, cuts = stream
    assert run(FeedSocket, data, cuts, utf8, eof) == run(websocket.WebSocket, data, cuts, utf8, eof)


def test_a_frame_larger_than_a_read_arrives_whole() -> None:
    payload = os.urandom(3 * READ_SIZE + 17)
    data = frame(BINARY, b"first") + frame(BINARY, payload) + frame(BINARY, b"last")
    got = run(FeedSocket, data, [5, READ_SIZE, 2 * READ_SIZE + 3], utf8=False, eof=False)
    messages = [m for m in got[:-1] if m != "timeout"]
    assert messages == [(BINARY, b"first"), (BINARY, payload), (BINARY, b"last")]


def test_plain_frames_already_read_take_one_socket_read() -> None:
    """Many frames that arrived together cost one read of the socket, not four per frame."""
    reads = []

    class Counting(socket.socket):
        def recv_into(self, *args: object) -> int:
            reads.append(args)
            return super().recv_into(*args)  # type: ignore[arg-type]

    a, theirs = socket.socketpair()
    ours = Counting(fileno=a.detach())
    ws = FeedSocket(skip_utf8_validation=True)
    ws.sock = ours
    ws.connected = True
    ours.settimeout(1.0)
    frames = [os.urandom(2000) for _ in range(20)]
    theirs.sendall(b"".join(frame(BINARY, f) for f in frames))
    try:
        got = [ws.recv_data(control_frame=True) for _ in frames]
    finally:
        ours.close()
        theirs.close()
    assert got == [(BINARY, f) for f in frames]
    assert len(reads) == 1, reads


@pytest.mark.parametrize("cut", range(1, 12))
def test_a_timeout_inside_a_frame_keeps_what_came(cut: int) -> None:
    data = frame(BINARY, b"x" * 300) + frame(TEXT, b"ok")
    got = run(FeedSocket, data, [cut], utf8=False, eof=False)
    assert got[:-1] == ["timeout", (BINARY, b"x" * 300), (TEXT, b"ok"), "timeout"]
