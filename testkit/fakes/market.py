"""A moving underlying for the Kite fake: an index whose price a test sets, and the futures and
options written on it quoted from that price, so that a derivatives universe can be watched as it
re-centres.

Kite answers a subscription with the instrument's last snapshot (the fake does too, from what it
has sent or recorded for the token), so every contract is quoted from the start: a strike the
daemon subscribes after a move gets its first tick at once, as on the real feed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal

from testkit.fakes.kite_server import FakeInstrument, KiteFakeServer, TapeTick

TIME_VALUE = Decimal("20")  # what an option is quoted above its intrinsic value
FUTURE_PREMIUM = Decimal("30")
TICK = Decimal("0.05")


class MovingUnderlying:
    """``underlying`` (an index row of the dump) and every contract of ``rows`` written on ``name``."""

    def __init__(
        self, server: KiteFakeServer, underlying: FakeInstrument, name: str, rows: Sequence[FakeInstrument], price: Decimal
    ) -> None:
        self.server = server
        self.underlying = underlying
        self.contracts = [r for r in rows if r.name == name and r.instrument_type in ("FUT", "CE", "PE")]
        self.price = Decimal(price)
        self._volume = 0

    def quote(self, row: FakeInstrument) -> Decimal:
        """A contract's price at the current underlying price."""
        if row.instrument_type == "FUT":
            value = self.price + FUTURE_PREMIUM
        else:
            strike = Decimal(row.strike)
            intrinsic = self.price - strike if row.instrument_type == "CE" else strike - self.price
            value = max(intrinsic, Decimal(0)) + TIME_VALUE
        return (value / TICK).quantize(Decimal(1), ROUND_HALF_UP) * TICK

    def move(self, price: Decimal | str) -> float:
        """Set the underlying's price: its tick is sent first, then every contract re-quoted.
        Returns ``time.monotonic()`` just before the underlying's tick left."""
        self.price = Decimal(str(price))
        now = int(time.time())
        self._volume += 1
        sent_at = time.monotonic()
        self.server.send_ticks([TapeTick(self.underlying.token, self.price, 0, 0, now)])
        self.server.send_ticks(
            [TapeTick(r.token, self.quote(r), 1, self._volume, now, oi=1000) for r in self.contracts]
        )
        return sent_at
