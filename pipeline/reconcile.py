"""The daemon checks itself against the broker every day: after the close, each symbol's stored
minutes of the day compared with the broker's history (``candles.reconcile``), on the backfill
thread (one history, one request at a time).

A day is due once every session of the watchlist's exchanges that day has ended and the history
has settled (``delay`` seconds); yesterday is looked at too (MCX closes near midnight). A day the
store already holds results for (an earlier run's) is not asked again. The results go to the
``reconciliation`` table, the log gets ``--reconcile``'s summary line and the symbols that differ
most, and ``mismatches`` (mismatched buckets plus live candles the broker does not have, over the
latest day reconciled) is the metric ``marketfeed_reconcile_mismatches``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import date, datetime, timedelta

from brokers.base import BrokerError, History, HistoryUnavailable
from candles.model import Candle
from candles.reconcile import Reconciliation, reconcile, summary, worst
from core.ist import IST
from core.market_calendar import MarketCalendar
from storage.base import CandleStore, StoreError

log = logging.getLogger(__name__)

Key = tuple[str, str]
_MINUTE = timedelta(minutes=1)


class DailyReconciler:
    """See the module's doc. ``keys`` returns the watchlist now; ``stopping`` says to give up."""

    def __init__(
        self,
        history: History,
        store: CandleStore,
        keys: Callable[[], list[Key]],
        *,
        delay: float,
        clock: Callable[[], float],
    ) -> None:
        self.history = history
        self.store = store
        self._keys = keys
        self.delay = delay
        self._clock = clock
        self._done: set[date] = set()
        self.day: date | None = None  # the latest day reconciled (or found in the store)
        self.mismatches: int | None = None  # over ``day``: mismatched buckets + live candles the broker lacks

    def due(self, calendar: MarketCalendar) -> date | None:
        """The day to reconcile now, if any."""
        now = self._clock()
        today = datetime.fromtimestamp(now, IST).date()
        exchanges = sorted({k[0] for k in self._keys()})
        for day in (today - timedelta(days=1), today):
            if day in self._done:
                continue
            closes = []
            for exchange in exchanges:
                try:
                    closes += [end.timestamp() for _, end in calendar.sessions(exchange, day)]
                except ValueError:
                    continue
            if not closes:
                self._done.add(day)  # nothing traded: nothing to compare
                continue
            if now < max(closes) + self.delay:
                continue
            if self._stored(day):
                continue
            return day
        return None

    def _stored(self, day: date) -> bool:
        """Whether an earlier run reconciled ``day`` (its results then stand for the metric)."""
        try:
            earlier = self.store.reconciliations(day)
        except StoreError as exc:
            log.warning("reconcile %s: could not read earlier results (%s): comparing again", day, exc)
            return False
        if not earlier:
            return False
        self._done.add(day)
        self._took(day, earlier)
        return True

    def run(self, calendar: MarketCalendar, day: date, stopping: Callable[[], bool]) -> None:
        """Compare ``day`` for every symbol of the watchlist that traded that day."""
        self._done.add(day)
        keys = [k for k in self._keys() if _traded(calendar, k[0], day)]
        results: list[Reconciliation] = []
        failed = 0
        try:
            self.history.prepare(keys)
        except BrokerError as exc:
            log.error("reconcile %s: could not look the symbols up (%s): not compared today", day, exc)
            return
        for key in keys:
            if stopping():
                log.info("reconcile %s: stopped after %d of %d symbols (the next start compares the day again)",
                         day, len(results), len(keys))  # fmt: skip
                self._done.discard(day)
                return
            try:
                result = self._one(calendar, key, day)
            except HistoryUnavailable as exc:
                log.error("reconcile %s: not compared: %s", day, exc)
                return
            except (BrokerError, StoreError) as exc:
                failed += 1
                log.error("reconcile %s of %s:%s failed: %s", day, *key, exc)
                continue
            if result is not None:
                results.append(result)
        try:
            self.store.record_reconciliations(results)
        except StoreError as exc:
            log.error("reconcile %s: the results could not be stored (%s); the summary follows", day, exc)
        log.info("%s%s", summary(day, results), f"; {failed} symbols failed (see above)" if failed else "")
        for line in worst(results):
            log.warning("%s", line)
        self._took(day, results)

    def _one(self, calendar: MarketCalendar, key: Key, day: date) -> Reconciliation | None:
        # None: the broker does not know the symbol (the backfill said so already)
        return compare_day(
            calendar, self.store, key, day, lambda start, end: self.history.minute_candles(*key, start, end),
            datetime.fromtimestamp(self._clock(), IST),
        )  # fmt: skip

    def _took(self, day: date, results: list[Reconciliation]) -> None:
        if self.day is None or day >= self.day:
            self.day = day
            self.mismatches = sum(r.mismatched + r.missing_at_kite for r in results)


def compare_day(
    calendar: MarketCalendar,
    store: CandleStore,
    key: Key,
    day: date,
    fetch: Callable[[datetime, datetime], list[Candle] | None],
    asked_at: datetime,
) -> Reconciliation | None:
    """One symbol's day: the broker's minutes (``fetch(start, end)``, None when it does not know
    the symbol) against the stored 1m candles, both kept to the day's session minutes that had
    ended at ``asked_at``. What ``--reconcile`` and the daily check share."""
    sessions = calendar.sessions(key[0], day, key[1])
    start, end = sessions[0][0], sessions[-1][1]
    theirs = fetch(start, end)
    if theirs is None:
        return None
    minutes = {m for m in calendar.session_minutes(key[0], day, key[1]) if m + _MINUTE <= asked_at}
    ours = [c for c in store.between(key[0], key[1], "1m", start, end) if c.bucket in minutes]
    return reconcile(day, key[0], key[1], [c for c in theirs if c.bucket in minutes], ours, asked_at)


def _traded(calendar: MarketCalendar, exchange: str, day: date) -> bool:
    try:
        return bool(calendar.sessions(exchange, day))
    except ValueError:
        return False
