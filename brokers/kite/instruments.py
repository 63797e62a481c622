"""Kite's instruments dump: symbol ↔ instrument token, and the derivative contracts, cached per IST day.

The dump (about 100k rows, https://kite.trade/docs/connect/v3/market-quotes/#instruments) changes
daily as contracts are listed and expire, so a cache file is valid for the IST day it was fetched on
only. pykiteconnect's ``KiteConnect.instruments()`` reads the CSV and converts ``expiry`` to a date,
``strike``, ``tick_size`` and ``last_price`` to floats and ``instrument_token`` and ``lot_size`` to
ints (``KiteConnect._parse_instruments``). A float here is the shortest repr of the CSV's decimal, so
``Decimal(repr(x))`` gives back the exact strike or tick size, as ``brokers/kite/historical.py`` does
for prices.

A refresh is atomic: the new dump is parsed and validated (the columns we read are present, it has
at least half the rows of the last cached dump, every required underlying has contracts) before it
is written to a temporary file and renamed over today's name. A download that fails or does not
validate never removes a cached dump: the newest one on disk (today's or an earlier day's) is used
and a warning names it and why. Only when there is none is it an error.

The cache file keeps every column the parsers need (``_CACHE_FIELDS``, the first line); a file with
another header (an older version's) is treated as absent.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from brokers.base import BrokerError, CredentialsRefused, lookup_symbols
from core.contracts import CALL, FUT, PUT, Contract
from core.ist import IST
from core.progress import elapsed
from core.ticks import Instrument

log = logging.getLogger(__name__)

#: The dump's columns we read; a download without one of them is refused.
REQUIRED_COLUMNS = (
    "instrument_token", "exchange", "tradingsymbol", "name", "expiry", "strike", "tick_size", "lot_size",
    "instrument_type", "segment",
)  # fmt: skip
_CACHE_FIELDS = (
    "instrument_token", "exchange", "tradingsymbol", "name", "instrument_type", "segment", "expiry", "strike",
    "tick_size", "lot_size",
)  # fmt: skip
#: A fresh dump with fewer rows than this share of the last cached one is taken for a broken download.
MIN_ROW_SHARE = 0.5
_DERIVATIVE_KINDS = (FUT, CALL, PUT)
#: Kite's index rows (segment INDICES) carry the index's name ("NIFTY 50"), its derivatives the
#: exchange's product name ("NIFTY"); the dump has no column linking the two, so the known pairs are
#: listed here. An index missing from this table has no underlying row among the contracts.
INDEX_UNDERLYINGS = {
    ("NSE", "NIFTY 50"): "NIFTY",
    ("NSE", "NIFTY BANK"): "BANKNIFTY",
    ("NSE", "NIFTY FIN SERVICE"): "FINNIFTY",
    ("NSE", "NIFTY MID SELECT"): "MIDCPNIFTY",
    ("NSE", "NIFTY NEXT 50"): "NIFTYNXT50",
    ("BSE", "SENSEX"): "SENSEX",
    ("BSE", "BANKEX"): "BANKEX",
}
#: The cash exchange whose stock and index rows underlie each derivatives exchange's contracts.
_CASH_OF = {"NFO": "NSE", "BFO": "BSE"}


@dataclass(frozen=True, slots=True)
class DumpRow:
    """One row of the dump, typed: what the cache keeps and both views are built from."""

    token: int
    exchange: str
    symbol: str
    name: str
    instrument_type: str  # EQ, FUT, CE, PE (indices are EQ with segment INDICES)
    segment: str
    expiry: date | None
    strike: Decimal
    tick_size: Decimal
    lot_size: int


def exact_decimal(value: float | int | str) -> Decimal:
    """The decimal a float of the dump was parsed from (its shortest repr); integral values without
    a fraction (25000.0 -> 25000)."""
    d = Decimal(value if isinstance(value, str) else repr(value))
    if not d.is_finite():
        raise InvalidOperation(f"not a finite number: {value!r}")
    integral = d.to_integral_value()
    return integral if d == integral else d


class _Interner:
    """Shares the equal values of 100k rows (a few tick sizes, strikes, expiries and names)."""

    def __init__(self) -> None:
        self._values: dict[Any, Any] = {}

    def decimal(self, value: float | int | str) -> Decimal:
        key = (type(value), value)
        found = self._values.get(key)
        if found is None:
            found = self._values[key] = exact_decimal(value)
        return found

    def expiry(self, value: date | str | None) -> date | None:
        if not value:
            return None
        if isinstance(value, date):
            return self._values.setdefault(value, value)
        found = self._values.get(("d", value))
        if found is None:
            found = self._values[("d", value)] = date.fromisoformat(value)
        return found

    def text(self, value: Any) -> str:
        s = str(value)
        return self._values.setdefault(s, s)


class KiteInstruments:
    """Loads the instruments dump through ``kiteconnect.KiteConnect.instruments()``.

    ``required``: underlyings (the dump's ``name``, e.g. ``NIFTY``) a fresh dump must have
    derivative contracts of to be taken (a universe names them)."""

    def __init__(
        self,
        kite: Any,
        cache_dir: str | Path,
        clock: Callable[[], float] = time.time,
        required: Iterable[str] = (),
    ) -> None:
        self._kite = kite
        self._cache_dir = Path(cache_dir)
        self._clock = clock
        self._required = tuple(sorted({r.upper() for r in required}))
        self._by_symbol: dict[tuple[str, str], Instrument] | None = None
        self._contracts: list[Contract] = []
        #: the cached file the loaded dump came from when a download failed (None: a fresh dump or today's cache)
        self.fallback: Path | None = None

    def cache_path(self) -> Path:
        day = datetime.fromtimestamp(self._clock(), IST).date().isoformat()
        return self._cache_dir / f"kite-instruments-{day}.csv"

    def load(self) -> dict[tuple[str, str], Instrument]:
        """(exchange, tradingsymbol) -> ``Instrument`` of every row of today's dump."""
        if self._by_symbol is None:
            path = self.cache_path()
            rows = self._read_cache(path)
            self._install(rows if rows is not None else self._refresh(path))
        assert self._by_symbol is not None
        return self._by_symbol

    def contracts(self) -> list[Contract]:
        """The futures and options of the dump, and the index and stock rows they are written on."""
        self.load()
        return self._contracts

    def refresh(self, required: Iterable[str] = ()) -> None:
        """Download the dump again even if today's is cached (kept if the download fails or does
        not validate). ``required``: underlyings it must have contracts of, besides the constructor's."""
        self._required = tuple(sorted(set(self._required) | {r.upper() for r in required}))
        self._install(self._refresh(self.cache_path()))

    def resolve(self, pairs: Sequence[tuple[str, str]]) -> tuple[list[Instrument], list[str]]:
        return lookup_symbols(self.load(), pairs)

    # ------------------------------------------------------------------ the two views

    def _install(self, rows: list[DumpRow]) -> None:
        by_symbol: dict[tuple[str, str], Instrument] = {}
        default_tick = Decimal("0.05")  # indices have tick_size 0 in the dump; their values move on 0.05
        for r in rows:
            by_symbol[(r.exchange, r.symbol)] = Instrument(r.exchange, r.symbol, r.token, r.tick_size or default_tick)
        self._contracts = contracts_of(rows)
        self._by_symbol = by_symbol

    # ------------------------------------------------------------------ download, validate, fall back

    def _refresh(self, path: Path) -> list[DumpRow]:
        previous = self._previous_cache()
        try:
            rows = self._fetch()
            self._validate(rows, previous)
        except CredentialsRefused:
            raise  # a wrong key or an expired login: an old dump would only hide it
        except BrokerError as exc:
            if previous is None:
                raise BrokerError(
                    f"{exc}; no earlier dump is cached in {self._cache_dir} to fall back on: check the connection to "
                    "Kite and try again"
                ) from None
            cached = self._read_cache(previous[0])
            if cached is None:
                raise BrokerError(f"{exc}; the cached dump {previous[0]} could not be read either") from None
            log.warning(
                "%s; using the cached dump %s (%d rows) instead: contracts listed since it was fetched are missing from it",
                exc,
                previous[0],
                len(cached),
            )
            self.fallback = previous[0]
            return cached
        self.fallback = None
        self._write_cache(path, rows)
        return rows

    def _fetch(self) -> list[DumpRow]:
        log.info("downloading the Kite instruments dump (about 100k rows)")
        try:
            with elapsed("downloading the Kite instruments dump"):
                raw = self._kite.instruments()
        except Exception as exc:  # kiteconnect raises its own exception family, requests' errors, and
            # ValueError/TypeError/KeyError from its CSV parsing when the body is garbled or truncated
            from kiteconnect.exceptions import TokenException

            if isinstance(exc, TokenException):  # HTTP 403: the API key or the access token was refused
                raise CredentialsRefused(
                    f"Kite refused the API key or the access token ({exc}): check KITE_API_KEY, then log in again "
                    "(python main.py --broker kite --login)"
                ) from None
            if isinstance(exc, (KeyError, ValueError, TypeError, csv.Error)):  # kiteconnect's CSV parsing
                raise BrokerError(
                    f"the Kite instruments dump was garbled or cut short ({type(exc).__name__}: {exc} while parsing it)"
                ) from None
            raise BrokerError(f"could not download the Kite instruments dump: {type(exc).__name__}: {exc}") from None
        if not raw:
            raise BrokerError("the Kite instruments dump was empty")
        missing = [c for c in REQUIRED_COLUMNS if c not in raw[0]]
        if missing:
            raise BrokerError(
                f"the Kite instruments dump lacks the column(s) {', '.join(missing)}: it was garbled or its format changed"
            )
        rows = parse_rows(raw)
        log.info("downloaded %d Kite instruments", len(rows))
        return rows

    def _validate(self, rows: list[DumpRow], previous: tuple[Path, int] | None) -> None:
        if not rows:
            raise BrokerError("the Kite instruments dump had no usable row")
        if previous is not None and len(rows) < previous[1] * MIN_ROW_SHARE:
            raise BrokerError(
                f"the Kite instruments dump has {len(rows)} rows, fewer than {MIN_ROW_SHARE:.0%} of the "
                f"{previous[1]} in {previous[0].name}: taken for a truncated download"
            )
        if self._required:
            have = {r.name.upper() for r in rows if r.instrument_type in _DERIVATIVE_KINDS}
            absent = [u for u in self._required if u not in have]
            if absent:
                raise BrokerError(f"the Kite instruments dump has no futures or options of {', '.join(absent)}")

    # ------------------------------------------------------------------ the cache

    def _previous_cache(self) -> tuple[Path, int] | None:
        """The newest cache file on disk in today's format and its row count."""
        for candidate in sorted(self._cache_dir.glob("kite-instruments-*.csv"), reverse=True):
            try:
                with candidate.open(newline="", encoding="utf-8") as src:
                    if src.readline().rstrip("\r\n") != ",".join(_CACHE_FIELDS):
                        continue
                    count = sum(1 for _ in src)
            except (OSError, UnicodeDecodeError):
                continue
            if count:
                return candidate, count
        return None

    def _read_cache(self, path: Path) -> list[DumpRow] | None:
        if not path.is_file():
            return None
        try:
            with path.open(newline="", encoding="utf-8") as src:
                reader = csv.reader(src)
                if tuple(next(reader, ())) != _CACHE_FIELDS:
                    log.info("the instruments cache %s is in an older format: downloading the dump again", path)
                    return None
                intern = _Interner()
                return [
                    DumpRow(
                        int(token),
                        intern.text(exchange),
                        symbol,
                        intern.text(name),
                        intern.text(itype),
                        intern.text(segment),
                        intern.expiry(expiry),
                        intern.decimal(strike),
                        intern.decimal(tick),
                        int(lot),
                    )  # fmt: skip
                    for token, exchange, symbol, name, itype, segment, expiry, strike, tick, lot in reader
                ]
        except (OSError, UnicodeDecodeError, ValueError, InvalidOperation) as exc:
            log.warning("ignoring unreadable instruments cache %s: %s", path, exc)
            return None

    def _write_cache(self, path: Path, rows: list[DumpRow]) -> None:
        tmp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("w", newline="", encoding="utf-8") as out:
                writer = csv.writer(out)
                writer.writerow(_CACHE_FIELDS)
                writer.writerows(
                    (r.token, r.exchange, r.symbol, r.name, r.instrument_type, r.segment,
                     r.expiry.isoformat() if r.expiry else "", r.strike, r.tick_size, r.lot_size)
                    for r in rows
                )  # fmt: skip
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
            for old in path.parent.glob("kite-instruments-*.csv"):
                if old != path:
                    old.unlink(missing_ok=True)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            log.warning("could not cache the instruments dump in %s: %s", path.parent, exc)


def parse_rows(raw: Iterable[dict[str, Any]]) -> list[DumpRow]:
    """``KiteConnect.instruments()``'s dicts as ``DumpRow``; malformed rows are left out and counted
    in one warning."""
    intern = _Interner()
    rows: list[DumpRow] = []
    bad = 0
    example = ""
    for r in raw:
        try:
            rows.append(
                DumpRow(
                    token=int(r["instrument_token"]),
                    exchange=intern.text(r["exchange"]),
                    symbol=str(r["tradingsymbol"]),
                    name=intern.text(r["name"] or ""),
                    instrument_type=intern.text(r["instrument_type"]),
                    segment=intern.text(r["segment"]),
                    expiry=intern.expiry(r["expiry"]),
                    strike=intern.decimal(r["strike"] or 0),
                    tick_size=intern.decimal(r["tick_size"] or 0),
                    lot_size=int(r["lot_size"] or 0),
                )
            )
        except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
            bad += 1
            example = example or f"{r.get('tradingsymbol')!r}: {type(exc).__name__}: {exc}"
    if bad:
        log.warning("left out %d malformed rows of the Kite instruments dump (first: %s)", bad, example)
    return rows


def contracts_of(rows: Iterable[DumpRow]) -> list[Contract]:
    """The dump's futures and options as ``Contract``s (``underlying``: their ``name``, upper case),
    then the index and stock rows of those underlyings (kind ``IDX``/``EQ``, on the cash exchange
    of their derivatives: NSE for NFO, BSE for BFO)."""
    out: list[Contract] = []
    derived: set[tuple[str, str]] = set()  # (cash exchange, underlying) with contracts
    cash_rows: list[DumpRow] = []
    for r in rows:
        if r.instrument_type in _DERIVATIVE_KINDS:
            if r.expiry is None:
                continue  # a future or option without an expiry is not a contract we can name
            underlying = r.name.upper()
            is_option = r.instrument_type != FUT
            out.append(
                Contract(
                    r.exchange,
                    r.symbol,
                    underlying,
                    r.instrument_type,
                    r.expiry,
                    r.strike if is_option else None,
                    r.lot_size,
                    r.tick_size,
                    r.token,
                )  # fmt: skip
            )
            cash = _CASH_OF.get(r.exchange)
            if cash:
                derived.add((cash, underlying))
        elif r.exchange in ("NSE", "BSE"):
            cash_rows.append(r)
    for r in cash_rows:
        if r.segment == "INDICES":
            underlying = INDEX_UNDERLYINGS.get((r.exchange, r.symbol))
            kind = "IDX"
        else:
            underlying, kind = r.symbol.upper(), "EQ"
        if underlying and (r.exchange, underlying) in derived:
            out.append(Contract(r.exchange, r.symbol, underlying, kind, None, None, r.lot_size, r.tick_size, r.token))
    return out
