"""CandleAggregator against the candle rules (ARCHITECTURE.md, "Candle rules") and the brute-force reference."""

from __future__ import annotations

import ast
import dataclasses
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from candles import snapshot
from candles.aggregator import CandleAggregator
from candles.model import Candle, Interval, parse_intervals
from core.ist import IST
from core.ticks import TickData
from testkit.reference import candle_to_dict, reference_candles

DAY0 = datetime(2024, 1, 15, 9, 15, tzinfo=IST).timestamp()  # a Monday, session open


class Clock:
    def __init__(self, now: float = DAY0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def tick(at: float, price: str | float, volume: int | None = None, *, symbol: str = "INFY", oi: int | None = None,
         received: float | None = None, exchange: str = "NSE") -> TickData:  # fmt: skip
    """A tick ``at`` seconds after 09:15 IST on DAY0 (``received`` likewise, default ``at``)."""
    return TickData(
        "test", exchange, symbol, 0, Decimal(str(price)), 7, volume, oi,
        datetime.fromtimestamp(DAY0 + at, IST), datetime.fromtimestamp(DAY0 + (at if received is None else received), IST),
    )  # fmt: skip


class Feed:
    """An aggregator plus everything it emitted, upserted by key as a store would."""

    def __init__(self, intervals: str = "1m", **kwargs) -> None:
        self.clock = Clock()
        self.intervals = parse_intervals(intervals)
        self.agg = CandleAggregator(self.intervals, self.clock, **kwargs)
        self.emitted: list[Candle] = []
        self.store: dict = {}

    def at(self, seconds: float) -> list[Candle]:
        """Move the clock to ``seconds`` after 09:15 and advance."""
        self.clock.now = DAY0 + seconds
        return self._take(self.agg.advance())

    def add(self, *ticks: TickData) -> list[Candle]:
        return self._take(self.agg.add(ticks))

    def flush(self) -> list[Candle]:
        return self._take(self.agg.flush())

    def _take(self, candles: list[Candle]) -> list[Candle]:
        self.emitted.extend(candles)
        for c in candles:
            self.store[c.key] = c
        return candles

    def candle(self, interval: str, minute: float, symbol: str = "INFY") -> Candle:
        return self.store[("NSE", symbol, interval, datetime.fromtimestamp(DAY0 + minute * 60, IST))]

    def as_reference(self, *, with_source: bool = False) -> dict:
        return dict(candle_to_dict(c, with_source=with_source) for c in self.store.values())


def at_ist(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=IST)


# ---- rule 1: buckets aligned to 09:15 IST; 1d is the IST day; several intervals at once ---------
def test_hour_buckets_align_to_0915():
    feed = Feed("5m,1h")
    feed.add(tick(0, 100, 10), tick(4 * 60 + 59, 101, 20), tick(59 * 60 + 59, 102, 30), tick(60 * 60, 103, 40))
    feed.at(3 * 3600)
    hours = sorted(c.bucket for c in feed.store.values() if c.interval == "1h")
    assert hours == [at_ist("2024-01-15T09:15"), at_ist("2024-01-15T10:15")]
    fives = sorted(c.bucket for c in feed.store.values() if c.interval == "5m")
    assert fives[:2] == [at_ist("2024-01-15T09:15"), at_ist("2024-01-15T10:10")]
    assert all(c.bucket.utcoffset() == timedelta(hours=5, minutes=30) for c in feed.store.values())


def test_day_bucket_is_the_ist_calendar_day():
    feed = Feed("1d")
    early = -(9 * 3600 + 15 * 60) + 60  # 00:01 IST
    late = 14 * 3600 + 44 * 60  # 23:59 IST
    feed.clock.now = DAY0 + early
    feed.add(tick(early, 100, 10), tick(late, 101, 30))
    (candle,) = feed.flush()
    assert candle.bucket == at_ist("2024-01-15T00:00")
    assert (candle.open, candle.close, candle.tick_count) == (Decimal(100), Decimal(101), 2)


def test_emitted_candles_are_genuine_frozen_candles_equal_to_constructed_ones():
    agg = CandleAggregator(parse_intervals("1m"), lambda: DAY0 + 40)
    agg.add([tick(0, "1500.05", 100), tick(30, "1501.00", 160)])
    (c,) = agg.flush()
    assert type(c) is Candle
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.close = Decimal(1)  # type: ignore[misc]
    same = Candle(*(getattr(c, f.name) for f in dataclasses.fields(Candle)))
    assert c == same and hash(c.key) == hash(same.key) and repr(c) == repr(same)


def test_several_intervals_are_built_from_the_same_ticks():
    feed = Feed("1m,5m,1h")
    feed.add(tick(1, 100, 10), tick(61, 105, 20), tick(121, 95, 35))
    feed.at(3600 + 3)
    assert [feed.candle("1m", m).close for m in (0, 1, 2)] == [Decimal(100), Decimal(105), Decimal(95)]
    for name in ("5m", "1h"):
        c = feed.candle(name, 0)
        assert (c.open, c.high, c.low, c.close, c.tick_count, c.volume) == (100, 105, 95, 95, 3, 25)


# ---- rule 2: placed by exchange timestamp --------------------------------------------------------
def test_tick_is_placed_by_exchange_time_not_arrival_time():
    feed = Feed("1m")
    feed.add(tick(10, 100, 10))
    feed.at(61)  # the tick below arrives after 09:16 but was traded at 09:15:59
    feed.add(tick(59, 101, 20, received=61))
    feed.at(62)
    assert feed.candle("1m", 0).close == Decimal(101)
    assert ("NSE", "INFY", "1m", datetime.fromtimestamp(DAY0 + 60, IST)) not in feed.store


# ---- rule 3: volume from cumulative volume -------------------------------------------------------
def test_volume_is_the_difference_of_cumulative_volume_not_a_sum_of_quantities():
    feed = Feed("1m")
    feed.add(tick(1, 100, 1000), tick(2, 100, 1100), tick(3, 100, 1250), tick(61, 100, 1300))
    feed.at(200)
    assert feed.candle("1m", 0).volume == 250  # the first tick is the baseline
    assert feed.candle("1m", 1).volume == 50
    assert feed.candle("1m", 1).cum_volume == 1300


def test_lower_volume_within_the_same_second_is_a_reordered_quote_not_a_new_day():
    ticks = [tick(1, 100, 5000), tick(2, 101, 5100), tick(2, 99, 5050), tick(3, 102, 5200)]
    feed = Feed("1m")
    feed.add(*ticks)
    feed.at(63)
    assert feed.agg.stats.volume_resets == 0
    candle = feed.candle("1m", 0)
    assert candle.low == Decimal(100) and candle.close == Decimal(102)  # 99 did not move OHLC
    assert candle.volume == 200
    assert feed.as_reference() == reference_candles(ticks, feed.intervals)


def test_first_observed_tick_contributes_no_volume():
    feed = Feed("1m")
    feed.add(tick(5, 100, 987_654))
    feed.at(63)
    assert feed.candle("1m", 0).volume == 0
    assert feed.candle("1m", 0).tick_count == 1


def test_volume_drop_starts_new_day():
    ticks = [tick(1, 100, 5000), tick(2, 100, 5100), tick(3, 99, 40), tick(61, 98, 200), tick(62, 98, 300)]
    feed = Feed("1m")
    feed.add(*ticks[:3])  # the feed restarted its day at 09:15:03
    feed.add(*ticks[3:])
    feed.at(200)
    assert feed.agg.stats.volume_resets == 1
    first, second = feed.candle("1m", 0), feed.candle("1m", 1)
    assert first.volume == 100 + 40  # what was counted before the drop is kept, the new day counts on top
    assert first.close == Decimal(99)  # the tick after the drop is a trade
    assert second.volume == 300 - 40
    assert feed.as_reference() == reference_candles(ticks, feed.intervals)


def test_restart_inside_bucket_keeps_the_part_before_restart_and_counts_no_volume_twice():
    before = [tick(10, 100, 1000), tick(20, 104, 1100), tick(30, 99, 1200, oi=7)]
    after = [tick(40, 101, 1250), tick(50, 101, 1250, oi=9)]  # the second one is a quote
    first = Feed("1m,1h")
    first.clock.now = DAY0 + 31
    first.add(*before)
    stored = first.flush()  # shutdown: open candles stored as non-final
    assert {c.volume for c in stored} == {200} and not any(c.final for c in stored)

    second = Feed("1m,1h")
    second.clock.now = DAY0 + 35
    second.agg.seed(stored)
    second.add(*after)
    second.at(3600 + 2)
    merged = second.candle("1m", 0)
    assert (merged.open, merged.high, merged.low, merged.close) == (100, 104, 99, 101)
    assert (merged.volume, merged.tick_count, merged.oi, merged.final) == (250, 4, 9, True)
    assert second.candle("1h", 0).volume == 250
    assert second.as_reference() == reference_candles(before + after, second.intervals)


# ---- rule 4: only trades move OHLC -------------------------------------------------------------
def test_quote_only_update_does_not_move_ohlc():
    feed = Feed("1m")
    feed.add(tick(1, 100, 1000, oi=50), tick(2, 105, 1000, oi=60), tick(3, 95, 1000))
    feed.at(62)
    c = feed.candle("1m", 0)
    assert (c.open, c.high, c.low, c.close, c.tick_count) == (100, 100, 100, 100, 1)
    assert c.last_tick == datetime.fromtimestamp(DAY0 + 1, IST)
    assert c.oi is None  # the newest tick, a quote, had no OI
    assert feed.agg.stats.quotes == 2 and feed.agg.stats.trades == 1


def test_feed_without_volume_counts_every_tick_as_trade():
    feed = Feed("1m")
    feed.add(tick(1, 21000, symbol="NIFTY 50"), tick(2, 21000, symbol="NIFTY 50"), tick(3, 21010, symbol="NIFTY 50"))
    feed.at(62)
    c = feed.candle("1m", 0, "NIFTY 50")
    assert (c.tick_count, c.volume, c.cum_volume, c.close) == (3, 0, None, Decimal(21010))


def test_out_of_order_tick_is_classified_against_earlier_exchange_times_only():
    feed = Feed("1m")
    feed.add(tick(10, 100, 1000), tick(30, 103, 1300), tick(20, 101, 1200), tick(25, 102, 1200))
    feed.at(62)
    c = feed.candle("1m", 0)
    # 09:15:20 is a trade (1200 > 1000, the 1300 came later in exchange time); 09:15:25 repeats 1200
    assert (c.tick_count, c.open, c.close, c.high, c.low) == (3, 100, 103, 103, 100)


def test_out_of_order_quote_older_than_reorder_memory_is_still_a_quote():
    feed = Feed("1m", reorder_memory=2)
    feed.add(tick(10, 100, 1000), tick(30, 101, 1100), tick(40, 102, 1200), tick(50, 103, 1300))
    feed.add(tick(11, 90, 1000))  # repeats the 09:15:10 trade; that arrival left the memory (floor)
    feed.at(62)
    c = feed.candle("1m", 0)
    assert (c.tick_count, c.low) == (4, Decimal(100))


# ---- rule 5: closing on a timer -------------------------------------------------------------------
def test_bucket_closes_on_timer_without_further_ticks():
    feed = Feed("1m", grace=2.0)
    feed.add(tick(5, 100, 10))
    assert feed.at(61.9) == []
    assert feed.agg.stats.open_buckets == 1
    (closed,) = feed.at(62)
    assert closed.final and closed.bucket == at_ist("2024-01-15T09:15")
    assert feed.at(500) == [] and feed.agg.stats.open_buckets == 0


def test_bucket_without_trades_produces_no_candle():
    feed = Feed("1m")
    feed.add(tick(5, 100, 10), tick(65, 100, 10))  # the second is a quote repeating the volume
    feed.at(500)
    assert [c.bucket for c in feed.emitted] == [at_ist("2024-01-15T09:15")]


def test_daily_bucket_closes_at_ist_midnight_plus_grace():
    feed = Feed("1d")
    feed.add(tick(0, 100, 10))
    midnight = 14 * 3600 + 45 * 60  # 09:15 + 14h45m
    assert feed.at(midnight + 1.9) == []
    (closed,) = feed.at(midnight + 2)
    assert closed.final and closed.bucket == at_ist("2024-01-15T00:00")


def test_emit_empty_fills_gaps_between_trade_buckets_with_flat_candles():
    feed = Feed("1m", emit_empty=True)
    feed.add(tick(5, 100, 10, oi=3), tick(6, 101, 20, oi=4))
    feed.at(300)
    filled = feed.add(tick(3 * 60 + 1, 99, 50, received=300))
    flat = [c for c in filled if c.tick_count == 0]
    assert [c.bucket for c in flat] == [at_ist("2024-01-15T09:16"), at_ist("2024-01-15T09:17")]
    assert all((c.open, c.close, c.volume, c.oi, c.cum_volume, c.final) == (101, 101, 0, 4, 20, True) for c in flat)
    assert all(c.first_tick == c.last_tick == c.bucket for c in flat)
    without = Feed("1m")
    without.add(tick(5, 100, 10), tick(4 * 60 + 1, 99, 50))
    without.at(1000)
    assert len(without.store) == 2


# ---- rule 6: late ticks revise closed candles ----------------------------------------------------
def test_late_tick_revises_closed_candle_and_is_counted():
    feed = Feed("1m")
    feed.add(tick(5, 100, 10), tick(20, 101, 20))
    (closed,) = feed.at(62)
    revised = feed.add(tick(50, 110, 30, received=70))
    assert [c.key for c in revised] == [closed.key]
    assert (revised[0].high, revised[0].close, revised[0].volume, revised[0].final) == (110, 110, 20, True)
    assert feed.agg.stats.late_ticks == 1


def test_late_tick_that_raises_volume_revises_the_next_closed_candle():
    feed = Feed("1m")
    feed.add(tick(5, 100, 1000), tick(30, 100, 1100), tick(65, 101, 1500))
    feed.at(200)
    assert feed.candle("1m", 1).volume == 400
    revised = feed.add(tick(50, 102, 1300, received=200))  # traded at 09:15:50, arrived much later
    assert {c.bucket for c in revised} == {at_ist("2024-01-15T09:15"), at_ist("2024-01-15T09:16")}
    assert feed.candle("1m", 0).volume == 300 and feed.candle("1m", 1).volume == 200


def test_volume_base_survives_eviction_of_earlier_buckets():
    feed = Feed("1m", revision_horizon=60)
    feed.add(tick(5, 100, 1000), tick(30, 100, 1100))
    feed.at(45 * 60)  # the 09:15 bucket is long evicted
    feed.add(tick(45 * 60 + 1, 101, 1500))
    feed.at(47 * 60)
    assert feed.candle("1m", 45).volume == 400


def test_tick_older_than_revision_horizon_is_dropped_and_counted():
    feed = Feed("1m", revision_horizon=60)
    feed.add(tick(5, 100, 10))
    feed.at(62 + 60)
    assert feed.add(tick(30, 90, 20, received=122)) == []
    assert feed.agg.stats.dropped_ticks == 1 and feed.agg.stats.late_ticks == 0
    assert feed.candle("1m", 0).low == Decimal(100)  # not revised, and not put in another bucket
    assert len(feed.store) == 1
    ticks = [tick(5, 100, 10), tick(30, 90, 20, received=122)]
    assert feed.as_reference() == reference_candles(ticks, feed.intervals, horizon_ok=False, revision_horizon=60)


# ---- rule 7: idempotent re-emission ----------------------------------------------------------------
def test_every_re_emitted_candle_is_the_current_state_of_its_key():
    feed = Feed("1m")
    feed.add(tick(5, 100, 10))
    feed.at(62)
    feed.at(63)  # closing again emits nothing
    feed.add(tick(30, 99, 15, received=64))
    feed.add(tick(31, 98, 18, received=65))
    keys = [c.key for c in feed.emitted]
    assert len(keys) == 3 and len(set(keys)) == 1
    assert [c.close for c in feed.emitted] == [100, 99, 98]
    everything = [tick(5, 100, 10), tick(30, 99, 15), tick(31, 98, 18)]
    assert feed.as_reference() == reference_candles(everything, feed.intervals)


def test_flush_snapshots_open_buckets_as_not_final_and_keeps_them_open():
    feed = Feed("1m")
    feed.add(tick(5, 100, 10))
    (snap,) = feed.flush()
    assert not snap.final and feed.agg.stats.open_buckets == 1
    feed.add(tick(10, 101, 12))
    (closed,) = feed.at(62)
    assert closed.final and closed.tick_count == 2


def test_seeded_non_final_candle_past_its_close_is_emitted_final_once():
    first = Feed("1m")
    first.add(tick(5, 100, 10), tick(6, 101, 15))
    (stored,) = first.flush()
    second = Feed("1m")
    second.clock.now = DAY0 + 300
    second.agg.seed([stored])
    (closed,) = second.at(300)
    assert closed.final and candle_to_dict(closed) == candle_to_dict(stored)
    assert second.at(301) == []


def test_seeded_final_candle_is_not_emitted_again_but_late_ticks_still_revise_it():
    first = Feed("1m")
    first.add(tick(5, 100, 10), tick(6, 101, 15))
    (stored,) = first.at(62)
    second = Feed("1m")
    second.clock.now = DAY0 + 63
    second.agg.seed([stored])
    assert second.at(64) == []
    (revised,) = second.add(tick(7, 102, 20, received=64))
    assert (revised.close, revised.volume, revised.tick_count) == (102, 10, 3)


# ---- rule 8: provenance: live, partial ------------------------------------------------------------
def test_a_bucket_watched_from_start_to_end_is_live():
    feed = Feed("1m")
    feed.agg.unwatched(float("-inf"), DAY0 - 60)  # started a minute before the bucket
    feed.add(tick(5, 100, 10), tick(30, 101, 20))
    (closed,) = feed.at(62)
    assert (closed.source, closed.final) == ("live", True)


def test_the_first_bucket_after_a_start_inside_it_is_partial_and_the_next_one_live():
    feed = Feed("1m,5m")
    feed.clock.now = DAY0 + 20
    feed.agg.unwatched(float("-inf"), DAY0 + 20)  # started 20 s into 09:15
    ticks = [tick(21, 100, 1000), tick(40, 101, 1100), tick(70, 102, 1300), tick(90, 103, 1350)]
    feed.add(*ticks)
    feed.at(302)
    assert feed.candle("1m", 0).source == "partial"
    assert feed.candle("1m", 1).source == "live"
    assert feed.candle("5m", 0).source == "partial"
    assert feed.candle("1m", 0).volume == 100  # from its first tick, as before
    expected = reference_candles(ticks, feed.intervals, unwatched=[(0, float("-inf"), DAY0 + 20)])
    assert feed.as_reference(with_source=True) == expected


def restart_story(feed: Feed) -> list[TickData]:
    """Killed 35 s into 09:16 (minute M), back 90 s later (09:17:05): the journal restored M."""
    before = [tick(60, 100, 10_000), tick(80, 101, 15_000), tick(94, 99, 21_317)]
    feed.clock.now = DAY0 + 95
    feed.add(*before)
    feed.clock.now = DAY0 + 185
    feed.agg.unwatched(feed.agg.last_seen(), DAY0 + 185)
    feed.at(185)  # M closes at once: cut short at the kill
    after = [tick(186, 104, 61_000), tick(200, 105, 62_000), tick(230, 103, 63_500),
             tick(245, 106, 64_000), tick(290, 107, 66_000)]  # fmt: skip
    feed.add(*after)
    feed.at(302)
    return before + after


def test_a_restart_leaves_both_neighbours_of_the_hole_partial_and_the_one_after_counts_from_its_first_tick():
    feed = Feed("1m")
    ticks = restart_story(feed)
    m, m2, m3 = feed.candle("1m", 1), feed.candle("1m", 3), feed.candle("1m", 4)
    assert (m.source, m.final, m.volume) == ("partial", True, 11_317)  # what was seen before the kill
    assert ("NSE", "INFY", "1m", datetime.fromtimestamp(DAY0 + 120, IST)) not in feed.store  # the hole
    # M+2 started before the daemon watched again: its volume counts from its first tick (61,000),
    # not from M's last (21,317): the outage's volume is not in it
    assert (m2.source, m2.volume) == ("partial", 63_500 - 61_000)
    assert (m3.source, m3.volume, m3.final) == ("live", 66_000 - 63_500, True)
    assert feed.as_reference(with_source=True) == reference_candles(ticks, feed.intervals, unwatched=[(3, DAY0 + 94, DAY0 + 185)])


def test_a_start_declared_in_two_parts_is_one_span_and_the_bucket_begun_in_the_first_counts_from_its_first_tick():
    """A start declares the unwatched time up to its restore at once, the rest when the feed is up.
    A bucket that began in the first part, whose first tick comes after the second, still counts
    its volume from that tick: what traded before it is in the cumulative volume too."""
    feed = Feed("1m")
    before = [tick(60, 100, 10_000), tick(94, 99, 21_317)]
    feed.clock.now = DAY0 + 95
    feed.add(*before)
    feed.clock.now = DAY0 + 125  # restored at 09:17:05: 09:17 began in the first part
    feed.agg.unwatched(feed.agg.last_seen(), DAY0 + 125)
    feed.at(125)
    feed.clock.now = DAY0 + 131  # the feed is up at 09:17:11
    feed.agg.unwatched(DAY0 + 125, DAY0 + 131, [("NSE", "INFY")])
    after = [tick(132, 104, 61_000), tick(150, 105, 62_000), tick(190, 103, 63_500)]
    feed.add(*after)
    feed.at(242)
    m1, m2 = feed.candle("1m", 2), feed.candle("1m", 3)
    assert (m1.source, m1.volume) == ("partial", 1_000)  # not the 40,683 traded since 09:16:34
    assert (m2.source, m2.volume) == ("live", 1_500)
    expected = reference_candles(before + after, feed.intervals, unwatched=[(2, DAY0 + 94, DAY0 + 131)])
    assert feed.as_reference(with_source=True) == expected


def test_a_span_declared_before_a_symbols_first_tick_joins_the_next_one():
    """The same for a symbol with no tick yet (its spans wait for its first tick): a bucket inside
    the first part is partial, not only one that reaches into the second."""
    feed = Feed("1m")
    feed.clock.now = DAY0 + 125
    feed.agg.unwatched(DAY0 + 30, DAY0 + 125, [("NSE", "INFY")])
    feed.agg.unwatched(DAY0 + 125, DAY0 + 131, [("NSE", "INFY")])
    ticks = [tick(100, 103, 60_500), tick(132, 104, 61_000), tick(150, 105, 62_000)]  # the first, a snapshot
    feed.add(*ticks)
    feed.at(182)
    assert feed.candle("1m", 1).source == "partial"  # 09:16, wholly in the first part
    assert (feed.candle("1m", 2).source, feed.candle("1m", 2).volume) == ("partial", 1_500)
    assert feed.as_reference(with_source=True) == reference_candles(ticks, feed.intervals, unwatched=[(0, DAY0 + 30, DAY0 + 131)])


def test_a_repeat_of_an_older_tick_after_an_outage_does_not_end_it_and_the_next_bucket_takes_no_outage_volume():
    """On resubscribing, a feed repeats each instrument's last state (Kite's snapshot): a tick older
    than the outage. The first bucket after the outage still counts from its own first tick."""
    feed = Feed("1m")
    feed.add(tick(50, 100, 10_000))
    feed.clock.now = DAY0 + 130
    feed.agg.unwatched(DAY0 + 55, DAY0 + 130, [("NSE", "INFY")])
    ticks = [tick(50, 100, 10_000), tick(131, 103, 16_000), tick(140, 104, 16_100)]  # the repeat, then new ones
    feed.add(*ticks)
    feed.at(182)
    after = feed.candle("1m", 2)
    assert (after.source, after.volume) == ("partial", 100)  # 16,100 - 16,000: not the outage's 6,000
    arrivals = [tick(50, 100, 10_000), *ticks]
    expected = reference_candles(arrivals, feed.intervals, unwatched=[(1, DAY0 + 55, DAY0 + 130)])
    assert feed.as_reference(with_source=True) == expected


def test_an_outage_inside_one_bucket_makes_it_partial_with_its_volume_exact():
    feed = Feed("1m")
    feed.add(tick(5, 100, 1_000), tick(10, 101, 1_100))
    feed.clock.now = DAY0 + 40
    feed.agg.unwatched(DAY0 + 12, DAY0 + 40, [("NSE", "INFY")])
    feed.add(tick(41, 99, 1_900), tick(50, 98, 2_000))
    feed.at(62)
    m = feed.candle("1m", 0)
    assert (m.source, m.volume) == ("partial", 1_000)  # cumulative volume spans the outage
    assert feed.candle("1m", 0).high == 101


def test_an_outage_of_one_symbol_leaves_the_others_live():
    feed = Feed("1m")
    feed.add(tick(5, 100, 1_000), tick(6, 50, 500, symbol="TCS"))
    feed.agg.unwatched(DAY0 + 7, DAY0 + 20, [("NSE", "INFY")])
    feed.add(tick(30, 101, 1_100), tick(31, 51, 600, symbol="TCS"))
    feed.at(62)
    assert feed.candle("1m", 0).source == "partial"
    assert feed.candle("1m", 0, symbol="TCS").source == "live"


def test_a_symbol_without_a_tick_before_an_outage_has_its_first_bucket_after_it_partial():
    feed = Feed("1m,5m")
    feed.add(tick(5, 100, 1_000))  # INFY only: TCS has no series yet when the outage is declared
    feed.clock.now = DAY0 + 20
    feed.agg.unwatched(DAY0 + 7, DAY0 + 20, [("NSE", "INFY"), ("NSE", "TCS")])
    feed.add(tick(30, 51, 600, symbol="TCS"), tick(40, 52, 700, symbol="TCS"), tick(70, 53, 800, symbol="TCS"))
    feed.at(302)
    assert feed.candle("1m", 0, symbol="TCS").source == "partial", "its 09:15 overlaps the outage"
    assert feed.candle("5m", 0, symbol="TCS").source == "partial"
    assert feed.candle("1m", 1, symbol="TCS").source == "live", "09:16 began after it: watched whole"


def test_an_outage_declared_for_a_symbol_not_seen_yet_survives_a_snapshot():
    feed = Feed("1m")
    feed.clock.now = DAY0 + 20
    feed.agg.unwatched(DAY0 + 7, DAY0 + 20, [("NSE", "TCS")])
    feed.agg = snapshot.restore(snapshot.snapshot(feed.agg), feed.clock)
    feed.add(tick(30, 51, 600, symbol="TCS"), tick(40, 52, 700, symbol="TCS"))
    feed.at(62)
    assert feed.candle("1m", 0, symbol="TCS").source == "partial"


def test_a_late_tick_revising_a_partial_candle_keeps_it_partial():
    feed = Feed("1m")
    feed.agg.unwatched(float("-inf"), DAY0 + 20)
    feed.add(tick(21, 100, 1_000), tick(30, 101, 1_100))
    feed.at(62)
    (revised,) = feed.add(tick(50, 102, 1_200, received=63))
    assert (revised.source, revised.close, revised.volume) == ("partial", 102, 200)


def test_a_shutdown_flush_of_a_partial_bucket_is_partial_and_seeding_it_keeps_it_so():
    first = Feed("1m")
    first.agg.unwatched(float("-inf"), DAY0 + 20)
    first.add(tick(21, 100, 1_000), tick(30, 101, 1_100))
    (stored,) = first.flush()
    assert (stored.source, stored.final) == ("partial", False)
    second = Feed("1m")
    second.clock.now = DAY0 + 40
    second.agg.seed([stored])
    second.add(tick(45, 102, 1_300))
    second.at(62)
    assert (second.candle("1m", 0).source, second.candle("1m", 0).volume) == ("partial", 300)


def test_a_restart_resumed_from_the_store_is_partial_and_counts_no_outage_volume():
    first = Feed("1m")
    first.add(tick(60, 100, 10_000), tick(94, 99, 21_317))
    stored = first.flush()  # stopped 35 s into 09:16
    second = Feed("1m")
    second.clock.now = DAY0 + 185
    second.agg.seed(stored)
    second.agg.unwatched(second.agg.last_seen(), DAY0 + 185)
    second.at(185)
    second.add(tick(186, 104, 61_000), tick(200, 105, 62_000))
    second.at(242)
    assert (second.candle("1m", 1).source, second.candle("1m", 1).final) == ("partial", True)
    assert (second.candle("1m", 3).source, second.candle("1m", 3).volume) == ("partial", 1_000)


def test_snapshot_keeps_what_is_partial_and_where_volume_counts_from():
    feed = Feed("1m")
    feed.add(tick(60, 100, 10_000), tick(94, 99, 21_317))
    feed.clock.now = DAY0 + 185
    feed.agg.unwatched(feed.agg.last_seen(), DAY0 + 185)
    feed.add(tick(186, 104, 61_000))
    feed.agg = snapshot.restore(snapshot.snapshot(feed.agg), feed.clock)
    feed.add(tick(200, 105, 62_000))
    feed.at(242)
    assert (feed.candle("1m", 1).source, feed.candle("1m", 1).volume) == ("partial", 11_317)
    assert (feed.candle("1m", 3).source, feed.candle("1m", 3).volume) == ("partial", 1_000)


def test_a_packed_partial_bucket_stays_partial_when_a_late_tick_revises_it():
    feed = Feed("1m")
    feed.agg.unwatched(float("-inf"), DAY0 + 20)
    feed.add(tick(21, 100, 1_000), tick(30, 101, 1_100))
    feed.at(62)
    feed.add(tick(70, 102, 1_200))
    feed.at(122)
    feed.at(123)  # packs the closed 09:15 bucket
    (revised, _) = feed.add(tick(50, 99, 1_150, received=124))
    assert (revised.source, revised.low, revised.volume) == ("partial", 99, 150)


def test_emit_empty_fills_an_unwatched_span_with_partial_flat_candles():
    feed = Feed("1m", emit_empty=True)
    feed.add(tick(5, 100, 1_000))
    feed.at(62)
    feed.agg.unwatched(DAY0 + 62, DAY0 + 185)
    feed.add(tick(190, 101, 2_000))
    assert feed.candle("1m", 1).source == "partial"  # nothing seen is not nothing traded
    assert feed.candle("1m", 2).source == "partial"


# ---- memory and layering --------------------------------------------------------------------------
def test_closed_buckets_are_forgotten_after_the_revision_horizon():
    feed = Feed("1m,5m", revision_horizon=300)
    retained = []
    for second in range(0, 6 * 3600, 10):
        feed.at(second)
        feed.add(tick(second, 100 + second % 7, second))
        retained.append(sum(len(s.buckets) for sym in feed.agg._symbols.values() for s in sym.series))
    assert max(retained[len(retained) // 2 :]) <= max(retained[: len(retained) // 2])
    assert max(retained) <= 5 + 2 + 2 + 1  # 1m: 300 s horizon + open; 5m: one or two


def test_candles_package_does_not_import_brokers():
    for path in Path(__file__).resolve().parent.parent.joinpath("candles").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [n for n in names if n.split(".")[0] == "brokers"], f"{path.name} imports brokers"


# ---- properties: random streams against the reference ----------------------------------------------
INTERVALS = {name: Interval.parse(name) for name in ("1m", "5m", "1h", "1d")}
REORDER_MEMORY = 8  # > the most positions the stream below moves a tick (2 x 2 jitter)


@st.composite
def tick_streams(draw) -> list[tuple[TickData, float]]:
    """Ticks in arrival order with their arrival clock. Built in exchange-time order with
    non-decreasing cumulative volume per symbol-day, then locally reordered and delayed."""
    n_symbols = draw(st.integers(1, 3))
    has_index = draw(st.booleans())  # symbol 0 is then an index: no volume, no OI
    names = [("NIFTY 50" if i == 0 and has_index else f"S{i}") for i in range(n_symbols)]
    steps = draw(st.lists(st.tuples(
        st.integers(0, n_symbols - 1),
        st.sampled_from([0, 0, 0.5, 1, 7, 20, 45, 61, 120]),  # exchange-time step, seconds
        st.booleans(),  # trade (else a quote repeating the last trade)
        st.integers(-3, 3),  # price move in ticks
        st.integers(1, 400),  # volume added by a trade
        st.sampled_from([None, 0, 0, 10, -10]),  # OI change (None: tick without OI)
        st.sampled_from([0.0, 0.05, 0.5, 1.5, 1.99, 3.0, 12.0, 70.0]),  # latency
        st.integers(-2, 2),  # reorder jitter
        st.integers(0, 25),  # 0: the next trading day starts here
    ), min_size=1, max_size=120))  # fmt: skip
    t = DAY0 + draw(st.integers(0, 3600))
    day = 0
    price = {s: 2000 + 37 * i for i, s in enumerate(names)}
    volume = dict.fromkeys(names, 0)
    oi = dict.fromkeys(names, 500)
    last_trade: dict[str, tuple[int, int | None]] = {}
    built = []
    for sym_i, dt, is_trade, move, added, oi_move, latency, jitter, rollover in steps:
        if rollover == 0:
            day += 1
            t = DAY0 + day * 86_400 + dt
            volume = dict.fromkeys(names, 0)
            last_trade.clear()
        else:
            t += dt
        name = names[sym_i]
        index = has_index and sym_i == 0
        if is_trade or index or name not in last_trade:
            price[name] = max(1, price[name] + move)
            volume[name] += added
            last_trade[name] = (price[name], None if index else volume[name])
        p, v = last_trade[name]
        if not index and oi_move is not None:
            oi[name] += oi_move
        tick_oi = None if index or oi_move is None else oi[name]
        ts = datetime.fromtimestamp(t, IST)
        built.append((day, len(built) + jitter, t + latency, p, v, tick_oi, ts, name))
    built.sort(key=lambda b: (b[0], b[1]))  # reorder locally, never across a trading day
    stream = []
    clock = DAY0
    for _, _, arrival, p, v, tick_oi, ts, name in built:
        clock = max(clock, arrival)
        rx = datetime.fromtimestamp(clock, IST)
        stream.append((TickData("sim", "NSE", name, 0, Decimal(p) / 20, None, v, tick_oi, ts, rx), clock))
    return stream


interval_sets = st.sets(st.sampled_from(sorted(INTERVALS)), min_size=1).map(lambda s: [INTERVALS[n] for n in sorted(s)])


def _run(
    agg: CandleAggregator, clock: Clock, stream, store: dict, latest: dict, batch: int, restore_every: int = 0
) -> CandleAggregator:
    """Feed ``stream`` in chunks; with ``restore_every``, go on from ``snapshot``/``restore`` of
    the aggregator every that many chunks (what a journal checkpoint and a restart do)."""

    def take(candles: list[Candle]) -> None:
        for c in candles:
            key, value = candle_to_dict(c)
            store[key] = value
            latest[key] = c

    i = chunks = 0
    while i < len(stream):  # up to ``batch`` ticks that arrived within one second of each other
        j = i + 1
        while j < len(stream) and j - i < batch and stream[j][1] - stream[i][1] <= 1.0:
            j += 1
        chunk = stream[i:j]
        i = j
        clock.now = chunk[-1][1]
        take(agg.advance(clock.now))
        take(agg.add([t for t, _ in chunk]))
        chunks += 1
        if restore_every and chunks % restore_every == 0:
            agg = snapshot.restore(snapshot.snapshot(agg), clock)
    take(agg.advance())
    return agg


PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(
    stream=tick_streams(),
    intervals=interval_sets,
    batch=st.sampled_from([1, 1, 1, 3]),
    horizon_margin=st.sampled_from([None, 0.5, 30.0, 200.0]),
    restore_every=st.sampled_from([0, 0, 1, 7]),
)
def test_random_streams_upserted_equal_the_reference(stream, intervals, batch, horizon_margin, restore_every):
    clock = Clock(stream[0][1])
    # a short revision horizon (just above the worst delay, so nothing is dropped) makes buckets
    # get evicted while their day goes on
    worst_delay = max(arrival - t.exchange_ts.timestamp() for t, arrival in stream)
    horizon = 900.0 if horizon_margin is None else worst_delay + horizon_margin
    agg = CandleAggregator(intervals, clock, reorder_memory=REORDER_MEMORY, revision_horizon=horizon)
    store: dict = {}
    agg = _run(agg, clock, stream, store, {}, batch, restore_every)
    for c in agg.flush():
        key, value = candle_to_dict(c)
        store[key] = value
    ticks = [t for t, _ in stream]
    assert agg.stats.dropped_ticks == 0
    assert agg.stats.ticks == len(ticks) == agg.stats.trades + agg.stats.quotes
    assert store == reference_candles(ticks, intervals)


@PROPERTY
@given(stream=tick_streams(), intervals=interval_sets)
def test_random_streams_with_emit_empty_add_only_flat_candles(stream, intervals):
    clock = Clock(stream[0][1])
    agg = CandleAggregator(intervals, clock, emit_empty=True, reorder_memory=REORDER_MEMORY)
    store: dict = {}
    agg = _run(agg, clock, stream, store, {}, 1, restore_every=3)
    for c in agg.flush():
        key, value = candle_to_dict(c)
        store[key] = value
    expected = reference_candles([t for t, _ in stream], intervals)
    assert {k: v for k, v in store.items() if v["tick_count"]} == expected
    assert all(v["volume"] == 0 for k, v in store.items() if k not in expected)


@PROPERTY
@given(stream=tick_streams(), intervals=interval_sets, data=st.data())
def test_restart_midstream_seeded_from_the_store_equals_the_reference(stream, intervals, data):
    ts = [t.exchange_ts.timestamp() for t, _ in stream]
    # a restart where nothing is reordered across it, and the last tick before it is the newest:
    # the store keeps a series' newest tick, not the last to arrive (which decides whether a
    # volume-less tick repeats it)
    cuts = [
        k
        for k in range(len(stream) + 1)
        if max(ts[:k], default=-1) <= min(ts[k:], default=float("inf")) and (k == 0 or ts[k - 1] == max(ts[:k]))
    ]
    k = data.draw(st.sampled_from(cuts), label="restart after tick")
    store: dict = {}
    latest: dict = {}

    clock = Clock(stream[0][1])
    before = CandleAggregator(intervals, clock, reorder_memory=REORDER_MEMORY)
    _run(before, clock, stream[:k], store, latest, 1)
    for c in before.flush():
        key, value = candle_to_dict(c)
        store[key] = value
        latest[key] = c

    newest: dict = {}
    for key, c in latest.items():
        if key[:3] not in newest or key[3] > newest[key[:3]][0]:
            newest[key[:3]] = (key[3], c)
    after = CandleAggregator(intervals, clock, reorder_memory=REORDER_MEMORY)
    after.seed(c for _, c in newest.values())
    _run(after, clock, stream[k:], store, latest, 1)
    for c in after.flush():
        key, value = candle_to_dict(c)
        store[key] = value
    assert store == reference_candles([t for t, _ in stream], intervals)


def test_an_exact_repeat_of_an_index_tick_is_not_a_second_trade():
    feed = Feed()
    feed.add(tick(1, "21000.5", symbol="NIFTY 50"), tick(2, "21001.0", symbol="NIFTY 50"))
    feed.add(tick(2, "21001.0", symbol="NIFTY 50"))  # the snapshot a resubscribe sends again
    feed.add(tick(2, "21001.5", symbol="NIFTY 50"), tick(3, "21001.5", symbol="NIFTY 50"))  # new values: trades
    (candle,) = feed.flush()
    assert candle.tick_count == 4
    assert (candle.open, candle.high, candle.close) == (Decimal("21000.5"), Decimal("21001.5"), Decimal("21001.5"))


def test_an_index_snapshot_repeated_after_a_restart_is_not_a_second_trade():
    before = [tick(10, "21000.5", symbol="NIFTY 50"), tick(20, "21001.0", symbol="NIFTY 50")]
    first = Feed("1m,5m")
    first.clock.now = DAY0 + 21
    first.add(*before)
    stored = first.flush()

    second = Feed("1m,5m")
    second.clock.now = DAY0 + 25
    second.agg.seed(stored)
    second.add(tick(20, "21001.0", symbol="NIFTY 50"))  # the snapshot the new subscription sends
    second.add(tick(30, "21001.0", symbol="NIFTY 50"))  # a new exchange time: a trade
    second.at(300 + 2)
    assert second.candle("1m", 0, "NIFTY 50").tick_count == 3
    assert second.candle("5m", 0, "NIFTY 50").tick_count == 3


def test_ticks_between_late_ones_and_bucket_changes_land_in_every_interval():
    # in-window ticks are held per symbol and merged into the buckets later: a late tick, a new
    # bucket of the shortest interval and a close must each see them merged first, in order
    feed = Feed("1m,5m,15m")
    feed.clock.now = DAY0 + 5
    ticks = [tick(1, 100, 1000, oi=5), tick(2, 103, 1010), tick(3, 99, 1020, oi=6)]
    feed.add(*ticks)
    feed.at(62 + 1)  # closes the first 1m bucket: the held ticks are in its candle
    assert (feed.candle("1m", 0).tick_count, feed.candle("1m", 0).volume, feed.candle("1m", 0).oi) == (3, 20, 6)
    more = [tick(61, 101, 1030), tick(59, 98, 1040, received=63), tick(62, 104, 1050, oi=7), tick(3, 97, 1025)]
    for t in more:
        feed.add(t)
    feed.at(900 + 2)
    everything = ticks + more
    assert feed.as_reference() == reference_candles(everything, feed.intervals)
    assert feed.candle("15m", 0).tick_count == 7 and feed.candle("15m", 0).low == 97
    assert feed.agg.stats.late_ticks == 2  # the 59 s one and the 3 s one, after the first 1m close


def test_forgetting_a_day_leaves_no_reference_cycle_behind():
    # the daemon runs the cyclic garbage collector rarely: a forgotten day must be freed by
    # reference counting alone
    import gc

    feed = Feed("1m,5m", emit_empty=True)
    feed.add(tick(10, 100, 1000), tick(130, 101, 1100))
    feed.at(3 * 86_400)  # days later: the first day is forgotten
    gc.collect()
    gc.disable()
    try:
        feed.add(tick(3 * 86_400 + 10, 102, 50))
        feed.at(7 * 86_400)
        assert gc.collect() == 0
    finally:
        gc.enable()


# ---- closed buckets are kept packed -----------------------------------------------------------------
def _retained(agg: CandleAggregator, symbol: str = "INFY", interval: int = 0) -> dict:
    return agg._symbols[("NSE", symbol)].series[interval].buckets


def test_a_late_tick_into_a_packed_bucket_revises_it_exactly():
    feed = Feed("1m,5m")
    feed.clock.now = DAY0 + 50
    first = [tick(1, "100.50", 1000, oi=0), tick(20, "101.10", 1010), tick(40, "99.90", 1030, oi=12)]
    feed.add(*first)
    feed.clock.now = DAY0 + 61
    feed.add(tick(61, "100.00", 1040, oi=None))  # the 1m bucket of 09:16 is now the newest
    feed.at(63)  # 09:15 closes: its candle goes out, then the bucket is packed
    assert type(_retained(feed.agg)[int(DAY0)]) is bytes
    late = [tick(30, "102.00", 1020, received=64), tick(0, "98.00", 990, oi=3, received=64)]
    feed.clock.now = DAY0 + 64
    revised = feed.add(*late)
    assert {(c.interval, c.bucket.timestamp()) for c in revised} >= {("1m", DAY0)}
    feed.at(300 + 3)
    assert feed.as_reference() == reference_candles(first + [tick(61, "100.00", 1040)] + late, feed.intervals)
    c = feed.candle("1m", 0)
    assert (str(c.open), str(c.high), str(c.low), str(c.close)) == ("98.00", "102.00", "98.00", "99.90")
    assert (c.tick_count, c.volume, c.oi) == (5, 30, 12)  # the first volume seen (1000) is the baseline
    assert feed.agg.stats.late_ticks == 2


def test_packing_keeps_every_field_of_a_closed_bucket():
    from candles.aggregator import _Bucket, _pack_bucket

    feed = Feed("1m,5m")
    feed.clock.now = DAY0 + 200
    ticks = [
        tick(1, "100.50", 1000, oi=5), tick(2, "101", 1010, oi=0), tick(61, "100.00", 1010),  # 09:16: a quote first
        tick(70, "99.95", 900, oi=7),  # volume fell: a new trading day, the 09:15 volume becomes carry
        tick(121, "1E+2", None), tick(130, "0.05", 905, oi=None),
    ]  # fmt: skip
    for t in ticks:
        feed.add(t)
    feed.at(400)
    series = [ser for sym in feed.agg._symbols.values() for ser in sym.series]
    assert sum(type(b) is bytes for ser in series for b in ser.buckets.values()) == 2  # 1m 09:15 and 09:16
    for ser in series:
        feed.agg._inflate_all(ser)
    objects = [b for ser in series for b in ser.buckets.values() if b.closed]
    assert len(objects) == 4  # 1m 09:15, 09:16, 09:17 and 5m 09:15
    assert {b.oi for b in objects} == {None, 0, 7} and {b.frozen_cum for b in objects} == {None, 1010}
    assert {b.carry for b in objects} == {0, 10} and -1 in {b.maxcum for b in objects}
    for b in objects:
        ser = b.series
        rec = _pack_bucket(b)
        assert rec is not None
        back = feed.agg._inflate(ser, b.start, rec)
        for name in _Bucket.__slots__:
            assert getattr(back, name) == getattr(b, name), name
        for name in ("open", "high", "low", "close"):
            assert str(getattr(back, name)) == str(getattr(b, name))  # the spelling too, e.g. 100.50
        ser.buckets[b.start] = b


def test_a_bucket_whose_numbers_do_not_fit_a_record_stays_an_object():
    feed = Feed("1m")
    feed.clock.now = DAY0 + 2
    big = 2**64  # a cumulative volume no broker sends, beyond 64 bits (steps of 4096 stay exact as floats)
    feed.add(tick(1, "100", big))
    feed.add(tick(61, "101", big + 3 * 4096, received=61))
    feed.at(63)
    kept = _retained(feed.agg)[int(DAY0)]
    assert isinstance(kept, feed.agg._bucket_type)
    feed.add(tick(30, "99", big + 4096, received=64))
    feed.at(300)
    assert (feed.candle("1m", 0).low, feed.candle("1m", 0).volume) == (99, 4096)


def test_snapshot_keeps_packed_buckets_and_late_ticks_revise_them_after_restore():
    feed = Feed("1m,5m")
    feed.clock.now = DAY0 + 200
    before = [tick(s, 100 + s % 7, 1000 + s) for s in range(1, 190, 9)]
    feed.add(*before)
    feed.at(200)
    assert sum(type(b) is bytes for b in _retained(feed.agg).values()) == 3  # 09:15 to 09:17; 09:18 is the newest
    feed.agg = snapshot.restore(snapshot.snapshot(feed.agg), feed.clock)
    assert sum(type(b) is bytes for b in _retained(feed.agg).values()) == 3
    late = [tick(30, "150.25", 1029, received=201), tick(70, 50, 1065, received=201)]  # trades: volume rose
    feed.clock.now = DAY0 + 201
    feed.add(*late)
    feed.at(900 + 3)
    assert feed.as_reference() == reference_candles(before + late, feed.intervals)
    assert feed.candle("1m", 0).high == Decimal("150.25") and feed.candle("1m", 1).low == 50


@pytest.mark.slow
def test_closed_buckets_are_kept_packed_in_a_fraction_of_the_memory(monkeypatch):
    import gc
    import tracemalloc

    def retained(pack: bool) -> int:
        if not pack:
            monkeypatch.setattr(CandleAggregator, "_pack_some", lambda self, limit: self._to_pack.clear())
        clock = Clock(DAY0)
        agg = CandleAggregator(parse_intervals("1m,5m,15m"), clock)
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            for s in range(0, 16 * 60, 2):  # 16 minutes, 150 symbols, a trade every 2 s each
                clock.now = DAY0 + s + 1
                agg.add([tick(s, 100 + (s * 7 + i) % 40 / 20, 1000 + s + i, symbol=f"S{i}") for i in range(150)])
                agg.advance()
            gc.collect()
            return tracemalloc.get_traced_memory()[0] - base
        finally:
            tracemalloc.stop()
            monkeypatch.undo()

    packed, unpacked = retained(True), retained(False)
    assert packed < 0.65 * unpacked, (packed, unpacked)
