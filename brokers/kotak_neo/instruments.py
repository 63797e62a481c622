"""Symbol → feed key from Kotak Neo's scrip master, cached on disk per IST day.

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

Each segment's file is kept in the cache directory for the IST day it was fetched on; a cached file that
cannot be read as a scrip master is fetched again, and a fetched file is kept only once it parsed.

Header quirks are handled by stripping every column name (``dTickSize ``, ``dStrikePrice;``).
The tick size is ``dTickSize`` / 10^``lPrecision`` (the file gives it in the smallest unit).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

import requests

from brokers.base import BrokerError
from brokers.kotak_neo.protocol import EXCHANGE_SEGMENTS
from core.ist import IST
from core.progress import progress
from core.ticks import Instrument

log = logging.getLogger(__name__)

FILE_PATHS = "/script-details/1.0/masterscrip/file-paths"
_CASH_SERIES = ("EQ", "BE", "BZ", "SM", "ST")

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


class SegmentNotOffered(BrokerError):
    """The file list has no scrip master for a segment (an exchange the account cannot use)."""


@dataclass(frozen=True, slots=True)
class KotakInstrument(Instrument):
    """An instrument plus the name the feed knows an index by (empty for scrips)."""

    feed_name: str = ""


class KotakScripMaster:
    """Resolves (exchange, symbol) pairs through the scrip master files."""

    def __init__(
        self,
        base_url: str,
        consumer_key: str,
        cache_dir: str | Path,
        *,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
        http: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._consumer_key = consumer_key
        self.cache_dir = Path(cache_dir)
        self.timeout = timeout
        self.clock = clock
        self._http = http or requests.Session()
        self._segments: dict[str, dict[str, KotakInstrument]] = {}
        self._paths: list[str] | None = None
        self._day = ""  # the IST day the tables and the file list above belong to

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
                    inst = self._lookup(self.segment(segment), exchange, symbol) or _known_index(segment, exchange, symbol)
                except SegmentNotOffered as exc:  # its symbols are unknown; the rest go on
                    log.warning("%s", exc)
                    missing.add(segment)
            if inst is None:
                unknown.append(f"{exchange}:{symbol}")
            else:
                known.append(inst)
        return known, unknown

    def segment(self, segment: str) -> dict[str, KotakInstrument]:
        """Upper-cased names → instruments of one segment (downloaded or from today's cache)."""
        day = self._today()
        if day != self._day:  # the files (and their dated folder) are per IST day: a new day starts afresh
            self._segments.clear()
            self._paths = None
            self._day = day
        table = self._segments.get(segment)
        if table is None:
            table = self._from_cache(segment)
            if table is None:
                text = self._download(segment)
                table = _parse(text, segment)
                if table:  # a bad or empty file is not kept: the next start downloads again
                    self._save(segment, text)
            self._segments[segment] = table
        return table

    # ---------------------------------------------------------------- lookup

    @staticmethod
    def _lookup(table: dict[str, KotakInstrument], exchange: str, symbol: str) -> KotakInstrument | None:
        name = symbol.upper()
        candidates = [name] + [f"{name}-{series}" for series in _CASH_SERIES]
        for candidate in candidates:
            found = table.get(candidate)
            if found is not None:
                # the watchlist's spelling names the candles; the row keeps the feed's token/name
                return KotakInstrument(exchange, symbol, found.token, found.tick_size, found.feed_name)
        return None

    # ---------------------------------------------------------------- files

    def _today(self) -> str:
        return datetime.fromtimestamp(self.clock(), IST).date().isoformat()

    def cache_path(self, segment: str) -> Path:
        return self.cache_dir / f"kotak-scrips-{segment}-{self._today()}.csv"

    def _from_cache(self, segment: str) -> dict[str, KotakInstrument] | None:
        """Today's cached table, or None when there is none or it cannot be used (then it is downloaded again)."""
        text = self._cached(segment)
        if text is None:
            return None
        try:
            table = _parse(text, segment)
        except BrokerError as exc:
            log.warning("ignoring the cached %s scrip master (%s): downloading it again", segment, exc)
            return None
        if not table:
            log.warning("the cached %s scrip master lists no instrument: downloading it again", segment)
            return None
        return table

    def _cached(self, segment: str) -> str | None:
        path = self.cache_path(segment)
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("ignoring unreadable scrip master cache %s: %s", path, exc)
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


def _known_index(segment: str, exchange: str, symbol: str) -> KotakInstrument | None:
    name = KNOWN_INDICES.get(segment, {}).get(symbol.upper())
    return None if name is None else KotakInstrument(exchange, symbol, 0, _INDEX_TICK, name)


def _parse(text: str, segment: str) -> dict[str, KotakInstrument]:
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff")))  # a byte order mark would hide pSymbol
    try:
        return _table(reader, segment)
    except csv.Error as exc:  # e.g. a NUL byte or a huge field: a damaged file
        raise BrokerError(f"the {segment} scrip master is not a valid CSV file ({exc}): try again later") from None


def _table(reader: Iterator[list[str]], segment: str) -> dict[str, KotakInstrument]:
    try:
        header = [name.strip().rstrip(";").strip() for name in next(reader)]
    except StopIteration:
        raise BrokerError(f"the {segment} scrip master is empty: try again later") from None
    col = {name: i for i, name in enumerate(header)}
    for needed in ("pSymbol", "pTrdSymbol"):
        if needed not in col:
            raise BrokerError(f"the {segment} scrip master has no {needed} column: its format changed")
    table: dict[str, KotakInstrument] = {}
    exchange = ""
    for row in reader:
        inst = _row(row, col, exchange)
        if inst is None:
            continue
        name, item = inst
        table.setdefault(name, item)
    return table


def _field(row: list[str], col: dict[str, int], name: str) -> str:
    i = col.get(name)
    return row[i].strip() if i is not None and i < len(row) else ""


def _row(row: list[str], col: dict[str, int], exchange: str) -> tuple[str, KotakInstrument] | None:
    trading = _field(row, col, "pTrdSymbol")
    if not trading:
        return None
    index = _field(row, col, "pInstType").upper() == "INDEX"
    try:
        token = int(_field(row, col, "pSymbol"))
    except ValueError:
        return None
    try:
        precision = int(_field(row, col, "lPrecision") or 2)
        raw_tick = Decimal(_field(row, col, "dTickSize") or "5")
        tick = (raw_tick / (Decimal(10) ** precision)).normalize() if raw_tick > 0 else Decimal("0.05")
    except (ValueError, InvalidOperation):
        tick = Decimal("0.05")
    if index:
        return trading.upper(), KotakInstrument(exchange, trading, 0, tick, trading)
    return trading.upper(), KotakInstrument(exchange, trading, token, tick)
