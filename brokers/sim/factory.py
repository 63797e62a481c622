"""The simulator's command-line options and its broker (see brokers/registry.py)."""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from brokers.base import BaseBroker
from brokers.registry import Clock, FeedContext, Report
from brokers.sim.client import SimBroker, SimClock
from brokers.sim.settings import Settings
from config.numbers import Range
from core.ist import IST


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sim = parser.add_argument_group("simulator (--broker sim)")
    sim.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same ticks")
    speed, rate = Range(0, 86_400, above=True), Range(0, 1000, above=True)
    sim.add_argument("--sim-speed", type=speed.option, default=1.0, help="simulated seconds per wall second (60: an hour a minute)")
    sim.add_argument("--sim-start", metavar="ISO-TIME", help="simulated start time, e.g. 2026-11-24T09:15:00+05:30 (default: now)")
    sim.add_argument("--sim-tick-rate", type=rate.option, default=1.0, help="ticks per simulated second per symbol")
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
    if options.sim_tape:
        _check_writable(options.sim_tape)
    clock = SimClock(start, options.sim_speed)
    return SimBroker(clock, seed=options.seed, tick_rate=options.sim_tick_rate, tape_path=options.sim_tape), clock


def _check_writable(tape: str) -> None:
    """A tape that cannot be written stops the start now, not the feed thread later."""
    path = Path(tape)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise ValueError(f"--sim-tape {tape}: cannot write there ({exc.strerror}): name a file in a writable folder") from None


def check_login(settings: Any, ctx: FeedContext, report: Report) -> BaseBroker | None:
    return open_broker(settings, ctx)[0]
