"""One health reading: the same words for a problem on every channel (status line, heartbeat, /healthz)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from brokers.base import ConnectionState
from core.ist import IST
from pipeline.health import Health

HEALTHY = Health(
    stopping=False, time=datetime(2026, 12, 7, 10, 0, tzinfo=IST), uptime_s=12.34, broker="kite", broker_problem=None,
    connections=(ConnectionState(1, True, 3000), ConnectionState(2, True, 10)), symbols=3010, ticks=5000,
    last_tick_age_s=0.123, candles_written=42, rejected_candles=0, store_errors=0, spool_depth=0, store="sqlite:x.db",
    store_up=True, late_ticks=1, dropped_ticks=0, pipeline_alive=True, pipeline_max_age=10.0, reauths=0, version="0.1.0",
)  # fmt: skip


def test_a_healthy_reading_has_no_problems_and_says_running():
    assert HEALTHY.problems == []
    beat = HEALTHY.heartbeat(123.456)
    assert beat["state"] == "running" and beat["problems"] == []
    assert (beat["connections_up"], beat["connections_total"], beat["ticks_per_s"]) == (2, 2, 123.5)
    assert HEALTHY.feed_line() == "up"


def test_every_fault_is_named_once_in_the_order_an_operator_reads_them():
    sick = replace(
        HEALTHY,
        broker_problem="Kite rejected the access token (HTTP 403)",
        connections=(ConnectionState(1, False, 3000, last_error="HTTP 403"), ConnectionState(2, True, 10)),
        store_up=False,
        pipeline_alive=False,
    )
    expected = [
        "feed: Kite rejected the access token (HTTP 403)",
        "feed connection 1 down (HTTP 403)",
        "store sqlite:x.db unreachable",
        "pipeline thread stopped or stuck for more than 10 s",
    ]
    assert sick.problems == expected
    assert sick.heartbeat(0.0)["problems"] == expected and sick.heartbeat(0.0)["state"] == "degraded"
    assert sick.feed_line() == "DOWN (Kite rejected the access token (HTTP 403))"


def test_stopping_wins_over_degraded():
    assert replace(HEALTHY, stopping=True, store_up=False).state == "stopping"


def test_a_dead_thread_is_failed_even_while_stopping_and_is_named_first():
    dead = replace(HEALTHY, stopping=True, store_up=False, failure="thread writer died (RuntimeError: boom)")
    assert dead.state == "failed"
    assert dead.problems[0] == "failed: thread writer died (RuntimeError: boom)"
    assert dead.heartbeat(0.0)["state"] == "failed"


def test_a_universe_waiting_for_a_price_is_a_note_and_one_not_resolved_is_a_problem():
    from decimal import Decimal

    from pipeline.universe import UniverseReport

    report = UniverseReport(
        contracts=44, recentres=3, rebuilds=1, day=None, atm=(("NFO:NIFTY OPT weekly ATM±10", Decimal(25000)),),
        per_entry=(("NFO:NIFTY OPT weekly ATM±10", 42, 3),),
        notes=("universe NFO:SENSEX OPT weekly ATM±5 waits for the first price of BSE:SENSEX",),
        problems=(),
    )  # fmt: skip
    waiting = replace(HEALTHY, universe=report)
    assert waiting.state == "running" and waiting.problems == []
    beat = waiting.heartbeat(0.0)
    assert beat["notes"] == ["universe NFO:SENSEX OPT weekly ATM±5 waits for the first price of BSE:SENSEX"]
    assert (beat["universe_contracts"], beat["universe_recentres"]) == (44, 3)
    stuck = replace(HEALTHY, universe=replace(report, problems=("universe NFO:X FUT: not resolved for 2026-12-08 (...)",)))
    assert stuck.state == "degraded" and stuck.problems == ["universe NFO:X FUT: not resolved for 2026-12-08 (...)"]
