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

Reliability, as for Kite (the loop is ``brokers.feed``'s, shared by the venues; this module is
what is Kotak's): reconnect forever with capped exponential backoff and full jitter,
resubscribing everything; the server sends no heartbeat, so each connection pings every
``ping_interval`` seconds and a connection with no frame at all (tick, reply or pong) for
``stall_timeout`` seconds is replaced. Refused credentials put the feed in an ``auth_failed``
problem naming the variables to check (health degraded, ``/healthz`` 503); the login is tried
again at most 3 times an hour (``auth.RETRY_REFUSED_S``), so a fix on Kotak's side is picked up
by itself, and no attempt goes past the login limit (``login_limit``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime
from operator import attrgetter
from typing import TYPE_CHECKING

import websocket

from brokers.base import BrokerError, FeedStats
from brokers.feed import (
    OP_BINARY,
    OP_CLOSE,
    OP_TEXT,
    POLL_S,
    FeedBroker,
    FeedConnection,
    Outcome,
    ResubscribeDedupe,
    Stalled,
    Stop,
)
from brokers.kotak_neo import protocol
from brokers.kotak_neo.auth import RETRY_REFUSED_S, KotakAuth, KotakAuthError, KotakRefused, KotakSession
from brokers.kotak_neo.protocol import DecodeStats, KotakDecoder
from core.contracts import Contract
from core.ist import IST
from core.ticks import Instrument, TickData

if TYPE_CHECKING:
    from brokers.kotak_neo.instruments import KotakScripMaster

log = logging.getLogger(__name__)

_AUTH_REPLY_S = 10.0  # how long to wait for the reply to the auth frame
_DRAIN_S = 2.0  # how long an old socket may take to answer our close during a session change


class _SessionRefused(Exception):
    """The feed answered the auth frame (or a later frame) with 1120 for ``session``."""

    def __init__(self, session: KotakSession) -> None:
        super().__init__("the feed refused the session (1120)")
        self.session = session


class _Conn(FeedConnection):
    """One SFeed connection and the instruments it carries (feed key -> instrument)."""

    venue = "kotak"
    log = log
    broker: KotakNeoBroker
    decoder: KotakDecoder

    def __init__(self, broker: KotakNeoBroker, conn_id: int) -> None:
        # Every tick is looked at (an exact copy carries nothing for a candle: same second, price,
        # volume and open interest); after a session change also those older than the last delivered.
        super().__init__(broker, conn_id, KotakDecoder({}), ResubscribeDedupe(_identity, window=_DRAIN_S))
        # the newest tick delivered per token: what a new socket's snapshot may repeat (see
        # _change_session and FeedConnection._opened)
        self.latest: dict[int, TickData] = {}

    # ---------------------------------------------------------------- FeedConnection hooks

    def _subscribe_frames(self, instruments: Mapping[str, Instrument]) -> Iterable[str]:
        for intent, keys in _by_intent(instruments, self.broker.intent).items():
            yield from protocol.subscribe(keys, intent)

    def _unsubscribe_frames(self, instruments: Mapping[str, Instrument]) -> Iterable[str]:
        for intent, keys in _by_intent(instruments, self.broker.intent).items():
            yield from protocol.unsubscribe(keys, intent)

    def _last_delivered(self) -> Mapping[int, TickData]:
        return self.latest

    def _classify(self, exc: Exception, failures: int) -> Outcome | None:
        broker = self.broker
        if isinstance(exc, KotakAuthError):
            if exc.permanent:
                return broker._credentials_refused(str(exc))
            return Outcome(str(exc))
        if isinstance(exc, _SessionRefused):
            reason = str(exc)
            try:
                if broker._relogin_after_refusal(exc.session, self.id):
                    return Outcome(reason, 0.0 if failures == 0 else None)
            except KotakAuthError as err:
                if err.permanent:
                    return broker._credentials_refused(str(err))
                reason = f"{reason}; logging in again failed: {err}"
            return Outcome(reason)
        return super()._classify(exc, failures)

    def _session(self, reconnect: bool) -> None:
        session = self.broker.auth.current()
        ws = self._open(session, publish=True)
        self._opened(ws, reconnect)
        seen = session.serial
        while True:
            self._read(ws, session, seen)  # returns when a session newer than ``seen`` exists
            ws, session, seen = self._change_session(ws, session)

    def _open(self, session: KotakSession, *, publish: bool) -> websocket.WebSocket:
        """Connect and authenticate a socket; ``publish`` makes it ``self.ws`` at once (so that
        disconnect can interrupt the handshake)."""
        broker = self.broker
        ws = self._new_socket(current=publish)
        try:
            ws.connect(session.feed_url, timeout=min(broker.stall_timeout, _AUTH_REPLY_S))
            ws.send(protocol.auth_frame(session.ucc, session.sid, conn_req_time_ms=int(broker.clock() * 1000)))
            deadline = time.monotonic() + _AUTH_REPLY_S
            ws.settimeout(POLL_S)
            while True:
                if broker._stop.is_set():
                    raise Stop
                if time.monotonic() > deadline:
                    raise Stalled(f"connection {self.id}: no reply to the auth frame within {_AUTH_REPLY_S:.0f} s")
                try:
                    opcode, data = ws.recv_data(control_frame=True)
                except websocket.WebSocketTimeoutException:
                    continue
                if opcode == OP_CLOSE:
                    raise websocket.WebSocketConnectionClosedException("closed before the auth reply")
                if opcode == OP_BINARY:
                    self._deliver(data)
                    continue
                if opcode != OP_TEXT:
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
                    raise KotakRefused("the Kotak feed answered with a data format this version cannot decode "
                                   "(native_fallback): update marketfeed")  # fmt: skip
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
        ping_every = broker.ping_interval
        auth = broker.auth
        monotonic = time.monotonic
        recv = ws.recv_data
        next_ping = monotonic() + ping_every
        while True:
            try:
                opcode, data = recv(control_frame=True)
            except websocket.WebSocketTimeoutException:
                now = monotonic()
                self._check_quiet(now)
                if now >= next_ping:
                    ws.ping()
                    next_ping = now + ping_every
                current = auth.session
                if current is not None and current.serial != serial:
                    return
                continue
            self.last_frame = monotonic()
            if opcode == OP_BINARY:
                self._deliver(data)
            elif opcode == OP_TEXT:
                self._text(data, session)
            elif opcode == OP_CLOSE:
                if stop.is_set():
                    raise Stop
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
        except (OSError, websocket.WebSocketException, _SessionRefused, Stalled) as exc:
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
        self.dedupe.arm(self.latest, drop_older=True, seen=overlap)
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
                raise Stop
            if time.monotonic() > deadline:
                log.debug("kotak connection %d: %d of %d subscriptions acknowledged on the new session", self.id, acks, frames)
                break
            try:
                opcode, data = ws.recv_data(control_frame=True)
            except websocket.WebSocketTimeoutException:
                continue
            self.last_frame = time.monotonic()
            if opcode == OP_BINARY:
                held.append(data)
            elif opcode == OP_TEXT:
                if self._text(data, session) == protocol.SUBSCRIBE_ACK:
                    acks += 1
            elif opcode == OP_CLOSE:
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
                if opcode == OP_BINARY:
                    self._deliver(data, record)
                elif opcode == OP_CLOSE:
                    break
        with contextlib.suppress(Exception):
            ws.shutdown()

    def _deliver(self, data: bytes, record: set[tuple] | None = None) -> None:
        """Decode a frame and hand its ticks over; ``record``: add their identities to it (a
        closing socket's, see _change_session)."""
        broker = self.broker
        ticks = self.decoder.decode(data, datetime.fromtimestamp(broker.clock(), IST))
        if not ticks:
            return
        dedupe = self.dedupe
        if dedupe.armed:  # still armed by an earlier move: the closing socket's ticks are filtered too
            ticks = dedupe.filter(ticks)
        if record is not None:  # and recorded either way, or the next window would let their copies in
            record.update(map(_identity, ticks))
        self.latest.update(zip(map(_token_of, ticks), ticks))
        if ticks and broker._on_ticks is not None:
            try:
                broker._on_ticks(ticks)
            except Exception:  # noqa: BLE001 - a failing sink must not kill the feed
                self._callback_failed()

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


_token_of = attrgetter("token")


def _identity(tick: TickData) -> tuple:
    """What makes two ticks the same update (receive time and depth aside)."""
    return (tick.token, tick.exchange_ts, tick.last_price, tick.volume, tick.last_quantity, tick.oi)


def _by_intent(instruments: Mapping[str, Instrument], intent: str) -> dict[str, list[str]]:
    """Indices (token 0: subscribed by name) go to the index intent, the rest to ``intent``."""
    out: dict[str, list[str]] = {}
    for key, inst in instruments.items():
        out.setdefault(protocol.INDEX if inst.token == 0 else intent, []).append(key)
    return out


class KotakNeoBroker(FeedBroker):
    """Kotak Neo SFeed market data over as many connections as the watchlist needs."""

    name = "kotak_neo"
    connection_type = _Conn
    stats_type = DecodeStats

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
        scrips: KotakScripMaster | None = None,
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
        super().__init__(stall_timeout=stall_timeout, backoff_initial=backoff_initial, backoff_max=backoff_max, clock=clock)
        self.auth = auth
        self.max_symbols_per_connection = max_symbols_per_connection
        self.max_connections = max_connections
        self.intent = intent
        self.ping_interval = min(ping_interval, stall_timeout / 2)
        self.scrips = scrips  # the scrip master symbols and contracts are looked up in (None: symbols as given)
        self._scheduler: threading.Thread | None = None
        self.reauth_failures = 0
        self._sessions_lock = threading.Lock()
        self._accepted_serial = 0  # the newest session the feed has accepted
        self._relogin_serial = 0  # the session a refusal (1120) made us log in for

    def __repr__(self) -> str:
        return f"KotakNeoBroker(connections={len(self._conns)}, instruments={self.subscribed_count}, auth={self.auth!r})"

    def _credentials_refused(self, message: str) -> Outcome:
        """The login was refused: say so once (``problem``) and wait for the next allowed try."""
        first = self.auth_failed is None
        self.auth_failed = message
        retry = self.auth.retry_in()
        if first:
            log.error("kotak: %s; fix the settings and restart marketfeed (the login is tried again in %.0f min, "
                      "at most 3 times an hour)", message, retry / 60, extra={"event": "auth_failed"})  # fmt: skip
        return Outcome(f"auth_failed: {message}", max(retry, self.backoff_initial))

    @property
    def problem(self) -> str | None:
        failed = self.auth_failed
        if failed is None:
            return None
        when = datetime.fromtimestamp(self.auth.failed_at + RETRY_REFUSED_S, IST).strftime("%H:%M")
        return f"auth_failed: {failed}; fix it and restart marketfeed (next login try at {when} IST)"

    def disconnect(self) -> None:
        self.auth.limit.interrupt.set()  # a connection waiting for a login slot leaves at once
        try:
            super().disconnect()
        finally:
            self.auth.limit.interrupt.clear()

    # ---------------------------------------------------------------- BaseBroker

    def resolve(self, symbols: Sequence[tuple[str, str]]) -> tuple[list[Instrument], list[str]]:
        if self.scrips is None:
            return super().resolve(symbols)
        return self.scrips.resolve(symbols)

    def contracts(self) -> list[Contract]:
        if self.scrips is None:
            return super().contracts()
        return self.scrips.contracts()

    def refresh_instruments(self, required: Collection[str] = ()) -> None:
        if self.scrips is not None:
            self.scrips.refresh(required)

    # ---------------------------------------------------------------- FeedBroker

    def _key(self, inst: Instrument) -> str:
        return protocol.instrument_key(inst)

    def _subscription_key(self, inst: Instrument) -> str:
        try:
            return protocol.instrument_key(inst)
        except ValueError as exc:
            raise BrokerError(f"{exc}: resolve symbols through the Kotak scrip master first") from None

    def _on_connect(self) -> None:
        self._scheduler = threading.Thread(target=self._renew_sessions, name="kotak-auth", daemon=True)
        self._scheduler.start()

    def _on_disconnect(self) -> None:
        if self._scheduler is not None:
            self._scheduler.join(2.0)
            self._scheduler = None

    # ---------------------------------------------------------------- sessions

    def _session_accepted(self, session: KotakSession) -> None:
        with self._sessions_lock:
            self._accepted_serial = max(self._accepted_serial, session.serial)
        if self.auth_failed is not None and self.auth.failed is None:
            self.auth_failed = None
            log.warning("kotak: logged in again after the refusal; the feed streams")

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
                    if self._stop.wait(self._credentials_refused(str(exc)).delay):
                        return
                    continue
                log.warning("kotak: session renewal failed (%s); retrying in %.0f s", exc, backoff)
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, self.backoff_max)

    # ---------------------------------------------------------------- observation

    def feed_stats(self) -> FeedStats:
        return FeedStats(malformed=self.stats.malformed)

    @property
    def reauths(self) -> int:
        return max(0, self.auth.logins - 1)
