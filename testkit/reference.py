"""Brute-force reference for the candle rules (ARCHITECTURE.md, "Candle rules"), independent of
``candles.aggregator``: it shares only ``Interval.bucket_start`` and ``ist_date``.

It looks at the whole tick list at once, in arrival order, and says what the final candles must
be after every revision has been upserted; compare with :func:`candle_to_dict` applied to what
the aggregator emitted (or what a store holds).

Definitions (per symbol; "day" is the IST day of a tick's exchange timestamp):

* Segment. Ticks of a symbol-day belong to generation 0 until a newer tick (exchange ts >
  every earlier arrival of the symbol-day) shows a cumulative volume below the max volume of
  earlier arrivals of the current generation: then the feed started a new trading day and that
  tick opens the next generation. A segment is (day, generation).
* Trade. A tick is a trade iff its volume is None (unless it repeats the exchange ts and price of
  the previous volume-less arrival of its symbol-day: a resubscribe snapshot), or it opens a new
  generation, or its volume exceeds every volume of earlier arrivals of its segment with
  exchange ts <= its own.
* Baseline of a segment: generation 0 -> the first volume that arrived that day (what traded
  before we started watching is unknown); later generations -> 0.
* Per (symbol, interval) bucket B (``Interval.bucket_start`` of the exchange ts), over the ticks
  placed in B:
    open/close = price of the trade with the smallest/largest exchange ts (ties: first/last
    arrival); high/low over trades; tick_count = trades; first/last_tick_epoch = min/max trade
    ts; oi = oi of the tick (trade or quote) with the largest ts (ties: last arrival);
    volume = sum over segments s with a volume in B of max(0, maxvol_s(B) - base_s(B)) where
    base_s(B) = max volume of segment-s ticks placed in earlier buckets, else s's baseline;
    cum_volume = max volume in B of the latest segment that has one in B (None if none).
  Only buckets with at least one trade are candles.
* Provenance (rule 8). ``unwatched`` lists spans (arrivals before it, since, until) in which
  nothing was watched (a restart, a feed outage). B is ``partial`` if [start, end) overlaps a
  span (start < until and end > since), else ``live``. Per series, the first arrival after a span
  with an exchange time at or after ``since`` (an older one repeats what was seen, as a feed's
  snapshot on resubscribing does): if its bucket starts inside the span and holds no
  earlier arrival with a volume, its volume counts from that arrival's volume (the base is at
  least it).
* ``horizon_ok=True`` (default): every tick is placed (the caller knows none arrived beyond the
  revision horizon). ``horizon_ok=False``: a tick's ``receive_ts`` is its arrival clock and it is
  left out of an interval's bucket when receive >= bucket end + grace + revision_horizon.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from candles.model import Candle, Interval
from core.ist import ist_date

Key = tuple[str, str, str, int]  # exchange, symbol, interval name, bucket start (epoch seconds)


class _Day:
    """What the reference remembers of one symbol-day while classifying."""

    def __init__(self) -> None:
        self.latest_ts = float("-inf")  # newest exchange ts of any earlier arrival
        self.gen = 0  # volume resets so far
        self.volumes: list[tuple[float, int]] = []  # (ts, volume) of arrivals of this generation
        self.gen_max: int | None = None  # max of those volumes
        self.plain: tuple[float, Any] | None = None  # (ts, price) of the last arrival without volume


def reference_candles(
    arrivals: Iterable[Any],
    intervals: Sequence[Interval],
    *,
    horizon_ok: bool = True,
    grace: float = 2.0,
    revision_horizon: float = 900.0,
    unwatched: Sequence[tuple[int, float, float]] | None = None,
) -> dict[Key, dict[str, Any]]:
    """Final candles for ``arrivals`` (tick objects with exchange, symbol, last_price, volume,
    oi, exchange_ts and, for ``horizon_ok=False``, receive_ts; in arrival order).

    Returns {(exchange, symbol, interval_name, bucket_epoch): {open, high, low, close, volume,
    oi, tick_count, first_tick_epoch, last_tick_epoch, cum_volume}}, plus ``source`` when
    ``unwatched`` is given (compare with ``candle_to_dict(c, with_source=True)``).
    """
    spans = unwatched or ()
    # ---- pass 1: classify every arrival -------------------------------------------------------
    rows = []  # (arrival index, tick, ts, segment, trade)
    days: dict[tuple[str, str, int], _Day] = {}
    baselines: dict[tuple[str, str, int, int], int] = {}  # (exchange, symbol, day, gen) -> baseline
    for index, tick in enumerate(arrivals):
        ts = tick.exchange_ts.timestamp()
        day = ist_date(ts)
        state = days.setdefault((tick.exchange, tick.symbol, day), _Day())
        volume = tick.volume
        in_order = ts >= state.latest_ts
        newer = ts > state.latest_ts
        state.latest_ts = max(state.latest_ts, ts)
        gen_max = state.gen_max
        if volume is None:
            trade = state.plain != (ts, tick.last_price)
            state.plain = (ts, tick.last_price)
        elif newer and gen_max is not None and volume < gen_max:
            state.gen += 1  # cumulative volume fell: the feed started a new trading day
            state.volumes = []
            state.gen_max = None
            trade = True
        elif in_order:  # every earlier arrival is at or before this tick
            trade = volume is None or gen_max is None or volume > gen_max
        else:
            prior = [v for t, v in state.volumes if t <= ts]
            trade = volume is None or not prior or volume > max(prior)
        if volume is not None:
            state.volumes.append((ts, volume))
            state.gen_max = volume if state.gen_max is None else max(state.gen_max, volume)
            baselines.setdefault((tick.exchange, tick.symbol, day, state.gen), volume if state.gen == 0 else 0)
        rows.append((index, tick, ts, (day, state.gen), trade))

    # ---- pass 2: per interval, group into buckets -----------------------------------------------
    result: dict[Key, dict[str, Any]] = {}
    for interval in intervals:
        buckets: dict[Key, list] = {}
        for row in rows:
            _, tick, ts, _, _ = row
            start = interval.bucket_start(ts)
            if not horizon_ok and tick.receive_ts.timestamp() >= start + interval.seconds + grace + revision_horizon:
                continue
            buckets.setdefault((tick.exchange, tick.symbol, interval.name, start), []).append(row)

        # rule 8: the bucket each series enters first after an unwatched span, and its base
        floors: dict[Key, int] = {}
        for before, since, until in spans:
            entered: set[tuple[str, str, str]] = set()
            for index, tick, ts, _, _ in rows[before:]:
                series = (tick.exchange, tick.symbol, interval.name)
                start = interval.bucket_start(ts)
                if series in entered or start + interval.seconds <= since or ts < since:  # an older tick is a repeat
                    continue
                entered.add(series)
                key = (*series, start)
                fresh = not any(r[0] < index and r[1].volume is not None for r in buckets.get(key, ()))
                if since < start < until and tick.volume is not None and fresh:
                    floors[key] = tick.volume

        # max volume per segment over each series' earlier buckets, walking buckets in time order
        earlier_max: dict[Key, dict[tuple[int, int], int]] = {}
        running: dict[tuple[str, str, str], dict[tuple[int, int], int]] = {}
        for key in sorted(buckets, key=lambda k: (k[:3], k[3])):
            series_max = running.setdefault(key[:3], {})
            earlier_max[key] = dict(series_max)
            for r in buckets[key]:
                if r[1].volume is not None:
                    series_max[r[3]] = max(series_max.get(r[3], r[1].volume), r[1].volume)

        for key, placed in buckets.items():
            trades = [r for r in placed if r[4]]
            if not trades:
                continue
            exchange, symbol, _, start = key
            first = min(trades, key=lambda r: (r[2], r[0]))
            last = max(trades, key=lambda r: (r[2], r[0]))
            latest = max(placed, key=lambda r: (r[2], r[0]))
            volume = 0
            segments = sorted({r[3] for r in placed if r[1].volume is not None})
            for seg in segments:
                top = max(r[1].volume for r in placed if r[3] == seg and r[1].volume is not None)
                base = earlier_max[key].get(seg, baselines[(exchange, symbol, *seg)])
                if key in floors:
                    base = max(base, floors[key])
                volume += max(0, top - base)
            cum = None
            if segments:
                cum = max(r[1].volume for r in placed if r[3] == segments[-1] and r[1].volume is not None)
            result[key] = {
                "open": first[1].last_price,
                "high": max(r[1].last_price for r in trades),
                "low": min(r[1].last_price for r in trades),
                "close": last[1].last_price,
                "volume": volume,
                "oi": latest[1].oi,
                "tick_count": len(trades),
                "first_tick_epoch": first[2],
                "last_tick_epoch": last[2],
                "cum_volume": cum,
            }
            if unwatched is not None:
                unseen = any(start < until and start + interval.seconds > since for _, since, until in spans)
                result[key]["source"] = "partial" if unseen else "live"
    return result


def candle_to_dict(candle: Candle, *, with_source: bool = False) -> tuple[Key, dict[str, Any]]:
    """A candle as (key, values) in the shape :func:`reference_candles` returns (``source``
    included when ``with_source``: the reference's when it is given ``unwatched``)."""
    key = (candle.exchange, candle.symbol, candle.interval, int(candle.bucket.timestamp()))
    values = {
        "open": candle.open,
        "high": candle.high,
        "low": candle.low,
        "close": candle.close,
        "volume": candle.volume,
        "oi": candle.oi,
        "tick_count": candle.tick_count,
        "first_tick_epoch": candle.first_tick.timestamp(),
        "last_tick_epoch": candle.last_tick.timestamp(),
        "cum_volume": candle.cum_volume,
    }
    if with_source:
        values["source"] = candle.source
    return key, values


def watched_again(store: Any, after: float, keys: Sequence[tuple[str, str]]) -> float:
    """When the daemon whose store is ``store`` watched ``keys`` again after ``after`` (a restart's
    first connection): the beginning of their first watched span that begins later, the ``until``
    of that restart's unwatched span. Each key must have one, the same for all."""
    spans = store.watched(after, after + 86_400, keys)
    began = {key: min((a for a, _ in spans.get(key, ()) if a > after), default=None) for key in keys}
    moments = set(began.values())
    assert len(moments) == 1 and None not in moments, f"watched again after {after}: {began}"
    return moments.pop()
