"""The tick archive's thread: every batch the aggregator took, written as Parquet off the hot path.

The pipeline thread hands each batch over with ``put`` (a counter check and one ``put_nowait`` of
the batch it already holds: no copy, no conversion). Memory is bounded by ``max_ticks`` waiting:
a batch that would pass it is dropped and counted, its window's coverage line says so (``--replay
--verify`` then leaves that window's candles out), and health names the problem. The thread turns
batches into columns, one part file per (IST day, exchange) and window, a row group every
``storage.tick_archive.ROW_GROUP`` ticks, and closes the window's files every ``roll_seconds`` of
the daemon's clock (and at IST midnight, and at stop): closed files are final, fsynced, renamed
into view. A kill loses the unfinished window (at most ``roll_seconds`` of ticks, plus what waited
in the queue) and never touches a finished file; the next start removes the unreadable leftovers.

Why not from the tick journal: its records keep only what a candle needs (no token, no last
quantity, one receive time per batch), and its segments go as soon as the candles are spooled;
archiving from it would either widen every journal record on the feed threads or lose columns.
The queue only fills while the archive's disk stalls for the time ``max_ticks`` lasts (a million
ticks: about two minutes at 9,000 ticks/s); what it drops is counted and excluded from verification.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path

from core.ist import DAY, IST_OFFSET
from core.ticks import TickData
from pipeline.health import ArchiveReport
from storage import tick_archive as files

log = logging.getLogger(__name__)


class TickArchiver:
    def __init__(
        self,
        directory: str | Path,
        clock: Callable[[], float] = time.time,
        *,
        roll_seconds: float = 60.0,
        max_ticks: int = 1_000_000,
        compression_level: int = 3,
    ) -> None:
        self.root = Path(directory)
        self.clock = clock
        self.roll_seconds = roll_seconds
        self.max_ticks = max_ticks
        self.level = compression_level
        self.run = uuid.uuid4().hex[:8]
        self._queue: queue.SimpleQueue[Sequence[TickData] | None] = queue.SimpleQueue()
        self._put = 0  # ticks queued (pipeline thread only)
        self._taken = 0  # ticks taken off the queue (archive thread only)
        self.dropped = 0  # ticks not archived (queue full, write failure): pipeline and archive thread
        self._dropped_queue = 0  # of which the queue refused (pipeline thread only)
        self.archived = 0
        self.files_written = 0
        self.error: str | None = None
        self._error_window = -1
        self._thread = threading.Thread(target=self._run, name="tick-archive", daemon=True)
        self._open: dict[tuple[date, str], tuple[files.PartFile, files.Columns]] = {}
        self._micros = files._Micros()
        self._prices = files._Units()
        self._since = 0.0
        self._window = 0
        self._window_dropped = 0
        self._seen_dropped = 0

    def __repr__(self) -> str:
        return f"TickArchiver({str(self.root)!r})"

    # ---- pipeline thread --------------------------------------------------------------------
    def put(self, batch: Sequence[TickData]) -> None:
        """Hand over a batch the aggregator took; never blocks (beyond ``max_ticks`` waiting: dropped, counted)."""
        n = len(batch)
        if self._put - self._taken + n > self.max_ticks:
            self._dropped_queue += n
            return
        self._put += n
        self._queue.put_nowait(batch)

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self, fresh: bool = False) -> None:
        """Start the thread. ``fresh``: the daemon resumed no open bucket (nothing in the store or
        the journal from the last day), so this day's candles so far are all built from ticks it
        archives: the first window covers the IST day from its start."""
        self.root.mkdir(parents=True, exist_ok=True)
        for path in files.leftovers(self.root):
            log.warning("tick archive: removing %s, unfinished when an earlier run was killed (unreadable)", path)
            path.unlink(missing_ok=True)
        now = self.clock()
        self._since = (now + IST_OFFSET) // DAY * DAY - IST_OFFSET if fresh else now
        self._next = self._next_roll(now)
        self._thread.start()
        log.info("tick archive: every tick into %s (files closed every %gs)", self.root, self.roll_seconds)

    def stop(self, timeout: float = 30.0) -> None:
        """Write what waits, close the files and record the last window (after the pipeline stopped)."""
        if self._thread.ident is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("tick archive: not finished after %.0fs; its open window is lost", timeout)

    def report(self) -> ArchiveReport:
        error = self.error if self._window - self._error_window <= 1 else None
        return ArchiveReport(
            str(self.root), self.archived, self.dropped + self._dropped_queue, max(0, self._put - self._taken),
            self.files_written, error,
        )  # fmt: skip

    # ---- archive thread ---------------------------------------------------------------------
    def _next_roll(self, now: float) -> float:
        step = self.roll_seconds
        aligned = (now // step + 1) * step
        midnight = ((now + IST_OFFSET) // DAY + 1) * DAY - IST_OFFSET
        return min(aligned, midnight)

    def _run(self) -> None:
        get = self._queue.get
        while True:
            try:
                batch = get(timeout=0.25)
            except queue.Empty:
                batch = ()
            if batch is None:
                break
            if batch:
                self._taken += len(batch)
                self._take(batch)
            now = self.clock()
            if now >= self._next:
                self._roll(now)
                self._next = self._next_roll(now)
        self._roll(self.clock())

    def _failed(self, what: str, exc: Exception, ticks: int) -> None:
        self.dropped += ticks
        self._window_dropped += ticks
        words = f"{what}: {exc.strerror or exc}" if isinstance(exc, OSError) else f"{what}: {exc}"
        if self.error != words or self._window - self._error_window > 1:
            log.error("tick archive: %s (%d ticks not archived); the next window tries again", words, ticks)
        self.error = words
        self._error_window = self._window

    def _take(self, batch: Sequence[TickData]) -> None:
        first = batch[0]
        exchange = first.exchange
        day = files.ist_day(self._micros[first.exchange_ts])
        last = batch[-1]
        if (
            last.exchange == exchange
            and files.ist_day(self._micros[last.exchange_ts]) == day
            and all(t.exchange == exchange for t in batch)
        ):
            groups = {(day, exchange): batch}
        else:  # several exchanges, or IST midnight inside the batch
            groups = {}
            for t in batch:
                groups.setdefault((files.ist_day(self._micros[t.exchange_ts]), t.exchange), []).append(t)
        for key, ticks in groups.items():
            try:
                self._write(key, ticks)
            except files.ArchiveError as exc:  # before anything was added: only this batch's ticks
                self._failed(f"{key[1]} ticks of {key[0].isoformat()}", exc, len(ticks))
            except (OSError, ValueError, TypeError) as exc:  # the part file is unusable: all of it goes
                self._abandon(key, exc, len(ticks))

    def _write(self, key: tuple[date, str], ticks: Sequence[TickData]) -> None:
        part = self._open.get(key)
        if part is None:
            name = f"part-{round(self._since * 1e6):016d}-{self.run}"
            pf = files.PartFile(self.root, key[0], key[1], name, self.level)
            part = self._open[key] = (pf, files.Columns(self._micros, self._prices))
        pf, cols = part
        cols.extend(ticks)
        if len(cols) >= files.ROW_GROUP:
            pf.write(cols)

    def _abandon(self, key: tuple[date, str], exc: Exception, ticks: int) -> None:
        part = self._open.pop(key, None)
        lost = ticks
        if part is not None:
            pf, cols = part
            lost = pf.rows + len(cols)
            pf.abandon()
            name = pf.path.name
        else:
            name = "a new part file"
        self._failed(f"{key[1]} {name}", exc, lost)

    def _roll(self, now: float) -> None:
        """Close the window's files and record its coverage."""
        for key, (pf, cols) in list(self._open.items()):
            try:
                pf.write(cols)
                pf.finish()
            except (OSError, ValueError) as exc:
                self._abandon(key, exc, 0)
                continue
            self.archived += pf.rows
            self.files_written += 1
        self._open.clear()
        if len(self._micros) > 100_000:
            self._micros.clear()
        if len(self._prices) > 100_000:
            self._prices.clear()
        queued = self._dropped_queue  # read once: the pipeline thread adds to it
        from_queue = queued - self._seen_dropped
        self._seen_dropped = queued
        if from_queue:
            self._failed_queue(from_queue)
        dropped = self._window_dropped + from_queue
        try:
            files.record_coverage(self.root, self._since, now, dropped, self.run)
        except OSError as exc:
            self._failed("coverage file", exc, 0)
        self._since = now
        self._window += 1
        self._window_dropped = 0

    def _failed_queue(self, dropped: int) -> None:
        self.error = f"{dropped} ticks dropped: more than {self.max_ticks} waited (the archive's disk is slower than the feed)"
        self._error_window = self._window
        log.error("tick archive: %s", self.error)
