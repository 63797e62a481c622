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


class StoreError(Exception):
    """The store could not do what was asked; the message says what to do."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now (retry later)."""


class StorageFault(StoreUnavailable):
    """The store's own disk refused a write (full, or an I/O error): retry once there is space.
    The message names the store and what the disk said."""


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

