"""websocket-client's ``WebSocket``, reading its socket in large chunks.

websocket-client reads a frame in exact pieces: the 2-byte header, the extended length, then the
payload 16 KB at a time, each piece one ``poll`` and one ``recv`` (``websocket._abnf.frame_buffer``),
and about thirty Python calls build, validate and unwrap the frame. A Kite connection carrying
3,000 instruments receives tens of 28 KB frames a second; measured in the daemon, that reading was
about a fifth of its CPU.

``FeedSocket`` changes only how bytes come off the socket: ``_recv`` (the one function websocket-
client's frame reader reads through) serves them from a buffer filled ``READ_SIZE`` bytes at a time,
and ``recv_data`` hands out a data frame whole when it is the plain kind: final, unmasked, no
reserved bits, binary (or text when UTF-8 is not validated), not inside a fragmented message, and
entirely in the buffer. Every other frame (ping, pong, close, fragments, anything invalid) goes
through websocket-client's own ``recv_data`` from the same buffer, so pings are answered, closes
sent back and protocol errors raised exactly as before. The frame layout is RFC 6455 section 5.2
(https://www.rfc-editor.org/rfc/rfc6455#section-5.2); the handshake, sending and closing stay
websocket-client's. A timeout keeps a partial frame in the buffer: the next call goes on from it.

tests/test_ws.py feeds both readers the same random frame streams in random pieces and requires the
same results.
"""

from __future__ import annotations

import websocket

#: Bytes asked of the socket per read: a few frames' worth, below malloc's mmap threshold.
READ_SIZE = 1 << 16

_BINARY = 0x80 | websocket.ABNF.OPCODE_BINARY  # first header byte of a final binary frame, no reserved bits
_TEXT = 0x80 | websocket.ABNF.OPCODE_TEXT


class FeedSocket(websocket.WebSocket):
    """A ``websocket.WebSocket`` whose reads come from a buffer filled in large chunks."""

    def __init__(self, **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self._rbuf = b""
        self._rpos = 0
        #: text frames may take the short way only when websocket-client would not validate them
        self._plain_text = _TEXT if self.frame_buffer.skip_utf8_validation else -1

    def _recv(self, bufsize: int) -> bytes:
        """websocket-client's reads (``frame_buffer.recv_strict``), served from the buffer."""
        buf = self._rbuf
        pos = self._rpos
        if pos >= len(buf):
            buf = self._rbuf = super()._recv(max(bufsize, READ_SIZE))
            pos = 0
        end = min(pos + bufsize, len(buf))
        self._rpos = end
        return buf[pos:end]

    def recv_data(self, control_frame: bool = False) -> tuple:
        """``websocket.WebSocket.recv_data``: (opcode, payload) of the next message."""
        fb = self.frame_buffer
        # websocket-client's reader is between frames and no fragmented message is open
        while fb.header is None and not fb.recv_buffer and not self.cont_frame.recving_frames:
            buf = self._rbuf
            pos = self._rpos
            avail = len(buf) - pos
            want = 0
            if avail >= 2:
                first = buf[pos]
                length = buf[pos + 1]
                if (first != _BINARY and first != self._plain_text) or length & 0x80:
                    break  # not the plain kind (or masked): websocket-client reads it
                head = 2
                if length == 126:
                    head = 4
                    if avail >= 4:
                        length = buf[pos + 2] << 8 | buf[pos + 3]
                elif length == 127:
                    head = 10
                    if avail >= 10:
                        length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                end = pos + head + length
                if avail >= head:
                    if end <= len(buf):
                        self._rpos = end
                        return first & 0x0F, buf[pos + head : end]
                    want = end - len(buf)  # a large frame: read the rest of it at once
            # the frame is not all here yet: keep what is, read more (a timeout leaves it kept)
            more = super()._recv(max(want, READ_SIZE))
            self._rbuf = buf[pos:] + more if pos < len(buf) else more
            self._rpos = 0
        return super().recv_data(control_frame)
