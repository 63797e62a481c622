"""The values every layer shares: a tick, its market depth, an instrument, a frame's batch of ticks.

Plain frozen values, no I/O. The broker feeds build them, the pipeline hands them on, the
aggregator reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import FrozenInstanceError, dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol


@dataclass(frozen=True, slots=True)
class DepthLevel:
    price: Decimal
    quantity: int
    orders: int


class DepthSource(Protocol):
    """What decodes a deferred book: raw bytes -> (bids, asks)."""

    def depth_levels(self, raw: bytes) -> tuple[tuple[DepthLevel, ...], tuple[DepthLevel, ...]]: ...


class Depth:
    """The best bids and asks, best first; immutable, compared and hashed by value.

    A decoder may hand over the raw book with what decodes it (``core.fastnew.deferred_depth``):
    the levels are then built on first read of ``bids`` or ``asks``, so a consumer that never
    looks at depth (the candle pipeline) does not pay for it. Either way it reads the same.
    """

    __slots__ = ("_bids", "_asks", "_raw", "_source")
    __match_args__ = ("bids", "asks")

    def __init__(self, bids: tuple[DepthLevel, ...], asks: tuple[DepthLevel, ...]) -> None:
        setattr_ = object.__setattr__
        setattr_(self, "_bids", bids)
        setattr_(self, "_asks", asks)
        setattr_(self, "_raw", None)
        setattr_(self, "_source", None)

    def _decode(self) -> None:
        source = self._source
        if source is not None:
            bids, asks = source.depth_levels(self._raw)
            setattr_ = object.__setattr__
            setattr_(self, "_bids", bids)
            setattr_(self, "_asks", asks)
            setattr_(self, "_source", None)
            setattr_(self, "_raw", None)

    @property
    def bids(self) -> tuple[DepthLevel, ...]:
        if self._source is not None:
            self._decode()
        return self._bids

    @property
    def asks(self) -> tuple[DepthLevel, ...]:
        if self._source is not None:
            self._decode()
        return self._asks

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Depth):
            return self.bids == other.bids and self.asks == other.asks
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.bids, self.asks))

    def __repr__(self) -> str:
        return f"Depth(bids={self.bids!r}, asks={self.asks!r})"

    def __reduce__(self) -> tuple[type, tuple]:
        return (Depth, (self.bids, self.asks))


@dataclass(frozen=True, slots=True)
class Instrument:
    """A tradable symbol as the broker knows it."""

    exchange: str  # NSE, BSE, NFO, MCX ...
    symbol: str  # trading symbol, e.g. INFY
    token: int = 0  # the broker's numeric instrument id (0 when the broker has none)
    tick_size: Decimal = Decimal("0.05")

    @property
    def key(self) -> str:
        return f"{self.exchange}:{self.symbol}"


@dataclass(frozen=True, slots=True)
class TickData:
    """One update from a feed.

    ``volume`` is the feed's cumulative traded volume for the day (``None`` when the feed has
    no volume, e.g. indices). Timestamps are timezone-aware; ``exchange_ts`` is the receive time
    when the feed gives none.
    """

    broker: str
    exchange: str
    symbol: str
    token: int
    last_price: Decimal
    last_quantity: int | None
    volume: int | None
    oi: int | None
    exchange_ts: datetime
    receive_ts: datetime
    depth: Depth | None = None

    @property
    def key(self) -> str:
        return f"{self.exchange}:{self.symbol}"


TickBatchCallback = Callable[[Sequence[TickData]], None]


class FrameSource(Protocol):
    """What decodes a feed's frames again, away from the connection that received them: ``pack``
    keeps what ``replay`` needs of a frame (dropping what a candle never reads, e.g. depth).
    ``dumps`` gives the source as bytes that the loader its feed files under ``codec`` (see
    ``brokers.base.BaseBroker.frame_codecs``) turns back into an equal source."""

    codec: str

    def dumps(self) -> bytes: ...

    def pack(self, frame: bytes) -> bytes: ...

    def replay(self, packed: bytes, receive_epoch: float) -> list[TickData]: ...


class FrameBatch(list):  # type: ignore[type-arg]  # a list of TickData
    """The ticks decoded from one frame, with what gives them again: ``source.replay(source.pack(frame),
    receive_epoch)`` equals the ticks in all a candle reads of them. The tick journal keeps the frame
    rather than the ticks: one write per frame, no work per tick."""

    __slots__ = ("source", "receive_epoch", "frame")

    def __init__(self, ticks: Sequence[TickData], source: FrameSource, receive_epoch: float, frame: bytes) -> None:
        super().__init__(ticks)
        self.source = source
        self.receive_epoch = receive_epoch
        self.frame = frame
