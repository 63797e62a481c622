"""Derivative contracts as the instrument masters describe them: what a universe is resolved from.

A ``Contract`` is one row of a broker's instrument master that a derivatives universe can name: a
future or an option (and, for the ATM's reference, the underlying's own row: an index or a stock,
``kind`` ``"IDX"`` / ``"EQ"``). Every number comes from the master (strike step, lot size, expiry,
tick size), never from a constant: the venues' parsers (``brokers/kite/instruments.py`` and
``brokers/kotak_neo/instruments.py``) fill it, the universe resolver reads it, and the store keeps
it (table ``instruments``) so that an expired contract's candles stay interpretable.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

FUT, CALL, PUT = "FUT", "CE", "PE"
KINDS = (FUT, CALL, PUT, "IDX", "EQ")


@dataclass(frozen=True, slots=True)
class Contract:
    exchange: str  # NFO, BFO, MCX, CDS for derivatives; NSE/BSE for an underlying's own row
    symbol: str  # the trading symbol, e.g. NIFTY26DEC24000CE (the key candles are stored under)
    underlying: str  # the master's name of the underlying, upper case: NIFTY, BANKNIFTY, SENSEX, CRUDEOIL, RELIANCE
    kind: str  # FUT, CE, PE (IDX or EQ for an underlying's own row)
    expiry: date | None  # None for an underlying's own row
    strike: Decimal | None  # options only
    lot_size: int
    tick_size: Decimal
    token: int = 0  # the broker's instrument id (Kite's instrument_token); 0 when it has none

    @property
    def key(self) -> str:
        return f"{self.exchange}:{self.symbol}"

    @property
    def is_option(self) -> bool:
        return self.kind in (CALL, PUT)
