"""The feed connections every WebSocket venue runs: reconnects, backoff, stall watchdog, subscriptions.

A venue's broker carries its watchlist over one or more connections. Each connection is a thread
(``<venue>-ws-1`` …) that owns a blocking ``websocket.WebSocket`` (websocket-client) and its own
decoder, decodes every binary frame in that thread and hands the ticks to the ``on_ticks``
callback. What does not depend on the venue is written here once:

- ``FeedConnection``: one connection and the loop around its sessions. A lost connection is
  retried forever with capped exponential backoff and full jitter (a random delay between 0 and
  ``min(backoff_max, backoff_initial * 2**failures)``); a session that lasted ``STABLE_SESSION_S``
  starts the backoff again. A socket that delivers no frame for ``stall_timeout`` seconds is
  treated as dead (the stall watchdog). Every instrument is resubscribed on each new socket, and
  ``add``/``remove`` reach the open socket at once. An exception of the callback is counted and
  logged (the first, then every ``CALLBACK_LOG_EVERY``-th), never fatal.
- ``ResubscribeDedupe``: for a moment after a new subscription, the copies of ticks already
  delivered (a new subscription's snapshot) are dropped; the venue says what a copy is.
- ``FeedBroker``: the ``BaseBroker`` over such connections. A watchlist fills connection 1, then
  2, … (``max_symbols_per_connection`` each, ``max_connections`` at most); ``disconnect`` asks
  every socket to close, gives the threads 1 s to read what is left, then cuts the sockets.

What a venue implements, on its ``FeedConnection`` subclass:

- ``_session(reconnect)``: open a socket (``_new_socket``), handshake and authenticate, call
  ``_opened`` (marks the connection up and subscribes everything), then read until the session
  ends, by returning (the server closed it) or by raising;
- ``_classify(exc, failures)``: what an exception that ended a session means, as an ``Outcome``
  (reason, delay, stop); the default knows ``Stalled`` and the socket's own errors;
- ``_subscribe_frames`` / ``_unsubscribe_frames``: the text frames for some instruments;
- ``_last_delivered()``: the last tick delivered per token, what the dedupe compares with.

Log lines name the venue and the connection (``kite connection 1: ...``) on the venue's own
logger, with ``extra={"event": ...}`` fields on reconnects.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import fields
from typing import Any, ClassVar, NamedTuple

import websocket

from brokers.base import BaseBroker, BrokerError, ConnectionState
from brokers.ws import FeedSocket
from core.ticks import Instrument, TickBatchCallback, TickData

#: A session that lasted this long counts as healthy: the backoff starts again from its beginning.
STABLE_SESSION_S = 10.0
#: How often an idle socket thread looks at its timers and the stop flag (the socket's read timeout).
POLL_S = 0.25
#: Log every n-th exception of the on_ticks callback after the first (a broken sink must not flood).
CALLBACK_LOG_EVERY = 1000
#: How long after a new subscription copies of ticks already delivered are looked for.
DEDUPE_S = 2.0

# The opcodes ``recv_data(control_frame=True)`` returns.
OP_BINARY = websocket.ABNF.OPCODE_BINARY
OP_TEXT = websocket.ABNF.OPCODE_TEXT
OP_CLOSE = websocket.ABNF.OPCODE_CLOSE


class Stop(Exception):
    """The broker is shutting down: leave the connection's loop."""


class Stalled(Exception):
    """The socket went quiet: no frame for ``stall_timeout`` seconds, or no reply in time."""


class Outcome(NamedTuple):
    """What the end of a session means for the connection's loop."""

    reason: str  # logged, and kept as the connection's last_error
    delay: float | None = None  # seconds before the next try; None: the backoff with full jitter
    stop: bool = False  # leave for good: no retry can help
    fresh: bool = False  # the cause is gone (a new access token): the backoff starts from its beginning


#: Leave the loop for good (the venue has said why, e.g. ``auth_failed``).
STOP = Outcome("", stop=True)


class ResubscribeDedupe:
    """Drops, for ``window`` seconds after ``arm``, ticks that repeat what was already delivered.

    A new subscription begins with a snapshot of each instrument's last state, which may come
    after newer live ticks, or before older ones with its own tick among them; a second socket
    opened make-before-break also carries, while both are open, what the first one does. So while
    the window is open a tick is dropped when its ``identity`` is that of the last tick delivered
    for its token or of any tick delivered since; with ``arm(drop_older=True)`` also when it is
    older than the last tick delivered for its token (it would arrive out of order).

    The venue says what a copy is: ``identity`` (what makes two ticks the same update; its first
    field is the token) and ``without_volume_only`` (look at ticks without volume only: a copy
    with volume is harmless to a candle, the cumulative volume did not rise).

    Used by the connection's thread alone; ``armed`` is what the read loop tests per frame.
    """

    __slots__ = ("identity", "without_volume_only", "window", "armed", "_seen", "_before", "_until")

    def __init__(
        self, identity: Callable[[TickData], Hashable], *, without_volume_only: bool = False, window: float = DEDUPE_S
    ) -> None:
        self.identity = identity
        self.without_volume_only = without_volume_only
        self.window = window
        self.armed = False
        self._seen: set[Hashable] = set()
        self._before: dict[int, TickData] = {}
        self._until = 0.0

    def arm(self, last: Mapping[int, TickData], *, drop_older: bool = False, seen: Iterable[Hashable] = ()) -> None:
        """Open the window: ``last`` is the last tick delivered per token, ``seen`` the identities of
        other ticks delivered (what a closing socket brought); ``drop_older``: see the class."""
        self._seen = set(map(self.identity, last.values()))
        self._seen.update(seen)
        self._before = dict(last) if drop_older else {}
        self._until = 0.0  # the window opens with the first ticks filtered (see ``filter``)
        self.armed = True

    def filter(self, ticks: list[TickData]) -> list[TickData]:
        """``ticks`` without the repeats (``ticks`` itself when there were none); once the window
        has passed, all of them (and it closes).

        The window is timed from the first ticks filtered after ``arm``, not from ``arm`` itself:
        the copies are already on their way then, and a thread that does not get to read them for
        a while (a loaded machine) must not find the window closed when it does."""
        now = time.monotonic()
        if not self._until:
            self._until = now + self.window
        elif now > self._until:
            self.armed = False
            self._seen = set()
            self._before = {}
            return ticks
        identity = self.identity
        seen = self._seen
        before = self._before
        without_volume_only = self.without_volume_only
        kept = []
        for tick in ticks:
            if without_volume_only and tick.volume is not None:
                kept.append(tick)
                continue
            if before:
                prev = before.get(tick.token)
                if prev is not None and tick.exchange_ts < prev.exchange_ts:
                    continue
            key = identity(tick)
            if key in seen:
                continue
            seen.add(key)
            kept.append(tick)
        return ticks if len(kept) == len(ticks) else kept  # the same list when none was a copy


class FeedConnection:
    """One WebSocket connection of a venue's feed, the instruments it carries and its thread.

    ``instruments`` maps the venue's key (a Kite token, a Kotak feed key) to the instrument;
    ``lock`` guards it, ``ws`` and ``connected`` against ``subscribe`` calls from other threads.
    See the module's docstring for the hooks a venue implements.
    """

    #: the venue as log lines ("kite connection 1: ...") and thread names ("kite-ws-1") say it
    venue: ClassVar[str] = "feed"
    #: the venue's logger: operators and tests read its records by its name
    log: ClassVar[logging.Logger] = logging.getLogger(__name__)
    #: errors of the socket (and of the handshake) that another try may cure
    transient: ClassVar[tuple[type[Exception], ...]] = (OSError, websocket.WebSocketException)

    def __init__(self, broker: FeedBroker, conn_id: int, decoder: Any, dedupe: ResubscribeDedupe) -> None:
        self.broker = broker
        self.id = conn_id
        self.instruments: dict[Any, Instrument] = {}  # the venue's key -> instrument
        #: the venue's decoder: ``set_instruments(mapping)``, ``stats``
        self.decoder = decoder
        self.dedupe = dedupe
        self.lock = threading.Lock()
        self.ws: websocket.WebSocket | None = None
        self.opening: websocket.WebSocket | None = None  # a second socket being opened, until it replaces ws
        self.connected = False
        self.thread: threading.Thread | None = None
        self.reconnects = 0
        self.session_changes = 0
        self.last_frame = 0.0  # monotonic time of the last frame; 0 before the first
        self.last_error: str | None = None
        self.callback_errors = 0
        self.up_at = 0.0  # the feed's clock when the current session subscribed its instruments

    def _keys(self, instruments: Iterable[Instrument]) -> tuple[tuple[str, str], ...]:
        return tuple((i.exchange, i.symbol) for i in instruments)

    # ---------------------------------------------------------------- the venue's part

    def _session(self, reconnect: bool) -> None:
        """One session (see the module's docstring); ``reconnect``: a session was open before."""
        raise NotImplementedError

    def _subscribe_frames(self, instruments: Mapping[Any, Instrument]) -> Iterable[str]:
        raise NotImplementedError

    def _unsubscribe_frames(self, instruments: Mapping[Any, Instrument]) -> Iterable[str]:
        raise NotImplementedError

    def _last_delivered(self) -> Mapping[int, TickData]:
        """The last tick delivered per token (what a new subscription's snapshot may repeat)."""
        raise NotImplementedError

    def _classify(self, exc: Exception, failures: int) -> Outcome | None:
        """What ``exc``, which ended a session, means; None: not ours to handle (the thread dies
        with it). ``failures``: the failed sessions before this one since the backoff last started."""
        if isinstance(exc, Stalled):
            return Outcome(str(exc))
        if isinstance(exc, self.transient):
            return Outcome(self._scrub(f"{type(exc).__name__}: {exc}"))
        return None

    def _scrub(self, text: object) -> str:
        """``text`` fit for a log line or a stored error (a venue removes its secrets)."""
        return str(text)

    # ---------------------------------------------------------------- subscriptions

    def add(self, instruments: Mapping[Any, Instrument]) -> None:
        with self.lock:
            new = {k: i for k, i in instruments.items() if k not in self.instruments}
            if not new:
                return
            self.instruments.update(new)
            self.decoder.set_instruments(dict(self.instruments))
            if self.connected and self.ws is not None:
                at = self.broker.clock()  # watched from the moment the subscriptions go out
                self._send_subscription(self.ws, new)
                self.broker._report_watch(True, at, self._keys(new.values()), self.id)

    def remove(self, keys: Iterable[Any]) -> None:
        with self.lock:
            gone = {k: i for k in keys if (i := self.instruments.pop(k, None)) is not None}
            if not gone:
                return
            self.decoder.set_instruments(dict(self.instruments))
            ws = self.ws
            if self.connected:
                self.broker._report_watch(False, self.broker.clock(), self._keys(gone.values()), self.id)
            if self.connected and ws is not None:
                try:
                    for frame in self._unsubscribe_frames(gone):
                        ws.send(frame)
                except (OSError, websocket.WebSocketException) as exc:
                    # The socket is going away; the next session subscribes without these.
                    self.log.debug("%s connection %d: unsubscribe not sent: %s", self.venue, self.id, self._scrub(exc))

    def _send_subscription(self, ws: websocket.WebSocket, instruments: Mapping[Any, Instrument]) -> int:
        """Send the subscribe frames of ``instruments`` on ``ws``; returns how many were sent."""
        sent = 0
        try:
            for frame in self._subscribe_frames(instruments):
                ws.send(frame)
                sent += 1
        except (OSError, websocket.WebSocketException) as exc:
            # A send that fails here means the socket died; the reader notices and reconnects,
            # and the new session subscribes everything.
            self.log.debug("%s connection %d: subscribe not sent: %s", self.venue, self.id, self._scrub(exc))
        return sent

    # ---------------------------------------------------------------- thread

    def start(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            return
        self.thread = threading.Thread(target=self._run, name=f"{self.venue}-ws-{self.id}", daemon=True)
        self.thread.start()

    def send_close(self) -> None:
        """Ask the server to close an open socket: the reader sees its close reply and leaves."""
        with self.lock:
            ws = self.ws if self.connected else None
        if ws is not None:
            with contextlib.suppress(OSError, websocket.WebSocketException):
                ws.send_close()

    def wake(self) -> None:
        """Unblock the thread's sockets (used by disconnect)."""
        for ws in (self.ws, self.opening):
            sock = ws.sock if ws is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _run(self) -> None:
        broker = self.broker
        stop = broker._stop
        failures = 0  # consecutive short-lived or failed sessions
        opened_once = False
        while not stop.is_set():
            started = time.monotonic()
            error: Exception | None = None
            try:
                self._session(opened_once)
            except Stop:
                break
            except Exception as exc:  # noqa: BLE001 - classified below, re-raised if nobody knows it
                error = exc
            finally:
                was_open = self._end_session()
            opened_once = opened_once or was_open
            if stop.is_set():
                break
            if was_open and time.monotonic() - started >= STABLE_SESSION_S:
                failures = 0
            outcome = Outcome("server closed the connection") if error is None else self._classify(error, failures)
            if outcome is None:
                assert error is not None
                raise error
            if outcome.stop:
                break
            if outcome.fresh:
                failures = 0
            reason = outcome.reason
            self.last_error = reason
            delay = outcome.delay
            if delay is None:
                delay = random.uniform(0.0, min(broker.backoff_max, broker.backoff_initial * 2**failures))
            failures += 1
            self.log.warning(
                "%s connection %d: %s; reconnecting in %.2f s (attempt %d)", self.venue, self.id, reason, delay, failures,
                extra={"event": "reconnecting", "connection": self.id, "reason": reason, "attempt": failures},
            )  # fmt: skip
            if stop.wait(delay):
                break
        with self.lock:
            self.connected = False

    def _end_session(self) -> bool:
        """Mark the connection down and close its socket; returns whether it had been up."""
        with self.lock:
            was_open = self.connected
            self.connected = False
            ws, self.ws = self.ws, None
            if was_open:  # watched until its last frame (or, with none, until it subscribed)
                clock = self.broker.clock
                last = clock() - (time.monotonic() - self.last_frame) if self.last_frame else 0.0
                self.broker._report_watch(False, max(self.up_at, last), self._keys(self.instruments.values()), self.id)
        if ws is not None:
            with contextlib.suppress(Exception):  # closing a dead socket; nothing to report
                ws.shutdown()
        return was_open

    # ---------------------------------------------------------------- helpers of a session

    def _new_socket(self, *, current: bool = True) -> websocket.WebSocket:
        """A socket for a new session, made ``ws`` at once (``opening`` unless ``current``) so that
        disconnect can interrupt its handshake."""
        ws = FeedSocket(skip_utf8_validation=True)  # bad text is counted by the decoder
        with self.lock:
            if self.broker._stop.is_set():
                raise Stop
            if current:
                self.ws = ws
            else:
                self.opening = ws
        return ws

    def _opened(self, ws: websocket.WebSocket, reconnect: bool) -> None:
        """``ws`` is open and authenticated: the connection is up; subscribe everything on it."""
        with self.lock:
            if self.broker._stop.is_set():
                raise Stop
            self.connected = True
            # armed on the first socket too: its snapshot may come before live ticks it already shows
            self.dedupe.arm(self._last_delivered())
            # up from the moment the subscriptions go out (read before: the server may answer first)
            self.up_at = self.broker.clock()
            self._send_subscription(ws, dict(self.instruments))
            count = len(self.instruments)
            self.broker._report_watch(True, self.up_at, self._keys(self.instruments.values()), self.id)
        if reconnect:
            self.reconnects += 1
            self.log.warning(
                "%s connection %d: reconnected, resubscribed %d instruments", self.venue, self.id, count,
                extra={"event": "reconnected", "connection": self.id, "reason": self.last_error},
            )  # fmt: skip
        else:
            self.log.info("%s connection %d: connected, subscribed %d instruments", self.venue, self.id, count)

    def _check_quiet(self, now: float) -> None:
        """A read timed out at ``now``: leave when stopping; a socket quiet for too long is dead."""
        if self.broker._stop.is_set():
            raise Stop from None
        idle = now - self.last_frame
        if idle >= self.broker.stall_timeout:
            self.log.warning("%s connection %d stalled (no data for %.1f s)", self.venue, self.id, idle)
            raise Stalled(f"connection {self.id} stalled (no data for {idle:.1f} s)") from None

    def _callback_failed(self) -> None:
        """The on_ticks callback raised (call from its except clause): count, log now and then."""
        self.callback_errors += 1
        if self.callback_errors % CALLBACK_LOG_EVERY == 1:
            self.log.exception("%s connection %d: on_ticks failed (%d times so far)", self.venue, self.id, self.callback_errors)

    def state(self) -> ConnectionState:
        last = self.last_frame
        return ConnectionState(
            id=self.id,
            connected=self.connected,
            instruments=len(self.instruments),
            reconnects=self.reconnects,
            last_frame_age=(time.monotonic() - last) if last else None,
            last_error=self.last_error,
            session_changes=self.session_changes,
        )


class FeedBroker(BaseBroker):
    """A ``BaseBroker`` over ``FeedConnection``s, created as the watchlist needs them.

    The venue sets ``connection_type`` and ``stats_type`` (its decoder's counters), gives its
    instrument keys (``_key``; ``_subscription_key`` refuses what it cannot subscribe) and may
    start and stop more threads with the feed (``_on_connect``, ``_on_disconnect``).
    """

    connection_type: ClassVar[type[FeedConnection]]
    stats_type: ClassVar[type]

    def __init__(self, *, stall_timeout: float, backoff_initial: float, backoff_max: float, clock: Callable[[], float]) -> None:
        self.stall_timeout = stall_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.clock = clock
        #: why the feed stopped for good (a refused login), None while it may run
        self.auth_failed: str | None = None
        self._conns: list[FeedConnection] = []
        self._stop = threading.Event()
        self._on_ticks: TickBatchCallback | None = None
        self._running = False
        self._api_lock = threading.Lock()  # subscribe/unsubscribe/connect/disconnect (not the hot path)

    # ---------------------------------------------------------------- the venue's part

    def _key(self, inst: Instrument) -> Any:
        """The key ``inst`` is carried under (``FeedConnection.instruments``)."""
        raise NotImplementedError

    def _subscription_key(self, inst: Instrument) -> Any:
        """``_key``, or BrokerError saying why ``inst`` cannot be subscribed."""
        return self._key(inst)

    def _on_connect(self) -> None:
        """Called by connect (API lock held) once the connections are started."""

    def _on_disconnect(self) -> None:
        """Called by disconnect (API lock held) once the connections are stopped."""

    # ---------------------------------------------------------------- BaseBroker

    @property
    def subscribed_count(self) -> int:
        return sum(len(c.instruments) for c in self._conns)

    @property
    def problem(self) -> str | None:
        return self.auth_failed

    def subscribe(self, instruments: Sequence[Instrument]) -> None:
        """Add instruments to the last connections with room: connection 1 fills first, then 2, …"""
        with self._api_lock:
            current = {k for c in self._conns for k in c.instruments}
            new: dict[Any, Instrument] = {}
            for inst in instruments:
                key = self._subscription_key(inst)
                if key not in current:
                    new[key] = inst
            self.check_capacity(len(current) + len(new))
            pending = list(new.items())
            k = 0
            while pending:
                conn = self._connection(k + 1)
                room = self.max_symbols_per_connection - len(conn.instruments)
                if room > 0:
                    take, pending = pending[:room], pending[room:]
                    conn.add(dict(take))
                    if self._running:
                        conn.start()
                k += 1

    def unsubscribe(self, instruments: Sequence[Instrument]) -> None:
        with self._api_lock:
            keys = {self._key(i) for i in instruments}
            for conn in self._conns:
                owned = [k for k in keys if k in conn.instruments]
                if owned:
                    conn.remove(owned)

    def connect(self, on_ticks: TickBatchCallback) -> None:
        with self._api_lock:
            if self._running:
                raise BrokerError(f"{type(self).__name__}.connect called twice: call disconnect() first")
            if self.auth_failed is not None:
                raise BrokerError(self.auth_failed)
            self._stop.clear()
            self._on_ticks = on_ticks
            self._running = True
            # the connections that carry instruments; with none, connection 1 (it reports the feed's health)
            for conn in [c for c in self._conns if c.instruments] or [self._connection(1)]:
                conn.start()
            self._on_connect()

    def disconnect(self) -> None:
        with self._api_lock:
            self._running = False
            self._stop.set()
            started = [c for c in self._conns if c.thread is not None]
            for conn in started:
                conn.send_close()
            deadline = time.monotonic() + 1.0
            for conn in started:
                assert conn.thread is not None
                conn.thread.join(max(0.0, deadline - time.monotonic()))
            for conn in started:
                assert conn.thread is not None
                if conn.thread.is_alive():  # no close reply (or mid-handshake): cut the socket
                    conn.wake()
                    conn.thread.join(1.0)
                if conn.thread.is_alive():
                    conn.log.warning("%s connection %d: thread did not stop within 2 s", conn.venue, conn.id)
                else:
                    conn.thread = None
            self._on_disconnect()

    def is_connected(self) -> bool:
        active = [c for c in self._conns if c.thread is not None]
        return bool(active) and all(c.connected for c in active)

    # ---------------------------------------------------------------- observation

    def connection_states(self) -> list[ConnectionState]:
        """One entry per connection that carries instruments or was started, in id order."""
        return [c.state() for c in self._conns if c.thread is not None or c.instruments]

    @property
    def stats(self) -> Any:
        """The decoders' counters summed over all connections (``malformed`` merged by kind)."""
        total = self.stats_type()
        counters = [f.name for f in fields(total) if f.name != "malformed"]
        for conn in self._conns:
            s = conn.decoder.stats
            for name in counters:
                setattr(total, name, getattr(total, name) + getattr(s, name))
            for kind, n in list(s.malformed.items()):
                total.malformed[kind] = total.malformed.get(kind, 0) + n
        return total

    # ---------------------------------------------------------------- helpers

    def _connection(self, conn_id: int) -> FeedConnection:
        """Connection ``conn_id`` (from 1), created (with those before it) if it does not exist yet."""
        while len(self._conns) < conn_id:
            self._conns.append(self.connection_type(self, len(self._conns) + 1))
        return self._conns[conn_id - 1]
