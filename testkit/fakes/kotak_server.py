"""A fake Kotak Neo server on loopback: TOTP login, the scrip master and the SFeed ``native_batch`` market feed.

It speaks the wire formats of Kotak's docs (github.com/Kotak-Neo/Kotak-Neo: ``docs/authentication.md``,
``docs/market-data-apis/websocket.md``) byte for byte, so the official SDK (``kotakneoapi``, import
name ``neo_api_client``) and our own client can both be pointed at it. Like ``kite_server``, it
shares nothing with the project's ``brokers/`` package: its packet encoder is written here from the
spec, so a misreading cannot hide in both.

Four loopback endpoints, as in production, so a client that mixes up hosts fails here too:

- ``login_url``   stands for ``https://mis.kotaksecurities.com`` (``/login/1.0/tradeApiLogin``, ``/tradeApiValidate``)
- ``api_url``     the ``baseUrl`` that validate returns (``/script-details/1.0/masterscrip/file-paths``)
- ``lapi_url``    stands for ``https://lapi.kotaksecurities.com`` (the ``5config`` service and the CSV files)
- ``ws_url``      the SFeed WebSocket (any path is accepted; ``feedUrl`` says ``/apifeed``, the config
  service says ``/betafeed`` so a test can tell which one a client used)

The WebSocket side is a small RFC 6455 server on asyncio in a background thread (the frame functions come
from ``kite_server``), because the faults we need — cutting sockets without a close frame, going silent
while ignoring pings — are what libraries make hard. The REST side is three ``http.server`` threads.

Where kotakneoapi 3.0.9 (the production client) and the spec differ, the fake follows the SDK:

- CAS packets (code 104): Kotak's docs give a 48-byte packet ``i32 token, i32 ref_price, i64, i64,
  char[15]``; the SDK reads only ``u32, u32, i64, i64`` from @9 and drops packets whose three values are
  all zero. The fake sends the docs' 48-byte layout, which the SDK decodes to the same values.
- Index packets: the SDK divides the index ``multiplier`` by the price divider (a raw 1 becomes 0.01);
  the spec lists it as a plain integer. The fake sends the raw integer.
- The SDK's default SFeed URL is ``wss://sfeed.kotaksecurities.com/apifeed`` (the spec says ``/betafeed``
  after commit 864a861); neither matters here because both ``feedUrl`` and the config service point at
  the fake.
- ``NeoAPI.create_websocket``'s docstring says ``auth`` is the session token; its code (and the spec)
  send the session *sid*. The fake checks ``user`` = UCC and ``auth`` = the sid of a live session.
- The SDK asks for the 1109 subscribe ack with ``"ack_symbol": true`` and says the server sends it only
  then; the spec is silent. The fake acks only subscribe/snapshot frames that ask for it.
- The SDK ignores the market-status wire text for codes it knows and uses its own wording.

Things the spec leaves open, and what the fake does (each can be switched where it matters):

- Auth reply: ``auth_codes=(1119,)`` (the SDK's test example); ``(1117,)`` or ``(1119, 1117)`` on request.
- 1109 ack shape: ``ack_mode`` "merged" (one frame with the docs' ``data`` map *and* the SDK's top-level
  ``trading_symbols`` map), "doc", "sdk", "both" (two frames, the docs' first) or "none".
- Going past the 3000-token limit: the whole frame is refused with a 1109 carrying ``error_code`` 1, a
  ``description`` and empty maps (so a waiting SDK call returns), and nothing is subscribed.
- 1120 reply: ``{"message_code":1120,"message":"Auth failed: ..."}``, then a close frame (1000), then TCP close.
- Wrong credentials: HTTP 401 with the docs' body (``credential_errors="http_401"``) or HTTP 200 with
  ``stCode``/``errMsg`` (``"http_200"``; "Invalid TOTP" and "Invalid consumer key" extrapolate the spec's
  "Invalid UCC"/"Invalid MPIN"). A missing header gives the 10512 body with HTTP 400 (status not in the spec).
- feedUrl and the config endpoints use ``http://`` (no TLS here) where production uses ``https://``;
  a client must map http→ws just as it maps https→wss.
- Index rows are listed in the nse_cm/bse_cm master with ``pInstType`` "INDEX" and the subscribe name
  as ``pTrdSymbol``; production lists are not known to contain them: ``index_rows=False`` leaves them
  out of the files (the feed still knows the indices by name, as the SDK subscribes them).
- No application heartbeat and no server pings; pings are answered with pongs.
- A feed outage (``go_down``): connections are cut without a close frame and upgrades get HTTP 503
  until it ends; the login and REST hosts stay up and sessions stay valid.

Usage::

    with KotakFakeServer() as server:
        client = NeoAPI(consumer_key=server.consumer_key)     # with its base URLs pointed at the fake
        client.totp_login(mobile_number=server.mobile_number, ucc=server.ucc, totp=server.totp_now())
        client.totp_validate(mpin=server.mpin)
        ...
        server.wait_subscribed(["nse_cm|1594"])
        server.send_ticks(random_tape(seconds=5))
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import csv
import hashlib
import io
import json
import logging
import random
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pyotp

from testkit.fakes.kite_server import (
    _WS_GUID,
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    _http_response,
    _read_ws_frame,
    _snap,
    _ws_frame,
)

log = logging.getLogger(__name__)

IST = timezone(timedelta(hours=5, minutes=30))

# --------------------------------------------------------------------------------------------------
# Wire constants (the SFeed native_batch format)
# --------------------------------------------------------------------------------------------------

EXCHANGE_IDS: dict[str, int] = {
    "nse_cm": 1, "nse_fo": 2, "cde_fo": 3, "nse_com": 4, "bse_cm": 5,
    "bse_fo": 6, "bse_cd": 7, "bse_co": 8, "mcx_fo": 9, "ncd_co": 10,
}  # fmt: skip
DEFAULT_DIVIDERS: dict[str, int] = {
    "nse_cm": 100, "nse_fo": 100, "cde_fo": 10_000_000, "nse_com": 10_000, "bse_cm": 100,
    "bse_fo": 100, "bse_cd": 10_000_000, "bse_co": 10_000, "mcx_fo": 100, "ncd_co": 1,
}  # fmt: skip

MSG_AUTH_OK, MSG_AUTH_INITIAL, MSG_AUTH_FAILED, MSG_SUBSCRIBE_ACK = 1117, 1119, 1120, 1109
MSG_INDEX, MSG_MARKET_PICTURE, MSG_MARKET_STATUS, MSG_CAS = 7207, 7208, 105, 104
MSG_MARKET_OPEN, MSG_MARKET_CLOSE = 6511, 6521

HEADER_SIZE = 9
INDEX_PACKET_SIZE = 87
MINI_PACKET_SIZE = 54
MARKET_PICTURE_SIZE = 144  # without depth rows
DEPTH_ROW_SIZE = 16
MARKET_STATUS_SIZE = 16
CAS_PACKET_SIZE = 48

_HEADER = struct.Struct("<HHbBBBB")
_INDEX_BODY = struct.Struct("<IiiiiiQiiidBi21s")
_MINI_BODY = struct.Struct("<IqIqIiiIBI")
_MP_BODY = struct.Struct("<IqqqqqIIIIIqIIIIhiIdiIIIIIBI")
_DEPTH_ROW = struct.Struct("<qii")
_STATUS_BODY = struct.Struct("<H5s")
_CAS_BODY = struct.Struct("<iiqq15s")

# Subscription intents and their control events; levels of the market-picture packet per intent.
INTENTS = ("scrips_lite", "scrips", "depth", "full_depth", "index")
SUBSCRIBE_EVENTS = {
    "subscribeScripsLite": "scrips_lite", "subscribeScrips": "scrips", "subscribeDepth": "depth",
    "subscribeFullDepth": "full_depth", "subscribeIndices": "index",
}  # fmt: skip
UNSUBSCRIBE_EVENTS = {"un" + k: v for k, v in SUBSCRIBE_EVENTS.items()}  # unsubscribeScrips, …
SNAPSHOT_EVENTS = {
    "snapshotScripsLite": "scrips_lite", "snapshotScrips": "scrips", "snapshotDepth": "depth", "snapshotIndices": "index",
}  # fmt: skip
INTENT_LEVELS = {"scrips_lite": 1, "scrips": 4, "depth": 8, "full_depth": 16}
DEPTH_ROWS_PER_SIDE = {4: 1, 8: 5, 16: 20}

MARKET_STATUS_CODES = {
    1: "Open", 2: "Close", 3: "PreopenShutdown", 4: "NormalMktPreopenEnded", 5: "AuctionStatusChange",
    6: "ClosingStart", 7: "ClosingEnd", 8: "CtsCloseForCas", 9: "RevisedPriceBandCompleted", 10: "CasStart",
    11: "MarketOrderRestricted", 12: "CasEnd",
}  # fmt: skip
_STATUS_WIRE_TEXT = {1: "OPEN", 2: "CLOSE"}  # the live feed sends blanks for most other codes (SDK models.py)

_I32 = (-(2**31), 2**31 - 1)
_U32 = (0, 2**32 - 1)
_I64 = (-(2**63), 2**63 - 1)

# --------------------------------------------------------------------------------------------------
# Instruments and the scrip master
# --------------------------------------------------------------------------------------------------

# Expiry quirk: nse_fo and cde_fo files count seconds from 1980-01-01 00:00 IST (unix - 315513000: a
# NIFTY2381017850CE row holds 1376145000, 2023-08-10 14:30 IST); mcx_fo and bse_fo hold Unix time.
EXPIRY_OFFSET = 315513000
_OFFSET_SEGMENTS = ("nse_fo", "cde_fo")
_EXCHANGE_NAMES = {"nse_cm": "NSE", "nse_fo": "NSE", "bse_cm": "BSE", "bse_fo": "BSE", "cde_fo": "CDS", "mcx_fo": "MCX"}

# Header of a real nse_cm file (78 columns; trailing spaces and the ';' are part of the names).
CM_HEADER = (
    "pSymbol,pGroup,pExchSeg,pInstType,pSymbolName,pTrdSymbol,pOptionType,pScripRefKey,pISIN,pAssetCode,pSubGroup,"
    "pCombinedSymbol,pDesc,pAmcCode,pContractId,dTickSize ,lLotSize,lExpiryDate ,lMultiplier ,lPrecision,dStrikePrice;,"
    "pExchange,pInstName,pExpiryDate,pIssueDate,pMaturityDate,pListingDate,pNoDelStartDate,pNoDelEndDate,"
    "pBookClsStartDate,pBookClsEndDate,pRecordDate,pCreditRating,pReAdminDate,pExpulsionDate,pLocalUpdateTime,"
    "pDeliveryUnits,pPriceUnits,pLastTradingDate,pTenderPeridEndDate,pTenderPeridStartDate,pSellVarMargin,pBuyVarMargin,"
    "pInstrumentInfo,pRemarksText,pSegment,pNav,pNavDate,pMfAmt,pSipSecurity,pFaceValue,pTrdUnits,pExerciseStartDate,"
    "pExerciseEndDate,pElmMargin,pVarMargin,pTotProposedLimitValue,pScripBasePrice,pSettlementType,pCurrectionTime,"
    "iPermittedToTrade,iBoardLotQty ,iMaxOrderSize ,iLotSize,dOpenInterest ,dHighPriceRange ,dLowPriceRange ,"
    "dPriceNum   ,dGenDen,dGenNum,dPriceQuatation ,dIssuerate ,dPriceDen,dWarningQty ,dIssueCapital ,dExposureMargin ,"
    "dMinRedemptionQty ,lFreezeQty"
)
FO_HEADER = CM_HEADER + ",CASEligible"  # a live nse_fo file (Aug 2026) has 79 columns
SCRIP_SEGMENTS = ("nse_cm", "bse_cm", "nse_fo", "bse_fo", "cde_fo", "mcx_fo")
SCRIP_FOLDER = "/wso2-scripmaster/v1/prod"


@dataclass(frozen=True)
class FakeInstrument:
    """One scrip-master row; ``token`` is ``pSymbol``, the number in feed keys like ``nse_cm|1594``.

    For an index, ``trading_symbol`` is the name a client subscribes with (``nse_cm|Nifty 50``) and the
    name the 7207 packet carries; ``token`` is the number the packets carry.
    """

    segment: str
    token: int
    trading_symbol: str  # pTrdSymbol
    symbol_name: str  # pSymbolName
    description: str = ""  # pDesc
    group: str = ""  # pGroup (series)
    inst_type: str = ""  # pInstType: "" for cash, FUTIDX, OPTIDX, FUTCUR, FUTCOM, INDEX
    option_type: str = ""  # pOptionType: CE/PE, XX for futures
    expiry: int | None = None  # Unix seconds; the CSV writes it with the segment's offset quirk
    strike: Decimal | None = None  # rupees; the CSV writes paise
    lot_size: int = 1
    tick_size: Decimal = Decimal("0.05")
    precision: int = 2
    multiplier: int = 1
    isin: str = ""
    is_index: bool = False

    @property
    def key(self) -> str:
        return f"{self.segment}|{self.token}"

    @property
    def feed_key(self) -> str:
        """The key a client subscribes with: the name for an index, ``segment|token`` otherwise."""
        return f"{self.segment}|{self.trading_symbol}" if self.is_index else self.key

    def csv_fields(self) -> dict[str, str]:
        cash = self.segment.endswith("_cm")
        raw_expiry = ""
        if self.expiry is not None:
            raw_expiry = str(self.expiry - EXPIRY_OFFSET if self.segment in _OFFSET_SEGMENTS else self.expiry)
        tick = self.tick_size * 10**self.precision
        strike = Decimal(-1) if self.strike is None else self.strike * 100
        return {
            "pSymbol": str(self.token),
            "pGroup": self.group,
            "pExchSeg": self.segment,
            "pInstType": self.inst_type,
            "pSymbolName": self.symbol_name,
            "pTrdSymbol": self.trading_symbol,
            "pOptionType": self.option_type,
            "pScripRefKey": self.symbol_name if cash else self.trading_symbol,
            "pISIN": self.isin,
            "pDesc": self.description,
            "dTickSize ": str(int(tick)) if cash else _file_number(tick),
            "lLotSize": str(self.lot_size),
            "lExpiryDate ": raw_expiry or "-1",
            "lMultiplier ": "-1" if cash else str(self.multiplier),
            "lPrecision": str(self.precision),
            "dStrikePrice;": str(int(strike)) if cash else _file_number(strike),
            "pExchange": _EXCHANGE_NAMES.get(self.segment, self.segment.split("_")[0].upper()),
            "pInstName": "" if cash else self.inst_type,
            "pExpiryDate": raw_expiry,
            "pMaturityDate": raw_expiry,
            "pSegment": "CASH" if cash else "FO",
            "iLotSize": str(self.lot_size),
            "iBoardLotQty ": str(self.lot_size),
            "iPermittedToTrade": "1",
        }


def _file_number(value: Decimal) -> str:
    """A number as the F&O files write it: C's ``%g`` (``2.6e+06`` for a 26000.00 strike in paise,
    ``5`` for a 0.05 tick), or in full where six significant digits would not hold it exactly."""
    text = f"{float(value):g}"
    return text if Decimal(text) == value else format(value.normalize(), "f")


def _ist_epoch(y: int, mo: int, d: int, h: int, mi: int) -> int:
    return int(datetime(y, mo, d, h, mi, tzinfo=IST).timestamp())


DEFAULT_INSTRUMENTS: tuple[FakeInstrument, ...] = (
    FakeInstrument("nse_cm", 1594, "INFY-EQ", "INFY", "INFOSYS LIMITED", "EQ", isin="INE009A01021"),
    FakeInstrument("nse_cm", 11536, "TCS-EQ", "TCS", "TATA CONSULTANCY SERV LT", "EQ", isin="INE467B01029"),
    FakeInstrument("nse_cm", 2885, "RELIANCE-EQ", "RELIANCE", "RELIANCE INDUSTRIES LTD", "EQ", isin="INE002A01018"),
    FakeInstrument("nse_cm", 26000, "Nifty 50", "NIFTY", "Nifty 50", inst_type="INDEX", lot_size=0, is_index=True),
    FakeInstrument("bse_cm", 1, "SENSEX", "SENSEX", "S&P BSE SENSEX", inst_type="INDEX", lot_size=0, is_index=True),
    FakeInstrument("bse_cm", 500209, "INFY", "INFY", "INFOSYS LTD.", "A", isin="INE009A01021", tick_size=Decimal("0.05")),
    FakeInstrument("nse_fo", 52168, "NIFTY26JANFUT", "NIFTY", "NIFTY 27JAN2026", "XX", "FUTIDX", "XX",
                   expiry=_ist_epoch(2026, 1, 27, 15, 30), lot_size=75, tick_size=Decimal("0.10")),
    FakeInstrument("nse_fo", 52213, "NIFTY26JAN26000CE", "NIFTY", "NIFTY 27JAN2026 CE 26000.00", "XX", "OPTIDX", "CE",
                   expiry=_ist_epoch(2026, 1, 27, 15, 30), strike=Decimal("26000"), lot_size=75),
    FakeInstrument("cde_fo", 1201, "USDINR26JANFUT", "USDINR", "USDINR 27JAN2026", "XX", "FUTCUR", "XX",
                   expiry=_ist_epoch(2026, 1, 27, 12, 0), tick_size=Decimal("0.0025"), precision=4),
    FakeInstrument("mcx_fo", 451669, "CRUDEOIL26JANFUT", "CRUDEOIL", "CRUDEOIL 19JAN2026", "", "FUTCOM", "XX",
                   expiry=_ist_epoch(2026, 1, 19, 23, 30), lot_size=100, tick_size=Decimal("1")),
)  # fmt: skip


def synthetic_instruments(count: int, segment: str = "nse_cm", first_token: int = 100_001) -> tuple[FakeInstrument, ...]:
    """``count`` plain equities ``SYN0001-EQ``… with consecutive tokens (for tests that need hundreds)."""
    return tuple(
        FakeInstrument(segment, first_token + i, f"SYN{i + 1:04d}-EQ", f"SYN{i + 1:04d}", f"SYNTHETIC {i + 1}", "EQ")
        for i in range(count)
    )


# --------------------------------------------------------------------------------------------------
# The derivatives of the Kite fake's ``derivatives_dump``, as Kotak's scrip master lists them
# --------------------------------------------------------------------------------------------------

_KITE_SEGMENTS = {"NFO": "nse_fo", "BFO": "bse_fo", "MCX": "mcx_fo", "CDS": "cde_fo"}
_INDEX_NAMES = ("NIFTY", "BANKNIFTY", "FINNIFTY", "MIDCPNIFTY", "NIFTYNXT50", "SENSEX", "BANKEX")
#: The underlyings' rows ``derivatives_scrip_master`` adds to ``DEFAULT_INSTRUMENTS``' cash rows.
UNDERLYING_INSTRUMENTS: tuple[FakeInstrument, ...] = (
    FakeInstrument("nse_cm", 26009, "Nifty Bank", "BANKNIFTY", "Nifty Bank", inst_type="INDEX", lot_size=0, is_index=True),
)


def _expiry_instant(segment: str, day: date) -> int:
    """When a contract of ``day`` expires as the segment's files write it: NSE's and BSE's at 14:30
    IST; MCX's files give the expiry day's 23:59:59 as Unix time read in UTC (a CRUDEOIL option of
    14 May 2026 holds 1778803199), which in IST is already the next day."""
    if segment == "mcx_fo":
        return int(datetime(day.year, day.month, day.day, 23, 59, 59, tzinfo=timezone.utc).timestamp())
    return int(datetime(day.year, day.month, day.day, 14, 30, tzinfo=IST).timestamp())


def derivative_instruments(today: date | None = None, strikes_each_side: int = 10) -> tuple[FakeInstrument, ...]:
    """The futures and options of the Kite fake's ``derivatives_dump(today, strikes_each_side)``
    (NIFTY, BANKNIFTY, RELIANCE on nse_fo, SENSEX on bse_fo, CRUDEOIL on mcx_fo, weekly and monthly
    expiries, and the dump's older futures) as scrip-master rows: the same underlyings, trading
    symbols, expiries, strikes, lot and tick sizes; ``pSymbol`` is Kite's exchange token."""
    from testkit.fakes.kite_server import derivatives_dump

    rows: list[FakeInstrument] = []
    for k in derivatives_dump(today, strikes_each_side):
        segment = _KITE_SEGMENTS.get(k.exchange)
        if segment is None or k.instrument_type not in ("FUT", "CE", "PE") or not k.expiry:
            continue
        future = k.instrument_type == "FUT"
        day = date.fromisoformat(k.expiry)
        if segment == "mcx_fo":
            inst_type = "FUTCOM" if future else "OPTFUT"
        elif segment == "cde_fo":
            inst_type = "FUTCUR" if future else "OPTCUR"
        else:
            inst_type = ("FUT" if future else "OPT") + ("IDX" if k.name in _INDEX_NAMES else "STK")
        strike = None if future else Decimal(k.strike)
        rows.append(
            FakeInstrument(
                segment, k.exchange_token, k.tradingsymbol, k.name,
                f"{k.name} {day:%d%b%Y}".upper() + ("" if future else f" {k.instrument_type} {strike:.2f}"),
                "XX", inst_type, "XX" if future else k.instrument_type, expiry=_expiry_instant(segment, day),
                strike=strike, lot_size=k.lot_size, tick_size=Decimal(k.tick_size),
                precision=4 if segment == "cde_fo" else 2,
            )
        )  # fmt: skip
    return tuple(rows)


def derivatives_scrip_master(today: date | None = None, strikes_each_side: int = 10) -> tuple[FakeInstrument, ...]:
    """A scrip master a derivatives universe resolves from the same way as from the Kite fake's
    ``derivatives_dump(today)``: ``DEFAULT_INSTRUMENTS``' cash rows (their own F&O rows left out),
    the indices' rows and ``derivative_instruments``. Serve it with ``KotakFakeServer(instruments=...)``."""
    cash = tuple(i for i in DEFAULT_INSTRUMENTS if i.segment.endswith("_cm"))
    return (*cash, *UNDERLYING_INSTRUMENTS, *derivative_instruments(today, strikes_each_side))


def scrip_csv(instruments: Iterable[FakeInstrument], segment: str) -> str:
    """The scrip-master CSV of one segment, header quirks included."""
    header = (CM_HEADER if segment.endswith("_cm") else FO_HEADER).split(",")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for inst in instruments:
        if inst.segment == segment:
            values = inst.csv_fields()
            w.writerow([values.get(name, "") for name in header])
    return buf.getvalue()


def scrip_file_name(segment: str) -> str:
    """Cash segments live under ``transformed-v1/<seg>-v1.csv``, the rest under ``transformed/<seg>.csv``."""
    return f"transformed-v1/{segment}-v1.csv" if segment.endswith("_cm") else f"transformed/{segment}.csv"


def truncated_scrip_csv(text: str, share: float) -> str:
    """The first ``share`` of a scrip master file's characters: a download cut short mid-row."""
    return text[: int(len(text) * share)]


# --------------------------------------------------------------------------------------------------
# Ticks
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DepthLevel:
    quantity: int
    price: Decimal
    orders: int


@dataclass(frozen=True)
class TapeTick:
    """One exchange snapshot of one instrument, with exact prices.

    Fields left ``None`` are filled by the server from what it has seen for that instrument (day open =
    first price, running high/low, previous close = first price, average = last price, last-trade time =
    exchange time, traded value = average × volume); the circuit and 52-week values default to zero.
    """

    segment: str
    token: int
    last_price: Decimal
    last_quantity: int
    volume: int  # cumulative for the day
    exchange_ts: int  # epoch seconds: last_update_time of a market picture, last_trade_time of an index
    oi: int = 0
    last_trade_ts: int | None = None
    average_price: Decimal | None = None
    total_buy_quantity: int = 0
    total_sell_quantity: int = 0
    open: Decimal | None = None
    high: Decimal | None = None
    low: Decimal | None = None
    close: Decimal | None = None  # previous day's close
    upper_circuit: Decimal | None = None
    lower_circuit: Decimal | None = None
    yearly_high: Decimal | None = None
    yearly_low: Decimal | None = None
    total_traded_value: Decimal | None = None
    bids: tuple[DepthLevel, ...] = ()
    asks: tuple[DepthLevel, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.segment}|{self.token}"


def net_change_percent_raw(last: Decimal, close: Decimal) -> int:
    """``net_chg_percent`` on the wire: percent × 100, rounded half up (1.1934 % → 119)."""
    if not close:
        return 0
    return int(((Decimal(last) - close) / close * 10_000).to_integral_value(ROUND_HALF_UP))


# --------------------------------------------------------------------------------------------------
# Encoder (sans-I/O)
# --------------------------------------------------------------------------------------------------


def _int(value: int, what: str, bounds: tuple[int, int]) -> int:
    if not bounds[0] <= value <= bounds[1]:
        raise ValueError(f"{what}={value} does not fit its wire field ({bounds[0]}..{bounds[1]})")
    return value


def _raw(value: Decimal | int | None, divider: int, what: str, bounds: tuple[int, int] = _U32) -> int:
    scaled = Decimal(value or 0) * divider
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{what}={value} is not a multiple of 1/{divider}: the feed cannot carry it")
    return _int(int(scaled), what, bounds)


def _exchange_id(segment: str) -> int:
    try:
        return EXCHANGE_IDS[segment]
    except KeyError:
        raise ValueError(f"unknown exchange segment {segment!r}: use one of {sorted(EXCHANGE_IDS)}") from None


def _divider(segment: str, divider: int | None) -> int:
    return divider if divider is not None else DEFAULT_DIVIDERS.get(segment, 100)


def encode_header(length: int, code: int, segment: str, level: int = 0, seq: int = 0, auction: int = 0) -> bytes:
    """The 9-byte packet header; ``length`` counts the whole packet including this field."""
    return _HEADER.pack(length, code, _exchange_id(segment), level, auction, seq & 0xFF, 0)


def _filled(t: TapeTick) -> TapeTick:
    p = t.last_price
    return replace(
        t,
        open=p if t.open is None else t.open,
        high=p if t.high is None else t.high,
        low=p if t.low is None else t.low,
        close=p if t.close is None else t.close,
        average_price=p if t.average_price is None else t.average_price,
        last_trade_ts=t.exchange_ts if t.last_trade_ts is None else t.last_trade_ts,
    )


def encode_market_picture(
    tick: TapeTick,
    level: int = 8,
    *,
    divider: int | None = None,
    market_lot: int = 1,
    precision: int = 2,
    multiplier: int = 1,
    seq: int = 0,
    auction: int = 0,
    trading_status: int = 0,
) -> bytes:
    """A 7208 market-picture packet (144 bytes + 16 per depth row).

    Level 4 carries exactly one bid and one ask (zero rows when the tick has none); levels 8 and 16
    carry up to 5 and 20 rows per side, as many as the tick has, counted in the buy/sell depth counts.
    """
    if level not in (2, 4, 8, 16):
        raise ValueError(f"market-picture level {level}: use 2, 4, 8 or 16")
    div = _divider(tick.segment, divider)
    t = _filled(tick)
    per_side = DEPTH_ROWS_PER_SIDE.get(level, 5)
    bids, asks = list(t.bids[:per_side]), list(t.asks[:per_side])
    if level == 4:
        bids = bids or [DepthLevel(0, Decimal(0), 0)]
        asks = asks or [DepthLevel(0, Decimal(0), 0)]
    net_chg = Decimal(t.last_price) - t.close
    ttv = t.total_traded_value if t.total_traded_value is not None else t.average_price * t.volume
    ttv_raw = Decimal(ttv) * div
    if ttv_raw != ttv_raw.to_integral_value():
        raise ValueError(f"total_traded_value={ttv} is not a multiple of 1/{div}")
    body = _MP_BODY.pack(
        _int(t.token, "token", _U32),
        _int(t.total_buy_quantity, "total_buy_quantity", _I64),
        _int(t.total_sell_quantity, "total_sell_quantity", _I64),
        _int(t.volume, "volume", _I64),
        _int(t.last_trade_ts, "last_trade_ts", _I64),
        _int(t.exchange_ts, "exchange_ts", _I64),
        _raw(t.open, div, "open"),
        _raw(t.close, div, "close"),
        _raw(t.high, div, "high"),
        _raw(t.low, div, "low"),
        _raw(t.last_price, div, "last_price"),
        _int(t.last_quantity, "last_quantity", _I64),
        _raw(t.average_price, div, "average_price"),
        0,  # indicative close
        len(bids),
        len(asks),
        trading_status,
        net_change_percent_raw(t.last_price, t.close),
        _int(t.oi, "oi", _U32),
        float(ttv_raw),
        _raw(net_chg, div, "net change", _I32),
        _raw(t.upper_circuit, div, "upper_circuit"),
        _raw(t.lower_circuit, div, "lower_circuit"),
        _raw(t.yearly_high, div, "yearly_high"),
        _raw(t.yearly_low, div, "yearly_low"),
        _int(market_lot, "market_lot", _U32),
        precision,
        _int(multiplier, "multiplier", _U32),
    )
    rows = b"".join(
        _DEPTH_ROW.pack(_int(lv.quantity, "depth quantity", _I64), _raw(lv.price, div, "depth price", _I32), lv.orders)
        for lv in (*bids, *asks)
    )
    length = HEADER_SIZE + len(body) + len(rows)
    return encode_header(length, MSG_MARKET_PICTURE, t.segment, level, seq, auction) + body + rows


def encode_mini(
    tick: TapeTick,
    *,
    divider: int | None = None,
    market_lot: int = 1,
    precision: int = 2,
    multiplier: int = 1,
    seq: int = 0,
) -> bytes:
    """A 54-byte mini touch line (7208, level 1). ``close`` is scaled by the divider, as the SDK reads it."""
    div = _divider(tick.segment, divider)
    t = _filled(tick)
    body = _MINI_BODY.pack(
        _int(t.token, "token", _U32),
        _int(t.last_trade_ts, "last_trade_ts", _I64),
        _raw(t.last_price, div, "last_price"),
        _int(t.last_quantity, "last_quantity", _I64),
        _raw(t.close, div, "close"),
        net_change_percent_raw(t.last_price, t.close),
        _raw(Decimal(t.last_price) - t.close, div, "net change", _I32),
        _int(market_lot, "market_lot", _U32),
        precision,
        _int(multiplier, "multiplier", _U32),
    )
    return encode_header(MINI_PACKET_SIZE, MSG_MARKET_PICTURE, t.segment, 1, seq) + body


def encode_index(
    tick: TapeTick,
    name: str,
    *,
    divider: int | None = None,
    precision: int = 2,
    multiplier: int = 1,
    seq: int = 0,
) -> bytes:
    """An 87-byte index packet (7207); ``exchange_ts`` becomes its last_trade_time."""
    div = _divider(tick.segment, divider)
    t = _filled(tick)
    encoded_name = name.encode()
    if len(encoded_name) > 21:
        raise ValueError(f"index name {name!r} is longer than the 21 bytes of its wire field")
    body = _INDEX_BODY.pack(
        _int(t.token, "token", _U32),
        _raw(t.open, div, "open", _I32),
        _raw(t.close, div, "close", _I32),
        _raw(t.high, div, "high", _I32),
        _raw(t.low, div, "low", _I32),
        _raw(t.last_price, div, "index value", _I32),
        _int(t.exchange_ts, "exchange_ts", (0, 2**64 - 1)),
        _raw(t.yearly_high, div, "yearly_high", _I32),
        _raw(t.yearly_low, div, "yearly_low", _I32),
        net_change_percent_raw(t.last_price, t.close),
        0.0,  # market cap: unused by clients
        precision,
        _int(multiplier, "multiplier", _I32),
        encoded_name,
    )
    return encode_header(INDEX_PACKET_SIZE, MSG_INDEX, t.segment, 0, seq) + body


def encode_market_status(segment: str, status_code: int, status: str | None = None, seq: int = 0) -> bytes:
    """A 16-byte market-status packet (105): u16 code and a 5-byte text."""
    text = (_STATUS_WIRE_TEXT.get(status_code, "") if status is None else status).encode()[:5]
    return encode_header(MARKET_STATUS_SIZE, MSG_MARKET_STATUS, segment, 0, seq) + _STATUS_BODY.pack(status_code, text)


def encode_market_event(segment: str, opened: bool, seq: int = 0) -> bytes:
    """A header-only market open (6511) or close (6521) packet."""
    return encode_header(HEADER_SIZE, MSG_MARKET_OPEN if opened else MSG_MARKET_CLOSE, segment, 0, seq)


def encode_cas(
    segment: str,
    token: int,
    ref_price: Decimal,
    imbalance_qty: int,
    imbalance_qty_at_market: int,
    *,
    divider: int | None = None,
    seq: int = 0,
) -> bytes:
    """A 48-byte closing-auction reference packet (104) in the docs' layout (the SDK reads its first 24 body bytes)."""
    div = _divider(segment, divider)
    body = _CAS_BODY.pack(
        _int(token, "token", _I32),
        _raw(ref_price, div, "ref_price", _I32),
        _int(imbalance_qty, "imbalance_qty", _I64),
        _int(imbalance_qty_at_market, "imbalance_qty_at_market", _I64),
        b"",
    )
    return encode_header(CAS_PACKET_SIZE, MSG_CAS, segment, 0, seq) + body


def encode_tick(
    tick: TapeTick, intent: str, instrument: FakeInstrument | None = None, *, divider: int | None = None, seq: int = 0
) -> bytes:
    """The packet a connection subscribed with ``intent`` gets for ``tick``; an index always gets a 7207."""
    inst = instrument or FakeInstrument(tick.segment, tick.token, "", "", is_index=intent == "index")
    if inst.is_index:
        return encode_index(
            tick, inst.trading_symbol, divider=divider, precision=inst.precision, multiplier=inst.multiplier, seq=seq
        )
    level = INTENT_LEVELS.get(intent)
    if level is None:
        raise ValueError(f"unknown intent {intent!r}: use one of {INTENTS}")
    lot = max(inst.lot_size, 1)
    if level == 1:
        return encode_mini(tick, divider=divider, market_lot=lot, precision=inst.precision, multiplier=inst.multiplier, seq=seq)
    return encode_market_picture(
        tick, level, divider=divider, market_lot=lot, precision=inst.precision, multiplier=inst.multiplier, seq=seq
    )


def split_batch(frame: bytes) -> list[bytes]:
    """Cut a binary frame into packets by their u16 lengths (stop at a length < 9 or a short tail)."""
    packets, pos = [], 0
    while pos + 2 <= len(frame):
        (n,) = struct.unpack_from("<H", frame, pos)
        if n < HEADER_SIZE or pos + n > len(frame):
            break
        packets.append(frame[pos : pos + n])
        pos += n
    return packets


# --------------------------------------------------------------------------------------------------
# A deterministic, realistic tape
# --------------------------------------------------------------------------------------------------

_BASE_PRICES = {
    "INFY-EQ": "1573.15", "TCS-EQ": "3212.40", "RELIANCE-EQ": "1456.80", "Nifty 50": "25894.55", "SENSEX": "84512.30",
    "INFY": "1573.20", "NIFTY26JANFUT": "25961.30", "NIFTY26JAN26000CE": "182.45", "USDINR26JANFUT": "90.1225",
    "CRUDEOIL26JANFUT": "5412",
}  # fmt: skip
DEFAULT_START_EPOCH = 1768448700  # 2026-01-15 09:15:00 IST


def random_tape(
    instruments: Sequence[FakeInstrument] = DEFAULT_INSTRUMENTS,
    seconds: int = 60,
    seed: int = 0,
    start_epoch: int = DEFAULT_START_EPOCH,
) -> list[TapeTick]:
    """A deterministic tape of fully specified snapshots, in exchange-time order.

    Each tradable instrument gets 0–3 snapshots per second: mostly trades (price moves on the tick grid,
    cumulative volume and traded value rise), some quote-only repeats (price and volume unchanged, book
    and buy/sell totals change). Indices tick once a second with no volume. The first snapshot of each
    instrument carries the pre-open volume, as a real feed does.
    """
    rng = random.Random(seed)
    state: dict[tuple[str, int], dict[str, Any]] = {}
    for inst in instruments:
        grid = inst.tick_size if inst.tick_size > 0 else Decimal("0.05")
        base = _snap(Decimal(_BASE_PRICES.get(inst.trading_symbol) or rng.randrange(100, 5000)), grid)
        close = _snap(base * Decimal(1 + rng.uniform(-0.01, 0.01)), grid)
        lot = max(inst.lot_size, 1)
        fut = inst.inst_type.startswith(("FUT", "OPT"))
        pre_qty = 0 if inst.is_index else rng.randrange(1, 200) * 10 * lot
        unit = Decimal(1) / DEFAULT_DIVIDERS.get(inst.segment, 100)
        state[(inst.segment, inst.token)] = {
            "grid": grid, "unit": unit, "price": base, "close": close, "open": base, "high": base, "low": base,
            "volume": pre_qty, "turnover": base * pre_qty, "last_qty": pre_qty, "ltt": start_epoch - rng.randrange(1, 30),
            "oi": rng.randrange(10_000, 500_000) * lot if fut else 0, "lot": lot,
            "upper": _snap(close * Decimal("1.2"), grid), "lower": _snap(close * Decimal("0.8"), grid),
            "yh": _snap(base * Decimal("1.3"), grid), "yl": _snap(base * Decimal("0.7"), grid),
        }  # fmt: skip

    tape: list[TapeTick] = []
    for second in range(seconds):
        now = start_epoch + second
        events: list[tuple[float, FakeInstrument]] = []
        for inst in instruments:
            n = 1 if inst.is_index else rng.choice((0, 1, 1, 2, 3))
            events.extend((rng.random(), inst) for _ in range(n))
        events.sort(key=lambda e: e[0])
        for _, inst in events:
            s = state[(inst.segment, inst.token)]
            grid: Decimal = s["grid"]
            if inst.is_index or rng.random() < 0.7:
                s["price"] = max(grid, s["price"] + rng.choice((-2, -1, -1, 0, 0, 1, 1, 2)) * grid)
                s["high"] = max(s["high"], s["price"])
                s["low"] = min(s["low"], s["price"])
                if not inst.is_index:
                    qty = rng.choice((1, 1, 2, 5, 10, 25, 50, 100)) * s["lot"]
                    s["volume"] += qty
                    s["last_qty"] = qty
                    s["turnover"] += s["price"] * qty
                    s["ltt"] = now
                    if s["oi"]:
                        s["oi"] = max(1, s["oi"] + rng.randrange(-3, 4) * s["lot"])
            common = {"open": s["open"], "high": s["high"], "low": s["low"], "close": s["close"],
                      "yearly_high": s["yh"], "yearly_low": s["yl"]}  # fmt: skip
            if inst.is_index:
                tape.append(TapeTick(inst.segment, inst.token, s["price"], 0, 0, now, **common))
                continue
            avg = (s["turnover"] / s["volume"]).quantize(s["unit"]) if s["volume"] else s["price"]
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
                    inst.segment,
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
                    upper_circuit=s["upper"],
                    lower_circuit=s["lower"],
                    total_traded_value=s["turnover"],
                    bids=bids,
                    asks=asks,
                    **common,
                )
            )
    return tape


# --------------------------------------------------------------------------------------------------
# Login replies (the TOTP + MPIN login)
# --------------------------------------------------------------------------------------------------

LOGIN_PATHS = ("/login/1.0/tradeApiLogin", "/api/1.0/login/v6/totp/login")
VALIDATE_PATHS = ("/login/1.0/tradeApiValidate", "/api/1.0/login/v6/totp/validate")
FILE_PATHS_PATH = "/script-details/1.0/masterscrip/file-paths"
CONFIG_PATH = "/5config/config"
NEO_FIN_KEY = "neotradeapi"
DATA_CENTER = "E43"

# Named error replies for ``fail_next``: (HTTP status, body). Body None means a non-JSON HTML page.
ERROR_SHAPES: dict[str, tuple[int, Any]] = {
    "bad_credentials": (401, {"status": "error", "message": "Invalid credentials or TOTP.", "errorCode": "401"}),
    "bad_mpin": (401, {"status": "error", "message": "Invalid MPIN.", "errorCode": "401"}),
    "invalid_ucc_200": (200, {"stCode": 429, "errMsg": "Invalid UCC", "status": "failure"}),
    "invalid_mpin_200": (200, {"stCode": 401, "errMsg": "Invalid MPIN", "status": "failure"}),
    "no_data_200": (200, {"stCode": 5203, "errMsg": "No Data", "status": "failure"}),
    "missing_data": (200, {"status": "success", "message": "ok"}),
    "missing_field": (400, {"error": [{"code": "400", "message": "Missing required field 'Mpin'"}]}),
    "missing_header": (400, {"error": [{"code": "10512", "message": "Required header not found."}]}),
    "invalid_session": (403, {"error": [{"code": "403", "message": "Invalid session"}], "stat": "Not_Ok"}),
    "not_json": (502, None),
}
FAULT_ENDPOINTS = ("login", "validate", "file_paths", "config", "csv")
_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 422: "Unprocessable Entity",
            429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
            504: "Gateway Timeout"}  # fmt: skip


def error_reply(shape: str | int) -> tuple[int, Any]:
    """A named shape from ``ERROR_SHAPES``, or for a bare HTTP status the generic ``{"error":[…],"stat":"Not_Ok"}``."""
    if isinstance(shape, int):
        return shape, {"error": [{"code": str(shape), "message": _REASONS.get(shape, "Error")}], "stat": "Not_Ok"}
    try:
        return ERROR_SHAPES[shape]
    except KeyError:
        raise ValueError(f"unknown error shape {shape!r}: use an HTTP status or one of {sorted(ERROR_SHAPES)}") from None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


_KEY_LOCK = threading.Lock()
_SIGNING_KEY: Any = None


def _signing_key() -> Any:
    global _SIGNING_KEY
    with _KEY_LOCK:
        if _SIGNING_KEY is None:
            from cryptography.hazmat.primitives.asymmetric import rsa

            _SIGNING_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return _SIGNING_KEY


def make_jwt(claims: dict[str, Any]) -> str:
    """An RS256 JWT signed with a key made once per process (Kotak's tokens are RS256; clients cannot verify them)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    signing_input = _b64url(json.dumps({"alg": "RS256", "typ": "JWT"}, separators=(",", ":")).encode())
    signing_input += "." + _b64url(json.dumps(claims, separators=(",", ":")).encode())
    signature = _signing_key().sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + _b64url(signature)


def jwt_public_key_pem() -> bytes:
    """The public half of the key ``make_jwt`` signs with, for tests that verify tokens."""
    from cryptography.hazmat.primitives import serialization

    return _signing_key().public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def next_midnight_ist(now: float) -> int:
    day = datetime.fromtimestamp(now, IST).date() + timedelta(days=1)
    return int(datetime(day.year, day.month, day.day, tzinfo=IST).timestamp())


@dataclass
class _Grant:
    sid: str
    token: str
    kind: str  # "View" or "Trade"
    iat: int
    exp: int
    revoked: bool = False


# --------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectionInfo:
    """A snapshot of one live WebSocket connection."""

    id: int
    path: str
    headers: dict[str, str]  # lower-case names
    auth: dict[str, Any] | None  # the auth frame as the client sent it
    authenticated: bool
    subscriptions: dict[str, frozenset[str]]  # key as sent ("nse_cm|1594", "nse_cm|Nifty 50") -> intents
    exchange_subscribed: bool
    messages: list[Any]  # client text messages, parsed JSON (or the raw string)
    rejected_subscribes: int  # frames refused for going past the token limit

    @property
    def token_count(self) -> int:
        """Input tokens counted against the limit: one per (key, intent)."""
        return sum(len(v) for v in self.subscriptions.values())


@dataclass(eq=False)
class _Conn:
    id: int
    writer: asyncio.StreamWriter
    path: str
    headers: dict[str, str]
    auth: dict[str, Any] | None = None
    authenticated: bool = False
    native: bool = True
    sid: str | None = None
    subs: dict[str, set[str]] = field(default_factory=dict)
    exchange: bool = False
    messages: list[Any] = field(default_factory=list)
    rejected: int = 0
    seq: int = 0
    closed: bool = False

    def send(self, opcode: int, payload: bytes) -> None:
        if self.closed or self.writer.is_closing():
            return
        self.writer.write(_ws_frame(opcode, payload))

    def next_seq(self) -> int:
        s, self.seq = self.seq, (self.seq + 1) & 0xFF
        return s


class KotakFakeServer:
    """Kotak Neo on loopback: login (``login_url``), baseUrl REST (``api_url``), config + CSVs (``lapi_url``) and
    the SFeed WebSocket (``ws_url``), with fault switches."""

    def __init__(
        self,
        *,
        consumer_key: str = "fake-consumer-key-0001",
        mobile_number: str = "+919999912345",
        ucc: str = "FAKE1",
        mpin: str = "123456",
        totp_secret: str = "FAKEKOTAKNEOTOTPSECRETFORTESTSAA",
        instruments: Sequence[FakeInstrument] = DEFAULT_INSTRUMENTS,
        token_lifetime: float | None = None,
        clock: Callable[[], float] = time.time,
        dividers: dict[str, int] | None = None,
        auth_codes: Sequence[int] = (MSG_AUTH_INITIAL,),
        ack_mode: str = "merged",
        ack_first: bool = True,
        snapshot_on_subscribe: bool = True,
        snapshot_delay: float = 0.0,
        max_per_connection: int = 3000,
        batch_size: int = 100,
        credential_errors: str = "http_401",
        reject_reused_totp: bool = False,
        config_service: bool = True,
        index_rows: bool = True,
        ws_port: int = 0,
        login_port: int = 0,
        api_port: int = 0,
        lapi_port: int = 0,
    ) -> None:
        if ack_mode not in ("merged", "doc", "sdk", "both", "none"):
            raise ValueError(f"ack_mode {ack_mode!r}: use merged, doc, sdk, both or none")
        if credential_errors not in ("http_401", "http_200"):
            raise ValueError(f"credential_errors {credential_errors!r}: use http_401 or http_200")
        self.consumer_key = consumer_key
        self.mobile_number = mobile_number
        self.ucc = ucc
        self.mpin = mpin
        self.totp_secret = totp_secret
        self.instruments = tuple(instruments)
        self.index_rows = index_rows  # False: the scrip master files list no INDEX rows
        #: segment -> a canned ``(status, body)`` its scrip master file answers with instead (a garbled
        #: or truncated download, an error page); see ``truncated_scrip_csv``
        self.scrip_replies: dict[str, tuple[int, str]] = {}
        self.token_lifetime = token_lifetime  # seconds; None: until the next midnight IST
        self.clock = clock
        self.dividers = dict(DEFAULT_DIVIDERS if dividers is None else dividers)
        self.auth_codes = tuple(auth_codes)
        self.ack_mode = ack_mode
        self.ack_first = ack_first
        self.snapshot_on_subscribe = snapshot_on_subscribe
        #: a subscription's snapshot holds the state at subscribe time but goes out this many seconds
        #: later, after ticks sent meanwhile (an order a busy feed may use)
        self.snapshot_delay = snapshot_delay
        self.max_per_connection = max_per_connection
        self.batch_size = batch_size
        self.credential_errors = credential_errors
        self.reject_reused_totp = reject_reused_totp
        self.config_service = config_service
        self.scrip_master_date = datetime.fromtimestamp(clock(), IST).date().isoformat()
        self._ws_port = 0
        self._ports = {"ws": ws_port, "login": login_port, "api": api_port, "lapi": lapi_port}

        self._lock = threading.RLock()
        self._by_key: dict[str, FakeInstrument] = {}
        self._by_id: dict[tuple[str, int], FakeInstrument] = {}
        self.list_instruments(self.instruments)
        self._changed = threading.Condition(self._lock)
        self._grants: dict[str, _Grant] = {}  # sid -> grant (view and trade)
        self._used_totps: set[str] = set()
        self._faults: dict[str, list[tuple[int, Any]]] = {k: [] for k in FAULT_ENDPOINTS}
        self._reject = False
        self._muted = False
        self._down = False
        self._conns: dict[int, _Conn] = {}
        self._next_id = 1
        self._last: dict[tuple[str, int], TapeTick] = {}
        self._status: dict[str, int] = {}  # segment -> last market status code sent
        self.login_attempts = 0  # tradeApiLogin requests, failed ones included
        self.validate_attempts = 0  # tradeApiValidate requests, failed ones included
        self.logins_completed = 0  # validates that minted a trade token
        self.config_requests = 0
        self.file_paths_requests = 0
        self.csv_downloads = 0
        self.handshakes = 0  # WebSocket upgrades answered with 101
        self.auth_successes = 0
        self.auth_failures = 0  # 1120 replies
        self.rest_requests: list[tuple[str, str, str, dict[str, str], str]] = []  # (host role, method, path, headers, body)

        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._ws_server: asyncio.base_events.Server | None = None
        self._audible: asyncio.Event | None = None
        self._http: dict[str, ThreadingHTTPServer] = {}
        self._http_threads: list[threading.Thread] = []
        self._tape_threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self.ws_url = self.login_url = self.api_url = self.lapi_url = ""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> KotakFakeServer:
        self._stopping.clear()
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._loop_thread = threading.Thread(target=self._run_loop, args=(ready,), name="kotak-fake-ws", daemon=True)
        self._loop_thread.start()
        if not ready.wait(5):
            raise RuntimeError("kotak fake WebSocket server did not start within 5 s")
        port = asyncio.run_coroutine_threadsafe(self._start_ws(), self._loop).result(5)
        self._ws_port = port
        self.ws_url = f"ws://127.0.0.1:{port}/apifeed"
        urls = {}
        for role in ("login", "api", "lapi"):
            httpd = ThreadingHTTPServer(("127.0.0.1", self._ports[role]), _make_rest_handler(self, role))
            httpd.daemon_threads = True
            t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=f"kotak-fake-{role}", daemon=True)
            t.start()
            self._http[role] = httpd
            self._http_threads.append(t)
            urls[role] = f"http://127.0.0.1:{httpd.server_address[1]}"
        self.login_url, self.api_url, self.lapi_url = urls["login"], urls["api"], urls["lapi"]
        log.debug("kotak fake server: login %s, api %s, lapi %s, feed %s", self.login_url, self.api_url, self.lapi_url, self.ws_url)
        return self

    def stop(self) -> None:
        self._stopping.set()
        for t in self._tape_threads:
            t.join(5)
        self._tape_threads.clear()
        for httpd in self._http.values():
            httpd.shutdown()
            httpd.server_close()
        self._http.clear()
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

    def __enter__(self) -> KotakFakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run_loop(self, ready: threading.Event) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(ready.set)
        self._loop.run_forever()

    async def _start_ws(self) -> int:
        self._audible = asyncio.Event()
        if not self._muted:
            self._audible.set()
        self._ws_server = await asyncio.start_server(self._handle_client, "127.0.0.1", self._ports["ws"])
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

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` on the server's loop and return its result (the loop owns the sockets)."""
        if self._loop is None:
            raise RuntimeError("KotakFakeServer is not started: call start() or use it as a context manager")

        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    # ------------------------------------------------------------------ addresses and credentials

    @property
    def feed_url(self) -> str:
        """The ``feedUrl`` validate returns: the WebSocket with an http scheme (production: https)."""
        return f"http://127.0.0.1:{self._ws_port}/apifeed"

    @property
    def config_feed_url(self) -> str:
        """The broadcast endpoint the config service returns (production: https)."""
        return f"http://127.0.0.1:{self._ws_port}/betafeed"

    @property
    def login_endpoint(self) -> str:
        return self.login_url + LOGIN_PATHS[0]

    @property
    def validate_endpoint(self) -> str:
        return self.login_url + VALIDATE_PATHS[0]

    @property
    def config_url(self) -> str:
        return self.lapi_url + CONFIG_PATH

    @property
    def file_paths_url(self) -> str:
        return self.api_url + FILE_PATHS_PATH

    def totp_now(self, offset_steps: int = 0) -> str:
        """The TOTP code for the server's clock, ``offset_steps`` × 30 s away."""
        return pyotp.TOTP(self.totp_secret).at(self.clock() + 30 * offset_steps)

    def scrip_csv_url(self, segment: str) -> str:
        return f"{self.lapi_url}{SCRIP_FOLDER}/{self.scrip_master_date}/{scrip_file_name(segment)}"

    def list_instruments(self, instruments: Sequence[FakeInstrument]) -> None:
        """Serve ``instruments`` from now on (a new day's scrip master: contracts listed and expired)."""
        by_key: dict[str, FakeInstrument] = {}
        by_id: dict[tuple[str, int], FakeInstrument] = {}
        for inst in instruments:
            by_id[(inst.segment, inst.token)] = inst
            by_key[inst.key] = inst
            by_key[inst.feed_key] = inst
        with self._lock:
            self.instruments = tuple(instruments)
            self._by_key, self._by_id = by_key, by_id

    def scrip_master_csv(self, segment: str) -> str:
        """The scrip master file of ``segment`` as served (without ``scrip_replies``)."""
        listed = self.instruments if self.index_rows else [i for i in self.instruments if not i.is_index]
        return scrip_csv(listed, segment)

    def instrument(self, key: str) -> FakeInstrument | None:
        """Look up ``segment|token`` or, for an index, ``segment|name``."""
        return self._find(key)

    def _find(self, key: str) -> FakeInstrument | None:
        inst = self._by_key.get(key)
        if inst is None and "|" in key:
            seg, _, name = key.partition("|")
            low = name.strip().lower()
            inst = next((i for i in self.instruments if i.is_index and i.segment == seg and i.trading_symbol.lower() == low), None)
        return inst

    # ------------------------------------------------------------------ auth state

    def _mint(self, kind: str) -> _Grant:
        now = int(self.clock())
        exp = now + int(self.token_lifetime) if self.token_lifetime is not None else next_midnight_ist(now)
        sid = str(uuid.uuid4())
        claims = {
            "sub": str(uuid.uuid4()), "jti": str(uuid.uuid4()), "iss": "login-service", "scope": [kind], "kType": kind,
            "ucc": self.ucc, "nap": "", "iat": now, "exp": exp,
        }  # fmt: skip
        grant = _Grant(sid, make_jwt(claims), kind, now, exp)
        with self._lock:
            self._grants[sid] = grant
        return grant

    def _grant_ok(self, sid: Any, kind: str) -> _Grant | None:
        with self._lock:
            g = self._grants.get(sid) if isinstance(sid, str) else None
            if g is None or g.kind != kind or g.revoked or self.clock() >= g.exp:
                return None
            return g

    @property
    def session_tokens(self) -> list[str]:
        """Every trade token minted so far, oldest first."""
        with self._lock:
            return [g.token for g in self._grants.values() if g.kind == "Trade"]

    @property
    def session_sids(self) -> list[str]:
        """Every trade sid minted so far, oldest first (the SFeed ``auth`` value)."""
        with self._lock:
            return [g.sid for g in self._grants.values() if g.kind == "Trade"]

    def grant_session(self) -> tuple[str, str]:
        """Mint a trade token and sid without the REST login (for feed tests); returns (token, sid)."""
        g = self._mint("Trade")
        return g.token, g.sid

    # ------------------------------------------------------------------ faults

    def fail_next(self, endpoint: str, shape: str | int, times: int = 1) -> None:
        """Answer the next ``times`` requests to ``endpoint`` (login, validate, file_paths, config, csv) with an
        error: a name from ``ERROR_SHAPES`` or an HTTP status (generic error body). Counters still count them."""
        if endpoint not in FAULT_ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}: use one of {FAULT_ENDPOINTS}")
        reply = error_reply(shape)
        with self._lock:
            self._faults[endpoint].extend([reply] * times)

    def reject_sessions(self, on: bool = True) -> None:
        """While on, every SFeed auth frame gets the 1120 reply and the socket is closed."""
        with self._lock:
            self._reject = on

    def expire_sessions(self, kick: bool = False) -> None:
        """Expire every token and sid minted so far: REST validate and SFeed auth with them fail (1120 + close).
        With ``kick``, live connections authenticated with them get the 1120 reply and are closed now."""
        with self._lock:
            for g in self._grants.values():
                g.revoked = True
        if kick and self._loop is not None:
            self._call(lambda: [self._kick(c, "session expired") for c in list(self._conns.values()) if c.authenticated])

    def go_mute(self, on: bool = True) -> None:
        """Behave like a dead link: send nothing (no replies, ticks, pongs, close frames, no 101 to new upgrades),
        and hold what clients send until unmuted, then handle it in order. ``send_raw`` still sends."""
        with self._lock:
            self._muted = on
        if self._loop is not None and self._audible is not None:
            self._loop.call_soon_threadsafe(self._audible.clear if on else self._audible.set)

    def go_down(self, on: bool = True) -> None:
        """An outage of the feed: cut every connection (TCP close, no close frame) and answer WebSocket
        upgrades with HTTP 503 until ``go_down(False)``, as the load balancer in front of a feed that is
        down would (Kotak publishes no outage behaviour). Login and REST stay up; sessions stay valid;
        ``send_ticks`` goes on recording the last tick of each instrument (a resubscription's snapshot)."""
        with self._changed:
            self._down = on
        if on:
            self.drop_all()

    def drop_all(self) -> None:
        """Cut every WebSocket connection: TCP close with no close frame."""
        self._call(lambda: [self._abort(c) for c in list(self._conns.values())])

    def close_all(self, code: int = 1000, reason: str = "") -> None:
        """Close every WebSocket connection cleanly: a close frame with ``code``, then TCP close."""

        def run() -> None:
            for c in list(self._conns.values()):
                c.send(OP_CLOSE, struct.pack(">H", code) + reason.encode())
                c.closed = True
                c.writer.close()
                self._forget(c)

        self._call(run)

    def _abort(self, conn: _Conn) -> None:
        conn.closed = True
        conn.writer.transport.abort()
        self._forget(conn)

    def _kick(self, conn: _Conn, why: str) -> None:
        """The 1120 reply, a close frame, then TCP close (buffered frames are flushed first)."""
        self._send(conn, OP_TEXT, json.dumps({"message_code": MSG_AUTH_FAILED, "message": f"Auth failed: {why}"}).encode())
        self._send(conn, OP_CLOSE, struct.pack(">H", 1000) + b"Auth failed")
        conn.closed = True
        conn.writer.close()
        self._forget(conn)

    def _forget(self, conn: _Conn) -> None:
        with self._changed:
            if self._conns.pop(conn.id, None) is not None:
                self._changed.notify_all()

    def _send(self, conn: _Conn, opcode: int, payload: bytes) -> None:
        if not self._muted:
            conn.send(opcode, payload)

    # ------------------------------------------------------------------ observation

    @property
    def connections(self) -> list[ConnectionInfo]:
        with self._lock:
            return [
                ConnectionInfo(
                    c.id,
                    c.path,
                    dict(c.headers),
                    c.auth,
                    c.authenticated,
                    {k: frozenset(v) for k, v in c.subs.items()},
                    c.exchange,
                    list(c.messages),
                    c.rejected,
                )  # fmt: skip
                for c in self._conns.values()
            ]

    def wait_subscribed(self, keys: Iterable[str], timeout: float = 5.0, *, intent: str | None = None) -> None:
        """Block until every key (as a client sends it: ``nse_cm|1594``, ``nse_cm|Nifty 50``) is subscribed on
        some live connection (with ``intent`` if given)."""
        wanted = set(keys)

        def missing() -> set[str]:
            have: dict[str, set[str]] = {}
            for c in self._conns.values():
                for k, intents in c.subs.items():
                    have.setdefault(k, set()).update(intents)
            return {k for k in wanted if not have.get(k) or (intent is not None and intent not in have[k])}

        with self._changed:
            if not self._changed.wait_for(lambda: not missing(), timeout):
                raise TimeoutError(
                    f"keys {sorted(missing())[:10]} not subscribed{' as ' + intent if intent else ''} after {timeout} s; "
                    f"connections: {[{k: sorted(v) for k, v in list(c.subs.items())[:10]} for c in self._conns.values()]}"
                )

    def wait_unsubscribed(self, keys: Iterable[str], timeout: float = 5.0, *, intent: str | None = None) -> None:
        """Block until no live connection has any of the keys (under ``intent`` if given)."""
        unwanted = set(keys)

        def left() -> set[str]:
            return {k for c in self._conns.values() for k, i in c.subs.items() if k in unwanted and (intent is None or intent in i)}

        with self._changed:
            if not self._changed.wait_for(lambda: not left(), timeout):
                raise TimeoutError(f"keys {sorted(left())[:10]} still subscribed after {timeout} s")

    def wait_connections(self, n: int, timeout: float = 5.0, *, authenticated: bool = False) -> None:
        """Block until exactly ``n`` WebSocket connections are live (and past auth, if asked)."""

        def count() -> int:
            return sum(1 for c in self._conns.values() if c.authenticated or not authenticated)

        with self._changed:
            if not self._changed.wait_for(lambda: count() == n, timeout):
                raise TimeoutError(f"expected {n} live{' authenticated' if authenticated else ''} connections, have {count()}")

    def wait_auth_attempts(self, n: int, timeout: float = 5.0) -> None:
        """Block until ``n`` auth frames have been answered (successes plus failures)."""
        with self._changed:
            if not self._changed.wait_for(lambda: self.auth_successes + self.auth_failures >= n, timeout):
                raise TimeoutError(f"expected {n} auth frames, saw {self.auth_successes + self.auth_failures}")

    def last_tick(self, segment: str, token: int) -> TapeTick | None:
        """The last snapshot sent (or that would have been sent) for an instrument, every field filled in."""
        with self._lock:
            return self._last.get((segment, token))

    # ------------------------------------------------------------------ streaming

    def _resolve(self, tick: TapeTick) -> TapeTick:
        """Fill the fields a tape left out from what the server has seen for that instrument (lock held)."""
        prev = self._last.get((tick.segment, tick.token))
        p = tick.last_price
        avg = tick.average_price if tick.average_price is not None else p
        zero = Decimal(0)
        return replace(
            tick,
            close=tick.close if tick.close is not None else (prev.close if prev else p),
            open=tick.open if tick.open is not None else (prev.open if prev else p),
            high=tick.high if tick.high is not None else (max(p, prev.high) if prev and prev.high is not None else p),
            low=tick.low if tick.low is not None else (min(p, prev.low) if prev and prev.low is not None else p),
            average_price=avg,
            last_trade_ts=tick.last_trade_ts if tick.last_trade_ts is not None else tick.exchange_ts,
            total_traded_value=tick.total_traded_value if tick.total_traded_value is not None else avg * tick.volume,
            upper_circuit=tick.upper_circuit if tick.upper_circuit is not None else zero,
            lower_circuit=tick.lower_circuit if tick.lower_circuit is not None else zero,
            yearly_high=tick.yearly_high if tick.yearly_high is not None else zero,
            yearly_low=tick.yearly_low if tick.yearly_low is not None else zero,
        )

    def _keys(self, segment: str, token: int) -> tuple[str, ...]:
        inst = self._by_id.get((segment, token))
        return (f"{segment}|{token}", inst.feed_key) if inst and inst.is_index else (f"{segment}|{token}",)

    def _encode_for(self, conn: _Conn, tick: TapeTick, intents: Iterable[str]) -> list[tuple[tuple[str, str], bytes]]:
        inst = self._by_id.get((tick.segment, tick.token))
        intents = set(intents)
        div = self.dividers.get(tick.segment, 100)
        if (inst is not None and inst.is_index) or (inst is None and intents == {"index"}):
            return [((tick.key, "index"), encode_tick(tick, "index", inst, divider=div, seq=conn.next_seq()))]
        return [
            ((tick.key, i), encode_tick(tick, i, inst, divider=div, seq=conn.next_seq()))
            for i in INTENTS
            if i in intents and i != "index"
        ]

    def _ship(self, conn: _Conn, packets: list[tuple[tuple[str, str], bytes]]) -> None:
        """Batch packets into frames: at most ``batch_size`` per frame and one snapshot per (instrument, kind)."""
        frame: list[bytes] = []
        seen: set[tuple[str, str]] = set()
        for key, pkt in packets:
            if key in seen or len(frame) >= self.batch_size:
                self._send(conn, OP_BINARY, b"".join(frame))
                frame, seen = [], set()
            frame.append(pkt)
            seen.add(key)
        if frame:
            self._send(conn, OP_BINARY, b"".join(frame))

    def send_ticks(self, ticks: Sequence[TapeTick]) -> int:
        """Send ``ticks`` to every connection subscribed to their instruments, one packet per subscribed intent
        (an index: one 7207). Returns the number of packets sent (0 while muted)."""
        with self._lock:
            resolved = []
            for t in ticks:
                r = self._resolve(t)
                inst = self._by_id.get((t.segment, t.token))
                for intent in ("index",) if inst and inst.is_index else ("scrips_lite", "full_depth"):
                    encode_tick(r, intent, inst, divider=self.dividers.get(t.segment, 100))  # fail in the caller's thread
                self._last[(t.segment, t.token)] = r
                resolved.append(r)
        return self._call(self._send_resolved, resolved)

    def _send_resolved(
        self, ticks: Sequence[TapeTick], only: _Conn | None = None, intents: dict[str, set[str]] | None = None
    ) -> int:
        if self._muted:
            return 0
        sent = 0
        for conn in [only] if only else list(self._conns.values()):
            if not (conn.authenticated and conn.native):
                continue
            subs = conn.subs if intents is None else intents
            packets: list[tuple[tuple[str, str], bytes]] = []
            for t in ticks:
                wanted: set[str] = set()
                for k in self._keys(t.segment, t.token):
                    wanted |= subs.get(k, set())
                if wanted:
                    packets.extend(self._encode_for(conn, t, wanted))
            self._ship(conn, packets)
            sent += len(packets)
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
                due = min(len(ticks), int((time.monotonic() - start) * rate) + 1)
                if due > i:
                    self.send_ticks(ticks[i:due])
                    i = due
                self._stopping.wait(min(0.01, 1 / rate))

        t = threading.Thread(target=run, name="kotak-fake-tape", daemon=True)
        self._tape_threads.append(t)
        t.start()

    def wait_tape(self, timeout: float = 10.0) -> bool:
        """Block until every ``play_tape`` has finished; False on timeout."""
        deadline = time.monotonic() + timeout
        for t in list(self._tape_threads):
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._tape_threads)

    def send_raw(self, frame: bytes | str) -> None:
        """Send one WebSocket message to every connection as is: bytes as binary, str as text (even while muted)."""
        opcode, payload = (OP_TEXT, frame.encode()) if isinstance(frame, str) else (OP_BINARY, bytes(frame))
        self._call(lambda: [c.send(opcode, payload) for c in list(self._conns.values())])

    def send_market_status(self, segment: str, status_code: int, status: str | None = None) -> int:
        """A 105 packet to every connection that sent ``subscribeExchange`` (remembered for later subscribers)."""
        encode_market_status(segment, status_code, status)
        with self._lock:
            self._status[segment] = status_code

        def run() -> int:
            targets = [c for c in self._conns.values() if c.exchange and c.native and not self._muted]
            for c in targets:
                self._send(c, OP_BINARY, encode_market_status(segment, status_code, status, c.next_seq()))
            return len(targets)

        return self._call(run)

    def send_market_event(self, segment: str, opened: bool) -> int:
        """A header-only 6511 (open) or 6521 (close) packet to every authenticated connection."""

        def run() -> int:
            targets = [c for c in self._conns.values() if c.authenticated and c.native and not self._muted]
            for c in targets:
                self._send(c, OP_BINARY, encode_market_event(segment, opened, c.next_seq()))
            return len(targets)

        return self._call(run)

    def send_cas(self, segment: str, token: int, ref_price: Decimal, imbalance_qty: int, imbalance_qty_at_market: int) -> int:
        """A 104 packet to every connection subscribed to that instrument (any non-index intent)."""
        div = self.dividers.get(segment, 100)
        encode_cas(segment, token, ref_price, imbalance_qty, imbalance_qty_at_market, divider=div)

        def run() -> int:
            key = f"{segment}|{token}"
            targets = [c for c in self._conns.values() if c.native and c.subs.get(key, set()) - {"index"} and not self._muted]
            for c in targets:
                pkt = encode_cas(segment, token, ref_price, imbalance_qty, imbalance_qty_at_market, divider=div, seq=c.next_seq())
                self._send(c, OP_BINARY, pkt)
            return len(targets)

        return self._call(run)

    # ------------------------------------------------------------------ WebSocket connection handling

    async def _handle_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn: _Conn | None = None
        try:
            conn = await self._handshake(reader, writer)
            if conn is not None:
                await self._read_loop(conn, reader)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            log.debug("kotak fake: connection ended: %r", exc)
        except asyncio.CancelledError:
            pass  # stop(): end quietly (asyncio would log a cancelled connection handler as an error)
        finally:
            if conn is not None:
                conn.closed = True
                self._forget(conn)
            writer.close()

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> _Conn | None:
        raw = await reader.readuntil(b"\r\n\r\n")
        assert self._audible is not None
        await self._audible.wait()  # a dead link does not answer the upgrade either
        lines = raw.decode("latin-1").split("\r\n")
        method, target, _ = (lines[0].split(" ") + ["", "", ""])[:3]
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        key = headers.get("sec-websocket-key")
        if method != "GET" or "websocket" not in headers.get("upgrade", "").lower() or not key:
            writer.write(_http_response(400, "Bad Request", b"expected a WebSocket upgrade"))
            await writer.drain()
            return None
        if self._down:
            writer.write(_http_response(503, "Service Unavailable", b"Service Unavailable"))
            await writer.drain()
            return None
        with self._changed:
            conn = _Conn(self._next_id, writer, urlsplit(target).path, headers)
            self._next_id += 1
            self._conns[conn.id] = conn
            self.handshakes += 1
            self._changed.notify_all()
        accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()
        writer.write(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        return conn

    async def _read_loop(self, conn: _Conn, reader: asyncio.StreamReader) -> None:
        assert self._audible is not None
        parts: list[bytes] = []
        first_op = OP_TEXT
        while not conn.closed:
            fin, opcode, data = await _read_ws_frame(reader)
            await self._audible.wait()  # while muted, what the client sent waits, as on a dead link
            if conn.closed:
                return
            if opcode == OP_PING:
                self._send(conn, OP_PONG, data)
            elif opcode == OP_PONG:
                pass
            elif opcode == OP_CLOSE:
                self._send(conn, OP_CLOSE, data[:2] if len(data) >= 2 else b"")
                await conn.writer.drain()
                return
            else:
                if opcode != OP_CONT:
                    first_op, parts = opcode, []
                parts.append(data)
                if fin:
                    self._on_message(conn, first_op, b"".join(parts))
                    parts = []
            if not conn.closed:
                await conn.writer.drain()

    # ------------------------------------------------------------------ client → server messages

    def _on_message(self, conn: _Conn, opcode: int, payload: bytes) -> None:
        if opcode != OP_TEXT:
            with self._lock:
                conn.messages.append(payload)
            return
        text = payload.decode("utf-8", "replace")
        try:
            msg: Any = json.loads(text)
        except ValueError:
            msg = text
        with self._changed:
            conn.messages.append(msg)
            self._changed.notify_all()
        if not conn.authenticated:
            self._authenticate(conn, msg)
            return
        if not isinstance(msg, dict):
            return
        event = msg.get("event")
        keys = _input_keys(msg.get("inputtoken"))
        ack = bool(msg.get("ack_symbol"))
        if event in SUBSCRIBE_EVENTS:
            self._subscribe(conn, SUBSCRIBE_EVENTS[event], keys, ack)
        elif event in UNSUBSCRIBE_EVENTS:
            intent = UNSUBSCRIBE_EVENTS[event]
            with self._changed:
                for k in keys:
                    intents = conn.subs.get(k)
                    if intents is not None:
                        intents.discard(intent)
                        if not intents:
                            del conn.subs[k]
                self._changed.notify_all()
        elif event in SNAPSHOT_EVENTS:
            intent = SNAPSHOT_EVENTS[event]
            if ack and self.ack_first:
                self._ack(conn, keys)
            self._snapshot(conn, keys, intent)
            if ack and not self.ack_first:
                self._ack(conn, keys)
        elif event in ("subscribeExchange", "unsubscribeExchange"):
            with self._changed:
                conn.exchange = event == "subscribeExchange"
                statuses = dict(self._status) if conn.exchange else {}
                self._changed.notify_all()
            if conn.native:
                for seg, code in statuses.items():
                    self._send(conn, OP_BINARY, encode_market_status(seg, code, None, conn.next_seq()))

    def _authenticate(self, conn: _Conn, msg: Any) -> None:
        frame = msg if isinstance(msg, dict) else {}
        with self._changed:
            conn.auth = frame or None
            grant = self._grant_ok(frame.get("auth"), "Trade")
            ok = not self._reject and grant is not None and frame.get("user") == self.ucc
            if ok:
                conn.authenticated = True
                conn.sid = grant.sid if grant else None
                conn.native = frame.get("format") == "native_batch"
                self.auth_successes += 1
            else:
                self.auth_failures += 1
            self._changed.notify_all()
        if not ok:
            why = "expected an auth frame" if not frame else "invalid or expired session"
            self._kick(conn, why)
            return
        body: dict[str, Any] = {"id": "SFD_CPROD_701", "version": 1}
        if not conn.native:
            body["format"] = "native_fallback"
        body["exchanges"] = {
            seg: {"value": EXCHANGE_IDS[seg], "divider": d} for seg, d in self.dividers.items() if seg in EXCHANGE_IDS
        }
        for code in self.auth_codes:
            self._send(conn, OP_TEXT, json.dumps({"message_code": code, **body}).encode())

    def _subscribe(self, conn: _Conn, intent: str, keys: list[str], ack: bool) -> None:
        with self._changed:
            new = {k for k in keys if intent not in conn.subs.get(k, set())}
            count = sum(len(v) for v in conn.subs.values())
            over = count + len(new) > self.max_per_connection
            if over:
                conn.rejected += 1
            else:
                for k in keys:
                    conn.subs.setdefault(k, set()).add(intent)
            self._changed.notify_all()
        if over:
            limit = f"Subscription limit of {self.max_per_connection} input tokens exceeded ({count} + {len(new)})"
            self._send(conn, OP_TEXT, json.dumps({"message_code": MSG_SUBSCRIBE_ACK, "error_code": 1, "description": limit,
                                                  "message": limit, "data": {}, "trading_symbols": {}}).encode())  # fmt: skip
            return
        if ack and self.ack_first:
            self._ack(conn, keys)
        if self.snapshot_on_subscribe:
            self._snapshot(conn, keys, intent)
        if ack and not self.ack_first:
            self._ack(conn, keys)

    def _snapshot(self, conn: _Conn, keys: list[str], intent: str) -> None:
        with self._lock:
            ticks = []
            for k in dict.fromkeys(keys):
                inst = self._find(k)
                seg, _, tok = k.partition("|")
                ident = (inst.segment, inst.token) if inst else (seg, int(tok) if tok.isdigit() else -1)
                if ident in self._last:
                    ticks.append(self._last[ident])
        if not ticks:
            return
        intents = {k: {intent} for t in ticks for k in self._keys(t.segment, t.token)}
        if self.snapshot_delay > 0 and self._loop is not None:
            self._loop.call_later(self.snapshot_delay, self._send_resolved, ticks, conn, intents)
        else:
            self._send_resolved(ticks, only=conn, intents=intents)

    def _ack(self, conn: _Conn, keys: list[str]) -> None:
        symbols = {k: inst.trading_symbol for k in keys if (inst := self._find(k)) is not None}
        doc = {"message_code": MSG_SUBSCRIBE_ACK, "error_code": 0, "description": "SUBSCRIBED",
               "data": {k: {"cas_status": 1, "trading_symbols": s} for k, s in symbols.items()}}  # fmt: skip
        sdk = {"message_code": MSG_SUBSCRIBE_ACK, "message": "Subscribed", "trading_symbols": symbols}
        frames = {"merged": [{**doc, **sdk}], "doc": [doc], "sdk": [sdk], "both": [doc, sdk], "none": []}[self.ack_mode]
        for f in frames:
            self._send(conn, OP_TEXT, json.dumps(f).encode())

    # ------------------------------------------------------------------ REST

    def _pop_fault(self, endpoint: str) -> tuple[int, Any] | None:
        with self._lock:
            return self._faults[endpoint].pop(0) if self._faults[endpoint] else None

    def _credential_error(self, what: str) -> tuple[int, Any]:
        if self.credential_errors == "http_401":
            return ERROR_SHAPES["bad_mpin" if what == "mpin" else "bad_credentials"]
        st, msg = {"ucc": (429, "Invalid UCC"), "totp": (401, "Invalid TOTP"), "mpin": (401, "Invalid MPIN"),
                   "key": (401, "Invalid consumer key")}[what]  # fmt: skip
        return 200, {"stCode": st, "errMsg": msg, "status": "failure"}

    def _profile(self) -> dict[str, Any]:
        return {
            "ucc": self.ucc, "greetingName": "FAKE USER", "dataCenter": DATA_CENTER, "hsServerId": "",
            "isUserPwdExpired": False, "isTrialAccount": False, "kId": "ABCDE1234F", "clientType": "RI",
            "isNRI": False, "dormancyStatus": "A", "mfAccess": 1,
        }  # fmt: skip

    def _totp_ok(self, code: str) -> bool:
        ok = pyotp.TOTP(self.totp_secret).verify(code, for_time=int(self.clock()), valid_window=1)
        with self._lock:
            if ok and self.reject_reused_totp:
                if code in self._used_totps:
                    return False
                self._used_totps.add(code)
        return ok

    def _login(self, headers: dict[str, str], body: str) -> tuple[int, Any]:
        with self._lock:
            self.login_attempts += 1
        fault = self._pop_fault("login")
        if fault:
            return fault
        if not headers.get("authorization") or not headers.get("neo-fin-key"):
            return ERROR_SHAPES["missing_header"]
        if headers["authorization"] != self.consumer_key:
            return self._credential_error("key")
        data = _json_object(body)
        for name, label in (("mobileNumber", "MobileNumber"), ("ucc", "Ucc"), ("totp", "Totp")):
            if not data.get(name):
                return 400, {"error": [{"code": "400", "message": f"Missing required field '{label}'"}]}
        if data["mobileNumber"] != self.mobile_number or data["ucc"] != self.ucc:
            return self._credential_error("ucc")
        if not self._totp_ok(str(data["totp"])):
            return self._credential_error("totp")
        g = self._mint("View")
        return 200, {"data": {"token": g.token, "sid": g.sid, "rid": str(uuid.uuid4()), "status": "success", "kType": "View",
                              **self._profile()}}  # fmt: skip

    def _validate(self, headers: dict[str, str], body: str) -> tuple[int, Any]:
        with self._lock:
            self.validate_attempts += 1
        fault = self._pop_fault("validate")
        if fault:
            return fault
        if not all(headers.get(h) for h in ("authorization", "neo-fin-key", "sid", "auth")):
            return ERROR_SHAPES["missing_header"]
        if headers["authorization"] != self.consumer_key:
            return self._credential_error("key")
        view = self._grant_ok(headers["sid"], "View")
        if view is None or view.token != headers["auth"]:
            return ERROR_SHAPES["invalid_session"]
        mpin = _json_object(body).get("mpin")
        if not mpin:
            return ERROR_SHAPES["missing_field"]
        if str(mpin) != self.mpin:
            return self._credential_error("mpin")
        g = self._mint("Trade")
        with self._lock:
            self.logins_completed += 1
        return 200, {"data": {"token": g.token, "sid": g.sid, "rid": str(uuid.uuid4()), "baseUrl": self.api_url,
                              "feedUrl": self.feed_url, "rtUrl": f"http://127.0.0.1:{self._ws_port}/realtime",
                              "status": "success", "kType": "Trade", **self._profile()}}  # fmt: skip

    def _file_paths(self, headers: dict[str, str]) -> tuple[int, Any]:
        with self._lock:
            self.file_paths_requests += 1
        fault = self._pop_fault("file_paths")
        if fault:
            return fault
        if headers.get("authorization") != self.consumer_key:
            return error_reply(401)
        return 200, {
            "data": {"baseFolder": self.lapi_url + SCRIP_FOLDER, "filesPaths": [self.scrip_csv_url(s) for s in SCRIP_SEGMENTS]}
        }

    def _config(self) -> tuple[int, Any]:
        with self._lock:
            self.config_requests += 1
        fault = self._pop_fault("config")
        if fault:
            return fault
        configs: dict[str, str] = {}
        if self.config_service:
            configs = {f"{DATA_CENTER}_broadcast_source": "ks", f"{DATA_CENTER}_ks_broadcast_endpoint": self.config_feed_url,
                       f"{DATA_CENTER}_ks_interactive_endpoint": f"http://127.0.0.1:{self._ws_port}/realtime"}  # fmt: skip
        return 200, {"data": {"configs": configs}}

    def _csv(self, path: str) -> tuple[int, Any] | tuple[int, str, str]:
        with self._lock:
            self.csv_downloads += 1
        fault = self._pop_fault("csv")
        if fault:
            return fault
        for seg in SCRIP_SEGMENTS:
            if path == f"{SCRIP_FOLDER}/{self.scrip_master_date}/{scrip_file_name(seg)}":
                canned = self.scrip_replies.get(seg)
                if canned is not None:
                    return canned[0], canned[1], "text/csv"
                return 200, self.scrip_master_csv(seg), "text/csv"
        return error_reply(404)

    def _rest(
        self, role: str, method: str, path: str, headers: dict[str, str], body: str
    ) -> tuple[int, Any] | tuple[int, str, str]:
        with self._lock:
            self.rest_requests.append((role, method, path, headers, body))
        if role == "login" and method == "POST" and path in LOGIN_PATHS:
            return self._login(headers, body)
        if role == "login" and method == "POST" and path in VALIDATE_PATHS:
            return self._validate(headers, body)
        if role == "api" and method == "GET" and path == FILE_PATHS_PATH:
            return self._file_paths(headers)
        if role == "lapi" and method == "GET" and path == CONFIG_PATH:
            return self._config()
        if role == "lapi" and method == "GET" and path.startswith(SCRIP_FOLDER + "/"):
            return self._csv(path)
        return error_reply(404)


def _input_keys(value: Any) -> list[str]:
    if not isinstance(value, str):
        return []
    return [k for k in (part.strip() for part in value.split(",")) if "|" in k]


def _json_object(body: str) -> dict[str, Any]:
    try:
        data = json.loads(body or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _make_rest_handler(server: KotakFakeServer, role: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "KotakFake/1.0"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
            log.debug(f"kotak fake {role}: " + format, *args)

        def _handle(self) -> None:
            n = int(self.headers.get("Content-Length", "0") or 0)
            body = self.rfile.read(n).decode("utf-8", "replace") if n else ""
            headers = {k.lower(): v for k, v in self.headers.items()}
            reply = server._rest(role, self.command, urlsplit(self.path).path, headers, body)
            status, payload = reply[0], reply[1]
            if len(reply) == 3:
                data, ctype = str(payload).encode(), reply[2]
            elif payload is None:
                data, ctype = b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html"
            else:
                data, ctype = json.dumps(payload).encode(), "application/json"
            self.send_response(status, _REASONS.get(status))
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _handle

    return Handler


# --------------------------------------------------------------------------------------------------
# python -m testkit.fakes.kotak_server
# --------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the fake Kotak Neo server and stream a random tape forever.")
    parser.add_argument("--ws-port", type=int, default=0, help="SFeed WebSocket port (0: any free port)")
    parser.add_argument("--login-port", type=int, default=0, help="login REST port (0: any free port)")
    parser.add_argument("--api-port", type=int, default=0, help="baseUrl REST port (0: any free port)")
    parser.add_argument("--lapi-port", type=int, default=0, help="config service and scrip-master port (0: any free port)")
    parser.add_argument("--rate", type=float, default=20.0, help="ticks per second")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--synthetic", type=int, default=0, help="add this many synthetic nse_cm equities")
    parser.add_argument("--token-lifetime", type=float, default=None, help="seconds a login stays valid (default: midnight IST)")
    args = parser.parse_args(argv)
    instruments = DEFAULT_INSTRUMENTS + synthetic_instruments(args.synthetic)
    server = KotakFakeServer(
        instruments=instruments, token_lifetime=args.token_lifetime, ws_port=args.ws_port, login_port=args.login_port,
        api_port=args.api_port, lapi_port=args.lapi_port,
    )  # fmt: skip
    with server:
        env = {
            "KOTAK_CONSUMER_KEY": server.consumer_key, "KOTAK_MOBILE_NUMBER": server.mobile_number, "KOTAK_UCC": server.ucc,
            "KOTAK_MPIN": server.mpin, "KOTAK_TOTP_SECRET": server.totp_secret, "KOTAK_LOGIN_URL": server.login_url,
        }  # fmt: skip
        print(
            json.dumps(
                {
                    "login_url": server.login_url,
                    "api_url": server.api_url,
                    "lapi_url": server.lapi_url,
                    "config_url": server.config_url,
                    "ws_url": server.ws_url,
                    "feed_url": server.feed_url,
                    "consumer_key": server.consumer_key,
                    "mobile_number": server.mobile_number,
                    "ucc": server.ucc,
                    "mpin": server.mpin,
                    "totp_secret": server.totp_secret,
                    "env": env,
                }
            ),
            flush=True,
        )
        tape = random_tape(instruments, seconds=3600, seed=args.seed)
        try:
            while True:  # replaying the same hour looks like a new trading day to a client (volume drops)
                server.play_tape(tape, rate=args.rate)
                server.wait_tape(timeout=len(tape) / args.rate + 60)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
