"""One reading of the daemon's health, and the words for what is wrong.

The status line, the MQTT heartbeat, ``/healthz`` and ``/metrics`` all read a ``Health``: a problem
is worded here once, and every channel says the same thing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from brokers.base import ConnectionState
from pipeline.universe import UniverseReport


@dataclass(frozen=True, slots=True)
class BusReport:
    """The message bus's part of the health (publishers/nats.py): where it publishes, whether it
    can, and its counters since the start."""

    name: str  # "nats"
    where: str  # the servers, without credentials
    connected: bool
    error: str | None = None  # why it cannot publish (unreachable, JetStream refused), None when it can
    ticks_published: int = 0
    ticks_dropped: int = 0  # ticks of batches that found its queue full, or its client's buffer full
    candles_published: int = 0  # candles the stream acknowledged (duplicates included)
    candles_duplicate: int = 0  # of those, ones the stream already had (same Nats-Msg-Id)
    candles_waiting: int = 0  # candles waiting to be published (while it is away)
    candles_dropped: int = 0  # candles dropped beyond the waiting limit
    errors: int = 0  # publishes or stream set-ups that failed (retried)
    reconnects: int = 0

    def problem(self) -> str | None:
        """The words for a bus that cannot publish; None while it can."""
        if self.error is None:
            return None
        return (
            f"{self.name} {self.where}: {self.error}; ticks are dropped and candles wait to be published "
            f"({self.candles_waiting} waiting); candles are still stored"
        )

    def heartbeat(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "ticks_published": self.ticks_published,
            "ticks_dropped": self.ticks_dropped,
            "candles_published": self.candles_published,
            "candles_waiting": self.candles_waiting,
            "candles_dropped": self.candles_dropped,
            "errors": self.errors,
        }


@dataclass(frozen=True, slots=True)
class ArchiveReport:
    """The tick archive's part of the health (pipeline/archive.py)."""

    where: str
    ticks_archived: int
    ticks_dropped: int
    ticks_waiting: int
    files_written: int
    error: str | None  # what the disk (or a tick) said in the current or previous window, None when fine

    def problem(self) -> str | None:
        if self.error is None:
            return None
        return f"tick archive {self.where}: {self.error} ({self.ticks_dropped} ticks not archived since the start)"


@dataclass(frozen=True, slots=True)
class Health:
    stopping: bool
    time: datetime
    uptime_s: float
    broker: str
    broker_problem: str | None  # what the feed cannot recover from by itself (a refused login)
    connections: tuple[ConnectionState, ...]
    symbols: int
    ticks: int
    last_tick_age_s: float | None
    candles_written: int
    rejected_candles: int
    store_errors: int
    spool_depth: int
    store: str
    store_up: bool
    late_ticks: int
    dropped_ticks: int
    pipeline_alive: bool
    pipeline_max_age: float
    reauths: int
    version: str
    malformed: Mapping[str, int] = field(default_factory=dict)
    #: what an operator should know that does not stop candles (MQTT unreachable): shown by every
    #: channel, but never a problem: ``state`` and ``/healthz`` ignore it
    notes: tuple[str, ...] = ()
    failure: str | None = None  # a thread died unexpectedly: the daemon is stopping, to be restarted
    journal_fault: str | None = None  # the tick journal missed a batch (its disk refused it) since its last checkpoint
    spool_fault: str | None = None  # what the spool's disk said, while it refuses appends
    store_fault: str | None = None  # what the store's own disk said, while it refuses writes
    candles_in_memory: int = 0  # closed candles waiting in memory for the spool's disk
    memory_limit: int = 0  # the most candles that wait in memory; beyond it the oldest are dropped
    candles_dropped: int = 0  # closed candles dropped beyond the memory limit, since the start
    #: today's gap minutes so far, summed over the watchlist's symbols (a minute two symbols miss
    #: counts twice); None until the market calendar is loaded
    gaps_open: int | None = None
    #: bucket ranges the backfill waits to mend (None: no history configured, nothing mends gaps)
    backfill_pending: int | None = None
    backfill_candles: int = 0  # backfill candles handed to the writer since the start
    backfill_requests: int = 0  # history requests since the start
    backfill_refused: bool = False  # the broker refuses its history (the reason is in ``notes``)
    #: the latest day checked against the broker (daily reconciliation), and its mismatched buckets
    #: plus live candles the broker lacks; None until a day is checked
    reconcile_day: date | None = None
    reconcile_mismatches: int | None = None
    #: the derivatives universes (None: the watchlist has none)
    universe: UniverseReport | None = None
    #: the message bus (None: NATS_URL unset); a bus that cannot publish is a problem
    bus: BusReport | None = None
    #: hot standby (pipeline/ha.py): ``leader`` or ``standby`` (None: HA off), the lease epoch
    #: held, why the lease cannot be reached, and the closed candles a standby keeps in memory.
    #: A healthy standby is healthy: being one is no problem.
    #: the tick archive (None: TICK_ARCHIVE_DIR unset); ticks it could not keep are a problem
    #: for the window they were lost in and the next
    archive: ArchiveReport | None = None
    ha_role: str | None = None
    ha_epoch: int | None = None
    ha_problem: str | None = None
    ha_retained: int = 0

    @property
    def connections_up(self) -> int:
        return sum(1 for c in self.connections if c.connected)

    @property
    def all_notes(self) -> tuple[str, ...]:
        """``notes`` and what the universes wait for."""
        return self.notes + (self.universe.notes if self.universe is not None else ())

    @property
    def problems(self) -> list[str]:
        """What keeps the daemon from being healthy, in words an operator can act on; [] when all is well."""
        problems: list[str] = []
        if self.failure:
            problems.append(f"failed: {self.failure}")
        if self.broker_problem:
            problems.append(f"feed: {self.broker_problem}")
        for conn in self.connections:
            if not conn.connected:
                why = f" ({conn.last_error})" if conn.last_error else ""
                problems.append(f"feed connection {conn.id} down{why}")
        if self.spool_fault:
            dropped = f", {self.candles_dropped} dropped" if self.candles_dropped else ""
            problems.append(
                f"{self.spool_fault}: {self.candles_in_memory} candles wait in memory, limit {self.memory_limit}{dropped}"
            )
        if self.store_fault and not self.store_up:
            problems.append(f"store {self.store_fault}")
        elif not self.store_up:
            problems.append(f"store {self.store} unreachable")
        if self.journal_fault:
            problems.append(f"{self.journal_fault}: a kill now would lose open buckets' ticks (checkpoint retried)")
        if self.universe is not None:
            problems += self.universe.problems
        bus_problem = None if self.bus is None else self.bus.problem()
        if bus_problem:
            problems.append(bus_problem)
        archive_problem = None if self.archive is None else self.archive.problem()
        if archive_problem:
            problems.append(archive_problem)
        if self.ha_problem:
            problems.append(self.ha_problem)
        if not self.pipeline_alive:
            problems.append(f"pipeline thread stopped or stuck for more than {self.pipeline_max_age:g} s")
        return problems

    @property
    def state(self) -> str:
        """``failed`` (a thread died: the daemon exits non-zero and is restarted), ``stopping``,
        ``degraded`` (a fault it rides out and recovers from by itself) or ``running``."""
        if self.failure:
            return "failed"
        return "stopping" if self.stopping else "degraded" if self.problems else "running"

    def heartbeat(self, ticks_per_s: float) -> dict[str, Any]:
        """The MQTT heartbeat's body; ``ticks_per_s`` is the rate since the previous heartbeat (a rate
        depends on the reader's window, so each reader keeps its own from ``ticks``)."""
        return {
            "state": self.state,
            "problems": self.problems,
            "time": self.time.isoformat(timespec="seconds"),
            "uptime_s": round(self.uptime_s, 1),
            "broker": self.broker,
            "connections_up": self.connections_up,
            "connections_total": len(self.connections),
            "symbols": self.symbols,
            "ticks_per_s": round(ticks_per_s, 1),
            "ticks": self.ticks,
            "last_tick_age_s": None if self.last_tick_age_s is None else round(self.last_tick_age_s, 2),
            "candles_written": self.candles_written,
            "spool_depth": self.spool_depth,
            "late_ticks": self.late_ticks,
            "dropped_ticks": self.dropped_ticks,
            "store": self.store,
            "candles_in_memory": self.candles_in_memory,
            "candles_dropped": self.candles_dropped,
            "version": self.version,
            "notes": list(self.all_notes),
            "gaps_open": self.gaps_open,
            "backfill_pending": self.backfill_pending,
            "backfill_candles": self.backfill_candles,
            "reconcile_day": None if self.reconcile_day is None else self.reconcile_day.isoformat(),
            "reconcile_mismatches": self.reconcile_mismatches,
            "universe_contracts": None if self.universe is None else self.universe.contracts,
            "universe_recentres": None if self.universe is None else self.universe.recentres,
            **({} if self.bus is None else {self.bus.name: self.bus.heartbeat()}),
            "ha_role": self.ha_role,
            "ha_epoch": self.ha_epoch,
        }

    def ha_line(self) -> str:
        """The role's part of the status line: "leader epoch 3", "standby (120 candles kept)"."""
        if self.ha_role == "leader":
            return f"leader epoch {self.ha_epoch}"
        return f"{self.ha_role} ({self.ha_retained} candles kept)"

    def feed_line(self) -> str:
        """The feed's part of the status line."""
        if self.connections and self.connections_up == len(self.connections):
            return "up"
        return f"DOWN ({self.broker_problem})" if self.broker_problem else "DOWN"
