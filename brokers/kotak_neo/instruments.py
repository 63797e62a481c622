"""Symbol → feed key, and the futures and options, from Kotak Neo's scrip master, cached on disk per IST day.

``GET {baseUrl}/script-details/1.0/masterscrip/file-paths`` (consumer key in ``Authorization``)
lists one CSV per segment in a folder dated by the day; each CSV is fetched without auth
(the SDK's ``neo_api_client`` scrip-master call). Only the segments a watchlist needs are downloaded.

Matching a watchlist entry (``NSE:INFY``) to a row of the segment's file (``nse_cm``):

* the trading symbol (``pTrdSymbol``) as written, case-insensitively (``NIFTY26JANFUT``);
* for cash segments, the symbol plus its series: ``INFY`` → ``INFY-EQ`` (then ``-BE``, ``-BZ``);
* an index row (``pInstType`` INDEX) by its name, case-insensitively: ``NSE:NIFTY 50`` →
  ``nse_cm|Nifty 50``. The feed subscribes indices by Kotak's spelling of the name, so the
  instrument carries it in ``feed_name`` while candles keep the watchlist's symbol;
* else a known index (``KNOWN_INDICES``): the files Kotak publishes need not list indices at all,
  and the official SDK subscribes them by name (``subscribe_index([WsToken("nse_cm", "Nifty 50")])``
  sends ``subscribeIndices`` with ``nse_cm|Nifty 50``); the index packets name them the same way.

Header quirks are handled by stripping every column name (``dTickSize ``, ``dStrikePrice;``).
The tick size is ``dTickSize`` / 10^``lPrecision`` (the file gives it in the smallest unit).

Futures and options (``contracts``)
-----------------------------------
The nse_fo, bse_fo and mcx_fo files list one row per contract: ``pSymbol`` (the token),
``pTrdSymbol`` (``NIFTY2381017850CE``, ``RELIANCE25NOVFUT``: the symbol ``resolve`` takes),
``pSymbolName`` (the underlying), ``pInstType`` (FUTIDX, OPTIDX, FUTSTK, OPTSTK, FUTCOM, OPTFUT),
``pOptionType`` (CE, PE; XX for a future), ``lLotSize``, ``dTickSize`` and ``lPrecision`` as above,
``dStrikePrice;`` in paise and often in exponent notation (``2.6e+06`` is 26000.00), and the
expiry in ``pExpiryDate`` (``lExpiryDate`` holds the same number) with two epochs:

* nse_fo (and cde_fo): seconds since 1980-01-01 00:00 IST, the exchange's own count, so read as a
  plain Unix time it falls ten years early: ``NIFTY2381017850CE`` has 1376145000, 1980-01-01 +
  1376145000 s = 2023-08-10 14:30; ``RELIANCE25NOVFUT`` 1448548200 = 2025-11-25 14:30. Kotak's
  answer on the SDK's issue tracker: "all the expiry dates are -10 years except for MCX";
* bse_fo and mcx_fo: Unix seconds, whose UTC date is the expiry day (a CRUDEOIL option expiring
  14 May 2026 has 1778803199, 2026-05-14 23:59:59 UTC: in IST that is already the 15th).

kotakneoapi 3.0.9 reads them the same way (``neo_api_client/services/scrip_search.py``: nse_fo
and cde_fo ``pExpiryDate`` + 315511200 s, bse_fo and mcx_fo as Unix time, strikes x 100), as does
openalgo's ``broker/kotak/database/master_contract_db.py`` (nse_fo/cde_fo + 315513000 s, the
1970→1980 span less IST's 5h30m). Every number of a ``Contract`` is the file's, as an exact
``Decimal``; a derivative row whose expiry, strike, lot or tick does not parse is left out and
counted in one warning. The index and stock rows the contracts are written on (kind IDX/EQ) come
from nse_cm/bse_cm, named the way a watchlist names them (``NSE:NIFTY 50``, ``NSE:RELIANCE``).

Caching and refresh
-------------------
Each segment's file is kept in the cache directory for the IST day it was fetched on. A download
replaces the cache only once it validates: its columns, at least half the rows of the newest
cached file of that segment, and the futures or options of every required underlying (the
universes' names) that the segment listed before. A download that fails or does not validate
never removes a cached file: ``refresh`` keeps the tables it has, and a first load uses the newest
cached file of that segment (an earlier day's), with a warning naming it and why. Only when there
is none is it an error.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import requests

from brokers.base import BrokerError
from brokers.kotak_neo.protocol import EXCHANGE_SEGMENTS, SEGMENT_EXCHANGES
from core.contracts import CALL, FUT, PUT, Contract
from core.ist import IST
from core.progress import progress
from core.ticks import Instrument
from core.universe import INDEX_CASH_SYMBOLS

log = logging.getLogger(__name__)

FILE_PATHS = "/script-details/1.0/masterscrip/file-paths"
_CASH_SERIES = ("EQ", "BE", "BZ", "SM", "ST")

#: The segments whose futures and options ``contracts`` lists, and the cash segment of their
#: stock and index underlyings.
CONTRACT_SEGMENTS = ("nse_fo", "bse_fo", "mcx_fo")
_CASH_SEGMENT = {"nse_fo": "nse_cm", "bse_fo": "bse_cm"}
#: The columns every file must have, and those a futures-and-options file must have besides.
REQUIRED_COLUMNS = ("pSymbol", "pTrdSymbol")
FO_COLUMNS = ("pSymbolName", "pOptionType", "dStrikePrice", "lLotSize", "dTickSize")
_EXPIRY_COLUMNS = ("pExpiryDate", "lExpiryDate")
#: Segments whose expiries count seconds from 1980-01-01 00:00 IST; the others count Unix seconds.
_EPOCH_1980_SEGMENTS = ("nse_fo", "cde_fo")
_EPOCH_1980 = datetime(1980, 1, 1)
_EPOCH_1970 = datetime(1970, 1, 1)
_PAISE = Decimal(100)  # strikes are written in paise (the SDK multiplies a strike by 100 to match)
#: A fresh file with fewer rows than this share of the newest cached one is taken for a broken download.
MIN_ROW_SHARE = 0.5

#: segment -> watchlist name (upper case) -> the name the feed knows the index by. The scrip
#: master's INDEX rows win where a file has them.
KNOWN_INDICES: dict[str, dict[str, str]] = {
    "nse_cm": {
        "NIFTY 50": "Nifty 50",
        "NIFTY BANK": "Nifty Bank",
        "NIFTY FIN SERVICE": "Nifty Fin Service",
        "NIFTY IT": "Nifty IT",
        "NIFTY NEXT 50": "Nifty Next 50",
    },
    "bse_cm": {"SENSEX": "SENSEX", "BANKEX": "BANKEX"},
}
_INDEX_TICK = Decimal("0.01")
_DEFAULT_TICK = Decimal("0.05")  # resolve's tick for a row without a usable one (contracts never use it)


class SegmentNotOffered(BrokerError):
    """The file list has no scrip master for a segment (an exchange the account cannot use)."""


@dataclass(frozen=True, slots=True)
class KotakInstrument(Instrument):
    """An instrument plus the name the feed knows an index by (empty for scrips)."""

    feed_name: str = ""


@dataclass(frozen=True, slots=True)
class Scrip:
    """One row of a scrip master as ``resolve`` needs it."""

    token: int  # pSymbol; 0 for an index (the feed knows it by name)
    trading: str  # pTrdSymbol as written
    tick: Decimal
    lot: int | None  # lLotSize; None when it does not parse
    index: bool


@dataclass(frozen=True, slots=True)
class ScripTable:
    """One segment's file, parsed: its rows by upper-cased trading symbol, and its futures and options."""

    segment: str
    scrips: dict[str, Scrip]
    contracts: tuple[Contract, ...]
    rows: int  # the file's data rows, usable or not
    underlyings: frozenset[str] = field(default=frozenset())  # those with contracts
    origin: str = ""  # where it came from, for warnings

    def find(self, symbol: str) -> Scrip | None:
        """The row ``symbol`` names: its trading symbol, or for cash segments the symbol plus its series."""
        name = symbol.upper()
        for candidate in (name, *(f"{name}-{series}" for series in _CASH_SERIES)):
            found = self.scrips.get(candidate)
            if found is not None:
                return found
        return None


class KotakScripMaster:
    """Resolves (exchange, symbol) pairs, and lists the futures and options, through the scrip master files.

    ``required``: underlyings (``pSymbolName``, e.g. ``NIFTY``) whose futures or options a fresh
    file must still list when the file it replaces listed them (a universe names them)."""

    def __init__(
        self,
        base_url: str,
        consumer_key: str,
        cache_dir: str | Path,
        *,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
        http: requests.Session | None = None,
        required: Iterable[str] = (),
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._consumer_key = consumer_key
        self.cache_dir = Path(cache_dir)
        self.timeout = timeout
        self.clock = clock
        self._http = http or requests.Session()
        self._required = frozenset(r.upper() for r in required)
        self._segments: dict[str, ScripTable] = {}
        self._paths: list[str] | None = None
        self._day = ""  # the IST day the tables and the file list above belong to
        self._lock = threading.RLock()
        self._wants_contracts = False
        #: segment -> the cached file its table came from when a download failed or did not validate
        self.fallback: dict[str, Path] = {}

    def __repr__(self) -> str:
        return f"KotakScripMaster(base_url={self.base_url!r}, cache_dir={str(self.cache_dir)!r})"

    def resolve(self, pairs: Sequence[tuple[str, str]]) -> tuple[list[Instrument], list[str]]:
        known: list[Instrument] = []
        unknown: list[str] = []
        missing: set[str] = set()
        for exchange, symbol in pairs:
            segment = EXCHANGE_SEGMENTS.get(exchange)
            inst = None
            if segment is not None and segment not in missing:
                try:
                    inst = _instrument(self.segment(segment), exchange, symbol) or _known_index(segment, exchange, symbol)
                except SegmentNotOffered as exc:  # its symbols are unknown; the rest go on
                    log.warning("%s", exc)
                    missing.add(segment)
            if inst is None:
                unknown.append(f"{exchange}:{symbol}")
            else:
                known.append(inst)
        return known, unknown

    def segment(self, segment: str) -> ScripTable:
        """One segment's table (today's cache, a download, or failing that the newest cached file)."""
        with self._lock:
            day = self._today()
            if day != self._day:  # the files (and their dated folder) are per IST day: a new day starts afresh
                self._segments.clear()
                self._paths = None
                self.fallback.clear()
                self._day = day
            table = self._segments.get(segment)
            if table is None:
                table = self._segments[segment] = self._load(segment, fresh=False, current=None)
            return table

    def contracts(self) -> list[Contract]:
        """The futures and options of nse_fo, bse_fo and mcx_fo, then the index and stock rows of
        nse_cm and bse_cm they are written on (kind IDX/EQ, symbol as a watchlist names it). A
        segment the file list does not offer is left out with a warning."""
        with self._lock:
            self._wants_contracts = True
            out: list[Contract] = []
            derived: set[tuple[str, str]] = set()  # (cash segment, underlying)
            for segment in CONTRACT_SEGMENTS:
                try:
                    table = self.segment(segment)
                except SegmentNotOffered as exc:
                    log.warning("%s: its futures and options are left out", exc)
                    continue
                out += table.contracts
                cash = _CASH_SEGMENT.get(segment)
                if cash is not None:
                    derived.update((cash, u) for u in table.underlyings)
            tables: dict[str, ScripTable | None] = {}
            for cash, underlying in sorted(derived):
                if cash not in tables:
                    try:
                        tables[cash] = self.segment(cash)
                    except SegmentNotOffered as exc:
                        log.warning("%s: the underlyings' own rows are left out", exc)
                        tables[cash] = None
                table = tables[cash]
                own = _underlying_row(table, cash, underlying) if table is not None else None
                if own is not None:
                    out.append(own)
            return out

    def refresh(self, required: Collection[str] = ()) -> None:
        """Download today's files again: every segment loaded so far, and the futures-and-options
        segments (and their cash segments) when contracts were asked for or ``required`` names
        underlyings. A file that fails or does not validate keeps the table loaded before (or, for a
        segment not loaded yet, the newest cached file), with a warning; afterwards ``resolve`` and
        ``contracts`` answer from the new tables."""
        with self._lock:
            if required:
                self._required = frozenset(r.upper() for r in required)
            current = dict(self._segments)
            wanted = set(current)
            if self._wants_contracts or self._required:
                wanted.update(CONTRACT_SEGMENTS)
                wanted.update(_CASH_SEGMENT.values())
            self._paths = None  # the file list is asked for again: a new day's folder
            self._day = self._today()
            fresh: dict[str, ScripTable] = {}
            for segment in sorted(wanted):
                try:
                    fresh[segment] = self._load(segment, fresh=True, current=current.get(segment))
                except SegmentNotOffered as exc:
                    log.warning("%s", exc)
            self._segments = fresh

    # ---------------------------------------------------------------- files

    def _today(self) -> str:
        return datetime.fromtimestamp(self.clock(), IST).date().isoformat()

    def cache_path(self, segment: str) -> Path:
        return self.cache_dir / f"kotak-scrips-{segment}-{self._today()}.csv"

    def _load(self, segment: str, *, fresh: bool, current: ScripTable | None) -> ScripTable:
        """Today's cached table (unless ``fresh``), else a validated download (then cached), else
        ``current``, else the newest cached file; a ``BrokerError`` when there is none."""
        if not fresh:
            table = self._read_cached(self.cache_path(segment), segment)
            if table is not None:
                return table
        previous = self._previous_cache(segment)
        try:
            text = self._download(segment)
            table = parse_scrip_master(text, segment)
            self._validate(table, previous, current)
        except SegmentNotOffered:
            raise
        except BrokerError as exc:
            return self._fall_back(segment, exc, previous, current)
        self._save(segment, text)
        self.fallback.pop(segment, None)
        return replace(table, origin=f"downloaded on {self._today()}")

    def _fall_back(
        self, segment: str, exc: BrokerError, previous: tuple[Path, int] | None, current: ScripTable | None
    ) -> ScripTable:
        if current is not None:
            log.warning("%s; keeping the %s scrip master %s (%d rows)", exc, segment, current.origin, current.rows)
            return current
        if previous is None:
            raise BrokerError(
                f"{exc}; no earlier {segment} scrip master is cached in {self.cache_dir} to fall back on: check the "
                "connection to Kotak and try again"
            ) from None
        table = self._read_cached(previous[0], segment)
        if table is None:
            raise BrokerError(f"{exc}; the cached {segment} scrip master {previous[0]} could not be read either") from None
        log.warning(
            "%s; using the cached %s scrip master %s (%d rows) instead: contracts listed since it was fetched are missing from it",
            exc,
            segment,
            previous[0],
            table.rows,
        )
        self.fallback[segment] = previous[0]
        return table

    def _validate(self, table: ScripTable, previous: tuple[Path, int] | None, current: ScripTable | None) -> None:
        segment = table.segment
        if not table.rows:
            raise BrokerError(f"the {segment} scrip master lists no instrument")
        if previous is not None and table.rows < previous[1] * MIN_ROW_SHARE:
            raise BrokerError(
                f"the {segment} scrip master has {table.rows} rows, fewer than {MIN_ROW_SHARE:.0%} of the {previous[1]} in "
                f"{previous[0].name}: taken for a truncated download"
            )
        if self._required and segment in CONTRACT_SEGMENTS:
            before = current if current is not None else self._read_cached(previous[0], segment) if previous else None
            expected = self._required & before.underlyings if before is not None else frozenset()
            absent = sorted(expected - table.underlyings)
            if absent:
                raise BrokerError(f"the {segment} scrip master has no futures or options of {', '.join(absent)}")

    def _read_cached(self, path: Path, segment: str) -> ScripTable | None:
        """The table of a cached file, or None when there is none or it cannot be used (with a warning)."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("ignoring unreadable scrip master cache %s: %s", path, exc)
            return None
        try:
            table = parse_scrip_master(text, segment)
        except BrokerError as exc:
            log.warning("ignoring the cached %s scrip master %s (%s)", segment, path.name, exc)
            return None
        if not table.scrips:
            log.warning("the cached %s scrip master %s lists no instrument: ignoring it", segment, path.name)
            return None
        return replace(table, origin=str(path))

    def _previous_cache(self, segment: str) -> tuple[Path, int] | None:
        """The newest cached file of ``segment`` with a usable header and rows, and its row count."""
        for candidate in sorted(self.cache_dir.glob(f"kotak-scrips-{segment}-*.csv"), reverse=True):
            try:
                with candidate.open(encoding="utf-8") as src:
                    header = {_column(name) for name in next(csv.reader([src.readline().removeprefix("\ufeff")]), [])}
                    if not set(REQUIRED_COLUMNS) <= header:
                        continue
                    count = sum(1 for line in src if line.strip())
            except (OSError, UnicodeDecodeError, csv.Error):
                continue
            if count:
                return candidate, count
        return None

    def _save(self, segment: str, text: str) -> None:
        path = self.cache_path(segment)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
            for old in path.parent.glob(f"kotak-scrips-{segment}-*.csv"):
                if old != path:
                    old.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not cache the %s scrip master in %s: %s", segment, path.parent, exc)

    def _file_paths(self) -> list[str]:
        if self._paths is None:
            url = self.base_url + FILE_PATHS
            try:
                reply = self._http.get(url, headers={"Authorization": self._consumer_key}, timeout=self.timeout)
            except requests.RequestException as exc:
                raise BrokerError(f"could not list Kotak's scrip master files at {url}: {type(exc).__name__}") from None
            try:
                payload = reply.json()
            except ValueError:  # an error page: reported below with its HTTP status
                payload = None
            data = payload.get("data") if isinstance(payload, dict) else None
            paths = data.get("filesPaths") if isinstance(data, dict) else None
            if reply.status_code != 200 or not isinstance(paths, list):
                raise BrokerError(
                    f"Kotak's scrip master file list failed (HTTP {reply.status_code}): check KOTAK_CONSUMER_KEY; "
                    "try again later if it persists"
                )
            base = str(data.get("baseFolder") or "").rstrip("/")
            self._paths = [p if "://" in p else f"{base}/{p.lstrip('/')}" for p in paths if isinstance(p, str)]
        return self._paths

    def _download(self, segment: str) -> str:
        paths = self._file_paths()
        matches = [p for p in paths if p.rsplit("/", 1)[-1].startswith(segment)]
        if not matches:
            raise SegmentNotOffered(f"Kotak's scrip master has no file for segment {segment}: the exchange may not be offered")
        url = matches[0]
        try:
            with self._http.get(url, timeout=self.timeout, stream=True) as reply:
                if reply.status_code != 200:
                    raise BrokerError(f"the {segment} scrip master download failed with HTTP {reply.status_code}: try again later")
                size = int(reply.headers.get("Content-Length") or 0) or None
                parts = []
                with progress(f"downloading the Kotak {segment} scrip master", size, "bytes") as bar:
                    for part in reply.iter_content(1 << 16):
                        parts.append(part)
                        bar.update(len(part))
        except requests.RequestException as exc:
            raise BrokerError(f"could not download the {segment} scrip master from {url}: {type(exc).__name__}") from None
        content = b"".join(parts)
        log.info("downloaded the Kotak %s scrip master (%d bytes)", segment, len(content))
        # UTF-8 whatever the headers say: requests would read text/csv without a charset as ISO-8859-1
        return content.decode("utf-8", errors="replace")


# -------------------------------------------------------------------- lookups


def _instrument(table: ScripTable, exchange: str, symbol: str) -> KotakInstrument | None:
    found = table.find(symbol)
    if found is None:
        return None
    # the watchlist's spelling names the candles; the row keeps the feed's token/name
    return KotakInstrument(exchange, symbol, found.token, found.tick, found.trading if found.index else "")


def _known_index(segment: str, exchange: str, symbol: str) -> KotakInstrument | None:
    name = KNOWN_INDICES.get(segment, {}).get(symbol.upper())
    return None if name is None else KotakInstrument(exchange, symbol, 0, _INDEX_TICK, name)


def _underlying_row(table: ScripTable, segment: str, underlying: str) -> Contract | None:
    """The index or stock row of ``underlying`` in a cash segment, as a watchlist names it
    (``INDEX_CASH_SYMBOLS`` for an index, the underlying's own name for a stock)."""
    exchange = SEGMENT_EXCHANGES[segment]
    index = INDEX_CASH_SYMBOLS.get(underlying)
    if index is not None:
        if index[0] != exchange:
            return None
        row = table.find(index[1])
        if row is not None and row.index:
            return Contract(exchange, index[1], underlying, "IDX", None, None, row.lot or 0, row.tick, 0)
        known = _known_index(segment, exchange, index[1])
        if known is None:
            return None
        return Contract(exchange, index[1], underlying, "IDX", None, None, 0, known.tick_size, 0)
    row = table.find(underlying)
    if row is None or row.index or row.lot is None:
        return None
    return Contract(exchange, underlying, underlying, "EQ", None, None, row.lot, row.tick, row.token)


# -------------------------------------------------------------------- parsing


def _column(name: str) -> str:
    return name.strip().rstrip(";").strip()


def parse_scrip_master(text: str, segment: str) -> ScripTable:
    """One segment's CSV as a ``ScripTable``; a ``BrokerError`` when it is not a scrip master."""
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff")))  # a byte order mark would hide pSymbol
    try:
        return _table(reader, segment)
    except csv.Error as exc:  # e.g. a NUL byte or a huge field: a damaged file
        raise BrokerError(f"the {segment} scrip master is not a valid CSV file ({exc}): try again later") from None


def _table(reader: Iterator[list[str]], segment: str) -> ScripTable:
    try:
        header = [_column(name) for name in next(reader)]
    except StopIteration:
        raise BrokerError(f"the {segment} scrip master is empty: try again later") from None
    col = {name: i for i, name in enumerate(header)}
    derivatives = segment in CONTRACT_SEGMENTS
    for needed in REQUIRED_COLUMNS + (FO_COLUMNS if derivatives else ()):
        if needed not in col:
            raise BrokerError(f"the {segment} scrip master has no {needed} column: its format changed")
    if derivatives and not any(c in col for c in _EXPIRY_COLUMNS):
        raise BrokerError(f"the {segment} scrip master has no pExpiryDate column: its format changed")
    parser = _RowParser(segment, col)
    scrips: dict[str, Scrip] = {}
    contracts: list[Contract] = []
    rows = 0
    for row in reader:
        if not row:
            continue
        rows += 1
        scrip = parser.scrip(row)
        if scrip is None:
            continue
        scrips.setdefault(scrip.trading.upper(), scrip)
        if derivatives:
            contract = parser.contract(row, scrip)
            if contract is not None:
                contracts.append(contract)
    if parser.bad:
        log.warning(
            "left out %d futures and options of the %s scrip master whose numbers do not parse (first: %s)",
            parser.bad,
            segment,
            parser.example,
        )
    return ScripTable(segment, scrips, tuple(contracts), rows, frozenset(c.underlying for c in contracts))


class _RowParser:
    """Reads rows of one file; shares the equal values of 100k rows (ticks, strikes, expiries, names)."""

    def __init__(self, segment: str, col: dict[str, int]) -> None:
        self.segment = segment
        self.exchange = SEGMENT_EXCHANGES.get(segment, segment.upper())
        self.col = col
        self.epoch = _EPOCH_1980 if segment in _EPOCH_1980_SEGMENTS else _EPOCH_1970
        self.expiry_columns = [c for c in _EXPIRY_COLUMNS if c in col]
        self.values: dict[Any, Any] = {}
        self.bad = 0
        self.example = ""

    def field(self, row: list[str], name: str) -> str:
        i = self.col.get(name)
        return row[i].strip() if i is not None and i < len(row) else ""

    def shared(self, key: Any, make: Callable[[], Any]) -> Any:
        found = self.values.get(key)
        if found is None:
            found = self.values[key] = make()
        return found

    def scrip(self, row: list[str]) -> Scrip | None:
        trading = self.field(row, "pTrdSymbol")
        if not trading:
            return None
        try:
            token = int(self.field(row, "pSymbol"))
        except ValueError:
            return None
        index = self.field(row, "pInstType").upper() == "INDEX"
        tick = self.tick(row) or _DEFAULT_TICK
        return Scrip(0 if index else token, trading, tick, _integer(self.field(row, "lLotSize")), index)

    def tick(self, row: list[str]) -> Decimal | None:
        raw, precision = self.field(row, "dTickSize"), self.field(row, "lPrecision") or "2"
        return self.shared(("t", raw, precision), lambda: _tick(raw, precision))

    def contract(self, row: list[str], scrip: Scrip) -> Contract | None:
        option = self.field(row, "pOptionType").upper()
        if option in (CALL, PUT):
            kind = option
        elif option == "XX" or self.field(row, "pInstType").upper().startswith("FUT"):
            kind = FUT
        else:
            return None  # not a future or an option
        underlying = self.field(row, "pSymbolName").upper()
        expiry = self.expiry(row)
        strike = self.strike(row) if kind != FUT else None
        tick = self.tick(row)
        problem = (
            "no underlying" if not underlying
            else "expiry" if expiry is None
            else "strike" if kind != FUT and strike is None
            else "lot size" if scrip.lot is None or scrip.lot < 1
            else "tick size" if tick is None
            else ""
        )  # fmt: skip
        if problem:
            self.bad += 1
            self.example = self.example or f"{scrip.trading}: {problem}"
            return None
        assert expiry is not None and tick is not None and scrip.lot is not None
        name = self.shared(("u", underlying), lambda: underlying)
        return Contract(self.exchange, scrip.trading, name, kind, expiry, strike, scrip.lot, tick, scrip.token)

    def expiry(self, row: list[str]) -> date | None:
        raw = next((v for v in (self.field(row, c) for c in self.expiry_columns) if v), "")
        return self.shared(("e", raw), lambda: _expiry(raw, self.epoch))

    def strike(self, row: list[str]) -> Decimal | None:
        raw = self.field(row, "dStrikePrice")
        return self.shared(("s", raw), lambda: _strike(raw))


def _number(text: str) -> Decimal | None:
    try:
        value = Decimal(text)
    except (InvalidOperation, ValueError):
        return None
    return value if value.is_finite() else None


def _exact(value: Decimal) -> Decimal:
    """``value`` without trailing zeros or an exponent: 2.6E+4 -> 26000, 0.0500 -> 0.05."""
    integral = value.to_integral_value()
    return integral.quantize(Decimal(1)) if value == integral else value.normalize()


def _integer(text: str) -> int | None:
    value = _number(text)
    return int(value) if value is not None and value == value.to_integral_value() else None


def _tick(raw: str, precision: str) -> Decimal | None:
    value, places = _number(raw), _integer(precision)
    if value is None or places is None or value <= 0 or not 0 <= places <= 10:
        return None
    return _exact(value / Decimal(10) ** places)


def _strike(raw: str) -> Decimal | None:
    value = _number(raw)
    return _exact(value / _PAISE) if value is not None and value > 0 else None


def _expiry(raw: str, epoch: datetime) -> date | None:
    seconds = _integer(raw)
    if seconds is None or seconds <= 0:
        return None
    try:
        return (epoch + timedelta(seconds=seconds)).date()
    except OverflowError:
        return None
