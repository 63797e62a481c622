"""Watchlist parsing: `EXCHANGE:SYMBOL` strings from the command line or a file."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from config.env import read_text_file

T = TypeVar("T")
EXCHANGES = ("NSE", "BSE", "NFO", "BFO", "CDS", "BCD", "MCX")
# Trading symbols use letters, digits and a few marks (M&M, BAJAJ-AUTO, NIFTY 50, 3MINDIA).
_SYMBOL = re.compile(r"[A-Z0-9][A-Z0-9&_.\- ]*\Z")


class SymbolError(ValueError):
    """A watchlist entry cannot be understood; the message says which and why."""


def parse_symbol(text: str) -> tuple[str, str]:
    """``NSE:INFY`` → ("NSE", "INFY"); a bare ``INFY`` means NSE."""
    raw = text.strip()
    if raw.count(":") > 1:
        raise SymbolError(f"{text!r} is not EXCHANGE:SYMBOL (more than one ':')")
    exchange, _, symbol = raw.rpartition(":")
    exchange = (exchange or "NSE").strip().upper()
    symbol = symbol.strip().upper()
    if ":" in raw and not raw.partition(":")[0].strip():
        raise SymbolError(f"{text!r} has an empty exchange: write it as EXCHANGE:SYMBOL, e.g. NSE:INFY")
    if exchange not in EXCHANGES:
        raise SymbolError(f"{text!r} names unknown exchange {exchange!r}: use one of {', '.join(EXCHANGES)}")
    if not symbol:
        raise SymbolError(f"{text!r} has an empty symbol: write it as EXCHANGE:SYMBOL, e.g. NSE:INFY")
    if not _SYMBOL.match(symbol):
        raise SymbolError(f"{text!r} has characters a trading symbol cannot have")
    return exchange, symbol


def dedupe(pairs: Iterable[T]) -> list[T]:
    """Keep the first occurrence of each pair, in order."""
    return list(dict.fromkeys(pairs))


def parse_symbols(texts: Iterable[str]) -> list[tuple[str, str]]:
    return dedupe(parse_symbol(t) for t in texts)


def load_symbols_file(path: str | Path, parse: Callable[[str], T] = parse_symbol) -> list[T]:  # type: ignore[assignment]
    """One symbol per line (each read by ``parse``); ``#`` starts a comment; blank lines and
    duplicates are ignored.

    A malformed line raises SymbolError naming the file and the line number.
    """
    file = Path(path)
    text = read_text_file(file, "symbols file", "--symbols-file", "one EXCHANGE:SYMBOL a line", SymbolError)
    lines = text.splitlines()
    pairs = []
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            pairs.append(parse(text))
        except SymbolError as exc:
            raise SymbolError(f"{file}:{number}: {exc}") from None
    return dedupe(pairs)
