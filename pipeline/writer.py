"""The writer thread: closed candles go to the durable spool, then to the store.

A candle counts as accepted once it is in the spool (appended and fsynced). The writer upserts
batches into the store and empties the spool; while the store is unreachable it keeps the candles
in the spool (on disk, not in memory) and replays them in order, with backoff, when the store
answers again. A batch the store refuses is retried candle by candle: a candle the store refuses
alone is dropped and counted, so one bad row never blocks the rest.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from candles.model import Candle
from storage.base import CandleStore, StoreError, StoreUnavailable
from storage.spool import Spool

log = logging.getLogger(__name__)

_WRITE_BATCH = 2_000
_WRITE_LINGER = 0.2  # seconds the writer waits to fill a batch
_BACKOFF_MAX = 30.0


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Queued after the candles emitted before journal checkpoint ``seq``: once they are spooled,
    ``on_spooled(seq)`` lets the journal drop what came before it."""

    seq: int


@dataclass(slots=True)
class WriterStats:
    candles_written: int = 0
    store_errors: int = 0
    rejected_candles: int = 0
    oldest_pending: float | None = None  # monotonic time of the oldest candle not yet written
    pending: int = 0  # candles the writer holds that the store has not accepted yet
    store_down: bool = False  # the last write failed because the store was unreachable


class Writer:
    """Takes lists of candles (and ``Checkpoint`` markers) from ``queue`` until it gets ``None``."""

    def __init__(
        self,
        store: CandleStore,
        spool: Spool,
        candles: queue.Queue,
        *,
        on_stored: Sequence[Callable[[list[Candle]], None]] = (),
        on_spooled: Callable[[int], None] | None = None,
    ) -> None:
        self.store = store
        self.spool = spool
        self.queue = candles
        self.on_stored = list(on_stored)  # told of every candle the store accepted (candle events)
        self.on_spooled = on_spooled
        self.stats = WriterStats()
        self._release_after: int | None = None
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def depth(self) -> int:
        """Closed candles the store has not taken yet (in the spool, or still queued)."""
        return self.stats.pending + self.queue.qsize()

    def lag(self) -> float:
        """Seconds the oldest candle not yet in the store has waited."""
        oldest = self.stats.oldest_pending
        return 0.0 if oldest is None else time.monotonic() - oldest

    def _run(self) -> None:
        spool = self.spool
        stats = self.stats
        pending: list[Candle] = []
        backlog = spool.depth > 0  # candles on disk the store has not taken (an earlier run's, or an outage's)
        backoff = 1.0
        next_try = 0.0
        finished = False
        while True:
            if not finished:
                finished = self._collect(pending)
            if pending:
                spool.append(pending)  # durable from here on: this is when a candle counts as accepted
                if backlog:  # behind older candles: they go to the store in spool order
                    pending.clear()
            if self._release_after is not None and self.on_spooled is not None:
                self.on_spooled(self._release_after)  # all emitted before that checkpoint is spooled
                self._release_after = None
            stats.pending = spool.depth
            if backlog:
                if time.monotonic() < next_try and not finished:
                    continue
                if finished:  # shutdown: one last try; what the store does not take stays in the spool
                    self.replay_spool()
                    break
                if self.replay_spool():
                    backlog, backoff = False, 1.0
                else:
                    next_try = time.monotonic() + backoff
                    log.warning("store unavailable: %d candles wait in the spool (%s); retrying in %.0fs",
                                spool.depth, spool.path, backoff)  # fmt: skip
                    backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            if not pending:
                if finished:
                    break
                continue
            try:
                self.store.upsert(pending)
            except StoreUnavailable as exc:
                stats.store_errors += 1
                stats.store_down = True
                log.warning("store unavailable (%s): keeping candles in the spool", exc)
                backlog, next_try = True, time.monotonic() + backoff
                pending.clear()
                continue
            except StoreError as exc:
                stats.store_errors += 1
                log.error("store rejected a batch of %d candles: %s; retrying one by one", len(pending), exc)
                if self._write_one_by_one(pending):  # the store went away meanwhile: replay the spool later
                    backlog, next_try = True, time.monotonic() + backoff
                    pending.clear()
                    continue
            else:
                stats.candles_written += len(pending)
                self._published(pending)
            stats.store_down = False
            spool.clear()
            pending.clear()
            stats.pending = 0
            stats.oldest_pending = None
            backoff = 1.0
        stats.pending = spool.depth
        if spool.depth:
            log.warning("shutdown: %d candles remain in the spool %s; the next start writes them", spool.depth, spool.path)

    def replay_spool(self) -> bool:
        """Write what the spool holds, in order; True once all of it is in the store."""
        spool = self.spool
        for offset, chunk in spool.chunks():
            try:
                self.store.upsert(chunk)
            except StoreUnavailable:
                self.stats.store_down = True
                return False
            except StoreError as exc:
                log.error("store rejected %d spooled candles: %s; retrying one by one", len(chunk), exc)
                if self._write_one_by_one(chunk):
                    return False
            else:
                self.stats.candles_written += len(chunk)
                self._published(chunk)
            spool.replayed(offset, len(chunk))
        if self.stats.store_down:
            log.info("store back: the spool was written")
        self.stats.store_down = False
        spool.clear()
        self.stats.oldest_pending = None
        return True

    def _write_one_by_one(self, candles: list[Candle]) -> list[Candle]:
        """Write each candle alone; drop (and log) the ones the store refuses. Returns the
        candles still pending because the store became unreachable."""
        for i, candle in enumerate(candles):
            try:
                self.store.upsert([candle])
            except StoreUnavailable:
                return candles[i:]
            except StoreError as exc:
                self.stats.rejected_candles += 1
                log.error("store refused candle %s: %s; dropped", candle, exc)
                continue
            self.stats.candles_written += 1
            self._published([candle])
        return []

    def _published(self, candles: list[Candle]) -> None:
        """Candle events for what the store accepted (MQTT queues them; it never blocks here)."""
        for sink in self.on_stored:
            try:
                sink(candles)
            except Exception:  # noqa: BLE001 - a publisher problem must not stop the store writer
                log.exception("publishing %d candle events failed", len(candles))

    def _collect(self, pending: list[Candle]) -> bool:
        """Move queued candles into ``pending`` (waiting briefly to fill a batch).
        Returns True once the pipeline has said it is done."""
        deadline = time.monotonic() + _WRITE_LINGER
        while len(pending) < _WRITE_BATCH:
            try:
                item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return False
            if item is None:
                return True
            if isinstance(item, Checkpoint):
                self._release_after = item.seq  # released once what came before it is spooled
                return False
            if item and self.stats.oldest_pending is None:
                self.stats.oldest_pending = time.monotonic()
            pending.extend(item)
        return False
