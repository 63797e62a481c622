"""websocket-client's ``WebSocket``, reading its socket in large chunks.

websocket-client reads a frame in exact pieces: the 2-byte header, the extended length, then the
payload 16 KB at a time, each piece one ``poll`` and one ``recv`` (``websocket._abnf.frame_buffer``),
and about thirty Python calls build, validate and unwrap the frame. A Kite connection carrying
3,000 instruments receives tens of 28 KB frames a second; measured in the daemon, that reading was
about a fifth of its CPU.

``FeedSocket`` changes only how bytes come off the socket. They are read with ``recv_into`` into
one reused buffer (64 KB, grown to the largest frame), through websocket-client's own ``recv`` so
that its rules for timeouts, SSL and a lost connection hold. ``_recv`` (the one function websocket-
client's frame reader reads through) serves its pieces from that buffer, and ``recv_data`` hands
out a data frame whole, one copy, when it is the plain kind: final, unmasked, no reserved bits,
binary (or text when UTF-8 is not validated), not inside a fragmented message. Every other frame
(ping, pong, close, fragments, anything invalid) goes through websocket-client's own
``recv_data`` from the same buffer, so pings are answered, closes sent back and protocol errors
raised exactly as before. The frame layout is RFC 6455 section 5.2
(https://www.rfc-editor.org/rfc/rfc6455#section-5.2); the handshake, sending and closing stay
websocket-client's. A timeout keeps a partial frame in the buffer: the next call goes on from it.

tests/test_ws.py feeds both readers the same random frame streams in random pieces and requires the
same results.
"""

from __future__ import annotations

import socket

import websocket
from websocket._socket import recv as _socket_recv  # websocket-client's read, with its timeout and SSL rules

#: Bytes the buffer starts with (it grows to the largest frame): a few frames' worth.
READ_SIZE = 1 << 16

_BINARY = 0x80 | websocket.ABNF.OPCODE_BINARY  # first header byte of a final binary frame, no reserved bits
_TEXT = 0x80 | websocket.ABNF.OPCODE_TEXT


class _Into:
    """The socket as websocket-client's ``recv`` reads it, reading into the free end of a buffer:
    websocket-client's own rules for timeouts, SSL and a lost connection apply unchanged."""

    __slots__ = ("sock", "view")

    def __init__(self, sock: socket.socket, view: memoryview) -> None:
        self.sock = sock
        self.view = view

    def recv(self, bufsize: int) -> memoryview:
        return self.view[: self.sock.recv_into(self.view, bufsize)]

    def gettimeout(self) -> float | None:
        return self.sock.gettimeout()

    def fileno(self) -> int:
        return self.sock.fileno()


class FeedSocket(websocket.WebSocket):
    """A ``websocket.WebSocket`` whose reads come from a buffer filled in large chunks."""

    def __init__(self, **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self._rbuf = bytearray(READ_SIZE)
        self._rview = memoryview(self._rbuf)
        self._rpos = 0  # the unread bytes are _rbuf[_rpos:_rend]
        self._rend = 0
        #: text frames may take the short way only when websocket-client would not validate them
        self._plain_text = _TEXT if self.frame_buffer.skip_utf8_validation else -1

    def _more(self, want: int) -> None:
        """Read at least one byte more into the buffer, with room for ``want`` more bytes."""
        sock = self.sock
        if sock is None:
            raise websocket.WebSocketConnectionClosedException("Connection is closed")
        pos, end = self._rpos, self._rend
        if pos:  # unread bytes to the front
            end -= pos
            self._rbuf[:end] = self._rview[pos : pos + end]
            self._rpos, self._rend = 0, end
        if len(self._rbuf) - end < want:
            grown = bytearray(max(2 * len(self._rbuf), end + want))
            grown[:end] = self._rview[:end]
            self._rview.release()
            self._rbuf, self._rview = grown, memoryview(grown)
        try:
            got = _socket_recv(_Into(sock, self._rview[end:]), len(self._rbuf) - end)  # type: ignore[arg-type]
        except websocket.WebSocketConnectionClosedException:  # as websocket.WebSocket._recv does
            if self.sock:
                self.sock.close()
            self.sock = None
            self.connected = False
            raise
        self._rend = end + len(got)

    def _recv(self, bufsize: int) -> bytes:
        """websocket-client's reads (``frame_buffer.recv_strict``), served from the buffer."""
        if self._rpos >= self._rend:
            self._more(1)
        pos = self._rpos
        end = self._rpos = min(pos + bufsize, self._rend)
        return bytes(self._rview[pos:end])

    def recv_data(self, control_frame: bool = False) -> tuple:
        """``websocket.WebSocket.recv_data``: (opcode, payload) of the next message."""
        fb = self.frame_buffer
        buf = self._rbuf
        # websocket-client's reader is between frames and no fragmented message is open
        while fb.header is None and not fb.recv_buffer and not self.cont_frame.recving_frames:
            pos = self._rpos
            avail = self._rend - pos
            want = 1
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
                if avail >= head:
                    if avail >= head + length:
                        self._rpos = end = pos + head + length
                        return first & 0x0F, bytes(self._rview[pos + head : end])
                    want = head + length - avail  # room for the whole frame
            # the frame is not all here yet: keep what is, read more (a timeout leaves it kept)
            self._more(want)
            buf = self._rbuf
        return super().recv_data(control_frame)
