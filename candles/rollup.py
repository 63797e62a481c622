"""Coarser candles from one series' minute candles: what the broker's history gives is minutes,
and the intervals the daemon stores are built from them by the live candle rules.

Rule by rule (ARCHITECTURE.md, "Candle rules"): buckets are the interval's, aligned to 09:15 IST
(rule 1); open is the first minute's open and close the last minute's close, high and low the
extremes over the minutes, so OHLC moves only with the trades the minutes hold (rules 2, 4; a minute
exists only if something traded in it); volume is the sum of the minutes' volumes, which is the rise
in cumulative day volume over the bucket, because each minute's volume is that rise over the minute
(rule 3); OI is the last minute's. ``tick_count`` is the minutes' sum, ``first_tick`` the earliest
minute's and ``last_tick`` the latest minute's, ``final`` holds when every minute is final, and
the source is the minutes' (they share one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from candles.model import Candle, Interval
from core.ist import IST


def roll_up(minutes: Sequence[Candle], interval: Interval) -> list[Candle]:
    """``interval``'s candles from the 1m candles of one series (oldest first), oldest first."""
    if interval.seconds == 60:
        return list(minutes)
    out: list[Candle] = []
    for m in minutes:
        start = interval.bucket_start(m.bucket.timestamp())
        last = out[-1] if out else None
        if last is None or int(last.bucket.timestamp()) != start:
            out.append(replace(m, interval=interval.name, bucket=datetime.fromtimestamp(start, IST)))
            continue
        out[-1] = replace(
            last,
            high=max(last.high, m.high),
            low=min(last.low, m.low),
            close=m.close,
            volume=last.volume + m.volume,
            oi=m.oi if m.oi is not None else last.oi,
            tick_count=last.tick_count + m.tick_count,
            first_tick=min(last.first_tick, m.first_tick),
            last_tick=max(last.last_tick, m.last_tick),
            cum_volume=m.cum_volume if m.cum_volume is not None else last.cum_volume,
            final=last.final and m.final,
        )
    return out
