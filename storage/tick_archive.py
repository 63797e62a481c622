"""The tick archive on disk: every tick the aggregator was handed, as Parquet files (pyarrow).

Layout (hive-style partitions, read back by pyarrow.dataset, pandas and DuckDB as columns
``date`` and ``exchange``)::

    <TICK_ARCHIVE_DIR>/date=2026-11-24/exchange=NSE/part-<window start, epoch µs>-<run>.parquet
    <TICK_ARCHIVE_DIR>/date=2026-11-24/_coverage.jsonl

``date`` is the IST day of the tick's exchange time. Columns (``SCHEMA``): ``symbol``, ``token``,
``price_units`` and ``price_scale`` (the exact price is ``price_units × 10^-price_scale``: the
Decimal's own coefficient and exponent, so ``1220.50`` comes back as ``1220.50``),
``last_quantity``, ``volume`` (the feed's cumulative day volume) and ``oi`` (null when the feed has
none), ``exchange_ts`` and ``receive_ts`` (microseconds, time zone +05:30), ``broker``. Rows are in
the order the aggregator took them; files of one partition sort by name in that order. Compressed
with zstd, one row group per ``ROW_GROUP`` ticks at most.

A part file is written under a hidden name (``.part-….parquet.inprogress``: pyarrow.dataset,
pandas and a ``*.parquet`` glob skip it) and renamed once closed (footer written, fsynced): a
finished file is never changed again, and a kill leaves only the unfinished file unreadable.
Each closed window appends one line to its day's ``_coverage.jsonl``: the span of the daemon's
clock whose ticks are all in the archive (``dropped`` > 0: some were not). ``--replay --verify``
compares only the candles that lie in such spans.

Imported only when the archive is on (pyarrow is not loaded into a daemon that does not use it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from itertools import islice, repeat
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.ist import DAY, IST, IST_OFFSET
from core.ticks import TickData

log = logging.getLogger(__name__)

TZ = "+05:30"  # the columns' time zone (a fixed offset: readers need no time zone database)
ROW_GROUP = 131_072  # ticks buffered per partition before they are written as a row group
COVERAGE = "_coverage.jsonl"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICRO = timedelta(microseconds=1)
_INT64 = 1 << 63

SCHEMA = pa.schema(
    [
        ("symbol", pa.string()),
        ("token", pa.int64()),
        ("price_units", pa.int64()),
        ("price_scale", pa.int8()),
        ("last_quantity", pa.int64()),
        ("volume", pa.int64()),
        ("oi", pa.int64()),
        ("exchange_ts", pa.timestamp("us", tz=TZ)),
        ("receive_ts", pa.timestamp("us", tz=TZ)),
        ("broker", pa.string()),
    ]
)
_NAMES = SCHEMA.names


class ArchiveError(ValueError):
    """A tick the archive cannot keep exactly (a price beyond 18 digits, a naive time)."""


class _Micros(dict):
    """datetime -> exact µs since the epoch (a datetime caches its hash: one lookup per tick)."""

    def __missing__(self, dt: datetime) -> int:
        if dt.tzinfo is None:
            raise ArchiveError(f"a tick time without a time zone ({dt.isoformat()}): the feed must give aware times")
        value = self[dt] = (dt - _EPOCH) // _MICRO
        return value


class _Units(dict):
    """Decimal -> (coefficient, -exponent): the price exactly, its spelling included."""

    def __missing__(self, price: Decimal) -> tuple[int, int]:
        sign, digits, exponent = price.as_tuple()
        if not isinstance(exponent, int) or not -128 <= exponent <= 127:
            raise ArchiveError(f"price {price!r} cannot be archived exactly (not a finite decimal of usual scale)")
        units = int("".join(map(str, digits)) or "0")
        if units >= _INT64:
            raise ArchiveError(f"price {price!r} has more digits than the archive keeps (18)")
        value = self[price] = (-units if sign else units, -exponent)
        return value


def ist_day(micros: int) -> date:
    return date.fromordinal(date(1970, 1, 1).toordinal() + (micros // 1_000_000 + IST_OFFSET) // DAY)


class Columns:
    """One partition's ticks not yet written, as column lists."""

    __slots__ = ("symbol", "token", "units", "scale", "qty", "volume", "oi", "ex", "rx", "broker", "micros", "prices")

    def __init__(self, micros: _Micros, prices: _Units) -> None:
        self.micros = micros
        self.prices = prices
        self.clear()

    def clear(self) -> None:
        self.symbol: list[str] = []
        self.token: list[int] = []
        self.units: list[int] = []
        self.scale: list[int] = []
        self.qty: list[int | None] = []
        self.volume: list[int | None] = []
        self.oi: list[int | None] = []
        self.ex: list[int] = []
        self.rx: list[int] = []
        self.broker: list[str] = []

    def __len__(self) -> int:
        return len(self.symbol)

    def extend(self, ticks: Sequence[TickData]) -> None:
        """Add ticks (all or nothing: a tick that cannot be kept raises ``ArchiveError``)."""
        prices = self.prices
        micros = self.micros
        pairs = [prices[t.last_price] for t in ticks]
        ex = [micros[t.exchange_ts] for t in ticks]
        rx = [micros[t.receive_ts] for t in ticks]
        self.symbol += [t.symbol for t in ticks]
        self.token += [t.token for t in ticks]
        self.units += [p[0] for p in pairs]
        self.scale += [p[1] for p in pairs]
        self.qty += [t.last_quantity for t in ticks]
        self.volume += [t.volume for t in ticks]
        self.oi += [t.oi for t in ticks]
        self.ex += ex
        self.rx += rx
        self.broker += [t.broker for t in ticks]

    def table(self) -> pa.Table:
        lists = (self.symbol, self.token, self.units, self.scale, self.qty, self.volume, self.oi, self.ex, self.rx, self.broker)
        return pa.Table.from_arrays([pa.array(v, type=f.type) for v, f in zip(lists, SCHEMA, strict=True)], schema=SCHEMA)


def partition_dir(root: Path, day: date, exchange: str) -> Path:
    if not exchange or any(c in exchange for c in "/\\=\0") or exchange.startswith("."):
        raise ArchiveError(f"exchange {exchange!r} cannot name an archive folder")
    return root / f"date={day.isoformat()}" / f"exchange={exchange}"


class PartFile:
    """One part file being written: hidden until ``finish`` renames it."""

    def __init__(self, root: Path, day: date, exchange: str, name: str, level: int = 3) -> None:
        folder = partition_dir(root, day, exchange)
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{name}.parquet"
        self.temp = folder / f".{name}.parquet.inprogress"
        self.rows = 0
        self._writer: Any = pq.ParquetWriter(
            self.temp, SCHEMA, compression="zstd", compression_level=level, use_dictionary=["symbol", "broker"]
        )

    def write(self, columns: Columns) -> None:
        if columns:
            self._writer.write_table(columns.table(), row_group_size=ROW_GROUP)
            self.rows += len(columns)
        columns.clear()

    def finish(self) -> Path:
        self._writer.close()
        with open(self.temp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(self.temp, self.path)
        _fsync_dir(self.path.parent)
        return self.path

    def abandon(self) -> None:
        with contextlib.suppress(Exception):  # a writer that failed may fail to close too
            self._writer.close()
        self.temp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def record_coverage(root: Path, since: float, until: float, dropped: int, run: str) -> None:
    """Append a window's line to its day's coverage file (fsynced)."""
    day = datetime.fromtimestamp(since, IST).date()
    folder = root / f"date={day.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"since": since, "until": until, "dropped": dropped, "run": run}) + "\n"
    with open(folder / COVERAGE, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def leftovers(root: Path) -> list[Path]:
    """Unfinished part files a killed daemon left (unreadable: no footer)."""
    return sorted(root.glob("date=*/exchange=*/.part-*.parquet.inprogress"))


# ---------------------------------------------------------------------------------------- reading


def days(root: Path) -> list[date]:
    found = []
    for p in root.glob("date=*"):
        try:
            found.append(date.fromisoformat(p.name[5:]))
        except ValueError:
            continue
    return sorted(found)


def parts(root: Path, day: date) -> dict[str, list[Path]]:
    """The finished part files of ``day`` by exchange, each list in the order they were written."""
    out: dict[str, list[Path]] = {}
    for folder in sorted((root / f"date={day.isoformat()}").glob("exchange=*")):
        files = sorted(folder.glob("part-*.parquet"))
        if files:
            out[folder.name[len("exchange=") :]] = files
    return out


def coverage(root: Path, day: date) -> list[tuple[float, float]]:
    """The spans of the daemon's clock, around ``day``, whose ticks are all archived, merged
    (windows that meet are one span); a window with ``dropped`` ticks is left out."""
    windows = []
    for d in (day - timedelta(days=1), day, day + timedelta(days=1)):
        path = root / f"date={d.isoformat()}" / COVERAGE
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        for line in text.splitlines():
            try:
                w = json.loads(line)
            except ValueError:  # a line cut short by a kill
                continue
            if not w.get("dropped"):
                windows.append((float(w["since"]), float(w["until"])))
    merged: list[tuple[float, float]] = []
    for since, until in sorted(windows):
        if merged and since <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], until))
        else:
            merged.append((since, until))
    return merged


def _times(micros: list[int]) -> list[datetime]:
    return [(_EPOCH + m * _MICRO).astimezone(IST) for m in micros]


def read_ticks(path: Path, exchange: str | None = None) -> list[TickData]:
    """Every tick of one part file, every field as it was archived (for tests and tools; slow)."""
    if exchange is None:
        exchange = path.parent.name[len("exchange=") :]
    t = pq.read_table(path, schema=SCHEMA, partitioning=None)
    col = {n: t.column(n) for n in _NAMES}
    units = col["price_units"].to_pylist()
    scale = col["price_scale"].to_pylist()
    ex = _times(col["exchange_ts"].cast(pa.int64()).to_pylist())
    rx = _times(col["receive_ts"].cast(pa.int64()).to_pylist())
    return [
        TickData(b, exchange, s, tok, Decimal(u).scaleb(-k), q, v, oi, e, r)
        for b, s, tok, u, k, q, v, oi, e, r in zip(
            col["broker"].to_pylist(),
            col["symbol"].to_pylist(),
            col["token"].to_pylist(),
            units,
            scale,
            col["last_quantity"].to_pylist(),
            col["volume"].to_pylist(),
            col["oi"].to_pylist(),
            ex,
            rx,
            strict=True,
        )  # fmt: skip
    ]


class ReplayTick(NamedTuple):
    """What the aggregator reads of a tick (``candles.aggregator.TickLike``), built in C by
    ``tuple.__new__`` from zipped columns: the cheapest object that has these attributes."""

    exchange: str
    symbol: str
    last_price: Decimal
    volume: int | None
    oi: int | None
    exchange_ts: datetime


@dataclass(slots=True)
class Chunk:
    """``size`` ticks for the aggregator, ``ticks`` built one by one as they are read (read them
    before asking for the next chunk: what is left unread then is skipped)."""

    clock: float  # the latest receive time in it: the aggregator's clock while it takes them
    size: int
    ticks: Iterator[ReplayTick]


_READ = ["symbol", "price_units", "price_scale", "volume", "oi", "exchange_ts", "receive_ts"]


def _array(column: pa.ChunkedArray) -> pa.Array:
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _take(values: list[Any], indices: pa.Array | np.ndarray) -> np.ndarray:
    """``values[i]`` for every index, as an object array (numpy's take: one loop in C)."""
    table = np.fromiter(values, dtype=object, count=len(values))  # np.array would inspect each value
    return table.take(indices if isinstance(indices, np.ndarray) else indices.to_numpy())


def _ints(array: pa.Array) -> list[int | None] | Iterator[None]:
    """An int64 column as Python ints (None where null; all null: an endless run of None)."""
    if array.null_count == len(array):
        return repeat(None)
    if array.null_count:
        return array.to_pylist()
    return array.to_numpy().tolist()  # int64 to int: exact, and cheaper than to_pylist


class _Decimals(dict):
    """units -> the Decimal ``units × 10^-scale`` for one scale, each built once (``units × 1E-scale``:
    exact, coefficient and exponent as archived, and cheaper than ``scaleb``)."""

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.unit = Decimal(f"1E{-scale}")

    def __missing__(self, units: int) -> Decimal:
        value = self[units] = Decimal(units) * self.unit
        return value


def _prices(units: pa.Array, scales: pa.Array, known: dict[int, _Decimals]) -> list[Decimal]:
    """Each tick's exact price, ``units × 10^-scale``: one Decimal per distinct (units, scale) in
    ``known`` (a part file's prices repeat across its row groups), shared by the ticks that have it."""
    scale = scales.to_numpy()
    first = int(scale[0])
    if (scale == first).all():  # the usual case: one scale in the whole row group
        return _decimals(units, first, known).tolist()
    out = np.empty(len(units), dtype=object)
    for k in np.unique(scale).tolist():
        where = np.flatnonzero(scale == k)
        out[where] = _decimals(units.take(pa.array(where)), k, known)
    return out.tolist()


def _decimals(units: pa.Array, scale: int, known: dict[int, _Decimals]) -> np.ndarray:
    cache = known.get(scale)
    if cache is None:
        cache = known[scale] = _Decimals(scale)
    encoded = pc.dictionary_encode(units)
    return _take(list(map(cache.__getitem__, encoded.dictionary.to_pylist())), encoded.indices)


def replay_chunks(path: Path, exchange: str, symbols: set[str] | None = None, chunk: int = 8192) -> Iterator[Chunk]:
    """One part file's ticks in order, as the aggregator reads them, ``chunk`` at a time.

    Each column becomes Python objects in a few C-level passes (pyarrow and numpy): a symbol, a
    price and an exchange time are built once per distinct value in a row group and shared by
    its ticks. The ticks themselves are built a chunk at a time, so only a chunk of them is alive
    at once (each is an object the cyclic garbage collector tracks)."""
    f = pq.ParquetFile(path, read_dictionary=["symbol"])
    new = tuple.__new__
    known: dict[int, _Decimals] = {}
    for g in range(f.num_row_groups):
        t = f.read_row_group(g, columns=_READ)
        if symbols is not None:
            t = t.filter(pc.is_in(t.column("symbol").cast(pa.string()), pa.array(sorted(symbols), pa.string())))
        n = t.num_rows
        if not n:
            continue
        sym = _array(t.column("symbol"))
        if not pa.types.is_dictionary(sym.type):
            sym = pc.dictionary_encode(sym)
        syms = _take(sym.dictionary.to_pylist(), sym.indices).tolist()
        prices = _prices(_array(t.column("price_units")), _array(t.column("price_scale")), known)
        ex = pc.dictionary_encode(_array(t.column("exchange_ts")).cast(pa.int64()))
        times = _take(_times(ex.dictionary.to_pylist()), ex.indices).tolist()
        vols = _ints(_array(t.column("volume")))
        ois = _ints(_array(t.column("oi")))  # equities have no OI: all null
        starts = range(0, n, chunk)
        clocks = np.maximum.reduceat(_array(t.column("receive_ts")).cast(pa.int64()).to_numpy(), starts).tolist()
        ticks = map(new, repeat(ReplayTick), zip(repeat(exchange), syms, prices, vols, ois, times))
        for a, clock in zip(starts, clocks, strict=True):
            size = min(chunk, n - a)
            part = islice(ticks, size)
            yield Chunk(clock / 1e6, size, part)
            deque(part, maxlen=0)  # whatever the reader left: the next chunk starts after it
