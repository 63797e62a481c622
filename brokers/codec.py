"""What the venues' sans-I/O codecs share: the caches of the immutable values they build per packet,
and the count of malformed input.

A feed repeats itself: the same prices, the same depth levels and the same exchange second come
back packet after packet. Each cache is a ``dict`` whose ``__missing__`` builds a value on its
first lookup; every later lookup is a plain dict hit, with no Python-level call. That is why the
decode loops index them (``prices[raw]``, ``levels[row]``, ``times[ts]``) instead of calling a
function. The caches are bounded and cleared wholesale when full: cheap, and a day's working set
of prices for a 3000-instrument watchlist fits comfortably.

Prices are exact ``Decimal`` values: the raw integer over the venue's price unit (pykiteconnect's
``kiteconnect/ticker.py`` divides by the segment's divisor, Kotak's ``kotakneoapi`` SDK by the
exchange's divider from the auth reply), keeping the unit's decimals (``1220.00``, never
``1220.0000001``).

Like the codecs, nothing here has a socket, a thread or a clock.
"""

from __future__ import annotations

import logging
import struct
from datetime import datetime, timedelta
from decimal import Context, Decimal

from core.fastnew import new_level as _new_level
from core.ist import IST
from core.ticks import DepthLevel

# Bounds of the value caches: cleared wholesale when full.
PRICE_CACHE_MAX = 1 << 17
LEVEL_CACHE_MAX = 1 << 17
TIME_CACHE_MAX = 1 << 12

# Exact arithmetic: a 32-bit price has at most 10 digits, well within this precision.
_CTX = Context(prec=40)


class PriceCache(dict):
    """raw integer -> exact Decimal ``raw x 10^exponent`` (missing entries are built on lookup)."""

    __slots__ = ("exponent",)

    def __init__(self, exponent: int) -> None:
        super().__init__()
        self.exponent = exponent

    def __missing__(self, raw: int) -> Decimal:
        if len(self) >= PRICE_CACHE_MAX:
            self.clear()
        value = self[raw] = Decimal(raw).scaleb(self.exponent, _CTX)
        return value


class DividedPriceCache(dict):
    """raw integer -> ``raw / divider`` at 40 digits, for a divider that is no power of ten."""

    __slots__ = ("divider",)

    def __init__(self, divider: int) -> None:
        super().__init__()
        self.divider = Decimal(divider)

    def __missing__(self, raw: int) -> Decimal:
        if len(self) >= PRICE_CACHE_MAX:
            self.clear()
        value = self[raw] = _CTX.divide(Decimal(raw), self.divider)
        return value


def price_cache(divider: int) -> PriceCache | DividedPriceCache:
    """The cache of prices quoted in units of ``1/divider``: a power of ten keeps its decimals exactly."""
    digits = len(str(divider)) - 1
    return PriceCache(-digits) if divider == 10**digits else DividedPriceCache(divider)


class LevelCache(dict):
    """raw depth entry -> DepthLevel: ``row`` unpacks the entry into (quantity, raw price, orders),
    the price is looked up in ``prices``. A level that did not change since an earlier packet is a
    dict hit, not a new object."""

    __slots__ = ("prices", "_unpack")

    def __init__(self, prices: PriceCache | DividedPriceCache, row: struct.Struct) -> None:
        super().__init__()
        self.prices = prices
        self._unpack = row.unpack

    def __missing__(self, raw: bytes) -> DepthLevel:
        if len(self) >= LEVEL_CACHE_MAX:
            self.clear()
        quantity, price, orders = self._unpack(raw)
        level = self[raw] = _new_level(self.prices[price], quantity, orders)
        return level


class TimeCache(dict):
    """raw epoch value -> aware IST datetime, or None when the value is no time (zero or negative).

    Seconds, or milliseconds for values of 10^12 to 10^13 (Kotak's docs leave the unit open; a
    u32 Kite timestamp is always seconds). The same second repeats across a frame's packets.
    """

    __slots__ = ()

    def __missing__(self, raw: int) -> datetime | None:
        if len(self) >= TIME_CACHE_MAX:
            self.clear()
        value: datetime | None = None
        if 0 < raw < 10**10:  # seconds, up to the year 2286
            value = datetime.fromtimestamp(raw, IST)
        elif 10**12 <= raw < 10**13:  # milliseconds, 2001 .. 2286
            value = datetime.fromtimestamp(raw // 1000, IST) + timedelta(milliseconds=raw % 1000)
        self[raw] = value
        return value


class MalformedCounter:
    """Counts malformed input by kind into ``counts`` (a decoder's ``stats.malformed``) and logs the
    first of each kind only (``<venue>: malformed input (...)``): a broken feed must not flood the log.
    Called as ``counter(kind, detail)``, on the rare paths only."""

    __slots__ = ("counts", "_venue", "_log", "_logged")

    def __init__(self, counts: dict[str, int], venue: str, log: logging.Logger) -> None:
        self.counts = counts
        self._venue = venue
        self._log = log
        self._logged: set[str] = set()

    def __call__(self, kind: str, detail: str) -> None:
        counts = self.counts
        counts[kind] = counts.get(kind, 0) + 1
        if kind not in self._logged:
            self._logged.add(kind)
            self._log.warning("%s: malformed input (%s): %s; counting further ones silently", self._venue, kind, detail)
