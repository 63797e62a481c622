"""Derivatives universes: a rule such as "NIFTY weekly options, 10 strikes either side of the money"
and the contracts it names on a day.

A ``UniverseSpec`` is the parsed rule (``config/universe.py`` reads it from a watchlist entry; its
``str()`` is that entry, written the canonical way). ``resolve_universe`` turns it into contracts
from an instrument master's rows (``core.contracts.Contract``): pure, no I/O, the day injected.
Every date and strike comes from the rows, never from a weekday or a step constant:

- Futures: the contracts of the underlying by expiry, ``near`` the first expiring on or after the
  day (a contract is watched through its expiry day), ``next`` the second, ``far`` the third.
  ``roll=N``: a contract counts as gone from N calendar days before its expiry (``roll=0``: on its
  expiry day), so ``near`` is the next contract from then on.
- Option expiries: ``weekly`` the first expiry (of any kind) on or after the day, ``next-weekly``
  the second; ``monthly`` the last expiry of the first month that still has one (the month's
  monthly contract, rolling to next month's once it has expired), ``next-monthly`` the month
  after's; or an explicit date, which must be listed. ``roll=N`` drops an expiry as for futures.
- Strikes: ATM is the listed strike of that expiry nearest the underlying's price; a price exactly
  between two strikes takes the lower one. The step is the smaller of ATM's gaps to its
  neighbouring strikes; ``ATM±N`` names ATM and the strikes ``k`` steps above and below it for
  ``k`` up to N (``ATM+A-B``: A above, B below). A strike the master does not list is left out,
  never replaced by a farther one.
- The ATM's reference (whose price the caller fetches, see ``atm_reference``): the ``on`` clause
  when there is one (``on FUT``: the near future by the same roll); else the index's cash symbol
  from ``INDEX_CASH_SYMBOLS`` (the masters do not link an index's derivatives to its own row);
  else the underlying's own row (kind IDX or EQ) on the derivatives exchange's cash market
  (NFO -> NSE, BFO -> BSE); else, on the commodity and currency exchanges (no cash market), the
  near future.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from core.contracts import CALL, FUT, PUT, Contract

OPT = "OPT"
SERIES = ("near", "next", "far")  # futures by expiry order: index 0, 1, 2
EXPIRY_RULES = ("weekly", "next-weekly", "monthly", "next-monthly")
# Derivatives exchange -> the cash market its stock and index underlyings trade on.
CASH_MARKET = {"NFO": "NSE", "BFO": "BSE"}
# Index derivatives whose underlying's cash symbol differs from the name the masters give them
# (NSE's and BSE's index names as their own instrument rows spell them).
INDEX_CASH_SYMBOLS = {
    "NIFTY": ("NSE", "NIFTY 50"),
    "BANKNIFTY": ("NSE", "NIFTY BANK"),
    "FINNIFTY": ("NSE", "NIFTY FIN SERVICE"),
    "MIDCPNIFTY": ("NSE", "NIFTY MID SELECT"),
    "SENSEX": ("BSE", "SENSEX"),
    "BANKEX": ("BSE", "BANKEX"),
}


class UniverseError(ValueError):
    """A universe cannot be resolved from the contracts it was given; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class UniverseSpec:
    """One derivatives-universe watchlist entry, parsed. ``kind`` is ``FUT`` or ``OPT``."""

    exchange: str  # the derivatives exchange: NFO, BFO, MCX, CDS, BCD
    underlying: str  # the masters' name of the underlying, upper case (Contract.underlying)
    kind: str
    series: tuple[int, ...] = (0,)  # futures: indexes into SERIES, in the order written
    expiry: str | date | None = None  # options: one of EXPIRY_RULES, or a date
    above: int = 0  # options: strikes above ATM
    below: int = 0  # options: strikes below ATM
    sides: tuple[str, ...] = (CALL, PUT)  # options
    reference: str | tuple[str, str] | None = None  # options: None (the default), "FUT", or (exchange, symbol)
    roll: int | None = None  # a contract counts as gone from this many days before its expiry; None: after it

    def __str__(self) -> str:
        words = [f"{self.exchange}:{self.underlying}", self.kind]
        if self.kind == FUT:
            words.append(",".join(SERIES[i] for i in self.series))
        else:
            words.append(self.expiry.isoformat() if isinstance(self.expiry, date) else str(self.expiry))
            if self.above == self.below:
                words.append(f"ATM±{self.above}" if self.above else "ATM")
            else:
                words.append(f"ATM+{self.above}-{self.below}")
            if len(self.sides) == 1:
                words.append(self.sides[0])
        if self.roll is not None:
            words.append(f"roll={self.roll}")
        if self.reference is not None:
            ref = self.reference if isinstance(self.reference, str) else ":".join(self.reference)
            words.append(f"on {ref}")
        return " ".join(words)


def resolve_universe(
    spec: UniverseSpec, contracts: Sequence[Contract], underlying_price: Decimal | None, today: date
) -> list[Contract]:
    """The contracts ``spec`` names on ``today``: futures in the series' order; options by strike, CE before PE.

    ``underlying_price`` is the last price of ``atm_reference(spec, ...)``; options need it (futures
    ignore it). Raises ``UniverseError`` when the contracts do not hold what the rule asks for.
    """
    if spec.kind == FUT:
        return _futures(spec, contracts, today)
    if spec.kind != OPT:
        raise UniverseError(f"{spec}: kind {spec.kind!r} is neither FUT nor OPT")
    chain = _option_chain(spec, contracts, today)
    if underlying_price is None:
        ref = atm_reference(spec, contracts, today)
        raise UniverseError(
            f"{spec}: finding the money needs the last price of {ref[0]}:{ref[1]}: fetch it and pass it as underlying_price"
        )
    price = underlying_price if isinstance(underlying_price, Decimal) else Decimal(str(underlying_price))
    if not price > 0:
        raise UniverseError(f"{spec}: the underlying's price {price} is not a positive number: pass its last traded price")
    strikes = sorted({c.strike for c in chain if c.strike is not None})
    return strikes_around(spec, chain, nearest_strike(strikes, price))


def nearest_strike(strikes: Sequence[Decimal], price: Decimal) -> Decimal:
    """The strike nearest ``price`` (the ATM); exactly between two, the lower."""
    return min(strikes, key=lambda s: (abs(s - price), s))


def strikes_around(spec: UniverseSpec, chain: Sequence[Contract], atm: Decimal) -> list[Contract]:
    """The contracts of one expiry's ``chain`` an option universe names around the strike ``atm``
    (one of the chain's strikes): by strike, CE before PE."""
    strikes = sorted({c.strike for c in chain if c.strike is not None})
    step = strike_step(strikes, strikes.index(atm))
    wanted = {atm + k * step for k in range(-spec.below, spec.above + 1)} if step else {atm}
    order = {CALL: 0, PUT: 1}
    picked = [c for c in chain if c.strike in wanted and c.kind in spec.sides]
    return sorted(picked, key=lambda c: (c.strike, order[c.kind], c.symbol))


def strike_step(strikes: Sequence[Decimal], at: int) -> Decimal:
    """The strike step at ``strikes[at]`` (sorted): the smaller of its gaps to its neighbours; 0 for a lone strike."""
    gaps = [strikes[at] - strikes[at - 1]] if at > 0 else []
    gaps += [strikes[at + 1] - strikes[at]] if at + 1 < len(strikes) else []
    return min(gaps, default=Decimal(0))


def option_chain(spec: UniverseSpec, contracts: Sequence[Contract], today: date) -> list[Contract]:
    """The options of the expiry an option universe names on ``today`` (``option_expiry``), all strikes."""
    return _option_chain(spec, contracts, today)


def option_expiry(spec: UniverseSpec, contracts: Sequence[Contract], today: date) -> date:
    """The expiry an option universe names on ``today``."""
    dated = _listed(spec, contracts, (CALL, PUT), "options")
    listed = sorted({c.expiry for c in dated if c.expiry is not None})
    if isinstance(spec.expiry, date):
        if spec.expiry < today:
            raise UniverseError(f"{spec}: {spec.expiry} has passed: name a later expiry or a rule such as weekly")
        if spec.expiry not in listed:
            near = sorted(listed, key=lambda d: abs((d - spec.expiry).days))[:3]
            raise UniverseError(
                f"{spec}: the instrument master lists no {spec.underlying} options on {spec.exchange} expiring "
                f"{spec.expiry}: the nearest listed are {', '.join(str(d) for d in sorted(near))}"
            )
        return spec.expiry
    since = _first_live_day(spec, today)
    ahead = [d for d in listed if d >= since]
    if spec.expiry in ("weekly", "next-weekly"):
        index = 0 if spec.expiry == "weekly" else 1
        if index < len(ahead):
            return ahead[index]
        raise UniverseError(
            f"{spec}: {spec.expiry} is the {('first', 'second')[index]} {spec.underlying} option expiry on or after "
            f"{since}, and the instrument master lists {_count(ahead, 'expiry', 'expiries')}{_dates(ahead)}"
        )
    if spec.expiry in ("monthly", "next-monthly"):
        months = sorted({(d.year, d.month) for d in ahead})
        index = 0 if spec.expiry == "monthly" else 1
        if index < len(months):
            return max(d for d in ahead if (d.year, d.month) == months[index])
        raise UniverseError(
            f"{spec}: {spec.expiry} is the last expiry of the {('first', 'second')[index]} month with {spec.underlying} "
            f"options expiring on or after {since}, and the instrument master lists {_count(months, 'such month', 'such months')}"
        )
    raise UniverseError(f"{spec}: expiry {spec.expiry!r} is not a date nor one of {', '.join(EXPIRY_RULES)}")


def atm_reference(spec: UniverseSpec, contracts: Sequence[Contract], today: date) -> tuple[str, str] | None:
    """The (exchange, symbol) whose last price an option universe's ATM is measured against; None for futures."""
    if spec.kind != OPT:
        return None
    if isinstance(spec.reference, tuple):
        return spec.reference
    if spec.reference == FUT:
        return _split(_near_future(spec, contracts, today).key)
    if spec.underlying in INDEX_CASH_SYMBOLS:
        return INDEX_CASH_SYMBOLS[spec.underlying]
    cash = CASH_MARKET.get(spec.exchange)
    if cash is not None:
        own = sorted(
            (
                c
                for c in contracts
                if c.exchange == cash and c.kind in ("IDX", "EQ") and spec.underlying in (c.underlying, c.symbol)
            ),
            key=lambda c: (c.symbol != spec.underlying, c.symbol),
        )
        if own:
            return (own[0].exchange, own[0].symbol)
        raise UniverseError(
            f"{spec}: the instrument master has no {cash} row for {spec.underlying} to measure the money against: "
            f"name one with 'on {cash}:SYMBOL', or measure against the near future with 'on FUT'"
        )
    return _split(_near_future(spec, contracts, today).key)


def _futures(spec: UniverseSpec, contracts: Sequence[Contract], today: date) -> list[Contract]:
    dated = _listed(spec, contracts, (FUT,), "futures")
    since = _first_live_day(spec, today)
    ahead = sorted({c.expiry for c in dated if c.expiry is not None and c.expiry >= since})
    out: list[Contract] = []
    for index in spec.series:
        if index >= len(ahead):
            raise UniverseError(
                f"{spec}: {SERIES[index]} is the {('first', 'second', 'third')[index]} {spec.underlying} future expiring on "
                f"or after {since}, and the instrument master lists {_count(ahead, 'such future', 'such futures')}{_dates(ahead)}"
            )
        out += sorted((c for c in dated if c.expiry == ahead[index]), key=lambda c: c.symbol)
    return out


def _near_future(spec: UniverseSpec, contracts: Sequence[Contract], today: date) -> Contract:
    return _futures(UniverseSpec(spec.exchange, spec.underlying, FUT, roll=spec.roll), contracts, today)[0]


def _option_chain(spec: UniverseSpec, contracts: Sequence[Contract], today: date) -> list[Contract]:
    expiry = option_expiry(spec, contracts, today)
    return [c for c in _listed(spec, contracts, (CALL, PUT), "options") if c.expiry == expiry and c.strike is not None]


def _listed(spec: UniverseSpec, contracts: Sequence[Contract], kinds: tuple[str, ...], what: str) -> list[Contract]:
    dated = [
        c
        for c in contracts
        if c.exchange == spec.exchange and c.underlying == spec.underlying and c.kind in kinds and c.expiry is not None
    ]
    if dated:
        return dated
    names = sorted({c.underlying for c in contracts if c.exchange == spec.exchange and c.kind in kinds})
    close = difflib.get_close_matches(spec.underlying, names, n=3)
    if close:
        hint = f": did you mean {' or '.join(close)}?"
    elif names:
        hint = f": check the name as the master spells it (e.g. {', '.join(names[:3])})"
    else:
        hint = f": it lists no {what} on {spec.exchange} at all (is that exchange's master loaded?)"
    raise UniverseError(f"{spec}: the instrument master lists no {spec.underlying} {what} on {spec.exchange}{hint}")


def _first_live_day(spec: UniverseSpec, today: date) -> date:
    """The earliest expiry still watched on ``today``."""
    return today if spec.roll is None else today + timedelta(days=spec.roll + 1)


def _split(key: str) -> tuple[str, str]:
    exchange, _, symbol = key.partition(":")
    return exchange, symbol


def _count(items: Sequence[object], one: str, many: str) -> str:
    return "none" if not items else f"only {len(items)} {one if len(items) == 1 else many}"


def _dates(items: Sequence[date]) -> str:
    return f" ({', '.join(str(d) for d in items)})" if items else ""
