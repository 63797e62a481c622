"""Kotak Neo market data: SFeed ``native_batch`` over websocket-client threads, split across connections.

One thread per connection (``kotak-ws-1`` …), each with its own socket and ``KotakDecoder``.
A connection carries at most ``max_symbols_per_connection`` instruments (100 by default); a
larger watchlist fills connection 1, then 2, … up to ``max_connections``, and only beyond that
total is it refused, with the numbers. Subscribe frames carry at most 100 keys.

Sessions (``KotakAuth``): every socket authenticates with the current session's sid. The session
is renewed at 90% of its life by a scheduler thread; each connection then moves to the new
session make-before-break (open, authenticate and subscribe a new socket, wait for the server to
acknowledge those subscriptions, then drain and close the old one), so no tick is lost to a
renewal. A feed that refuses the session (1120) makes the connection log in again (once for all
connections: the auth lock) and reconnect at once; if the feed refuses that fresh session too,
the connection retries it with backoff instead of logging in again and again.

Reliability, as for Kite: reconnect forever with capped exponential backoff and full jitter,
resubscribing everything; the server sends no heartbeat, so each connection pings every
``ping_interval`` seconds and a connection with no frame at all (tick, reply or pong) for
``stall_timeout`` seconds is replaced. Refused credentials stop the feed with a message naming
the variables to check, without retrying the login.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields
from datetime import datetime
from operator import attrgetter

import websocket

from brokers.base import BaseBroker, BrokerError, ConnectionState, FeedStats
from brokers.kotak_neo import protocol
from brokers.kotak_neo.auth import KotakAuth, KotakAuthError, KotakSession
from brokers.kotak_neo.protocol import DecodeStats, KotakDecoder
from core.ist import IST
from core.ticks import Instrument, TickBatchCallback, TickData

log = logging.getLogger(__name__)

_STABLE_SESSION_S = 10.0  # a connection that lived this long resets the backoff
_POLL_S = 0.25  # how often an idle socket thread looks at its timers and the stop flag
_AUTH_REPLY_S = 10.0  # how long to wait for the reply to the auth frame
_DRAIN_S = 2.0  # how long an old socket may take to answer our close during a session change
_CALLBACK_LOG_EVERY = 1000

_OP_BINARY = websocket.ABNF.OPCODE_BINARY
_OP_TEXT = websocket.ABNF.OPCODE_TEXT
_OP_CLOSE = websocket.ABNF.OPCODE_CLOSE


class _Stop(Exception):
    """The broker is shutting down."""


class _Stalled(Exception):
    """No frame for stall_timeout seconds."""


class _SessionRefused(Exception):
    """The feed answered the auth frame (or a later frame) with 1120 for ``session``."""

    def __init__(self, session: KotakSession) -> None:
        super().__init__("the feed refused the session (1120)")
        self.session = session


class _Conn:
    """One SFeed connection and the instruments it carries."""

    def __init__(self, broker: KotakNeoBroker, conn_id: int) -> None:
        self.broker = broker
        self.id = conn_id
        self.instruments: dict[str, Instrument] = {}  # feed key -> instrument
        self.decoder = KotakDecoder({})
        self.lock = threading.Lock()
        self.ws: websocket.WebSocket | None = None
        self.opening: websocket.WebSocket | None = None  # a socket for a new session, until it replaces ws
        self.connected = False
        self.thread: threading.Thread | None = None
        self.reconnects = 0
        self.session_changes = 0
        self.last_frame = 0.0
        self.last_error: str | None = None
        self.callback_errors = 0
        # the newest tick delivered per token, and, for a moment after a session change or a
        # reconnect, what was delivered before: the new socket repeats some of it (see
        # _change_session and _session)
        self.latest: dict[int, TickData] = {}
        self._dedupe: tuple[dict[int, TickData], set[tuple], float] | None = None

    # ---------------------------------------------------------------- subscriptions

    def add(self, instruments: Iterable[Instrument]) -> None:
        with self.lock:
            new = {}
            for inst in instruments:
                key = protocol.instrument_key(inst)
                if key not in self.instruments:
                    new[key] = inst
            if not new:
                return
            self.instruments.update(new)
            self.decoder.set_instruments(dict(self.instruments))
            if self.connected and self.ws is not None:
                self._send_subscription(self.ws, new)

    def remove(self, keys: Iterable[str]) -> None:
        with self.lock:
            gone = {k: i for k in keys if (i := self.instruments.pop(k, None)) is not None}
            if not gone:
                return
            self.decoder.set_instruments(dict(self.instruments))
            if self.connected and self.ws is not None:
                try:
                    for intent, keys_of in _by_intent(gone, self.broker.intent).items():
                        for frame in protocol.unsubscribe(keys_of, intent):
                            self.ws.send(frame)
                except (OSError, websocket.WebSocketException) as exc:
                    log.debug("kotak connection %d: unsubscribe not sent: %s", self.id, exc)

    def _send_subscription(self, ws: websocket.WebSocket, instruments: dict[str, Instrument]) -> int:
        """Send the subscribe frames; returns how many were sent."""
        sent = 0
        try:
            for intent, keys in _by_intent(instruments, self.broker.intent).items():
                for frame in protocol.subscribe(keys, intent):
                    ws.send(frame)
                    sent += 1
        except (OSError, websocket.WebSocketException) as exc:
            # the reader notices the dead socket and reconnects; the new socket subscribes everything
            log.debug("kotak connection %d: subscribe not sent: %s", self.id, exc)
        return sent

    # ---------------------------------------------------------------- thread

    def start(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            return
        self.thread = threading.Thread(target=self._run, name=f"kotak-ws-{self.id}", daemon=True)
        self.thread.start()

    def wake(self) -> None:
        for ws in (self.ws, self.opening):
            sock = ws.sock if ws is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _run(self) -> None:
        broker = self.broker
        stop = broker._stop
        failures = 0
        opened_once = False
        while not stop.is_set():
            delay: float | None = None
            started = time.monotonic()
            was_open = False
            refused: KotakSession | None = None
            try:
                self._session(opened_once)
                reason = "server closed the connection"
            except _Stop:
                break
            except KotakAuthError as exc:
                if exc.permanent:
                    broker._credentials_refused(str(exc))
                    break
                reason = str(exc)
            except _SessionRefused as exc:
                reason = str(exc)
                refused = exc.session
            except _Stalled as exc:
                reason = str(exc)
            except (OSError, websocket.WebSocketException) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            finally:
                with self.lock:
                    was_open = self.connected
                    self.connected = False
                    ws, self.ws = self.ws, None
                if ws is not None:
                    with contextlib.suppress(Exception):  # closing a dead socket; nothing to report
                        ws.shutdown()
            opened_once = opened_once or was_open
            if stop.is_set():
                break
            if was_open and time.monotonic() - started >= _STABLE_SESSION_S:
                failures = 0
            if refused is not None:
                try:
                    if broker._relogin_after_refusal(refused, self.id):
                        delay = 0.0 if failures == 0 else None
                except KotakAuthError as exc:
                    if exc.permanent:
                        broker._credentials_refused(str(exc))
                        break
                    reason = f"{reason}; logging in again failed: {exc}"
            self.last_error = reason
            if delay is None:
                delay = random.uniform(0.0, min(broker.backoff_max, broker.backoff_initial * 2**failures))
            failures += 1
            log.warning(
                "kotak connection %d: %s; reconnecting in %.2f s (attempt %d)", self.id, reason, delay, failures,
                extra={"event": "reconnecting", "connection": self.id, "reason": reason, "attempt": failures},
            )  # fmt: skip
            if stop.wait(delay):
                break
        with self.lock:
            self.connected = False

    def _session(self, reconnect: bool) -> None:
        broker = self.broker
        session = broker.auth.current()
        ws = self._open(session, publish=True)
        with self.lock:
            if broker._stop.is_set():
                raise _Stop
            self.connected = True
            if self.latest:
                # A new subscription begins with a snapshot of each instrument's last state, which
                # may come after newer live ticks, or before older ones that were already on their
                # way with the snapshot's tick among them: drop, for a moment, exact copies of the
                # last tick delivered per token and of any tick delivered meanwhile. (An exact copy
                # carries nothing for a candle: same second, price, volume and open interest.)
                self._dedupe = ({}, set(map(_identity, self.latest.values())), time.monotonic() + _DRAIN_S)
            self._send_subscription(ws, dict(self.instruments))
            count = len(self.instruments)
        if reconnect:
            self.reconnects += 1
            log.warning(
                "kotak connection %d: reconnected, resubscribed %d instruments", self.id, count,
                extra={"event": "reconnected", "connection": self.id, "reason": self.last_error},
            )  # fmt: skip
        else:
            log.info("kotak connection %d: connected, subscribed %d instruments", self.id, count)
        seen = session.serial
        while True:
            self._read(ws, session, seen)  # returns when a session newer than ``seen`` exists
            ws, session, seen = self._change_session(ws, session)

    def _open(self, session: KotakSession, *, publish: bool) -> websocket.WebSocket:
        """Connect and authenticate a socket; ``publish`` makes it ``self.ws`` at once (so that
        disconnect can interrupt the handshake)."""
        broker = self.broker
        ws = websocket.WebSocket(skip_utf8_validation=True)
        with self.lock:
            if broker._stop.is_set():
                raise _Stop
            if publish:
                self.ws = ws
            else:
                self.opening = ws
        try:
            ws.connect(session.feed_url, timeout=min(broker.stall_timeout, _AUTH_REPLY_S))
            ws.send(protocol.auth_frame(session.ucc, session.sid, conn_req_time_ms=int(broker.clock() * 1000)))
            deadline = time.monotonic() + _AUTH_REPLY_S
            ws.settimeout(_POLL_S)
            while True:
                if broker._stop.is_set():
                    raise _Stop
                if time.monotonic() > deadline:
                    raise _Stalled(f"connection {self.id}: no reply to the auth frame within {_AUTH_REPLY_S:.0f} s")
                try:
                    opcode, data = ws.recv_data(control_frame=True)
                except websocket.WebSocketTimeoutException:
                    continue
                if opcode == _OP_CLOSE:
                    raise websocket.WebSocketConnectionClosedException("closed before the auth reply")
                if opcode == _OP_BINARY:
                    self._deliver(data)
                    continue
                if opcode != _OP_TEXT:
                    continue
                message = self.decoder.parse_text(data)
                if message is None:
                    continue
                if message.kind == protocol.AUTH_OK:
                    broker._session_accepted(session)
                    break
                if message.kind == protocol.AUTH_FAILED:
                    raise _SessionRefused(session)
                if message.kind == protocol.AUTH_UNSUPPORTED_FORMAT:
                    raise KotakAuthError("the Kotak feed answered with a data format this version cannot decode "
                                         "(native_fallback): update marketfeed", permanent=True)  # fmt: skip
        except BaseException:
            if not publish:
                with contextlib.suppress(Exception):
                    ws.shutdown()
            raise
        finally:
            if not publish:
                self.opening = None
        self.last_frame = time.monotonic()
        return ws

    def _read(self, ws: websocket.WebSocket, session: KotakSession, serial: int) -> None:
        """Read ``ws`` (authenticated with ``session``) until a session newer than ``serial`` exists."""
        broker = self.broker
        stop = broker._stop
        stall = broker.stall_timeout
        ping_every = broker.ping_interval
        auth = broker.auth
        monotonic = time.monotonic
        recv = ws.recv_data
        next_ping = monotonic() + ping_every
        while True:
            try:
                opcode, data = recv(control_frame=True)
            except websocket.WebSocketTimeoutException:
                if stop.is_set():
                    raise _Stop from None
                now = monotonic()
                idle = now - self.last_frame
                if idle >= stall:
                    log.warning("kotak connection %d stalled (no data for %.1f s)", self.id, idle)
                    raise _Stalled(f"connection {self.id} stalled (no data for {idle:.1f} s)") from None
                if now >= next_ping:
                    ws.ping()
                    next_ping = now + ping_every
                current = auth.session
                if current is not None and current.serial != serial:
                    return
                continue
            self.last_frame = monotonic()
            if opcode == _OP_BINARY:
                self._deliver(data)
            elif opcode == _OP_TEXT:
                self._text(data, session)
            elif opcode == _OP_CLOSE:
                if stop.is_set():
                    raise _Stop
                raise websocket.WebSocketConnectionClosedException("the server closed the connection")
            # When stopping, frames already received are still read and handed over until the
            # server answers our close (or the socket goes quiet): nothing that arrived is dropped.
            if self.last_frame >= next_ping:
                ws.ping()
                next_ping = self.last_frame + ping_every
            current = auth.session
            if current is not None and current.serial != serial:
                return

    def _change_session(self, old: websocket.WebSocket, old_session: KotakSession) -> tuple[websocket.WebSocket, KotakSession, int]:
        """Move to the newest session make-before-break; returns the socket to read, the session it
        is authenticated with and the newest session serial handled. If the new socket cannot be
        opened, the old one carries on (when the server ends it, the reconnect uses the new session)."""
        session = self.broker.auth.session or old_session
        try:
            new = self._open(session, publish=False)
        except (OSError, websocket.WebSocketException, _SessionRefused, _Stalled) as exc:
            log.warning("kotak connection %d: could not open a socket with the new session (%s); "
                        "keeping the current one", self.id, type(exc).__name__)  # fmt: skip
            return old, old_session, session.serial
        try:
            with self.lock:
                # from here on subscribe/unsubscribe calls go to the new socket
                frames = self._send_subscription(new, dict(self.instruments))
                self.ws = new
            # Close the old socket only once the server has taken the subscriptions of the new one
            # (its 1109 acks): until then only the old socket carries some ticks. What the new socket
            # brings meanwhile is held back and delivered after the rest of the old socket's ticks.
            held = self._await_acks(new, session, frames)
        except BaseException:
            self._drain(old)
            raise
        # Both sockets carried the ticks sent while they overlapped, and the new one began with a
        # snapshot of each instrument's last state: drop, for a moment, what the old one already
        # delivered (exact copies, and anything older than its newest tick per token), so that no
        # tick counts twice or arrives out of order.
        overlap: set[tuple] = set()
        self._drain(old, overlap)
        self._dedupe = (dict(self.latest), overlap, time.monotonic() + _DRAIN_S)
        for data in held:
            self._deliver(data)
        self.session_changes += 1
        log.info("kotak connection %d: moved to the renewed session, %d instruments", self.id, len(self.instruments))
        return new, session, session.serial

    def _await_acks(self, ws: websocket.WebSocket, session: KotakSession, frames: int) -> list[bytes]:
        """Read ``ws`` until ``frames`` subscribe acks arrived (or ``_DRAIN_S`` passed); returns the
        binary frames read meanwhile, undelivered."""
        held: list[bytes] = []
        acks = 0
        deadline = time.monotonic() + _DRAIN_S
        while acks < frames:
            if self.broker._stop.is_set():
                raise _Stop
            if time.monotonic() > deadline:
                log.debug("kotak connection %d: %d of %d subscriptions acknowledged on the new session", self.id, acks, frames)
                break
            try:
                opcode, data = ws.recv_data(control_frame=True)
            except websocket.WebSocketTimeoutException:
                continue
            self.last_frame = time.monotonic()
            if opcode == _OP_BINARY:
                held.append(data)
            elif opcode == _OP_TEXT:
                if self._text(data, session) == protocol.SUBSCRIBE_ACK:
                    acks += 1
            elif opcode == _OP_CLOSE:
                raise websocket.WebSocketConnectionClosedException("the server closed the new connection")
        return held

    def _drain(self, ws: websocket.WebSocket, record: set[tuple] | None = None) -> None:
        """Close the old socket, delivering what it still carries until the server's close reply."""
        deadline = time.monotonic() + _DRAIN_S
        stop = self.broker._stop
        with contextlib.suppress(OSError, websocket.WebSocketException):
            ws.send_close()
            while time.monotonic() < deadline and not stop.is_set():
                try:
                    opcode, data = ws.recv_data(control_frame=True)
                except websocket.WebSocketTimeoutException:
                    continue
                if opcode == _OP_BINARY:
                    self._deliver(data, record)
                elif opcode == _OP_CLOSE:
                    break
        with contextlib.suppress(Exception):
            ws.shutdown()

    def _deliver(self, data: bytes, record: set[tuple] | None = None) -> None:
        broker = self.broker
        ticks = self.decoder.decode(data, datetime.fromtimestamp(broker.clock(), IST))
        if not ticks:
            return
        if self._dedupe is not None:
            ticks = self._without_repeats(ticks)
        elif record is not None:
            record.update(map(_identity, ticks))
        self.latest.update(zip(map(_token_of, ticks), ticks))
        if ticks and broker._on_ticks is not None:
            try:
                broker._on_ticks(ticks)
            except Exception:  # noqa: BLE001 - a failing sink must not kill the feed
                self.callback_errors += 1
                if self.callback_errors % _CALLBACK_LOG_EVERY == 1:
                    log.exception("kotak connection %d: on_ticks failed (%d times so far)", self.id, self.callback_errors)

    def _without_repeats(self, ticks: list[TickData]) -> list[TickData]:
        assert self._dedupe is not None
        before, overlap, until = self._dedupe
        if time.monotonic() > until:
            self._dedupe = None
            return ticks
        kept = []
        for tick in ticks:
            prev = before.get(tick.token)
            if prev is not None and tick.exchange_ts < prev.exchange_ts:
                continue
            identity = _identity(tick)
            if identity in overlap or (prev is not None and identity == _identity(prev)):
                continue
            # a snapshot may also come before live ticks that were sent earlier, itself among them
            overlap.add(identity)
            kept.append(tick)
        return kept

    def _text(self, data: bytes, session: KotakSession) -> str | None:
        """Handle a control frame of a socket authenticated with ``session``; returns its kind."""
        message = self.decoder.parse_text(data)
        if message is None:
            return None
        if message.kind == protocol.AUTH_FAILED:
            raise _SessionRefused(session)
        if message.kind == protocol.SUBSCRIBE_ACK:
            if message.ok:
                log.debug("kotak connection %d: %d subscriptions acknowledged", self.id, len(message.symbols))
            else:
                log.warning("kotak connection %d: subscription refused (error %s): %s", self.id, message.error_code,
                            message.message)  # fmt: skip
        elif message.kind != protocol.AUTH_OK:
            log.info("kotak connection %d: server message %s: %s", self.id, message.code, message.message)
        return message.kind

    def state(self) -> ConnectionState:
        last = self.last_frame
        return ConnectionState(
            id=self.id,
            connected=self.connected,
            instruments=len(self.instruments),
            reconnects=self.reconnects,
            session_changes=self.session_changes,
            last_frame_age=(time.monotonic() - last) if last else None,
            last_error=self.last_error,
        )


_token_of = attrgetter("token")


def _identity(tick: TickData) -> tuple:
    """What makes two ticks the same update (receive time and depth aside)."""
    return (tick.token, tick.exchange_ts, tick.last_price, tick.volume, tick.last_quantity, tick.oi)


def _by_intent(instruments: dict[str, Instrument], intent: str) -> dict[str, list[str]]:
    """Indices (token 0: subscribed by name) go to the index intent, the rest to ``intent``."""
    out: dict[str, list[str]] = {}
    for key, inst in instruments.items():
        out.setdefault(protocol.INDEX if inst.token == 0 else intent, []).append(key)
    return out


class KotakNeoBroker(BaseBroker):
    """Kotak Neo SFeed market data over as many connections as the watchlist needs."""

    name = "kotak_neo"

    def __init__(
        self,
        auth: KotakAuth,
        *,
        max_symbols_per_connection: int = 100,
        max_connections: int = 30,
        intent: str = protocol.SCRIPS,
        stall_timeout: float = 45.0,
        ping_interval: float = protocol.PING_INTERVAL,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        resolver: Callable[[Sequence[tuple[str, str]]], tuple[list[Instrument], list[str]]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_symbols_per_connection < 1 or max_connections < 1:
            raise BrokerError(
                f"KOTAK_MAX_SYMBOLS_PER_CONNECTION={max_symbols_per_connection} and KOTAK_MAX_CONNECTIONS={max_connections} "
                "must both be at least 1"
            )
        if intent not in (protocol.SCRIPS, protocol.DEPTH, protocol.SCRIPS_LITE):
            raise BrokerError(f"unknown Kotak subscription {intent!r}: use scrips or depth")
        if stall_timeout <= 0 or ping_interval <= 0 or backoff_initial < 0 or backoff_max < backoff_initial:
            raise BrokerError(f"bad Kotak timings: stall_timeout={stall_timeout}, ping_interval={ping_interval}, "
                              f"backoff {backoff_initial}..{backoff_max}")  # fmt: skip
        self.auth = auth
        self.max_symbols_per_connection = max_symbols_per_connection
        self.max_connections = max_connections
        self.intent = intent
        self.stall_timeout = stall_timeout
        self.ping_interval = min(ping_interval, stall_timeout / 2)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.clock = clock
        self._resolver = resolver
        self._conns: list[_Conn] = []
        self._stop = threading.Event()
        self._on_ticks: TickBatchCallback | None = None
        self._running = False
        self._api_lock = threading.Lock()
        self._scheduler: threading.Thread | None = None
        #: why the feed stopped for good (credentials refused), None while it may run
        self.auth_failed: str | None = None
        self.reauth_failures = 0
        self._sessions_lock = threading.Lock()
        self._accepted_serial = 0  # the newest session the feed has accepted
        self._relogin_serial = 0  # the session a refusal (1120) made us log in for

    def __repr__(self) -> str:
        return f"KotakNeoBroker(connections={len(self._conns)}, instruments={self.subscribed_count}, auth={self.auth!r})"

    @property
    def subscribed_count(self) -> int:
        return sum(len(c.instruments) for c in self._conns)

    @property
    def problem(self) -> str | None:
        return self.auth_failed

    def _credentials_refused(self, message: str) -> None:
        first = self.auth_failed is None
        self.auth_failed = message
        if first:
            log.error("kotak: %s; the feed stops until the settings are fixed and the daemon restarted", message)

    # ---------------------------------------------------------------- BaseBroker

    def resolve(self, symbols: Sequence[tuple[str, str]]) -> tuple[list[Instrument], list[str]]:
        if self._resolver is None:
            return super().resolve(symbols)
        return self._resolver(symbols)

    def subscribe(self, instruments: Sequence[Instrument]) -> None:
        with self._api_lock:
            current = {k for c in self._conns for k in c.instruments}
            new: dict[str, Instrument] = {}
            for inst in instruments:
                try:
                    key = protocol.instrument_key(inst)
                except ValueError as exc:
                    raise BrokerError(f"{exc}: resolve symbols through the Kotak scrip master first") from None
                if key not in current:
                    new[key] = inst
            self.check_capacity(len(current) + len(new))
            pending = list(new.values())
            k = 0
            while pending:
                if k == len(self._conns):
                    self._conns.append(_Conn(self, k + 1))
                conn = self._conns[k]
                room = self.max_symbols_per_connection - len(conn.instruments)
                if room > 0:
                    take, pending = pending[:room], pending[room:]
                    conn.add(take)
                    if self._running:
                        conn.start()
                k += 1

    def unsubscribe(self, instruments: Sequence[Instrument]) -> None:
        with self._api_lock:
            keys = {protocol.instrument_key(i) for i in instruments}
            for conn in self._conns:
                owned = [k for k in keys if k in conn.instruments]
                if owned:
                    conn.remove(owned)

    def connect(self, on_ticks: TickBatchCallback) -> None:
        with self._api_lock:
            if self._running:
                raise BrokerError("KotakNeoBroker.connect called twice: call disconnect() first")
            if self.auth_failed is not None:
                raise BrokerError(self.auth_failed)
            self._stop.clear()
            self._on_ticks = on_ticks
            self._running = True
            if not self._conns:
                self._conns.append(_Conn(self, 1))
            for conn in self._conns:
                conn.start()
            self._scheduler = threading.Thread(target=self._renew_sessions, name="kotak-auth", daemon=True)
            self._scheduler.start()

    def disconnect(self) -> None:
        with self._api_lock:
            self._running = False
            self._stop.set()
            started = [c for c in self._conns if c.thread is not None]
            for conn in started:
                with conn.lock:
                    ws = conn.ws if conn.connected else None
                if ws is not None:
                    with contextlib.suppress(OSError, websocket.WebSocketException):
                        ws.send_close()
            deadline = time.monotonic() + 1.0
            for conn in started:
                assert conn.thread is not None
                conn.thread.join(max(0.0, deadline - time.monotonic()))
            for conn in started:
                assert conn.thread is not None
                if conn.thread.is_alive():
                    conn.wake()
                    conn.thread.join(1.0)
                if conn.thread.is_alive():
                    log.warning("kotak connection %d: thread did not stop within 2 s", conn.id)
                else:
                    conn.thread = None
            if self._scheduler is not None:
                self._scheduler.join(2.0)
                self._scheduler = None

    def is_connected(self) -> bool:
        active = [c for c in self._conns if c.thread is not None]
        return bool(active) and all(c.connected for c in active)

    # ---------------------------------------------------------------- sessions

    def _session_accepted(self, session: KotakSession) -> None:
        with self._sessions_lock:
            self._accepted_serial = max(self._accepted_serial, session.serial)

    def _relogin_after_refusal(self, refused: KotakSession, conn_id: int = 0) -> bool:
        """After a 1120 for ``refused``: log in again, once for all connections (``reauth`` does
        nothing when another connection already replaced the session). Returns False, without a
        login, when ``refused`` itself came from such a login and the feed has never accepted it:
        a feed that refuses fresh sessions is not helped by more logins, so the connection retries
        the same session with backoff (the scheduled renewal still replaces it in time)."""
        with self._sessions_lock:
            if refused.serial == self._relogin_serial and refused.serial > self._accepted_serial:
                log.debug("kotak: the feed refused a fresh session too; retrying it without logging in again")
                return False
        session = self.auth.reauth(refused, f"connection {conn_id}: the feed refused the session (1120)")
        with self._sessions_lock:
            if session.serial != refused.serial:
                self._relogin_serial = max(self._relogin_serial, session.serial)
        return True

    def _renew_sessions(self) -> None:
        """Log in again at the session's refresh point (90% of its life), before it expires."""
        backoff = self.backoff_initial or 1.0
        while not self._stop.is_set():
            due = self.auth.refresh_due()
            if due is None or due > 0:
                self._stop.wait(1.0 if due is None else min(max(due, 0.05), 1.0))
                continue
            try:
                self.auth.reauth(self.auth.session, "90% of the session's life")
                backoff = self.backoff_initial or 1.0
            except KotakAuthError as exc:
                self.reauth_failures += 1
                if exc.permanent:
                    self._credentials_refused(str(exc))
                    return
                log.warning("kotak: session renewal failed (%s); retrying in %.0f s", exc, backoff)
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, self.backoff_max)

    # ---------------------------------------------------------------- observation

    def connection_states(self) -> list[ConnectionState]:
        return [c.state() for c in self._conns]

    def feed_stats(self) -> FeedStats:
        return FeedStats(malformed=self.stats.malformed)

    @property
    def stats(self) -> DecodeStats:
        total = DecodeStats()
        counters = [f.name for f in fields(DecodeStats) if f.name != "malformed"]
        for conn in self._conns:
            s = conn.decoder.stats
            for name in counters:
                setattr(total, name, getattr(total, name) + getattr(s, name))
            for kind, n in list(s.malformed.items()):
                total.malformed[kind] = total.malformed.get(kind, 0) + n
        return total

    @property
    def reauths(self) -> int:
        return max(0, self.auth.logins - 1)
