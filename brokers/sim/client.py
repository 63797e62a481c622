"""An offline broker: deterministic random-walk ticks on a simulated clock.

The tick stream depends only on the seed, the tick rate, the symbols and the simulated time, never
on how fast the wall clock runs (a run at ``speed=60`` produces the same ticks as one at
``speed=1``) nor on when the simulator started: a restart mid-day continues the stream a run that
kept going produces, and subscribing costs the same at 15:00 as at midnight (see ``_Walk``).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import IO

from brokers.base import BaseBroker, BrokerError
from core.ist import IST, ist_date
from core.progress import progress
from core.ticks import Instrument, TickBatchCallback, TickData

log = logging.getLogger(__name__)

_TICK = Decimal("0.05")
_IST_OFFSET = 19_800
_MASK64 = (1 << 64) - 1
_PRICE_CACHE_MAX = 1 << 17


class _Prices(dict):
    """price in ticks of 0.05 -> Decimal, one shared object per price as the broker decoders hand
    them over (a fresh Decimal per tick kept a million of them alive in the open buckets)."""

    __slots__ = ()

    def __missing__(self, ticks: int) -> Decimal:
        if len(self) >= _PRICE_CACHE_MAX:
            self.clear()
        value = self[ticks] = Decimal(ticks) * _TICK
        return value


_PRICES = _Prices()


class _SplitMix64:
    """A small deterministic generator (SplitMix64) for one chunk of an instrument's stream: 8 bytes
    of state where a ``random.Random`` holds 2.5 KB (22 MB at 9,000 instruments)."""

    __slots__ = ("state",)

    def __init__(self, state: int) -> None:
        self.state = state

    def next64(self) -> int:
        s = self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK64
        z = ((s ^ (s >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return z ^ (z >> 31)

    def random(self) -> float:
        """Uniform in [0, 1)."""
        return (self.next64() >> 11) * (1.0 / 9007199254740992.0)

    def below(self, n: int) -> int:
        """Uniform in [0, n) (the modulo bias is below 1e-15 for the small n used here)."""
        return self.next64() % n

    def exponential(self) -> float:
        """Exponentially distributed with mean 1."""
        return -math.log(1.0 - self.random())


class SimClock:
    """Simulated epoch seconds: ``start + elapsed_wall * speed``."""

    def __init__(
        self, start: float, speed: float = 1.0, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        if speed <= 0:
            raise ValueError("the simulation speed must be positive")
        self.start = start
        self.speed = speed
        self._monotonic = monotonic
        self._origin = monotonic()

    def __call__(self) -> float:
        return self.start + (self._monotonic() - self._origin) * self.speed


_INDEX_STEPS = (-2, -1, 0, 1, 2)
_STOCK_STEPS = (-3, -2, -1, -1, 0, 0, 1, 1, 2, 3)
_QUANTITIES = (1, 1, 2, 5, 10, 25, 50, 100, 250, 1000)
_MEAN_QUANTITY = sum(_QUANTITIES) / len(_QUANTITIES)
_QUOTE_SHARE = 0.3  # of a stock's events after its first trade in a chunk: quote-only updates
_DAY_MS = 86_400_000
#: chunk lengths that divide a day, longest first; a chunk holds about _CHUNK_EVENTS events
_CHUNK_SECONDS = (60, 30, 20, 15, 10, 5, 4, 3, 2, 1)
_CHUNK_EVENTS = 16


def _is_index(instrument: Instrument) -> bool:
    return " " in instrument.symbol or instrument.symbol.startswith(("NIFTY", "SENSEX"))


def _mix(key: int, tag: int, a: int = 0, b: int = 0) -> int:
    """A 64-bit hash of a 64-bit key and three small integers (SplitMix64's finaliser)."""
    z = (key + tag * 0x9E3779B97F4A7C15 + a * 0xD1B54A32D192ED03 + b * 0x8CB92BA72F3D8DD7) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _unit(key: int, tag: int, a: int = 0, b: int = 0) -> float:
    """``_mix`` as a float in [0, 1)."""
    return (_mix(key, tag, a, b) >> 11) * (1.0 / 9007199254740992.0)


def _chunk_ms(tick_rate: float) -> int:
    for seconds in _CHUNK_SECONDS:
        if seconds * tick_rate <= _CHUNK_EVENTS:
            return seconds * 1000
    return 1000


class _Walk:
    """The tick stream of one instrument: a random walk on the 0.05 grid, computed chunk by chunk.

    A day is cut into chunks of a few seconds (about ``_CHUNK_EVENTS`` events each). The price and
    the cumulative volume at each chunk's start are closed-form functions of (seed, instrument,
    day, chunk): the price a sum of value-noise octaves (one per doubling of the chunk count, the
    amplitude growing with the square root of the span, as a random walk's does), the volume a
    strictly rising line with jitter. A chunk's events come from a generator seeded by the same
    key and the chunk's number; its price steps are bent to end on the next chunk's price (a
    discrete bridge) and its trades' quantities scaled to end on the next chunk's volume. So the
    state at any time costs one chunk to compute, not a replay from midnight, and a simulator
    (re)started at any time produces the same ticks from then on as one that kept running.
    """

    __slots__ = (
        "instrument", "index", "gap_ms", "chunk_ms", "chunks", "sigma", "volume_step", "base", "key",
        "day", "day_key", "p_next", "origin_ms", "chunk", "end_ms", "rng", "ts_ms",
        "p0", "v0", "budget", "movers", "bend", "qty_sum", "k", "steps", "qty_seen", "traded",
        "price", "last_qty", "volume",
    )  # fmt: skip

    def __init__(self, instrument: Instrument, seed: int, start_ms: int, tick_rate: float) -> None:
        self.instrument = instrument
        self.index = _is_index(instrument)
        self.gap_ms = 1000.0 / tick_rate
        self.chunk_ms = _chunk_ms(tick_rate)
        self.chunks = _DAY_MS // self.chunk_ms
        events = self.chunk_ms / self.gap_ms
        self.sigma = math.sqrt(events * (2.0 if self.index else 3.0 * (1 - _QUOTE_SHARE)))
        self.volume_step = max(16, int(events * (1 - _QUOTE_SHARE) * _MEAN_QUANTITY))
        self.key = int.from_bytes(hashlib.blake2b(f"{seed}:{instrument.key}".encode(), digest_size=8).digest(), "big")
        day = ist_date(start_ms / 1000)
        self._begin_day(day)
        self._enter((start_ms - self.origin_ms) // self.chunk_ms)
        while self.ts_ms < start_ms:  # within the one chunk that holds start_ms
            self.next_tick()

    def _begin_day(self, day: int) -> None:
        self.day = day
        self.day_key = _mix(self.key, 1, day)
        self.p_next = None
        self.origin_ms = (day * 86_400 - _IST_OFFSET) * 1000
        self.base = 2_000 + _mix(self.day_key, 2) % 58_000  # price in ticks of 0.05: 100.00 .. 3000.00

    def _price_at(self, chunk: int) -> int:
        """The price (in ticks) at the start of ``chunk``."""
        key = self.day_key
        total = 0.0
        span, octave = 1, 0
        while span < 2 * self.chunks:
            j, r = divmod(chunk, span)
            a = _unit(key, 3, octave, j) * 2 - 1
            if r:
                b = _unit(key, 3, octave, j + 1) * 2 - 1
                a += (b - a) * r / span
            total += a * math.sqrt(span)
            span, octave = span * 2, octave + 1
        return max(1, self.base + round(total * self.sigma))

    def _volume_at(self, chunk: int) -> int:
        """The cumulative volume at the start of ``chunk``: 0 at midnight, then strictly rising."""
        if chunk == 0:
            return 0
        step = self.volume_step
        return chunk * step + int(_unit(self.day_key, 4, chunk) * (step // 2))

    def _enter(self, chunk: int) -> None:
        """Start ``chunk`` (of the current day, or the next day's first when past the last): the
        first event at or after its start becomes ``ts_ms``; empty chunks are skipped."""
        while True:
            if chunk >= self.chunks:
                self._begin_day(self.day + 1)
                chunk = 0
            self.chunk = chunk
            start = self.origin_ms + chunk * self.chunk_ms
            self.end_ms = start + self.chunk_ms
            state = _mix(self.day_key, 5, chunk)
            movers, steps, qty_sum = self._scan(_SplitMix64(state), start)
            cached = self.p_next  # (chunk, price): the previous chunk's end, this one's start
            self.p0 = cached[1] if cached is not None and cached[0] == chunk else self._price_at(chunk)
            end_price = self._price_at(chunk + 1)
            self.p_next = (chunk + 1, end_price)
            self.bend = end_price - self.p0 - steps
            self.movers = movers
            self.qty_sum = qty_sum
            if not self.index:
                self.v0 = self._volume_at(chunk)
                self.budget = self._volume_at(chunk + 1) - self.v0
                self.volume = self.v0
            self.k = self.steps = self.qty_seen = 0
            self.traded = False
            self.rng = _SplitMix64(state)
            self.ts_ms = start + int(self.rng.exponential() * self.gap_ms)
            if self.ts_ms < self.end_ms:
                return
            chunk += 1

    def _scan(self, rng: _SplitMix64, start: int) -> tuple[int, int, int]:
        """A first pass over a chunk's events: (price moves, their steps' sum, the trades' quantities' sum)."""
        gap = self.gap_ms
        end = self.end_ms
        ts = start + int(rng.exponential() * gap)
        movers = steps = qty_sum = 0
        traded = False
        while ts < end:
            if self.index:
                steps += _INDEX_STEPS[rng.below(5)]
                movers += 1
            elif traded and rng.random() < _QUOTE_SHARE:
                pass
            else:
                steps += _STOCK_STEPS[rng.below(10)]
                qty_sum += _QUANTITIES[rng.below(10)]
                movers += 1
                traded = True
            ts += max(1, int(rng.exponential() * gap))
        return movers, steps, qty_sum

    def next_tick(self) -> tuple[int, Decimal, int | None, int | None]:
        """Advance one event; returns (ts_ms, price, last_qty, cumulative volume)."""
        ts_ms = self.ts_ms
        rng = self.rng
        if self.index:
            self._move(_INDEX_STEPS[rng.below(5)])
            qty = volume = None
        elif self.traded and rng.random() < _QUOTE_SHARE:  # quote-only update: depth moved, no trade
            qty, volume = self.last_qty, self.volume
        else:
            self._move(_STOCK_STEPS[rng.below(10)])
            self.qty_seen += _QUANTITIES[rng.below(10)]
            k, budget, movers = self.k, self.budget, self.movers
            if budget >= movers:  # every trade raises the volume by at least 1
                volume = self.v0 + k + (budget - movers) * self.qty_seen // self.qty_sum
            else:
                volume = self.v0 + budget * k // movers
            qty = volume - self.volume
            self.volume = volume
            self.last_qty = qty
            self.traded = True
        ts = ts_ms + max(1, int(rng.exponential() * self.gap_ms))
        if ts < self.end_ms:
            self.ts_ms = ts
        else:
            self._enter(self.chunk + 1)
        return ts_ms, self.price, qty, volume

    def _move(self, step: int) -> None:
        """One price move: the walk's step plus this move's share of the bend to the next chunk's price."""
        self.k += 1
        self.steps += step
        ticks = self.p0 + self.steps + round(self.bend * self.k / self.movers)
        self.price = _PRICES[max(1, ticks)]


class SimBroker(BaseBroker):
    """Offline feed for demos, tests and benchmarks."""

    name = "sim"
    max_symbols_per_connection = 100_000
    max_connections = 1

    def __init__(
        self,
        clock: SimClock,
        *,
        seed: int = 0,
        tick_rate: float = 1.0,
        tape_path: str | Path | None = None,
        batch_seconds: float = 0.05,
    ) -> None:
        if tick_rate <= 0:
            raise BrokerError("the simulator's tick rate must be positive (ticks per simulated second per symbol)")
        self.clock = clock
        self.seed = seed
        self.tick_rate = tick_rate
        self.tape_path = Path(tape_path) if tape_path else None
        self.batch_seconds = batch_seconds
        self._walks: dict[str, _Walk] = {}
        self._heap: list[tuple[int, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tape: IO[str] | None = None
        self.ticks_sent = 0

    def subscribe(self, instruments: Sequence[Instrument]) -> None:
        self.check_capacity(len(self._walks) + len(instruments))
        start_ms = int(self.clock() * 1000)
        added: list[tuple[str, str]] = []
        with self._lock, progress("preparing the simulated streams", len(instruments), "symbols") as bar:
            for inst in instruments:
                bar.update()
                if inst.key in self._walks:
                    continue
                walk = _Walk(inst, self.seed, start_ms, self.tick_rate)
                self._walks[inst.key] = walk
                heapq.heappush(self._heap, (walk.ts_ms, inst.key))
                added.append((inst.exchange, inst.symbol))
        if self._thread is not None:
            self._report_watch(True, self.clock(), tuple(added))

    def unsubscribe(self, instruments: Sequence[Instrument]) -> None:
        gone: list[tuple[str, str]] = []
        with self._lock:
            for inst in instruments:
                if self._walks.pop(inst.key, None) is not None:
                    gone.append((inst.exchange, inst.symbol))
            self._heap = [(ts, key) for ts, key in self._heap if key in self._walks]
            heapq.heapify(self._heap)
        if self._thread is not None:
            self._report_watch(False, self.clock(), tuple(gone))

    def connect(self, on_ticks: TickBatchCallback) -> None:
        if self._thread is not None:
            return
        if self.tape_path:
            self.tape_path.parent.mkdir(parents=True, exist_ok=True)
            self._tape = self.tape_path.open("w", encoding="utf-8")
        self._stop.clear()
        # up before the first batch, as a real feed is up before its first frame (the watch changes
        # and the batches share one queue)
        self._report_watch(True, self.clock(), self._keys())
        self._thread = threading.Thread(target=self._run, args=(on_ticks,), name="sim-feed", daemon=True)
        self._thread.start()

    def disconnect(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
            self._report_watch(False, self.clock(), self._keys())
        if self._tape is not None:
            self._tape.close()
            self._tape = None

    def _keys(self) -> tuple[tuple[str, str], ...]:
        with self._lock:
            return tuple((w.instrument.exchange, w.instrument.symbol) for w in self._walks.values())

    def is_connected(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def due_ticks(self, now: float) -> list[TickData]:
        """Every tick with an exchange time up to ``now``, in time order; fewer once ``disconnect``
        was asked for (a large watchlist's first call makes hundreds of thousands: a stop does not
        wait for them, and the ticks not made stay due)."""
        limit_ms = int(now * 1000)
        receive = datetime.fromtimestamp(now, IST)
        out: list[TickData] = []
        stopping = self._stop.is_set
        with self._lock:
            heap = self._heap
            while heap and heap[0][0] <= limit_ms:
                if not len(out) & 0x3FFF and stopping():  # every 16,384 ticks
                    break
                _, key = heapq.heappop(heap)
                walk = self._walks[key]
                ts_ms, price, qty, volume = walk.next_tick()
                heapq.heappush(heap, (walk.ts_ms, key))
                inst = walk.instrument
                out.append(
                    TickData(
                        broker="sim",
                        exchange=inst.exchange,
                        symbol=inst.symbol,
                        token=inst.token,
                        last_price=price,
                        last_quantity=qty,
                        volume=volume,
                        oi=None,
                        exchange_ts=datetime.fromtimestamp(ts_ms / 1000, IST),
                        receive_ts=receive,
                    )
                )
        return out

    def _run(self, on_ticks: TickBatchCallback) -> None:
        while not self._stop.is_set():
            batch = self.due_ticks(self.clock())
            if batch:
                if self._tape is not None:
                    write_tape(self._tape, batch)
                self.ticks_sent += len(batch)
                on_ticks(batch)
            self._stop.wait(self.batch_seconds)


def write_tape(out: IO[str], ticks: Sequence[TickData]) -> None:
    """Append ticks as JSON lines, in arrival order (for tests and replays)."""
    for t in ticks:
        out.write(
            json.dumps(
                {
                    "exchange": t.exchange,
                    "symbol": t.symbol,
                    "price": str(t.last_price),
                    "qty": t.last_quantity,
                    "volume": t.volume,
                    "oi": t.oi,
                    "ts": t.exchange_ts.timestamp(),
                    "recv": t.receive_ts.timestamp(),
                }
            )
            + "\n"
        )
    out.flush()


def read_tape(path: str | Path) -> list[TickData]:
    """Read a tape written by ``write_tape`` back into ticks, in arrival order."""
    ticks = []
    with Path(path).open(encoding="utf-8") as src:
        for line in src:
            row = json.loads(line)
            ticks.append(
                TickData(
                    broker="sim",
                    exchange=row["exchange"],
                    symbol=row["symbol"],
                    token=0,
                    last_price=Decimal(row["price"]),
                    last_quantity=row["qty"],
                    volume=row["volume"],
                    oi=row["oi"],
                    exchange_ts=datetime.fromtimestamp(row["ts"], IST),
                    receive_ts=datetime.fromtimestamp(row["recv"], IST),
                )
            )
    return ticks
