"""``--reconcile DATE``: the day's stored minute candles checked against Kite's historical ones.

For each symbol, Kite's minutes of the day's sessions and the stored 1m candles of the same minutes
are compared bucket by bucket (``candles.reconcile``: only ``live`` candles; the known first-minute
volume difference counted apart), the results stored in the ``reconciliation`` table (a second run
of the same day replaces them), one summary line printed, then the symbols that differ most.

Exit 0 when every compared bucket matches and Kite has every live candle; 1 when a bucket
mismatched, Kite lacks a live candle, or a symbol could not be fetched (so a timer or cron job can
alert); 3 when Kite refuses the historical API. Minutes Kite has and the store does not (holes:
the daemon was not watching) are counted and shown, not an error: ``--backfill`` fills them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import date, datetime

from brokers.base import BrokerError, CredentialsRefused
from brokers.kite.historical import HistoricalUnavailable, KiteHistorical
from candles.reconcile import Reconciliation, summary, worst
from cli.errors import EXIT_CREDENTIALS_REFUSED, UsageError
from cli.kite_history import kite_history, kite_watchlist
from config.settings import Settings
from core.ist import IST
from core.market_calendar import MarketCalendar
from core.progress import progress
from core.ticks import Instrument
from pipeline.reconcile import compare_day
from storage.base import CandleStore

log = logging.getLogger("marketfeed")



def run_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    day: date = args.reconcile
    today = datetime.now(IST).date()
    if day > today:
        raise UsageError(f"--reconcile {day} is in the future (today is {today} IST): give a past trading day")
    with kite_watchlist(settings, args, "reconcile") as (store, calendar, pairs):
        return _reconcile(settings, store, calendar, pairs, day)


def _reconcile(settings: Settings, store: CandleStore, calendar: MarketCalendar, pairs: list[tuple[str, str]], day: date) -> int:
    trading: list[tuple[str, str]] = []
    closed: set[str] = set()
    for exchange, symbol in pairs:
        try:
            open_today = bool(calendar.sessions(exchange, day))
        except ValueError:
            log.warning("reconcile: %s:%s: the market calendar has no sessions for %s: skipped", exchange, symbol, exchange)
            continue
        if open_today:
            trading.append((exchange, symbol))
        else:
            closed.add(exchange)
    if closed and trading:
        log.info("reconcile %s: %s had no session that day: their symbols are not compared", day, ", ".join(sorted(closed)))
    if not trading:
        where = ", ".join(sorted(closed)) or "any exchange of the watchlist"
        print(f"reconcile {day}: not a trading day on {where} (weekend or holiday): nothing to compare")
        return 0
    try:
        history, instruments = kite_history(settings, trading)
    except CredentialsRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CREDENTIALS_REFUSED
    results: list[Reconciliation] = []
    failed = 0
    with progress("reconcile", total=len(instruments), unit="symbols") as bar:
        for inst in instruments:
            try:
                results.append(_one(inst, calendar, history, store, day))
            except HistoricalUnavailable as exc:
                print(f"error: {exc}", file=sys.stderr)
                return EXIT_CREDENTIALS_REFUSED
            except BrokerError as exc:
                failed += 1
                log.error("reconcile of %s failed: %s", inst.key, exc)
            bar.update(1)
    store.record_reconciliations(results)
    print(summary(day, results))
    for line in worst(results):
        print(line)
    if failed:
        print(f"error: {failed} symbols could not be fetched from Kite (see the log): run the same command again",
              file=sys.stderr)  # fmt: skip
    return 1 if failed or any(r.differs for r in results) else 0


def _one(inst: Instrument, calendar: MarketCalendar, history: KiteHistorical, store: CandleStore, day: date) -> Reconciliation:
    """Compare one symbol's minutes of ``day`` that had ended when Kite was asked."""
    asked_at = datetime.now(IST)
    result = compare_day(calendar, store, (inst.exchange, inst.symbol), day,
                         lambda start, end: history.minute_candles(inst, start, end), asked_at)  # fmt: skip
    assert result is not None  # KiteHistorical always answers with a list
    return result
