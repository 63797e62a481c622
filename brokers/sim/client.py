"""An offline broker: deterministic random-walk ticks on a simulated clock.

The tick stream depends only on the seed, the symbols and the start time, never on how fast the
wall clock runs, so a run at ``speed=60`` produces the same ticks as one at ``speed=1``.
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
    """A small deterministic generator (SplitMix64) for one instrument's day: 8 bytes of state
    where a ``random.Random`` holds 2.5 KB (22 MB at 9,000 instruments)."""

    __slots__ = ("state",)

    def __init__(self, seed_text: str) -> None:
        self.state = int.from_bytes(hashlib.blake2b(seed_text.encode(), digest_size=8).digest(), "big")

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


def _is_index(instrument: Instrument) -> bool:
    return " " in instrument.symbol or instrument.symbol.startswith(("NIFTY", "SENSEX"))


class _Walk:
    """The tick stream of one instrument for one IST day: a random walk on the 0.05 grid.

    Each day's stream starts at IST midnight from a state derived from (seed, instrument, day),
    so a simulator restarted at any time produces the same ticks from then on as one that kept
    running: restarts can be tested against a continuous reference.
    """

    __slots__ = ("instrument", "rng", "ticks", "price", "volume", "day", "last_qty", "ts_ms", "mean_gap_ms", "index", "seed")

    def __init__(self, instrument: Instrument, seed: int, start_ms: int, tick_rate: float, resume: bool) -> None:
        self.instrument = instrument
        self.seed = seed
        self.index = _is_index(instrument)
        self.mean_gap_ms = 1000.0 / tick_rate
        if resume:
            day = ist_date(start_ms / 1000)
            self._begin_day(day, (day * 86_400 - _IST_OFFSET) * 1000)
            while self.ts_ms < start_ms:
                self.next_tick()
        else:
            self._begin_day(ist_date(start_ms / 1000), start_ms)

    def _begin_day(self, day: int, origin_ms: int) -> None:
        self.day = day
        self.rng = _SplitMix64(f"{self.seed}:{self.instrument.key}:{day}")
        self.ticks = 2_000 + self.rng.below(58_000)  # price in ticks of 0.05: 100.00 .. 3000.00
        self.price = _PRICES[self.ticks]
        self.volume = 0
        self.last_qty = 0
        self.ts_ms = origin_ms + int(self.rng.exponential() * self.mean_gap_ms)

    def next_tick(self) -> tuple[int, Decimal, int | None, int | None]:
        """Advance one event; returns (ts_ms, price, last_qty, cumulative volume)."""
        day = ist_date(self.ts_ms / 1000)
        if day != self.day:  # a new trading day: a fresh state, cumulative volume from zero
            self._begin_day(day, (day * 86_400 - _IST_OFFSET) * 1000)
        ts_ms = self.ts_ms
        rng = self.rng
        if self.index:
            self.ticks = max(1, self.ticks + _INDEX_STEPS[rng.below(5)])
            self.price = _PRICES[self.ticks]
            volume = qty = None
        elif self.last_qty and rng.random() < 0.3:  # quote-only update: depth moved, no trade
            volume, qty = self.volume, self.last_qty
        else:
            self.ticks = max(1, self.ticks + _STOCK_STEPS[rng.below(10)])
            self.price = _PRICES[self.ticks]
            qty = _QUANTITIES[rng.below(10)]
            self.volume += qty
            self.last_qty = qty
            volume = self.volume
        self.ts_ms = ts_ms + max(1, int(rng.exponential() * self.mean_gap_ms))
        return ts_ms, self.price, qty, volume


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
        resume: bool = True,
    ) -> None:
        if tick_rate <= 0:
            raise BrokerError("the simulator's tick rate must be positive (ticks per simulated second per symbol)")
        self.clock = clock
        self.seed = seed
        self.tick_rate = tick_rate
        self.tape_path = Path(tape_path) if tape_path else None
        self.batch_seconds = batch_seconds
        # resume: replay the day from midnight up to the start (restart-safe, costs start-up time);
        # otherwise every stream starts fresh at the start time (benchmarks with many symbols).
        self.resume = resume
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
        with self._lock:
            for inst in instruments:
                if inst.key in self._walks:
                    continue
                walk = _Walk(inst, self.seed, start_ms, self.tick_rate, self.resume)
                self._walks[inst.key] = walk
                heapq.heappush(self._heap, (walk.ts_ms, inst.key))

    def unsubscribe(self, instruments: Sequence[Instrument]) -> None:
        with self._lock:
            for inst in instruments:
                self._walks.pop(inst.key, None)
            self._heap = [(ts, key) for ts, key in self._heap if key in self._walks]
            heapq.heapify(self._heap)

    def connect(self, on_ticks: TickBatchCallback) -> None:
        if self._thread is not None:
            return
        if self.tape_path:
            self.tape_path.parent.mkdir(parents=True, exist_ok=True)
            self._tape = self.tape_path.open("w", encoding="utf-8")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(on_ticks,), name="sim-feed", daemon=True)
        self._thread.start()

    def disconnect(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._tape is not None:
            self._tape.close()
            self._tape = None

    def is_connected(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def due_ticks(self, now: float) -> list[TickData]:
        """Every tick with an exchange time up to ``now``, in time order."""
        limit_ms = int(now * 1000)
        receive = datetime.fromtimestamp(now, IST)
        out: list[TickData] = []
        with self._lock:
            heap = self._heap
            while heap and heap[0][0] <= limit_ms:
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
