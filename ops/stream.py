"""History then live: one series' stored candles since a time, then every update as it is stored,
as Server-Sent Events (https://html.spec.whatwg.org/multipage/server-sent-events.html).

``CandleHub`` is a publisher (pipeline/service.py ``Publisher``): the writer hands it every batch
the store accepted, on the writer thread. It puts each candle in the bounded buffer of every
stream of that series and returns: no I/O, no encoding, no waiting (a lock-free read of the
subscriptions, copied on each change; each buffer's own lock for an append). A stream whose
buffer fills (its client reads too slowly) is ended with a last event saying why.

The seam, with no gap and no duplicate while the writer writes (``Stream.open``):

1. subscribe first: from now on every stored candle of the series is buffered;
2. read the history from the store (its own connection, never the writer's);
3. settle (``Writer.settle``): every write the read could have seen has been handed over, so
   every version stored before the read's snapshot is in the buffer or older than it;
4. send the history, then drain the buffer: for a bucket in the history, the buffered versions
   up to and including the one equal to the history's are already reflected in it and skipped;
   every later version is sent. A version equal to the one last sent for its bucket (a spool
   replay writing the same candle again) is never sent twice.

A revision of a bucket is a new event. (A bucket whose versions went A, B, A within the seam,
while the client connected, is sent as A: its final state, without the passing B.)

Each candle event's ``id`` is ``<newest bucket sent, epoch ms>-<crc32 of that bucket's last version
sent>``: a client that reconnects with ``Last-Event-ID`` (browsers' EventSource does it by itself)
gets that bucket again only if it changed since, and every newer bucket; from then on, every
version stored of any bucket since the ``since`` it asked for. Revisions of older buckets made
while it was away are not sent again: reconnect without the id to read them.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from candles.model import Candle
from core.ist import IST
from ops.api import OPEN_END, ApiError, bad, candle_dict, dumps, iso, ms
from storage.base import CandleStore

log = logging.getLogger(__name__)

#: candles one stream may have waiting unsent; beyond it the client is too slow and is ended
BUFFER = 10_000
#: the most candles a stream's history may hold (since too far back: read /api/candles instead)
MAX_HISTORY = 50_000
#: the most streams open at once
MAX_STREAMS = 100
#: seconds a new stream waits for a store write in flight to be handed over (see the seam)
SETTLE_S = 10.0
#: buckets whose last version sent a stream remembers (revisions reach back minutes, not days)
REMEMBER = 4_096

SeriesKey = tuple[str, str, str]  # exchange, symbol, interval


class Subscription:
    """One stream's buffer of stored candles, filled on the writer thread."""

    __slots__ = ("key", "limit", "overflowed", "closed", "_items", "_cond")

    def __init__(self, key: SeriesKey, limit: int) -> None:
        self.key = key
        self.limit = limit
        self.overflowed = False
        self.closed = False
        self._items: deque[Candle] = deque()
        self._cond = threading.Condition(threading.Lock())

    def offer(self, candle: Candle) -> None:
        with self._cond:
            if self.overflowed or self.closed:
                return
            if len(self._items) >= self.limit:
                self.overflowed = True
                self._items.clear()
            else:
                self._items.append(candle)
            self._cond.notify()

    def take(self, timeout: float) -> list[Candle]:
        """What waits (after up to ``timeout`` seconds for something), emptied."""
        with self._cond:
            if timeout > 0 and not (self._items or self.overflowed or self.closed):
                self._cond.wait(timeout)
            items = list(self._items)
            self._items.clear()
            return items

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify()


class CandleHub:
    """Hands stored candles to the open streams of their series (see the module's docstring)."""

    problem: str | None = None  # never one: a stream's trouble is its client's

    def __init__(self, *, buffer: int = BUFFER, max_streams: int = MAX_STREAMS) -> None:
        self.buffer = buffer
        self.max_streams = max_streams
        #: ``Writer.settle`` (the wiring sets it); None: no writer in this process
        self.settle: Callable[[float], bool] | None = None
        self._lock = threading.Lock()
        self._subs: dict[SeriesKey, tuple[Subscription, ...]] = {}  # replaced, never changed: read without a lock
        self._count = 0
        self.too_slow = 0  # streams ended because their client read too slowly
        self._stopped = False

    # the Publisher protocol
    def start(self, health: Any = None) -> None:
        pass

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            subs, self._subs, self._count = self._subs, {}, 0
        for group in subs.values():
            for sub in group:
                sub.close()

    def publish_candles(self, candles: Iterable[Candle]) -> None:
        """On the writer thread: into the buffers of the series' streams, never waiting on a client."""
        subs = self._subs
        if not subs:
            return
        for c in candles:
            targets = subs.get((c.exchange, c.symbol, c.interval))
            if targets:
                for sub in targets:
                    sub.offer(c)

    @property
    def streams(self) -> int:
        return self._count

    def subscribe(self, key: SeriesKey) -> Subscription:
        sub = Subscription(key, self.buffer)
        with self._lock:
            if self._stopped:
                raise ApiError(503, "the daemon is stopping: reconnect once it is back")
            if self._count >= self.max_streams:
                raise ApiError(503, f"{self.max_streams} streams are open, the most this daemon serves: close one, "
                               "or read /api/candles instead")  # fmt: skip
            subs = dict(self._subs)
            subs[key] = (*subs.get(key, ()), sub)
            self._subs = subs
            self._count += 1
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            group = self._subs.get(sub.key, ())
            if sub not in group:
                return
            subs = dict(self._subs)
            rest = tuple(s for s in group if s is not sub)
            if rest:
                subs[sub.key] = rest
            else:
                del subs[sub.key]
            self._subs = subs
            self._count -= 1
        sub.close()


def event(kind: str, data: bytes, event_id: str | None = None) -> bytes:
    """One Server-Sent Event (``data`` is one line of JSON)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\n".encode() + b"data: " + data + b"\n\n"


def parse_resume(text: str) -> tuple[int, int]:
    """A ``Last-Event-ID`` this server wrote: (bucket epoch ms, crc32)."""
    try:
        bucket, _, crc = text.strip().partition("-")
        return int(bucket), int(crc, 16)
    except ValueError:
        raise bad(f"Last-Event-ID {text[:40]!r} is not an id of this stream (<bucket ms>-<crc32 hex>): reconnect "
                  "without it, with since= instead") from None  # fmt: skip


class Stream:
    """One client's history-then-live events of one series."""

    def __init__(
        self,
        hub: CandleHub,
        store: CandleStore,
        key: SeriesKey,
        since: datetime,
        resume: tuple[int, int] | None = None,
        *,
        max_history: int = MAX_HISTORY,
    ) -> None:
        self.hub = hub
        self.store = store
        self.key = key
        self.since = since
        self.resume = resume
        self.max_history = max_history
        self._sent: dict[datetime, bytes] = {}  # bucket -> its last version sent
        self._newest: tuple[datetime, bytes] | None = None
        self._sub: Subscription | None = None
        self.ended: str | None = None

    def open(self) -> list[bytes]:
        """Subscribe, read the history and settle; the history's events, a ``live`` marker, and the
        versions stored since (the seam). An ``ApiError`` before anything is sent."""
        exchange, symbol, interval = self.key
        since = self.since
        if self.resume is not None:
            since = datetime.fromtimestamp(self.resume[0] / 1000, IST)
        self._sub = sub = self.hub.subscribe(self.key)
        try:
            rows = self.store.window(exchange, symbol, interval, since, OPEN_END, self.max_history + 1)
            if len(rows) > self.max_history:
                raise bad(f"parameter 'since' ({iso(since)}) reaches back more than {self.max_history} candles: "
                          "choose a later since, and read older candles with /api/candles")  # fmt: skip
            settle = self.hub.settle
            if settle is not None and not settle(SETTLE_S):
                log.warning("http: a store write has hung for %gs: the stream of %s:%s %s starts without waiting for it",
                            SETTLE_S, exchange, symbol, interval)  # fmt: skip
        except BaseException:
            self.close()
            raise
        out = []
        history: dict[datetime, bytes] = {}
        for c in rows:
            data = dumps(candle_dict(c))
            history[c.bucket] = data
            if self.resume is not None and ms(c.bucket) == self.resume[0] and zlib.crc32(data) == self.resume[1]:
                self._remember(c.bucket, data)  # the client has this version already
                continue
            out.append(self._send(c.bucket, data))
        out.append(event("live", dumps({"history": len(rows)})))
        # live: every bucket since the ``since`` asked for (a resumed stream's history begins later)
        buffered = [(c, dumps(candle_dict(c))) for c in sub.take(0) if c.bucket >= self.since]
        seen_upto = {c.bucket: i for i, (c, data) in enumerate(buffered) if history.get(c.bucket) == data}
        for i, (c, data) in enumerate(buffered):
            if i <= seen_upto.get(c.bucket, -1):
                continue  # reflected in the history already
            if self._sent.get(c.bucket) != data:
                out.append(self._send(c.bucket, data))
        return out

    def next(self, timeout: float) -> list[bytes]:
        """The events of the versions stored since the last call (after up to ``timeout`` seconds
        for one); sets ``ended`` (and returns its last event) when the stream is over."""
        sub = self._sub
        assert sub is not None, "open() first"
        items = sub.take(timeout)
        if sub.overflowed:
            self.hub.too_slow += 1
            self.ended = (f"this client read too slowly: more than {sub.limit} candle updates waited unsent; reconnect "
                          "(with Last-Event-ID to resume)")  # fmt: skip
            return [event("error", dumps({"error": self.ended}))]
        if sub.closed:
            self.ended = "the daemon is stopping: reconnect once it is back (with Last-Event-ID to resume)"
            return [event("error", dumps({"error": self.ended}))]
        out = []
        for c in items:
            if c.bucket < self.since:
                continue
            data = dumps(candle_dict(c))
            if self._sent.get(c.bucket) != data:
                out.append(self._send(c.bucket, data))
        return out

    def close(self) -> None:
        if self._sub is not None:
            self.hub.unsubscribe(self._sub)

    def _remember(self, bucket: datetime, data: bytes) -> None:
        sent = self._sent
        sent.pop(bucket, None)
        sent[bucket] = data
        if len(sent) > REMEMBER:
            del sent[next(iter(sent))]
        if self._newest is None or bucket >= self._newest[0]:
            self._newest = (bucket, data)

    def _send(self, bucket: datetime, data: bytes) -> bytes:
        self._remember(bucket, data)
        assert self._newest is not None
        newest, newest_data = self._newest
        return event("candle", data, f"{ms(newest)}-{zlib.crc32(newest_data):08x}")
