"""What ``--backfill`` and ``--reconcile`` share: Kite's historical API for the watchlist's symbols,
whatever ``--broker`` is."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from brokers.kite.historical import KiteHistorical
from cli.errors import UsageError
from cli.watchlist import listed_symbols, watchlist
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
        yield store, calendar, watchlist(args, store, listed)
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
