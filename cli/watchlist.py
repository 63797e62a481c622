"""The watchlist: the entries of --symbols, --symbols-file and the database table, this daemon's
part of them (--shard) and what the broker knows of them. Read at start-up, again on SIGHUP, and
by --backfill. An entry is a plain (exchange, symbol) pair or a derivatives universe
(``config/universe.py``: ``NFO:NIFTY OPT weekly ATM±10``), which the daemon resolves itself
(``pipeline/universe.py``)."""

from __future__ import annotations

import argparse
import logging
import zlib

from brokers.base import BaseBroker
from cli.errors import UsageError
from config.symbols import SymbolError, load_symbols_file
from config.universe import Entry, parse_entries, parse_entry
from core.ticks import Instrument
from core.universe import UniverseSpec
from storage.base import CandleStore, WatchlistEntry

log = logging.getLogger("marketfeed")


def listed_symbols(args: argparse.Namespace, *, required: bool = True) -> list[Entry]:
    """The entries of ``--symbols`` and ``--symbols-file``: read before anything else starts.
    ``required``: none at all (and no ``--symbols-from-db``) is a usage error."""
    entries: list[Entry] = parse_entries(args.symbols)
    if args.symbols_file:
        entries += load_symbols_file(args.symbols_file, parse_entry)
    if required and not entries and not args.symbols_from_db:
        raise UsageError("no symbols to stream: pass --symbols NSE:INFY ..., --symbols-file or --symbols-from-db")
    return entries


def watchlist(args: argparse.Namespace, store: CandleStore, listed: list[Entry] | None = None) -> list[Entry]:
    """The whole watchlist: ``listed`` (read anew when None: a reload) and the database table's rows."""
    entries = listed_symbols(args) if listed is None else list(listed)
    if args.symbols_from_db:
        rows = store.watchlist()
        if not rows:
            raise UsageError(
                f"the watchlist table in {store.description} has no enabled rows: insert some "
                "(exchange, symbol) rows or pass --symbols"
            )
        entries += _table_entries(rows, store.description)
    entries = list(dict.fromkeys(entries))
    if not entries:
        raise UsageError("no symbols to stream: pass --symbols NSE:INFY ..., --symbols-file or --symbols-from-db")
    return entries


def split(entries: list[Entry]) -> tuple[list[tuple[str, str]], list[UniverseSpec]]:
    """(the plain symbols, the universes)."""
    pairs = [e for e in entries if not isinstance(e, UniverseSpec)]
    return pairs, [e for e in entries if isinstance(e, UniverseSpec)]


def plain_symbols(entries: list[Entry], what: str) -> list[tuple[str, str]]:
    """The plain symbols of a command that reads no universes (``what`` names it); the universes
    are left out with a warning."""
    pairs, specs = split(entries)
    if specs:
        log.warning(
            "%s leaves out %d universe entries (%s): it reads plain symbols; name the contracts, e.g. NFO:NIFTY26DECFUT",
            what,
            len(specs),
            ", ".join(str(s) for s in specs[:3]) + (", …" if len(specs) > 3 else ""),
        )
    if not pairs:
        raise UsageError(f"{what}: no plain symbol in the watchlist (universe entries are streamed by the daemon only)")
    return pairs


def _table_entries(rows: list[WatchlistEntry], where: str) -> list[Entry]:
    """The watchlist table's rows checked like --symbols (case, exchange, characters; a row whose
    symbol is a universe, e.g. ('NFO', 'NIFTY OPT weekly ATM±10'), is one); a bad row is skipped
    with a warning naming it."""
    entries = []
    for row in rows:
        try:
            entries.append(parse_entry(f"{row.exchange}:{row.symbol}"))
        except SymbolError as exc:
            log.warning("watchlist table in %s: row (%r, %r) skipped: %s", where, row.exchange, row.symbol, exc)
    if not entries:
        raise UsageError(f"no row of the watchlist table in {where} is a valid symbol: fix the rows (see the warnings)")
    return entries


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


def shard_of(pairs: list[Entry], i: int, n: int) -> list[Entry]:
    """This daemon's part of the watchlist: an entry's part depends on its name only (a universe's:
    its canonical form, so the whole universe goes to one daemon), so adding an entry never moves
    the others to another daemon."""
    mine = [p for p in pairs if zlib.crc32(_name(p).encode()) % n == i - 1]
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




def _name(entry: Entry) -> str:
    return str(entry) if isinstance(entry, UniverseSpec) else f"{entry[0]}:{entry[1]}"
