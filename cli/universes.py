"""The daemon's derivatives universes: built from the watchlist's universe entries, packed into the
broker's limits with its plain symbols, and kept subscribed beside them (``pipeline/universe.py``
does the keeping; this is the wiring)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import timedelta

from brokers.base import BaseBroker, BrokerError, NoInstrumentMaster
from cli.errors import UsageError
from config.settings import UniverseSettings
from core.market_calendar import MarketCalendar
from core.ticks import Instrument
from core.universe import UniverseError, UniverseSpec
from pipeline.service import Service
from pipeline.universe import Universes
from storage.base import CandleStore

log = logging.getLogger("marketfeed")


class DaemonUniverses:
    """The plain symbols' instruments (``static``) and the universes, and the one way both reach
    the live feed (``apply``)."""

    def __init__(
        self,
        settings: UniverseSettings,
        broker: BaseBroker,
        store: CandleStore,
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.store = store
        self.clock = clock
        self.static: list[Instrument] = []
        self.universes: Universes | None = None
        self.service: Service | None = None
        self._lock = threading.Lock()

    def build(self, specs: Sequence[UniverseSpec]) -> Universes | None:
        """Resolve ``specs`` for today (None when there are none); a rule the master cannot satisfy
        is a usage error naming it."""
        if not specs:
            return None
        universes = Universes(
            specs,
            self.broker,
            self.store,
            clock=self.clock,
            calendar=self._calendar,
            recentre_steps=self.settings.recentre_steps,
            hysteresis=self.settings.hysteresis,
            rebuild_lead=timedelta(minutes=self.settings.rebuild_minutes),
            prices=None if self.universes is None else self.universes.prices,
        )
        try:
            universes.build()
        except UniverseError as exc:
            raise UsageError(f"universe {exc}") from None
        except NoInstrumentMaster as exc:
            raise UsageError(f"{exc} ({', '.join(str(s) for s in specs[:2])} is one)") from None
        log.info("%s", universes.describe())
        return universes

    def instruments(self, universes: Universes | None) -> list[Instrument]:
        """The universes' instruments to subscribe now (their references and futures at start)."""
        return [] if universes is None else self._resolve(universes.pairs())

    def _resolve(self, keys: list[tuple[str, str]]) -> list[Instrument]:
        known, unknown = self.broker.resolve(keys)
        for key in unknown:
            log.warning("universe contract %s is not in %s's instrument list: skipped", key, self.broker.name)
        return known

    def check_capacity(self, static: Sequence[Instrument], universes: Universes | None) -> None:
        """Refuse, before anything is subscribed, a watchlist whose symbols and universes (at their
        widest) exceed what the broker carries; the message gives the numbers."""
        widest = 0 if universes is None else universes.capacity()
        try:
            self.broker.check_capacity(len(static) + widest)
        except BrokerError as exc:
            if universes is None:
                raise
            parts = ", ".join(f"{name}: {count}" for name, count in universes.widths())
            raise BrokerError(
                f"{exc} (the watchlist is {len(static)} symbols and universes of up to {widest} instruments: {parts}; "
                "narrow the strikes, e.g. ATM±5, or split the universes across daemons with --shard)"
            ) from None

    def attach(self, service: Service, static: list[Instrument], universes: Universes | None) -> None:
        """Before ``service.start``: the pipeline hands the universes every batch from the first
        (the feed's snapshot on subscription may be the only price of a reference for a while)."""
        self.service, self.static = service, static
        self.universes = universes
        service.universes = universes

    def start(self) -> None:
        """After ``service.start``: the universe thread, subscribing what the prices call for."""
        if self.universes is not None:
            self.universes.start(self.apply)

    def apply(self, keys: list[tuple[str, str]]) -> None:
        """Subscribe the plain symbols and ``keys`` (the universes' pairs now), nothing else."""
        known = self._resolve(keys)
        with self._lock:
            assert self.service is not None
            self.service.change_instruments([*self.static, *known])

    def replace(self, static: list[Instrument], specs: Sequence[UniverseSpec]) -> tuple[list[Instrument], list[Instrument]]:
        """SIGHUP: new plain symbols and universe entries, subscribed in place of the old.
        Returns (added, removed) instruments."""
        assert self.service is not None
        old = self.universes
        same = old is not None and list(dict.fromkeys(specs)) == old.specs
        universes = old if same else self.build(specs)
        mine = self.instruments(universes)
        self.check_capacity(static, universes)
        with self._lock:
            if old is not None and not same:
                old.stop()
            self.static = static
            self.universes = universes
            self.service.universes = universes
            added, removed = self.service.change_instruments([*static, *mine])
        if universes is not None and not same:
            universes.start(self.apply)
        return added, removed

    def stop(self) -> None:
        if self.universes is not None:
            self.universes.stop()

    def _calendar(self) -> MarketCalendar | None:
        return None if self.service is None else self.service.calendar
