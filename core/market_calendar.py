"""When each exchange trades: its sessions on a day, as aware IST datetimes.

A pure value: the exchanges' regular hours (below), the exchange holidays and special weekend
sessions it is given (``config.market_calendar`` reads them from the ``exchange_calendars``
library and the operator's override file), and the override file's closures, special sessions and
changed hours. It reads no file and no clock; every answer is worked out once per (exchange, day)
and kept, so asking on a hot path costs a dict lookup.

Session minutes are the continuous session only: no pre-open (09:00–09:08 order entry, then
matching until 09:15, for cash: https://www.nseindia.com/market-data/market-timings), no closing
auction or post-close session.

Hours can depend on the symbol as well as the exchange: MCX's agricultural commodities close at
17:00 or 21:00, not with the non-agricultural evening session. The override file's ``[[hours]]``
entries with ``symbols`` (prefixes of the trading symbol) say so; callers that know the symbol pass
it (``sessions(exchange, day, symbol)``).

What the holidays cover (see config/market_calendar.py for why this library):
- NSE, BSE, NFO, BFO: the equity holiday list (NSE and BSE publish the same one for cash and F&O)
  and the special weekend sessions (budget-day Saturdays).
- CDS, BCD, MCX: no maintained library lists their holidays, so they get the same equity holidays
  (closed the whole day) and no weekend sessions. That is wrong on some days: the currency
  segment also closes on some bank holidays, and MCX keeps its evening session (from 17:00) on
  most equity holidays and closes on a few days the equity segment trades. Those days belong in
  the override file (``[[closed]]``, ``[[session]]``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

from core.ist import IST

MINUTE = timedelta(minutes=1)

#: Regular continuous-session hours by exchange (IST). MCX's close depends on the day: ``mcx_close``.
REGULAR_HOURS: dict[str, tuple[time, time]] = {
    "NSE": (time(9, 15), time(15, 30)),  # cash
    "BSE": (time(9, 15), time(15, 30)),
    "NFO": (time(9, 15), time(15, 30)),  # equity F&O; 15:40 from 2026-08-03: BUILTIN_HOURS
    "BFO": (time(9, 15), time(15, 30)),
    # currency derivatives; the cross-currency pairs' 19:30 close ended with NSE circular
    # NSE/CD/44122 (14 April 2020): all contracts 09:00-17:00
    "CDS": (time(9, 0), time(17, 0)),
    "BCD": (time(9, 0), time(17, 0)),
    "MCX": (time(9, 0), time(23, 30)),  # the close moves with US daylight saving: mcx_close
}

#: The exchanges the equity holiday library's special weekend sessions (budget-day Saturdays) apply to.
EQUITY_EXCHANGES = frozenset({"NSE", "BSE", "NFO", "BFO"})

MCX_SUMMER_CLOSE = time(23, 30)
MCX_WINTER_CLOSE = time(23, 55)


def _nth_sunday(year: int, month: int, n: int) -> date:
    first = date(year, month, 1)
    return first + timedelta(days=(6 - first.weekday()) % 7 + 7 * (n - 1))


def us_daylight_saving(day: date) -> bool:
    """Whether the US is on daylight saving time on ``day`` (from the second Sunday of March to
    the first Sunday of November, the rule since 2007)."""
    return _nth_sunday(day.year, 3, 2) <= day < _nth_sunday(day.year, 11, 1)


def mcx_close(day: date) -> time:
    """MCX's close for non-agricultural commodities: 23:30 while the US is on daylight saving
    time, 23:55 while it is not. MCX announces the switch each March and November in a circular
    ("Revision in trading hours", mcxindia.com → Circulars; e.g. MCX/TRD/675/2023: 23:55 from
    6 November 2023), effective the first trading day after the US clocks change. Agricultural
    commodities close earlier whatever the season: 21:00 for the "internationally referenceable"
    ones (cotton, cotton oil, kapas in the March 2025 circular; crude palm oil in earlier ones),
    17:00 for all others (mentha oil, cardamom, ...). That is per symbol: the override file's
    ``[[hours]]`` with ``symbols`` (deploy/calendar.toml.example)."""
    return MCX_SUMMER_CLOSE if us_daylight_saving(day) else MCX_WINTER_CLOSE


@dataclass(frozen=True, slots=True)
class Closure:
    """The exchanges do not trade on ``day`` (the override file's ``[[closed]]``)."""

    day: date
    exchanges: frozenset[str]
    note: str = ""


@dataclass(frozen=True, slots=True)
class SpecialSession:
    """A session on ``day`` besides (or instead of) the regular one: Muhurat trading, a
    budget-day Saturday (the override file's ``[[session]]``)."""

    day: date
    exchanges: frozenset[str]
    open: time
    close: time
    note: str = ""


@dataclass(frozen=True, slots=True)
class Hours:
    """The exchanges' regular hours from ``start`` on (the override file's ``[[hours]]``); with
    ``symbols``, only for the trading symbols that start with one of them (upper case)."""

    start: date
    exchanges: frozenset[str]
    open: time
    close: time
    note: str = ""
    symbols: tuple[str, ...] = ()

    def applies_to(self, symbol: str) -> bool:
        return any(symbol.startswith(prefix) for prefix in self.symbols)


#: Changes of regular hours an exchange or SEBI has announced, below the override file's entries.
BUILTIN_HOURS: tuple[Hours, ...] = (
    # SEBI circular HO/47/11/11(3)2025-MRD-POD2/I/2765/2026 of 16 January 2026 (closing auction
    # session in the cash segment from 3 August 2026): "the equity derivatives segment shall
    # continue to operate up to 3:40 p.m."; NSE circular 74/2026 (May 2026): F&O normal market
    # close 15:40 from 3 August 2026.
    Hours(date(2026, 8, 3), frozenset({"NFO", "BFO"}), time(9, 15), time(15, 40), "SEBI closing auction session"),
)


@dataclass(frozen=True, slots=True)
class Day:
    """One exchange's day: its sessions, and why it has none when it has none."""

    sessions: tuple[tuple[datetime, datetime], ...]
    closed_because: str = ""  # "weekend", "holiday: …", "closed: …" when there is no session


@dataclass(slots=True)
class MarketCalendar:
    """The sessions of every exchange in ``REGULAR_HOURS``.

    ``holidays`` are the equity holidays (date → name, may be blank) the library knows, for the
    days from ``known_from`` to ``known_until``; outside that range only weekends are known.
    ``weekend_sessions`` are the library's special weekend trading days (equity exchanges only).
    ``closures``, ``special_sessions`` and ``hours`` come from the override file and win over
    the library: a closure removes the regular session, a special session is added (on a closed
    day it is the only one). Of the hours, a symbol's own entry (``symbols``) wins over the
    exchange's, the override file's over ``BUILTIN_HOURS``, and a later start over an earlier one."""

    holidays: Mapping[date, str] = field(default_factory=dict)
    weekend_sessions: Collection[date] = ()
    known_from: date | None = None
    known_until: date | None = None
    closures: Iterable[Closure] = ()
    special_sessions: Iterable[SpecialSession] = ()
    hours: Iterable[Hours] = ()
    source: str = "weekends only"
    _closed: dict[tuple[str, date], str] = field(init=False, repr=False)
    _special: dict[tuple[str, date], list[SpecialSession]] = field(init=False, repr=False)
    _hours: dict[str, list[Hours]] = field(init=False, repr=False)
    _symbol_hours: dict[str, list[Hours]] = field(init=False, repr=False)
    _builtin: dict[str, list[Hours]] = field(init=False, repr=False)
    _days: dict[tuple[str, date, str], Day] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.weekend_sessions = frozenset(self.weekend_sessions)
        self._closed = {}
        for c in self.closures:
            for exchange in c.exchanges:
                self._closed[(exchange, c.day)] = c.note
        self._special = {}
        for s in self.special_sessions:
            for exchange in s.exchanges:
                self._special.setdefault((exchange, s.day), []).append(s)
        self._hours, self._symbol_hours, self._builtin = {}, {}, {}
        for h in sorted(self.hours, key=lambda h: h.start):
            for exchange in h.exchanges:
                (self._symbol_hours if h.symbols else self._hours).setdefault(exchange, []).append(h)
        for h in sorted(BUILTIN_HOURS, key=lambda h: h.start):
            for exchange in h.exchanges:
                self._builtin.setdefault(exchange, []).append(h)
        self._days = {}

    # -- what the library knows ---------------------------------------------------------------

    def knows_holidays_for(self, year: int) -> bool:
        """Whether the holiday list covers all of ``year``."""
        return (
            self.known_from is not None
            and self.known_until is not None
            and self.known_from <= date(year, 1, 1)
            and date(year, 12, 31) <= self.known_until
        )

    # -- one exchange's day -------------------------------------------------------------------

    def day(self, exchange: str, day: date, symbol: str = "") -> Day:
        """``exchange``'s sessions on ``day`` (for ``symbol``, when its hours are its own) and,
        when there is none, why."""
        own = symbol.upper() if symbol and any(h.applies_to(symbol.upper()) for h in self._symbol_hours.get(exchange, ())) else ""
        key = (exchange, day, own)
        found = self._days.get(key)
        if found is None:
            found = self._days[key] = self._work_out(exchange, day, own)
        return found

    def _work_out(self, exchange: str, day: date, symbol: str) -> Day:
        if exchange not in REGULAR_HOURS:
            raise ValueError(f"unknown exchange {exchange!r}: use one of {', '.join(REGULAR_HOURS)}")
        windows: list[tuple[time, time]] = []
        why = ""
        if (exchange, day) in self._closed:
            note = self._closed[(exchange, day)]
            why = f"closed: {note}" if note else "closed"
        elif day in self.holidays:
            name = self.holidays[day]
            why = f"holiday: {name}" if name else "holiday"
        elif day.weekday() >= 5 and not (exchange in EQUITY_EXCHANGES and day in self.weekend_sessions):
            why = "weekend"
        else:
            windows.append(self.regular_hours(exchange, day, symbol))
        windows += [(s.open, s.close) for s in self._special.get((exchange, day), ())]
        sessions = tuple((datetime.combine(day, o, IST), datetime.combine(day, c, IST)) for o, c in _merged(windows))
        return Day(sessions, "" if sessions else why)

    def regular_hours(self, exchange: str, day: date, symbol: str = "") -> tuple[time, time]:
        """``exchange``'s (or ``symbol``'s) regular hours on ``day`` (whether or not it trades that day)."""
        symbol = symbol.upper()
        tiers = (
            [h for h in self._symbol_hours.get(exchange, ()) if symbol and h.applies_to(symbol)],
            self._hours.get(exchange, ()),
            self._builtin.get(exchange, ()),
        )
        for entries in tiers:
            chosen = None
            for h in entries:  # by start
                if h.start <= day:
                    chosen = (h.open, h.close)
            if chosen is not None:
                return chosen
        start, end = REGULAR_HOURS[exchange]
        return (start, mcx_close(day)) if exchange == "MCX" else (start, end)

    def sessions(self, exchange: str, day: date, symbol: str = "") -> list[tuple[datetime, datetime]]:
        """``exchange``'s (``symbol``'s) sessions on ``day``, in order, as (open, close) IST
        datetimes; empty on a weekend or holiday."""
        return list(self.day(exchange, day, symbol).sessions)

    def in_sessions(self, exchange: str, since: float, until: float, symbol: str = "") -> list[tuple[float, float]]:
        """The parts of the span ``since``..``until`` (epoch seconds, both finite) that lie in
        ``exchange``'s (``symbol``'s) sessions, in order; empty when no session time falls in it."""
        out: list[tuple[float, float]] = []
        if until <= since:
            return out
        day = datetime.fromtimestamp(since, IST).date()
        last = datetime.fromtimestamp(until, IST).date()
        while day <= last:
            for start, end in self.day(exchange, day, symbol).sessions:
                a = max(since, start.timestamp())
                b = min(until, end.timestamp())
                if a < b:
                    out.append((a, b))
            day += timedelta(days=1)
        return out

    def is_open(self, exchange: str, t: datetime, symbol: str = "") -> bool:
        """Whether ``exchange`` (``symbol``) is in a session at ``t`` (aware; open ≤ t < close)."""
        local = t.astimezone(IST)
        return any(start <= local < end for start, end in self.day(exchange, local.date(), symbol).sessions)

    def session_minutes(self, exchange: str, day: date, symbol: str = "") -> list[datetime]:
        """The start of every session minute of ``exchange`` (``symbol``) on ``day`` (375 on a
        normal NSE day)."""
        minutes = []
        for start, end in self.day(exchange, day, symbol).sessions:
            t = start
            while t < end:
                minutes.append(t)
                t += MINUTE
        return minutes

    def trading_days(self, exchange: str, start: date, end: date) -> list[date]:
        """The days from ``start`` to ``end`` (both included) on which ``exchange`` has a session
        (a symbol's own hours change a day's hours, never whether it trades)."""
        days = []
        d = start
        while d <= end:
            if self.day(exchange, d).sessions:
                days.append(d)
            d += timedelta(days=1)
        return days

    def next_open(self, exchange: str, t: datetime, *, within_days: int = 366, symbol: str = "") -> datetime | None:
        """The first session open of ``exchange`` (``symbol``) at or after ``t``; ``t`` itself if it
        is in a session; None if none comes within ``within_days``."""
        local = t.astimezone(IST)
        for offset in range(within_days + 1):
            for start, end in self.day(exchange, local.date() + timedelta(days=offset), symbol).sessions:
                if local < end:
                    return max(start, local)
        return None


def bucket_close(sessions: Sequence[tuple[datetime, datetime]], start: datetime, end: datetime) -> datetime:
    """When the bucket ``[start, end)`` stops changing: its end, or the last close of the
    ``sessions`` it overlaps if sooner (an hour bucket 15:15-16:15 settles at 15:30)."""
    closes = [close for open_, close in sessions if open_ < end and start < close]
    return min(end, max(closes)) if closes else end


def _merged(windows: list[tuple[time, time]]) -> list[tuple[time, time]]:
    """Overlapping or touching windows joined, in order."""
    out: list[tuple[time, time]] = []
    for start, end in sorted(windows):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out
