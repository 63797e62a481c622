"""The writer thread: closed candles go to the durable spool, then to the store.

A candle counts as accepted once it is in the spool (appended and fsynced). The writer upserts
batches into the store and empties the spool; while the store is unreachable it keeps the candles
in the spool (on disk, not in memory) and replays them in order, with backoff, when the store
answers again. A batch the store refuses is retried candle by candle: a candle the store refuses
alone is dropped and counted, so one bad row never blocks the rest.

A disk that refuses the spool (full, I/O error) never stops the writer: the closed candles wait
in memory, in order and with a revision replacing the version it revises, up to ``memory_limit``
candles (beyond it the oldest go, counted and logged), and are spooled, then stored, by the
writer itself once the disk takes them again (retries every few seconds). The journal is not
released meanwhile: what waits in memory is not accepted yet.

With hot standby on (``ha``, pipeline/ha.py) only the leader spools and writes: a standby's
closed candles go to ``ha`` (kept in memory for a takeover), and a write refused by the lease's
fence (``Fenced``) makes this daemon a standby and hands what its spool holds to ``ha`` too.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

from candles.model import Candle
from storage.base import CandleStore, Fenced, StorageFault, StoreError, StoreUnavailable, WatchRecord
from storage.spool import Spool

log = logging.getLogger(__name__)

_WRITE_BATCH = 2_000
_WRITE_LINGER = 0.2  # seconds the writer waits to fill a batch
_BACKOFF_MAX = 30.0
_FAULT_BACKOFF_MAX = 4.0  # retries of a refusing disk: freed space is used within seconds
_FAULT_LOG_EVERY = 60.0  # seconds between reminders that candles still wait in memory
MEMORY_LIMIT = 100_000  # closed candles kept in memory while the spool's disk refuses them


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Queued after the candles emitted before journal checkpoint ``seq``: once they are spooled,
    ``on_spooled(seq)`` lets the journal drop what came before it."""

    seq: int


@dataclass(frozen=True, slots=True)
class Watched:
    """Changes to the watched spans of daemon run ``run``, for the store (``record_watched``);
    written in order, retried every few seconds while the store refuses them."""

    run: str
    records: tuple[WatchRecord, ...]


_WATCHED_RETRY_S = 5.0


@dataclass(slots=True)
class WriterStats:
    candles_written: int = 0
    store_errors: int = 0
    rejected_candles: int = 0
    oldest_pending: float | None = None  # monotonic time of the oldest candle not yet written
    pending: int = 0  # candles the writer holds that the store has not accepted yet
    store_down: bool = False  # the last write failed because the store was unreachable
    store_fault: str | None = None  # what the store's own disk said, while it refuses writes
    spool_fault: str | None = None  # what the spool's disk said, while it refuses appends
    in_memory: int = 0  # closed candles waiting in memory for the spool's disk
    dropped: int = 0  # closed candles given up beyond the memory limit


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
        memory_limit: int = MEMORY_LIMIT,
        ha: Any = None,
    ) -> None:
        self.store = store
        self.spool = spool
        self.queue = candles
        self.on_stored = list(on_stored)  # told of every candle the store accepted (candle events)
        self.on_spooled = on_spooled
        self.stats = WriterStats()
        self.memory_limit = memory_limit
        self.ha = ha  # pipeline.ha.HaRole: decides what is written (None: everything)
        self._held: dict[tuple, Candle] = {}  # by key, in order: candles the spool's disk refused
        self._fault_since = 0.0  # monotonic time the spool's disk first refused
        self._fault_logged = 0.0
        self._release_after: int | None = None
        self._watched: list[Watched] = []  # changes to the watched spans the store has not taken yet
        self._watched_retry = 0.0  # monotonic time of the next try after a refusal
        #: held from each store write until its candles are handed to ``on_stored`` (``settle``)
        self._storing = threading.RLock()
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
        return self.stats.pending + self.stats.in_memory + self.queue.qsize()

    def settle(self, timeout: float) -> bool:
        """Return once no store write is between its commit and the hand-over of its candles to
        ``on_stored`` (False after ``timeout`` seconds: a write still hangs on the store). A reader
        that read the store and then settles has been handed every candle its read could have
        seen: the live stream's seam (ops/stream.py). The lock is let go at once: the writer waits
        on it for an instant at most."""
        if not self._storing.acquire(timeout=timeout):
            return False
        self._storing.release()
        return True

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
            if self.ha is not None:
                if spool.depth and not self.ha.leading:
                    backlog = not self._spool_to_standby()
                pending[:] = self.ha.admit(pending)
                if not pending and not backlog and not self._held:
                    stats.oldest_pending = None
            if self._watched and (finished or time.monotonic() >= self._watched_retry):
                self._write_watched()
            if pending:
                # durable once in the spool: this is when a candle counts as accepted
                if self._held or not self._append(pending):
                    self._hold(pending)  # behind the candles already waiting in memory
                    pending.clear()
                elif backlog:  # behind older candles: they go to the store in spool order
                    pending.clear()
            if self._release_after is not None and self.on_spooled is not None and not self._held:
                self._release(self._release_after)  # all emitted before that checkpoint is spooled
            stats.pending = spool.depth
            if backlog or self._held:
                if time.monotonic() < next_try and not finished:
                    continue
                if self._held and self._spool_held():
                    backlog = True
                if backlog and self.replay_spool():  # (a cleared spool frees its disk's space too)
                    backlog = False
                stats.pending = spool.depth
                if finished:  # shutdown: one last try; what the store does not take stays in the spool
                    break
                if backlog or self._held:
                    next_try = time.monotonic() + backoff
                    if self._held or stats.store_fault:  # a disk: freed space is used within seconds
                        backoff = min(backoff * 2, _FAULT_BACKOFF_MAX)
                        self._remind()
                    else:
                        log.warning("store unavailable: %d candles wait in the spool (%s); retrying in %.0fs",
                                    spool.depth, spool.path, backoff)  # fmt: skip
                        backoff = min(backoff * 2, _BACKOFF_MAX)
                else:
                    backoff = 1.0
                continue
            if not pending:
                if finished:
                    break
                continue
            with self._storing:  # the write and its publication, as one step for ``settle``
                try:
                    self.store.upsert(pending)
                except StoreUnavailable as exc:
                    stats.store_errors += 1
                    if not self._store_unavailable(exc):
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
            stats.store_fault = None
            pending.clear()
            if not self._clear_spool():
                backlog, next_try = True, time.monotonic() + backoff  # written again: upserts are idempotent
                continue
            stats.pending = 0
            stats.oldest_pending = None
            backoff = 1.0
        if self._watched:
            self._write_watched()
        stats.pending = spool.depth
        if spool.depth:
            log.warning("shutdown: %d candles remain in the spool %s; the next start writes them", spool.depth, spool.path)
        if self._held:
            log.error(
                "shutdown: %d closed candles could not be spooled (%s) and are lost; the tick journal "
                "was kept, so a start with space on the disk builds them again if it is still there",
                len(self._held), stats.spool_fault,
            )  # fmt: skip

    def _write_watched(self) -> None:
        """Record the changes to the watched spans, in order; kept for a later try when refused."""
        while self._watched:
            item = self._watched[0]
            try:
                self.store.record_watched(item.run, item.records)
            except StoreError as exc:
                if self._watched_retry == 0.0:  # once per outage
                    log.warning("the watched spans could not be recorded (%s): retrying", exc)
                self._watched_retry = time.monotonic() + _WATCHED_RETRY_S
                return
            self._watched.pop(0)
        self._watched_retry = 0.0

    # ---- a refusing disk ----------------------------------------------------------------------
    def _append(self, candles: list[Candle]) -> bool:
        """Spool ``candles``; False (the fault noted) when the disk refuses them."""
        try:
            self.spool.append(candles)
        except OSError as exc:
            self._spool_refused(exc)
            return False
        if not self._held:
            self.stats.spool_fault = None  # the disk answers again
        return True

    def _spool_refused(self, exc: OSError) -> None:
        stats = self.stats
        first = stats.spool_fault is None
        stats.spool_fault = f"spool {self.spool.path}: {disk_error(exc)}"
        if first:
            self._fault_since = self._fault_logged = time.monotonic()
            log.error(
                "%s: closed candles wait in memory (up to %d) and are spooled once the disk takes "
                "them again; free space on its filesystem (DATA_DIR)",
                stats.spool_fault, self.memory_limit,
            )  # fmt: skip

    def _hold(self, candles: list[Candle]) -> None:
        held = self._held
        for candle in candles:
            held[candle.key] = candle  # a revision replaces the version it revises, as the store would
        over = len(held) - self.memory_limit
        if over > 0:
            for key in list(islice(held, over)):
                del held[key]
            first = self.stats.dropped == 0
            self.stats.dropped += over
            if first:
                log.error(
                    "%d closed candles wait in memory, the limit: the oldest are dropped from now on "
                    "until the spool's disk takes them again (%s)",
                    self.memory_limit, self.stats.spool_fault,
                )  # fmt: skip
        self.stats.in_memory = len(held)

    def _spool_held(self) -> bool:
        """Spool what waits in memory, oldest first, a batch at a time (a disk with a little space
        takes some: the store then takes them and the cleared spool frees more); True once any went."""
        held = self._held
        spooled = 0
        while held:
            keys = list(islice(held, _WRITE_BATCH))
            if not self._append([held[k] for k in keys]):
                break
            for key in keys:
                del held[key]
            spooled += len(keys)
        self.stats.in_memory = len(held)
        if not held:
            self._spooled_from_memory(spooled)
        return spooled > 0

    def _spooled_from_memory(self, count: int) -> None:
        stats = self.stats
        log.warning(
            "spool %s writable again after %.1fs: the candles waiting in memory are spooled (the last %d now)%s",
            self.spool.path, time.monotonic() - self._fault_since, count,
            f" ({stats.dropped} were dropped beyond the limit of {self.memory_limit})" if stats.dropped else "",
        )  # fmt: skip
        stats.spool_fault = None

    def _remind(self) -> None:
        now = time.monotonic()
        if now - self._fault_logged >= _FAULT_LOG_EVERY:
            self._fault_logged = now
            stats = self.stats
            log.error(
                "the disk still refuses: %s; %d closed candles wait in the spool, %d in memory (limit %d), %d dropped",
                "; ".join(f for f in (stats.spool_fault, stats.store_fault) if f),
                stats.pending, len(self._held), self.memory_limit, stats.dropped,
            )  # fmt: skip

    def _clear_spool(self) -> bool:
        try:
            self.spool.clear()
        except OSError as exc:
            self._spool_refused(exc)
            return False
        return True

    def _release(self, seq: int) -> None:
        assert self.on_spooled is not None
        try:
            self.on_spooled(seq)
        except OSError as exc:  # a later checkpoint releases this one's segments too
            log.warning("could not release the tick journal before checkpoint %d: %s", seq, exc)
        self._release_after = None

    def _store_unavailable(self, exc: StoreUnavailable) -> bool:
        """Note the store's outage; True when it is its disk refusing (said here, the first time)."""
        stats = self.stats
        if isinstance(exc, Fenced):
            if self.ha is not None and self.ha.leading:
                self.ha.step_down(str(exc))
            return True
        stats.store_down = True
        if not isinstance(exc, StorageFault):
            stats.store_fault = None
            return False
        if stats.store_fault is None:
            self._fault_logged = time.monotonic()
            log.error("%s: closed candles wait in the spool %s", exc, self.spool.path)
        stats.store_fault = str(exc)
        return True

    def _spool_to_standby(self) -> bool:
        """A standby writes nothing: what the spool holds goes to ``ha``'s memory. True once it is empty."""
        try:
            for _offset, chunk in self.spool.chunks():
                self.ha.retain(chunk)
            self.spool.clear()
        except OSError as exc:
            self._spool_refused(exc)
            return False
        self.stats.pending = 0
        return True

    def replay_spool(self) -> bool:
        """Write what the spool holds, in order; True once all of it is in the store."""
        if self.ha is not None and not self.ha.leading:
            return False  # a standby's writer hands it to ``ha`` instead
        try:
            return self._replay()
        except OSError as exc:  # reading the spool failed (an I/O error): the candles stay in it
            self._spool_refused(exc)
            return False

    def _replay(self) -> bool:
        spool = self.spool
        for offset, chunk in spool.chunks():
            with self._storing:
                try:
                    self.store.upsert(chunk)
                except StoreUnavailable as exc:
                    self._store_unavailable(exc)
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
        self.stats.store_fault = None
        spool.clear()
        if self.stats.spool_fault is not None and not self._held:
            self.stats.spool_fault = None  # the disk answers again
        self.stats.oldest_pending = None
        return True

    def _write_one_by_one(self, candles: list[Candle]) -> list[Candle]:
        """Write each candle alone; drop (and log) the ones the store refuses. Returns the
        candles still pending because the store became unreachable."""
        for i, candle in enumerate(candles):
            with self._storing:
                try:
                    self.store.upsert([candle])
                except StoreUnavailable as exc:
                    self._store_unavailable(exc)
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
            if isinstance(item, Watched):
                last = self._watched[-1] if self._watched else None
                if last is not None and last.run == item.run and item.records[0].kind == "extend" == last.records[-1].kind:
                    self._watched[-1] = Watched(item.run, last.records[:-1] + item.records)  # the newer extend is enough
                else:
                    self._watched.append(item)
                continue
            if item and self.stats.oldest_pending is None:
                self.stats.oldest_pending = time.monotonic()
            pending.extend(item)
        return False


def disk_error(exc: OSError) -> str:
    """What the disk said, as an operator reads it: "no space left on device (Errno 28)"."""
    text = (exc.strerror or str(exc)).lower()
    return f"{text} (Errno {exc.errno})" if exc.errno else text
