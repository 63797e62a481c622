"""The broker surface every feed implements."""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from candles.model import Candle
from core.contracts import Contract
from core.ticks import FrameSource, Instrument, TickBatchCallback


@dataclass(frozen=True, slots=True)
class ConnectionState:
    """A snapshot of one feed connection, for health reports."""

    id: int
    connected: bool
    instruments: int  # how many instruments it carries
    reconnects: int = 0  # successful re-opens after the first connection
    last_frame_age: float | None = None  # seconds since the last frame of any kind; None before the first
    last_error: str | None = None
    session_changes: int = 0  # moves to a renewed login session without a reconnect (Kotak Neo)


@dataclass(frozen=True, slots=True)
class WatchChange:
    """Instruments the feed began (``up``: subscribed on an open connection) or stopped (the
    connection went down: ``at`` is its last frame) watching, at ``at`` (epoch seconds, the feed's
    clock). ``keys`` are (exchange, symbol) pairs."""

    up: bool
    at: float
    keys: tuple[tuple[str, str], ...]
    connection: int = 1


WatchCallback = Callable[[WatchChange], None]


@dataclass(slots=True)
class FeedStats:
    """What every feed counts, summed over its connections."""

    heartbeats: int = 0  # the server's keep-alive frames (a feed that has none counts 0)
    malformed: dict[str, int] = field(default_factory=dict)  # malformed input, by what was wrong with it


def lookup_symbols(
    table: Mapping[tuple[str, str], Instrument], pairs: Sequence[tuple[str, str]]
) -> tuple[list[Instrument], list[str]]:
    """Split (exchange, symbol) pairs into the instruments ``table`` knows and the keys it does not."""
    known: list[Instrument] = []
    unknown: list[str] = []
    for exchange, symbol in pairs:
        inst = table.get((exchange, symbol))
        if inst is None:
            unknown.append(f"{exchange}:{symbol}")
        else:
            known.append(inst)
    return known, unknown


class BrokerError(Exception):
    """A broker could not do what was asked; the message says what to do."""


class CredentialsRefused(BrokerError):
    """The broker refused the account's credentials (a wrong MPIN, TOTP secret, consumer key or API
    key; an access token that needs a new login): starting again with the same settings cannot help,
    and each attempt may count against the account. The message names what to fix."""


class NoInstrumentMaster(BrokerError):
    """The broker has no instrument master of futures and options (the simulator): a configuration error."""


class HistoryUnavailable(BrokerError):
    """The broker refuses its history to this app or token (Kite: HTTP 403). ``lasting`` when no
    new login can help (the app lacks the historical data add-on); otherwise a new access token may."""

    def __init__(self, message: str, *, lasting: bool = False) -> None:
        super().__init__(message)
        self.lasting = lasting


class History(Protocol):
    """A broker's candle history: what the daemon's backfill asks (brokers/kite/historical.py)."""

    name: str  # for log lines: "Kite's historical API"

    def prepare(self, keys: list[tuple[str, str]]) -> None:
        """Look up ``keys`` in one go before their candles are asked for (may download a list)."""
        ...

    def minute_candles(self, exchange: str, symbol: str, start: datetime, end: datetime) -> list[Candle] | None:
        """Final 1m candles whose minute starts in ``[start, end)`` (aware datetimes), oldest first;
        a minute without a trade has none. None when the broker does not know the symbol. Raises
        ``HistoryUnavailable`` when refused, ``BrokerError`` when it failed (retry later)."""
        ...


class BaseBroker(abc.ABC):
    """A market-data feed.

    Implementations decode in their own socket threads and hand batches of ``TickData`` to the
    callback given to ``connect``. The callback must be cheap (it enqueues); it is called from the
    broker's threads.
    """

    name: str = "base"
    #: how many instruments one connection may carry
    max_symbols_per_connection: int = 0
    #: how many connections the broker allows per account / API key
    max_connections: int = 1
    #: told when instruments begin or stop being watched (``watch``); None: nobody listens
    _on_watch: WatchCallback | None = None

    @property
    def max_symbols(self) -> int:
        return self.max_symbols_per_connection * self.max_connections

    def watch(self, callback: WatchCallback | None) -> None:
        """Call ``callback`` (from the feed's threads; it must be cheap) whenever instruments begin
        or stop being watched. Set it before ``connect``."""
        self._on_watch = callback

    def _report_watch(self, up: bool, at: float, keys: tuple[tuple[str, str], ...], connection: int = 1) -> None:
        callback = self._on_watch
        if callback is not None and keys:
            callback(WatchChange(up, at, keys, connection))

    @abc.abstractmethod
    def connect(self, on_ticks: TickBatchCallback) -> None:
        """Start the feed; ticks flow to ``on_ticks`` until ``disconnect``."""

    @abc.abstractmethod
    def disconnect(self) -> None:
        """Stop the feed and join its threads."""

    @abc.abstractmethod
    def subscribe(self, instruments: Sequence[Instrument]) -> None: ...

    @abc.abstractmethod
    def unsubscribe(self, instruments: Sequence[Instrument]) -> None: ...

    @abc.abstractmethod
    def is_connected(self) -> bool: ...

    @property
    def problem(self) -> str | None:
        """Why the feed cannot recover by itself (a rejected login, say), None while it can."""
        return None

    def connection_states(self) -> list[ConnectionState]:
        """One entry per connection, in id order (default: one connection, up while connected)."""
        return [ConnectionState(1, self.is_connected(), 0)]

    def feed_stats(self) -> FeedStats:
        return FeedStats()

    @property
    def reauths(self) -> int:
        """Logins after the first (session renewals); 0 for a feed that never renews."""
        return 0

    def frame_codecs(self) -> Mapping[str, Callable[[bytes], FrameSource]]:
        """The loaders of the frame sources this feed hands over (``core.ticks.FrameBatch``), by codec
        name: what the tick journal needs to replay the frames it kept."""
        return {}

    def resolve(self, symbols: Sequence[tuple[str, str]]) -> tuple[list[Instrument], list[str]]:
        """Map (exchange, symbol) pairs to instruments; returns (known, unknown keys)."""
        return [Instrument(exchange, symbol) for exchange, symbol in symbols], []

    def contracts(self) -> list[Contract]:
        """The futures and options of the broker's instrument master, and the index and stock rows
        they are written on: what derivatives universes are resolved from (``core.universe``)."""
        raise NoInstrumentMaster(
            f"{self.name} has no instrument master of futures and options: universe entries (FUT, OPT) "
            "need --broker kite or kotak_neo"
        )

    def refresh_instruments(self, required: Collection[str] = ()) -> None:
        """Fetch today's instrument master again (a new day's contracts). Atomic: a download that
        fails or does not validate (``required``: underlyings it must have contracts of) keeps the
        current master, with a warning. Afterwards ``resolve`` and ``contracts`` answer from it.
        A broker without a master (the default) has nothing to refresh."""
        return None

    def check_capacity(self, count: int) -> None:
        """Refuse a watchlist larger than the broker can carry, with the numbers."""
        if count > self.max_symbols:
            raise BrokerError(
                f"{count} instruments exceed what {self.name} allows: "
                f"{self.max_symbols_per_connection} per connection x {self.max_connections} "
                f"connections = {self.max_symbols}; shorten the watchlist or split it across "
                "daemons with --shard"
            )
