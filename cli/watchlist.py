"""The watchlist: the symbols of --symbols, --symbols-file and the database table, this daemon's
part of them (--shard) and what the broker knows of them. Read at start-up, again on SIGHUP, and
by --backfill."""

from __future__ import annotations

import argparse
import logging
import zlib

from brokers.base import BaseBroker
from cli.errors import UsageError
from config.symbols import SymbolError, load_symbols_file, parse_symbol, parse_symbols
from core.ticks import Instrument
from storage.base import CandleStore, WatchlistEntry

log = logging.getLogger("marketfeed")


def listed_symbols(args: argparse.Namespace, *, required: bool = True) -> list[tuple[str, str]]:
    """The symbols of ``--symbols`` and ``--symbols-file``: read before anything else starts.
    ``required``: none at all (and no ``--symbols-from-db``) is a usage error."""
    pairs: list[tuple[str, str]] = parse_symbols(args.symbols)
    if args.symbols_file:
        pairs += load_symbols_file(args.symbols_file)
    if required and not pairs and not args.symbols_from_db:
        raise UsageError("no symbols to stream: pass --symbols NSE:INFY ..., --symbols-file or --symbols-from-db")
    return pairs


def watchlist(
    args: argparse.Namespace, store: CandleStore, listed: list[tuple[str, str]] | None = None
) -> list[tuple[str, str]]:
    """The whole watchlist: ``listed`` (read anew when None: a reload) and the database table's rows."""
    pairs = listed_symbols(args) if listed is None else list(listed)
    if args.symbols_from_db:
        rows = store.watchlist()
        if not rows:
            raise UsageError(
                f"the watchlist table in {store.description} has no enabled rows: insert some "
                "(exchange, symbol) rows or pass --symbols"
            )
        pairs += _table_pairs(rows, store.description)
    pairs = list(dict.fromkeys(pairs))
    if not pairs:
        raise UsageError("no symbols to stream: pass --symbols NSE:INFY ..., --symbols-file or --symbols-from-db")
    return pairs


def _table_pairs(rows: list[WatchlistEntry], where: str) -> list[tuple[str, str]]:
    """The watchlist table's rows checked like --symbols (case, exchange, characters); a bad row is
    skipped with a warning naming it."""
    pairs = []
    for row in rows:
        try:
            pairs.append(parse_symbol(f"{row.exchange}:{row.symbol}"))
        except SymbolError as exc:
            log.warning("watchlist table in %s: row (%r, %r) skipped: %s", where, row.exchange, row.symbol, exc)
    if not pairs:
        raise UsageError(f"no row of the watchlist table in {where} is a valid symbol: fix the rows (see the warnings)")
    return pairs


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text!r} must look like 1/3 (this daemon's part / number of parts)") from None
    if n < 1:
        raise UsageError(f"--shard {text!r}: the number of parts must be at least 1 (e.g. 1/3)")
    if not 1 <= i <= n:
        raise UsageError(f"--shard {text!r}: the part must be between 1 and {n}")
    return i, n


def shard_of(pairs: list[tuple[str, str]], i: int, n: int) -> list[tuple[str, str]]:
    """This daemon's part of the watchlist: a symbol's part depends on its name only, so adding a
    symbol never moves the others to another daemon."""
    mine = [p for p in pairs if zlib.crc32(f"{p[0]}:{p[1]}".encode()) % n == i - 1]
    log.info("--shard %d/%d: %d of the %d symbols are this daemon's", i, n, len(mine), len(pairs))
    if not mine:
        raise UsageError(f"--shard {i}/{n} leaves no symbol of the {len(pairs)} for this daemon: use fewer parts")
    return mine


def resolve(broker: BaseBroker, pairs: list[tuple[str, str]]) -> list[Instrument]:
    known, unknown = broker.resolve(pairs)
    for key in unknown:
        log.warning("unknown symbol %s: skipped (check the exchange and the trading symbol)", key)
    if not known:
        raise UsageError(f"none of the {len(pairs)} symbols is known to {broker.name}")
    return known


