"""Watchlist entries that name a derivatives universe instead of one trading symbol.

An entry is either a plain ``EXCHANGE:SYMBOL`` (``config/symbols.py``, unchanged: ``NSE:INFY``,
``NSE:NIFTY 50``) or a universe, recognised by the word ``FUT`` or ``OPT`` after the underlying.
Case does not matter; the canonical form is what ``str(UniverseSpec)`` prints.

Futures::

    NFO:NIFTY FUT                 the near future (first expiry on or after today)
    NFO:NIFTY FUT next            the second; ``far`` the third
    NFO:NIFTY FUT near,next       several, in the order written
    MCX:CRUDEOIL FUT roll=3       near, rolled to the next contract 3 days before it expires
                                  (roll=0: on its expiry day; without roll: the day after)

Options (CE and PE unless one is named)::

    NFO:NIFTY OPT weekly ATM±10               nearest expiry, ATM and 10 strikes either side
    NFO:NIFTY OPT next-weekly ATM+-5 CE       the expiry after it; ``+-`` is the ASCII ``±``
    NFO:BANKNIFTY OPT monthly ATM±10 PE       the month's last expiry (``next-monthly``: the next month's)
    NFO:NIFTY OPT 2026-12-24 ATM±10           an explicit expiry date (YYYY-MM-DD)
    NFO:NIFTY OPT weekly ATM+3-5              3 strikes above ATM, 5 below; plain ``ATM``: the ATM strike alone
    NFO:NIFTY OPT weekly ATM±10 roll=1        weekly, but the next one from the day before expiry
    NFO:RELIANCE OPT monthly ATM±5 on FUT     the money measured against the near future
    NFO:NIFTY OPT weekly ATM±10 on NSE:NIFTY 50   ... or against a named symbol (``on`` comes last)

The words after ``FUT``/``OPT`` may come in any order, each at most once; ``on`` takes the rest of
the entry. What each word means on a day (expiry order, ATM, strike step, the default reference
for the money) is ``core/universe.py``'s job: ``resolve_universe``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date

from config.symbols import EXCHANGES, SymbolError, parse_symbol
from core.contracts import CALL, FUT, PUT
from core.universe import OPT, SERIES, UniverseSpec

DERIVATIVE_EXCHANGES = ("NFO", "BFO", "MCX", "CDS", "BCD")
_CASH_TO_DERIVATIVES = {"NSE": "NFO", "BSE": "BFO"}
_UNDERLYING = re.compile(r"[A-Z0-9][A-Z0-9&_.\- ]*\Z")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
_STRIKES = re.compile(r"ATM(?:(?:±|\+-|-\+)(\d+)|\+(\d+)-(\d+))?\Z")
_ROLL = re.compile(r"ROLL=(\d+)\Z")
_ON = re.compile(r"(?:^|\s)ON(?:\s+|\Z)", re.IGNORECASE)
_EXPIRY_WORDS = {"WEEKLY": "weekly", "NEXT-WEEKLY": "next-weekly", "MONTHLY": "monthly", "NEXT-MONTHLY": "next-monthly"}
_SIDE_HINTS = {"CALL": CALL, "CALLS": CALL, "PUT": PUT, "PUTS": PUT}
_KIND_HINTS = {"FUTURE": FUT, "FUTURES": FUT, "OPTION": OPT, "OPTIONS": OPT, "OPTS": OPT}

Entry = tuple[str, str] | UniverseSpec


def futures_form(name: str = "NFO:NIFTY") -> str:
    return f"{name} FUT [near|next|far|near,next] [roll=N], e.g. {name} FUT near,next"


def options_form(name: str = "NFO:NIFTY") -> str:
    return (
        f"{name} OPT weekly|next-weekly|monthly|next-monthly|YYYY-MM-DD ATM±N [CE|PE] [roll=N] "
        f"[on FUT|on EXCHANGE:SYMBOL], e.g. {name} OPT weekly ATM±10"
    )


def parse_entry(text: str) -> Entry:
    """A watchlist entry: a plain ``(exchange, symbol)`` as ``parse_symbol`` gives it, or a ``UniverseSpec``."""
    raw = text.strip()
    head, colon, rest = raw.partition(":")
    if colon and len(head.split()) > 1:  # "NIFTY OPT ... on NSE:NIFTY 50": that colon is the reference's
        colon, rest = "", raw
    words = (rest if colon else raw).split()
    upper = [w.upper() for w in words]
    exchange = head.strip().upper() if colon else ""
    at = next((i for i, w in enumerate(upper) if w in (FUT, OPT)), None)
    if at is None:
        if exchange in DERIVATIVE_EXCHANGES and len(words) > 1:
            hint = next((w for w in upper[1:] if w in _KIND_HINTS), None)
            name = f"{exchange}:{upper[0]}"
            if hint is not None:
                fix = f"write {_KIND_HINTS[hint]}, not {hint}: "
            else:
                fix = f"no trading symbol on {exchange} has a space; for a universe write "
            raise SymbolError(f"{text!r}: {fix}{futures_form(name)}; or {options_form(name)}")
        return parse_symbol(text)
    kind = upper[at]
    underlying = " ".join(upper[:at])
    example = futures_form if kind == FUT else options_form
    if not underlying:
        raise SymbolError(f"{text!r} names no underlying before {kind}: write {example()}")
    if not colon:
        raise SymbolError(f"{text!r} names no exchange: a universe names its derivatives exchange, {example(f'NFO:{underlying}')}")
    if exchange not in DERIVATIVE_EXCHANGES:
        if exchange in _CASH_TO_DERIVATIVES:
            to = _CASH_TO_DERIVATIVES[exchange]
            raise SymbolError(
                f"{text!r}: {exchange} is a cash market; {underlying}'s futures and options trade on {to}: "
                f"write {example(f'{to}:{underlying}')}"
            )
        known = f"unknown exchange {exchange!r}" if exchange not in EXCHANGES else f"{exchange} has no universes"
        raise SymbolError(
            f"{text!r}: {known}: a universe names one of {', '.join(DERIVATIVE_EXCHANGES)}, e.g. {example(f'NFO:{underlying}')}"
        )
    if not _UNDERLYING.match(underlying):
        raise SymbolError(f"{text!r}: {underlying!r} has characters an underlying's name cannot have: write {example()}")
    name = f"{exchange}:{underlying}"
    tail = " ".join(words[at + 1 :])
    reference: str | tuple[str, str] | None = None
    found = _ON.search(tail)
    if found:
        reference = _reference(text, tail[found.end() :].strip(), kind, name)
        tail = tail[: found.start()]
    tail = re.sub(r"\s*([±,=])\s*", r"\1", tail)  # "near, next", "ATM ± 10", "roll = 2"
    tail = re.sub(r"(?i)\b(ATM)\s+(?=[+\-])", r"\1", tail)
    tail = re.sub(r"([+\-])\s+(?=\d)", r"\1", tail)
    tokens = tail.upper().split()
    if kind == FUT:
        return _futures(text, exchange, underlying, tokens)
    return _options(text, exchange, underlying, tokens, reference)


def parse_entries(texts: Iterable[str]) -> list[Entry]:
    """Each entry parsed; duplicates dropped, keeping the first, in order."""
    return list(dict.fromkeys(parse_entry(t) for t in texts))


def _reference(text: str, ref: str, kind: str, name: str) -> str | tuple[str, str]:
    if kind == FUT:
        raise SymbolError(
            f"{text!r}: 'on' names the price an option universe's ATM is measured against; futures need none: "
            f"write {futures_form(name)}"
        )
    if not ref:
        raise SymbolError(
            f"{text!r}: 'on' names nothing: write 'on FUT' (the near future) or 'on EXCHANGE:SYMBOL', e.g. on NSE:NIFTY 50"
        )
    if ref.upper() == FUT:
        return FUT
    try:
        return parse_symbol(ref)
    except SymbolError as exc:
        raise SymbolError(f"{text!r}: after 'on', {exc}; write 'on FUT' or 'on EXCHANGE:SYMBOL', e.g. on NSE:NIFTY 50") from None


def _roll(text: str, token: str, name: str, form: str) -> int:
    found = _ROLL.match(token)
    if not found:
        raise SymbolError(f"{text!r}: {token!r}: roll takes a whole number of days, e.g. roll=2 in {form}")
    return int(found.group(1))


def _futures(text: str, exchange: str, underlying: str, tokens: list[str]) -> UniverseSpec:
    name = f"{exchange}:{underlying}"
    series: tuple[int, ...] | None = None
    roll: int | None = None
    for token in tokens:
        if token.startswith("ROLL"):
            if roll is not None:
                raise SymbolError(f"{text!r} names roll twice: keep one, e.g. {futures_form(name)} roll=2")
            roll = _roll(text, token, name, futures_form(name))
            continue
        names = token.lower().split(",")
        if all(n in SERIES for n in names):
            if series is not None:
                raise SymbolError(f"{text!r} names futures twice: list them once, comma-separated: {futures_form(name)}")
            series = tuple(dict.fromkeys(SERIES.index(n) for n in names))
            continue
        if token.startswith("ATM") or token in (CALL, PUT) or token.lower() in _EXPIRY_WORDS.values():
            raise SymbolError(f"{text!r}: {token} belongs to options: write {options_form(name)}")
        bad = next(n for n in names if n not in SERIES)
        raise SymbolError(f"{text!r}: {bad.upper()!r} is not a futures series (near, next or far): write {futures_form(name)}")
    return UniverseSpec(exchange, underlying, FUT, series=series or (0,), roll=roll)


def _options(text: str, exchange: str, underlying: str, tokens: list[str], reference: str | tuple[str, str] | None) -> UniverseSpec:
    name = f"{exchange}:{underlying}"
    form = options_form(name)
    expiry: str | date | None = None
    strikes: tuple[int, int] | None = None
    side: str | None = None
    roll: int | None = None

    def once(current: object, what: str, token: str) -> None:
        if current is not None:
            raise SymbolError(f"{text!r} names {what} twice (the second is {token}): keep one, {form}")

    for token in tokens:
        if token in _EXPIRY_WORDS or _DATE.match(token):
            once(expiry, "an expiry", token)
            if token in _EXPIRY_WORDS:
                expiry = _EXPIRY_WORDS[token]
            else:
                try:
                    expiry = date.fromisoformat(token)
                except ValueError:
                    raise SymbolError(f"{text!r}: {token} is not a date: write the expiry as YYYY-MM-DD, e.g. 2026-12-24") from None
        elif token.startswith("ATM"):
            once(strikes, "strikes", token)
            found = _STRIKES.match(token)
            if not found:
                raise SymbolError(
                    f"{text!r}: {token!r} is not a strike range: write ATM±N or ATM+-N (N strikes either side of the "
                    f"money), ATM+A-B (A above, B below) or ATM alone, e.g. ATM±10"
                )
            either, above, below = found.groups()
            strikes = (int(either), int(either)) if either is not None else (int(above or 0), int(below or 0))
        elif token in (CALL, PUT):
            once(side, "a side", token)
            side = token
        elif token.startswith("ROLL"):
            once(roll, "roll", token)
            roll = _roll(text, token, name, form)
        elif token in _SIDE_HINTS:
            raise SymbolError(
                f"{text!r}: write {_SIDE_HINTS[token]} for {token.lower()}, e.g. {name} OPT weekly ATM±10 {_SIDE_HINTS[token]}"
            )
        elif token in ("WEEK", "NEXT-WEEK", "MONTH", "NEXT-MONTH", "NEXTWEEKLY", "NEXTMONTHLY") or any(
            n in SERIES for n in token.lower().split(",")
        ):
            futures = any(n in SERIES for n in token.lower().split(","))
            raise SymbolError(
                f"{text!r}: {token} is not an option expiry: write weekly, next-weekly, monthly, next-monthly or a date, "
                f"{form}" + (f" (near, next and far are for futures: {futures_form(name)})" if futures else "")
            )
        else:
            raise SymbolError(f"{text!r}: {token!r} is not part of an option universe: {form}")
    if expiry is None:
        raise SymbolError(
            f"{text!r} names no expiry: add weekly, next-weekly, monthly, next-monthly or a date (YYYY-MM-DD): {form}"
        )
    if strikes is None:
        raise SymbolError(f"{text!r} names no strikes: add ATM±N for N strikes either side of the money: {form}")
    if roll is not None and isinstance(expiry, date):
        raise SymbolError(
            f"{text!r}: roll moves a rule such as weekly to the next expiry; an explicit date never moves: drop roll={roll}"
        )
    sides = (side,) if side else (CALL, PUT)
    return UniverseSpec(
        exchange, underlying, OPT, expiry=expiry, above=strikes[0], below=strikes[1], sides=sides, reference=reference, roll=roll
    )
