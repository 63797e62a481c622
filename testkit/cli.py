"""Run main.py as a real process, the way an operator does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MAIN = str(ROOT / "main.py")

# The variables a test run must not inherit from the machine it runs on.
_CLEAN = ("PG_CONN_STR", "SQLITE_PATH", "CANDLE_INTERVALS", "LOG_LEVEL", "LOG_FORMAT", "MARKETFEED_BROKER")


def main_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _CLEAN and not k.startswith(("KITE_", "KOTAK_"))}
    env.update(extra)
    return env


def kite_env(server: Any, **extra: str) -> dict[str, str]:
    """``main_env`` pointed at a ``testkit.fakes.kite_server.KiteFakeServer``, logged in."""
    return main_env(
        KITE_API_KEY=server.api_key,
        KITE_API_SECRET=server.api_secret,
        KITE_ACCESS_TOKEN=server.access_token,
        KITE_WS_URL=server.ws_url,
        KITE_API_URL=server.api_url,
        **extra,
    )


def run_main(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120, input_text: str | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, MAIN, *args],
        cwd=cwd,
        input=input_text,
        stdin=None if input_text is not None else subprocess.DEVNULL,
        env=main_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_main(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, MAIN, *args],
        cwd=cwd,
        env=main_env() if env is None else env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def session_calendar(folder: Path, day: str, exchange: str = "NSE") -> str:
    """A ``MARKET_CALENDAR_FILE`` (written in ``folder``) that opens ``day`` (ISO date) 09:15-15:30
    as a special session: a simulated run on a day the calendar calls a holiday (2026-11-24,
    Guru Nanak Jayanti) is then a trading day, whose unwatched time counts. Returns its path."""
    path = folder / "calendar.toml"
    path.write_text(f'[[session]]\ndate = {day}\nexchanges = ["{exchange}"]\nopen = "09:15"\nclose = "15:30"\n')
    return str(path)
