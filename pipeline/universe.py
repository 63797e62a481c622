"""The watchlist's derivatives universes, kept resolved while the daemon streams (the ``universe`` thread).

A universe entry (``config/universe.py``; ``core.universe.UniverseSpec``) names contracts by a rule:
"NIFTY weekly options, 10 strikes either side of the money". ``Universes`` keeps that rule true:

- **At start** it resolves every entry from the broker's instrument master (``BaseBroker.contracts``).
  Futures are known at once. An option chain needs the price of its reference (the index, a stock or
  the near future: ``core.universe.atm_reference``), which is subscribed with the universe: the feed's
  snapshot on subscription (Kite and Kotak send one) or its first tick gives the price, and the
  strikes around it are subscribed then. Until that price comes, the entry says it waits for it.
- **Re-centring**: the pipeline thread hands every batch to ``observe``, which keeps the references'
  last prices and wakes this thread. The at-the-money strike (ATM) moves to the strike nearest the
  price once that is ``recentre_steps`` strikes from the current centre and the price is past the
  half-way point to it by ``hysteresis`` of a strike step, so a price hovering at a boundary does not
  flap between two centres. The new strikes are subscribed and the old ones unsubscribed on the live
  connections (``apply``: no reconnect); the log says what changed, ``report`` what metrics show.
- **Daily rebuild and roll**: on each day some universe's exchange has a session, ``rebuild_lead``
  before its first session opens (from the market calendar; 08:30 IST without one), the broker's
  master is fetched again (``refresh_instruments``: atomic, the underlyings the universes need are
  required) and every entry is resolved for the day: expired contracts leave, the next expiry
  enters, futures roll by their ``roll=`` days.
- **The record**: every contract subscribed is stored in the ``instruments`` table (its metadata kept
  forever), and each futures entry's contract per day in ``rolls`` (``NFO:NIFTY-I`` is the near
  future's series, ``-II`` the next, ``-III`` the far), from which continuous series are read.

Nothing here blocks the pipeline: ``observe`` is a set lookup per tick of the batch, and the
subscriptions, the downloads and the store writes run on this module's own thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as dtime
from decimal import Decimal

from brokers.base import BaseBroker, BrokerError
from core.contracts import FUT, Contract
from core.ist import IST
from core.market_calendar import MarketCalendar
from core.ticks import TickData
from core.universe import (
    OPT,
    UniverseError,
    UniverseSpec,
    atm_reference,
    nearest_strike,
    option_chain,
    resolve_universe,
    strike_step,
    strikes_around,
)
from storage.base import CandleStore, StoreError
from storage.continuous import series_name

log = logging.getLogger("marketfeed")

#: without a market calendar, the daily rebuild runs at this IST time (before 09:00, the earliest
#: open of NSE, BSE and MCX)
FALLBACK_REBUILD_AT = dtime(8, 30)
#: a failed rebuild or store write is tried again after this many seconds
RETRY_SECONDS = 60.0

Key = tuple[str, str]


def recentre(strikes: Sequence[Decimal], centre: Decimal | None, price: Decimal, steps: int, hysteresis: float) -> Decimal:
    """The ATM strike after the underlying trades at ``price``, given the current ``centre``.

    ``strikes`` are sorted. The centre moves to the strike nearest the price only when that is at
    least ``steps`` strikes away and the price, moved back toward the centre by ``hysteresis`` of
    the strike step, is still that far: a price must pass the half-way point between two strikes
    by that margin to move the centre, and by as much again the other way to move it back.
    """
    nearest = nearest_strike(strikes, price)
    if centre is None or centre not in strikes:
        return nearest
    at, to = strikes.index(centre), strikes.index(nearest)
    if abs(to - at) < steps:
        return centre
    margin = strike_step(strikes, at) * Decimal(str(hysteresis))
    shifted = price - margin if to > at else price + margin
    reached = strikes.index(nearest_strike(strikes, shifted))
    return nearest if abs(reached - at) >= steps and (reached - at) * (to - at) > 0 else centre


@dataclass
class _Entry:
    """One universe entry's state on the universe thread."""

    spec: UniverseSpec
    reference: Key | None = None  # options: whose price the ATM is measured against
    expiry: date | None = None  # options: the expiry resolved for the day
    chain: list[Contract] = field(default_factory=list)  # options: the expiry's contracts, every strike
    strikes: list[Decimal] = field(default_factory=list)  # options: the chain's listed strikes
    centre: Decimal | None = None  # options: the ATM strike subscribed around
    contracts: list[Contract] = field(default_factory=list)  # what the entry names now
    recentres: int = 0
    problem: str | None = None  # why it names nothing (or yesterday's contracts) now

    @property
    def name(self) -> str:
        return str(self.spec)


@dataclass(frozen=True, slots=True)
class UniverseReport:
    """What the health channels show of the universes (``Service.health``)."""

    contracts: int  # contracts the universes name now (references not counted)
    recentres: int  # ATM moves since the start, all entries
    rebuilds: int  # daily rebuilds since the start
    day: date | None  # the day the universes were last resolved for
    atm: tuple[tuple[str, Decimal], ...]  # (entry, its ATM strike) of the option entries with a price
    per_entry: tuple[tuple[str, int, int], ...]  # (entry, contracts, re-centres)
    notes: tuple[str, ...]  # entries waiting for their reference's first price
    problems: tuple[str, ...]  # what a retry has not mended yet (a failed rebuild, a store refusal)


class Universes:
    """The universe entries of a watchlist, resolved and kept current (see the module docstring).

    ``apply`` (called on this thread) is told the (exchange, symbol) pairs the universes need now,
    references included, whenever they change; it subscribes them on the live feed. ``calendar``
    returns the market calendar once it is loaded (None before).
    """

    def __init__(
        self,
        specs: Sequence[UniverseSpec],
        broker: BaseBroker,
        store: CandleStore | None,
        *,
        clock: Callable[[], float] = time.time,
        calendar: Callable[[], MarketCalendar | None] = lambda: None,
        recentre_steps: int = 1,
        hysteresis: float = 0.25,
        rebuild_lead: timedelta = timedelta(minutes=30),
        prices: Mapping[Key, Decimal] | None = None,
    ) -> None:
        if recentre_steps < 1 or not 0 <= hysteresis < 0.5:
            raise ValueError(f"recentre_steps={recentre_steps} must be >= 1 and 0 <= hysteresis={hysteresis} < 0.5")
        self._entries = [_Entry(spec) for spec in dict.fromkeys(specs)]
        self.broker = broker
        self.store = store
        self.clock = clock
        self.calendar = calendar
        self.recentre_steps = recentre_steps
        self.hysteresis = hysteresis
        self.rebuild_lead = rebuild_lead
        self.day: date | None = None
        self.rebuilds = 0
        #: the references' last prices, written by the pipeline thread (observe); ``prices``: those
        #: already known (a reload keeps the old universes' prices)
        self._prices: dict[Key, Decimal] = dict(prices or {})
        self._symbols: dict[str, frozenset[str]] = {}  # a reference's symbol -> its exchanges
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._apply: Callable[[list[Key]], None] | None = None
        self._applied: list[Key] | None = None
        self._unrecorded: dict[str, Contract] = {}  # contracts subscribed but not yet in the store
        self._unrolled: dict[tuple[str, str, date], str] = {}  # (exchange, series, day) -> symbol to record
        self._skip_day: date | None = None  # a day with no session of any universe's exchange
        self._retry_at = 0.0  # a failed rebuild is tried again from then
        self._records_retry_at = 0.0  # a store refusal of the records, likewise (apart: neither delays the other)
        self._problem: str | None = None  # the last rebuild's failure, while not mended

    # ---------------------------------------------------------------- what the daemon asks

    @property
    def prices(self) -> dict[Key, Decimal]:
        """The references' last prices (a copy)."""
        return dict(self._prices)

    @property
    def specs(self) -> list[UniverseSpec]:
        return [e.spec for e in self._entries]

    def build(self, day: date | None = None) -> None:
        """Resolve every entry for ``day`` (default: today in IST) from the broker's current master.
        Raises ``UniverseError`` or ``BrokerError`` at start-up when an entry cannot be resolved."""
        day = day or self._today()
        contracts = self.broker.contracts()
        for entry in self._entries:
            self._resolve(entry, contracts, day)
        self.day = day
        self._index_references()
        self._record_rolls(day)

    def pairs(self) -> list[Key]:
        """The (exchange, symbol) pairs to subscribe now: each option entry's reference, then the contracts."""
        keys: dict[Key, None] = {}
        for entry in self._entries:
            if entry.reference is not None:
                keys[entry.reference] = None
        for entry in self._entries:
            for c in entry.contracts:
                keys[(c.exchange, c.symbol)] = None
        return list(keys)

    def capacity(self) -> int:
        """The most instruments the universes can ask for at once: their references, the futures and
        every option entry's full width (ATM±N, both sides; at most its chain) before a price is known."""
        return sum(width for _, width in self.widths())

    def widths(self) -> list[tuple[str, int]]:
        """(entry or reference, the most instruments it subscribes), for the limits' message."""
        refs = dict.fromkeys(f"{e.reference[0]}:{e.reference[1]}" for e in self._entries if e.reference is not None)
        out = [(f"reference {ref}", 1) for ref in refs]
        for entry in self._entries:
            if entry.spec.kind == OPT:  # the window, or the whole chain when that is narrower
                strikes = min(entry.spec.above + entry.spec.below + 1, len(entry.strikes))
                out.append((entry.name, strikes * len(entry.spec.sides)))
            else:
                out.append((entry.name, len({c.key for c in entry.contracts})))
        return out

    def describe(self) -> str:
        """One line per entry for the start-up log."""
        lines = []
        for entry in self._entries:
            if entry.spec.kind == FUT:
                what = ", ".join(c.symbol for c in entry.contracts)
            elif entry.centre is None:
                what = f"expiry {entry.expiry}: waits for the first price of {':'.join(entry.reference or ('?', '?'))}"
            else:
                what = f"expiry {entry.expiry}, ATM {entry.centre}: {len(entry.contracts)} contracts"
            lines.append(f"universe {entry.name}: {what}")
        return "; ".join(lines)

    def observe(self, batch: Sequence[TickData]) -> None:
        """The pipeline thread's part: keep the references' last prices (cheap: a dict lookup a tick)."""
        symbols = self._symbols
        changed = False
        for tick in batch:
            exchanges = symbols.get(tick.symbol)
            if exchanges is not None and tick.exchange in exchanges:
                key = (tick.exchange, tick.symbol)
                if self._prices.get(key) != tick.last_price:
                    self._prices[key] = tick.last_price
                    changed = True
        if changed:
            self._wake.set()

    # ---------------------------------------------------------------- the thread

    def start(self, apply: Callable[[list[Key]], None]) -> None:
        """Run the universe thread: ``apply`` is called with ``pairs()`` whenever they change."""
        self._apply = apply
        self._applied = self.pairs()
        self._note_subscribed()
        self._thread = threading.Thread(target=self._run, name="universe", daemon=True)
        self._wake.set()  # a first pass at once: prices may have come in before the thread
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            if self._stop.is_set():
                break
            self.step()

    def step(self, now: float | None = None) -> bool:
        """One pass: the daily rebuild when due, re-centring on the latest prices, the subscriptions
        and the store records. Returns True when the subscriptions changed."""
        now = self.clock() if now is None else now
        if self._rebuild_due(now):
            self._rebuild(now)
        for entry in self._entries:
            if entry.spec.kind == OPT and entry.reference is not None and entry.strikes:
                price = self._prices.get(entry.reference)
                if price is not None and price > 0:
                    self._move(entry, price)
        changed = self._push()
        if (self._unrecorded or self._unrolled) and now >= self._records_retry_at:
            self._write_records(now)
        return changed

    def report(self) -> UniverseReport:
        entries = list(self._entries)
        notes = tuple(
            f"universe {e.name} waits for the first price of {':'.join(e.reference)}"
            for e in entries
            if e.spec.kind == OPT and e.reference is not None and e.centre is None and e.problem is None
        )
        problems = tuple(f"universe {e.name}: {e.problem}" for e in entries if e.problem) + (
            (self._problem,) if self._problem else ()
        )
        return UniverseReport(
            contracts=len({c.key for e in entries for c in e.contracts}),
            recentres=sum(e.recentres for e in entries),
            rebuilds=self.rebuilds,
            day=self.day,
            atm=tuple((e.name, e.centre) for e in entries if e.centre is not None),
            per_entry=tuple((e.name, len(e.contracts), e.recentres) for e in entries),
            notes=notes,
            problems=problems,
        )

    # ---------------------------------------------------------------- resolution

    def _today(self, now: float | None = None) -> date:
        return datetime.fromtimestamp(self.clock() if now is None else now, IST).date()

    def _resolve(self, entry: _Entry, contracts: Sequence[Contract], day: date) -> None:
        spec = entry.spec
        if spec.kind == FUT:
            entry.contracts = resolve_universe(spec, contracts, None, day)
            entry.problem = None
            return
        chain = option_chain(spec, contracts, day)
        reference = atm_reference(spec, contracts, day)
        entry.reference, entry.chain = reference, chain
        entry.expiry = chain[0].expiry
        entry.strikes = sorted({c.strike for c in chain if c.strike is not None})
        entry.centre = None  # a new day's chain: centred afresh on the price
        entry.contracts = []
        price = self._prices.get(reference) if reference is not None else None
        if price is not None and price > 0:
            entry.centre = nearest_strike(entry.strikes, price)
            entry.contracts = strikes_around(spec, chain, entry.centre)
        entry.problem = None

    def _move(self, entry: _Entry, price: Decimal) -> None:
        centre = recentre(entry.strikes, entry.centre, price, self.recentre_steps, self.hysteresis)
        if centre == entry.centre:
            return
        before = entry.centre
        new = strikes_around(entry.spec, entry.chain, centre)
        old_keys = {c.key for c in entry.contracts}
        new_keys = {c.key for c in new}
        entry.centre, entry.contracts = centre, new
        if before is None:
            log.info(
                "universe %s: %s at %s, ATM %s (expiry %s): %d contracts",
                entry.name,
                ":".join(entry.reference or ()),
                price,
                centre,
                entry.expiry,
                len(new),
            )
            return
        entry.recentres += 1
        added = [c.symbol for c in new if c.key not in old_keys]
        removed = sorted(k.partition(":")[2] for k in old_keys - new_keys)
        log.info(
            "universe %s: re-centred, ATM %s -> %s (%s at %s): +%d %s, -%d %s",
            entry.name,
            before,
            centre,
            ":".join(entry.reference or ()),
            price,
            len(added),
            _names(added),
            len(removed),
            _names(removed),
        )

    def _index_references(self) -> None:
        """The references by symbol, for ``observe`` (a tick names its instrument as the watchlist
        does; Kotak's index ticks carry a numeric token its subscription by name does not have)."""
        symbols: dict[str, frozenset[str]] = {}
        for entry in self._entries:
            if entry.reference is not None:
                exchange, symbol = entry.reference
                symbols[symbol] = symbols.get(symbol, frozenset()) | {exchange}
        self._symbols = symbols  # one assignment: observe reads either the old mapping or this

    # ---------------------------------------------------------------- the daily rebuild

    def _rebuild_due(self, now: float) -> bool:
        today = self._today(now)
        if self.day is None or today <= self.day or today == self._skip_day or now < self._retry_at:
            return False
        at = self._rebuild_time(today)
        if at is None:
            self._skip_day = today
            log.info("universes: no session of %s on %s: not rebuilt", ", ".join(self._exchanges()), today)
            return False
        return now >= at.timestamp()

    def _exchanges(self) -> list[str]:
        return sorted({e.spec.exchange for e in self._entries})

    def _rebuild_time(self, day: date) -> datetime | None:
        """``rebuild_lead`` before the first session of the universes' exchanges on ``day``; None
        when none of them has one; without a calendar, ``FALLBACK_REBUILD_AT``."""
        calendar = self.calendar()
        if calendar is None:
            return datetime.combine(day, FALLBACK_REBUILD_AT, IST)
        opens = [s[0][0] for s in (calendar.sessions(x, day) for x in self._exchanges()) if s]
        return min(opens) - self.rebuild_lead if opens else None

    def _rebuild(self, now: float) -> None:
        day = self._today(now)
        required = sorted({e.spec.underlying for e in self._entries})
        try:
            self.broker.refresh_instruments(required)
            contracts = self.broker.contracts()
        except BrokerError as exc:
            self._problem = f"the {day} rebuild could not read the instrument master ({exc}); yesterday's contracts stay"
            log.error("universes: %s; retrying in %.0f s", self._problem, RETRY_SECONDS)
            self._retry_at = now + RETRY_SECONDS
            return
        failed = 0
        for entry in self._entries:
            before = {c.key for c in entry.contracts}
            try:
                self._resolve(entry, contracts, day)
            except UniverseError as exc:
                entry.problem = f"not resolved for {day} ({exc}); its {len(before)} contracts of the day before stay"
                log.error("universe %s: %s", entry.name, entry.problem)
                failed += 1
                continue
            after = {c.key for c in entry.contracts}
            if entry.spec.kind == FUT and before != after:
                log.info(
                    "universe %s: rolled %s -> %s", entry.name, _names(sorted(before)), _names(sorted(after))
                )
        self.day = day
        self.rebuilds += 1
        self._problem = None
        self._index_references()
        self._record_rolls(day)
        log.info("universes rebuilt for %s%s: %s", day, f" ({failed} failed)" if failed else "", self.describe())

    # ---------------------------------------------------------------- subscriptions and records

    def _push(self) -> bool:
        wanted = self.pairs()
        if wanted == self._applied or self._apply is None:
            return False
        try:
            self._apply(wanted)
        except (BrokerError, StoreError, OSError) as exc:
            log.error("universes: the subscriptions could not be changed (%s); trying again", exc)
            self._wake.set()
            time.sleep(1.0)
            return False
        self._applied = wanted
        self._note_subscribed()
        return True

    def _note_subscribed(self) -> None:
        for entry in self._entries:
            for c in entry.contracts:
                self._unrecorded.setdefault(c.key, c)

    def _record_rolls(self, day: date) -> None:
        for entry in self._entries:
            if entry.spec.kind != FUT or entry.problem:
                continue
            by_expiry = sorted({c.expiry for c in entry.contracts if c.expiry is not None})
            for index, expiry in zip(entry.spec.series, by_expiry, strict=False):
                symbol = next(c.symbol for c in entry.contracts if c.expiry == expiry)
                self._unrolled[(entry.spec.exchange, series_name(entry.spec.underlying, index), day)] = symbol

    def _write_records(self, now: float) -> None:
        if self.store is None or self.day is None:
            self._unrecorded.clear()
            self._unrolled.clear()
            return
        contracts = list(self._unrecorded.values())
        rolls = dict(self._unrolled)
        try:
            if contracts:
                self.store.record_instruments(contracts, self.day)
            for (exchange, series, day), symbol in rolls.items():
                self.store.record_roll(exchange, series, day, symbol)
        except StoreError as exc:
            log.warning("universes: contracts not recorded yet (%s); trying again in %.0f s", exc, RETRY_SECONDS)
            self._records_retry_at = now + RETRY_SECONDS
            return
        for c in contracts:
            self._unrecorded.pop(c.key, None)
        for key in rolls:
            self._unrolled.pop(key, None)


def _names(items: Iterable[str], shown: int = 6) -> str:
    items = list(items)
    if not items:
        return "()"
    return "(" + ", ".join(items[:shown]) + (", …" if len(items) > shown else "") + ")"
