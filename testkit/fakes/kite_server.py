"""A fake Zerodha Kite Connect v3 server on loopback: the market-data WebSocket and the REST calls we use.

REST: the login redirect, ``POST /session/token``, ``/user/profile``, the instruments dump, and the
historical API (``GET /instruments/historical/{token}/{interval}?from=&to=&continuous=&oi=``). The
historical API serves candles built from every tick put on the tape (``send_ticks``, ``play_tape``),
including ticks sent while no client was connected, by the rules in ``historical_candles``; it
answers Kite's errors (400 ``InputException``, 403 ``TokenException`` and ``PermissionException``),
and 429 past 3 requests a second per API key. Switches: ``historical_access = False`` (an app
without the historical add-on), ``historical_rate_limit``, ``historical_delay``, ``fail_historical``
(5xx/429 on the next requests); ``historical_requests`` records each request, its arrival time and status.

It speaks the real wire protocols byte for byte (Kite Connect's WebSocket and
REST docs, https://kite.trade/docs/connect/v3/, and pykiteconnect's ``kiteconnect/ticker.py``)
so the official pykiteconnect client and our own client can both be pointed at it. It shares nothing
with the project's ``brokers/`` package on purpose: its packet encoder is written here from the spec,
so a misreading of the spec in one place cannot hide in both.

The WebSocket side is a small RFC 6455 server on asyncio (run in a background thread) rather than a
library, because the faults we need — dropping a socket without a close frame, going silent while
ignoring pings, refusing the upgrade with 403/429 — are exactly what libraries make hard. The REST side
is ``http.server`` in a second thread.

Usage::

    with KiteFakeServer() as server:
        ticker = KiteTicker(server.api_key, server.access_token, root=server.ws_url)
        ...
        server.wait_subscribed([408065])
        server.send_ticks(random_tape(seconds=5))
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import calendar
import contextlib
import csv
import gzip
import hashlib
import io
import json
import logging
import random
import secrets
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

IST = timezone(timedelta(hours=5, minutes=30))

# --------------------------------------------------------------------------------------------------
# Instruments and ticks
# --------------------------------------------------------------------------------------------------

MODES = ("ltp", "quote", "full")
SEGMENT_INDICES = 9
# token & 0xff -> price divisor.  NCO is 12 in pykiteconnect 5.2.x (7 is MCX, divided by 100).
_DIVISORS = {3: 10_000_000, 6: 10_000, 12: 10_000}
INSTRUMENTS_CSV_HEADER = ",".join(
    (
        "instrument_token", "exchange_token", "tradingsymbol", "name", "last_price", "expiry",
        "strike", "tick_size", "lot_size", "instrument_type", "segment", "exchange",
    )
)  # fmt: skip
_U32_MAX = 2**31 - 1  # keep every value below 2^31 (JS clients read them signed)


@dataclass(frozen=True)
class FakeInstrument:
    """One row of the instruments dump."""

    token: int
    exchange: str
    tradingsymbol: str
    segment: str = "NSE"
    tick_size: str = "0.05"
    lot_size: int = 1
    instrument_type: str = "EQ"
    name: str = ""
    expiry: str = ""  # YYYY-MM-DD or empty
    strike: str = "0"  # options only; "0" on every other row, as in Kite's dump

    @property
    def exchange_token(self) -> int:
        return self.token >> 8

    def csv_row(self) -> list[str]:
        return [
            str(self.token),
            str(self.exchange_token),
            self.tradingsymbol,
            self.name,
            "0",
            self.expiry,
            self.strike,
            self.tick_size,
            str(self.lot_size),
            self.instrument_type,
            self.segment,
            self.exchange,
        ]


DEFAULT_INSTRUMENTS: tuple[FakeInstrument, ...] = (
    FakeInstrument(408065, "NSE", "INFY", name="INFOSYS"),
    FakeInstrument(738561, "NSE", "RELIANCE", name="RELIANCE INDUSTRIES"),
    FakeInstrument(2953217, "NSE", "TCS", name="TATA CONSULTANCY SERV LT"),
    FakeInstrument(256265, "NSE", "NIFTY 50", segment="INDICES", tick_size="0", lot_size=0, name="NIFTY 50"),
    # segment 3 (CDS): prices ÷ 1e7
    FakeInstrument(
        (1612 << 8) | 3,
        "CDS",
        "USDINR24JANFUT",
        segment="CDS-FUT",
        tick_size="0.0025",
        lot_size=1,
        instrument_type="FUT",
        name="USDINR",
        expiry="2024-01-29",
    ),
    # segment 7 (MCX): prices ÷ 100
    FakeInstrument(
        (224570 << 8) | 7,
        "MCX",
        "CRUDEOIL24JANFUT",
        segment="MCX-FUT",
        tick_size="1",
        lot_size=100,
        instrument_type="FUT",
        name="CRUDEOIL",
        expiry="2024-01-19",
    ),
)


# --------------------------------------------------------------------------------------------------
# A derivatives dump (futures and options), its dates relative to the fake's "today"
# --------------------------------------------------------------------------------------------------
#
# Expiry days (holidays ignored): NSE's index and stock derivatives expire on Tuesdays and BSE's on
# Thursdays since September 2025 (NSE circular of 23 June 2025, BSE's of 17 June 2025); only NIFTY
# (NSE) and SENSEX (BSE) keep weekly options, every other underlying has monthly contracts only
# (SEBI's framework of 1 October 2024). A monthly contract expires on the last such weekday of the
# month. MCX CRUDEOIL futures expire around the 19th (here: the 19th, or the weekday before when it
# falls on a weekend) and its options two business days before their future (MCX's contract
# specification). Lot sizes: NIFTY 65 and BANKNIFTY 30 from the January 2026 series (NSE circular of
# October 2025), SENSEX 20, RELIANCE 500, CRUDEOIL 100 barrels.
#
# Trading symbols follow Kite's dump (https://kite.trade/forum/discussion/8981): a future
# ``NIFTY26JANFUT``; a monthly option ``NIFTY26JAN25000CE``; a weekly option ``NIFTY2610625000CE``
# (year, month as 1-9/O/N/D, day).

MON, TUE, WED, THU, FRI = range(5)
_WEEKLY_MONTH = "123456789OND"


@dataclass(frozen=True)
class DerivativeSpec:
    """One underlying's contracts in the fake dump."""

    name: str  # the dump's ``name`` of every contract: NIFTY, BANKNIFTY, SENSEX, RELIANCE, CRUDEOIL
    exchange: str  # NFO, BFO, MCX
    segment: int  # token & 0xff: 2 NFO, 5 BFO, 7 MCX
    base_price: int  # the ATM strike the fake builds around
    strike_step: int
    lot_size: int
    expiry_weekday: int | None  # None: MCX's calendar
    weekly: bool  # weekly options besides the monthly ones
    option_tick: str = "0.05"
    future_tick: str = "0.05"  # NSE's and BSE's derivatives move by 0.05 (MCX CRUDEOIL by 1)


DERIVATIVE_SPECS: tuple[DerivativeSpec, ...] = (
    DerivativeSpec("NIFTY", "NFO", 2, 25_000, 50, 65, TUE, weekly=True),
    DerivativeSpec("BANKNIFTY", "NFO", 2, 56_000, 100, 30, TUE, weekly=False),
    DerivativeSpec("SENSEX", "BFO", 5, 82_000, 100, 20, THU, weekly=True),
    DerivativeSpec("RELIANCE", "NFO", 2, 1_400, 10, 500, TUE, weekly=False),
    DerivativeSpec("CRUDEOIL", "MCX", 7, 5_500, 50, 100, None, weekly=False, future_tick="1"),
)

#: The underlyings' own rows (index and stock) that a derivatives universe takes its ATM from.
#: Kite's tokens for NIFTY 50, NIFTY BANK and SENSEX; RELIANCE is in ``DEFAULT_INSTRUMENTS`` too.
UNDERLYING_INSTRUMENTS: tuple[FakeInstrument, ...] = (
    FakeInstrument(256265, "NSE", "NIFTY 50", segment="INDICES", tick_size="0", lot_size=0, name="NIFTY 50"),
    FakeInstrument(260105, "NSE", "NIFTY BANK", segment="INDICES", tick_size="0", lot_size=0, name="NIFTY BANK"),
    FakeInstrument(265, "BSE", "SENSEX", segment="INDICES", tick_size="0", lot_size=0, name="SENSEX"),
    FakeInstrument(738561, "NSE", "RELIANCE", name="RELIANCE INDUSTRIES"),
)


def last_weekday(year: int, month: int, weekday: int) -> date:
    day = date(year, month, calendar.monthrange(year, month)[1])
    return day - timedelta(days=(day.weekday() - weekday) % 7)


def _add_months(day: date, months: int) -> tuple[int, int]:
    n = day.year * 12 + day.month - 1 + months
    return n // 12, n % 12 + 1


def _prev_weekdays(day: date, n: int) -> date:
    """``n`` weekdays before ``day`` (0: ``day`` itself, or the weekday before a weekend)."""
    while day.weekday() >= 5:
        day -= timedelta(days=1)
    for _ in range(n):
        day -= timedelta(days=1)
        while day.weekday() >= 5:
            day -= timedelta(days=1)
    return day


def monthly_expiries(spec: DerivativeSpec, today: date, count: int = 3) -> list[date]:
    """The next ``count`` monthly expiries of ``spec``'s futures on or after ``today``."""
    out: list[date] = []
    months = 0
    while len(out) < count:
        year, month = _add_months(today, months)
        if spec.expiry_weekday is None:
            day = _prev_weekdays(date(year, month, 19), 0)
        else:
            day = last_weekday(year, month, spec.expiry_weekday)
        if day >= today:
            out.append(day)
        months += 1
    return out


def option_expiries(spec: DerivativeSpec, today: date, weeks: int = 4, months: int = 3) -> list[tuple[date, bool]]:
    """``(expiry, is_monthly)`` of ``spec``'s options on or after ``today``: the monthly ones, and
    for a weekly underlying the next ``weeks`` expiry weekdays too."""
    if spec.expiry_weekday is None:  # MCX: two business days before the future
        days = [_prev_weekdays(d, 2) for d in monthly_expiries(spec, today, months + 1)]
        return [(d, True) for d in days if d >= today][:months]
    monthly = set(monthly_expiries(spec, today, months))
    days = set(monthly)
    if spec.weekly:
        first = today + timedelta(days=(spec.expiry_weekday - today.weekday()) % 7)
        days.update(first + timedelta(weeks=w) for w in range(weeks))
    return [(d, d in monthly) for d in sorted(days)]


def _month_code(day: date) -> str:
    return f"{day:%y}{calendar.month_abbr[day.month].upper()}"


def derivative_instruments(
    today: date | None = None, strikes_each_side: int = 10, specs: Sequence[DerivativeSpec] = DERIVATIVE_SPECS
) -> tuple[FakeInstrument, ...]:
    """Kite-dump rows of futures (near, next, far month) and options (``strikes_each_side`` strikes
    either side of each underlying's base price, CE and PE, weekly and monthly expiries) for
    ``specs``, with expiries computed from ``today`` (the IST date now when ``None``), so that a test
    never finds its contracts expired. Tokens are unique and carry their segment in the low byte."""
    if today is None:
        today = datetime.now(IST).date()
    rows: list[FakeInstrument] = []
    serial = {2: 35_000, 5: 80_000, 7: 420_000}
    for spec in specs:
        seg_fut = f"{spec.exchange}-FUT"
        seg_opt = f"{spec.exchange}-OPT"

        def token(spec: DerivativeSpec = spec) -> int:
            serial[spec.segment] += 1
            return (serial[spec.segment] << 8) | spec.segment

        for expiry in monthly_expiries(spec, today):
            rows.append(
                FakeInstrument(
                    token(), spec.exchange, f"{spec.name}{_month_code(expiry)}FUT", segment=seg_fut,
                    tick_size=spec.future_tick, lot_size=spec.lot_size, instrument_type="FUT", name=spec.name,
                    expiry=expiry.isoformat(),
                )
            )  # fmt: skip
        for expiry, is_monthly in option_expiries(spec, today):
            weekly_code = f"{expiry:%y}{_WEEKLY_MONTH[expiry.month - 1]}{expiry:%d}"
            code = _month_code(expiry) if is_monthly else weekly_code
            for k in range(-strikes_each_side, strikes_each_side + 1):
                strike = spec.base_price + k * spec.strike_step
                for kind in ("CE", "PE"):
                    rows.append(
                        FakeInstrument(
                            token(), spec.exchange, f"{spec.name}{code}{strike}{kind}", segment=seg_opt,
                            tick_size=spec.option_tick, lot_size=spec.lot_size, instrument_type=kind,
                            name=spec.name, expiry=expiry.isoformat(), strike=str(strike),
                        )
                    )  # fmt: skip
    return tuple(rows)


def derivatives_dump(today: date | None = None, strikes_each_side: int = 10) -> tuple[FakeInstrument, ...]:
    """``DEFAULT_INSTRUMENTS`` plus the indices' rows and ``derivative_instruments``: a dump a
    derivatives universe can be resolved from (RELIANCE and NIFTY 50 are not repeated)."""
    have = {(i.exchange, i.tradingsymbol) for i in DEFAULT_INSTRUMENTS}
    extra = tuple(i for i in UNDERLYING_INSTRUMENTS if (i.exchange, i.tradingsymbol) not in have)
    return (*DEFAULT_INSTRUMENTS, *extra, *derivative_instruments(today, strikes_each_side))


@dataclass(frozen=True)
class DepthLevel:
    quantity: int
    price: Decimal
    orders: int


@dataclass(frozen=True)
class TapeTick:
    """One exchange snapshot of one instrument.

    Fields left ``None`` are filled by the server from the tape it has seen for that token (day open
    = first price, running high/low, previous close = first price, average price = last price,
    last-trade time = exchange time); empty depth is sent as zeroed levels.
    """

    token: int
    last_price: Decimal
    last_quantity: int
    volume: int  # cumulative for the day
    exchange_ts: int  # epoch seconds
    oi: int = 0
    last_trade_ts: int | None = None
    average_price: Decimal | None = None
    total_buy_quantity: int = 0
    total_sell_quantity: int = 0
    open: Decimal | None = None
    high: Decimal | None = None
    low: Decimal | None = None
    close: Decimal | None = None  # previous day's close
    oi_day_high: int = 0
    oi_day_low: int = 0
    bids: tuple[DepthLevel, ...] = ()
    asks: tuple[DepthLevel, ...] = ()


def price_divisor(token: int) -> int:
    return _DIVISORS.get(token & 0xFF, 100)


def is_index(token: int) -> bool:
    return token & 0xFF == SEGMENT_INDICES


def arrivals(ticks: Iterable[TapeTick], instruments: Iterable[FakeInstrument] = DEFAULT_INSTRUMENTS) -> list[SimpleNamespace]:
    """What a client sees of each sent snapshot (no volume or OI for an index), for the reference
    candles (``testkit.reference.reference_candles``)."""
    by_token = {i.token: i for i in instruments}
    out = []
    for t in ticks:
        inst = by_token[t.token]
        index = is_index(t.token)
        out.append(
            SimpleNamespace(
                exchange=inst.exchange,
                symbol=inst.tradingsymbol,
                last_price=t.last_price,
                volume=None if index else t.volume,
                oi=None if index else t.oi,
                exchange_ts=datetime.fromtimestamp(t.exchange_ts, IST),
            )
        )
    return out


def packet_length(token: int, mode: str) -> int:
    if mode == "ltp":
        return 8
    if is_index(token):
        return 28 if mode == "quote" else 32
    return 44 if mode == "quote" else 184


# --------------------------------------------------------------------------------------------------
# Encoder (sans-I/O)
# --------------------------------------------------------------------------------------------------


def _u32(value: int, what: str) -> int:
    if not 0 <= value <= _U32_MAX:
        raise ValueError(f"{what}={value} does not fit the Kite wire format (0 ≤ value < 2^31)")
    return value


def _price(value: Decimal, divisor: int, what: str) -> int:
    scaled = Decimal(value) * divisor
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{what}={value} is not a multiple of 1/{divisor}: the feed cannot carry it")
    return _u32(int(scaled), what)


def encode_packet(tick: TapeTick, mode: str) -> bytes:
    """One packet (without its u16 length) for ``tick`` in ``mode``; the length follows from token and mode."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: use one of {MODES}")
    div = price_divisor(tick.token)
    last = tick.last_price
    token = _u32(tick.token, "token")
    ltp = _price(last, div, "last_price")
    if mode == "ltp":
        return struct.pack(">II", token, ltp)
    o = tick.open if tick.open is not None else last
    h = tick.high if tick.high is not None else last
    lo = tick.low if tick.low is not None else last
    c = tick.close if tick.close is not None else last
    if is_index(tick.token):
        net_change = int((Decimal(last) - Decimal(c)) * div)
        out = struct.pack(
            ">IIIIIIi",
            token,
            ltp,
            _price(h, div, "high"),
            _price(lo, div, "low"),
            _price(o, div, "open"),
            _price(c, div, "close"),
            net_change,
        )
        if mode == "full":
            out += struct.pack(">I", _u32(tick.exchange_ts, "exchange_ts"))
        return out
    avg = tick.average_price if tick.average_price is not None else last
    out = struct.pack(
        ">11I",
        token,
        ltp,
        _u32(tick.last_quantity, "last_quantity"),
        _price(avg, div, "average_price"),
        _u32(tick.volume, "volume"),
        _u32(tick.total_buy_quantity, "total_buy_quantity"),
        _u32(tick.total_sell_quantity, "total_sell_quantity"),
        _price(o, div, "open"),
        _price(h, div, "high"),
        _price(lo, div, "low"),
        _price(c, div, "close"),
    )
    if mode == "quote":
        return out
    ltt = tick.last_trade_ts if tick.last_trade_ts is not None else tick.exchange_ts
    out += struct.pack(
        ">5I",
        _u32(ltt, "last_trade_ts"),
        _u32(tick.oi, "oi"),
        _u32(tick.oi_day_high, "oi_day_high"),
        _u32(tick.oi_day_low, "oi_day_low"),
        _u32(tick.exchange_ts, "exchange_ts"),
    )
    for side, levels in (("bid", tick.bids), ("ask", tick.asks)):
        if len(levels) > 5:
            raise ValueError(f"{len(levels)} {side} levels: the full packet carries at most 5 per side")
        for level in levels:
            out += struct.pack(
                ">IIHxx",
                _u32(level.quantity, "depth quantity"),
                _price(level.price, div, "depth price"),
                level.orders,
            )
        out += bytes(12 * (5 - len(levels)))
    return out


def encode_frame(packets: Sequence[bytes]) -> bytes:
    """A binary WebSocket message: u16 count, then u16 length + packet for each."""
    if len(packets) > 0xFFFF:
        raise ValueError("at most 65535 packets per frame")
    parts = [struct.pack(">H", len(packets))]
    for p in packets:
        parts.append(struct.pack(">H", len(p)))
        parts.append(p)
    return b"".join(parts)


HEARTBEAT = b"\x00"


# --------------------------------------------------------------------------------------------------
# A deterministic, realistic tape
# --------------------------------------------------------------------------------------------------

_BASE_PRICES = {"INFY": "1573.15", "RELIANCE": "2456.80", "TCS": "3712.40", "NIFTY 50": "21894.55"}
DEFAULT_START_EPOCH = 1705290300  # 2024-01-15 09:15:00 IST


def _grid(tick_size: str, token: int) -> Decimal:
    t = Decimal(tick_size or "0")
    if t <= 0:  # indices have tick_size 0 in the dump; their values move on 0.05
        t = Decimal("0.05")
    return t


def _snap(price: Decimal, grid: Decimal) -> Decimal:
    return (price / grid).to_integral_value(ROUND_HALF_EVEN) * grid


def random_tape(
    instruments: Sequence[FakeInstrument] = DEFAULT_INSTRUMENTS,
    seconds: int = 60,
    seed: int = 0,
    start_epoch: int = DEFAULT_START_EPOCH,
) -> list[TapeTick]:
    """A deterministic tape of fully specified snapshots, in exchange-time order.

    Each tradable instrument gets 0–3 snapshots per second: mostly trades (price moves on the tick
    grid, cumulative volume rises by the traded quantity), some quote-only repeats (price and volume
    unchanged, book and buy/sell totals change). Indices tick once a second with no volume.
    The first snapshot of each instrument carries the pre-open volume, as a real feed does.
    """
    rng = random.Random(seed)
    state: dict[int, dict[str, Any]] = {}
    for inst in instruments:
        grid = _grid(inst.tick_size, inst.token)
        div = price_divisor(inst.token)
        if inst.tradingsymbol in _BASE_PRICES:
            base = Decimal(_BASE_PRICES[inst.tradingsymbol])
        elif inst.token & 0xFF == 3:
            base = Decimal("83.1225")
        elif inst.token & 0xFF in (6, 12):
            base = Decimal("83.1350")
        else:
            base = Decimal(rng.randrange(100, 8000))
        base = _snap(base, grid)
        close = _snap(base * Decimal(1 + rng.uniform(-0.01, 0.01)), grid)
        lot = max(inst.lot_size, 1) if inst.instrument_type == "FUT" else 1
        pre_qty = 0 if is_index(inst.token) else rng.randrange(1, 200) * 10 * lot
        state[inst.token] = {
            "grid": grid,
            "div": Decimal(1) / div,
            "price": base,
            "close": close,
            "open": base,
            "high": base,
            "low": base,
            "volume": pre_qty,
            "turnover": base * pre_qty,
            "last_qty": pre_qty,
            "ltt": start_epoch - rng.randrange(1, 30),
            "oi": rng.randrange(10_000, 500_000) if inst.instrument_type == "FUT" else 0,
            "lot": lot,
            "index": is_index(inst.token),
        }
        s = state[inst.token]
        s["oi_high"] = s["oi_low"] = s["oi"]

    tape: list[TapeTick] = []
    for second in range(seconds):
        now = start_epoch + second
        events: list[tuple[float, FakeInstrument]] = []
        for inst in instruments:
            n = 1 if state[inst.token]["index"] else rng.choice((0, 1, 1, 2, 3))
            events.extend((rng.random(), inst) for _ in range(n))
        events.sort(key=lambda e: e[0])
        for _, inst in events:
            s = state[inst.token]
            grid: Decimal = s["grid"]
            trade = s["index"] or rng.random() < 0.7
            if trade:
                step = rng.choice((-2, -1, -1, 0, 0, 1, 1, 2))
                s["price"] = max(grid, s["price"] + step * grid)
                s["high"] = max(s["high"], s["price"])
                s["low"] = min(s["low"], s["price"])
                if not s["index"]:
                    qty = rng.choice((1, 1, 2, 5, 10, 25, 50, 100)) * s["lot"]
                    s["volume"] += qty
                    s["last_qty"] = qty
                    s["turnover"] += s["price"] * qty
                    s["ltt"] = now
                    if s["oi"]:
                        s["oi"] = max(1, s["oi"] + rng.randrange(-3, 4) * s["lot"])
                        s["oi_high"] = max(s["oi_high"], s["oi"])
                        s["oi_low"] = min(s["oi_low"], s["oi"])
            if s["index"]:
                tape.append(
                    TapeTick(
                        inst.token,
                        s["price"],
                        0,
                        0,
                        now,
                        open=s["open"],
                        high=s["high"],
                        low=s["low"],
                        close=s["close"],
                    )
                )
                continue
            avg = (s["turnover"] / s["volume"]).quantize(s["div"]) if s["volume"] else s["price"]
            bids = tuple(
                DepthLevel(rng.randrange(1, 500) * s["lot"], s["price"] - (i + 1) * grid, rng.randrange(1, 20))
                for i in range(5)
                if s["price"] - (i + 1) * grid > 0
            )
            asks = tuple(
                DepthLevel(rng.randrange(1, 500) * s["lot"], s["price"] + (i + 1) * grid, rng.randrange(1, 20)) for i in range(5)
            )
            tape.append(
                TapeTick(
                    inst.token,
                    s["price"],
                    s["last_qty"],
                    s["volume"],
                    now,
                    oi=s["oi"],
                    last_trade_ts=s["ltt"],
                    average_price=avg,
                    total_buy_quantity=sum(b.quantity for b in bids) * rng.randrange(20, 200),
                    total_sell_quantity=sum(a.quantity for a in asks) * rng.randrange(20, 200),
                    open=s["open"],
                    high=s["high"],
                    low=s["low"],
                    close=s["close"],
                    oi_day_high=s["oi_high"],
                    oi_day_low=s["oi_low"],
                    bids=bids,
                    asks=asks,
                )
            )
    return tape


# --------------------------------------------------------------------------------------------------
# Historical candles from the tape (sans-I/O)
# --------------------------------------------------------------------------------------------------

#: Kite's interval names -> bucket width in seconds ("day" is the IST calendar day).
HISTORICAL_INTERVALS = {
    "minute": 60, "3minute": 180, "5minute": 300, "10minute": 600, "15minute": 900,
    "30minute": 1800, "60minute": 3600, "day": 86_400,
}  # fmt: skip
#: The longest range one request may ask for, in calendar days, per interval (Kite's published limits).
HISTORICAL_MAX_DAYS = {
    "minute": 60, "3minute": 100, "5minute": 100, "10minute": 100, "15minute": 200,
    "30minute": 200, "60minute": 400, "day": 2000,
}  # fmt: skip
_IST_OFFSET = 19_800
_SESSION_ANCHOR = (9 * 3600 + 15 * 60 - _IST_OFFSET) % 86_400  # 09:15 IST as epoch seconds mod a day


def historical_bucket(epoch: int, interval: str) -> int:
    """Epoch seconds of the start of ``interval``'s candle holding ``epoch``: intraday buckets are
    aligned to 09:15 IST (60minute: 09:15-10:15 ...), ``day`` is the IST calendar day."""
    width = HISTORICAL_INTERVALS[interval]
    if interval == "day":
        return (epoch + _IST_OFFSET) // 86_400 * 86_400 - _IST_OFFSET
    return (epoch - _SESSION_ANCHOR) // width * width + _SESSION_ANCHOR


def historical_candles(ticks: Iterable[TapeTick], interval: str, start: int, end: int, oi: bool = False) -> list[list[Any]]:
    """Kite's ``data.candles`` rows for one instrument's ``ticks`` (in the order the exchange sent
    them) whose bucket starts in ``[start, end]`` (epoch seconds; both ends inclusive).

    The rules, as far as Kite's are public; where they are not, the choice is ours and says so:

    - A tick is placed by its exchange time, in the bucket ``historical_bucket`` gives.
    - Only trades move OHLC: a tick whose cumulative day volume rose (indices, which carry no
      volume, trade on every tick). A bucket without a trade has no candle, as Kite omits minutes
      in which an instrument did not trade.
    - Volume is the rise in cumulative day volume from the last tick before the bucket to the last
      tick in it. The day's first tick counts from zero, so its pre-open volume lands in its bucket
      (assumed: the 09:15 candle carries the pre-open trades) and the day's candles add up to the
      day's volume. A new IST day, or cumulative volume falling (a tape replayed), starts from zero again.
    - OI (the seventh value when ``oi``) is the open interest of the bucket's last tick.
    """
    rows: dict[int, list[Any]] = {}
    day = None
    base = 0  # cumulative volume before the current tick, for the current day
    for t in ticks:
        tick_day = (t.exchange_ts + _IST_OFFSET) // 86_400
        if tick_day != day or t.volume < base:
            day, base = tick_day, 0
        index = is_index(t.token)
        traded = index or t.volume > base
        bucket = historical_bucket(t.exchange_ts, interval)
        row = rows.get(bucket)
        if traded:
            if row is None:
                row = rows[bucket] = [bucket, t.last_price, t.last_price, t.last_price, t.last_price, 0, t.oi]
            else:
                row[2] = max(row[2], t.last_price)
                row[3] = min(row[3], t.last_price)
                row[4] = t.last_price
            row[5] += max(0, t.volume - base)
        if row is not None:
            row[6] = t.oi
        base = max(base, t.volume)
    out = []
    for bucket in sorted(b for b in rows if start <= b <= end):
        row = rows[bucket]
        stamp = datetime.fromtimestamp(bucket, IST).strftime("%Y-%m-%dT%H:%M:%S+0530")
        candle = [stamp, *(float(p) for p in row[1:5]), row[5]]
        if oi:
            candle.append(row[6])
        out.append(candle)
    return out


# --------------------------------------------------------------------------------------------------
# Minimal RFC 6455 server pieces
# --------------------------------------------------------------------------------------------------

_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def _ws_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([n])
    elif n < 1 << 16:
        head += bytes([126]) + struct.pack(">H", n)
    else:
        head += bytes([127]) + struct.pack(">Q", n)
    return head + payload


async def _read_ws_frame(reader: asyncio.StreamReader) -> tuple[bool, int, bytes]:
    b0, b1 = await reader.readexactly(2)
    fin, opcode, masked, n = bool(b0 & 0x80), b0 & 0x0F, bool(b1 & 0x80), b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack(">H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack(">Q", await reader.readexactly(8))
    if n > 16 * 1024 * 1024:
        raise ValueError(f"client frame of {n} bytes is too large")
    mask = await reader.readexactly(4) if masked else b""
    data = await reader.readexactly(n)
    if masked:
        data = bytes(c ^ mask[i % 4] for i, c in enumerate(data))
    return fin, opcode, data


def _http_response(status: int, reason: str, body: bytes = b"", headers: Iterable[tuple[str, str]] = ()) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{k}: {v}" for k, v in headers]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


def _json_error(message: str, error_type: str = "TokenException") -> bytes:
    return json.dumps({"status": "error", "message": message, "data": None, "error_type": error_type}).encode()


# --------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectionInfo:
    """A snapshot of one live WebSocket connection."""

    id: int
    subscribed: dict[int, str]  # token -> mode
    messages: list[Any]  # client text messages, parsed JSON (or the raw string when not JSON)
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names


@dataclass(frozen=True)
class HistoricalRequest:
    """One request to the historical endpoint as the fake saw it."""

    at: float  # time.monotonic() on arrival
    token: int
    interval: str
    query: dict[str, str]
    status: int  # the HTTP status it was answered with


@dataclass(eq=False)
class _Conn:
    id: int
    writer: asyncio.StreamWriter
    query: dict[str, str]
    headers: dict[str, str]
    subscribed: dict[int, str] = field(default_factory=dict)
    messages: list[Any] = field(default_factory=list)
    last_sent: float = field(default_factory=time.monotonic)
    closed: bool = False

    def send(self, opcode: int, payload: bytes) -> None:
        if self.closed or self.writer.is_closing():
            return
        self.writer.write(_ws_frame(opcode, payload))
        if opcode != OP_PONG:
            self.last_sent = time.monotonic()


class KiteFakeServer:
    """Kite Connect v3 on loopback: ``ws_url`` (market data) and ``api_url`` (REST) plus fault switches."""

    def __init__(
        self,
        *,
        api_key: str = "fake_key",
        api_secret: str = "fake_secret",
        access_token: str = "fake_token",
        instruments: Sequence[FakeInstrument] = DEFAULT_INSTRUMENTS,
        heartbeat_interval: float = 1.0,
        max_connections: int = 3,
        max_per_connection: int = 3000,
        ws_port: int = 0,
        api_port: int = 0,
        redirect_url: str = "http://127.0.0.1/callback",
        user_id: str = "AB1234",
    ) -> None:
        self.api_key = api_key
        self.api_secret = api_secret
        self.instruments = tuple(instruments)
        self.heartbeat_interval = heartbeat_interval
        self.max_connections = max_connections
        self.max_per_connection = max_per_connection
        self.redirect_url = redirect_url
        self.user_id = user_id
        self._ws_port = ws_port
        self._api_port = api_port

        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._access_token = access_token
        self._valid_tokens: set[str] = {access_token}
        self._token_serial = 0
        self._request_token = secrets.token_hex(16)
        self._reject = False
        self._down = False
        self._muted = False
        self._conns: dict[int, _Conn] = {}
        self._next_id = 1
        self._last: dict[int, TapeTick] = {}  # resolved last snapshot per token
        #: time.monotonic() when a packet of each token was first sent to any connection
        self.first_sent: dict[int, float] = {}
        self.handshakes = 0  # successful upgrades (101)
        self.rejected_handshakes = 0  # upgrades refused with 403, 429 or 503
        self.rest_requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, headers)
        #: seconds the instruments dump waits before its reply (a slow download at start-up)
        self.instruments_delay = 0.0
        #: a canned ``(status, body)`` the instruments dump answers with instead (a garbled or
        #: truncated download, an error page); ``None``: the dump of ``instruments``
        self.instruments_reply: tuple[int, bytes] | None = None
        # The historical API. ``_history`` is every tick put on the tape, per token, in the order
        # sent, whether or not a client was connected (or the server muted) at the time.
        self._history: dict[int, list[TapeTick]] = {}
        #: False: the app has no historical data add-on (403 PermissionException on every request)
        self.historical_access = True
        #: requests per second per API key before 429 (None: no limit)
        self.historical_rate_limit: int | None = 3
        #: seconds each historical reply waits (a slow API)
        self.historical_delay = 0.0
        self._historical_faults: list[int] = []  # statuses the next requests answer with
        self._historical_accepted: dict[str, list[float]] = {}  # API key -> arrival times let through
        self.historical_requests: list[HistoricalRequest] = []

        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._ws_server: asyncio.base_events.Server | None = None
        self._http: ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self._tape_threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self.ws_url = ""
        self.api_url = ""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> KiteFakeServer:
        self._stopping.clear()
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._loop_thread = threading.Thread(target=self._run_loop, args=(ready,), name="kite-fake-ws", daemon=True)
        self._loop_thread.start()
        if not ready.wait(5):
            raise RuntimeError("kite fake WebSocket server did not start within 5 s")
        fut = asyncio.run_coroutine_threadsafe(self._start_ws(), self._loop)
        port = fut.result(5)
        self.ws_url = f"ws://127.0.0.1:{port}"

        self._http = ThreadingHTTPServer(("127.0.0.1", self._api_port), _make_rest_handler(self))
        self._http.daemon_threads = True
        self._http_thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.05}, name="kite-fake-rest", daemon=True
        )
        self._http_thread.start()
        self.api_url = f"http://127.0.0.1:{self._http.server_address[1]}"
        log.debug("kite fake server on %s and %s", self.ws_url, self.api_url)
        return self

    def stop(self) -> None:
        self._stopping.set()
        for t in self._tape_threads:
            t.join(5)
        self._tape_threads.clear()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._loop is not None and self._loop.is_running():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._stop_ws(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._loop_thread is not None:
            self._loop_thread.join(5)
            self._loop_thread = None
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    def __enter__(self) -> KiteFakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run_loop(self, ready: threading.Event) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(ready.set)
        self._loop.run_forever()

    async def _start_ws(self) -> int:
        self._ws_server = await asyncio.start_server(self._handle_client, "127.0.0.1", self._ws_port)
        return self._ws_server.sockets[0].getsockname()[1]

    async def _stop_ws(self) -> None:
        if self._ws_server is not None:
            self._ws_server.close()
        for conn in list(self._conns.values()):
            self._abort(conn)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn`` on the server's loop and return its result (the loop owns the sockets)."""
        if self._loop is None:
            raise RuntimeError("KiteFakeServer is not started: call start() or use it as a context manager")

        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    # ------------------------------------------------------------------ auth state

    @property
    def access_token(self) -> str:
        """The access token a fresh ``generate_session`` returns (valid unless expired)."""
        return self._access_token

    @property
    def request_token(self) -> str:
        """A request_token that ``generate_session`` accepts once."""
        return self._request_token

    @property
    def login_url(self) -> str:
        return f"{self.api_url}/connect/login?api_key={self.api_key}&v=3"

    def _token_ok(self, api_key: str | None, access_token: str | None) -> bool:
        with self._lock:
            return api_key == self.api_key and access_token in self._valid_tokens

    def _issue_session(self) -> dict[str, Any]:
        with self._lock:
            if self._access_token not in self._valid_tokens:  # the old one expired: mint a new one
                self._token_serial += 1
                self._access_token = f"{self._access_token.split('~')[0]}~{self._token_serial}"
                self._valid_tokens.add(self._access_token)
            self._request_token = secrets.token_hex(16)  # request tokens are single-use
            token = self._access_token
        return {
            "user_type": "individual",
            "email": "fake@example.com",
            "user_name": "Fake User",
            "user_shortname": "Fake",
            "broker": "ZERODHA",
            "exchanges": ["NSE", "BSE", "NFO", "CDS", "MCX"],
            "products": ["CNC", "NRML", "MIS"],
            "order_types": ["MARKET", "LIMIT", "SL", "SL-M"],
            "avatar_url": None,
            "user_id": self.user_id,
            "api_key": self.api_key,
            "access_token": token,
            "public_token": "fake_public_" + token,
            "refresh_token": "",
            "enctoken": "fake_enctoken",
            "login_time": datetime.now(IST).strftime("%Y-%m-%d %H:%M:%S"),
            "meta": {"demat_consent": "consent"},
        }

    # ------------------------------------------------------------------ faults

    def reject_tokens(self, on: bool = True) -> None:
        """While on, every WebSocket upgrade is answered with HTTP 403 (as for an expired token)."""
        with self._lock:
            self._reject = on

    def expire_access_token(self) -> None:
        """Expire the current access token: WS upgrades with it get 403, REST calls get 403 TokenException.

        Also switches ``reject_tokens`` on. A new login (``request_token`` → ``generate_session``) issues
        a fresh access token that REST accepts; call ``reject_tokens(False)`` to let it through the WS too.
        """
        with self._lock:
            self._valid_tokens.discard(self._access_token)
            self._reject = True

    def go_down(self, on: bool = True) -> None:
        """An outage at the broker's end: drop every connection and answer upgrades with 503 until
        ``go_down(False)``; the tape goes on (the historical API serves what was sent meanwhile)."""
        with self._changed:
            self._down = on
        if on:
            self.drop_all()

    def go_mute(self, on: bool = True) -> None:
        """Keep sockets open but send nothing: no ticks, heartbeats, replies or pongs (``send_raw`` still sends)."""
        with self._lock:
            self._muted = on

    def drop_all(self) -> None:
        """Close every WebSocket connection abruptly: TCP close, no close frame."""
        self._call(lambda: [self._abort(c) for c in list(self._conns.values())])

    def _abort(self, conn: _Conn) -> None:
        conn.closed = True
        conn.writer.transport.abort()
        self._forget(conn)

    def _forget(self, conn: _Conn) -> None:
        with self._changed:
            if self._conns.pop(conn.id, None) is not None:
                self._changed.notify_all()

    # ------------------------------------------------------------------ observation

    @property
    def connections(self) -> list[ConnectionInfo]:
        with self._lock:
            return [
                ConnectionInfo(c.id, dict(c.subscribed), list(c.messages), dict(c.query), dict(c.headers))
                for c in self._conns.values()
            ]

    @property
    def last_connection_id(self) -> int:
        """The id of the newest WebSocket connection accepted so far (0 before the first); ids only grow.
        Pass it to ``wait_subscribed(after=...)`` to wait for connections opened from then on."""
        with self._lock:
            return self._next_id - 1

    def wait_subscribed(
        self, tokens: Iterable[int], timeout: float = 5.0, *, mode: str | None = None, after: int = 0
    ) -> None:
        """Block until every token is subscribed on some connection (in ``mode`` if given) whose id is
        above ``after`` (see ``last_connection_id``). A client that was killed leaves its connection
        here until the server has read its end: ``after`` keeps that one from counting for the next."""
        wanted = set(tokens)

        def missing() -> set[int]:
            have: dict[int, set[str]] = {}
            for c in self._conns.values():
                if c.id <= after:
                    continue
                for t, m in c.subscribed.items():
                    have.setdefault(t, set()).add(m)
            return {t for t in wanted if t not in have or (mode is not None and mode not in have[t])}

        with self._changed:
            if not self._changed.wait_for(lambda: not missing(), timeout):
                raise TimeoutError(
                    f"tokens {sorted(missing())} not subscribed{' in ' + mode + ' mode' if mode else ''}"
                    f"{f' on a connection after #{after}' if after else ''} after {timeout} s; "
                    f"connections: {[(c.id, dict(c.subscribed)) for c in self._conns.values()]}"
                )

    def wait_connections(self, n: int, timeout: float = 5.0) -> None:
        """Block until exactly ``n`` WebSocket connections are live."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._conns) == n, timeout):
                raise TimeoutError(f"expected {n} live connections, have {len(self._conns)} after {timeout} s")

    def last_tick(self, token: int) -> TapeTick | None:
        """The last snapshot sent (or that would have been sent) for ``token``, with every field filled in."""
        with self._lock:
            return self._last.get(token)

    # ------------------------------------------------------------------ streaming

    def _resolve(self, tick: TapeTick) -> TapeTick:
        """Fill the fields a tape left out from what the server has seen for that token (lock held)."""
        prev = self._last.get(tick.token)
        p = tick.last_price
        close = tick.close if tick.close is not None else (prev.close if prev else p)
        open_ = tick.open if tick.open is not None else (prev.open if prev else p)
        high = tick.high if tick.high is not None else max(p, prev.high) if prev and prev.high is not None else p
        low = tick.low if tick.low is not None else min(p, prev.low) if prev and prev.low is not None else p
        return replace(
            tick,
            close=close,
            open=open_,
            high=high,
            low=low,
            average_price=tick.average_price if tick.average_price is not None else p,
            last_trade_ts=tick.last_trade_ts if tick.last_trade_ts is not None else tick.exchange_ts,
        )

    def send_ticks(self, ticks: Sequence[TapeTick], mode: str | None = None) -> int:
        """Send ``ticks`` to every connection subscribed to their tokens, each in that connection's mode
        for the token (or ``mode`` if given). Packets are grouped into frames; a frame holds at most one
        packet per token, as an exchange snapshot does. Returns the number of packets sent."""
        if mode is not None and mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}: use one of {MODES}")
        with self._lock:
            resolved = []
            for t in ticks:
                r = self._resolve(t)
                encode_packet(r, "full")  # fail here, in the caller's thread, on values the wire cannot carry
                self._last[t.token] = r
                self._history.setdefault(t.token, []).append(r)
                resolved.append(r)
        return self._call(self._send_resolved, resolved, mode)

    def _send_resolved(self, ticks: Sequence[TapeTick], mode: str | None, only: _Conn | None = None) -> int:
        if self._muted:
            return 0
        sent = 0
        for conn in [only] if only else list(self._conns.values()):
            frame: list[bytes] = []
            in_frame: set[int] = set()
            for t in ticks:
                m = conn.subscribed.get(t.token)
                if m is None:
                    continue
                if t.token in in_frame or len(frame) >= 1000:
                    conn.send(OP_BINARY, encode_frame(frame))
                    frame, in_frame = [], set()
                frame.append(encode_packet(t, mode or m))
                in_frame.add(t.token)
                sent += 1
                if t.token not in self.first_sent:
                    self.first_sent[t.token] = time.monotonic()
            if frame:
                conn.send(OP_BINARY, encode_frame(frame))
        return sent

    def play_tape(self, ticks: Sequence[TapeTick], rate: float | None = None) -> None:
        """Stream ``ticks`` in the background at ``rate`` ticks/s (None: all at once). See ``wait_tape``."""
        ticks = list(ticks)

        def run() -> None:
            if rate is None:
                self.send_ticks(ticks)
                return
            start = time.monotonic()
            i = 0
            while i < len(ticks) and not self._stopping.is_set():
                due = int((time.monotonic() - start) * rate) + 1
                if due > i:
                    self.send_ticks(ticks[i:due])
                    i = due
                self._stopping.wait(min(0.01, 1 / rate))

        t = threading.Thread(target=run, name="kite-fake-tape", daemon=True)
        self._tape_threads.append(t)
        t.start()

    def wait_tape(self, timeout: float = 10.0) -> bool:
        """Block until every ``play_tape`` has finished; False on timeout."""
        deadline = time.monotonic() + timeout
        for t in list(self._tape_threads):
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._tape_threads)

    def send_raw(self, frame: bytes | str) -> None:
        """Send one WebSocket message to every connection as is: bytes as binary, str as text."""
        opcode, payload = (OP_TEXT, frame.encode()) if isinstance(frame, str) else (OP_BINARY, bytes(frame))
        self._call(lambda: [c.send(opcode, payload) for c in list(self._conns.values())])

    # ------------------------------------------------------------------ WebSocket connection handling

    async def _handle_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn: _Conn | None = None
        try:
            conn = await self._handshake(reader, writer)
            if conn is None:
                return
            hb = asyncio.ensure_future(self._heartbeats(conn))
            try:
                await self._read_loop(conn, reader)
            finally:
                hb.cancel()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            log.debug("kite fake: connection ended: %r", exc)
        finally:
            if conn is not None:
                conn.closed = True
                self._forget(conn)
            writer.close()

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> _Conn | None:
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        method, target, _ = (lines[0].split(" ") + ["", "", ""])[:3]
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        query = {k: v[-1] for k, v in parse_qs(urlsplit(target).query).items()}
        key = headers.get("sec-websocket-key")
        if method != "GET" or "websocket" not in headers.get("upgrade", "").lower() or not key:
            writer.write(_http_response(400, "Bad Request", b"expected a WebSocket upgrade"))
            await writer.drain()
            return None
        with self._changed:
            if self._down:
                status = (503, "Service Unavailable", _json_error("Service unavailable.", "NetworkException"))
            elif self._reject or not self._token_ok(query.get("api_key"), query.get("access_token")):
                status = (403, "Forbidden", _json_error("Incorrect `api_key` or `access_token`."))
            elif len(self._conns) >= self.max_connections:
                status = (429, "Too Many Requests", _json_error("Too many connections.", "NetworkException"))
            else:
                status = None
                conn = _Conn(self._next_id, writer, query, headers)
                self._next_id += 1
                self._conns[conn.id] = conn
                self.handshakes += 1
                self._changed.notify_all()
            if status is not None:
                self.rejected_handshakes += 1
        if status is not None:
            code, reason, body = status
            writer.write(_http_response(code, reason, body, [("Content-Type", "application/json")]))
            await writer.drain()
            return None
        accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()
        writer.write(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        return conn

    async def _heartbeats(self, conn: _Conn) -> None:
        step = max(0.01, self.heartbeat_interval / 5)
        while not conn.closed:
            await asyncio.sleep(step)
            if not self._muted and time.monotonic() - conn.last_sent >= self.heartbeat_interval:
                conn.send(OP_BINARY, HEARTBEAT)

    async def _read_loop(self, conn: _Conn, reader: asyncio.StreamReader) -> None:
        parts: list[bytes] = []
        first_op = OP_TEXT
        while not conn.closed:
            fin, opcode, data = await _read_ws_frame(reader)
            if opcode == OP_PING:
                if not self._muted:
                    conn.send(OP_PONG, data)
            elif opcode == OP_PONG:
                pass
            elif opcode == OP_CLOSE:
                conn.send(OP_CLOSE, data[:2] if len(data) >= 2 else b"")
                await conn.writer.drain()
                return
            else:
                if opcode != OP_CONT:
                    first_op, parts = opcode, []
                parts.append(data)
                if fin:
                    self._on_message(conn, first_op, b"".join(parts))
                    parts = []
            await conn.writer.drain()

    # ------------------------------------------------------------------ client → server messages

    def _reply_error(self, conn: _Conn, message: str) -> None:
        if not self._muted:
            conn.send(OP_TEXT, json.dumps({"type": "error", "data": message}).encode())

    def _on_message(self, conn: _Conn, opcode: int, payload: bytes) -> None:
        if opcode != OP_TEXT:
            with self._lock:
                conn.messages.append(payload)
            self._reply_error(conn, "Binary messages are not accepted: send JSON text.")
            return
        text = payload.decode("utf-8", "replace")
        try:
            msg = json.loads(text)
        except ValueError:
            with self._lock:
                conn.messages.append(text)
            self._reply_error(conn, f"Invalid message: {text[:100]}")
            return
        with self._changed:
            conn.messages.append(msg)
            self._changed.notify_all()
        action = msg.get("a") if isinstance(msg, dict) else None
        value = msg.get("v") if isinstance(msg, dict) else None
        if action in ("subscribe", "unsubscribe"):
            tokens = _tokens(value)
            if tokens is None:
                self._reply_error(conn, f"Invalid {action} value: expected a list of instrument tokens")
                return
            if action == "subscribe":
                self._subscribe(conn, tokens)
            else:
                with self._changed:
                    for t in tokens:
                        conn.subscribed.pop(t, None)
                    self._changed.notify_all()
        elif action == "mode":
            if not (isinstance(value, list) and len(value) == 2 and value[0] in MODES and _tokens(value[1]) is not None):
                self._reply_error(conn, 'Invalid mode value: expected ["ltp"|"quote"|"full", [tokens]]')
                return
            mode, tokens = value[0], _tokens(value[1]) or []
            with self._changed:
                changed = [t for t in tokens if t in conn.subscribed]  # a mode before subscribe does nothing
                for t in changed:
                    conn.subscribed[t] = mode
                self._changed.notify_all()
                snapshot = [self._last[t] for t in changed if t in self._last]
            self._send_resolved(snapshot, None, only=conn)
        else:
            self._reply_error(conn, f"Unknown action: {str(action)[:50]}")

    def _subscribe(self, conn: _Conn, tokens: list[int]) -> None:
        with self._changed:
            new = [t for t in dict.fromkeys(tokens) if t not in conn.subscribed]
            if len(conn.subscribed) + len(new) > self.max_per_connection:
                over = True
            else:
                over = False
                for t in new:
                    conn.subscribed[t] = "quote"
                self._changed.notify_all()
            snapshot = [] if over else [self._last[t] for t in dict.fromkeys(tokens) if t in self._last]
        if over:
            self._reply_error(conn, f"Can't subscribe to more than {self.max_per_connection} instruments.")
            return
        self._send_resolved(snapshot, None, only=conn)

    # ------------------------------------------------------------------ historical API

    def fail_historical(self, *statuses: int) -> None:
        """Answer the next historical requests (past the token check) with these HTTP statuses, in
        order, each with Kite's error body: 429 ``NetworkException`` "Too many requests", 500
        ``GeneralException``, 502 ``DataException``, 503/504 ``NetworkException``."""
        with self._lock:
            self._historical_faults.extend(statuses)

    def history(self, token: int) -> list[TapeTick]:
        """Every tick put on the tape for ``token`` so far, resolved, in the order sent."""
        with self._lock:
            return list(self._history.get(token, ()))

    def clear_history(self) -> None:
        """Forget the tape the historical API serves (a tape replayed with the same times would mix with it)."""
        with self._lock:
            self._history.clear()

    def historical_reply(
        self, api_key: str, access_token: str, token_text: str, interval: str, query: dict[str, str]
    ) -> tuple[int, bytes]:
        """The status and JSON body for ``GET /instruments/historical/{token}/{interval}?{query}``.

        Checked in this order (Kite does not document its order; this one is ours): the access
        token (403 ``TokenException``), the rate limit (429), injected faults, the app's access
        (403 ``PermissionException``), then the parameters (400 ``InputException``).

        Wording: "Too many requests" (``NetworkException``, 429), "Insufficient permission for that
        call." (``PermissionException``, 403) and "interval exceeds max limit: 60 days"
        (``InputException``) are what Kite is reported to send. The texts for a bad date, a bad
        interval, an unknown token and a reversed range could not be confirmed and are ours; so is
        inclusiveness of ``to`` (a candle starting exactly at ``to`` is returned) and counting the
        range limit in calendar dates (``to`` date - ``from`` date + 1 <= the limit; the stricter reading).
        ``continuous=1`` is accepted and changes nothing (the fake has no expired contracts).
        """
        now = time.monotonic()
        token_num = int(token_text) if token_text.isdigit() else -1

        def answer(status: int, body: bytes) -> tuple[int, bytes]:
            with self._lock:
                self.historical_requests.append(HistoricalRequest(now, token_num, interval, dict(query), status))
            return status, body

        def bad(message: str) -> tuple[int, bytes]:
            return answer(400, _json_error(message, "InputException"))

        if not self._token_ok(api_key, access_token):
            return answer(403, _json_error("Incorrect `api_key` or `access_token`.", "TokenException"))
        with self._lock:
            limit = self.historical_rate_limit
            if limit is not None:
                recent = [t for t in self._historical_accepted.get(api_key, []) if now - t < 1.0]
                if len(recent) >= limit:
                    self._historical_accepted[api_key] = recent
                    limited = True
                else:
                    self._historical_accepted[api_key] = [*recent, now]
                    limited = False
            else:
                limited = False
            fault = self._historical_faults.pop(0) if self._historical_faults and not limited else None
        if limited:
            return answer(429, _json_error("Too many requests", "NetworkException"))
        if fault is not None:
            kinds = {429: ("Too many requests", "NetworkException"), 500: ("Something went wrong.", "GeneralException"),
                     502: ("Bad gateway.", "DataException")}  # fmt: skip
            message, kind = kinds.get(fault, ("Service unavailable.", "NetworkException"))
            return answer(fault, _json_error(message, kind))
        if not self.historical_access:
            return answer(403, _json_error("Insufficient permission for that call.", "PermissionException"))
        if interval not in HISTORICAL_INTERVALS:
            return bad("invalid interval")
        if token_num < 0 or not any(i.token == token_num for i in self.instruments):
            return bad("invalid token")
        bounds = []
        for name in ("from", "to"):
            text = query.get(name, "")
            for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
                try:
                    bounds.append(datetime.strptime(text, fmt).replace(tzinfo=IST))
                    break
                except ValueError:
                    continue
            else:
                return bad(f"invalid {name} date")
        start, end = bounds
        if start > end:
            return bad("invalid date range: from is after to")
        if (end.date() - start.date()).days + 1 > HISTORICAL_MAX_DAYS[interval]:
            return bad(f"interval exceeds max limit: {HISTORICAL_MAX_DAYS[interval]} days")
        flags = {}
        for name in ("continuous", "oi"):
            value = query.get(name, "0")
            if value not in ("0", "1"):
                return bad(f"invalid {name}: use 0 or 1")
            flags[name] = value == "1"
        if self.historical_delay:
            self._stopping.wait(self.historical_delay)
        candles = historical_candles(self.history(token_num), interval, int(start.timestamp()), int(end.timestamp()), flags["oi"])
        return answer(200, json.dumps({"status": "success", "data": {"candles": candles}}).encode())

    # ------------------------------------------------------------------ REST

    def instruments_csv(self, exchange: str | None = None) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(INSTRUMENTS_CSV_HEADER.split(","))
        for inst in self.instruments:
            if exchange is None or inst.exchange == exchange:
                w.writerow(inst.csv_row())
        return buf.getvalue()


def _tokens(value: Any) -> list[int] | None:
    if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t <= _U32_MAX for t in value):
        return None
    return list(value)


def _make_rest_handler(server: KiteFakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "KiteFake/1.0"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
            log.debug("kite fake REST: " + format, *args)

        def _send(self, status: int, body: bytes, content_type: str, extra: Iterable[tuple[str, str]] = ()) -> None:
            if "gzip" in self.headers.get("Accept-Encoding", "") and content_type.startswith("text/csv"):
                body = gzip.compress(body)
                extra = [*extra, ("Content-Encoding", "gzip")]
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for k, v in extra:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _ok(self, data: Any) -> None:
            self._send(200, json.dumps({"status": "success", "data": data}).encode(), "application/json")

        def _error(self, status: int, message: str, error_type: str) -> None:
            self._send(status, _json_error(message, error_type), "application/json")

        def _authorised(self) -> bool:
            auth = self.headers.get("Authorization", "")
            scheme, _, cred = auth.partition(" ")
            key, _, token = cred.partition(":")
            if scheme == "token" and server._token_ok(key, token):
                return True
            self._error(403, "Incorrect `api_key` or `access_token`.", "TokenException")
            return False

        def _record(self) -> tuple[str, dict[str, list[str]]]:
            url = urlsplit(self.path)
            with server._lock:
                server.rest_requests.append((self.command, url.path, {k.lower(): v for k, v in self.headers.items()}))
            return url.path.rstrip("/") or "/", parse_qs(url.query)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path, query = self._record()
            if path == "/connect/login":
                if query.get("api_key", [""])[0] != server.api_key:
                    self._error(400, "Invalid `api_key`.", "InputException")
                    return
                location = f"{server.redirect_url}?request_token={server.request_token}&action=login&status=success"
                self._send(302, b"", "text/html", [("Location", location)])
            elif path == "/user/profile":
                if self._authorised():
                    self._ok(
                        {
                            "user_id": server.user_id,
                            "user_type": "individual",
                            "email": "fake@example.com",
                            "user_name": "Fake User",
                            "user_shortname": "Fake",
                            "broker": "ZERODHA",
                            "exchanges": ["NSE", "BSE", "NFO", "CDS", "MCX"],
                            "products": ["CNC", "NRML", "MIS"],
                            "order_types": ["MARKET", "LIMIT", "SL", "SL-M"],
                            "avatar_url": None,
                            "meta": {"demat_consent": "consent"},
                        }
                    )
            elif path.startswith("/instruments/historical/"):
                parts = path.split("/")
                if len(parts) != 5:
                    self._error(404, f"Route not found: GET {path}", "GeneralException")
                    return
                scheme, _, cred = self.headers.get("Authorization", "").partition(" ")
                key, _, token = cred.partition(":") if scheme == "token" else ("", "", "")
                status, body = server.historical_reply(key, token, parts[3], parts[4], {k: v[-1] for k, v in query.items()})
                self._send(status, body, "application/json")
            elif path == "/instruments" or path.startswith("/instruments/"):
                exchange = path.removeprefix("/instruments").strip("/") or None
                if server.instruments_delay:
                    server._stopping.wait(server.instruments_delay)
                status, body = server.instruments_reply or (200, server.instruments_csv(exchange).encode())
                self._send(status, body, "text/csv; charset=utf-8")
            else:
                self._error(404, f"Route not found: GET {path}", "GeneralException")

        def _form(self) -> dict[str, str]:
            n = int(self.headers.get("Content-Length", "0") or 0)
            body = self.rfile.read(n).decode() if n else ""
            return {k: v[-1] for k, v in parse_qs(body).items()}

        def do_POST(self) -> None:  # noqa: N802
            path, _ = self._record()
            form = self._form()
            if path != "/session/token":
                self._error(404, f"Route not found: POST {path}", "GeneralException")
                return
            if form.get("api_key") != server.api_key:
                self._error(403, "Invalid `api_key`.", "TokenException")
                return
            expected = hashlib.sha256((server.api_key + form.get("request_token", "") + server.api_secret).encode()).hexdigest()
            if form.get("request_token") != server.request_token:
                self._error(403, "Token is invalid or has expired.", "TokenException")
            elif form.get("checksum") != expected:
                self._error(403, "Invalid `checksum`.", "TokenException")
            else:
                self._ok(server._issue_session())

        def do_DELETE(self) -> None:  # noqa: N802
            path, query = self._record()
            if path != "/session/token":
                self._error(404, f"Route not found: DELETE {path}", "GeneralException")
                return
            token = query.get("access_token", [""])[0]
            with server._lock:
                server._valid_tokens.discard(token)
            self._ok(True)

    return Handler


# --------------------------------------------------------------------------------------------------
# python -m testkit.fakes.kite_server
# --------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the fake Kite Connect server and stream a random tape forever.")
    parser.add_argument("--port", type=int, default=0, help="WebSocket port (0: any free port)")
    parser.add_argument("--api-port", type=int, default=0, help="REST port (0: any free port)")
    parser.add_argument("--rate", type=float, default=20.0, help="ticks per second")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heartbeat", type=float, default=1.0, help="idle heartbeat interval, seconds")
    args = parser.parse_args(argv)
    server = KiteFakeServer(ws_port=args.port, api_port=args.api_port, heartbeat_interval=args.heartbeat)
    with server:
        print(
            json.dumps(
                {
                    "ws_url": server.ws_url,
                    "api_url": server.api_url,
                    "api_key": server.api_key,
                    "access_token": server.access_token,
                    "request_token": server.request_token,
                }
            ),
            flush=True,
        )
        tape = random_tape(seconds=3600, seed=args.seed)
        try:
            while True:  # replaying the same hour looks like a new trading day to a client (volume drops)
                server.clear_history()
                server.play_tape(tape, rate=args.rate)
                server.wait_tape(timeout=len(tape) / args.rate + 60)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
