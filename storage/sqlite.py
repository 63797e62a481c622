"""SQLite candle store: the embedded default, one file, WAL mode.

Prices are stored as fixed-point TEXT (``format(d, "f")``) so a Decimal comes back exactly as it
went in, scale included; times as INTEGER microseconds since the epoch, returned as aware IST
datetimes.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from candles.model import Candle
from candles.reconcile import COUNTS as RECONCILIATION_COUNTS
from candles.reconcile import Reconciliation
from core.contracts import Contract
from core.ist import IST
from storage import migrations
from storage.base import (
    INSTRUMENT_COLUMNS,
    KEEP_NEWEST_METADATA,
    CandleStore,
    StorageFault,
    StoreError,
    WatchedSpans,
    WatchlistEntry,
    WatchRecord,
    candle_from_row,
    checked_contracts,
    contract_from_row,
)
from storage.continuous import checked_roll

log = logging.getLogger(__name__)

# what the disk under the file said: the write is retried once there is space, never dropped
_DISK_FAULTS = {sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR}

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICRO = timedelta(microseconds=1)

_COLUMNS = (
    'exchange, symbol, "interval", bucket, open, high, low, close, volume, oi, tick_count, '
    "first_tick, last_tick, cum_volume, final, source"
)
_UPSERT = f"""
INSERT INTO candles ({_COLUMNS}, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (exchange, symbol, "interval", bucket) DO UPDATE SET
    open = excluded.open, high = excluded.high, low = excluded.low, close = excluded.close,
    volume = excluded.volume, oi = excluded.oi, tick_count = excluded.tick_count,
    first_tick = excluded.first_tick, last_tick = excluded.last_tick,
    cum_volume = excluded.cum_volume, final = excluded.final, source = excluded.source,
    updated_at = excluded.updated_at
"""
# candle rule 8: a backfill candle never replaces a final live one (unless forced), and a partial
# one never replaces a backfill one (a late revision or a replay of a cut-short bucket after the
# bucket was mended); decided in the statement itself, so no read-then-write race with another writer
_UPSERT_KEEPING_LIVE = _UPSERT + (
    "WHERE (excluded.source <> 'backfill' OR candles.source <> 'live' OR candles.final = 0)\n"
    "  AND (excluded.source <> 'partial' OR candles.source <> 'backfill')\n"
)
# first_seen and last_seen only widen (days are ISO text, so MIN/MAX compare them as dates)
_UPSERT_INSTRUMENTS = f"""
INSERT INTO instruments ({INSTRUMENT_COLUMNS}, first_seen, last_seen)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (exchange, symbol) DO UPDATE SET {KEEP_NEWEST_METADATA},
    first_seen = MIN(instruments.first_seen, excluded.first_seen),
    last_seen = MAX(instruments.last_seen, excluded.last_seen)
"""


def to_micros(value: datetime) -> int:
    """Aware datetime → integer microseconds since the epoch (exact, no float)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise StoreError(f"refusing a naive datetime {value.isoformat()}: candle times must be timezone-aware")
    return (value - _EPOCH) // _MICRO


def from_micros(value: int) -> datetime:
    return (_EPOCH + value * _MICRO).astimezone(IST)


def price_text(value: Decimal) -> str:
    """Fixed-point text keeping the given scale: Decimal('1234.50') → '1234.50', never 1E+3."""
    if not isinstance(value, Decimal) or not value.is_finite():
        raise StoreError(f"refusing price {value!r}: prices must be finite Decimals")
    return format(value, "f")


def _dedupe(candles: Sequence[Candle]) -> list[Candle]:
    # The last version of a key wins, as if the candles had been written one by one.
    return list({c.key: c for c in candles}.values())


class SQLiteStore(CandleStore):
    """Candles in one SQLite file.

    ``read_only=True`` opens an existing file with ``mode=ro`` (the candle viewer): it never
    creates a file, and a missing one is a StoreError naming the path.
    """

    def __init__(self, path: str | Path, *, read_only: bool = False, timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self.description = f"sqlite:{self.path}{' (read-only)' if read_only else ''}"
        # The daemon builds the store on its main thread and writes from the storage thread;
        # the lock makes that hand-over (and any accidental sharing) safe.
        self._lock = threading.RLock()
        try:
            if read_only:
                if not self.path.is_file():
                    raise StoreError(
                        f"no candle database at {self.path}: check the path (SQLITE_PATH) "
                        "or run the daemon once to create it"
                    )
                uri = f"{self.path.resolve().as_uri()}?mode=ro"
                conn = sqlite3.connect(uri, uri=True, timeout=timeout, check_same_thread=False)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, timeout=timeout, check_same_thread=False)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from exc
        # Autocommit mode: transactions are explicit (BEGIN ... COMMIT) so nothing is implicit.
        conn.isolation_level = None
        self._conn = conn
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            if not read_only:
                conn.execute("PRAGMA journal_mode = WAL")
                # FULL: a commit is on disk when upsert returns, so the spool may drop it.
                conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from exc

    # -- plumbing -------------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._writable()
            conn = self._conn
            try:
                # IMMEDIATE takes the write lock now, so two writers serialise instead of failing
                # half-way with "database is locked".
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._error("start a transaction", exc) from exc
            try:
                yield conn
            except BaseException:
                self._rollback()
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise self._error("commit", exc) from exc

    def _rollback(self) -> None:
        """Roll back what is open; SQLite has already rolled back by itself after a full disk or
        an I/O error, and a second ROLLBACK would raise past the caller's error."""
        if not self._conn.in_transaction:
            return
        try:
            self._conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.warning("%s: rollback failed: %s", self.description, exc)

    def _writable(self) -> None:
        if self.read_only:
            raise StoreError(f"{self.description} was opened read-only: it cannot be written")

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._error("read", exc) from exc

    def _error(self, action: str, exc: Exception) -> StoreError:
        text = str(exc)
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in _DISK_FAULTS:
            return StorageFault(
                f"{self.description}: could not {action}: {text}; free space on its filesystem "
                "(the writer retries by itself)"
            )
        if "no such table" in text:
            return StoreError(
                f"{self.description} has no candle tables yet ({text}): "
                "run the daemon once (it migrates the schema at start)"
            )
        return StoreError(f"{self.description}: could not {action}: {text}")

    # -- schema ---------------------------------------------------------------------------------

    def schema_version(self) -> int:
        with self._lock:
            exists = self._query(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
            )
            if not exists:
                return 0
            (row,) = self._query("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            return int(row[0])

    def migrate(self) -> int:
        with self._transaction() as conn:
            try:
                conn.execute(migrations.SCHEMA_MIGRATIONS_SQLITE)
                current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0]
                todo = migrations.pending(int(current), self.description)
                for m in todo:
                    for statement in m.sqlite:
                        conn.execute(statement)
                    conn.execute(
                        "INSERT INTO schema_migrations (version, description) VALUES (?, ?)",
                        (m.version, m.description),
                    )
            except sqlite3.Error as exc:
                raise self._error("migrate the schema", exc) from exc
        for m in todo:
            log.info("%s: applied schema migration %d (%s)", self.description, m.version, m.description)
        return todo[-1].version if todo else int(current)

    # -- candles --------------------------------------------------------------------------------

    def upsert(self, candles: Sequence[Candle], *, force: bool = False) -> None:
        if not candles:
            return
        now = to_micros(datetime.now(timezone.utc))
        rows = [
            (
                c.exchange, c.symbol, c.interval, to_micros(c.bucket),
                price_text(c.open), price_text(c.high), price_text(c.low), price_text(c.close),
                c.volume, c.oi, c.tick_count, to_micros(c.first_tick), to_micros(c.last_tick),
                c.cum_volume, int(c.final), c.source, now,
            )
            for c in _dedupe(candles)
        ]
        with self._transaction() as conn:
            try:
                conn.executemany(_UPSERT if force else _UPSERT_KEEPING_LIVE, rows)
            except (sqlite3.Error, OverflowError) as exc:  # OverflowError: int beyond 64 bits
                raise self._error(f"write {len(rows)} candles", exc) from exc

    def delete(self, candles: Sequence[Candle]) -> int:
        """Remove these candles' keys (the self-test's probe); returns how many rows went."""
        keys = [(c.exchange, c.symbol, c.interval, to_micros(c.bucket)) for c in candles]
        if not keys:
            return 0
        with self._transaction() as conn:
            try:
                before = conn.total_changes
                conn.executemany(
                    'DELETE FROM candles WHERE exchange = ? AND symbol = ? AND "interval" = ? AND bucket = ?', keys
                )
                return conn.total_changes - before
            except sqlite3.Error as exc:
                raise self._error(f"delete {len(keys)} candles", exc) from exc

    def latest(self, exchange: str, symbol: str, interval: str, limit: int = 20) -> list[Candle]:
        rows = self._query(
            f'SELECT {_COLUMNS} FROM candles WHERE exchange = ? AND symbol = ? AND "interval" = ? '
            "ORDER BY bucket DESC LIMIT ?",
            (exchange, symbol, interval, max(limit, 0)),
        )
        return [_candle(r) for r in rows]

    def between(self, exchange: str, symbol: str, interval: str, start: datetime, end: datetime) -> list[Candle]:
        rows = self._query(
            f'SELECT {_COLUMNS} FROM candles WHERE exchange = ? AND symbol = ? AND "interval" = ? '
            "AND bucket >= ? AND bucket < ? ORDER BY bucket",
            (exchange, symbol, interval, to_micros(start), to_micros(end)),
        )
        return [_candle(r) for r in rows]

    def window(self, exchange: str, symbol: str, interval: str, start: datetime, end: datetime, limit: int) -> list[Candle]:
        rows = self._query(
            f'SELECT {_COLUMNS} FROM candles WHERE exchange = ? AND symbol = ? AND "interval" = ? '
            "AND bucket >= ? AND bucket < ? ORDER BY bucket DESC LIMIT ?",
            (exchange, symbol, interval, to_micros(start), to_micros(end), max(limit, 0)),
        )
        return [_candle(r) for r in reversed(rows)]

    def series(self) -> list[tuple[str, str, str]]:
        # a loose index scan on the primary key: each step finds the next series, a probe each
        found: list[tuple[str, str, str]] = []
        sql = 'SELECT exchange, symbol, "interval" FROM candles '
        order = ' ORDER BY exchange, symbol, "interval" LIMIT 1'
        rows = self._query(sql + order)
        while rows:
            found.append(rows[0])
            rows = self._query(sql + 'WHERE (exchange, symbol, "interval") > (?, ?, ?)' + order, rows[0])
        return found

    def latest_per_series(self, since_epoch: float) -> list[Candle]:
        since = to_micros(datetime.fromtimestamp(since_epoch, timezone.utc))
        cols = ", ".join(f"c.{name.strip()}" for name in _COLUMNS.split(","))
        rows = self._query(
            f"""
            SELECT {cols} FROM candles AS c
            JOIN (SELECT exchange, symbol, "interval", MAX(bucket) AS bucket
                  FROM candles WHERE bucket >= ? GROUP BY exchange, symbol, "interval") AS m
              ON c.exchange = m.exchange AND c.symbol = m.symbol
             AND c."interval" = m."interval" AND c.bucket = m.bucket
            ORDER BY c.exchange, c.symbol, c."interval"
            """,
            (since,),
        )
        return [_candle(r) for r in rows]

    # -- watchlist ------------------------------------------------------------------------------

    def watchlist(self) -> list[WatchlistEntry]:
        rows = self._query(
            "SELECT exchange, symbol, enabled, priority FROM watchlist WHERE enabled = 1 "
            "ORDER BY priority DESC, exchange, symbol"
        )
        return [WatchlistEntry(e, s, bool(en), int(p)) for e, s, en, p in rows]

    def set_watchlist(self, entries: Sequence[WatchlistEntry]) -> None:
        rows = [(e.exchange, e.symbol, int(e.enabled), e.priority) for e in entries]
        with self._transaction() as conn:
            try:
                conn.executemany(
                    "INSERT INTO watchlist (exchange, symbol, enabled, priority) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (exchange, symbol) DO UPDATE SET "
                    "enabled = excluded.enabled, priority = excluded.priority",
                    rows,
                )
            except sqlite3.Error as exc:
                raise self._error("write the watchlist", exc) from exc

    # -- watched spans --------------------------------------------------------------------------

    def record_watched(self, run: str, records: Sequence[WatchRecord]) -> None:
        with self._transaction() as conn:
            try:
                for r in records:
                    at = round(r.at * 1_000_000)
                    if r.kind == "open":
                        conn.executemany(
                            "INSERT INTO watched (exchange, symbol, began, ended, run, open) VALUES (?, ?, ?, ?, ?, 1) "
                            "ON CONFLICT (exchange, symbol, began) DO NOTHING",
                            [(e, s, at, at, run) for e, s in r.keys],
                        )
                    elif r.kind == "extend":
                        conn.execute("UPDATE watched SET ended = ? WHERE run = ? AND open = 1 AND ended < ?", (at, run, at))
                    elif r.kind == "known":
                        conn.executemany(
                            "INSERT INTO watched (exchange, symbol, began, ended, run, open) VALUES (?, ?, ?, ?, ?, 0) "
                            "ON CONFLICT (exchange, symbol, began) DO UPDATE SET ended = MAX(ended, excluded.ended)",
                            [(e, s, at, round(r.until * 1_000_000), run) for e, s in r.keys],
                        )
                    else:
                        # "+run": look each row up by its key (exchange, symbol, began), not through the
                        # index of the run's open spans, which would scan them all for every key
                        conn.executemany(
                            "UPDATE watched SET ended = MAX(ended, ?), open = 0 "
                            "WHERE exchange = ? AND symbol = ? AND +run = ? AND open = 1",
                            [(at, e, s, run) for e, s in r.keys],
                        )
            except sqlite3.Error as exc:
                raise self._error("record the watched spans", exc) from exc

    def watched(self, since: float, until: float, keys: Sequence[tuple[str, str]] | None = None) -> WatchedSpans:
        rows = self._query(
            "SELECT exchange, symbol, began, ended FROM watched WHERE ended > ? AND began < ? "
            "ORDER BY exchange, symbol, began",
            (round(since * 1_000_000), round(until * 1_000_000)),
        )
        wanted = None if keys is None else set(keys)
        spans: WatchedSpans = {}
        for e, s, began, ended in rows:
            if wanted is None or (e, s) in wanted:
                spans.setdefault((e, s), []).append((began / 1_000_000, ended / 1_000_000))
        return spans

    # -- reconciliation -------------------------------------------------------------------------

    def record_reconciliations(self, results: Sequence[Reconciliation]) -> None:
        columns = ("day", "exchange", "symbol", *RECONCILIATION_COUNTS, "checked_at")
        rows = [
            (r.day.isoformat(), r.exchange, r.symbol, *(getattr(r, c) for c in RECONCILIATION_COUNTS),
             to_micros(r.checked_at or datetime.now(IST)))
            for r in results
        ]  # fmt: skip
        with self._transaction() as conn:
            try:
                conn.executemany(
                    f"INSERT OR REPLACE INTO reconciliation ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                    rows,
                )
            except sqlite3.Error as exc:
                raise self._error("record the reconciliation", exc) from exc

    def reconciliations(self, day: date) -> list[Reconciliation]:
        rows = self._query(
            f"SELECT exchange, symbol, {', '.join(RECONCILIATION_COUNTS)}, checked_at FROM reconciliation "
            "WHERE day = ? ORDER BY exchange, symbol",
            (day.isoformat(),),
        )
        return [
            Reconciliation(day, e, s, *(int(n) for n in counts), checked_at=from_micros(at))
            for e, s, *counts, at in rows
        ]

    # -- instruments ----------------------------------------------------------------------------

    def record_instruments(self, contracts: Sequence[Contract], seen: date) -> None:
        checked = checked_contracts(contracts, seen)
        day = seen.isoformat()
        rows = [
            (c.exchange, c.symbol, c.underlying, c.kind, None if c.expiry is None else c.expiry.isoformat(),
             None if c.strike is None else price_text(c.strike), c.lot_size, price_text(c.tick_size), c.token,
             day, day)
            for c in checked
        ]  # fmt: skip
        if not rows:
            return
        with self._transaction() as conn:
            try:
                conn.executemany(_UPSERT_INSTRUMENTS, rows)
            except (sqlite3.Error, OverflowError) as exc:  # OverflowError: int beyond 64 bits
                raise self._error(f"record {len(rows)} instruments", exc) from exc

    def instruments(self, exchange: str | None = None, underlying: str | None = None) -> list[Contract]:
        rows = self._query(
            f"SELECT {INSTRUMENT_COLUMNS} FROM instruments "
            "WHERE (? IS NULL OR exchange = ?) AND (? IS NULL OR underlying = ?) "
            "ORDER BY exchange, underlying, expiry NULLS FIRST, symbol",
            (exchange, exchange, underlying, underlying),
        )
        return [contract_from_row(r, date.fromisoformat) for r in rows]

    def instrument(self, exchange: str, symbol: str) -> Contract | None:
        rows = self._query(
            f"SELECT {INSTRUMENT_COLUMNS} FROM instruments WHERE exchange = ? AND symbol = ?", (exchange, symbol)
        )
        return contract_from_row(rows[0], date.fromisoformat) if rows else None

    def instrument_seen(self, exchange: str, symbol: str) -> tuple[date, date] | None:
        rows = self._query(
            "SELECT first_seen, last_seen FROM instruments WHERE exchange = ? AND symbol = ?", (exchange, symbol)
        )
        return (date.fromisoformat(rows[0][0]), date.fromisoformat(rows[0][1])) if rows else None

    # -- continuous futures series -------------------------------------------------------------

    def record_roll(self, exchange: str, series: str, day: date, symbol: str) -> None:
        checked_roll(exchange, series, day, symbol)
        with self._transaction() as conn:
            try:
                conn.execute(
                    "INSERT INTO rolls (exchange, series, day, symbol) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (exchange, series, day) DO UPDATE SET symbol = excluded.symbol",
                    (exchange, series, day.isoformat(), symbol),
                )
            except sqlite3.Error as exc:
                raise self._error(f"record the roll of {exchange}:{series} on {day.isoformat()}", exc) from exc

    def rolls(self, exchange: str, series: str) -> list[tuple[date, str]]:
        rows = self._query("SELECT day, symbol FROM rolls WHERE exchange = ? AND series = ? ORDER BY day", (exchange, series))
        return [(date.fromisoformat(day), symbol) for day, symbol in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __repr__(self) -> str:
        return f"SQLiteStore({self.description!r})"


def _candle(row: tuple) -> Candle:
    return candle_from_row(row, from_micros)
