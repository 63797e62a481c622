"""Symbol ↔ instrument token from Kite's instruments dump, cached on disk per IST day.

The dump (about 100k rows) changes daily as contracts are listed and expire, so a cache file is
valid for the IST day it was fetched on only.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from brokers.base import BrokerError, CredentialsRefused, lookup_symbols
from core.ist import IST
from core.ticks import Instrument

log = logging.getLogger(__name__)

_FIELDS = ("instrument_token", "exchange", "tradingsymbol", "tick_size")


class KiteInstruments:
    """Loads the instruments dump through ``kiteconnect.KiteConnect.instruments()``."""

    def __init__(self, kite: Any, cache_dir: str | Path, clock: Callable[[], float] = time.time) -> None:
        self._kite = kite
        self._cache_dir = Path(cache_dir)
        self._clock = clock
        self._by_symbol: dict[tuple[str, str], Instrument] | None = None

    def cache_path(self) -> Path:
        day = datetime.fromtimestamp(self._clock(), IST).date().isoformat()
        return self._cache_dir / f"kite-instruments-{day}.csv"

    def load(self) -> dict[tuple[str, str], Instrument]:
        if self._by_symbol is None:
            path = self.cache_path()
            rows = self._read_cache(path)
            if rows is None:
                rows = self._fetch()
                self._write_cache(path, rows)
            self._by_symbol = {(i.exchange, i.symbol): i for i in rows}
        return self._by_symbol

    def resolve(self, pairs: Sequence[tuple[str, str]]) -> tuple[list[Instrument], list[str]]:
        return lookup_symbols(self.load(), pairs)

    def _fetch(self) -> list[Instrument]:
        log.info("downloading the Kite instruments dump (about 100k rows)")
        try:
            raw = self._kite.instruments()
        except Exception as exc:  # kiteconnect raises its own exception family and requests' errors
            from kiteconnect.exceptions import TokenException

            if isinstance(exc, TokenException):  # HTTP 403: the API key or the access token was refused
                raise CredentialsRefused(
                    f"Kite refused the API key or the access token ({exc}): check KITE_API_KEY, then log in again "
                    "(python main.py --broker kite --login)"
                ) from None
            raise BrokerError(f"could not download the Kite instruments dump: {type(exc).__name__}: {exc}") from None
        rows = []
        for row in raw:
            try:
                rows.append(
                    Instrument(
                        exchange=str(row["exchange"]),
                        symbol=str(row["tradingsymbol"]),
                        token=int(row["instrument_token"]),
                        tick_size=Decimal(str(row.get("tick_size") or "0.05")),
                    )
                )
            except (KeyError, ValueError, InvalidOperation):
                continue  # a malformed row of the dump; the rest are usable
        if not rows:
            raise BrokerError("the Kite instruments dump was empty: try again later")
        log.info("downloaded %d Kite instruments", len(rows))
        return rows

    def _read_cache(self, path: Path) -> list[Instrument] | None:
        if not path.is_file():
            return None
        try:
            with path.open(newline="", encoding="utf-8") as src:
                return [
                    Instrument(r["exchange"], r["tradingsymbol"], int(r["instrument_token"]), Decimal(r["tick_size"]))
                    for r in csv.DictReader(src)
                ]
        except (OSError, KeyError, ValueError, InvalidOperation) as exc:
            log.warning("ignoring unreadable instruments cache %s: %s", path, exc)
            return None

    def _write_cache(self, path: Path, rows: list[Instrument]) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            with tmp.open("w", newline="", encoding="utf-8") as out:
                writer = csv.writer(out)
                writer.writerow(_FIELDS)
                writer.writerows((i.token, i.exchange, i.symbol, i.tick_size) for i in rows)
            os.replace(tmp, path)
            for old in path.parent.glob("kite-instruments-*.csv"):
                if old != path:
                    old.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not cache the instruments dump in %s: %s", path.parent, exc)
