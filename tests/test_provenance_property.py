"""Candle rule 8 end to end (ARCHITECTURE.md, "Candle rules"): whatever order live ticks, feed
outages and backfills arrive in, the aggregator's candles upserted into a SQLite store leave each
bucket holding what the rules say.

One example is an exchange tape of one or two symbols over ten minutes (09:15-09:25 IST), which a
daemon watches except during outages; ticks reach it late and out of order; now and then a backfill
writes the broker's history (the true candles of minutes that have ended, rolled up to 5m as
``cli/backfill.py`` does). The true candles are the brute-force reference over the whole tape.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from candles.aggregator import CandleAggregator
from candles.model import BACKFILL, LIVE, PARTIAL, Candle, Interval
from candles.rollup import roll_up
from core.ist import IST
from core.ticks import TickData
from storage.sqlite import SQLiteStore
from testkit.reference import candle_to_dict, reference_candles

DAY0 = datetime(2024, 1, 15, 9, 15, tzinfo=IST).timestamp()  # a Monday, session open
MINUTES = 10  # the window the property looks at: 09:15-09:25
M1, M5 = Interval.parse("1m"), Interval.parse("5m")
INTERVALS = (M1, M5)
SYMBOLS = ("INFY", "TCS")
GRACE = 2  # the aggregator's default
PRIME = -30
SCRATCH = (
    "/dev/shm" if Path("/dev/shm").is_dir() else None
)  # the store fsyncs every upsert  # every symbol's first tick, before the window: the day's cumulative volume so far


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True, slots=True)
class Outage:
    """Nobody watched ``keys`` from ``since`` to ``until`` (seconds after 09:15)."""

    since: int
    until: int
    keys: tuple[str, ...]

    def hides(self, symbol: str, at: float) -> bool:
        return symbol in self.keys and self.since <= at < self.until

    def overlaps(self, symbol: str, start: int, end: int) -> bool:
        return symbol in self.keys and start < self.until and end > self.since


@dataclass(frozen=True, slots=True)
class Backfill:
    """At ``at``, the broker's 1m history of ``symbols`` for minutes [first, last) is written."""

    at: float
    first: int
    last: int
    symbols: tuple[str, ...]


def tick(symbol: str, at: int, price: Decimal, volume: int, received: float) -> TickData:
    return TickData(
        "test", "NSE", symbol, 0, price, None, volume, None,
        datetime.fromtimestamp(DAY0 + at, IST), datetime.fromtimestamp(DAY0 + received, IST),
    )  # fmt: skip


@st.composite
def tapes(draw, symbols: tuple[str, ...]) -> list[tuple[str, int, Decimal, int]]:
    """(symbol, seconds after 09:15, price, cumulative volume) in exchange-time order: trades
    raise the cumulative volume, quote-only updates repeat the last trade's price and volume."""
    tape = []
    for i, symbol in enumerate(symbols):
        t = PRIME
        price = Decimal(2000 + 300 * i) / 20
        volume = 10_000 * (i + 1)
        tape.append((symbol, t, price, volume))
        steps = draw(st.lists(st.tuples(
            st.sampled_from([1, 2, 7, 20, 40, 59, 61, 100]),  # seconds to the next tick
            st.booleans(),  # a trade (else a quote-only update)
            st.integers(-3, 3),  # price move in ticks of 0.05
            st.integers(1, 500),  # quantity traded
        ), max_size=25))  # fmt: skip
        for dt, trade, move, quantity in steps:
            t += dt
            if t >= MINUTES * 60:
                break
            if trade:
                price = max(Decimal("0.05"), price + move * Decimal("0.05"))
                volume += quantity
            tape.append((symbol, t, price, volume))
    return sorted(tape, key=lambda row: row[1])


@st.composite
def outages(draw, symbols: tuple[str, ...], *, in_time: bool = True) -> list[Outage]:
    """Up to two outages one after the other, of every symbol's connection or of the first's."""
    out = []
    t = 0
    for gap, length, all_keys in draw(st.lists(st.tuples(
        st.sampled_from([0, 1, 15, 45, 60, 100, 200]),
        st.sampled_from([1, 5, 20, 45, 60, 90, 150, 300]),
        st.booleans(),
    ), max_size=2)):  # fmt: skip
        since = t + gap
        if since >= MINUTES * 60:
            break
        until = since + length
        t = until
        out.append(Outage(since, until, symbols if all_keys else symbols[:1]))
    return out


@st.composite
def backfills(draw, symbols: tuple[str, ...]) -> list[Backfill]:
    """Backfills at any time, each of a range of minutes; only those that have ended are written."""
    out = []
    for at, first, span, which in draw(st.lists(st.tuples(
        st.sampled_from([30.5, 61, 62.5, 90, 125, 185, 300.5, 302, 420, 601, 603, 700, 1000]),
        st.integers(0, MINUTES - 1),
        st.integers(1, MINUTES),
        st.sampled_from(["all", "first", "last"]),
    ), max_size=3)):  # fmt: skip
        last = min(first + span, MINUTES, int(at // 60))  # a minute that has not ended is not in the history
        chosen = {"all": symbols, "first": symbols[:1], "last": symbols[-1:]}[which]
        out.append(Backfill(at, first, last, chosen))
    return out


def true_candles(tape) -> dict:
    """What the broker's history says: the reference over every tick of the tape."""
    ticks = [tick(s, at, price, volume, at) for s, at, price, volume in tape]
    return reference_candles(ticks, INTERVALS)


def as_candle(key, values: dict) -> Candle:
    exchange, symbol, interval, start = key
    return Candle(
        exchange, symbol, interval, datetime.fromtimestamp(start, IST),
        values["open"], values["high"], values["low"], values["close"], values["volume"], values["oi"],
        values["tick_count"], datetime.fromtimestamp(values["first_tick_epoch"], IST),
        datetime.fromtimestamp(values["last_tick_epoch"], IST), values["cum_volume"], True, BACKFILL,
    )  # fmt: skip


def history(backfill: Backfill, truth: dict) -> list[Candle]:
    """The backfill's candles: its minutes, and the 5m buckets they cover whole, rolled up."""
    out = []
    for symbol in backfill.symbols:
        minutes = [
            as_candle(key, truth[key])
            for m in range(backfill.first, backfill.last)
            if (key := ("NSE", symbol, "1m", int(DAY0) + 60 * m)) in truth
        ]
        out += minutes
        for c in roll_up(minutes, M5):
            start = int(c.bucket.timestamp()) - int(DAY0)
            if backfill.first * 60 <= start and start + 300 <= backfill.last * 60:
                out.append(c)
    return out


def schedule(tape, cuts: list[Outage], fills: list[Backfill], latencies: list[float]) -> list[tuple]:
    """Every event in the order the daemon meets it: (time, rank, what, payload)."""
    events = []
    for (symbol, at, price, volume), latency in zip(tape, latencies, strict=True):
        if any(o.hides(symbol, at) for o in cuts):
            continue  # sent while nobody watched: never delivered
        received = at + (0 if at == PRIME else latency)
        events.append((received, 1, "tick", tick(symbol, at, price, volume, received)))
    for o in cuts:
        # the daemon learns of the drop after the last frame the connection brought (the ticks
        # still on their way at ``since`` are in it), and dates it ``since``
        last = max(
            (e[0] for e in events if e[2] == "tick" and e[3].symbol in o.keys and e[3].exchange_ts.timestamp() < DAY0 + o.since),
            default=o.since,
        )
        events.append((min(o.until - 0.001, max(o.since, last)), 1.5, "down", o))  # before it is back
        events.append((o.until, 0, "unwatched", o))
        # resubscribing: the feed repeats each symbol's latest state, with its own exchange time
        for symbol in o.keys:
            s, at, price, volume = [row for row in tape if row[0] == symbol and row[1] < o.until][-1]
            events.append((o.until, 0.5, "tick", tick(s, at, price, volume, o.until)))  # before live ticks
    for b in fills:
        events.append((b.at, 2, "backfill", b))
    return sorted(events, key=lambda e: (e[0], e[1]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), n_symbols=st.integers(1, 2))
def test_stored_candles_follow_the_provenance_rules_whatever_the_order_of_ticks_outages_and_backfills(data, n_symbols):
    symbols = SYMBOLS[:n_symbols]
    tape = data.draw(tapes(symbols), label="tape")
    cuts = data.draw(outages(symbols), label="outages")
    fills = data.draw(backfills(symbols), label="backfills")
    latencies = data.draw(
        st.lists(st.sampled_from([0.0, 0.0, 0.5, 1.5, 2.5, 30.0, 70.0]), min_size=len(tape), max_size=len(tape)),
        label="latencies",
    )
    truth = true_candles(tape)
    events = schedule(tape, cuts, fills, latencies)
    learned = {o: at for at, _, what, o in events if what == "down"}  # when the daemon knew of each drop
    # two spans of a symbol with no tick of it taken between them: the aggregator remembers only
    # the later span's start, the reference applies each span's rule 8 floor; they differ there
    assume(not any(
        symbol in a.keys and symbol in b.keys and not any(
            what == "tick" and e.symbol == symbol and a.until <= at < b.until and e.exchange_ts.timestamp() >= DAY0 + a.since
            for at, _, what, e in events
        )
        for a, b in zip(cuts, cuts[1:])
        for symbol in symbols
    ))  # fmt: skip

    clock = Clock(DAY0 - 60)
    agg = CandleAggregator(INTERVALS, clock)
    agg.unwatched(float("-inf"), clock.now)  # the daemon started at 09:14
    arrivals: list[TickData] = []
    spans = [(0, float("-inf"), clock.now)]  # for the reference: (arrivals before it, since, until)
    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        store = SQLiteStore(Path(tmp) / "candles.db")
        store.migrate()
        try:
            for at, _, what, payload in events:
                clock.now = DAY0 + at
                store.upsert(agg.advance())
                if what == "tick":
                    arrivals.append(payload)
                    store.upsert(agg.add([payload]))
                elif what == "down":
                    store.upsert(agg.went_down(DAY0 + payload.since, [("NSE", s) for s in payload.keys]))
                elif what == "unwatched":
                    agg.unwatched(DAY0 + payload.since, DAY0 + payload.until, [("NSE", s) for s in payload.keys])
                    spans.append((len(arrivals), DAY0 + payload.since, DAY0 + payload.until))
                else:
                    store.upsert(history(payload, truth))
            clock.now = DAY0 + 2000
            store.upsert(agg.advance())
            stored = {
                candle_to_dict(c, with_source=True)[0]: {**candle_to_dict(c, with_source=True)[1], "final": c.final}
                for symbol in symbols
                for iv in INTERVALS
                for c in store.between("NSE", symbol, iv.name, *window())
            }
        finally:
            store.close()
    # what the rules say the aggregator builds from what it was given (reordered ticks classify
    # by arrival, rule 4), per symbol: an outage of one symbol's connection leaves the others' alone
    seen = {
        key: values
        for symbol in symbols
        for key, values in reference_candles(
            [t for t in arrivals if t.symbol == symbol],
            INTERVALS,
            unwatched=[(before, since, until) for before, since, until in spans_of(symbol, spans, cuts, arrivals)],
        ).items()
    }

    in_order = {}
    for symbol in symbols:
        times = [t.exchange_ts for t in arrivals if t.symbol == symbol]
        in_order[symbol] = times == sorted(times)
    for symbol in symbols:
        for iv in INTERVALS:
            for start in range(0, MINUTES * 60, iv.seconds):
                key = ("NSE", symbol, iv.name, int(DAY0) + start)
                got = stored.get(key)
                true = truth.get(key)
                built = seen.get(key)
                cut = any(o.overlaps(symbol, start, start + iv.seconds) for o in cuts)
                # a backfill mends a cut bucket once the drop is known (the daemon asks only for the
                # buckets of spans it knows of); one before that may have found it final and live
                known = min((learned[o] for o in cuts if o.overlaps(symbol, start, start + iv.seconds)), default=0)
                touched = [
                    b.at for b in fills if symbol in b.symbols and b.first * 60 <= start and start + iv.seconds <= b.last * 60
                ]
                mended = any(at >= known for at in touched)
                early = bool(touched) and not mended
                where = f"{symbol} {iv.name} 09:{15 + start // 60:02d}"
                if not cut:
                    want = None if built is None else {**built, "final": True}
                    assert got == want, f"{where}: watched whole: the live candle of every tick: {got} != {want}"
                    assert built is None or built["source"] == LIVE, f"{where}: watched whole: live"
                    if not in_order[symbol]:
                        pass  # a quote arriving before its trade counts as the trade (rule 4): not the broker's
                    else:
                        assert ohlcv(got) == ohlcv(true), f"{where}: watched whole: the broker's prices and volume"
                elif mended and true is None and got is not None:
                    # the broker traded nothing in it, but a resubscription's snapshot stamped later
                    # than the trade it carries made a partial candle; a backfill only writes
                    # candles, so it stays (partial, volume 0): known, not yet mended
                    assert got["source"] == PARTIAL and got["volume"] == 0, f"{where}: a snapshot's partial candle"
                elif mended:
                    want = None if true is None else {**true, "source": BACKFILL, "final": True}
                    assert got == want, f"{where}: cut short, then backfilled: the broker's candle: {got} != {want}"
                elif early and got is not None and got["source"] == BACKFILL:
                    # filled before the live candle was written (so no partial could replace it)
                    assert got == {**true, "source": BACKFILL, "final": True}, f"{where}: an early backfill"
                else:
                    want = None if built is None else {**built, "final": True}
                    assert got == want, f"{where}: cut short: the partial candle of the ticks seen: {got} != {want}"
                    if got is not None:
                        assert got["source"] == PARTIAL, f"{where}: cut short: partial"
                        assert got["volume"] <= (0 if true is None else true["volume"]), (
                            f"{where}: a partial candle never takes volume it did not see"
                        )


def spans_of(symbol: str, spans: list[tuple[int, float, float]], cuts: list[Outage], arrivals: list[TickData]):
    """``spans`` (indexed into every arrival) for the arrivals of ``symbol`` only."""
    index = [i for i, t in enumerate(arrivals) if t.symbol == symbol]
    keyed = [True] + [symbol in o.keys for o in cuts]  # the start covers every symbol
    for (before, since, until), mine in zip(spans, keyed, strict=True):
        if mine:
            yield sum(1 for i in index if i < before), since, until


def ohlcv(values: dict | None) -> tuple | None:
    if values is None:
        return None
    return tuple(values[k] for k in ("open", "high", "low", "close", "volume"))


def window() -> tuple[datetime, datetime]:
    return datetime.fromtimestamp(DAY0, IST), datetime.fromtimestamp(DAY0 + MINUTES * 60, IST)


def run(tape, cuts: list[Outage], fills: list[Backfill]) -> dict:
    """The daemon over ``tape`` (every tick received when sent), the store's 1m candles after."""
    truth = true_candles(tape)
    clock = Clock(DAY0 - 60)
    agg = CandleAggregator(INTERVALS, clock)
    agg.unwatched(float("-inf"), clock.now)
    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        store = SQLiteStore(Path(tmp) / "candles.db")
        store.migrate()
        try:
            for at, _, what, payload in schedule(tape, cuts, fills, [0.0] * len(tape)):
                clock.now = DAY0 + at
                store.upsert(agg.advance())
                if what == "tick":
                    store.upsert(agg.add([payload]))
                elif what == "down":
                    store.upsert(agg.went_down(DAY0 + payload.since, [("NSE", s) for s in payload.keys]))
                elif what == "unwatched":
                    agg.unwatched(DAY0 + payload.since, DAY0 + payload.until, [("NSE", s) for s in payload.keys])
                else:
                    store.upsert(history(payload, truth))
            clock.now = DAY0 + 2000
            store.upsert(agg.advance())
            return {int(c.bucket.timestamp() - DAY0) // 60: c for c in store.between("NSE", "INFY", "1m", *window())}
        finally:
            store.close()


def test_a_bucket_that_closes_while_its_feed_is_down_is_partial_and_backfill_mends_it():
    tape = [("INFY", PRIME, Decimal(100), 10_000), ("INFY", 10, Decimal(100), 10_001), ("INFY", 50, Decimal(101), 10_500)]
    # the connection's last frame was at 09:15:45; it came back at 09:16:05, after 09:15 closed (09:16:02)
    stored = run(tape, [Outage(45, 65, ("INFY",))], [Backfill(61, 0, 1, ("INFY",))])
    assert stored[0].source == BACKFILL  # before went_down: "live" (volume 1 of 501), and the backfill refused


def test_a_bucket_watched_whole_after_a_quiet_outage_counts_its_first_trade():
    tape = [("INFY", PRIME, Decimal(100), 10_000), ("INFY", 70, Decimal(100), 10_001)]
    # nothing traded during 09:15:00-09:15:01; 09:16 was watched from start to end
    stored = run(tape, [Outage(0, 1, ("INFY",))], [])
    assert (stored[1].source, stored[1].volume) == (LIVE, 1)  # it was floored at its first tick: volume 0


def test_a_bucket_that_closed_live_before_the_drop_was_noticed_is_written_again_partial():
    clock = Clock(DAY0 - 60)
    agg = CandleAggregator(INTERVALS, clock)
    agg.unwatched(float("-inf"), clock.now)
    agg.add([tick("INFY", PRIME, Decimal(100), 10_000, PRIME), tick("INFY", 10, Decimal(101), 10_005, 10)])
    clock.now = DAY0 + 63  # 09:15 closed at 09:16:02, live: the connection's last frame was at 09:15:55
    (closed,) = [c for c in agg.advance() if c.bucket.timestamp() == DAY0 and c.interval == "1m"]
    assert closed.source == LIVE
    # the stall timeout notices the drop at 09:16:05
    clock.now = DAY0 + 65
    revised = agg.went_down(DAY0 + 55, [("NSE", "INFY")])
    assert [(c.interval, c.bucket, c.source, c.volume) for c in revised] == [("1m", closed.bucket, PARTIAL, 5)]
    clock.now = DAY0 + 400
    (five,) = [c for c in agg.advance() if c.interval == "5m"]
    assert five.source == PARTIAL  # open when the drop was noticed: marked, written at its close
