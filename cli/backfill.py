"""``--backfill``: the candles of past trading days from Kite's historical API, on demand.

For each symbol, one call to ``KiteHistorical.minute_candles`` over the range (Kite's 60-day limit
and 3 requests/s are the client's), kept to the market calendar's session minutes and to minutes
that had ended when the request went out; the coarser intervals are rolled up from those minutes
(``candles.rollup``: the live rules); every candle is ``backfill`` and final, upserted per symbol
in one transaction, so the store keeps a final live candle (candle rule 8).

Resuming: each (symbol, day) written is appended to a small file in ``DATA_DIR`` named after the
request (dates, intervals, symbols), fsynced; the same command run again skips those, and the file
goes once the whole request is done. The store cannot answer "done" itself: Kite sends no candle
for a minute without a trade, so an illiquid symbol's day never fills every session minute, and a
day with a final live candle in every bucket still needs asking. A day whose session had not
ended when it was fetched is not recorded (a later run asks for it again).

Several symbols are fetched at once (``FETCHERS`` threads; the client's limiter paces their
requests, so the rate no longer waits on each reply); everything else (the calendar, the roll-up,
the store, the file) happens on the main thread, one symbol at a time, as each fetch returns. The
first request goes alone, so a refusal (403) is met once.

SIGTERM or SIGINT stop it after the symbols in hand (the fetches already sent are written): exit 0,
saying how far it got.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from brokers.base import BrokerError, CredentialsRefused
from brokers.kite.historical import HistoricalUnavailable, KiteHistorical
from candles.model import BACKFILL, LIVE, Candle, Interval, parse_intervals
from candles.rollup import roll_up
from cli.args import day_option
from cli.errors import EXIT_CREDENTIALS_REFUSED, UsageError
from cli.kite_history import kite_history, kite_watchlist
from config.settings import Settings
from core.ist import IST
from core.market_calendar import MarketCalendar, bucket_close
from core.progress import progress
from core.ticks import Instrument
from storage.base import CandleStore, WatchRecord

log = logging.getLogger("marketfeed")

#: consecutive symbols that fail (network, 5xx after every retry) before the run gives up
MAX_FAILURES_IN_A_ROW = 5
#: symbols fetched at once: enough overlapping requests that the limiter, not the reply time, sets
#: the rate (3 a second x replies of up to about 1.3 s); the rest of the work stays on the main thread
FETCHERS = 4


@dataclass
class Tally:
    symbols: int = 0
    days: int = 0
    requests: int = 0
    retries: int = 0
    written: int = 0
    kept_live: int = 0
    failed: int = 0
    resumed: int = 0  # (symbol, day) pairs an earlier run of the same request had done


class DoneFile:
    """The (symbol, day) pairs of one request already written, one ``EXCHANGE:SYMBOL YYYY-MM-DD`` a line."""

    def __init__(self, data_dir: Path, request: dict[str, Any]) -> None:
        key = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:16]
        self.path = data_dir / f"backfill-{key}.done"
        self.done: set[tuple[str, date]] = set()
        if self.path.exists():
            # the last piece is "" when the file ends with a whole line; a line cut by a kill has no
            # newline yet and is left out: that day is asked again
            for line in self.path.read_text(encoding="utf-8").split("\n")[:-1]:
                key, _, day = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    self.done.add((key, date.fromisoformat(day)))
        self._file: TextIO | None = None
        self._lock = threading.Lock()  # one writer at a time: whole lines, and ``done`` in step

    def add(self, key: str, days: list[date]) -> None:
        if not days:
            return
        with self._lock:
            self._append(key, days)

    def _append(self, key: str, days: list[date]) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._file.write("".join(f"{key} {d.isoformat()}\n" for d in days))
        self._file.flush()
        os.fsync(self._file.fileno())
        self.done.update((key, d) for d in days)

    def close(self, finished: bool) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
            if finished:
                self.path.unlink(missing_ok=True)


class _StopFlag:
    def __init__(self) -> None:
        self.signame: str | None = None
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._on)

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _on(self, signum: int, _frame: FrameType | None) -> None:
        self.signame = signal.Signals(signum).name


def run_backfill(settings: Settings, args: argparse.Namespace) -> int:
    today = datetime.now(IST).date()
    first = day_option(args.backfill_from, "--from") or today
    last = day_option(args.backfill_to, "--to") or today
    if first > last:
        raise UsageError(f"--from {first} is after --to {last}: give the earlier day first")
    if last > today:
        raise UsageError(f"--to {last} is in the future (today is {today} IST): history ends today")
    intervals = parse_intervals(settings.candles.intervals if args.intervals is None else args.intervals)
    with kite_watchlist(settings, args, "backfill") as (store, calendar, pairs):
        return _backfill(settings, store, calendar, pairs, intervals, first, last)


def _backfill(
    settings: Settings,
    store: CandleStore,
    calendar: MarketCalendar,
    pairs: list[tuple[str, str]],
    intervals: tuple[Interval, ...],
    first: date,
    last: date,
) -> int:
    data_dir = Path(settings.storage.data_dir)
    try:
        history, instruments = kite_history(settings, pairs)
    except CredentialsRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CREDENTIALS_REFUSED
    request = {"from": first.isoformat(), "to": last.isoformat(), "intervals": [i.name for i in intervals],
               "symbols": sorted(i.key for i in instruments)}  # fmt: skip
    done = DoneFile(data_dir, request)
    tally = Tally()
    stop = _StopFlag()
    started = time.monotonic()
    finished = False
    refused: HistoricalUnavailable | None = None
    gave_up = False
    failures_in_a_row = 0
    proven = False  # a request was answered: the key and the token work
    log.info("backfill: %d symbols, %s to %s, intervals %s, into %s%s", len(instruments), first, last,
             ",".join(i.name for i in intervals), store.description,
             f" (resuming: {len(done.done)} symbol-days done before)" if done.done else "")  # fmt: skip
    stop.install()
    try:
        with (
            progress("backfill", total=len(instruments), unit="symbols") as bar,
            ThreadPoolExecutor(FETCHERS, thread_name_prefix="backfill") as pool,
        ):
            todo = iter(instruments)
            in_flight: dict[Future[tuple[datetime, list[Candle]]], _Job] = {}
            exhausted = False
            while True:
                # the first request goes alone: a 403 is then said once, after one request
                while not (stop.signame or refused or gave_up) and len(in_flight) < (FETCHERS if proven else 1):
                    inst = next(todo, None)
                    if inst is None:
                        exhausted = True
                        break
                    job = _plan(inst, calendar, done, first, last, tally)
                    if job is None:
                        bar.update(1)
                    else:
                        in_flight[pool.submit(_fetch, history, job)] = job
                if not in_flight:
                    break
                # the symbols in hand are finished even after a stop: their requests are spent
                ready, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in ready:
                    job = in_flight.pop(future)
                    try:
                        asked_at, minutes = future.result()
                    except HistoricalUnavailable as exc:
                        refused = refused or exc
                        continue
                    except BrokerError as exc:
                        tally.failed += 1
                        failures_in_a_row += 1
                        log.error("backfill of %s failed: %s", job.inst.key, exc)
                        if failures_in_a_row >= MAX_FAILURES_IN_A_ROW and not gave_up:
                            gave_up = True
                            log.error("backfill: %d symbols failed in a row: stopping; run the same command again "
                                      "to resume once Kite answers", failures_in_a_row)  # fmt: skip
                    else:
                        proven = True
                        failures_in_a_row = 0
                        _write(job, asked_at, minutes, store, done, intervals, tally)
                    bar.update(1)
            finished = exhausted and not (stop.signame or refused or gave_up or tally.failed)
    finally:
        stop.restore()
        done.close(finished)
        tally.requests = history.requests
        tally.retries = history.retries
    if refused is not None:
        print(f"error: {refused}", file=sys.stderr)
        return EXIT_CREDENTIALS_REFUSED
    elapsed = time.monotonic() - started
    summary = (
        f"backfill: {tally.symbols} of {len(instruments)} symbols, {tally.days} symbol-days, "
        f"{tally.requests} requests ({tally.retries} retried), {tally.written} candles written, "
        f"{tally.kept_live} kept because a final live candle holds the bucket, "
        f"{tally.resumed} symbol-days done by an earlier run, {tally.failed} failed, {elapsed:.1f} s"
    )
    print(summary)
    if stop.signame:
        print(f"backfill stopped by {stop.signame} after {tally.symbols} of {len(instruments)} symbols: "
              "run the same command again to resume")  # fmt: skip
        return 0
    if tally.failed:
        print(f"error: {tally.failed} symbols were not backfilled (see the log): run the same command again "
              "to fill them", file=sys.stderr)  # fmt: skip
        return 1
    return 0


@dataclass(frozen=True, slots=True)
class _Job:
    """One symbol's days still to fetch, and their sessions."""

    inst: Instrument
    todo: list[date]
    sessions: dict[date, list[tuple[datetime, datetime]]]

    @property
    def span(self) -> tuple[datetime, datetime]:
        return self.sessions[self.todo[0]][0][0], self.sessions[self.todo[-1]][-1][1]


def _plan(inst: Instrument, calendar: MarketCalendar, done: DoneFile, first: date, last: date, tally: Tally) -> _Job | None:
    """What ``inst`` still needs of the range; None when nothing (all done, or no calendar)."""
    try:
        days = calendar.trading_days(inst.exchange, first, last)
    except ValueError:
        log.warning("backfill: %s: the market calendar has no sessions for %s: skipped", inst.key, inst.exchange)
        return None
    tally.symbols += 1
    todo = [d for d in days if (inst.key, d) not in done.done]
    tally.resumed += len(days) - len(todo)
    if not todo:
        return None
    return _Job(inst, todo, {d: calendar.sessions(inst.exchange, d, inst.symbol) for d in todo})


def _fetch(history: KiteHistorical, job: _Job) -> tuple[datetime, list[Candle]]:
    """On a fetcher thread: the job's minutes, and when they were asked for (no store, no file)."""
    asked_at = datetime.now(IST)
    return asked_at, history.minute_candles(job.inst, *job.span)


def _write(
    job: _Job,
    asked_at: datetime,
    minutes: list[Candle],
    store: CandleStore,
    done: DoneFile,
    intervals: tuple[Interval, ...],
    tally: Tally,
) -> None:
    """On the main thread: roll up and write one symbol's fetched days, then record the complete ones."""
    inst, todo, sessions = job.inst, job.todo, job.sessions
    start, end = job.span
    by_day: dict[date, list[Candle]] = {d: [] for d in todo}
    for m in minutes:
        day = m.bucket.date()
        if day in by_day and m.bucket + timedelta(minutes=1) <= asked_at and _in(sessions[day], m.bucket):
            by_day[day].append(replace(m, source=BACKFILL, final=True))
    out: list[Candle] = []
    complete: list[date] = []
    for day, mins in by_day.items():
        closed = sessions[day][-1][1] <= asked_at
        for iv in intervals:
            for c in roll_up(mins, iv):
                if closed or bucket_close(sessions[day], c.bucket, c.bucket + timedelta(seconds=iv.seconds)) <= asked_at:
                    out.append(c)
        if closed:
            complete.append(day)
    tally.kept_live += _final_live(store, inst, intervals, start, end, out)
    if out:
        store.upsert(out)
    # what Kite answered for is known from now on: gaps (--show-gaps, the daemon's count) leave it out
    ended = asked_at.replace(second=0, microsecond=0)  # the minutes that had ended when Kite was asked
    answered = [
        WatchRecord("known", a.timestamp(), ((inst.exchange, inst.symbol),), min(b, ended).timestamp())
        for day in todo
        for a, b in sessions[day]
        if a < ended
    ]
    if answered:
        store.record_watched("backfill", answered)
    tally.written += len(out)
    tally.days += len(todo)
    done.add(inst.key, complete)


def _in(sessions: list[tuple[datetime, datetime]], t: datetime) -> bool:
    return any(a <= t < b for a, b in sessions)


def _final_live(
    store: CandleStore, inst: Instrument, intervals: tuple[Interval, ...], start: datetime, end: datetime,
    candles: list[Candle],
) -> int:  # fmt: skip
    """How many of ``candles`` the store will keep out: their bucket holds a final live candle."""
    wanted = {c.key for c in candles}
    kept = 0
    for iv in intervals:
        lo = datetime.fromtimestamp(iv.bucket_start(start.timestamp()), IST)
        for c in store.between(inst.exchange, inst.symbol, iv.name, lo, end):
            if c.source == LIVE and c.final and c.key in wanted:
                kept += 1
    return kept
