"""PostgreSQL candle store (production): psycopg2, ``numeric`` prices, batched upserts.

The connection is opened lazily and re-opened after a loss: the call that meets a dead
connection raises StoreUnavailable (the spool keeps the candles and retries), the next call
connects afresh. Error messages and ``description`` never contain the password.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras

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
    Fenced,
    StoreError,
    StoreUnavailable,
    TextMemo,
    WatchedSpans,
    WatchlistEntry,
    WatchRecord,
    candle_from_row,
    checked_contracts,
    contract_from_row,
)
from storage.continuous import checked_roll
from storage.lease import FENCE_CHECK, Fence

log = logging.getLogger(__name__)

T = TypeVar("T")

_COLUMNS = (
    'exchange, symbol, "interval", bucket, open, high, low, close, volume, oi, tick_count, '
    "first_tick, last_tick, cum_volume, final, source"
)
# Candles go in with COPY into a per-session staging table, then one INSERT ... SELECT upserts
# them: about a tenth of the client-side work of a VALUES list (the writer shares the
# interpreter with the feed threads, so its Python time is what delays a bucket's candles).
_STAGE = "marketfeed_candles_stage"
_CREATE_STAGE = f"""
CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (
    exchange text, symbol text, "interval" text, bucket timestamptz, open numeric, high numeric,
    low numeric, close numeric, volume bigint, oi bigint, tick_count integer, first_tick timestamptz,
    last_tick timestamptz, cum_volume bigint, final boolean, source text
) ON COMMIT DELETE ROWS
"""
_COPY = f"COPY {_STAGE} ({_COLUMNS}) FROM STDIN"
_UPSERT_STAGED = f"""
INSERT INTO candles ({_COLUMNS}) SELECT {_COLUMNS} FROM {_STAGE}
ON CONFLICT (exchange, symbol, "interval", bucket) DO UPDATE SET
    open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close,
    volume = EXCLUDED.volume, oi = EXCLUDED.oi, tick_count = EXCLUDED.tick_count,
    first_tick = EXCLUDED.first_tick, last_tick = EXCLUDED.last_tick,
    cum_volume = EXCLUDED.cum_volume, final = EXCLUDED.final, source = EXCLUDED.source,
    updated_at = now()
"""
# candle rule 8: a backfill candle never replaces a final live one (unless forced), and a partial
# one never replaces a backfill one (a late revision or a replay of a cut-short bucket after the
# bucket was mended); decided in the statement itself, so no read-then-write race with another writer
_UPSERT_STAGED_KEEPING_LIVE = _UPSERT_STAGED + (
    "WHERE (EXCLUDED.source <> 'backfill' OR candles.source <> 'live' OR NOT candles.final)\n"
    "  AND (EXCLUDED.source <> 'partial' OR candles.source <> 'backfill')\n"
)
# first_seen and last_seen only widen
_UPSERT_INSTRUMENTS = f"""
INSERT INTO instruments ({INSTRUMENT_COLUMNS}, first_seen, last_seen) VALUES %s
ON CONFLICT (exchange, symbol) DO UPDATE SET {KEEP_NEWEST_METADATA},
    first_seen = LEAST(instruments.first_seen, EXCLUDED.first_seen),
    last_seen = GREATEST(instruments.last_seen, EXCLUDED.last_seen)
"""
# COPY text format: backslash, tab, newline and carriage return are escaped; \N is NULL
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_COPY_READ = 1 << 16  # characters psycopg2 asks the COPY source for at a time


class _CopySource:
    """COPY text made line by line as psycopg2 reads it, so a 27,000-candle batch (a 15-minute
    close at 9,000 instruments) never sits in memory as one string and its 4-byte-per-character
    StringIO copy."""

    __slots__ = ("_lines", "failure")

    def __init__(self, lines: Iterator[str]) -> None:
        self._lines = lines
        self.failure: BaseException | None = None

    def read(self, size: int = -1) -> str:
        """At least ``size`` characters (whole lines; all of them when ``size`` < 0) unless the
        rows run out; "" at the end."""
        parts: list[str] = []
        have = 0
        try:
            for line in self._lines:
                parts.append(line)
                have += len(line)
                if 0 <= size <= have:
                    break
        except Exception as exc:
            self.failure = exc
            raise
        return "".join(parts)


# Any constant: serialises concurrent migrations of daemons sharing one database (--shard i/n).
_MIGRATION_LOCK = 0x6D66_6565_6431  # "mfeed1"
_URL_SCHEMES = ("postgresql://", "postgres://")
_DSN_HELP = (
    "use postgresql://user:password@host:5432/dbname or 'host=... port=... dbname=... user=...'"
)


def parse_dsn(dsn: str) -> dict[str, str]:
    """The DSN's parameters (URL or key=value form); StoreError, without the DSN, if malformed."""
    try:
        return psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError:
        # libpq's message quotes the text around the error, which may be the password.
        raise StoreError(f"PG_CONN_STR is not a valid PostgreSQL connection string: {_DSN_HELP}") from None


# libpq checks these values only when it connects, and then reads as "cannot reach PostgreSQL".
_CHOICES = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "gssencmode": ("disable", "prefer", "require"),
    "channel_binding": ("disable", "prefer", "require"),
    "target_session_attrs": ("any", "read-write", "read-only", "primary", "standby", "prefer-standby"),
    "load_balance_hosts": ("disable", "random"),
    "sslnegotiation": ("postgres", "direct"),
    "sslcertmode": ("disable", "allow", "require"),
}
_WHOLE = ("connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
          "tcp_user_timeout")  # fmt: skip
# libpq's parse errors that quote only an option's name, never a value (which may be the password)
_NAMED_OPTION = re.compile(r'invalid (?:connection option|URI query parameter:) "([A-Za-z0-9_]+)"')


def dsn_problems(dsn: str) -> list[str]:
    """What is wrong with ``dsn`` as a libpq connection string, found without connecting; each
    problem names PG_CONN_STR and never contains the password."""
    text = dsn.strip()
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", text)
    if scheme and not text.startswith(_URL_SCHEMES):
        return [f"PG_CONN_STR is not a valid PostgreSQL connection string: the scheme is {scheme.group(1)}://; {_DSN_HELP}"]
    try:
        params = psycopg2.extensions.parse_dsn(text)
    except psycopg2.ProgrammingError as exc:
        named = _NAMED_OPTION.search(str(exc))
        what = f"libpq knows no option {named.group(1)!r}" if named else "it cannot be parsed"
        return [f"PG_CONN_STR is not a valid PostgreSQL connection string ({what}): {_DSN_HELP}"]
    problems = []
    for key, allowed in _CHOICES.items():
        value = params.get(key)
        if value is not None and value not in allowed:
            problems.append(f"PG_CONN_STR is invalid: {key} {value!r} is not one of {', '.join(allowed)}")
    for port in (params.get("port") or "").split(","):
        if port.strip() and not (port.strip().isdigit() and 1 <= int(port) <= 65535):
            problems.append(f"PG_CONN_STR is invalid: port {port.strip()!r} is not a port number (1 to 65535)")
    for key in _WHOLE:
        value = params.get(key)
        if value is not None and not value.strip().lstrip("-").isdigit():
            problems.append(f"PG_CONN_STR is invalid: {key} {value!r} is not a whole number")
    return problems


def redact_dsn(dsn: str) -> str:
    """The DSN in its own form with the password replaced by ``***``."""
    if dsn.startswith(_URL_SCHEMES):
        parts = urlsplit(dsn)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostinfo = netloc.rpartition("@")
            if ":" in userinfo:
                userinfo = userinfo.split(":", 1)[0] + ":***"
            netloc = f"{userinfo}@{hostinfo}"
        query = urlencode(
            [(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)],
            safe="*",
        )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    params = parse_dsn(dsn)
    if "password" in params:
        params["password"] = "***"
    return " ".join(f"{k}={_kv_quote(v)}" for k, v in params.items())


def _kv_quote(value: str) -> str:
    if value and not any(ch in value for ch in " '\\"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _where(params: dict[str, str]) -> str:
    """Where the server is, for messages: host:port, or the socket directory."""
    host = params.get("host") or params.get("hostaddr") or "the local socket (PGHOST)"
    port = params.get("port") or "5432"
    return f"{host}:{port}"


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


class PostgresStore(CandleStore):
    """Candles in PostgreSQL. ``dsn`` is a URL or key=value libpq connection string."""

    def __init__(self, dsn: str, connect_timeout: int = 5, *, read_only: bool = False) -> None:
        self._params = parse_dsn(dsn)
        self._dsn = dsn
        self._password = self._params.get("password") or ""
        self.connect_timeout = connect_timeout
        self.read_only = read_only
        shown = redact_dsn(dsn)
        # one scheme prefix: a URL has its own, key=value pairs get it
        shown = shown if shown.startswith(_URL_SCHEMES) else f"postgresql:{shown}"
        self.description = f"{shown}{' (read-only)' if read_only else ''}"
        self.where = _where(self._params)
        self._conn: psycopg2.extensions.connection | None = None
        self._lock = threading.RLock()
        #: hot standby (storage/lease.py): while ``fenced``, candle writes need ``fence``, the
        #: current lease epoch, and the database refuses them (``Fenced``) once it is stale
        self.fenced = False
        self.fence: Fence | None = None
        self.session_timeout: float | None = None  # seconds: a session paused mid-transaction ends

    # -- connection -----------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        return text.replace(self._password, "***") if self._password else text

    def _connect(self) -> psycopg2.extensions.connection:
        options: dict[str, Any] = {
            "connect_timeout": self.connect_timeout,
            "application_name": "marketfeed",
            # A daemon runs for months: notice a silently dead server in about a minute.
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
        }
        # What the operator wrote in the DSN wins over our defaults.
        options = {k: v for k, v in options.items() if k not in self._params}
        try:
            conn = psycopg2.connect(self._dsn, **options)
        except psycopg2.OperationalError as exc:
            raise StoreUnavailable(self._connect_message(exc)) from None
        if self.read_only:
            conn.set_session(readonly=True)
        if self.session_timeout:
            # a writer stopped inside a transaction holds the lease row FOR SHARE: the server ends
            # its session after this long, so the other daemon's takeover never waits on it for good
            ms = max(1000, int(self.session_timeout * 1000))
            try:
                with conn.cursor() as cur:
                    cur.execute(f"SET idle_in_transaction_session_timeout = {ms}")
                    cur.execute(f"SET statement_timeout = {2 * ms}")
                conn.commit()
            except psycopg2.Error as exc:
                conn.close()
                raise StoreUnavailable(self._scrub(f"PostgreSQL at {self.where}: {_first_line(exc)}")) from None
        log.info("connected to PostgreSQL at %s", self.where)
        return conn

    def _connect_message(self, exc: BaseException) -> str:
        text = str(exc)
        low = text.lower()
        user = self._params.get("user", "")
        if "password authentication failed" in low or "no password supplied" in low:
            return self._scrub(
                f"PostgreSQL at {self.where} rejected the login for user {user!r} "
                "(password authentication failed): check the user and password in PG_CONN_STR"
            )
        if "does not exist" in low and "database" in low:
            return self._scrub(
                f"PostgreSQL at {self.where} has no database {self._params.get('dbname', user)!r}: "
                "create it (createdb) or fix the database name in PG_CONN_STR"
            )
        if "does not exist" in low and "role" in low:
            return self._scrub(
                f"PostgreSQL at {self.where} has no user {user!r}: "
                "create the role or fix the user in PG_CONN_STR"
            )
        if "connection refused" in low:
            reason = "connection refused"
        elif "timeout expired" in low or "timed out" in low:
            reason = f"no answer within {self.connect_timeout}s"
        elif "could not translate host name" in low or "name or service not known" in low:
            reason = "unknown host name"
        elif "no such file or directory" in low:
            reason = "no server socket there"
        else:
            reason = _first_line(exc)
        return self._scrub(
            f"cannot reach PostgreSQL at {self.where} ({reason}): "
            "check PG_CONN_STR and that the server is running"
        )

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg2.Error):
                conn.close()

    def _run(self, action: str, work: Callable[[Any], T]) -> T:
        """Run ``work(cursor)`` in one transaction, translating errors into store errors."""
        with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = None
                self._conn = self._connect()
            conn = self._conn
            try:
                with conn, conn.cursor() as cur:  # commit on success, roll back on error
                    return work(cur)
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                # Lost connection, server shutting down, statement cancelled, disk full ...:
                # all "try again later". A fresh connection next time costs little and never
                # inherits a broken session.
                lost = bool(conn.closed)
                self._drop_connection()
                if lost:
                    what = f"lost the connection to PostgreSQL at {self.where} while trying to {action}"
                else:
                    what = f"PostgreSQL at {self.where} could not {action}"
                raise StoreUnavailable(
                    self._scrub(
                        f"{what} ({_first_line(exc)}): it reconnects on the next call; "
                        "check that the server is running"
                    )
                ) from None
            except psycopg2.errors.UndefinedTable as exc:
                raise StoreError(
                    f"{self.description} has no candle tables yet ({_first_line(exc)}): "
                    "run the daemon once (it migrates the schema at start)"
                ) from None
            except psycopg2.Error as exc:
                raise StoreError(self._scrub(f"{self.description}: could not {action}: {_first_line(exc)}")) from None

    # -- schema ---------------------------------------------------------------------------------

    def schema_version(self) -> int:
        def work(cur: Any) -> int:
            cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
            if not cur.fetchone()[0]:
                return 0
            cur.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            return int(cur.fetchone()[0])

        return self._run("read the schema version", work)

    def migrate(self) -> int:
        if self.read_only:
            raise StoreError(f"{self.description} was opened read-only: it cannot be migrated")
        applied: list[migrations.Migration] = []

        def work(cur: Any) -> int:
            applied.clear()
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            cur.execute(migrations.SCHEMA_MIGRATIONS_POSTGRES)
            cur.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            current = int(cur.fetchone()[0])
            for m in migrations.pending(current, self.description):
                for statement in m.postgres:
                    cur.execute(statement)
                cur.execute(
                    "INSERT INTO schema_migrations (version, description) VALUES (%s, %s)",
                    (m.version, m.description),
                )
                applied.append(m)
                current = m.version
            return current

        version = self._run("migrate the schema", work)
        for m in applied:
            log.info("%s: applied schema migration %d (%s)", self.description, m.version, m.description)
        return version

    # -- candles --------------------------------------------------------------------------------

    def upsert(self, candles: Sequence[Candle], *, force: bool = False) -> None:
        if not candles:
            return
        # One statement may not touch a row twice (ON CONFLICT ... cardinality violation), so
        # the last version of each key wins here, as if the candles had been written in order.
        unique = {c.key: c for c in candles}.values()
        fence = self.fence
        if self.fenced and fence is None:
            raise Fenced(f"{self.description}: not the leader (no lease held): candles are not written")

        def work(cur: Any) -> None:
            if fence is not None:
                cur.execute(FENCE_CHECK, (fence.name, fence.holder, fence.epoch))
                if cur.fetchone() is None:
                    raise Fenced(
                        f"{self.description}: lease {fence.name!r} epoch {fence.epoch} is no longer "
                        f"{fence.holder!r}'s (expired or taken over): the write was refused"
                    )
            cur.execute(_CREATE_STAGE)
            source = _CopySource(_copy_lines(unique))
            try:
                cur.copy_expert(_COPY, source, size=_COPY_READ)
            except psycopg2.Error:
                if source.failure is not None:  # a row could not be written out: that, not the
                    raise source.failure from None  # "COPY failed" psycopg2 makes of it
                raise
            cur.execute(_UPSERT_STAGED if force else _UPSERT_STAGED_KEEPING_LIVE)

        self._run(f"write {len(unique)} candles", work)

    def delete(self, candles: Sequence[Candle]) -> int:
        """Remove these candles' keys (the self-test's probe); returns how many rows went."""
        keys = list({(c.exchange, c.symbol, c.interval, _aware(c.bucket)) for c in candles})
        if not keys:
            return 0

        def work(cur: Any) -> int:
            psycopg2.extras.execute_values(
                cur,
                'DELETE FROM candles AS c USING (VALUES %s) AS k (exchange, symbol, "interval", bucket) '
                'WHERE c.exchange = k.exchange AND c.symbol = k.symbol AND c."interval" = k."interval" '
                "AND c.bucket = k.bucket",
                keys,
                page_size=len(keys),  # one statement, so rowcount counts every row
            )
            return cur.rowcount

        return self._run(f"delete {len(keys)} candles", work)

    def latest(self, exchange: str, symbol: str, interval: str, limit: int = 20) -> list[Candle]:
        def work(cur: Any) -> list[Candle]:
            cur.execute(
                f'SELECT {_COLUMNS} FROM candles WHERE exchange = %s AND symbol = %s AND "interval" = %s '
                "ORDER BY bucket DESC LIMIT %s",
                (exchange, symbol, interval, max(limit, 0)),
            )
            return [_candle(r) for r in cur.fetchall()]

        return self._run("read candles", work)

    def between(self, exchange: str, symbol: str, interval: str, start: datetime, end: datetime) -> list[Candle]:
        def work(cur: Any) -> list[Candle]:
            cur.execute(
                f'SELECT {_COLUMNS} FROM candles WHERE exchange = %s AND symbol = %s AND "interval" = %s '
                "AND bucket >= %s AND bucket < %s ORDER BY bucket",
                (exchange, symbol, interval, start, end),
            )
            return [_candle(r) for r in cur.fetchall()]

        return self._run("read candles", work)

    def window(self, exchange: str, symbol: str, interval: str, start: datetime, end: datetime, limit: int) -> list[Candle]:
        def work(cur: Any) -> list[Candle]:
            cur.execute(
                f'SELECT {_COLUMNS} FROM candles WHERE exchange = %s AND symbol = %s AND "interval" = %s '
                "AND bucket >= %s AND bucket < %s ORDER BY bucket DESC LIMIT %s",
                (exchange, symbol, interval, start, end, max(limit, 0)),
            )
            return [_candle(r) for r in reversed(cur.fetchall())]

        return self._run("read candles", work)

    def series(self) -> list[tuple[str, str, str]]:
        def work(cur: Any) -> list[tuple[str, str, str]]:
            # a loose index scan on the primary key (a recursive CTE, one probe per series):
            # https://wiki.postgresql.org/wiki/Loose_indexscan
            cur.execute(
                """
                WITH RECURSIVE s AS (
                    (SELECT exchange, symbol, "interval" FROM candles ORDER BY exchange, symbol, "interval" LIMIT 1)
                    UNION ALL
                    SELECT n.exchange, n.symbol, n."interval" FROM s, LATERAL (
                        SELECT c.exchange, c.symbol, c."interval" FROM candles AS c
                        WHERE (c.exchange, c.symbol, c."interval") > (s.exchange, s.symbol, s."interval")
                        ORDER BY c.exchange, c.symbol, c."interval" LIMIT 1
                    ) AS n
                )
                SELECT exchange, symbol, "interval" FROM s
                """
            )
            return [tuple(r) for r in cur.fetchall()]

        return self._run("read the stored series", work)

    def latest_per_series(self, since_epoch: float) -> list[Candle]:
        since = datetime.fromtimestamp(since_epoch, timezone.utc)

        def work(cur: Any) -> list[Candle]:
            cur.execute(
                f'SELECT DISTINCT ON (exchange, symbol, "interval") {_COLUMNS} FROM candles '
                'WHERE bucket >= %s ORDER BY exchange, symbol, "interval", bucket DESC',
                (since,),
            )
            return [_candle(r) for r in cur.fetchall()]

        return self._run("read the newest candles", work)

    # -- watchlist ------------------------------------------------------------------------------

    def watchlist(self) -> list[WatchlistEntry]:
        def work(cur: Any) -> list[WatchlistEntry]:
            cur.execute(
                "SELECT exchange, symbol, enabled, priority FROM watchlist WHERE enabled "
                "ORDER BY priority DESC, exchange, symbol"
            )
            return [WatchlistEntry(e, s, bool(en), int(p)) for e, s, en, p in cur.fetchall()]

        return self._run("read the watchlist", work)

    def set_watchlist(self, entries: Sequence[WatchlistEntry]) -> None:
        rows = list({(e.exchange, e.symbol): (e.exchange, e.symbol, e.enabled, e.priority) for e in entries}.values())
        if not rows:
            return

        def work(cur: Any) -> None:
            psycopg2.extras.execute_values(
                cur,
                "INSERT INTO watchlist (exchange, symbol, enabled, priority) VALUES %s "
                "ON CONFLICT (exchange, symbol) DO UPDATE SET "
                "enabled = EXCLUDED.enabled, priority = EXCLUDED.priority",
                rows,
            )

        self._run("write the watchlist", work)

    # -- watched spans --------------------------------------------------------------------------

    def record_watched(self, run: str, records: Sequence[WatchRecord]) -> None:
        def work(cur: Any) -> None:
            for r in records:
                at = datetime.fromtimestamp(r.at, timezone.utc)
                if r.kind == "open":
                    psycopg2.extras.execute_values(
                        cur,
                        "INSERT INTO watched (exchange, symbol, began, ended, run, open) VALUES %s "
                        "ON CONFLICT (exchange, symbol, began) DO NOTHING",
                        [(e, s, at, at, run, True) for e, s in r.keys],
                    )
                elif r.kind == "extend":
                    cur.execute("UPDATE watched SET ended = %s WHERE run = %s AND open AND ended < %s", (at, run, at))
                elif r.kind == "known":
                    until = datetime.fromtimestamp(r.until, timezone.utc)
                    psycopg2.extras.execute_values(
                        cur,
                        "INSERT INTO watched (exchange, symbol, began, ended, run, open) VALUES %s "
                        "ON CONFLICT (exchange, symbol, began) DO UPDATE SET ended = GREATEST(watched.ended, EXCLUDED.ended)",
                        [(e, s, at, until, run, False) for e, s in r.keys],
                    )
                elif r.keys:
                    psycopg2.extras.execute_values(
                        cur,
                        "UPDATE watched AS w SET ended = GREATEST(w.ended, k.at), open = false "
                        "FROM (VALUES %s) AS k (e, s, at, run) "
                        "WHERE w.run = k.run AND w.open AND w.exchange = k.e AND w.symbol = k.s",
                        [(e, s, at, run) for e, s in r.keys],
                    )

        self._run("record the watched spans", work)

    def watched(self, since: float, until: float, keys: Sequence[tuple[str, str]] | None = None) -> WatchedSpans:
        def work(cur: Any) -> WatchedSpans:
            cur.execute(
                "SELECT exchange, symbol, extract(epoch FROM began), extract(epoch FROM ended) FROM watched "
                "WHERE ended > %s AND began < %s ORDER BY exchange, symbol, began",
                (datetime.fromtimestamp(since, timezone.utc), datetime.fromtimestamp(until, timezone.utc)),
            )
            wanted = None if keys is None else set(keys)
            spans: WatchedSpans = {}
            for e, s, began, ended in cur.fetchall():
                if wanted is None or (e, s) in wanted:
                    spans.setdefault((e, s), []).append((float(began), float(ended)))
            return spans

        return self._run("read the watched spans", work)

    # -- reconciliation -------------------------------------------------------------------------

    def record_reconciliations(self, results: Sequence[Reconciliation]) -> None:
        columns = ("day", "exchange", "symbol", *RECONCILIATION_COUNTS, "checked_at")
        rows = list({
            (r.day, r.exchange, r.symbol): (r.day, r.exchange, r.symbol, *(getattr(r, c) for c in RECONCILIATION_COUNTS),
                                            _aware(r.checked_at or datetime.now(IST)))
            for r in results
        }.values())  # fmt: skip
        if not rows:
            return

        def work(cur: Any) -> None:
            psycopg2.extras.execute_values(
                cur,
                f"INSERT INTO reconciliation ({', '.join(columns)}) VALUES %s ON CONFLICT (day, exchange, symbol) "
                f"DO UPDATE SET {', '.join(f'{c} = EXCLUDED.{c}' for c in columns[3:])}",
                rows,
            )

        self._run("record the reconciliation", work)

    def reconciliations(self, day: date) -> list[Reconciliation]:
        def work(cur: Any) -> list[Reconciliation]:
            cur.execute(
                f"SELECT exchange, symbol, {', '.join(RECONCILIATION_COUNTS)}, checked_at FROM reconciliation "
                "WHERE day = %s ORDER BY exchange, symbol",
                (day,),
            )
            return [
                Reconciliation(day, e, s, *(int(n) for n in counts), checked_at=_ist(at))
                for e, s, *counts, at in cur.fetchall()
            ]

        return self._run("read the reconciliation", work)

    # -- instruments ----------------------------------------------------------------------------

    def record_instruments(self, contracts: Sequence[Contract], seen: date) -> None:
        rows = [
            (c.exchange, c.symbol, c.underlying, c.kind, c.expiry, c.strike, c.lot_size, c.tick_size, c.token,
             seen, seen)
            for c in checked_contracts(contracts, seen)
        ]  # fmt: skip
        if not rows:
            return

        def work(cur: Any) -> None:
            psycopg2.extras.execute_values(cur, _UPSERT_INSTRUMENTS, rows, page_size=1000)

        self._run(f"record {len(rows)} instruments", work)

    def instruments(self, exchange: str | None = None, underlying: str | None = None) -> list[Contract]:
        def work(cur: Any) -> list[Contract]:
            cur.execute(
                f"SELECT {INSTRUMENT_COLUMNS} FROM instruments "
                "WHERE (%(e)s::text IS NULL OR exchange = %(e)s) AND (%(u)s::text IS NULL OR underlying = %(u)s) "
                "ORDER BY exchange, underlying, expiry NULLS FIRST, symbol",
                {"e": exchange, "u": underlying},
            )
            return [contract_from_row(r, _day) for r in cur.fetchall()]

        return self._run("read the instruments", work)

    def instrument(self, exchange: str, symbol: str) -> Contract | None:
        def work(cur: Any) -> Contract | None:
            cur.execute(
                f"SELECT {INSTRUMENT_COLUMNS} FROM instruments WHERE exchange = %s AND symbol = %s", (exchange, symbol)
            )
            row = cur.fetchone()
            return None if row is None else contract_from_row(row, _day)

        return self._run("read the instruments", work)

    def instrument_seen(self, exchange: str, symbol: str) -> tuple[date, date] | None:
        def work(cur: Any) -> tuple[date, date] | None:
            cur.execute(
                "SELECT first_seen, last_seen FROM instruments WHERE exchange = %s AND symbol = %s", (exchange, symbol)
            )
            row = cur.fetchone()
            return None if row is None else (row[0], row[1])

        return self._run("read the instruments", work)

    # -- continuous futures series -------------------------------------------------------------

    def record_roll(self, exchange: str, series: str, day: date, symbol: str) -> None:
        checked_roll(exchange, series, day, symbol)

        def work(cur: Any) -> None:
            cur.execute(
                "INSERT INTO rolls (exchange, series, day, symbol) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (exchange, series, day) DO UPDATE SET symbol = EXCLUDED.symbol",
                (exchange, series, day, symbol),
            )

        self._run(f"record the roll of {exchange}:{series} on {day.isoformat()}", work)

    def rolls(self, exchange: str, series: str) -> list[tuple[date, str]]:
        def work(cur: Any) -> list[tuple[date, str]]:
            cur.execute("SELECT day, symbol FROM rolls WHERE exchange = %s AND series = %s ORDER BY day", (exchange, series))
            return [(day, symbol) for day, symbol in cur.fetchall()]

        return self._run("read the rolls", work)

    def close(self) -> None:
        with self._lock:
            self._drop_connection()

    def __repr__(self) -> str:
        return f"PostgresStore({self.description!r})"


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise StoreError(f"refusing a naive datetime {value.isoformat()}: candle times must be timezone-aware")
    return value


def _copy_lines(candles: Iterable[Candle]) -> Iterator[str]:
    """COPY text rows of the staging table, one per candle."""
    name = TextMemo(_copy_text)
    when = TextMemo(_iso)
    for c in candles:
        yield (
            f"{name[c.exchange]}\t{name[c.symbol]}\t{name[c.interval]}\t{when[c.bucket]}\t"
            f"{_price(c.open)}\t{_price(c.high)}\t{_price(c.low)}\t{_price(c.close)}\t"
            f"{int(c.volume)}\t{_nullable(c.oi)}\t{int(c.tick_count)}\t{when[c.first_tick]}\t"
            f"{when[c.last_tick]}\t{_nullable(c.cum_volume)}\t{'t' if c.final else 'f'}\t{name[c.source]}\n"
        )


def _iso(value: datetime) -> str:
    return _aware(value).isoformat()


def _nullable(value: int | None) -> str:
    return "\\N" if value is None else str(int(value))


def _price(value: Decimal) -> str:
    if not isinstance(value, Decimal) or not value.is_finite():
        raise StoreError(f"refusing price {value!r}: prices must be finite Decimals")
    return str(value)


def _copy_text(value: str) -> str:
    return value.translate(_COPY_ESCAPES)


def _day(value: date) -> date:
    return value


def _ist(value: datetime) -> datetime:
    return value.astimezone(IST)


def _candle(row: tuple) -> Candle:
    return candle_from_row(row, _ist)
