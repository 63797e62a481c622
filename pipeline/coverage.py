"""What the daemon watched: each symbol's watched spans, kept on the pipeline thread.

The feed says when instruments begin and stop being watched (``brokers.base.WatchChange``: a
connection subscribed them, or went down at its last frame). ``Coverage`` turns that into

- the unwatched spans the aggregator is told of (candle rule 8): from the moment a symbol's
  connection went down to the moment it was subscribed again;
- ``WatchRecord``s for the store (``watched`` table), handed to the writer thread: a span opens
  and closes with the feed, and every ``EXTEND_S`` seconds the open ones are extended to now with
  one statement, so a killed daemon leaves spans that end at most that long before it died;
- today's gap minutes (``core.gaps``): the session minutes of the symbols' exchanges (per the
  market calendar) not covered by a span, from the store's spans of earlier runs and this one's.
"""

from __future__ import annotations

import math
import time as _time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime, time, timedelta

from brokers.base import WatchChange
from config.symbols import SymbolError, parse_symbol
from core.gaps import Span, gap_minutes, gaps
from core.ist import IST
from core.market_calendar import MarketCalendar
from storage.base import CandleStore, WatchedSpans, WatchRecord

#: how often the open spans are extended in the store (what a kill may leave unrecorded)
EXTEND_S = 60.0

Key = tuple[str, str]

#: how far back an unwatched span can still matter to the aggregator: a bucket is at most a day wide
#: (``1d``) and is revised for the revision horizon (15 minutes) after it closes
LOOKBACK_S = 2 * 86_400.0


def day_bounds(day: date) -> tuple[float, float]:
    """The IST day ``day`` as epoch seconds (start, end)."""
    start = datetime.combine(day, time(0), IST)
    return start.timestamp(), (start + timedelta(days=1)).timestamp()


def day_gaps(
    store: CandleStore,
    calendar: MarketCalendar,
    day: date,
    keys: Sequence[Key] | None = None,
    listed: Iterable[Key] = (),
    now: float | None = None,
    skipped: Callable[[str], object] | None = None,
) -> tuple[list[Key], list[tuple[str, str, float, float]]]:
    """The session minutes of ``day`` that no watched span covers, merged per symbol, as
    (exchange, symbol, start, end) epoch seconds, and the symbols looked at. ``keys`` None: every
    symbol the store has watched that day (or ever, if none), every symbol of ``listed`` and every
    enabled row of the watchlist table, watched or not (one never watched has every session minute
    as a gap); a table row that is not a symbol is told to ``skipped``. ``--show-gaps`` and
    ``/api/gaps`` both read this."""
    now = _time.time() if now is None else now
    start, end = day_bounds(day)
    spans = store.watched(start, end, keys)
    if keys is None:
        watched = sorted(spans) or sorted(store.watched(0.0, now))
        table = []
        for row in store.watchlist():
            try:
                table.append(parse_symbol(f"{row.exchange}:{row.symbol}"))
            except SymbolError as exc:
                if skipped is not None:
                    skipped(f"watchlist table in {store.description}: row ({row.exchange!r}, {row.symbol!r}) skipped: {exc}")
        keys = sorted({*watched, *listed, *table})
    found = [
        (exchange, symbol, a, b)
        for exchange, symbol in keys
        for a, b in gaps(calendar.sessions(exchange, day, symbol), spans.get((exchange, symbol), ()), now)
    ]
    return list(keys), found


def in_sessions(
    calendar: MarketCalendar | None, exchange: str, since: float, until: float, symbol: str = ""
) -> list[Span] | None:
    """The parts of the unwatched span ``since``..``until`` that lie in ``exchange``'s (``symbol``'s) sessions (candle
    rule 8: outside them nothing trades, so nothing is missed); None when that is not known (no
    calendar yet, or an exchange it does not describe): the caller takes the whole span. ``since``
    may be ``-inf``; parts older than ``LOOKBACK_S`` before ``until`` are left out (no bucket they
    touch can be open or created any more)."""
    if calendar is None:
        return None
    try:
        return calendar.in_sessions(exchange, max(since, until - LOOKBACK_S), until, symbol)
    except ValueError:  # an exchange without hours in the calendar
        return None


class Coverage:
    """The watched spans of one daemon run and of earlier ones today (pipeline thread only)."""

    def __init__(self) -> None:
        self.open: dict[Key, float] = {}  # symbol -> when its current span began
        #: symbol -> when its connection went down (or the start declared its unwatched time up to), until it is up
        self.down: dict[Key, float] = {}
        self.closed: dict[Key, list[Span]] = defaultdict(list)  # today's ended spans (earlier runs' too)
        self.day: date | None = None
        self.extended = -math.inf  # the feed clock's time the open spans were last extended to
        #: symbols whose unwatched time this run has declared: the start's watchlist (the start
        #: declares it) and each symbol once it is first watched
        self.seen: set[Key] = set()

    def load(self, spans: WatchedSpans) -> None:
        """Today's spans of earlier runs (from the store)."""
        for key, spans_of in spans.items():
            self.closed[key].extend(spans_of)

    def change(self, change: WatchChange) -> tuple[list[tuple[float, list[Key]]], WatchRecord]:
        """Take ``change``; returns the unwatched spans to declare, as (since, keys) pairs that end at
        ``change.at``, and the record for the store."""
        at = change.at
        if not change.up:
            for key in change.keys:
                began = self.open.pop(key, None)
                if began is not None:
                    self.closed[key].append((began, max(began, at)))
                self.down[key] = at
            return [], WatchRecord("close", at, change.keys)
        since: dict[float, list[Key]] = defaultdict(list)
        for key in change.keys:
            down = self.down.pop(key, None)
            if down is not None and down < at:
                since[down].append(key)
            elif down is None and key not in self.seen:
                # first watched after the start (a reload, a universe's new strike): unwatched since
                # its last span today (an earlier run's) or since the day began
                ended = max((end for _, end in self.closed.get(key, ())), default=None)
                began = ended if ended is not None else day_bounds(datetime.fromtimestamp(at, IST).date())[0]
                if began < at:
                    since[began].append(key)
            self.seen.add(key)
            self.open.setdefault(key, at)
        return sorted(since.items()), WatchRecord("open", at, change.keys)

    def extend(self, now: float) -> WatchRecord | None:
        """The record that extends the open spans to ``now``, when ``EXTEND_S`` has passed."""
        if now - self.extended < EXTEND_S:
            return None
        self.extended = now
        return WatchRecord("extend", now)

    def gap_minutes(self, calendar: MarketCalendar, keys: list[Key], now: float) -> int:
        """Today's gap minutes so far, summed over ``keys``: session minutes already over that a
        symbol's spans do not cover (its own hours, e.g. an MCX agricultural commodity's). Symbols
        with the same sessions and spans are worked out once."""
        today = datetime.fromtimestamp(now, IST).date()
        if self.day != today:  # a new day: yesterday's spans no longer matter
            self.day = today
            start = day_bounds(today)[0]
            for key in list(self.closed):
                kept = [s for s in self.closed[key] if s[1] > start]
                if kept:
                    self.closed[key] = kept
                else:
                    del self.closed[key]
        done: dict[tuple, int] = {}
        total = 0
        for key in keys:
            sessions = calendar.day(key[0], today, key[1]).sessions  # kept by the calendar
            if not sessions:
                continue
            began = self.open.get(key)
            spans = tuple(self.closed.get(key, ()))
            shape = (sessions, began, spans)
            n = done.get(shape)
            if n is None:
                all_spans = spans + ((began, now),) if began is not None else spans
                n = done[shape] = gap_minutes(sessions, all_spans, now)
            total += n
        return total
