"""Wires broker → aggregator → store: owns the threads, the status line and shutdown.

Threads: the broker's own socket threads hand batches of ticks to one queue; the pipeline thread
aggregates them and closes buckets on the clock; the writer thread upserts closed candles in
batches and keeps them (retrying with backoff) while the store is unreachable.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from brokers.base import BaseBroker, Instrument, TickData
from candles.aggregator import CandleAggregator
from candles.model import Candle, Interval
from storage.base import CandleStore, StoreError, StoreUnavailable

log = logging.getLogger(__name__)

_WRITE_BATCH = 2_000
_WRITE_LINGER = 0.2  # seconds the writer waits to fill a batch
_BACKOFF_MAX = 30.0


@dataclass(slots=True)
class ServiceStats:
    ticks: int = 0
    candles_written: int = 0
    store_errors: int = 0
    rejected_candles: int = 0
    oldest_pending: float | None = None  # monotonic time of the oldest candle not yet written


class Service:
    def __init__(
        self,
        broker: BaseBroker,
        store: CandleStore,
        instruments: Sequence[Instrument],
        intervals: Sequence[Interval],
        *,
        clock: Callable[[], float] = time.time,
        grace: float = 2.0,
        emit_empty: bool = False,
        status_interval: float = 30.0,
    ) -> None:
        self.broker = broker
        self.store = store
        self.instruments = list(instruments)
        self.clock = clock
        self.status_interval = status_interval
        self.aggregator = CandleAggregator(intervals, clock, grace=grace, emit_empty=emit_empty)
        self.stats = ServiceStats()
        self._ticks: queue.Queue[Sequence[TickData] | None] = queue.Queue()
        self._candles: queue.Queue[list[Candle] | None] = queue.Queue()
        self._stop = threading.Event()
        self._pipeline = threading.Thread(target=self._run_pipeline, name="pipeline", daemon=True)
        self._writer = threading.Thread(target=self._run_writer, name="writer", daemon=True)

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._resume_open_buckets()
        self._pipeline.start()
        self._writer.start()
        self.broker.subscribe(self.instruments)
        self.broker.connect(self._on_ticks)
        log.info(
            "streaming %d instruments from %s into %s",
            len(self.instruments),
            self.broker.name,
            self.store.description,
        )

    def request_stop(self) -> None:
        self._stop.set()

    def wait(self, duration: float | None = None) -> None:
        """Block until stop is requested (or ``duration`` wall seconds), printing status."""
        deadline = None if duration is None else time.monotonic() + duration
        last_status = time.monotonic()
        last_ticks = 0
        while not self._stop.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            timeout = self.status_interval - (now - last_status)
            if deadline is not None:
                timeout = min(timeout, deadline - now)
            if self._stop.wait(max(0.0, timeout)):
                break
            if time.monotonic() - last_status >= self.status_interval:
                elapsed = time.monotonic() - last_status
                ticks = self.stats.ticks
                self._log_status((ticks - last_ticks) / elapsed)
                last_status, last_ticks = time.monotonic(), ticks

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the feed, flush open candles as non-final, drain the writer. True when all
        candles reached the store."""
        self._stop.set()
        self.broker.disconnect()
        self._ticks.put(None)
        self._pipeline.join(timeout)
        self._writer.join(timeout)
        drained = not self._writer.is_alive() and self._candles.empty()
        if not drained:
            log.error("shutdown: the store did not accept every candle in %.0fs", timeout)
        return drained

    # ---- threads ---------------------------------------------------------------------------
    def _on_ticks(self, batch: Sequence[TickData]) -> None:
        self._ticks.put(batch)

    def _resume_open_buckets(self) -> None:
        since = self.clock() - 86_400
        try:
            seeds = self.store.latest_per_series(since)
        except StoreError as exc:
            log.warning("could not read the latest candles to resume open buckets: %s", exc)
            return
        if seeds:
            self.aggregator.seed(seeds)
            log.info("resumed %d series from the store", len(seeds))

    def _run_pipeline(self) -> None:
        agg = self.aggregator
        out = self._candles
        stats = self.stats
        get = self._ticks.get
        try:
            while True:
                try:
                    batch = get(timeout=0.1)
                except queue.Empty:
                    batch = ()
                if batch is None:
                    break
                if batch:
                    stats.ticks += len(batch)
                    revised = agg.add(batch)
                    if revised:
                        out.put(revised)
                closed = agg.advance()
                if closed:
                    out.put(closed)
            # shutdown: drain what the feed already handed over, then flush open buckets
            while True:
                try:
                    batch = self._ticks.get_nowait()
                except queue.Empty:
                    break
                if batch:
                    stats.ticks += len(batch)
                    out.put(agg.add(batch))
            out.put(agg.advance())
            open_candles = agg.flush()
            out.put(open_candles)
            log.info("shutdown: flushed %d open candles as non-final", len(open_candles))
        except Exception:
            log.exception("the pipeline thread failed")
        finally:
            out.put(None)

    def _run_writer(self) -> None:
        pending: list[Candle] = []
        backoff = 1.0
        finished = False
        while not (finished and not pending):
            if not finished:
                finished = self._collect(pending)
            if not pending:
                continue
            try:
                self.store.upsert(pending)
            except StoreUnavailable as exc:
                self.stats.store_errors += 1
                log.warning("store unavailable, %d candles kept for retry in %.0fs: %s", len(pending), backoff, exc)
                if finished and self._stop.is_set() and backoff >= _BACKOFF_MAX:
                    log.error("giving up on %d candles at shutdown: store unreachable", len(pending))
                    return
                time.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            except StoreError as exc:
                # The store refuses the batch itself (not its connection): find the candles it
                # refuses one by one, so one bad candle cannot hold back everything behind it.
                self.stats.store_errors += 1
                log.error("store rejected a batch of %d candles: %s; retrying one by one", len(pending), exc)
                pending[:] = self._write_one_by_one(pending)
                continue
            self.stats.candles_written += len(pending)
            pending.clear()
            self.stats.oldest_pending = None
            backoff = 1.0

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
        return []

    def _collect(self, pending: list[Candle]) -> bool:
        """Move queued candles into ``pending`` (waiting briefly to fill a batch).
        Returns True once the pipeline has said it is done."""
        deadline = time.monotonic() + _WRITE_LINGER
        while len(pending) < _WRITE_BATCH:
            try:
                item = self._candles.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return False
            if item is None:
                return True
            if item and self.stats.oldest_pending is None:
                self.stats.oldest_pending = time.monotonic()
            pending.extend(item)
        return False

    # ---- reporting -------------------------------------------------------------------------
    def store_lag(self) -> float:
        oldest = self.stats.oldest_pending
        return 0.0 if oldest is None else time.monotonic() - oldest

    def _log_status(self, ticks_per_second: float) -> None:
        agg = self.aggregator.stats
        log.info(
            "status: %.1f ticks/s, %d ticks, %d candles written, queue depth %d, store lag %.1fs, "
            "late ticks %d, dropped %d, feed %s",
            ticks_per_second,
            self.stats.ticks,
            self.stats.candles_written,
            self._ticks.qsize(),
            self.store_lag(),
            agg.late_ticks,
            agg.dropped_ticks,
            "up" if self.broker.is_connected() else f"DOWN ({self.broker.problem})" if self.broker.problem else "DOWN",
        )
