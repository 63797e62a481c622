"""Prometheus metrics and a health check for the running daemon (served by ops/http.py).

Everything is read from one ``Health`` reading (pipeline/health.py) when a request arrives: the tick
path does no extra work, and the numbers are the counters the service, the aggregator and the
decoders already keep. Paths: ``/metrics`` (Prometheus text or OpenMetrics, as the scraper asks) and ``/healthz``
(200 when the feed and the store are healthy, else 503 with the problems named).

A failing scrape is logged and answered with 500; nothing raised while answering reaches the daemon.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from pipeline.health import ArchiveReport, BusReport, Health
from pipeline.universe import UniverseReport

log = logging.getLogger(__name__)

PREFIX = "marketfeed"

_STATES = ("running", "degraded", "failed", "stopping")
_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"


class MetricsError(Exception):
    """The metrics server could not start; the message says what to change."""


class HealthCollector(Collector):
    """Turns a ``Health`` reading into metric families at scrape time."""

    def __init__(self, health: Callable[[], Health]) -> None:
        self.health = health

    def collect(self) -> Iterator[Metric]:
        h = self.health()

        yield InfoMetricFamily(
            f"{PREFIX}_build", "The daemon's version and the broker it streams from.",
            value={"version": h.version, "broker": h.broker},
        )

        state = GaugeMetricFamily(
            f"{PREFIX}_state", "1 for the daemon's state: running, degraded (a fault it rides out), failed (a thread "
            "died: it exits to be restarted) or stopping.", labels=["state"],
        )  # fmt: skip
        for name in _STATES:
            state.add_metric([name], 1.0 if h.state == name else 0.0)
        yield state

        up = GaugeMetricFamily(f"{PREFIX}_connection_up", "1 while the feed connection is open, else 0.", labels=["connection"])
        frame_age = GaugeMetricFamily(
            f"{PREFIX}_connection_last_frame_age_seconds",
            "Seconds since the connection received its last frame of any kind (ticks or heartbeat).",
            labels=["connection"],
        )
        reconnects = CounterMetricFamily(
            f"{PREFIX}_connection_reconnects", "Successful re-opens of the connection after its first.", labels=["connection"]
        )
        for state in h.connections:
            conn_id = str(state.id)
            up.add_metric([conn_id], 1.0 if state.connected else 0.0)
            reconnects.add_metric([conn_id], state.reconnects)
            if state.last_frame_age is not None:
                frame_age.add_metric([conn_id], state.last_frame_age)
        yield up
        yield frame_age
        yield reconnects

        yield CounterMetricFamily(
            f"{PREFIX}_reauths", "Session renewals after the first login (0 for brokers that never renew).", value=h.reauths
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_feed_problem", "1 while the feed reports a problem it cannot recover from by itself.",
            value=1.0 if h.broker_problem else 0.0,
        )

        malformed = CounterMetricFamily(
            f"{PREFIX}_malformed_frames", "Malformed input from the feed, by what was wrong with it.", labels=["kind"]
        )
        for kind, count in sorted(h.malformed.items()):
            malformed.add_metric([kind], count)
        yield malformed

        yield CounterMetricFamily(f"{PREFIX}_ticks", "Ticks the pipeline received from the feed.", value=h.ticks)
        last_tick_age = GaugeMetricFamily(f"{PREFIX}_last_tick_age_seconds", "Seconds since the last batch of ticks arrived.")
        if h.last_tick_age_s is not None:
            last_tick_age.add_metric([], max(0.0, h.last_tick_age_s))
        yield last_tick_age
        yield CounterMetricFamily(
            f"{PREFIX}_late_ticks", "Ticks that landed in an already closed bucket and revised its candle.", value=h.late_ticks
        )
        yield CounterMetricFamily(
            f"{PREFIX}_dropped_ticks", "Ticks dropped because their bucket closed beyond the revision horizon.",
            value=h.dropped_ticks,
        )

        yield CounterMetricFamily(
            f"{PREFIX}_candles_written", "Candle writes the store accepted (a revision or a replay counts again).",
            value=h.candles_written,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_rejected_candles", "Candles the store refused one by one (dropped).", value=h.rejected_candles
        )
        yield GaugeMetricFamily(f"{PREFIX}_spool_depth", "Closed candles waiting for the store.", value=h.spool_depth)
        yield CounterMetricFamily(f"{PREFIX}_store_errors", "Store writes that failed.", value=h.store_errors)
        yield GaugeMetricFamily(
            f"{PREFIX}_store_up", "0 while the last write failed because the store was unreachable.",
            value=1.0 if h.store_up else 0.0,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_storage_fault", "1 while a disk refuses the spool's, the store's or the journal's writes (full, I/O error).",
            value=1.0 if h.spool_fault or (h.store_fault and not h.store_up) or h.journal_fault else 0.0,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_candles_waiting_in_memory", "Closed candles waiting in memory while the spool's disk refuses them.",
            value=h.candles_in_memory,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_candles_memory_limit", "The most closed candles that wait in memory; beyond it the oldest are dropped.",
            value=h.memory_limit,
        )
        gap_minutes = GaugeMetricFamily(
            f"{PREFIX}_gap_minutes",
            "Today's session minutes so far that the daemon did not watch and the broker's history has not filled, "
            "summed over the symbols (absent until the market calendar is loaded).",
        )
        if h.gaps_open is not None:
            gap_minutes.add_metric([], h.gaps_open)
        yield gap_minutes
        if h.backfill_pending is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_backfill_pending", "Bucket ranges the backfill waits to mend from the broker's history.",
                value=h.backfill_pending,
            )
            yield CounterMetricFamily(
                f"{PREFIX}_backfill_candles", "Candles mended from the broker's history since the start.",
                value=h.backfill_candles,
            )
            yield CounterMetricFamily(
                f"{PREFIX}_backfill_requests", "Requests to the broker's history since the start.",
                value=h.backfill_requests,
            )
            yield GaugeMetricFamily(
                f"{PREFIX}_backfill_refused", "1 while the broker refuses its history (gaps stay open; see the notes).",
                value=1.0 if h.backfill_refused else 0.0,
            )
        if h.reconcile_mismatches is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_reconcile_mismatches",
                "The latest day checked against the broker's history: mismatched minutes plus live minutes the broker "
                "does not have (0: every compared minute equal).",
                value=h.reconcile_mismatches,
            )
        yield CounterMetricFamily(
            f"{PREFIX}_candles_dropped", "Closed candles dropped beyond the memory limit while the spool's disk refused them.",
            value=h.candles_dropped,
        )
        if h.universe is not None:
            yield from _universe_metrics(h.universe)
        if h.ha_role is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_ha_leader", "1 while this daemon holds the hot-standby lease and writes candles, 0 as standby.",
                value=1.0 if h.ha_role == "leader" else 0.0,
            )
            yield GaugeMetricFamily(
                f"{PREFIX}_ha_epoch", "The lease epoch this daemon holds (0 as standby).", value=h.ha_epoch or 0
            )
        if h.bus is not None:
            yield from _bus_metrics(h.bus)
        if h.archive is not None:
            yield from _archive_metrics(h.archive)


def _archive_metrics(a: ArchiveReport) -> Iterator[Metric]:
    name = f"{PREFIX}_archive"
    yield CounterMetricFamily(f"{name}_ticks", "Ticks written into finished tick archive files.", value=a.ticks_archived)
    yield CounterMetricFamily(
        f"{name}_ticks_dropped", "Ticks the tick archive did not keep (its queue was full, or its disk refused them).",
        value=a.ticks_dropped,
    )
    yield GaugeMetricFamily(f"{name}_ticks_waiting", "Ticks waiting for the tick archive's thread.", value=a.ticks_waiting)
    yield CounterMetricFamily(f"{name}_files", "Tick archive part files finished.", value=a.files_written)

def _bus_metrics(b: BusReport) -> Iterator[Metric]:
    name = f"{PREFIX}_{b.name}"
    yield GaugeMetricFamily(f"{name}_connected", f"1 while {b.name} is connected and its streams are set up.",
                            value=1.0 if b.connected and b.error is None else 0.0)  # fmt: skip
    yield CounterMetricFamily(f"{name}_ticks_published", "Ticks handed to the bus's client.", value=b.ticks_published)
    yield CounterMetricFamily(
        f"{name}_ticks_dropped", "Ticks dropped: their batch found the queue full, or the client's buffer full while away.",
        value=b.ticks_dropped,
    )
    yield CounterMetricFamily(
        f"{name}_candles_published", "Candles the stream acknowledged (duplicates included).", value=b.candles_published
    )
    yield CounterMetricFamily(
        f"{name}_candles_duplicate", "Acknowledged candles the stream already had (same Nats-Msg-Id).",
        value=b.candles_duplicate,
    )
    yield GaugeMetricFamily(f"{name}_candles_waiting", "Candles waiting to be published.", value=b.candles_waiting)
    yield CounterMetricFamily(f"{name}_candles_dropped", "Candles dropped beyond the waiting limit.", value=b.candles_dropped)
    yield CounterMetricFamily(f"{name}_errors", "Publishes or stream set-ups that failed (retried).", value=b.errors)
    yield CounterMetricFamily(f"{name}_reconnects", "Reconnections to the servers after the first connection.",
                              value=b.reconnects)  # fmt: skip


def _universe_metrics(u: UniverseReport) -> Iterator[Metric]:
    contracts = GaugeMetricFamily(
        f"{PREFIX}_universe_contracts", "Contracts a universe entry names now (its reference not counted).", labels=["universe"]
    )
    recentres = CounterMetricFamily(
        f"{PREFIX}_universe_recentres", "Times a universe entry's ATM strike moved since the start.", labels=["universe"]
    )
    for name, count, moves in u.per_entry:
        contracts.add_metric([name], count)
        recentres.add_metric([name], moves)
    atm = GaugeMetricFamily(
        f"{PREFIX}_universe_atm", "The strike an option universe entry is centred on (absent until its reference has a price).",
        labels=["universe"],
    )
    for name, strike in u.atm:
        atm.add_metric([name], float(strike))
    yield contracts
    yield recentres
    yield atm
    yield CounterMetricFamily(f"{PREFIX}_universe_rebuilds", "Daily rebuilds of the universes since the start.", value=u.rebuilds)


class Metrics:
    """The answers to ``/metrics`` and ``/healthz`` from one daemon's ``health`` readings; the one
    HTTP server of the daemon (ops/http.py) serves them."""

    def __init__(self, health: Callable[[], Health]) -> None:
        self.health = health
        self.registry = CollectorRegistry(auto_describe=False)  # no collect() at registration: the service may not run yet
        self.registry.register(HealthCollector(health))
        for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(standard)

    def answer(self, path: str, accept: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET of ``path``."""
        if path == "/metrics":
            encode, content_type = choose_encoder(accept)
            return 200, content_type, encode(self.registry)
        if path == "/healthz":
            health = self.health()
            problems = health.problems
            body: dict[str, Any] = {"status": "unhealthy" if problems else "ok", "state": health.state, "problems": problems}
            if health.all_notes:  # what to know that does not make the daemon unhealthy (MQTT unreachable)
                body["notes"] = list(health.all_notes)
            return (503 if problems else 200), _JSON, json.dumps(body).encode() + b"\n"
        return 404, _TEXT, b"not found: try /metrics or /healthz\n"
