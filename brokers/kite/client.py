"""Kite Connect market-data feed: websocket-client threads, sharding, reconnect and stall watchdog.

One thread per connection ("shard", ``kite-ws-1`` …). Each owns a blocking ``websocket.WebSocket``
and its own ``KiteDecoder``, decodes every binary frame in that thread and hands the ticks of the
frame to the ``on_ticks`` callback. Kite allows 3000 instruments per connection and 3 connections
per API key (https://kite.trade/docs/connect/v3/websocket/); instruments fill connection 1, then 2,
then 3. The loop around the sessions, the subscriptions and the spreading over connections are
``brokers.feed``'s (shared with the other venues); this module is what is Kite's.

Reliability:

- any lost connection is retried forever with exponential backoff and full jitter, and every
  instrument is resubscribed in the configured mode;
- a socket that delivers no frame (tick or the server's ~1 s heartbeat) for ``stall_timeout``
  seconds is treated as dead: pykiteconnect misses exactly this (issues #229, #237);
- HTTP 403 at the handshake means the access token is invalid or expired: retrying cannot help,
  so the shard stops until a new access token comes (``set_access_token``, or the token
  provider), ``auth_failed`` says what to do and the broker reports itself unhealthy;
- HTTP 429 (too many connections for the API key) waits ``backoff_max`` before the next try.

The access token is in the URL the server needs, so it never appears in ``repr`` or in logs (any
error text is scrubbed before it is logged or stored).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import quote

import websocket

from brokers.base import BrokerError, FeedStats, lookup_symbols
from brokers.feed import OP_BINARY, OP_CLOSE, OP_TEXT, POLL_S, STOP, FeedBroker, FeedConnection, Outcome, ResubscribeDedupe, Stop
from brokers.kite import protocol
from brokers.kite.protocol import DecodeStats, KiteDecoder, KiteFrameSource
from core.contracts import Contract
from core.ist import IST
from core.ticks import FrameBatch, FrameSource, Instrument, TickData

if TYPE_CHECKING:
    from brokers.kite.instruments import KiteInstruments

log = logging.getLogger(__name__)

AUTH_FAILED_MESSAGE = (
    "Kite rejected the access token (HTTP 403): it is invalid or expired — log in again (python main.py --broker kite --login)"
)

# Tokens per subscribe/mode message: keeps each request small; the server has no documented cap.
_BATCH = 1000


def _plain_identity(tick: TickData) -> tuple:
    """What makes two ticks without volume the same update."""
    return (tick.token, tick.exchange_ts, tick.last_price)


def _batches(tokens: list[int]) -> list[list[int]]:
    return [tokens[i : i + _BATCH] for i in range(0, len(tokens), _BATCH)]


class _AuthRejected(Exception):
    """HTTP 403 at the handshake; carries the access token that was refused (never shown)."""


class _Shard(FeedConnection):
    """One WebSocket connection and the instruments it carries (token -> instrument)."""

    venue = "kite"
    log = log
    transient = (OSError, websocket.WebSocketException, ValueError)  # ValueError: a URL websocket-client refuses
    broker: KiteBroker
    decoder: KiteDecoder

    def __init__(self, broker: KiteBroker, shard_id: int) -> None:
        # A new subscription begins with a snapshot of each instrument's last state: a copy with
        # volume is harmless (the volume did not rise: not a trade), but a tick without volume (an
        # index) would count twice. Only its token, time and price tell such a copy from a new tick.
        super().__init__(
            broker,
            shard_id,
            KiteDecoder({}, timed_only=broker.mode == "full", depth=broker.depth),
            ResubscribeDedupe(_plain_identity, without_volume_only=True),
        )

    # ---------------------------------------------------------------- FeedConnection hooks

    def _subscribe_frames(self, instruments: Mapping[int, Instrument]) -> list[str]:
        """subscribe, then mode (a mode sent first has no effect)."""
        batches = _batches(list(instruments))
        return [protocol.subscribe(b) for b in batches] + [protocol.set_mode(self.broker.mode, b) for b in batches]

    def _unsubscribe_frames(self, instruments: Mapping[int, Instrument]) -> list[str]:
        return [protocol.unsubscribe(b) for b in _batches(list(instruments))]

    def _last_delivered(self) -> Mapping[int, TickData]:
        return self.decoder.last_plain

    def _scrub(self, text: object) -> str:
        return self.broker._scrub(text)

    def _classify(self, exc: Exception, failures: int) -> Outcome | None:
        broker = self.broker
        if isinstance(exc, _AuthRejected):
            broker._auth_rejected(self.id)
            if not broker._wait_for_new_token(str(exc)):
                return STOP
            return Outcome("access token replaced after a rejection", 0.0, fresh=True)
        if isinstance(exc, websocket.WebSocketBadStatusException):
            if exc.status_code == 429:
                return Outcome("HTTP 429: too many connections for this API key", broker.backoff_max)
            return Outcome(f"handshake refused: HTTP {exc.status_code}")
        return super()._classify(exc, failures)

    def _session(self, reconnect: bool) -> None:
        """One connection: handshake, subscribe everything, read until it ends."""
        broker = self.broker
        ws = self._new_socket()
        try:
            url_token = broker._access_token
            ws.connect(broker._url(url_token), timeout=broker.stall_timeout, header=["X-Kite-Version: 3"])
        except websocket.WebSocketBadStatusException as exc:
            if exc.status_code == 403:
                raise _AuthRejected(url_token) from None
            raise
        ws.settimeout(min(POLL_S, broker.stall_timeout))
        self.last_frame = time.monotonic()
        self._opened(ws, reconnect)
        self._read(ws)

    # ---------------------------------------------------------------- reading

    def _read(self, ws: websocket.WebSocket) -> None:
        broker = self.broker
        stop = broker._stop
        decoder = self.decoder
        decode = decoder.decode
        dedupe = self.dedupe
        clock = broker.clock
        monotonic = time.monotonic
        fromtimestamp = datetime.fromtimestamp
        on_ticks = broker._on_ticks
        recv = ws.recv_data
        while True:
            try:
                opcode, data = recv(control_frame=True)
            except websocket.WebSocketTimeoutException:
                self._check_quiet(monotonic())
                continue
            self.last_frame = monotonic()
            if opcode == OP_BINARY:
                received = clock()
                decoded = decode(data, fromtimestamp(received, IST))
                ticks = dedupe.filter(decoded) if dedupe.armed else decoded
                if ticks and on_ticks is not None:
                    if ticks is decoded:  # all of the frame: the journal may keep the frame instead
                        ticks = FrameBatch(ticks, decoder.source, received, data)
                    try:
                        on_ticks(ticks)
                    except Exception:  # noqa: BLE001 - a failing sink must not kill the feed
                        self._callback_failed()
            elif opcode == OP_TEXT:
                self._text(data)
            elif opcode == OP_CLOSE:
                if stop.is_set():
                    raise Stop
                return
            # When stopping, frames already received are still read and handed over until the
            # server answers our close (or the socket goes quiet): nothing that arrived is dropped.

    def _text(self, data: bytes) -> None:
        message = self.decoder.parse_text(data)
        if message is None or message.type == "order":  # order postbacks are not market data
            return
        if message.type == "error":
            log.error("kite connection %d: server error: %s", self.id, self.broker._scrub(message.data))
        else:
            log.info("kite connection %d: server message: %s", self.id, self.broker._scrub(message.data))


class KiteBroker(FeedBroker):
    """Zerodha Kite Connect v3 market data over up to three WebSocket connections."""

    name = "kite"
    max_symbols_per_connection = 3000
    max_connections = 3
    connection_type = _Shard
    stats_type = DecodeStats

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
        master: KiteInstruments | None = None,
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
        super().__init__(stall_timeout=stall_timeout, backoff_initial=backoff_initial, backoff_max=backoff_max, clock=clock)
        self.api_key = api_key
        self._access_token = access_token
        self.ws_url = ws_url
        self.mode = mode
        #: full mode: hand over each tick's market depth (False: ``depth=None``, cheaper to decode)
        self.depth = depth
        self.instruments: dict[int, Instrument] = dict(instruments or {})
        #: where a replacement access token may appear after a rejection (None: only set_access_token)
        self.token_provider = token_provider
        self.token_poll_seconds = token_poll_seconds
        self._by_symbol: dict[tuple[str, str], Instrument] | None = None
        #: the instruments dump the mapping came from: contracts for universes, and a day's refresh
        #: (None: the mapping given is all there is)
        self.master: KiteInstruments | None = master

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
        self._conns[shard_id - 1].last_error = AUTH_FAILED_MESSAGE
        if first:
            log.error("kite connection %d: %s", shard_id, AUTH_FAILED_MESSAGE)
        else:
            log.debug("kite connection %d: access token rejected too; not retrying", shard_id)

    def contracts(self) -> list[Contract]:
        if self.master is None:
            return super().contracts()
        return self.master.contracts()

    def refresh_instruments(self, required: Collection[str] = ()) -> None:
        """Today's dump again (``master.refresh``); the symbols it lists from then on resolve."""
        if self.master is None:
            return
        self.master.refresh(required)
        self.instruments = {i.token: i for i in self.master.load().values()}
        self._by_symbol = None

    def resolve(self, symbols: Sequence[tuple[str, str]]) -> tuple[list[Instrument], list[str]]:
        """Look (exchange, symbol) pairs up in the instruments mapping given to the constructor."""
        table = self._by_symbol
        if table is None:  # built once: the dump has about 100,000 rows
            table = self._by_symbol = {(i.exchange, i.symbol): i for i in self.instruments.values()}
        return lookup_symbols(table, symbols)

    # ---------------------------------------------------------------- FeedBroker

    def _key(self, inst: Instrument) -> int:
        return inst.token

    def _subscription_key(self, inst: Instrument) -> int:
        if inst.token <= 0:
            raise BrokerError(f"{inst.key} has no Kite instrument token: resolve it through the Kite instruments master first")
        return inst.token

    def set_access_token(self, access_token: str) -> None:
        """Use a new access token (after a fresh login); connections stopped by a 403 start again."""
        if not access_token:
            raise BrokerError("empty Kite access token: log in again (python main.py --broker kite --login)")
        with self._api_lock:
            self._access_token = access_token
            self.auth_failed = None
            if self._running:
                for conn in self._conns:
                    if conn.thread is not None and not conn.thread.is_alive():
                        conn.start()

    # ---------------------------------------------------------------- observation

    def feed_stats(self) -> FeedStats:
        total = self.stats
        return FeedStats(heartbeats=total.heartbeats, malformed=total.malformed)

    def frame_codecs(self) -> Mapping[str, Callable[[bytes], FrameSource]]:
        return {KiteFrameSource.codec: KiteFrameSource.loads}
