"""The market calendar at start-up: the library's exchange holidays plus the operator's override file.

Why ``exchange_calendars`` (its ``XBOM`` calendar) for the holidays. Compared at its 2026 releases:

- ``exchange_calendars``: BSE (XBOM; NSE and BSE publish one equity holiday list), curated from
  the exchanges' circulars, with ad-hoc closures (election days) and the special Saturday
  sessions (budget days); kept up to date each year. No NSE-named calendar, no MCX or currency
  segment. Needs pandas and numpy: about 68 MB of memory once imported.
- ``pandas_market_calendars``: its own NSE calendar (with weekday Muhurat sessions) and BSE
  through ``exchange_calendars``: the same data and the same weight (about 70 MB), and more.
- ``holidays`` (its financial XNSE/XBOM): pure Python (about 20 MB), years ahead worked out from
  festival rules, but it misses ad-hoc closures the exchanges announce: a guess of the future.
- ``aion-indian-market-calendar``: the only one with MCX and currency holidays, but one year of
  data, from one vendor, and it fetches updates over the network unless told not to.
- ``nse-calendar`` fetches its data at run time; ``nse-trading-calendar`` is a spreadsheet.

None lists MCX's or the currency segment's own holidays: those exchanges get the equity holidays,
and the override file corrects them (core/market_calendar.py says where they differ).

The daemon's memory budget is small, so the library is never imported here: a short-lived child
process (``python -m config.market_calendar``) reads it once and prints plain dates, which are
kept in ``DATA_DIR/market-calendar.json`` until the library's version changes. The daemon holds a
few hundred dates; pandas never enters its memory.

The override file (``MARKET_CALENDAR_FILE``, TOML; ``deploy/calendar.toml.example``)::

    holidays_listed_through = 2027        # optional: this file lists every holiday up to that year

    [[session]]                           # a special session: Muhurat, a budget-day Saturday
    date = 2026-11-08
    exchanges = ["NSE", "BSE", "NFO", "BFO"]
    open = "18:00"
    close = "19:00"
    note = "Muhurat trading"

    [[closed]]                            # an ad-hoc closure, or a holiday the library lacks
    date = 2027-01-26
    exchanges = ["MCX"]
    note = "Republic Day"

    [[hours]]                             # regular hours changed from a day on
    from = 2027-01-04
    exchanges = ["NFO", "BFO"]
    open = "09:15"
    close = "15:45"

    [[hours]]                             # the hours of the symbols that start with these
    from = 2025-01-01
    exchanges = ["MCX"]
    symbols = ["MENTHAOIL", "CARDAMOM"]
    open = "09:00"
    close = "17:00"
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import date, datetime, time
from importlib import metadata
from pathlib import Path
from typing import Any

from config.env import ConfigError, read_text_file
from core.ist import IST
from core.market_calendar import REGULAR_HOURS, Closure, Hours, MarketCalendar, SpecialSession

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

log = logging.getLogger(__name__)

LIBRARY = "exchange_calendars"
LIBRARY_CALENDAR = "XBOM"
CACHE_NAME = "market-calendar.json"


@dataclass(frozen=True, slots=True)
class LibraryHolidays:
    """What the library knows: equity holidays and special weekend sessions from ``first`` to ``last``."""

    source: str  # "exchange_calendars 4.13.2 (XBOM)"
    first: date
    last: date
    holidays: frozenset[date]
    weekend_sessions: frozenset[date]


@dataclass(frozen=True, slots=True)
class Overrides:
    """The override file's entries."""

    path: Path | None = None
    closures: tuple[Closure, ...] = ()
    sessions: tuple[SpecialSession, ...] = ()
    hours: tuple[Hours, ...] = ()
    listed_through: int | None = None

    @property
    def count(self) -> int:
        return len(self.closures) + len(self.sessions) + len(self.hours)


# -- the library, in a child process ----------------------------------------------------------


def _extract() -> dict[str, Any]:
    """Run in the child: the library's XBOM calendar as plain ISO dates."""
    import exchange_calendars
    import pandas as pd

    cal = exchange_calendars.get_calendar(LIBRARY_CALENDAR)
    first, last = cal.first_session, cal.last_session
    sessions = cal.sessions
    weekdays = pd.bdate_range(first, last)
    holidays = weekdays.difference(sessions)
    weekend = sessions[sessions.weekday >= 5]
    return {
        "library": LIBRARY,
        "version": exchange_calendars.__version__,
        "calendar": LIBRARY_CALENDAR,
        "first": first.date().isoformat(),
        "last": last.date().isoformat(),
        "holidays": [d.date().isoformat() for d in holidays],
        "weekend_sessions": [d.date().isoformat() for d in weekend],
    }


def _parse_library(data: dict[str, Any]) -> LibraryHolidays:
    return LibraryHolidays(
        source=f"{data['library']} {data['version']} ({data['calendar']})",
        first=date.fromisoformat(data["first"]),
        last=date.fromisoformat(data["last"]),
        holidays=frozenset(date.fromisoformat(d) for d in data["holidays"]),
        weekend_sessions=frozenset(date.fromisoformat(d) for d in data["weekend_sessions"]),
    )


def library_version() -> str | None:
    try:
        return metadata.version(LIBRARY)
    except metadata.PackageNotFoundError:
        return None


def cached_library_holidays(cache_dir: Path) -> LibraryHolidays | None:
    """The library's holidays from ``cache_dir``'s cache (a millisecond or two); None when the cache
    is absent, unreadable or of another version of the library (``library_holidays`` then takes a
    child process), or the library is not installed."""
    version = library_version()
    return None if version is None else _cached(cache_dir / CACHE_NAME, version)


def _cached(cache: Path, version: str) -> LibraryHolidays | None:
    try:
        data = json.loads(cache.read_text(encoding="utf-8"))
        if data.get("version") == version and data.get("calendar") == LIBRARY_CALENDAR:
            return _parse_library(data)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # absent or unreadable: read the library again
    return None


def library_holidays(cache_dir: Path | None = None, *, timeout: float = 60.0) -> LibraryHolidays | None:
    """The library's holidays, from ``cache_dir``'s cache while the library's version is unchanged,
    else from a child process (the cache is rewritten). None, with a warning, when the library is
    not installed or fails: the calendar then knows weekends and the override file only."""
    version = library_version()
    if version is None:
        log.warning("market calendar: %s is not installed (pip install -r requirements.txt): "
                    "exchange holidays are unknown, only weekends and %s count", LIBRARY, "the override file")  # fmt: skip
        return None
    cache = cache_dir / CACHE_NAME if cache_dir is not None else None
    if cache is not None:
        cached = _cached(cache, version)
        if cached is not None:
            return cached
    root = Path(__file__).resolve().parent.parent
    try:
        done = subprocess.run(
            [sys.executable, "-m", "config.market_calendar"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHONPATH": str(root)},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("market calendar: reading %s failed (%s): exchange holidays are unknown", LIBRARY, exc)
        return None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        log.warning("market calendar: reading %s failed (%s): exchange holidays are unknown", LIBRARY, last)
        return None
    data = json.loads(done.stdout)
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            tmp.write_text(json.dumps(data), encoding="utf-8")
            tmp.replace(cache)
        except OSError as exc:
            log.debug("market calendar: cannot cache the holidays in %s: %s", cache, exc)
    return _parse_library(data)


# -- the override file ------------------------------------------------------------------------

_KEYS = {
    "session": ({"date", "exchanges", "open", "close"}, {"note"}),
    "closed": ({"date", "exchanges"}, {"note"}),
    "hours": ({"from", "exchanges", "open", "close"}, {"note", "symbols"}),
}
_TOP = {"session", "closed", "hours", "holidays_listed_through"}


def read_overrides(path: str | os.PathLike[str] | None) -> Overrides:
    """The override file's entries; ``ConfigError`` naming the file, each bad entry and the fix.
    None: no override file."""
    if path is None:
        return Overrides()
    path = Path(path)
    text = read_text_file(path, "market calendar file", "MARKET_CALENDAR_FILE", "TOML (see deploy/calendar.toml.example)")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"market calendar file {path}: not valid TOML ({exc}): see deploy/calendar.toml.example") from None

    problems: list[str] = []
    for key in sorted(set(doc) - _TOP):
        problems.append(f"unknown key {key!r}: use [[session]], [[closed]], [[hours]] or holidays_listed_through")
    listed = doc.get("holidays_listed_through")
    if listed is not None and (not isinstance(listed, int) or isinstance(listed, bool) or not 2000 <= listed <= 2100):
        problems.append(f"holidays_listed_through = {listed!r}: write a year, e.g. holidays_listed_through = 2027")
        listed = None
    entries: dict[str, list[Any]] = {"session": [], "closed": [], "hours": []}
    for kind, (required, optional) in _KEYS.items():
        tables = doc.get(kind, [])
        if not isinstance(tables, list):
            problems.append(f"{kind} is not a list of tables: write each entry as [[{kind}]]")
            continue
        for n, table in enumerate(tables, 1):
            entry = _entry(kind, n, table, required, optional, problems)
            if entry is not None:
                entries[kind].append(entry)
    if problems:
        raise ConfigError(f"market calendar file {path} has invalid entries:\n  - " + "\n  - ".join(problems))
    return Overrides(path, tuple(entries["closed"]), tuple(entries["session"]), tuple(entries["hours"]), listed)


def _entry(kind: str, n: int, table: Any, required: set[str], optional: set[str], problems: list[str]) -> Any:
    where = f"[[{kind}]] #{n}"
    if not isinstance(table, dict):
        problems.append(f"{where} is not a table: write it as [[{kind}]] followed by key = value lines")
        return None
    day_key = "from" if kind == "hours" else "date"
    if isinstance(table.get(day_key), date):
        where += f" ({day_key} {table[day_key]})"
    found = len(problems)
    for key in sorted(required - set(table)):
        problems.append(f"{where} lacks {key}: {_EXAMPLE[key]}")
    for key in sorted(set(table) - required - optional):
        problems.append(f"{where} has unknown key {key!r}: the keys are {', '.join(sorted(required | optional))}")
    day = _day(table.get(day_key), where, day_key, problems) if day_key in table else None
    exchanges = _exchanges(table.get("exchanges"), where, problems) if "exchanges" in table else None
    note = table.get("note", "")
    if not isinstance(note, str):
        problems.append(f'{where}: note must be text in quotes, e.g. note = "Muhurat trading"')
    symbols = table.get("symbols", [])
    prefixes = isinstance(symbols, list) and all(isinstance(x, str) and x.strip() for x in symbols)
    if "symbols" in table and (not prefixes or not symbols):
        problems.append(f"{where}: symbols = {symbols!r}: write a list of trading symbol prefixes, "
                        'e.g. symbols = ["COTTON", "KAPAS"]')  # fmt: skip
        symbols = []
    opens = closes = None
    if kind != "closed":
        opens = _time(table.get("open"), where, "open", problems) if "open" in table else None
        closes = _time(table.get("close"), where, "close", problems) if "close" in table else None
        if opens is not None and closes is not None and opens >= closes:
            problems.append(f"{where}: open {opens:%H:%M} is not before close {closes:%H:%M}: a session ends the day it starts")
    if len(problems) > found:
        return None
    assert day is not None and exchanges is not None
    if kind == "closed":
        return Closure(day, exchanges, note)
    assert opens is not None and closes is not None
    if kind == "session":
        return SpecialSession(day, exchanges, opens, closes, note)
    return Hours(day, exchanges, opens, closes, note, tuple(x.strip().upper() for x in symbols))


_EXAMPLE = {
    "date": "add date = 2026-11-08 (a TOML date, no quotes)",
    "from": "add from = 2026-12-07, the first day of the new hours",
    "exchanges": f'add exchanges = ["NSE", ...] (of {", ".join(REGULAR_HOURS)})',
    "open": 'add open = "18:00" (IST)',
    "close": 'add close = "19:00" (IST)',
}


def _day(value: Any, where: str, key: str, problems: list[str]) -> date | None:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    problems.append(f"{where}: {key} = {value!r} is not a date: write {key} = 2026-11-08 (year-month-day)")
    return None


def _time(value: Any, where: str, key: str, problems: list[str]) -> time | None:
    if isinstance(value, time):
        return value.replace(tzinfo=None)
    if isinstance(value, str):
        try:
            parsed = time.fromisoformat(value)
            if parsed.tzinfo is None and len(value) in (5, 8):
                return parsed
        except ValueError:
            pass
    problems.append(f'{where}: {key} = {value!r} is not a time of day: write {key} = "18:00" (IST, 24-hour)')
    return None


def _exchanges(value: Any, where: str, problems: list[str]) -> frozenset[str] | None:
    if not isinstance(value, list) or not value or not all(isinstance(x, str) for x in value):
        problems.append(f'{where}: exchanges = {value!r}: write a list, e.g. exchanges = ["NSE", "NFO"]')
        return None
    names = {x.strip().upper() for x in value}
    unknown = sorted(names - set(REGULAR_HOURS))
    if unknown:
        problems.append(f"{where}: unknown exchange {', '.join(unknown)}: use {', '.join(REGULAR_HOURS)}")
        return None
    return frozenset(names)


# -- both -------------------------------------------------------------------------------------


def build_calendar(library: LibraryHolidays | None, overrides: Overrides) -> MarketCalendar:
    """The calendar from the library's holidays and the override file."""
    source = library.source if library is not None else "no holiday library"
    if overrides.path is not None:
        source += f" + {overrides.path} ({overrides.count} entr{'y' if overrides.count == 1 else 'ies'})"
    return MarketCalendar(
        holidays=dict.fromkeys(library.holidays, "") if library is not None else {},
        weekend_sessions=library.weekend_sessions if library is not None else (),
        known_from=library.first if library is not None else None,
        known_until=library.last if library is not None else None,
        closures=overrides.closures,
        special_sessions=overrides.sessions,
        hours=overrides.hours,
        source=source,
    )


def staleness(calendar: MarketCalendar, overrides: Overrides, today: date) -> str | None:
    """A warning when the holidays of this year (or, from December, of next year) are unknown:
    a stale calendar reports every holiday as a missing day. None when they are known."""
    listed = overrides.listed_through or 0
    years = [today.year] + ([today.year + 1] if today.month == 12 else [])
    missing = [y for y in years if y > listed and not calendar.knows_holidays_for(y)]
    if not missing:
        return None
    known = f"knows holidays up to {calendar.known_until}" if calendar.known_until else "knows no holidays"
    return (
        f"market calendar: {calendar.source} {known}, none for {' or '.join(map(str, missing))}: "
        f"upgrade {LIBRARY} (pip install -U -r requirements.txt) once the exchanges publish the list, or list that "
        "year's holidays as [[closed]] entries in MARKET_CALENDAR_FILE and set holidays_listed_through"
    )


def load_calendar(path: str | os.PathLike[str] | None, cache_dir: Path | None) -> tuple[MarketCalendar, Overrides]:
    """The override file read (``ConfigError`` on a bad entry), then the library's holidays."""
    overrides = read_overrides(path)
    return build_calendar(library_holidays(cache_dir), overrides), overrides


def today_line(calendar: MarketCalendar, exchanges: list[str], now: datetime) -> str:
    """One line for the log: each exchange's sessions today, or why it is closed and when it opens."""
    parts = []
    for exchange in exchanges:
        today = calendar.day(exchange, now.astimezone(IST).date())
        if today.sessions:
            hours = ", ".join(f"{start:%H:%M}\u2013{end:%H:%M}" for start, end in today.sessions)
            parts.append(f"{exchange} open today {hours}")
        else:
            upcoming = calendar.next_open(exchange, now)
            after = f", next open {upcoming:%Y-%m-%d %H:%M}" if upcoming is not None else ""
            parts.append(f"{exchange} closed today ({today.closed_because}){after}")
    return f"market calendar: {'; '.join(parts)} [{calendar.source}]"


if __name__ == "__main__":
    import signal

    # started from a daemon thread, which blocks the daemon's signals (cli/signals.py): the child
    # inherits that mask, and a stop must still end it
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    json.dump(_extract(), sys.stdout)
