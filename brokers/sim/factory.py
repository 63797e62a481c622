"""The simulator's command-line options and its broker (see brokers/registry.py)."""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from typing import Any

from brokers.base import BaseBroker
from brokers.registry import Clock, FeedContext, Report
from brokers.sim.client import SimBroker, SimClock
from brokers.sim.settings import Settings
from core.ist import IST


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sim = parser.add_argument_group("simulator (--broker sim)")
    sim.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same ticks")
    sim.add_argument("--sim-speed", type=float, default=1.0, help="simulated seconds per wall second (60: an hour a minute)")
    sim.add_argument("--sim-start", metavar="ISO-TIME", help="simulated start time, e.g. 2026-11-24T09:15:00+05:30 (default: now)")
    sim.add_argument("--sim-tick-rate", type=float, default=1.0, help="ticks per simulated second per symbol")
    sim.add_argument("--sim-tape", metavar="PATH", help="also write every tick as JSON lines to this file")



def open_broker(settings: Settings, ctx: FeedContext) -> tuple[BaseBroker, Clock]:
    options = ctx.options
    if options.sim_speed <= 0:
        raise ValueError("--sim-speed must be positive")
    start = time.time()
    if options.sim_start:
        try:
            when = datetime.fromisoformat(options.sim_start)
        except ValueError:
            raise ValueError(f"--sim-start {options.sim_start!r} is not an ISO time like 2026-11-24T09:15:00+05:30") from None
        start = (when if when.tzinfo else when.replace(tzinfo=IST)).timestamp()
    clock = SimClock(start, options.sim_speed)
    return SimBroker(clock, seed=options.seed, tick_rate=options.sim_tick_rate, tape_path=options.sim_tape), clock


def check_login(settings: Any, ctx: FeedContext, report: Report) -> BaseBroker | None:
    return open_broker(settings, ctx)[0]
