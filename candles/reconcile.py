"""One symbol's day of stored minute candles compared with the broker's, bucket by bucket.

Only ``live`` candles are compared: a ``partial`` one (the daemon did not watch its whole bucket),
a ``live`` one that is not final (a stop cut it short) and a ``backfill`` one (the broker's own) are
counted, never called mismatches. Open, high, low and close must be equal as Decimals; volume too,
except the one known, legitimate difference: the broker's first minute of the day also carries the
volume traded before its first trade the daemon saw (the pre-open trades at Kite), while a live
candle counts from the first tick watched. A first minute whose broker volume is the larger is
counted as ``volume_preopen``, not as a volume mismatch. A bucket the broker has and the store does
not is ``missing_here`` (a hole); one the store has live and the broker does not is
``missing_at_kite`` (suspicious: a candle made of trades the exchange does not know).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime

from candles.model import BACKFILL, LIVE, Candle

PRICE_FIELDS = ("open", "high", "low", "close")
#: the counts of a ``Reconciliation``, in the order of its fields (and of the table's columns)
COUNTS = (
    "compared", "mismatched", "missing_here", "missing_at_kite", "open_diff", "high_diff", "low_diff", "close_diff",
    "volume_diff", "volume_preopen", "partial_skipped", "backfill_skipped",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """The result for one (day, exchange, symbol); ``checked_at`` is when it was made."""

    day: date
    exchange: str
    symbol: str
    compared: int = 0  # buckets both sides have, ours live and final
    mismatched: int = 0  # of those, buckets with any field different (the known volume difference aside)
    missing_here: int = 0
    missing_at_kite: int = 0
    open_diff: int = 0
    high_diff: int = 0
    low_diff: int = 0
    close_diff: int = 0
    volume_diff: int = 0
    volume_preopen: int = 0  # the first minute's known difference: the broker counts pre-open volume
    partial_skipped: int = 0  # partial, or live but not final: not compared
    backfill_skipped: int = 0  # the broker's own candles, stored by --backfill: not compared
    checked_at: datetime | None = None

    @property
    def differs(self) -> bool:
        """Anything an operator must look at: a mismatched bucket or a candle the broker does not have."""
        return bool(self.mismatched or self.missing_at_kite)


def reconcile(
    day: date, exchange: str, symbol: str, theirs: Iterable[Candle], ours: Iterable[Candle], checked_at: datetime
) -> Reconciliation:
    """Compare one symbol's minute candles of ``day``: ``theirs`` from the broker, ``ours`` from the
    store, both already limited to the day's session minutes."""
    kite = {c.bucket: c for c in theirs}
    mine = {c.bucket: c for c in ours}
    first = min(kite) if kite else None
    counts = dict.fromkeys(("compared", "mismatched", "missing_here", "missing_at_kite", "volume_diff",
                            "volume_preopen", "partial_skipped", "backfill_skipped"), 0)  # fmt: skip
    diffs = dict.fromkeys(PRICE_FIELDS, 0)
    for bucket in sorted(kite.keys() | mine.keys()):
        k, m = kite.get(bucket), mine.get(bucket)
        if m is None:
            counts["missing_here"] += 1
            continue
        if m.source == BACKFILL:
            counts["backfill_skipped"] += 1
            continue
        if m.source != LIVE or not m.final:
            counts["partial_skipped"] += 1
            continue
        if k is None:
            counts["missing_at_kite"] += 1
            continue
        counts["compared"] += 1
        bad = False
        for f in PRICE_FIELDS:
            if getattr(k, f) != getattr(m, f):
                diffs[f] += 1
                bad = True
        if k.volume != m.volume:
            if bucket == first and k.volume > m.volume:
                counts["volume_preopen"] += 1
            else:
                counts["volume_diff"] += 1
                bad = True
        counts["mismatched"] += bad
    return Reconciliation(
        day, exchange, symbol, **counts, **{f"{f}_diff": n for f, n in diffs.items()}, checked_at=checked_at
    )


#: symbols listed under the summary, those that differ most first
WORST_SHOWN = 10


def _fields(r: Reconciliation) -> str:
    counts = [(f, getattr(r, f"{f}_diff")) for f in (*PRICE_FIELDS, "volume")]
    return ", ".join(f"{f} {n}" for f, n in counts if n)


def summary(day: date, results: list[Reconciliation]) -> str:
    """``reconcile 2026-12-04: 120 symbols, 45,000 buckets compared, 3 mismatched (close 2, volume 1), ...``"""
    total = Reconciliation(day, "", "", **{f: sum(getattr(r, f) for r in results) for f in COUNTS})
    fields = _fields(total)
    return (
        f"reconcile {day}: {len(results)} symbols, {total.compared:,} buckets compared, {total.mismatched:,} mismatched"
        f"{f' ({fields})' if fields else ''}, {total.missing_here:,} missing here, {total.missing_at_kite:,} at Kite; "
        f"not compared: {total.partial_skipped:,} partial, {total.backfill_skipped:,} backfill; "
        f"{total.volume_preopen:,} first minutes with Kite's pre-open volume (expected)"
    )


def worst(results: list[Reconciliation]) -> list[str]:
    """The symbols that differ, most first, one line each (at most ``WORST_SHOWN``)."""
    bad = sorted((r for r in results if r.differs), key=lambda r: (-(r.mismatched + r.missing_at_kite), r.exchange, r.symbol))
    lines = [
        f"  {r.exchange}:{r.symbol}: {r.mismatched} mismatched{f' ({_fields(r)})' if _fields(r) else ''}, "
        f"{r.missing_at_kite} missing at Kite, {r.missing_here} missing here, of {r.compared} compared"
        for r in bad[:WORST_SHOWN]
    ]
    if len(bad) > WORST_SHOWN:
        lines.append(f"  ... and {len(bad) - WORST_SHOWN} more (table reconciliation)")
    return lines

