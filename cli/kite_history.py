"""Kite's historical API for the watchlist's symbols, whatever ``--broker`` is: what ``--backfill``
and ``--reconcile`` share, and the daemon's own backfill (``daemon_history``)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from brokers.base import BaseBroker, CredentialsRefused, History
from brokers.kite.historical import KiteHistorical, KiteHistory
from cli.errors import UsageError
from cli.watchlist import listed_symbols, plain_symbols, watchlist
from config.env import ConfigError
from config.market_calendar import load_calendar
from config.settings import Settings
from core.market_calendar import MarketCalendar
from core.ticks import Instrument
from storage import open_store
from storage.base import CandleStore

log = logging.getLogger("marketfeed")


def require_kite(settings: Settings, what: str) -> None:
    """Raise ``ConfigError`` naming the fix when the Kite settings are missing; ``what`` names the command."""
    if settings.venues["kite"].missing():
        raise ConfigError(
            f"{what} fetches candles from Kite's historical API, whatever --broker is: set KITE_API_KEY "
            "and log in with `python main.py --broker kite --login` (or set KITE_ACCESS_TOKEN)"
        )


@contextmanager
def kite_watchlist(
    settings: Settings, args: argparse.Namespace, what: str
) -> Iterator[tuple[CandleStore, MarketCalendar, list[tuple[str, str]]]]:
    """The store (migrated, closed on the way out), the market calendar and the watchlist of a
    command that reads Kite's history (``what`` names it). The symbols given, the Kite settings and
    the calendar file are checked before the store opens."""
    listed = listed_symbols(args)
    require_kite(settings, what)
    calendar, _ = load_calendar(settings.calendar.file, Path(settings.storage.data_dir))
    store = open_store(settings.storage.pg_conn_str, settings.storage.sqlite_path)
    try:
        store.migrate()
        yield store, calendar, plain_symbols(watchlist(args, store, listed), f"--{what}")
    finally:
        store.close()


def kite_history(settings: Settings, pairs: list[tuple[str, str]]) -> tuple[KiteHistorical, list[Instrument]]:
    """The historical client and the instruments of ``pairs`` Kite knows (the unknown ones are
    logged); raises ``CredentialsRefused`` when Kite refuses the access token."""
    from brokers.kite.factory import access_token, rest_client
    from brokers.kite.instruments import KiteInstruments

    kite_settings = settings.venues["kite"]
    token = access_token(kite_settings)[0]
    rest = rest_client(kite_settings, token)
    instruments, unknown = KiteInstruments(rest, Path(settings.storage.data_dir)).resolve(pairs)
    for key in unknown:
        log.warning("unknown symbol %s: skipped (check the exchange and the trading symbol)", key)
    if not instruments:
        raise UsageError(f"none of the {len(pairs)} symbols is in Kite's instruments dump")
    return KiteHistorical(rest), instruments


#: the feeds whose symbols are the exchange's own (the simulator's prices are made up: Kite's
#: history would not mend them)
REAL_FEEDS = ("kite", "kotak_neo")


def daemon_history(settings: Settings, broker: BaseBroker) -> History | None:
    """Where the daemon mends its gaps: Kite's historical API when ``BACKFILL`` is on and Kite's
    settings are there (the Kite feed's own, or beside another real feed); None otherwise, said in
    the log once."""
    if broker.name not in REAL_FEEDS:
        return None
    if not settings.backfill.enabled:
        log.info("backfill: off (BACKFILL=off): gaps are recorded (--show-gaps), `--backfill` mends them")
        return None
    kite_settings = settings.venues.get("kite")
    if kite_settings is None or kite_settings.missing():
        log.info(
            "backfill: off: %s has no candle history and Kite's settings are not there; gaps are recorded "
            "(--show-gaps); set KITE_API_KEY and log in to Kite (`python main.py --broker kite --login`) to have "
            "them filled from Kite's historical API", broker.name,
        )  # fmt: skip
        return None
    from brokers.kite.factory import access_token, rest_client
    from brokers.kite.instruments import KiteInstruments

    try:
        token, _, provider = access_token(kite_settings)
    except CredentialsRefused as exc:
        log.warning("backfill: off for this run: %s", exc)
        return None
    rest = rest_client(kite_settings, token)
    if broker.name == "kite":
        resolve = broker.resolve  # the feed's own instrument list, already in memory
    else:
        data_dir = Path(settings.storage.data_dir)

        def resolve(pairs: list[tuple[str, str]]) -> tuple[list[Instrument], list[str]]:
            return KiteInstruments(rest, data_dir).resolve(pairs)

    log.info("backfill: unwatched buckets are mended from Kite's historical API, %.0f s after they end",
             settings.backfill.delay_seconds)  # fmt: skip
    return KiteHistory(KiteHistorical(rest), resolve, provider)
