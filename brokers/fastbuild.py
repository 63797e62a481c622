"""Fast construction of the frozen value objects the protocol decoders build per packet.

Shared by the broker codecs (their hot path); the objects built are genuine, immutable instances.
"""

from __future__ import annotations

from typing import Any

from brokers.base import Depth, DepthLevel, DepthSource, TickData
from candles.model import fast_new

new_tick = fast_new(TickData)
new_level = fast_new(DepthLevel)


class _MutableDepth:
    __slots__ = Depth.__slots__


def new_depth(bids: tuple[DepthLevel, ...], asks: tuple[DepthLevel, ...]) -> Depth:
    """``Depth(bids, asks)``, built the fast way (see ``fast_new``)."""
    obj: Any = object.__new__(_MutableDepth)
    obj._bids = bids
    obj._asks = asks
    obj._raw = None
    obj._source = None
    obj.__class__ = Depth
    return obj


def deferred_depth(raw: bytes, source: DepthSource) -> Depth:
    """A ``Depth`` whose levels ``source.depth_levels(raw)`` builds on first read."""
    obj: Any = object.__new__(_MutableDepth)
    obj._bids = None
    obj._asks = None
    obj._raw = raw
    obj._source = source
    obj.__class__ = Depth
    return obj
