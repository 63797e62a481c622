"""Kite Connect market-data feed: websocket-client threads, sharding, reconnect and stall watchdog.

One thread per connection ("shard", ``kite-ws-1`` …). Each owns a blocking ``websocket.WebSocket``
and its own ``KiteDecoder``, decodes every binary frame in that thread and hands the ticks of the
frame to the ``on_ticks`` callback. Kite allows 3000 instruments per connection and 3 connections
per API key (https://kite.trade/docs/connect/v3/websocket/); instruments fill connection 1, then 2,
then 3.

Reliability:

- any lost connection is retried forever with exponential backoff and full jitter, and every
  instrument is resubscribed in the configured mode;
- a socket that delivers no frame (tick or the server's ~1 s heartbeat) for ``stall_timeout``
  seconds is treated as dead: pykiteconnect misses exactly this (issues #229, #237);
- HTTP 403 at the handshake means the access token is invalid or expired: retrying cannot help,
  so the shard stops, ``auth_failed`` says what to do and the broker reports itself unhealthy;
- HTTP 429 (too many connections for the API key) waits ``backoff_max`` before the next try.

The access token is in the URL the server needs, so it never appears in ``repr`` or in logs (any
error text is scrubbed before it is logged or stored).
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from urllib.parse import quote

import websocket

from brokers.base import BaseBroker, BrokerError, ConnectionState, FeedStats, lookup_symbols
from brokers.kite import protocol
from brokers.kite.protocol import DecodeStats, KiteDecoder, KiteFrameSource
from core.ist import IST
from core.ticks import FrameBatch, FrameSource, Instrument, TickBatchCallback, TickData

log = logging.getLogger(__name__)

AUTH_FAILED_MESSAGE = (
    "Kite rejected the access token (HTTP 403): it is invalid or expired — log in again (python main.py --broker kite --login)"
)

# Tokens per subscribe/mode message: keeps each request small; the server has no documented cap.
_BATCH = 1000
# A session that lasted this long counts as healthy: the backoff starts again from its beginning.
_STABLE_SESSION_S = 10.0
# How often an idle socket thread looks at the stall watchdog and the stop flag.
_POLL_S = 0.25
# Log every n-th exception of the on_ticks callback after the first (a broken sink must not flood).
_CALLBACK_LOG_EVERY = 1000
# How long after a reconnect copies of ticks without volume are looked for (a resubscription's snapshot).
_DEDUPE_S = 2.0

_OP_BINARY = websocket.ABNF.OPCODE_BINARY
_OP_TEXT = websocket.ABNF.OPCODE_TEXT
_OP_CLOSE = websocket.ABNF.OPCODE_CLOSE


def _plain_identity(tick: TickData) -> tuple:
    """What makes two ticks without volume the same update."""
    return (tick.token, tick.exchange_ts, tick.last_price)


class _Stop(Exception):
    """The broker is shutting down: leave the shard loop."""


class _AuthRejected(Exception):
    """HTTP 403 at the handshake."""


class _Stalled(Exception):
    """No frame for stall_timeout seconds."""


class _Shard:
    """One WebSocket connection and the instruments it carries."""

    def __init__(self, broker: KiteBroker, shard_id: int) -> None:
        self.broker = broker
        self.id = shard_id
        self.instruments: dict[int, Instrument] = {}  # token -> instrument
        self.decoder = KiteDecoder({}, timed_only=broker.mode == "full", depth=broker.depth)
        self.lock = threading.Lock()  # guards instruments/ws/connected against subscribe() calls
        self.ws: websocket.WebSocket | None = None
        self.connected = False
        self.thread: threading.Thread | None = None
        self.reconnects = 0
        self.last_frame = 0.0  # monotonic time of the last frame; 0 before the first
        self.last_error: str | None = None
        self.callback_errors = 0
        # for a moment after a reconnect: what no tick without volume may repeat, and until when
        self._dedupe: tuple[set[tuple], float] | None = None

    # ---------------------------------------------------------------- subscription state

    def add(self, instruments: Iterable[Instrument]) -> None:
        with self.lock:
            new = [i for i in instruments if i.token not in self.instruments]
            if not new:
                return
            for inst in new:
                self.instruments[inst.token] = inst
            self.decoder.set_instruments(dict(self.instruments))
            if self.connected:
                self._send_subscription([i.token for i in new])

    def remove(self, tokens: Iterable[int]) -> None:
        with self.lock:
            gone = [t for t in tokens if self.instruments.pop(t, None) is not None]
            if not gone:
                return
            self.decoder.set_instruments(dict(self.instruments))
            if self.connected and self.ws is not None:
                try:
                    for i in range(0, len(gone), _BATCH):
                        self.ws.send(protocol.unsubscribe(gone[i : i + _BATCH]))
                except (OSError, websocket.WebSocketException) as exc:
                    # The socket is going away; the next session subscribes without these tokens.
                    log.debug("kite connection %d: unsubscribe not sent: %s", self.id, self.broker._scrub(exc))

    def _send_subscription(self, tokens: Sequence[int]) -> None:
        """subscribe, then mode (a mode sent first has no effect); lock held, socket open."""
        ws = self.ws
        if ws is None or not tokens:
            return
        try:
            for i in range(0, len(tokens), _BATCH):
                ws.send(protocol.subscribe(tokens[i : i + _BATCH]))
            for i in range(0, len(tokens), _BATCH):
                ws.send(protocol.set_mode(self.broker.mode, tokens[i : i + _BATCH]))
        except (OSError, websocket.WebSocketException) as exc:
            # A send that fails here means the socket died; the reader notices and reconnects,
            # and the new session resubscribes everything.
            log.debug("kite connection %d: subscribe not sent: %s", self.id, self.broker._scrub(exc))

    # ---------------------------------------------------------------- thread

    def start(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            return
        self.thread = threading.Thread(target=self._run, name=f"kite-ws-{self.id}", daemon=True)
        self.thread.start()

    def wake(self) -> None:
        """Unblock the thread's socket (used by disconnect)."""
        ws = self.ws
        if ws is None:
            return
        sock = ws.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _run(self) -> None:
        broker = self.broker
        stop = broker._stop
        failures = 0  # consecutive short-lived or failed sessions
        opened_once = False
        while not stop.is_set():
            reason: str
            delay: float | None = None
            started = time.monotonic()
            try:
                self._session(opened_once)
                reason = "server closed the connection"
            except _Stop:
                break
            except _AuthRejected as exc:
                broker._auth_rejected(self.id)
                if not broker._wait_for_new_token(str(exc)):
                    break
                failures = 0
                reason = "access token replaced after a rejection"
                delay = 0.0
            except websocket.WebSocketBadStatusException as exc:
                if exc.status_code == 429:
                    reason = "HTTP 429: too many connections for this API key"
                    delay = broker.backoff_max
                else:
                    reason = f"handshake refused: HTTP {exc.status_code}"
            except _Stalled as exc:
                reason = str(exc)
            except (OSError, websocket.WebSocketException, ValueError) as exc:  # ValueError: a URL websocket-client refuses
                reason = broker._scrub(f"{type(exc).__name__}: {exc}")
            finally:
                with self.lock:
                    was_open = self.connected
                    self.connected = False
                    ws, self.ws = self.ws, None
                if ws is not None:
                    with contextlib.suppress(Exception):  # closing a dead socket; nothing to report
                        ws.shutdown()
            if was_open:
                opened_once = True
            if stop.is_set():
                break
            if was_open and time.monotonic() - started >= _STABLE_SESSION_S:
                failures = 0
            self.last_error = reason
            if delay is None:
                delay = random.uniform(0.0, min(broker.backoff_max, broker.backoff_initial * 2**failures))
            failures += 1
            log.warning(
                "kite connection %d: %s; reconnecting in %.2f s (attempt %d)", self.id, reason, delay, failures,
                extra={"event": "reconnecting", "connection": self.id, "reason": reason, "attempt": failures},
            )  # fmt: skip
            if stop.wait(delay):
                break
        with self.lock:
            self.connected = False

    def _session(self, reconnect: bool) -> None:
        """One connection: handshake, subscribe everything, read until it ends (by raising)."""
        broker = self.broker
        ws = websocket.WebSocket(skip_utf8_validation=True)  # bad text is counted by parse_text
        with self.lock:
            if broker._stop.is_set():
                raise _Stop
            self.ws = ws
        try:
            url_token = broker._access_token
            ws.connect(broker._url(url_token), timeout=broker.stall_timeout, header=["X-Kite-Version: 3"])
        except websocket.WebSocketBadStatusException as exc:
            if exc.status_code == 403:
                raise _AuthRejected(url_token) from None
            raise
        ws.settimeout(min(_POLL_S, broker.stall_timeout))
        self.last_frame = time.monotonic()
        with self.lock:
            if broker._stop.is_set():
                raise _Stop
            self.connected = True
            if self.decoder.last_plain:
                # A new subscription begins with a snapshot of each instrument's last state, which
                # may come after newer live ticks, or before older ones with its own tick among
                # them. A copy with volume is harmless (the volume did not rise: not a trade), but a
                # tick without volume (an index) would count twice: drop, for a moment, exact
                # copies of the last one delivered per token and of any delivered meanwhile.
                seen = set(map(_plain_identity, self.decoder.last_plain.values()))
                self._dedupe = (seen, time.monotonic() + _DEDUPE_S)
            self._send_subscription(list(self.instruments))
            tokens = len(self.instruments)
        if reconnect:
            self.reconnects += 1
            log.warning(
                "kite connection %d: reconnected, resubscribed %d instruments", self.id, tokens,
                extra={"event": "reconnected", "connection": self.id, "reason": self.last_error},
            )  # fmt: skip
        else:
            log.info("kite connection %d: connected, subscribed %d instruments", self.id, tokens)
        self._read(ws)

    def _read(self, ws: websocket.WebSocket) -> None:
        broker = self.broker
        stop = broker._stop
        stall = broker.stall_timeout
        decoder = self.decoder
        decode = decoder.decode
        clock = broker.clock
        monotonic = time.monotonic
        fromtimestamp = datetime.fromtimestamp
        on_ticks = broker._on_ticks
        recv = ws.recv_data
        while True:
            try:
                opcode, data = recv(control_frame=True)
            except websocket.WebSocketTimeoutException:
                if stop.is_set():
                    raise _Stop from None
                idle = monotonic() - self.last_frame
                if idle >= stall:
                    log.warning("kite connection %d stalled (no data for %.1f s)", self.id, idle)
                    raise _Stalled(f"connection {self.id} stalled (no data for {idle:.1f} s)") from None
                continue
            self.last_frame = monotonic()
            if opcode == _OP_BINARY:
                received = clock()
                decoded = decode(data, fromtimestamp(received, IST))
                ticks = decoded if self._dedupe is None else self._without_repeats(decoded)
                if ticks and on_ticks is not None:
                    if ticks is decoded:  # all of the frame: the journal may keep the frame instead
                        ticks = FrameBatch(ticks, decoder.source, received, data)
                    try:
                        on_ticks(ticks)
                    except Exception:  # noqa: BLE001 - a failing sink must not kill the feed
                        self._callback_failed()
            elif opcode == _OP_TEXT:
                self._text(data)
            elif opcode == _OP_CLOSE:
                if stop.is_set():
                    raise _Stop
                return
            # When stopping, frames already received are still read and handed over until the
            # server answers our close (or the socket goes quiet): nothing that arrived is dropped.

    def _without_repeats(self, ticks: list[TickData]) -> list[TickData]:
        assert self._dedupe is not None
        seen, until = self._dedupe
        if time.monotonic() > until:
            self._dedupe = None
            return ticks
        kept = []
        for tick in ticks:
            if tick.volume is None:
                identity = _plain_identity(tick)
                if identity in seen:
                    continue
                seen.add(identity)
            kept.append(tick)
        return kept

    def _text(self, data: bytes) -> None:
        message = self.decoder.parse_text(data)
        if message is None or message.type == "order":  # order postbacks are not market data
            return
        if message.type == "error":
            log.error("kite connection %d: server error: %s", self.id, self.broker._scrub(message.data))
        else:
            log.info("kite connection %d: server message: %s", self.id, self.broker._scrub(message.data))

    def _callback_failed(self) -> None:
        self.callback_errors += 1
        if self.callback_errors % _CALLBACK_LOG_EVERY == 1:
            log.exception("kite connection %d: on_ticks failed (%d times so far)", self.id, self.callback_errors)

    def state(self) -> ConnectionState:
        last = self.last_frame
        return ConnectionState(
            id=self.id,
            connected=self.connected,
            instruments=len(self.instruments),
            reconnects=self.reconnects,
            last_frame_age=(time.monotonic() - last) if last else None,
            last_error=self.last_error,
        )


class KiteBroker(BaseBroker):
    """Zerodha Kite Connect v3 market data over up to three WebSocket connections."""

    name = "kite"
    max_symbols_per_connection = 3000
    max_connections = 3

    def __init__(
        self,
        api_key: str,
        access_token: str,
        *,
        ws_url: str = "wss://ws.kite.trade",
        mode: str = "full",
        instruments: Mapping[int, Instrument] | None = None,
        stall_timeout: float = 10.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        clock: Callable[[], float] = time.time,
        token_provider: Callable[[], str | None] | None = None,
        token_poll_seconds: float = 5.0,
        depth: bool = True,
    ) -> None:
        if mode not in protocol.MODES:
            raise BrokerError(f"unknown Kite mode {mode!r}: use one of {', '.join(protocol.MODES)}")
        if not api_key or not access_token:
            raise BrokerError("Kite needs an API key and an access token: log in (python main.py --broker kite --login)")
        if stall_timeout <= 0 or backoff_initial < 0 or backoff_max < backoff_initial:
            raise BrokerError(
                f"bad Kite timings: stall_timeout={stall_timeout} must be > 0 and "
                f"0 <= backoff_initial={backoff_initial} <= backoff_max={backoff_max}"
            )
        self.api_key = api_key
        self._access_token = access_token
        self.ws_url = ws_url
        self.mode = mode
        #: full mode: hand over each tick's market depth (False: ``depth=None``, cheaper to decode)
        self.depth = depth
        self.instruments: dict[int, Instrument] = dict(instruments or {})
        self.stall_timeout = stall_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.clock = clock
        #: where a replacement access token may appear after a rejection (None: only set_access_token)
        self.token_provider = token_provider
        self.token_poll_seconds = token_poll_seconds
        #: why the feed stopped for good (the access token was rejected), None while it may run
        self.auth_failed: str | None = None
        self._shards = [_Shard(self, k) for k in range(1, self.max_connections + 1)]
        self._stop = threading.Event()
        self._on_ticks: TickBatchCallback | None = None
        self._by_symbol: dict[tuple[str, str], Instrument] | None = None
        self._running = False
        self._api_lock = threading.Lock()  # subscribe/unsubscribe/connect/disconnect (not the hot path)

    def __repr__(self) -> str:
        return (
            f"KiteBroker(api_key={self.api_key!r}, access_token='***', ws_url={self.ws_url!r}, "
            f"mode={self.mode!r}, instruments={self.subscribed_count})"
        )

    # ---------------------------------------------------------------- helpers

    def _url(self, access_token: str) -> str:
        sep = "&" if "?" in self.ws_url else "?"
        return f"{self.ws_url}{sep}api_key={quote(self.api_key, safe='')}&access_token={quote(access_token, safe='')}"

    def _wait_for_new_token(self, rejected: str) -> bool:
        """After a 403: wait, without touching the server, until a different access token is
        available (``set_access_token`` or the token provider, e.g. the token file a fresh
        ``--login`` rewrites). True when there is one; False when stopping or nothing can change."""
        if self.token_provider is None:
            return False
        while not self._stop.wait(self.token_poll_seconds):
            if self._access_token != rejected:
                return True
            try:
                fresh = self.token_provider()
            except Exception as exc:  # noqa: BLE001 - an unreadable token file: keep waiting, say why
                log.warning("kite: cannot read a new access token yet: %s", exc)
                continue
            if fresh and fresh != rejected:
                with self._api_lock:
                    if self._access_token == rejected:
                        self._access_token = fresh
                        self.auth_failed = None
                        log.warning("kite: a new access token is available; reconnecting")
                return True
        return False

    def _scrub(self, text: object) -> str:
        """Text with the access token removed, for logs and stored errors."""
        s = str(text)
        return s.replace(self._access_token, "***") if self._access_token in s else s

    def _auth_rejected(self, shard_id: int) -> None:
        first = self.auth_failed is None
        self.auth_failed = AUTH_FAILED_MESSAGE
        self._shards[shard_id - 1].last_error = AUTH_FAILED_MESSAGE
        if first:
            log.error("kite connection %d: %s", shard_id, AUTH_FAILED_MESSAGE)
        else:
            log.debug("kite connection %d: access token rejected too; not retrying", shard_id)

    @property
    def subscribed_count(self) -> int:
        return sum(len(s.instruments) for s in self._shards)

    @property
    def problem(self) -> str | None:
        return self.auth_failed

    def resolve(self, symbols: Sequence[tuple[str, str]]) -> tuple[list[Instrument], list[str]]:
        """Look (exchange, symbol) pairs up in the instruments mapping given to the constructor."""
        table = self._by_symbol
        if table is None:  # built once: the dump has about 100,000 rows
            table = self._by_symbol = {(i.exchange, i.symbol): i for i in self.instruments.values()}
        return lookup_symbols(table, symbols)

    # ---------------------------------------------------------------- BaseBroker

    def subscribe(self, instruments: Sequence[Instrument]) -> None:
        with self._api_lock:
            current = {t for s in self._shards for t in s.instruments}
            new: dict[int, Instrument] = {}
            for inst in instruments:
                if inst.token <= 0:
                    raise BrokerError(
                        f"{inst.key} has no Kite instrument token: resolve it through the Kite instruments master first"
                    )
                if inst.token not in current:
                    new[inst.token] = inst
            self.check_capacity(len(current) + len(new))
            pending = list(new.values())
            for shard in self._shards:
                if not pending:
                    break
                room = self.max_symbols_per_connection - len(shard.instruments)
                if room <= 0:
                    continue
                take, pending = pending[:room], pending[room:]
                shard.add(take)
                if self._running:
                    shard.start()

    def unsubscribe(self, instruments: Sequence[Instrument]) -> None:
        with self._api_lock:
            tokens = {i.token for i in instruments}
            for shard in self._shards:
                owned = [t for t in tokens if t in shard.instruments]
                if owned:
                    shard.remove(owned)

    def connect(self, on_ticks: TickBatchCallback) -> None:
        with self._api_lock:
            if self._running:
                raise BrokerError("KiteBroker.connect called twice: call disconnect() first")
            if self.auth_failed is not None:
                raise BrokerError(self.auth_failed)
            self._stop.clear()
            self._on_ticks = on_ticks
            self._running = True
            needed = [s for s in self._shards if s.instruments] or self._shards[:1]
            for shard in needed:
                shard.start()

    def disconnect(self) -> None:
        with self._api_lock:
            self._running = False
            self._stop.set()
            shards = [s for s in self._shards if s.thread is not None]
            for shard in shards:
                with shard.lock:
                    ws = shard.ws if shard.connected else None
                if ws is not None:
                    with contextlib.suppress(OSError, websocket.WebSocketException):
                        ws.send_close()  # the reader sees the server's close reply and leaves
            deadline = time.monotonic() + 1.0
            for shard in shards:
                assert shard.thread is not None
                shard.thread.join(max(0.0, deadline - time.monotonic()))
            for shard in shards:
                assert shard.thread is not None
                if shard.thread.is_alive():  # no close reply (or mid-handshake): cut the socket
                    shard.wake()
                    shard.thread.join(1.0)
                if shard.thread.is_alive():
                    log.warning("kite connection %d: thread did not stop within 2 s", shard.id)
                else:
                    shard.thread = None

    def set_access_token(self, access_token: str) -> None:
        """Use a new access token (after a fresh login); connections stopped by a 403 start again."""
        if not access_token:
            raise BrokerError("empty Kite access token: log in again (python main.py --broker kite --login)")
        with self._api_lock:
            self._access_token = access_token
            self.auth_failed = None
            if self._running:
                for shard in self._shards:
                    if shard.thread is not None and not shard.thread.is_alive():
                        shard.start()

    def is_connected(self) -> bool:
        active = [s for s in self._shards if s.thread is not None]
        return bool(active) and all(s.connected for s in active)

    # ---------------------------------------------------------------- observation

    def connection_states(self) -> list[ConnectionState]:
        """One entry per started connection, in id order."""
        return [s.state() for s in self._shards if s.thread is not None or s.instruments]

    def feed_stats(self) -> FeedStats:
        total = self.stats
        return FeedStats(heartbeats=total.heartbeats, malformed=total.malformed)

    def frame_codecs(self) -> Mapping[str, Callable[[bytes], FrameSource]]:
        return {KiteFrameSource.codec: KiteFrameSource.loads}

    @property
    def stats(self) -> DecodeStats:
        """Decoder counters summed over all connections (``malformed`` merged by kind)."""
        total = DecodeStats()
        for shard in self._shards:
            s = shard.decoder.stats
            total.frames += s.frames
            total.packets += s.packets
            total.ticks += s.ticks
            total.heartbeats += s.heartbeats
            total.unknown_tokens += s.unknown_tokens
            total.text_messages += s.text_messages
            total.untimed_skipped += s.untimed_skipped
            for kind, n in list(s.malformed.items()):
                total.malformed[kind] = total.malformed.get(kind, 0) + n
        return total
