"""NATS JetStream: every tick and every stored candle on a bus (nats-py, github.com/nats-io/nats.py).

Subjects, under ``NATS_SUBJECT_PREFIX`` (default ``marketfeed``):

- ``<prefix>.ticks.<EXCHANGE>.<SYMBOL>``: each normalised tick, in stream ``MARKETFEED_TICKS``;
- ``<prefix>.candles.<interval>.<EXCHANGE>.<SYMBOL>``: each candle once the store accepted it (a
  revision again), in stream ``MARKETFEED_CANDLES`` (another prefix, other streams: ``stream_names``).

A subject token may not hold ``.``, ``*``, ``>`` or white space, and NATS recommends letters,
digits, ``-`` and ``_`` (docs.nats.io, "Subject-Based Messaging"); symbols hold spaces, ``&``,
dots. ``token`` escapes a name reversibly: ``A-Z a-z 0-9 -`` stay, every other byte of its UTF-8
(``_`` included) becomes ``_`` and two upper-case hex digits: ``NIFTY 50`` → ``NIFTY_2050``,
``M&M`` → ``M_26M``, ``A_B`` → ``A_5FB``. ``untoken`` reverses it.

Payloads are JSON: prices as exact decimal strings, times ISO 8601 in IST (``+05:30``) and as
epoch milliseconds (``*_ms``).

The streams are created (or their limits updated) at every connection: retention by age and bytes
(``NATS_*_MAX_AGE_SECONDS``, ``NATS_*_MAX_BYTES``, oldest discarded), ``NATS_REPLICAS`` copies and a
duplicate window (``NATS_DUPLICATE_WINDOW_SECONDS``). A candle is published with JetStream's
acknowledgement and a ``Nats-Msg-Id`` made of its identity and its content (``candle_msg_id``): the
same candle published twice within the window (a retry after a lost acknowledgement, or both
daemons of a pair) is stored once, and a revised candle is a new message. Ticks are plain NATS
publishes the stream stores (no acknowledgement each: at feed rates one round trip a tick is too
many); while the servers are away the client buffers them up to its limit, then they are dropped
and counted.

Threads: ``publish_ticks`` runs on the pipeline thread and only puts the batch in a bounded queue
(full: the batch is dropped and counted); ``publish_candles`` on the writer thread appends to a
bounded list. The publisher's own thread runs an asyncio loop with the nats-py client, which
reconnects by itself. A bus that cannot publish is a health problem (``degraded``), never a stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import nats
import nats.aio.client
import nats.errors
import nats.js.errors
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from candles.model import Candle
from config.settings import NatsSettings
from core import accel
from core.ist import IST
from core.ticks import TickData
from pipeline.health import BusReport, Health

log = logging.getLogger(__name__)

TICKS_STREAM = "MARKETFEED_TICKS"  # the streams' names under the default prefix (``stream_names``)
CANDLES_STREAM = "MARKETFEED_CANDLES"
CANDLE_LIMIT = 200_000  # candles waiting to be published while the bus is away; beyond, the oldest go
_WINDOW = 256  # candles published at once, each acknowledged
_ACK_TIMEOUT_S = 5.0
_POLL_S = 0.005  # how often queued ticks are taken while they flow
_IDLE_POLLS = 20  # empty looks before the tick pump waits to be woken
_FIRST_CONNECT_S = 5.0  # how long ticks wait for the first connection before they are dropped
_MOST_TICKS = 50_000  # ticks written at once at most
_RETRY_S = 1.0
WARN_EVERY_S = 300.0
#: nats-py's outgoing buffer, written to directly for a batch of ticks (``_publish_batch``)
_BULK = all(hasattr(nats.aio.client.Client, name) for name in ("_send_command", "_flush_pending", "is_closed", "is_connected"))

_SMALL = tuple(str(n) for n in range(4096))  # the text of small quantities (``TickEncoder.encode_batch``)
_KEEP = re.compile(r"[A-Za-z0-9-]+")
_ESCAPED = re.compile(r"_([0-9A-F]{2})")


def token(name: str) -> str:
    """``name`` as one subject token (see the module's docstring); reversible by ``untoken``."""
    if _KEEP.fullmatch(name):
        return name
    out = []
    for ch in name:
        if ch.isascii() and (ch.isalnum() or ch == "-"):
            out.append(ch)
        else:
            out.extend(f"_{b:02X}" for b in ch.encode())
    return "".join(out)


def untoken(escaped: str) -> str:
    """The name a ``token`` stands for."""
    if "_" not in escaped:
        return escaped
    raw = bytearray()
    i = 0
    while i < len(escaped):
        m = _ESCAPED.match(escaped, i)
        if m:
            raw.append(int(m.group(1), 16))
            i = m.end()
        else:
            raw.extend(escaped[i].encode())
            i += 1
    return raw.decode()


def stream_names(prefix: str) -> tuple[str, str]:
    """The ticks' and the candles' streams under ``prefix``: ``MARKETFEED_TICKS`` and
    ``MARKETFEED_CANDLES`` for ``marketfeed``; ``prod.mf`` → ``PROD_MF_TICKS``. Daemons with
    different prefixes on one server keep apart streams."""
    base = re.sub(r"[^A-Za-z0-9_-]", "_", prefix).upper()
    return f"{base}_TICKS", f"{base}_CANDLES"


def tick_subject(prefix: str, exchange: str, symbol: str) -> str:
    return f"{prefix}.ticks.{token(exchange)}.{token(symbol)}"


def candle_subject(prefix: str, candle: Candle) -> str:
    return f"{prefix}.candles.{token(candle.interval)}.{token(candle.exchange)}.{token(candle.symbol)}"


def _ms(ts: Any) -> int | None:
    return None if ts is None else round(ts.timestamp() * 1000)


def _iso(ts: Any) -> str | None:
    return None if ts is None else ts.astimezone(IST).isoformat()


def candle_json(candle: Candle) -> bytes:
    """The candle message's payload (prices as strings: exact decimals survive any JSON parser)."""
    return json.dumps(
        {
            "exchange": candle.exchange,
            "symbol": candle.symbol,
            "interval": candle.interval,
            "bucket": _iso(candle.bucket),
            "bucket_ms": _ms(candle.bucket),
            "open": str(candle.open),
            "high": str(candle.high),
            "low": str(candle.low),
            "close": str(candle.close),
            "volume": candle.volume,
            "oi": candle.oi,
            "tick_count": candle.tick_count,
            "first_tick": _iso(candle.first_tick),
            "first_tick_ms": _ms(candle.first_tick),
            "last_tick": _iso(candle.last_tick),
            "last_tick_ms": _ms(candle.last_tick),
            "final": candle.final,
            "source": candle.source,
        },
        separators=(",", ":"),
    ).encode()


def _plain(d: Decimal) -> str:
    """A decimal written one way whatever its scale (``100.50`` and ``100.5`` alike)."""
    return format(d.normalize(), "f") if d else "0"


def candle_msg_id(candle: Candle) -> str:
    """JetStream's ``Nats-Msg-Id`` of a candle: its identity (interval, exchange, symbol, bucket) and
    content (OHLCV, oi, final, source), hashed. Equal for the same candle from any daemon; a
    revision differs."""
    parts = (
        candle.interval, candle.exchange, candle.symbol, str(_ms(candle.bucket)),
        _plain(candle.open), _plain(candle.high), _plain(candle.low), _plain(candle.close),
        str(candle.volume), str(candle.oi), "final" if candle.final else "open", candle.source,
    )  # fmt: skip
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]
    return f"{candle.interval}:{candle.exchange}:{candle.symbol}:{_ms(candle.bucket)}:{digest}"


class TickEncoder:
    """Ticks as NATS messages. What repeats is made once and kept: per instrument its subject and
    the payload up to the price, per exchange time its text, per frame its receive time's."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        # (exchange, symbol) -> (subject, the start of its PUB command, the payload up to the
        # price's value, the token that start holds)
        self._heads: dict[tuple[str, str], tuple[str, str, str, int]] = {}
        self._seconds: dict[int, str] = {}  # epoch second -> "2026-11-24T09:15:04" (IST)
        self._received: tuple[object, str] = (None, "")  # the latest receive time and its epoch ms, as text
        self._times: dict[datetime, str] = {}  # exchange time -> its part of the payload

    def head(self, t: TickData) -> tuple[str, str, str, int]:
        """(subject, the start of its PUB command, the start of its payload up to the price's
        value, the token) of ``t``'s instrument."""
        subject = tick_subject(self.prefix, t.exchange, t.symbol)
        start = f'{{"exchange":{json.dumps(t.exchange)},"symbol":{json.dumps(t.symbol)},"token":{t.token},"price":"'
        found = self._heads[(t.exchange, t.symbol)] = (subject, f"PUB {subject} ", start, t.token)
        return found

    def _time(self, ts: datetime) -> str:
        """``"ts":"<ISO, IST>","ts_ms":<epoch ms>`` of an exchange time (the decoders hand the same
        time object to the ticks of a second: kept by value, a few thousand at most)."""
        epoch = ts.timestamp()
        second = int(epoch // 1)
        text = self._seconds.get(second)
        if text is None:
            if len(self._seconds) > 100_000:
                self._seconds.clear()
            text = self._seconds[second] = datetime.fromtimestamp(second, IST).isoformat()[:19]
        us = ts.microsecond
        fragment = f'"ts":"{text}{f".{us:06d}" if us else ""}+05:30","ts_ms":{round(epoch * 1000)}'
        if len(self._times) > 4096:
            self._times.clear()
        self._times[ts] = fragment
        return fragment

    def encode(self, t: TickData) -> tuple[str, bytes]:
        """(subject, payload) of one tick."""
        commands: list[str] = []
        self.encode_batch((t,), commands)
        return self._heads[(t.exchange, t.symbol)][0], commands[0].split("\r\n", 2)[1].encode()

    def encode_batch(self, batch: Sequence[TickData], commands: list[str]) -> None:
        """Append the batch's NATS PUB commands to ``commands`` (the client protocol's, docs.nats.io
        "Client Protocol": ``PUB <subject> <#bytes>\\r\\n<payload>\\r\\n``). The payload is one tick's
        JSON, ASCII (``json.dumps`` escapes the names), so its length is its bytes'. One pass, no
        call a tick: at 100,000 ticks a second every lookup saved is a share of a core."""
        heads = self._heads
        times = self._times
        add = commands.append
        last, received_ms = self._received
        last_ts = tail = None  # the payload's end: the exchange time's and the receive time's part
        for t in batch:
            found = heads.get((t.exchange, t.symbol))
            if found is None or found[3] != t.token:
                found = self.head(t)
            ts = t.exchange_ts
            received = t.receive_ts
            if ts is not last_ts or received is not last:  # the same objects run on within a frame
                if received is not last:
                    last = received
                    received_ms = str(round(received.timestamp() * 1000))
                last_ts = ts
                tail = f'{times.get(ts) or self._time(ts)},"received_ms":{received_ms}}}'
            qty = t.last_quantity
            volume = t.volume
            oi = t.oi
            # ``!s``: a Decimal formatted without it goes through Decimal.__format__, about three
            # times the cost of str(); most quantities are small, their text is kept
            body = (
                f'{found[2]}{t.last_price!s}","qty":{"null" if qty is None else _SMALL[qty] if 0 <= qty < 4096 else qty},'
                f'"volume":{"null" if volume is None else volume},"oi":{"null" if oi is None else oi},{tail}'
            )
            add(f"{found[1]}{len(body)}\r\n{body}\r\n")
        self._received = (last, received_ms)


# The reference encoder above is also the fallback. ``TickEncoder`` is the compiled path's subclass
# (publishers/_speedups.pyx: the same payloads, each command assembled in one string) when that is
# built from these sources, else this class; core.accel says which at start-up, and
# MARKETFEED_PURE_PYTHON=1 keeps this one.
PythonTickEncoder = TickEncoder
_compiled = accel.load("publishers._speedups")
if _compiled is not None:
    TickEncoder = _compiled.compiled_encoder(PythonTickEncoder, _SMALL)  # type: ignore[misc]


@dataclass(slots=True)
class NatsStats:
    ticks_published: int = 0
    ticks_dropped: int = 0
    batches_dropped: int = 0
    candles_published: int = 0
    candles_duplicate: int = 0
    candles_dropped: int = 0
    errors: int = 0
    connects: int = 0


class NatsPublisher:
    """Owns a thread with an asyncio loop and one nats-py connection (see the module's docstring)."""

    name = "nats"

    def __init__(self, config: NatsSettings, *, queue_limit: int | None = None, candle_limit: int = CANDLE_LIMIT) -> None:
        self.config = config
        self.where = config.where
        self.stats = NatsStats()
        self._ticks: queue.Queue[Sequence[TickData]] = queue.Queue(queue_limit or config.queue_batches)
        self._candles: deque[tuple[int, Candle]] = deque()  # (arrival number, candle), in order
        self._arrived = 0
        self._candle_limit = candle_limit
        self._candle_lock = threading.Lock()
        self._encoder = TickEncoder(config.prefix)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None  # candles, the stop, a connection
        self._tick_wake: asyncio.Event | None = None  # a batch for an idle tick pump, the stop
        self._idle = False  # the tick pump waits for a batch: the next one wakes it
        self._stopping = False
        self._nc: Any = None
        self._js: Any = None
        self._connected = False
        self._ready = False  # connected and the streams set up
        self._error: str | None = "not connected yet"
        self._warned_at: float | None = None
        self._setup_task: asyncio.Task | None = None
        self._connecting: asyncio.Task | None = None  # the first connection, while it is tried
        self._hold_until = 0.0  # monotonic time until which ticks wait for the first connection

    def __repr__(self) -> str:
        return f"NatsPublisher({self.where}, subjects={self.config.prefix}.>)"

    # ---------------------------------------------------------------- the daemon's side

    def start(self, health: Callable[[], Health] | None = None) -> None:
        self._thread = threading.Thread(target=self._run, name="nats", daemon=True)
        self._thread.start()
        log.info("nats: publishing to %s under %s.ticks.> and %s.candles.>", self.where, self.config.prefix,
                 self.config.prefix)  # fmt: skip

    def stop(self, timeout: float = 5.0) -> None:
        """Publish what waits (for at most ``timeout`` seconds), then close the connection."""
        self._stopping = True
        self._poke()
        self._poke(self._tick_wake)
        loop, connecting = self._loop, self._connecting
        if loop is not None and connecting is not None:  # nats-py retries a first connection forever
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(connecting.cancel)
        if self._thread is not None:
            self._thread.join(timeout + 2.0)

    def publish_ticks(self, batch: Sequence[TickData]) -> None:
        """Pipeline thread: hand the batch over; never blocks (a full queue drops it, counted)."""
        try:
            self._ticks.put_nowait(batch)
        except queue.Full:
            self.stats.ticks_dropped += len(batch)
            self.stats.batches_dropped += 1
            return
        if self._idle:
            self._idle = False
            self._poke(self._tick_wake)

    def publish_candles(self, candles: Iterable[Candle]) -> None:
        """Writer thread: candles the store accepted, published in order."""
        with self._candle_lock:
            for candle in candles:
                self._arrived += 1
                self._candles.append((self._arrived, candle))
            over = len(self._candles) - self._candle_limit
            for _ in range(max(0, over)):
                self._candles.popleft()
            if over > 0:
                self.stats.candles_dropped += over
        self._poke()

    @property
    def problem(self) -> str | None:
        return self.report().problem()

    def report(self) -> BusReport:
        s = self.stats
        return BusReport(
            name=self.name,
            where=self.where,
            connected=self._connected,
            error=None if self._ready else self._error or "not connected",
            ticks_published=s.ticks_published,
            ticks_dropped=s.ticks_dropped,
            candles_published=s.candles_published,
            candles_duplicate=s.candles_duplicate,
            candles_waiting=len(self._candles),
            candles_dropped=s.candles_dropped,
            errors=s.errors,
            reconnects=max(0, s.connects - 1),
        )

    def _poke(self, event: asyncio.Event | None = None) -> None:
        loop, wake = self._loop, event or self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(wake.set)

    # ---------------------------------------------------------------- the publisher's thread

    def _run(self) -> None:
        asyncio.run(self._main())

    def _fail(self, error: str) -> None:
        self._ready = False
        self._error = error
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            log.warning("nats: %s at %s; candles are still stored, the client keeps trying (check NATS_URL)", error,
                        self.where, extra={"event": "nats_unreachable"})  # fmt: skip

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._tick_wake = asyncio.Event()
        # the pumps run from the start: ticks queued before the first connection wait for it
        # ``_FIRST_CONNECT_S`` at most, then are dropped and counted (not NATS_QUEUE_BATCHES
        # batches of stale ticks kept while the server is away)
        self._hold_until = time.monotonic() + _FIRST_CONNECT_S
        pump = asyncio.create_task(self._pump_ticks())
        candles = asyncio.create_task(self._pump_candles())
        await self._connect()
        await asyncio.gather(pump, candles)  # a bug in either ends the thread: the daemon's excepthook fails it
        if self._nc is not None:
            with contextlib.suppress(Exception):  # away at the stop: what is buffered is lost
                await asyncio.wait_for(self._nc.flush(), 2.0)
            await self._nc.close()
        self._loop = None

    async def _connect(self) -> bool:
        """The first connection, tried until it succeeds or the daemon stops (nats-py reconnects
        by itself only once it has been connected)."""
        delay = 0.5
        while not self._stopping:
            self._connecting = asyncio.create_task(
                nats.connect(
                    servers=self.config.servers,
                    name="marketfeed",
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    connect_timeout=2,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    error_cb=self._on_error,
                    pending_size=8 * 1024 * 1024,
                )
            )
            try:
                nc = await self._connecting
            except asyncio.CancelledError:  # stopped while connecting
                return False
            except Exception as exc:  # noqa: BLE001 - any failure to connect is retried
                self._fail(f"cannot connect ({_words(exc)})")
                await self._sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            finally:
                self._connecting = None
            if self._stopping:
                await nc.close()
                return False
            self._nc = nc
            self._js = nc.jetstream(timeout=_ACK_TIMEOUT_S)
            self._connected = True
            self.stats.connects += 1
            log.info("nats: connected to %s", self.where)
            await self._setup()
            return True
        return False

    async def _sleep(self, seconds: float) -> None:
        assert self._wake is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def _setup(self) -> None:
        """Create the streams, or update their limits; retried until it succeeds."""
        c = self.config
        ticks, candles = stream_names(c.prefix)
        streams = (
            (ticks, f"{c.prefix}.ticks.>", c.ticks_max_age_seconds, c.ticks_max_bytes),
            (candles, f"{c.prefix}.candles.>", c.candles_max_age_seconds, c.candles_max_bytes),
        )
        while not self._stopping and self._connected:
            try:
                for name, subject, max_age, max_bytes in streams:
                    await self._ensure_stream(
                        StreamConfig(
                            name=name,
                            subjects=[subject],
                            retention=RetentionPolicy.LIMITS,
                            discard=DiscardPolicy.OLD,
                            storage=StorageType.FILE,
                            max_age=max_age,
                            max_bytes=max_bytes,
                            num_replicas=c.replicas,
                            duplicate_window=c.duplicate_window_seconds,
                        )  # fmt: skip
                    )
            except Exception as exc:  # noqa: BLE001 - JetStream off, a limit refused, a timeout: retried
                self.stats.errors += 1
                self._fail(f"cannot set up the streams ({_words(exc)})")
                await self._sleep(_RETRY_S * 2)
                continue
            self._ready = True
            self._error = None
            self._warned_at = None
            self._poke()
            return

    async def _ensure_stream(self, config: StreamConfig) -> None:
        jsm = self._js
        try:
            await jsm.stream_info(config.name)
        except nats.js.errors.NotFoundError:
            await jsm.add_stream(config)
            log.info("nats: created stream %s (%s)", config.name, ", ".join(config.subjects or ()))
            return
        await jsm.update_stream(config)

    async def _on_disconnected(self) -> None:
        if self._connected and not self._stopping:
            self._connected = False
            self._fail("lost the connection; reconnecting")

    async def _on_reconnected(self) -> None:
        self._connected = True
        self.stats.connects += 1
        log.info("nats: reconnected to %s", self.where)
        if self._setup_task is None or self._setup_task.done():
            self._setup_task = asyncio.create_task(self._setup())

    async def _on_error(self, exc: Exception) -> None:
        if not self._stopping and not self._ready:  # a (re)connection failed: nats-py tries again
            self._fail(f"cannot connect ({_words(exc)})")
        log.debug("nats: %s", exc)

    async def _pump_ticks(self) -> None:
        """Take what the pipeline queued, every ``_POLL_S`` while ticks flow (one wake-up and one
        write for all the batches queued meanwhile); after ``_IDLE_POLLS`` empty looks, wait to be
        woken by the next batch instead (no timer while the market is closed)."""
        get = self._ticks.get_nowait
        wake = self._tick_wake
        assert wake is not None
        stats = self.stats
        publish_ticks = self.config.publish_ticks
        empty = 0
        while True:
            if self._nc is None and not self._stopping and time.monotonic() < self._hold_until:
                await asyncio.sleep(0.02)  # the first connection is being made: the queue holds the ticks
                continue
            batches: list[Sequence[TickData]] = []
            count = 0
            while count < _MOST_TICKS:
                try:
                    batch = get()
                except queue.Empty:
                    break
                batches.append(batch)
                count += len(batch)
            if not batches:
                if self._stopping:
                    return
                empty += 1
                if empty < _IDLE_POLLS:
                    await asyncio.sleep(_POLL_S)
                    continue
                self._idle = True  # before looking again: a batch put after this look wakes it
                if self._ticks.empty() and not self._stopping:
                    await wake.wait()
                wake.clear()
                self._idle = False
                empty = 0
                continue
            empty = 0
            if not publish_ticks:
                continue
            sent = 0
            try:
                sent = await self._publish_batches(batches)
            except nats.errors.OutboundBufferLimitError:
                pass
            except Exception as exc:  # noqa: BLE001 - the connection closed under it: counted, never raised
                stats.errors += 1
                log.debug("nats: a tick publish failed: %s", exc)
            stats.ticks_published += sent
            stats.ticks_dropped += count - sent
            await asyncio.sleep(_POLL_S)

    async def _publish_batches(self, batches: list[Sequence[TickData]]) -> int:
        """Publish the batches' ticks; how many were handed to the client. nats-py publishes one
        message a call (a coroutine, its checks, a command each): their PUB commands are written as
        one into the client's outgoing buffer instead, after the checks ``publish`` makes, where the
        client has that buffer (nats-py 2.x); message by message otherwise."""
        nc = self._nc
        if nc is None:  # not connected yet: dropped (and counted)
            return 0
        if not _BULK:
            sent = 0
            for batch in batches:
                for tick in batch:
                    subject, payload = self._encoder.encode(tick)
                    await nc.publish(subject, payload)
                    sent += 1
            return sent
        if nc.is_closed:
            raise nats.errors.ConnectionClosedError
        commands: list[str] = []
        count = 0
        for batch in batches:
            self._encoder.encode_batch(batch, commands)
            count += len(batch)
        out = "".join(commands).encode()
        if not nc.is_connected and nc._pending_data_size + len(out) > nc._max_pending_size:
            raise nats.errors.OutboundBufferLimitError  # away, and its buffer is full: as publish() says
        nc.stats["out_msgs"] += count
        nc.stats["out_bytes"] += len(out)
        await nc._send_command(out)
        if nc._flush_queue is not None and nc._flush_queue.empty():
            await nc._flush_pending()
        return count

    def _window(self) -> list[tuple[int, Candle]]:
        """The next candles to publish at once: in order, at most one per candle key (a revision
        waits for the candle before it)."""
        taken: list[tuple[int, Candle]] = []
        keys = set()
        with self._candle_lock:
            for number, candle in self._candles:
                if candle.key in keys or len(taken) >= _WINDOW:
                    break
                keys.add(candle.key)
                taken.append((number, candle))
        return taken

    async def _pump_candles(self) -> None:
        prefix = self.config.prefix
        deadline: float | None = None
        while True:
            if self._stopping:
                deadline = deadline or time.monotonic() + 3.0
                if not self._candles or not self._ready or time.monotonic() > deadline:
                    return
            if not self._ready or not self._candles:
                await self._sleep(0.5)
                continue
            window = self._window()
            results = await asyncio.gather(
                *(
                    self._js.publish(candle_subject(prefix, c), candle_json(c), headers={"Nats-Msg-Id": candle_msg_id(c)})
                    for _, c in window
                ),
                return_exceptions=True,
            )
            failed = [r for r in results if isinstance(r, BaseException)]
            done = {n for (n, _), r in zip(window, results, strict=True) if not isinstance(r, BaseException)}
            with self._candle_lock:
                self._candles = deque(item for item in self._candles if item[0] not in done)
            for ack in results:
                if not isinstance(ack, BaseException):
                    self.stats.candles_published += 1
                    if getattr(ack, "duplicate", False):
                        self.stats.candles_duplicate += 1
            if failed:
                self.stats.errors += len(failed)
                log.debug("nats: %d candle publishes failed (%s): retried", len(failed), _words(failed[0]))
                await self._sleep(_RETRY_S)


def _words(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
