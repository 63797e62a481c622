"""Wires broker → aggregator → store: owns the threads, the status line and shutdown.

Threads: the broker's own socket threads hand batches of ticks to one queue; the pipeline thread
aggregates them and closes buckets on the clock; the writer thread appends closed candles to the
durable spool, upserts them in batches, and while the store is unreachable keeps them in the spool
(on disk) and replays them, with backoff, when it answers again. The broker threads also journal
every batch (pipeline/journal.py) so that a killed daemon resumes its open buckets.
"""

from __future__ import annotations

import logging
import pickle
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from brokers.base import BaseBroker
from candles.aggregator import CandleAggregator
from candles.model import Candle, Interval
from core.ist import IST
from core.ticks import Instrument, TickData
from ops.malloc_tuning import release_free_memory
from pipeline.journal import TickJournal
from storage.base import CandleStore, StoreError, StoreUnavailable
from storage.spool import Spool
from version import __version__

log = logging.getLogger(__name__)

_WRITE_BATCH = 2_000
_WRITE_LINGER = 0.2  # seconds the writer waits to fill a batch
_BACKOFF_MAX = 30.0


@dataclass(frozen=True, slots=True)
class _Checkpoint:
    """Queued after the candles emitted before journal checkpoint ``seq``."""

    seq: int


class CandlePublisher(Protocol):
    """What the service needs of a publisher (publishers.mqtt.MqttPublisher)."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def publish_candles(self, candles: list[Candle]) -> None: ...


@dataclass(slots=True)
class ServiceStats:
    ticks: int = 0
    candles_written: int = 0
    store_errors: int = 0
    rejected_candles: int = 0
    oldest_pending: float | None = None  # monotonic time of the oldest candle not yet written
    pending: int = 0  # candles the writer holds that the store has not accepted yet
    last_tick: float | None = None  # monotonic time the last batch of ticks arrived
    store_down: bool = False  # the last write failed because the store was unreachable
    journal_errors: int = 0


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
        publisher: CandlePublisher | None = None,
        spool: Spool,
        journal: TickJournal | None = None,
        checkpoint_seconds: float = 60.0,
    ) -> None:
        self.broker = broker
        self.store = store
        self.instruments = list(instruments)
        self.clock = clock
        self.status_interval = status_interval
        self.aggregator = CandleAggregator(intervals, clock, grace=grace, emit_empty=emit_empty)
        self.stats = ServiceStats()
        self.publisher = publisher
        self.spool = spool
        self.journal = journal
        self.checkpoint_seconds = checkpoint_seconds
        self._release_after: int | None = None
        self._processed = 0  # number of the last journalled batch the aggregator has taken
        self.started_at = time.time()
        self._rate_mark: tuple[float, int] = (time.monotonic(), 0)
        self._ticks: queue.Queue[tuple[int, Sequence[TickData]] | None] = queue.Queue()  # (journal number, batch)
        self._candles: queue.Queue[list[Candle] | None] = queue.Queue()
        self._stop = threading.Event()
        self._pipeline_beat: float | None = None  # monotonic time of the pipeline's latest loop (liveness)
        self._pipeline = threading.Thread(target=self._run_pipeline, name="pipeline", daemon=True)
        self._writer = threading.Thread(target=self._run_writer, name="writer", daemon=True)

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        if self.spool.depth:
            log.info("the spool holds %d candles from an earlier run: writing them first", self.spool.depth)
            self._replay_spool()  # before resuming open buckets from the store, so that it is complete
        if not self._recover_from_journal():
            self._resume_open_buckets()
        if self.journal is not None:
            self._checkpoint()
        self._pipeline.start()
        self._writer.start()
        self.broker.subscribe(self.instruments)
        self.broker.connect(self._on_ticks)
        if self.publisher is not None:
            self.publisher.start()
        log.info(
            "streaming %d instruments from %s into %s",
            len(self.instruments),
            self.broker.name,
            self.store.description,
        )

    def _checkpoint(self) -> None:
        """Snapshot the aggregator into a new journal segment (pipeline thread, or before it runs)."""
        assert self.journal is not None
        try:
            seq = self.journal.checkpoint(self.aggregator.snapshot_chunks(), self._processed)
        except (OSError, pickle.PicklingError) as exc:
            log.error("journal checkpoint failed (%s): a kill now would lose the open buckets' ticks", exc)
            return
        self._candles.put(_Checkpoint(seq))
        release_free_memory()  # once a minute, mid-bucket: the C heap's free pages go back to the system

    def _checkpoint_delay(self) -> float:
        """Seconds to the next checkpoint: about ``checkpoint_seconds``, moved to the middle of the
        shortest interval's bucket so that its pause (about 0.1 s per 10,000 buckets) never delays
        the candles closing at bucket end + grace."""
        delay = self.checkpoint_seconds
        shortest = self.aggregator.intervals[0]
        width = shortest.seconds
        if width > 2 * delay:
            return delay
        at = self.clock() + delay
        phase = at - shortest.bucket_start(at)
        target = (self.aggregator.grace + width / 2) % width
        return delay + (target - phase) % width

    def _recover_from_journal(self) -> bool:
        """After a kill: restore the aggregator from the journal and add its ticks again."""
        if self.journal is None:
            return False
        try:
            recovered = self.journal.recover()
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError) as exc:
            log.warning("ignoring an unreadable tick journal in %s: %s", self.journal.dir, exc)
            return False
        if recovered is None:
            return False
        state, batches = recovered
        wanted = [i.name for i in self.aggregator.intervals]
        try:
            state = CandleAggregator.restore(state, self.clock)
        except (ValueError, TypeError) as exc:
            log.warning("ignoring the tick journal in %s (%s): resuming from the store", self.journal.dir, exc)
            return False
        if [i.name for i in state.intervals] != wanted:
            log.warning("the tick journal in %s was written for other intervals: resuming from the store", self.journal.dir)
            return False
        self.aggregator = state
        self._processed = self.journal.number
        for batch in batches:
            revised = state.add(batch)
            if revised:
                self._candles.put(revised)
        closed = state.advance()
        if closed:
            self._candles.put(closed)
        log.info("resumed the open buckets from the tick journal (%d batches added again)", len(batches))
        return True

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
        if self.publisher is not None:
            self.publisher.stop()
        return drained

    # ---- threads ---------------------------------------------------------------------------
    def _on_ticks(self, batch: Sequence[TickData]) -> None:
        journal = self.journal
        if journal is None:
            self._ticks.put((0, batch))
            return
        with journal.lock:  # one lock per batch: the journal's order is the queue's order
            try:
                number = journal.append(batch)
            except OSError as exc:  # a full disk must not stop the feed: the journal is a safety net
                number = journal.number
                self._journal_failed(exc)
            self._ticks.put((number, batch))

    def _journal_failed(self, exc: OSError) -> None:
        self.stats.journal_errors += 1
        if self.stats.journal_errors % 1000 == 1:
            log.error("tick journal write failed (%s): a kill now would lose open buckets' ticks", exc)

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
        journal = self.journal
        next_checkpoint = time.monotonic() + self._checkpoint_delay()
        try:
            while True:
                self._pipeline_beat = time.monotonic()
                try:
                    item = get(timeout=0.1)
                except queue.Empty:
                    item = (self._processed, ())
                if item is None:
                    break
                self._processed, batch = item
                if batch:
                    stats.ticks += len(batch)
                    stats.last_tick = time.monotonic()
                    revised = agg.add(batch)
                    if revised:
                        out.put(revised)
                closed = agg.advance()
                if closed:
                    out.put(closed)
                if journal is not None and time.monotonic() >= next_checkpoint:
                    self._checkpoint()
                    next_checkpoint = time.monotonic() + self._checkpoint_delay()
            # shutdown: drain what the feed already handed over, then flush open buckets
            while True:
                try:
                    item = self._ticks.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    continue
                self._processed, batch = item
                if batch:
                    stats.ticks += len(batch)
                    out.put(agg.add(batch))
            out.put(agg.advance())
            open_candles = agg.flush()
            out.put(open_candles)
            log.info("shutdown: flushed %d open candles as non-final", len(open_candles))
            if journal is not None:
                self._checkpoint()  # the next start resumes the open buckets from here
        except Exception:
            log.exception("the pipeline thread failed")
        finally:
            out.put(None)

    def _run_writer(self) -> None:
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
            if self._release_after is not None and self.journal is not None:
                self.journal.release(self._release_after)  # all emitted before that checkpoint is spooled
                self._release_after = None
            stats.pending = spool.depth
            if backlog:
                if time.monotonic() < next_try and not finished:
                    continue
                if finished:  # shutdown: one last try; what the store does not take stays in the spool
                    self._replay_spool()
                    break
                if self._replay_spool():
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

    def _replay_spool(self) -> bool:
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
        if self.publisher is None:
            return
        try:
            self.publisher.publish_candles(candles)
        except Exception:  # noqa: BLE001 - a publisher problem must not stop the store writer
            log.exception("publishing %d candle events failed", len(candles))

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
            if isinstance(item, _Checkpoint):
                self._release_after = item.seq  # released once what came before it is spooled
                return False
            if item and self.stats.oldest_pending is None:
                self.stats.oldest_pending = time.monotonic()
            pending.extend(item)
        return False

    # ---- reporting -------------------------------------------------------------------------
    def feeds(self) -> dict[str, bool]:
        """Connection id -> up, for per-feed availability."""
        states = getattr(self.broker, "connection_states", None)
        if states is None:
            return {"1": self.broker.is_connected()}
        return {str(s.id): s.connected for s in states()}

    def spool_depth(self) -> int:
        """Closed candles the store has not taken yet (in the spool, or still queued for the writer)."""
        return self.stats.pending + self._candles.qsize()

    def health(self) -> dict[str, Any]:
        """The heartbeat body: what an operator needs to tell at a glance whether all is well."""
        now = time.monotonic()
        feeds = self.feeds()
        up = sum(feeds.values())
        problems = []
        if self.broker.problem:
            problems.append(self.broker.problem)
        if up < len(feeds):
            problems.append(f"{len(feeds) - up} of {len(feeds)} feed connections down")
        if self.stats.store_down:
            problems.append(f"store {self.store.description} unreachable")
        mark_time, mark_ticks = self._rate_mark
        ticks = self.stats.ticks
        self._rate_mark = (now, ticks)
        last = self.stats.last_tick
        agg = self.aggregator.stats
        return {
            "state": "stopping" if self._stop.is_set() else "degraded" if problems else "running",
            "problems": problems,
            "time": datetime.now(IST).isoformat(timespec="seconds"),
            "uptime_s": round(time.time() - self.started_at, 1),
            "broker": self.broker.name,
            "connections_up": up,
            "connections_total": len(feeds),
            "symbols": len(self.instruments),
            "ticks_per_s": round((ticks - mark_ticks) / max(now - mark_time, 1e-9), 1),
            "ticks": ticks,
            "last_tick_age_s": None if last is None else round(now - last, 2),
            "candles_written": self.stats.candles_written,
            "spool_depth": self.spool_depth(),
            "late_ticks": agg.late_ticks,
            "dropped_ticks": agg.dropped_ticks,
            "store": self.store.description,
            "version": __version__,
        }

    def pipeline_alive(self, max_age: float) -> bool:
        """The pipeline thread runs and looped within ``max_age`` seconds (it loops at least every
        0.1 s, ticks or not). For the systemd watchdog: a stuck pipeline stops the petting."""
        beat = self._pipeline_beat
        return beat is not None and self._pipeline.is_alive() and time.monotonic() - beat <= max_age

    def store_lag(self) -> float:
        oldest = self.stats.oldest_pending
        return 0.0 if oldest is None else time.monotonic() - oldest

    def _log_status(self, ticks_per_second: float) -> None:
        agg = self.aggregator.stats
        log.info(
            "status: %.1f ticks/s, %d ticks, %d candles written, queue depth %d, store lag %.1fs, spool %d, "
            "late ticks %d, dropped %d, feed %s",
            ticks_per_second,
            self.stats.ticks,
            self.stats.candles_written,
            self._ticks.qsize(),
            self.store_lag(),
            self.stats.pending,
            agg.late_ticks,
            agg.dropped_ticks,
            "up" if self.broker.is_connected() else f"DOWN ({self.broker.problem})" if self.broker.problem else "DOWN",
        )
