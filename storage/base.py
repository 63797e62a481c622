"""The interface every candle store implements."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from candles.model import Candle
from candles.reconcile import Reconciliation
from core.contracts import KINDS, Contract


class StoreError(Exception):
    """The store could not do what was asked; the message says what to do."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now (retry later)."""


class StorageFault(StoreUnavailable):
    """The store's own disk refused a write (full, or an I/O error): retry once there is space.
    The message names the store and what the disk said."""


class Fenced(StoreUnavailable):
    """A candle write carried a lease epoch that is no longer current (another daemon took the
    lease over, or it expired), or none: the database refused it and nothing of it was written.
    Like an unreachable store, nothing is dropped (the writer keeps the candles); unlike it, the
    writer that gets it is no longer the leader (pipeline/ha.py)."""


class TextMemo(dict):
    """The text of each distinct value met while encoding one batch, made once: a batch's candles
    share their bucket times, names and (the decoders share one datetime per exchange second)
    most of their tick times. Use one per batch; key only by values whose equal ones are stored
    the same (times, names; not prices: Decimal("1.0") == Decimal("1.00"))."""

    __slots__ = ("_make",)

    def __init__(self, make: Callable[[Any], str]) -> None:
        super().__init__()
        self._make = make

    def __missing__(self, key: Any) -> str:
        text = self[key] = self._make(key)
        return text


@dataclass(frozen=True, slots=True)
class WatchlistEntry:
    exchange: str
    symbol: str
    enabled: bool = True
    priority: int = 0


@dataclass(frozen=True, slots=True)
class WatchRecord:
    """A change to the watched spans of one daemon run (``CandleStore.record_watched``), at ``at``
    (epoch seconds): ``open`` begins a span for ``keys``; ``extend`` moves the end of every open
    span of the run to ``at`` (what a killed daemon leaves behind: watched until then); ``close``
    ends the open spans of ``keys``; ``known`` records a whole span, ``at`` to ``until``, that the
    broker's history answered for (a backfill): gaps leave it out as they leave out watched ones."""

    kind: str  # "open", "extend", "close" or "known"
    at: float
    keys: tuple[tuple[str, str], ...] = ()
    until: float = 0.0  # the end of a "known" span


#: (exchange, symbol) -> its watched spans (began, ended), epoch seconds, in order
WatchedSpans = dict[tuple[str, str], list[tuple[float, float]]]


class CandleStore(abc.ABC):
    """Durable home of candles. Writes are idempotent upserts keyed by
    (exchange, symbol, interval, bucket)."""

    #: short human description without secrets, e.g. "sqlite:data/marketfeed.db"
    description: str = ""

    @abc.abstractmethod
    def migrate(self) -> int:
        """Bring the schema to the latest version; returns the version now in place."""

    @abc.abstractmethod
    def upsert(self, candles: Sequence[Candle], *, force: bool = False) -> None:
        """Insert or replace candles in one transaction. A ``backfill`` candle fills an empty
        bucket or replaces a ``partial``, ``backfill`` or non-final ``live`` one, never a final
        ``live`` one unless ``force`` (candle rule 8); ``live`` and ``partial`` ones always replace."""

    @abc.abstractmethod
    def delete(self, candles: Sequence[Candle]) -> int:
        """Remove the rows with these candles' keys; returns how many were removed."""

    @abc.abstractmethod
    def latest(
        self, exchange: str, symbol: str, interval: str, limit: int = 20
    ) -> list[Candle]:
        """The newest candles of one series, newest first."""

    @abc.abstractmethod
    def between(self, exchange: str, symbol: str, interval: str, start: datetime, end: datetime) -> list[Candle]:
        """One series' candles with ``start <= bucket < end`` (aware datetimes), oldest first."""

    @abc.abstractmethod
    def window(self, exchange: str, symbol: str, interval: str, start: datetime, end: datetime, limit: int) -> list[Candle]:
        """The newest ``limit`` candles of one series with ``start <= bucket < end`` (aware
        datetimes), oldest first (the read API: the last N candles of a range)."""

    @abc.abstractmethod
    def series(self) -> list[tuple[str, str, str]]:
        """Every (exchange, symbol, interval) with a stored candle, in key order; one index probe per
        series, never a scan of the candles."""

    @abc.abstractmethod
    def latest_per_series(self, since_epoch: float) -> list[Candle]:
        """For every (exchange, symbol, interval), its newest candle with bucket >= since
        (used to resume open buckets after a restart)."""

    @abc.abstractmethod
    def watchlist(self) -> list[WatchlistEntry]:
        """Enabled watchlist rows, highest priority first."""

    @abc.abstractmethod
    def set_watchlist(self, entries: Sequence[WatchlistEntry]) -> None:
        """Insert or update watchlist rows (used by tools and tests)."""

    @abc.abstractmethod
    def record_watched(self, run: str, records: Sequence[WatchRecord]) -> None:
        """Apply ``records``, in order, in one transaction, to the spans of daemon run ``run``.
        Applying them twice changes nothing."""

    @abc.abstractmethod
    def watched(self, since: float, until: float, keys: Sequence[tuple[str, str]] | None = None) -> WatchedSpans:
        """The watched spans overlapping ``since`` to ``until`` (epoch seconds), of ``keys`` or of
        every symbol, each symbol's spans in order of their beginning."""

    @abc.abstractmethod
    def record_reconciliations(self, results: Sequence[Reconciliation]) -> None:
        """Store ``results`` in one transaction; one of the same (day, exchange, symbol) is replaced."""

    @abc.abstractmethod
    def reconciliations(self, day: date) -> list[Reconciliation]:
        """The stored results of ``day``, by exchange and symbol."""

    @abc.abstractmethod
    def record_instruments(self, contracts: Sequence[Contract], seen: date) -> None:
        """Store ``contracts`` as resolved into a universe on ``seen``, in one transaction. A
        contract already stored keeps its first day seen and its last moves to ``seen`` if later;
        its metadata is replaced when ``seen`` is not older than the last day stored (the newest
        resolution wins; a late older one only moves the first day back). Strikes and tick sizes
        come back with the scale given (Decimal('24050.00') stays '24050.00')."""

    @abc.abstractmethod
    def instruments(self, exchange: str | None = None, underlying: str | None = None) -> list[Contract]:
        """The stored contracts, expired ones included, of ``exchange`` and/or ``underlying`` or
        all, by exchange, underlying, expiry (an underlying's own row first) and symbol."""

    @abc.abstractmethod
    def instrument(self, exchange: str, symbol: str) -> Contract | None:
        """The stored contract whose candles are stored under (``exchange``, ``symbol``), if any."""

    @abc.abstractmethod
    def instrument_seen(self, exchange: str, symbol: str) -> tuple[date, date] | None:
        """The first and last day the contract was resolved into a universe, if it is stored."""

    @abc.abstractmethod
    def record_roll(self, exchange: str, series: str, day: date, symbol: str) -> None:
        """Record that continuous series ``series`` (``NIFTY-I``: ``storage.continuous``) of
        ``exchange`` takes its candles of ``day`` from contract ``symbol``; a later call for the
        same day replaces the symbol."""

    @abc.abstractmethod
    def rolls(self, exchange: str, series: str) -> list[tuple[date, str]]:
        """Every recorded (day, contract symbol) of one continuous series, by day."""

    @abc.abstractmethod
    def schema_version(self) -> int: ...

    @abc.abstractmethod
    def close(self) -> None: ...


def candle_from_row(row: Sequence[Any], to_time: Callable[[Any], datetime]) -> Candle:
    """A Candle from a row of the candles table in column order; ``to_time`` turns the store's
    timestamp representation into an aware IST datetime."""
    (exchange, symbol, interval, bucket, o, h, lo, c, volume, oi, ticks, first, last, cum, final, source) = row
    return Candle(
        exchange=exchange,
        symbol=symbol,
        interval=interval,
        bucket=to_time(bucket),
        open=Decimal(o),
        high=Decimal(h),
        low=Decimal(lo),
        close=Decimal(c),
        volume=int(volume),
        oi=None if oi is None else int(oi),
        tick_count=int(ticks),
        first_tick=to_time(first),
        last_tick=to_time(last),
        cum_volume=None if cum is None else int(cum),
        final=bool(final),
        source=source,
    )



#: the instruments table's columns in the order ``contract_from_row`` reads them
INSTRUMENT_COLUMNS = "exchange, symbol, underlying, kind, expiry, strike, lot_size, tick_size, token"
#: the upsert's SET of the metadata columns, the same SQL in both stores: the metadata comes from
#: the newest resolution (a later or the same day); an older one only moves first_seen back
KEEP_NEWEST_METADATA = ", ".join(
    f"{c} = CASE WHEN excluded.last_seen >= instruments.last_seen THEN excluded.{c} ELSE instruments.{c} END"
    for c in ("underlying", "kind", "expiry", "strike", "lot_size", "tick_size", "token")
)


def checked_contracts(contracts: Sequence[Contract], seen: date) -> list[Contract]:
    """``contracts`` ready for the instruments table, the last of a repeated (exchange, symbol)
    winning; a StoreError names the first one that cannot be stored and why (nothing is written)."""
    if type(seen) is not date:
        raise StoreError(f"refusing seen={seen!r}: the day instruments were seen must be a date (not a datetime)")
    unique: dict[tuple[str, str], Contract] = {}
    for c in contracts:
        problem = _contract_problem(c)
        if problem:
            raise StoreError(f"refusing instrument {c!r}: {problem}; fix the instrument master's parser")
        unique[(c.exchange, c.symbol)] = c
    return list(unique.values())


def _contract_problem(c: Contract) -> str:
    if not isinstance(c, Contract):
        return "not a core.contracts.Contract"
    if not (isinstance(c.exchange, str) and c.exchange and isinstance(c.symbol, str) and c.symbol):
        return "exchange and symbol must be non-empty text"
    if not isinstance(c.underlying, str):
        return "underlying must be text"
    if c.kind not in KINDS:
        return f"kind must be one of {', '.join(KINDS)}"
    if c.expiry is not None and type(c.expiry) is not date:
        return "expiry must be a date (not a datetime) or None"
    if c.strike is not None and not (isinstance(c.strike, Decimal) and c.strike.is_finite()):
        return "strike must be a finite Decimal or None"
    if not (isinstance(c.tick_size, Decimal) and c.tick_size.is_finite()):
        return "tick_size must be a finite Decimal"
    if not (type(c.lot_size) is int and type(c.token) is int):
        return "lot_size and token must be whole numbers (int)"
    return ""


def contract_from_row(row: Sequence[Any], to_date: Callable[[Any], date]) -> Contract:
    """A Contract from a row of ``INSTRUMENT_COLUMNS``; ``to_date`` turns the store's day
    representation into a date."""
    exchange, symbol, underlying, kind, expiry, strike, lot_size, tick_size, token = row
    return Contract(
        exchange=exchange,
        symbol=symbol,
        underlying=underlying,
        kind=kind,
        expiry=None if expiry is None else to_date(expiry),
        strike=None if strike is None else Decimal(strike),
        lot_size=int(lot_size),
        tick_size=Decimal(tick_size),
        token=int(token),
    )
