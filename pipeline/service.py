"""Wires broker -> aggregator -> writer: owns the pipeline thread, the status line and shutdown.

Threads: the broker's own socket threads hand batches of ticks to one queue, journalling each
batch first (pipeline/journal.py) so that a killed daemon resumes its open buckets; the pipeline
thread aggregates them and closes buckets on the clock; the writer thread (pipeline/writer.py)
makes closed candles durable and stores them. ``health()`` is the one reading of how all of it
goes (pipeline/health.py).
"""

from __future__ import annotations

import logging
import pickle
import queue
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from brokers.base import BaseBroker, History, WatchChange
from candles import snapshot
from candles.aggregator import CandleAggregator
from candles.model import Candle, Interval
from core.ist import IST
from core.market_calendar import MarketCalendar
from core.progress import progress
from core.ticks import Instrument, TickData
from pipeline.backfill import MAX_SPAN_DAYS, Backfiller, Filled
from pipeline.coverage import Coverage, Key, Span, day_bounds, in_sessions
from pipeline.ha import LEADER
from pipeline.health import ArchiveReport, BusReport, Health
from pipeline.journal import TickJournal
from pipeline.reconcile import DailyReconciler
from pipeline.universe import Universes
from pipeline.writer import Checkpoint, Watched, Writer
from storage.base import CandleStore, StoreError, WatchRecord
from storage.spool import Spool
from version import __version__

log = logging.getLogger(__name__)

_CHECKPOINT_RETRY_S = 5.0  # after a failed checkpoint (a full disk): the next try


def _disk_words(what: str, exc: OSError) -> str:
    """``what: no space left on device (Errno 28)``: a disk fault as health words it."""
    reason = (exc.strerror or str(exc)).lower()
    return f"{what}: {reason} (Errno {exc.errno})" if exc.errno else f"{what}: {reason}"


class Publisher(Protocol):
    """What the service needs of a publisher (publishers.mqtt.MqttPublisher): started with the
    service's health source, told of every candle the store accepted."""

    def start(self, health: Callable[[], Health]) -> None: ...
    def stop(self) -> None: ...
    def publish_candles(self, candles: list[Candle]) -> None: ...
    @property
    def problem(self) -> str | None:
        """What keeps it from publishing (shown as a health note), None when fine."""


class Archive(Protocol):
    """The tick archive (pipeline.archive.TickArchiver): handed each batch the aggregator took, on
    the pipeline thread, by one call that never blocks; started once the open buckets are resumed
    (``fresh``: none was), stopped after the pipeline drained."""

    def put(self, batch: Sequence[TickData]) -> None: ...
    def start(self, fresh: bool = False) -> None: ...
    def stop(self, timeout: float = 30.0) -> None: ...
    def report(self) -> ArchiveReport: ...


class Bus(Publisher, Protocol):
    """A publisher of ticks too (publishers.nats.NatsPublisher): handed each batch on the pipeline
    thread by one call that must never block (a bounded queue; a full one drops and counts). Its
    problem is the daemon's (``degraded``), not a note."""

    def publish_ticks(self, batch: Sequence[TickData]) -> None: ...
    def report(self) -> BusReport: ...


@dataclass(slots=True)
class ServiceStats:
    ticks: int = 0
    last_tick: float | None = None  # monotonic time the last batch of ticks arrived
    journal_errors: int = 0


class _ReplayClock:
    """The restored aggregator's clock: while the journal is added again, the time its batch was
    received (``at``); then the daemon's clock."""

    __slots__ = ("real", "at")

    def __init__(self, real: Callable[[], float]) -> None:
        self.real = real
        self.at: float | None = None

    def __call__(self) -> float:
        return self.real() if self.at is None else self.at


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
        publishers: Sequence[Publisher] = (),
        spool: Spool,
        journal: TickJournal | None = None,
        checkpoint_seconds: float = 60.0,
        after_checkpoint: Callable[[], object] | None = None,
        pipeline_max_age: float = 10.0,
        calendar: MarketCalendar | None = None,
        history: History | None = None,
        backfill_delay: float = 60.0,
        bus: Bus | None = None,
        ha: Any = None,
        archive: Archive | None = None,
    ) -> None:
        self.broker = broker
        self.store = store
        self.instruments = list(instruments)
        self.clock = clock
        self.status_interval = status_interval
        self.aggregator = CandleAggregator(intervals, clock, grace=grace, emit_empty=emit_empty)
        self.stats = ServiceStats()
        #: the message bus: a publisher of candles like the others, and of every batch of ticks
        self.bus = bus
        self.publishers = list(publishers) + ([bus] if bus is not None else [])
        self.spool = spool
        self.journal = journal
        self.checkpoint_seconds = checkpoint_seconds
        #: called on the pipeline thread after each journal checkpoint (the wiring passes the
        #: allocator's trim: once a minute, mid-bucket, the C heap's free pages go back)
        self.after_checkpoint = after_checkpoint
        #: seconds without a pipeline loop after which the pipeline counts as stuck
        self.pipeline_max_age = pipeline_max_age
        self._processed = 0  # number of the last journalled batch the aggregator has taken
        self.started_at = time.time()
        # (journal number, batch), what the feed began or stopped watching, or what a backfill filled
        self._ticks: queue.Queue[tuple[int, Sequence[TickData]] | WatchChange | Filled | None] = queue.Queue()
        self._candles: queue.Queue[list[Candle] | Checkpoint | None] = queue.Queue()
        self.writer = Writer(
            store,
            spool,
            self._candles,
            on_stored=[p.publish_candles for p in self.publishers],
            on_spooled=None if journal is None else journal.release,
            ha=ha,
        )
        self.ha = ha  # pipeline.ha.HaRole: hot standby (None: this daemon always writes)
        self.archive = archive  # every batch the aggregator takes, as Parquet (None: TICK_ARCHIVE_DIR unset)
        self._resumed = False  # the start resumed open buckets (from the journal or the store)
        self._stop = threading.Event()
        self._change_lock = threading.Lock()
        #: the watchlist's derivatives universes (the wiring sets them before ``start``): the
        #: pipeline thread hands them each batch for their references' prices
        self.universes: Universes | None = None
        #: why the daemon is stopping on its own: a thread died (``fail``); None while all is well
        self.failure: str | None = None
        #: what the tick journal's disk said while the journal misses a batch (a kill would lose
        #: open buckets' ticks); cleared by the first checkpoint taken after that batch was added
        self.journal_fault: str | None = None
        self._journal_hole: Sequence[TickData] | None = None  # the latest batch the journal missed
        self._hole_added: Sequence[TickData] | None = None  # the latest such batch the aggregator took
        self._checkpoint_error_logged = -60.0  # monotonic time a failed checkpoint was last logged
        self._pipeline_beat: float | None = None  # monotonic time of the pipeline's latest loop (liveness)
        self._pipeline = threading.Thread(target=self._run_pipeline, name="pipeline", daemon=True)
        #: the sessions gaps are counted in; None until it is known (the daemon sets it when loaded)
        self.calendar = calendar
        self.coverage = Coverage()  # the watched spans (pipeline thread)
        self.run_id = uuid.uuid4().hex  # this run's spans in the store
        self.gaps_open: int | None = None  # today's gap minutes so far (Coverage.gap_minutes)
        #: mends the unwatched buckets from the broker's history (None: no history configured)
        self.backfill = (
            None
            if history is None
            else Backfiller(
                history,
                intervals,
                self._candles.put,
                self._ticks.put,
                lambda: self.calendar,
                delay=backfill_delay,
                clock=clock,
                reconciler=self._reconciler(history, intervals, backfill_delay),
                active=None if ha is None else (lambda: ha.leading),
            )  # fmt: skip
        )

    def _reconciler(self, history: History, intervals: Sequence[Interval], delay: float) -> DailyReconciler | None:
        """The daily check against the broker's history: it compares 1m candles."""
        if "1m" not in {iv.name for iv in intervals}:
            log.info("daily reconciliation: off (it compares 1m candles, and CANDLE_INTERVALS has no 1m)")
            return None
        return DailyReconciler(history, self.store, self.keys, delay=delay, clock=self.clock)

    def keys(self) -> list[Key]:
        """The watchlist now, as (exchange, symbol) pairs."""
        return [(i.exchange, i.symbol) for i in self.instruments]

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self.coverage.seen.update(self.keys())  # the start declares their unwatched time (below)
        if self.spool.depth:
            log.info("the spool holds %d candles from an earlier run: writing them first", self.spool.depth)
            self.writer.replay_spool()  # before resuming open buckets from the store, so that it is complete
        if not self._recover_from_journal():
            self._resume_open_buckets()
            self._declare_start(self.aggregator)
        else:
            self._resumed = True
        if self.journal is not None:
            self._checkpoint()
        if self.archive is not None:
            self.archive.start(fresh=not self._resumed)
        self.writer.start()  # before the pipeline: a stop between the two finds no pipeline without its writer
        self._pipeline.start()
        self._load_coverage()
        if self.backfill is not None:
            self._want_missed_since_last_run()
            self.backfill.start()
        self.broker.watch(self._ticks.put)  # WatchChange items, in order with the batches
        self.broker.subscribe(self.instruments)
        self.broker.connect(self._on_ticks)
        for publisher in self.publishers:
            publisher.start(self.health)
        n = len(self.instruments)
        log.info(
            "streaming %d instrument%s from %s into %s",
            n,
            "" if n == 1 else "s",
            self.broker.name,
            self.store.description,
        )

    def _checkpoint(self) -> bool:
        """Snapshot the aggregator into a new journal segment (pipeline thread, or before it runs).
        A snapshot taken after the journal missed a batch covers it: the journal is whole again."""
        assert self.journal is not None
        hole = self._journal_hole
        covered = hole is None or self._hole_added is hole
        try:
            seq = self.journal.checkpoint(snapshot.snapshot_chunks(self.aggregator), self._processed)
        except (OSError, pickle.PicklingError) as exc:
            if isinstance(exc, OSError):
                self.journal_fault = _disk_words(f"tick journal {self.journal.dir}", exc)
            now = time.monotonic()
            if now - self._checkpoint_error_logged >= 60.0:  # retried every few seconds: said once a minute
                self._checkpoint_error_logged = now
                log.error("journal checkpoint failed (%s): a kill now would lose the open buckets' ticks", exc)
            return False
        if covered and self.journal_fault is not None and self._journal_hole is hole:
            self._journal_hole = None
            self.journal_fault = None
            log.info("tick journal %s: writable again, and whole from this checkpoint on", self.journal.dir)
        self._candles.put(Checkpoint(seq))
        if self.after_checkpoint is not None:
            self.after_checkpoint()
        return True

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
            recovered = self.journal.recover(self.broker.frame_codecs())
        except Exception as exc:  # noqa: BLE001 - an unreadable journal must not stop every later start
            log.warning("ignoring an unreadable tick journal in %s: %s", self.journal.dir, exc)
            return False
        if recovered is None:
            return False
        state, batches = recovered
        try:
            restored, candles = self._restore(state, batches)
        except Exception as exc:  # noqa: BLE001 - whatever is wrong with it, the store is the way back
            log.warning(
                "ignoring the tick journal in %s (it cannot be restored: %s: %s): resuming from the store",
                self.journal.dir, type(exc).__name__, exc,
            )  # fmt: skip
            return False
        if restored is None:
            return False
        self.aggregator = restored
        self._processed = self.journal.number
        for part in candles:
            self._candles.put(part)
        log.info("resumed the open buckets from the tick journal (%d batches added again)", len(batches))
        return True

    def _restore(self, state: object, batches: list) -> tuple[CandleAggregator | None, list[list[Candle]]]:
        """The aggregator of the journal's snapshot with its batches added again, and the candles
        that produced; None (with a warning) when it was written with other candle settings."""
        assert self.journal is not None
        clock = _ReplayClock(self.clock)
        restored = snapshot.restore(state, clock)  # type: ignore[arg-type]
        wanted = self.aggregator
        differs = [
            what
            for what, theirs, ours in (
                ("intervals", [i.name for i in restored.intervals], [i.name for i in wanted.intervals]),
                ("CANDLE_GRACE_SECONDS", restored.grace, wanted.grace),
                ("CANDLE_EMIT_EMPTY", restored.emit_empty, wanted.emit_empty),
            )
            if theirs != ours
        ]
        if differs:
            log.warning(
                "the tick journal in %s was written for other %s: resuming from the store",
                self.journal.dir, " and ".join(differs),
            )  # fmt: skip
            return None, []
        candles = []
        # Each batch is added at the time it was received, and the buckets due by then close as they
        # did live: a bucket that closed before the kill takes its ticks as an open bucket, not as
        # late ticks each revising a closed candle (a minute of journal would write a revision per tick).
        now = self.clock()
        with progress("adding the tick journal's batches again", len(batches), "batches") as bar:
            for batch in batches:
                if batch:
                    received = batch[-1].receive_ts.timestamp()
                    if clock.at is None or received > clock.at:
                        clock.at = min(received, now)
                revised = restored.add(batch)
                if revised:
                    candles.append(revised)
                closed = restored.advance()
                if closed:
                    candles.append(closed)
                bar.update()
        clock.at = None  # the wall clock from here on
        # the buckets open at the kill were cut short at its newest tick: partial, before they close below
        self._declare_start(restored)
        closed = restored.advance()
        if closed:
            candles.append(closed)
        return restored, candles

    def request_stop(self) -> None:
        self._stop.set()

    def fail(self, reason: str) -> None:
        """A fault the daemon cannot ride out (a thread died): health turns ``failed`` and ``wait``
        returns, so the daemon stops in order and exits non-zero for systemd to restart it. The
        first reason is kept."""
        if self.failure is None:
            self.failure = reason
            log.error("failing: %s; stopping so that the daemon is restarted", reason)
        self._stop.set()

    def thread_died(self, args: threading.ExceptHookArgs) -> None:
        """``threading.excepthook`` while the service runs: no thread dies unnoticed. Its traceback
        is logged once, and the daemon fails."""
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "a thread"
        log.critical("thread %s died", name, exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
        self.fail(f"thread {name} died ({args.exc_type.__name__}: {args.exc_value})")

    def change_instruments(self, instruments: Sequence[Instrument]) -> tuple[list[Instrument], list[Instrument]]:
        """Stream ``instruments`` from now on, on the live feed: the new ones subscribed, the others
        unsubscribed (their open buckets close on the clock as usual). Returns (added, removed)."""
        with self._change_lock:  # the SIGHUP reload and the universes' re-centring
            current = {i.key: i for i in self.instruments}
            wanted = {i.key: i for i in instruments}
            removed = [i for k, i in current.items() if k not in wanted]
            added = [i for k, i in wanted.items() if k not in current]
            if removed:
                self.broker.unsubscribe(removed)
            try:
                if added:
                    self.broker.subscribe(added)
            except BaseException:
                if removed:
                    self.broker.subscribe(removed)  # back to the watchlist it had
                raise
            self.instruments = list(wanted.values())
            return added, removed

    def wait(self, duration: float | None = None, poll: Callable[[], object] | None = None, poll_every: float = 0.2) -> None:
        """Block until stop is requested (or ``duration`` wall seconds), printing status; ``poll`` is
        called on this thread every ``poll_every`` seconds (the daemon's signal flags)."""
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
            if poll is not None:
                timeout = min(timeout, poll_every)
            if self._stop.wait(max(0.0, timeout)):
                break
            if poll is not None:
                poll()
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
        if self.backfill is not None:
            self.backfill.stop()  # before the writer drains: nothing is handed over after it
        if self._pipeline.ident is None:  # stopped during start(), before the pipeline ran
            if self.archive is not None:
                self.archive.stop()
            self._candles.put(None)
            if self.writer.is_alive():
                self.writer.join(timeout)
            return True  # what the journal's recovery queued and the writer did not take, the journal keeps
        self._ticks.put(None)
        self._pipeline.join(timeout)
        if self.archive is not None:
            self.archive.stop()  # every batch the pipeline took is in its queue by now
        self.writer.join(timeout)
        drained = not self.writer.is_alive() and self._candles.empty()
        if not drained:
            log.error("shutdown: the store did not accept every candle in %.0fs", timeout)
        for publisher in self.publishers:
            publisher.stop()
        return drained

    # ---- threads ---------------------------------------------------------------------------
    def _on_ticks(self, batch: Sequence[TickData]) -> None:
        """The feed's callback, on its connection threads. A feed catches what its callback raises
        (brokers/feed.py: a failing sink must not kill the connection) and goes on, so a batch this
        cannot take would be lost in silence: it fails the daemon instead (the supervisor rule)."""
        try:
            journal = self.journal
            if journal is None:
                self._ticks.put((0, batch))
                return
            with journal.lock:  # one lock per batch: the journal's order is the queue's order
                try:
                    number = journal.append(batch)
                except OSError as exc:  # a full disk must not stop the feed: the journal is a safety net
                    number = journal.number
                    self._journal_failed(exc, batch)
                self._ticks.put((number, batch))
        except Exception as exc:
            if self.failure is None:
                log.critical("a batch of %d ticks could not be taken from the feed", len(batch), exc_info=True)
            self.fail(f"the feed's ticks could not be taken ({type(exc).__name__}: {exc})")

    def _journal_failed(self, exc: OSError, batch: Sequence[TickData]) -> None:
        """A batch the journal could not keep: a kill before the next checkpoint would lose it, so
        health says so until a checkpoint covers it (the pipeline takes one within seconds)."""
        assert self.journal is not None
        self._journal_hole = batch
        self.journal_fault = _disk_words(f"tick journal {self.journal.dir}", exc)
        self.stats.journal_errors += 1
        if self.stats.journal_errors % 1000 == 1:
            log.error("tick journal write failed (%s): a kill now would lose open buckets' ticks", exc)

    def _load_coverage(self) -> None:
        """Today's watched spans of earlier runs (gaps count from them)."""
        today = datetime.fromtimestamp(self.clock(), IST).date()
        try:
            self.coverage.load(self.store.watched(*day_bounds(today)))
        except StoreError as exc:
            log.warning("could not read today's watched spans (today's gaps count from this start): %s", exc)

    def _want_missed_since_last_run(self) -> None:
        """At a start: each symbol's buckets from its last watched (or known) moment in the store,
        within the backfill's reach, to now; a symbol never watched, its current buckets."""
        assert self.backfill is not None
        now = self.clock()
        keys = self.keys()
        try:
            spans = self.store.watched(now - MAX_SPAN_DAYS * 86_400.0, now, keys)
        except StoreError as exc:
            log.warning("could not read the watched spans (backfill mends only the current buckets): %s", exc)
            spans = {}
        fresh = min(iv.bucket_start(now) for iv in self.aggregator.intervals)
        since: dict[float, list[tuple[str, str]]] = {}
        for key in keys:
            last = max((ended for _, ended in spans.get(key, ())), default=None)
            since.setdefault(fresh if last is None else min(last, now), []).append(key)
        for began, grouped in since.items():
            self.backfill.want(grouped, began, now)

    def _watch_changed(self, change: WatchChange) -> None:
        """Pipeline thread: candle rule 8 for symbols whose connection came back, and the record."""
        unwatched, record = self.coverage.change(change)
        if not change.up:  # rule 8 now: a bucket closing before the connection is back is not live
            calendar = self.calendar
            revised = self.aggregator.went_down(
                change.at, change.keys,
                None if calendar is None else lambda key, a, b: in_sessions(calendar, key[0], a, b, key[1]) != [],
            )  # fmt: skip
            if revised:  # closed live between the last frame and the drop being noticed: partial after all
                self._candles.put(revised)
        for since, keys in unwatched:
            self._declare_unwatched(self.aggregator, since, change.at, keys)
            if self.backfill is not None:
                self.backfill.want(keys, since, change.at)
        self._candles.put(Watched(self.run_id, (record,)))

    def _filled(self, filled: Filled) -> None:
        """Pipeline thread: the history answered for a span: gaps leave it out, today and in the store."""
        for key in filled.keys:
            self.coverage.closed[key].append((filled.since, filled.until))
        self._candles.put(Watched("backfill", (WatchRecord("known", filled.since, filled.keys, filled.until),)))

    def _side_item(self, item: WatchChange | Filled) -> None:
        if type(item) is WatchChange:
            self._watch_changed(item)
        else:
            self._filled(item)

    def _declare_start(self, agg: CandleAggregator) -> None:
        """Candle rule 8 at a start: nothing was watched from the newest tick taken (the store's or
        the journal's) to now, nor from now until each symbol's connection is up; that second part
        is declared when it is up (``Coverage.change``), and joins the first."""
        now = self.clock()
        self._declare_unwatched(agg, agg.last_seen(), now)
        down = self.coverage.down
        for key in self.keys():
            down[key] = now

    def _declare_unwatched(self, agg: CandleAggregator, since: float, until: float, keys: list[Key] | None = None) -> None:
        """Candle rule 8: ``keys`` (every symbol when None: a start) were not watched from ``since``
        to ``until``. Only the parts in their exchange's sessions count (nothing trades outside
        them); while the calendar is not known, the whole span does."""
        calendar = self.calendar
        if calendar is None:
            agg.unwatched(since, until, keys)
            return
        if keys is None:
            keys = list(dict.fromkeys(self.keys() + agg.keys()))
        by_parts: dict[tuple[Span, ...] | None, list[Key]] = defaultdict(list)
        for key in keys:  # each symbol's own sessions (MCX's agricultural contracts close early)
            parts = in_sessions(calendar, key[0], since, until, key[1])
            by_parts[None if parts is None else tuple(parts)].append(key)
        for parts, group in by_parts.items():
            for a, b in [(since, until)] if parts is None else parts:
                agg.unwatched(a, b, group)

    def _count_gaps(self, now: float) -> None:
        """Pipeline thread: extend the open spans in the store and count today's gaps, once a minute."""
        record = self.coverage.extend(now)
        if record is None:
            return
        self._candles.put(Watched(self.run_id, (record,)))
        calendar = self.calendar
        if calendar is not None:
            self.gaps_open = self.coverage.gap_minutes(calendar, self.keys(), now)

    def _resume_open_buckets(self) -> None:
        since = self.clock() - 86_400
        try:
            seeds = self.store.latest_per_series(since)
        except StoreError as exc:
            log.warning("could not read the latest candles to resume open buckets: %s", exc)
            self._resumed = True  # unknown: the archive does not claim the day's earlier buckets
            return
        if seeds:
            self._resumed = True
            self.aggregator.seed(seeds)
            log.info("resumed %d series from the store", len(seeds))

    def _run_pipeline(self) -> None:
        agg = self.aggregator
        out = self._candles
        stats = self.stats
        get = self._ticks.get
        journal = self.journal
        to_bus = None if self.bus is None else self.bus.publish_ticks
        to_archive = None if self.archive is None else self.archive.put
        ha = self.ha  # of a hot-standby pair only the leader puts ticks on the bus
        next_checkpoint = time.monotonic() + self._checkpoint_delay()
        forced = -_CHECKPOINT_RETRY_S  # monotonic time of the last checkpoint taken early for a journal hole
        try:
            while True:
                self._pipeline_beat = time.monotonic()
                try:
                    item = get(timeout=0.1)
                except queue.Empty:
                    item = (self._processed, ())
                if type(item) is not tuple:
                    if item is None:
                        break
                    self._side_item(item)
                    continue
                self._processed, batch = item
                if batch:
                    stats.ticks += len(batch)
                    stats.last_tick = time.monotonic()
                    revised = agg.add(batch)
                    if revised:
                        out.put(revised)
                    if to_archive is not None:
                        to_archive(batch)
                    if to_bus is not None and (ha is None or ha.role == LEADER):
                        to_bus(batch)
                    universes = self.universes
                    if universes is not None:
                        universes.observe(batch)
                    if batch is self._journal_hole:
                        self._hole_added = batch
                closed = agg.advance()
                if closed:
                    out.put(closed)
                self._count_gaps(self.clock())
                if journal is not None:
                    now = time.monotonic()
                    hole = self._journal_hole
                    if hole is not None and self._hole_added is hole and now - forced >= _CHECKPOINT_RETRY_S:
                        forced = now  # make the journal whole again soon (at most every few seconds)
                        next_checkpoint = min(next_checkpoint, now)
                    if now >= next_checkpoint:
                        if self._checkpoint():
                            next_checkpoint = time.monotonic() + self._checkpoint_delay()
                        else:
                            next_checkpoint = time.monotonic() + _CHECKPOINT_RETRY_S
            # shutdown: drain what the feed already handed over, then flush open buckets
            while True:
                try:
                    item = self._ticks.get_nowait()
                except queue.Empty:
                    break
                if type(item) is not tuple:
                    if item is not None:
                        self._side_item(item)
                    continue
                self._processed, batch = item
                if batch:
                    stats.ticks += len(batch)
                    out.put(agg.add(batch))
                    if to_archive is not None:
                        to_archive(batch)
                    if to_bus is not None and (ha is None or ha.role == LEADER):
                        to_bus(batch)
            out.put(agg.advance())
            open_candles = agg.flush()
            out.put(open_candles)
            log.info("shutdown: flushed %d open candles as non-final", len(open_candles))
            if journal is not None:
                self._checkpoint()  # the next start resumes the open buckets from here
        except Exception as exc:
            log.exception("the pipeline thread failed")
            self.fail(f"thread pipeline died ({type(exc).__name__}: {exc})")
        finally:
            out.put(None)

    # ---- reporting -------------------------------------------------------------------------
    def spool_depth(self) -> int:
        """Closed candles the store has not taken yet (in the spool, or still queued for the writer)."""
        return self.writer.depth

    def health(self) -> Health:
        """One reading of how the daemon is doing: the status line, the MQTT heartbeat, /healthz and
        /metrics all read it."""
        now = time.monotonic()
        broker = self.broker
        written = self.writer.stats
        agg = self.aggregator.stats
        last = self.stats.last_tick
        return Health(
            stopping=self._stop.is_set(),
            time=datetime.now(IST),
            uptime_s=time.time() - self.started_at,
            broker=broker.name,
            broker_problem=broker.problem,
            connections=tuple(broker.connection_states()),
            symbols=len(self.instruments),
            ticks=self.stats.ticks,
            last_tick_age_s=None if last is None else now - last,
            candles_written=written.candles_written,
            rejected_candles=written.rejected_candles,
            store_errors=written.store_errors,
            spool_depth=self.spool_depth(),
            store=self.store.description,
            store_up=not written.store_down,
            late_ticks=agg.late_ticks,
            dropped_ticks=agg.dropped_ticks,
            pipeline_alive=self.pipeline_alive(self.pipeline_max_age),
            pipeline_max_age=self.pipeline_max_age,
            reauths=broker.reauths,
            version=__version__,
            malformed=dict(broker.feed_stats().malformed),
            journal_fault=self.journal_fault,
            failure=self.failure,
            notes=tuple(p.problem for p in self.publishers if p.problem and p is not self.bus) + self._backfill_notes(),
            bus=None if self.bus is None else self.bus.report(),
            archive=None if self.archive is None else self.archive.report(),
            universe=None if self.universes is None else self.universes.report(),
            spool_fault=written.spool_fault,
            store_fault=written.store_fault,
            candles_in_memory=written.in_memory,
            memory_limit=self.writer.memory_limit,
            candles_dropped=written.dropped,
            gaps_open=self.gaps_open,
            **self._backfill_health(),
            **self._ha_health(),
        )

    def _ha_health(self) -> dict[str, object]:
        ha = self.ha
        if ha is None:
            return {}
        return {"ha_role": ha.role, "ha_epoch": ha.epoch, "ha_problem": ha.problem, "ha_retained": ha.retained}

    def _backfill_notes(self) -> tuple[str, ...]:
        problem = None if self.backfill is None else self.backfill.problem
        return () if problem is None else (problem,)

    def _backfill_health(self) -> dict[str, object]:
        if self.backfill is None:
            return {}
        stats = self.backfill.stats
        reconciler = self.backfill.reconciler
        return {
            "reconcile_mismatches": None if reconciler is None else reconciler.mismatches,
            "reconcile_day": None if reconciler is None else reconciler.day,
            "backfill_pending": stats.pending,
            "backfill_candles": stats.candles,
            "backfill_requests": stats.requests,
            "backfill_refused": self.backfill.problem is not None,
        }

    def pipeline_alive(self, max_age: float) -> bool:
        """The pipeline thread runs and looped within ``max_age`` seconds (it loops at least every
        0.1 s, ticks or not). For the systemd watchdog: a stuck pipeline stops the petting."""
        beat = self._pipeline_beat
        return beat is not None and self._pipeline.is_alive() and time.monotonic() - beat <= max_age

    def _log_status(self, ticks_per_second: float) -> None:
        health = self.health()
        log.info(
            "status: %.1f ticks/s, %d ticks, %d candles written, queue depth %d, store lag %.1fs, spool %d, "
            "late ticks %d, dropped %d, feed %s, gap minutes today %s%s%s%s",
            ticks_per_second,
            health.ticks,
            health.candles_written,
            self._ticks.qsize(),
            self.writer.lag(),
            self.writer.stats.pending,
            health.late_ticks,
            health.dropped_ticks,
            health.feed_line(),
            "unknown" if health.gaps_open is None else health.gaps_open,
            "" if health.ha_role is None else f", {health.ha_line()}",
            f"; {health.state.upper()}: {'; '.join(health.problems)}" if health.problems else "",
            "".join(f"; {note}" for note in health.all_notes),
        )
