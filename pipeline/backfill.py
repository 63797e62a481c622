"""Automatic backfill: the buckets the daemon did not watch, mended from the broker's history.

The service hands the backfiller every unwatched span (``want(keys, since, until)``): at each
start, from each symbol's last watched moment (the store's watched spans) to the start, and for
the symbols of a feed connection that came back, from its last frame to its resubscription. For
each configured interval, the buckets the span overlaps inside the exchange's sessions (the
market calendar) are mended once the last of them has ended and the broker's history has settled
(``delay`` seconds after it: Kite finalises a minute shortly after it ends). Then one request per
symbol fetches the minutes of every bucket due, the coarser intervals are rolled up from them
(``candles.rollup``: the live rules), and the candles, ``backfill`` and final, go to the writer
like live ones (spool, store, MQTT). The store keeps a final live candle and never lets a
partial one replace a backfill one (candle rule 8), so the order in which the two arrive does
not matter.

A span whose minutes the history answered for (traded or not) counts as known from then on: it is
handed back (``on_filled``) so today's gaps and the ``watched`` table leave it out.

A request that fails (network, 5xx after the client's retries) is tried again after a backoff,
``ATTEMPTS`` times in all; a history refused for good (Kite's 403 for an app without the
historical add-on) is said once, as a health note, and the gaps stay recorded; a refused access
token is tried again every ``TOKEN_RETRY_S`` (a new ``--login`` mends it).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from brokers.base import BrokerError, History, HistoryUnavailable
from candles.model import BACKFILL, Candle, Interval
from candles.rollup import roll_up
from core.ist import IST
from core.market_calendar import MarketCalendar, bucket_close
from pipeline.reconcile import DailyReconciler

log = logging.getLogger(__name__)

Key = tuple[str, str]
ATTEMPTS = 4  # tries of a failing request before its buckets are left as gaps
RETRY_S = 30.0  # first backoff after a failed request (doubles)
TOKEN_RETRY_S = 300.0  # how often a refused access token is tried again
MAX_SPAN_DAYS = 60  # the longest span asked for (Kite serves 60 days of minutes per request)


@dataclass(frozen=True, slots=True)
class Filled:
    """Minutes ``[since, until)`` (epoch seconds) of ``keys`` the history answered for."""

    keys: tuple[Key, ...]
    since: float
    until: float


@dataclass(slots=True)
class BackfillStats:
    requests: int = 0  # history requests made (one per symbol and due time)
    candles: int = 0  # backfill candles handed to the writer
    failures: int = 0  # requests that failed (retried up to ATTEMPTS times)
    given_up: int = 0  # symbols' spans left as gaps after ATTEMPTS failures
    pending: int = 0  # bucket ranges waiting (for their end, the calendar, or a retry)


@dataclass(order=True, slots=True)
class _Job:
    """One interval's buckets ``[lo, hi)`` of one symbol, to mend from ``due`` (epoch seconds)."""

    due: float
    seq: int
    key: Key
    interval: Interval
    lo: float
    hi: float
    attempt: int = 0


class Backfiller:
    """The ``backfill`` thread (see the module's doc). ``emit`` takes a list of candles for the
    writer; ``on_filled`` a ``Filled``; ``calendar`` returns the market calendar or None until it
    is loaded (spans wait for it)."""

    def __init__(
        self,
        history: History,
        intervals: Sequence[Interval],
        emit: Callable[[list[Candle]], object],
        on_filled: Callable[[Filled], object],
        calendar: Callable[[], MarketCalendar | None],
        *,
        delay: float = 60.0,
        clock: Callable[[], float] = time.time,
        reconciler: DailyReconciler | None = None,
        active: Callable[[], bool] | None = None,
    ) -> None:
        self.history = history
        self.intervals = tuple(intervals)
        self._emit = emit
        self._on_filled = on_filled
        self._calendar = calendar
        self.delay = delay
        self._clock = clock
        self.stats = BackfillStats()
        #: the daily check against the broker, run on this thread after the close (None: off)
        self.reconciler = reconciler
        #: hot standby: asks the history (and reconciles) only while this is true; the spans wait
        self.active = active
        #: why the history cannot be asked (a refusal), for health; None while it answers
        self.problem: str | None = None
        self._lasting_refusal = False
        self._spans: list[tuple[tuple[Key, ...], float, float]] = []  # not yet turned into jobs
        self._jobs: list[_Job] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="backfill", daemon=True)

    # ---- any thread ----------------------------------------------------------------------------
    def want(self, keys: Sequence[Key], since: float, until: float) -> None:
        """Nobody watched ``keys`` from ``since`` to ``until`` (epoch seconds): mend their buckets."""
        if not keys or until <= since:
            return
        since = max(since, until - MAX_SPAN_DAYS * 86_400.0)
        with self._cond:
            if self._lasting_refusal:
                return
            self._spans.append((tuple(keys), since, until))
            self._cond.notify()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the request in hand; what is still waiting stays a gap (recorded)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.ident is not None:
            self._thread.join(timeout)

    # ---- the backfill thread -----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping:
                    wait = self._wait_s()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                if self._stopping:
                    return
            self.step()

    def step(self) -> None:
        """Plan the spans handed over and mend the buckets that are due: one turn of the thread's
        loop (tests call it with their own clock)."""
        calendar = self._calendar()
        if calendar is None:  # the calendar loads in a second or two: the spans wait for it
            return
        with self._cond:
            spans, self._spans = self._spans, []
        if spans:
            self._plan(calendar, spans)
        if self.active is not None and not self.active():
            return  # a standby: the leader mends; these wait until this daemon leads
        self._mend_due(calendar)
        if self.reconciler is not None and not self._lasting_refusal:
            day = self.reconciler.due(calendar)
            if day is not None:
                self.reconciler.run(calendar, day, self._is_stopping)

    def _is_stopping(self) -> bool:
        with self._cond:
            return self._stopping

    def _wait_s(self) -> float:
        """Seconds until there is something to do (0: now); called under the condition."""
        if self._spans:
            return 0.0 if self._calendar() is not None else 1.0
        idle = 3600.0 if self.reconciler is None else 60.0  # the daily check looks once a minute
        if not self._jobs:
            return idle
        if self.active is not None and not self.active():
            return 1.0  # a standby looks again each second
        return min(idle, self._jobs[0].due - self._clock())

    def _plan(self, calendar: MarketCalendar, spans: list[tuple[tuple[Key, ...], float, float]]) -> None:
        """Turn spans into jobs: per symbol and interval, the buckets the span's session time overlaps."""
        jobs = []
        for keys, since, until in spans:
            for key in keys:
                exchange, symbol = key
                try:  # the symbol's own sessions (MCX's agricultural contracts close early)
                    parts = calendar.in_sessions(exchange, since, until, symbol)
                except ValueError:  # an exchange the calendar does not know: nothing to measure against
                    continue
                if not parts:
                    continue
                for interval in self.intervals:
                    lo = interval.bucket_start(parts[0][0])
                    last = interval.bucket_start(parts[-1][1] - 1e-6)
                    hi = last + interval.seconds
                    due = bucket_end(calendar, key, last, hi) + self.delay
                    jobs.append(_Job(due, next(self._seq), key, interval, float(lo), float(hi)))
        with self._cond:
            for job in jobs:
                heapq.heappush(self._jobs, job)
            self.stats.pending = len(self._jobs)

    def _mend_due(self, calendar: MarketCalendar) -> None:
        """Every job due now, one request per symbol."""
        now = self._clock()
        with self._cond:
            due: dict[Key, list[_Job]] = {}
            while self._jobs and self._jobs[0].due <= now:
                job = heapq.heappop(self._jobs)
                due.setdefault(job.key, []).append(job)
            self.stats.pending = len(self._jobs)
        if not due:
            return
        try:
            self.history.prepare(list(due))
        except BrokerError as exc:  # the instrument list could not be had: everything waits a while
            log.warning("backfill: could not look the symbols up (%s): trying again in %.0f s", exc, RETRY_S)
            self._later([job for jobs in due.values() for job in jobs], RETRY_S)
            return
        symbols = list(due.items())
        for n, (key, jobs) in enumerate(symbols):
            if self._is_stopping():  # keep the rest for nobody: the next start asks for its own spans again
                return
            if not self._mend(calendar, key, jobs):
                self._later([job for _, rest in symbols[n:] for job in rest])
                return

    def _mend(self, calendar: MarketCalendar, key: Key, jobs: list[_Job]) -> bool:
        """Fetch and hand over one symbol's due buckets; False when the history refused (stop asking)."""
        lo = min(j.lo for j in jobs)
        hi = max(j.hi for j in jobs)
        asked_at = self._clock()
        self.stats.requests += 1
        try:
            minutes = self.history.minute_candles(key[0], key[1], datetime.fromtimestamp(lo, IST), datetime.fromtimestamp(hi, IST))
        except HistoryUnavailable as exc:
            self._refused(exc)
            return False
        except BrokerError as exc:
            self.stats.failures += 1
            self._retry(key, jobs, exc)
            return True
        if self.problem is not None and not self._lasting_refusal:
            log.info("backfill: %s answers again", self.history.name)
            self.problem = None
        if minutes is None:
            log.warning("backfill: %s does not know %s:%s: its gaps stay recorded", self.history.name, *key)
            return True
        exchange = key[0]
        kept = [
            replace(m, source=BACKFILL, final=True)
            for m in minutes
            if m.bucket.timestamp() + 60 <= asked_at and calendar.is_open(exchange, m.bucket, key[1])
        ]
        out: list[Candle] = []
        for job in jobs:
            inside = [m for m in kept if job.lo <= m.bucket.timestamp() < job.hi]
            out.extend(roll_up(inside, job.interval))
        if out:
            self._emit(out)
            self.stats.candles += len(out)
        known_until = min(hi, lo + 60 * ((asked_at - lo) // 60))
        if known_until > lo:
            self._on_filled(Filled((key,), lo, known_until))
        return True

    def _retry(self, key: Key, jobs: list[_Job], exc: BrokerError) -> None:
        attempt = max(j.attempt for j in jobs) + 1
        if attempt >= ATTEMPTS:
            self.stats.given_up += 1
            log.error("backfill of %s:%s given up after %d tries (%s): its gaps stay recorded", *key, attempt, exc)
            return
        wait = RETRY_S * 2 ** (attempt - 1)
        log.warning("backfill of %s:%s failed (%s): trying again in %.0f s", *key, exc, wait)
        with self._cond:
            for job in jobs:
                heapq.heappush(self._jobs, replace(job, due=self._clock() + wait, seq=next(self._seq), attempt=attempt))
            self.stats.pending = len(self._jobs)

    def _refused(self, exc: HistoryUnavailable) -> None:
        first = self.problem is None
        self.problem = f"backfill: {exc}"
        if exc.lasting:
            self._lasting_refusal = True
            log.error("backfill off for this run: %s; the gaps stay recorded (--show-gaps)", exc)
        elif first:
            log.error("backfill paused: %s; trying again every %.0f s", exc, TOKEN_RETRY_S)

    def _later(self, jobs: list[_Job], wait: float = TOKEN_RETRY_S) -> None:
        """After a refusal: drop everything if it lasts, else try ``jobs`` again in ``wait`` seconds."""
        with self._cond:
            if self._lasting_refusal:
                self._jobs.clear()
                self._spans.clear()
            else:
                due = self._clock() + wait
                for job in jobs:
                    heapq.heappush(self._jobs, replace(job, due=due, seq=next(self._seq)))
            self.stats.pending = len(self._jobs)


def bucket_end(calendar: MarketCalendar, key: Key, start: float, end: float) -> float:
    """When ``key``'s bucket ``[start, end)`` stops changing, by the sessions of the days it touches."""
    first, last = datetime.fromtimestamp(start, IST), datetime.fromtimestamp(end, IST)
    days = sorted({first.date(), datetime.fromtimestamp(end - 1, IST).date()})
    sessions = [s for day in days for s in calendar.sessions(key[0], day, key[1])]
    return bucket_close(sessions, first, last).timestamp()
