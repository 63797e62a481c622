"""Versioned schema migrations shared by the SQLite and PostgreSQL stores.

Each migration is a version number, a description, and the statements that bring a database
from the previous version to this one, written once per dialect. The stores apply the pending
ones in a single transaction and record each in ``schema_migrations``; a database that already
carries a version newer than ``LATEST_VERSION`` is refused rather than written to.

Storage conventions the statements encode:

- PostgreSQL: prices ``numeric`` without a fixed scale (the scale given is the scale kept),
  times ``timestamptz``, days ``date``.
- SQLite: prices (strikes and tick sizes too) ``TEXT`` fixed-point decimal strings
  (``format(d, "f")``), so the scale given is kept there too; times ``INTEGER`` microseconds
  since the Unix epoch (UTC), so order and microseconds survive and comparisons are numeric; days
  ``TEXT`` ISO dates (``2024-05-06``), which sort and compare as dates.
"""

from __future__ import annotations

from dataclasses import dataclass

from storage.base import StoreError


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


# Creates the bookkeeping table itself; runs before the version is read, so it must be idempotent.
SCHEMA_MIGRATIONS_SQLITE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     INTEGER PRIMARY KEY,
    description TEXT    NOT NULL,
    applied_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
)
"""

SCHEMA_MIGRATIONS_POSTGRES = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer     PRIMARY KEY,
    description text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""

# "interval" is a keyword in PostgreSQL, so it is quoted everywhere, in both dialects alike.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        description="candles and watchlist",
        sqlite=(
            """
            CREATE TABLE candles (
                exchange   TEXT    NOT NULL,
                symbol     TEXT    NOT NULL,
                "interval" TEXT    NOT NULL,
                bucket     INTEGER NOT NULL,
                open       TEXT    NOT NULL,
                high       TEXT    NOT NULL,
                low        TEXT    NOT NULL,
                close      TEXT    NOT NULL,
                volume     INTEGER NOT NULL,
                oi         INTEGER,
                tick_count INTEGER NOT NULL,
                first_tick INTEGER NOT NULL,
                last_tick  INTEGER NOT NULL,
                cum_volume INTEGER,
                final      INTEGER NOT NULL CHECK (final IN (0, 1)),
                updated_at INTEGER NOT NULL
                    DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)),
                PRIMARY KEY (exchange, symbol, "interval", bucket)
            )
            """,
            "CREATE INDEX candles_bucket_idx ON candles (bucket)",
            """
            CREATE TABLE watchlist (
                exchange TEXT    NOT NULL,
                symbol   TEXT    NOT NULL,
                enabled  INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
                priority INTEGER NOT NULL DEFAULT 0,
                PRIMARY KEY (exchange, symbol)
            )
            """,
        ),
        postgres=(
            """
            CREATE TABLE candles (
                exchange   text        NOT NULL,
                symbol     text        NOT NULL,
                "interval" text        NOT NULL,
                bucket     timestamptz NOT NULL,
                open       numeric     NOT NULL,
                high       numeric     NOT NULL,
                low        numeric     NOT NULL,
                close      numeric     NOT NULL,
                volume     bigint      NOT NULL,
                oi         bigint,
                tick_count integer     NOT NULL,
                first_tick timestamptz NOT NULL,
                last_tick  timestamptz NOT NULL,
                cum_volume bigint,
                final      boolean     NOT NULL,
                updated_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (exchange, symbol, "interval", bucket)
            )
            """,
            # latest_per_series filters on bucket across all series at start-up
            "CREATE INDEX candles_bucket_idx ON candles (bucket)",
            """
            CREATE TABLE watchlist (
                exchange text    NOT NULL,
                symbol   text    NOT NULL,
                enabled  boolean NOT NULL DEFAULT true,
                priority integer NOT NULL DEFAULT 0,
                PRIMARY KEY (exchange, symbol)
            )
            """,
        ),
    ),
    Migration(
        version=2,
        description="candle provenance: live, partial or backfill",
        sqlite=(
            """
            ALTER TABLE candles ADD COLUMN source TEXT NOT NULL DEFAULT 'live'
                CHECK (source IN ('live', 'partial', 'backfill'))
            """,
        ),
        postgres=(
            """
            ALTER TABLE candles ADD COLUMN source text NOT NULL DEFAULT 'live'
                CONSTRAINT candles_source_check CHECK (source IN ('live', 'partial', 'backfill'))
            """,
        ),
    ),
    Migration(
        version=3,
        description="watched spans: when the daemon watched each symbol (gaps are what they leave out)",
        sqlite=(
            """
            CREATE TABLE watched (
                exchange TEXT    NOT NULL,
                symbol   TEXT    NOT NULL,
                began    INTEGER NOT NULL,
                ended    INTEGER NOT NULL,
                run      TEXT    NOT NULL,
                open     INTEGER NOT NULL DEFAULT 1 CHECK (open IN (0, 1)),
                PRIMARY KEY (exchange, symbol, began)
            )
            """,
            "CREATE INDEX watched_ended_idx ON watched (ended)",
            "CREATE INDEX watched_open_idx ON watched (run) WHERE open = 1",
        ),
        postgres=(
            """
            CREATE TABLE watched (
                exchange text        NOT NULL,
                symbol   text        NOT NULL,
                began    timestamptz NOT NULL,
                ended    timestamptz NOT NULL,
                run      text        NOT NULL,
                open     boolean     NOT NULL DEFAULT true,
                PRIMARY KEY (exchange, symbol, began)
            )
            """,
            "CREATE INDEX watched_ended_idx ON watched (ended)",
            "CREATE INDEX watched_open_idx ON watched (run) WHERE open",
        ),
    ),
    Migration(
        version=4,
        description="reconciliation: each symbol's day of live minutes compared with the broker's",
        sqlite=(
            """
            CREATE TABLE reconciliation (
                day              TEXT    NOT NULL,
                exchange         TEXT    NOT NULL,
                symbol           TEXT    NOT NULL,
                compared         INTEGER NOT NULL,
                mismatched       INTEGER NOT NULL,
                missing_here     INTEGER NOT NULL,
                missing_at_kite  INTEGER NOT NULL,
                open_diff        INTEGER NOT NULL,
                high_diff        INTEGER NOT NULL,
                low_diff         INTEGER NOT NULL,
                close_diff       INTEGER NOT NULL,
                volume_diff      INTEGER NOT NULL,
                volume_preopen   INTEGER NOT NULL,
                partial_skipped  INTEGER NOT NULL,
                backfill_skipped INTEGER NOT NULL,
                checked_at       INTEGER NOT NULL,
                PRIMARY KEY (day, exchange, symbol)
            )
            """,
        ),
        postgres=(
            """
            CREATE TABLE reconciliation (
                day              date    NOT NULL,
                exchange         text    NOT NULL,
                symbol           text    NOT NULL,
                compared         integer NOT NULL,
                mismatched       integer NOT NULL,
                missing_here     integer NOT NULL,
                missing_at_kite  integer NOT NULL,
                open_diff        integer NOT NULL,
                high_diff        integer NOT NULL,
                low_diff         integer NOT NULL,
                close_diff       integer NOT NULL,
                volume_diff      integer NOT NULL,
                volume_preopen   integer NOT NULL,
                partial_skipped  integer NOT NULL,
                backfill_skipped integer NOT NULL,
                checked_at       timestamptz NOT NULL,
                PRIMARY KEY (day, exchange, symbol)
            )
            """,
        ),
    ),
    Migration(
        version=5,
        description="instruments: each contract's metadata from the instrument master, kept after it expires",
        sqlite=(
            """
            CREATE TABLE instruments (
                exchange   TEXT    NOT NULL,
                symbol     TEXT    NOT NULL,
                underlying TEXT    NOT NULL,
                kind       TEXT    NOT NULL CHECK (kind IN ('FUT', 'CE', 'PE', 'IDX', 'EQ')),
                expiry     TEXT,
                strike     TEXT,
                lot_size   INTEGER NOT NULL,
                tick_size  TEXT    NOT NULL,
                token      INTEGER NOT NULL,
                first_seen TEXT    NOT NULL,
                last_seen  TEXT    NOT NULL,
                PRIMARY KEY (exchange, symbol)
            )
            """,
            # an underlying's contracts by expiry (a universe, an expired series' candles)
            "CREATE INDEX instruments_underlying_expiry_idx ON instruments (underlying, expiry)",
        ),
        postgres=(
            """
            CREATE TABLE instruments (
                exchange   text    NOT NULL,
                symbol     text    NOT NULL,
                underlying text    NOT NULL,
                kind       text    NOT NULL
                    CONSTRAINT instruments_kind_check CHECK (kind IN ('FUT', 'CE', 'PE', 'IDX', 'EQ')),
                expiry     date,
                strike     numeric,
                lot_size   integer NOT NULL,
                tick_size  numeric NOT NULL,
                token      bigint  NOT NULL,
                first_seen date    NOT NULL,
                last_seen  date    NOT NULL,
                PRIMARY KEY (exchange, symbol)
            )
            """,
            "CREATE INDEX instruments_underlying_expiry_idx ON instruments (underlying, expiry)",
        ),
    ),
    Migration(
        version=6,
        description="rolls: the contract each continuous futures series (NIFTY-I, NIFTY-II ...) took each day",
        sqlite=(
            """
            CREATE TABLE rolls (
                exchange TEXT NOT NULL,
                series   TEXT NOT NULL,
                day      TEXT NOT NULL,
                symbol   TEXT NOT NULL,
                PRIMARY KEY (exchange, series, day)
            )
            """,
        ),
        postgres=(
            """
            CREATE TABLE rolls (
                exchange text NOT NULL,
                series   text NOT NULL,
                day      date NOT NULL,
                symbol   text NOT NULL,
                PRIMARY KEY (exchange, series, day)
            )
            """,
        ),
    ),
    Migration(
        version=7,
        description="ha_lease and ha_nodes: the writer's lease of a hot-standby pair (holder, fencing epoch), its daemons",
        # times are the database's (now()), never a host's; SQLite gets the table for one schema
        # everywhere, but HA refuses to run on SQLite (storage/lease.py)
        sqlite=(
            """
            CREATE TABLE ha_lease (
                name        TEXT    PRIMARY KEY,
                holder      TEXT    NOT NULL,
                epoch       INTEGER NOT NULL,
                expires_at  INTEGER NOT NULL,
                acquired_at INTEGER NOT NULL
            )
            """,
            """
            CREATE TABLE ha_nodes (
                lease       TEXT    NOT NULL,
                node        TEXT    NOT NULL,
                broker      TEXT    NOT NULL,
                account     TEXT    NOT NULL,
                connections INTEGER NOT NULL,
                seen_at     INTEGER NOT NULL,
                PRIMARY KEY (lease, node)
            )
            """,
        ),
        postgres=(
            """
            CREATE TABLE ha_lease (
                name        text        PRIMARY KEY,
                holder      text        NOT NULL,
                epoch       bigint      NOT NULL,
                expires_at  timestamptz NOT NULL,
                acquired_at timestamptz NOT NULL
            )
            """,
            # each daemon of a pair, the broker account it streams with and the connections it
            # needs: a pair on one account must fit the broker's connections per account
            """
            CREATE TABLE ha_nodes (
                lease       text        NOT NULL,
                node        text        NOT NULL,
                broker      text        NOT NULL,
                account     text        NOT NULL,
                connections integer     NOT NULL,
                seen_at     timestamptz NOT NULL,
                PRIMARY KEY (lease, node)
            )
            """,
        ),
    ),
    Migration(
        version=8,
        description="ha_lease: the holder's lease session (backend pid, server start): a takeover once it has ended",
        # a holder whose process died has no session left: the standby need not wait for the expiry
        sqlite=(
            "ALTER TABLE ha_lease ADD COLUMN holder_pid INTEGER",
            "ALTER TABLE ha_lease ADD COLUMN holder_boot INTEGER",
        ),
        postgres=("ALTER TABLE ha_lease ADD COLUMN holder_pid integer, ADD COLUMN holder_boot timestamptz",),
    ),
)

LATEST_VERSION: int = MIGRATIONS[-1].version

# Versions must be 1, 2, 3 ... so "pending" is a simple slice.
assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))


def pending(current: int, where: str) -> tuple[Migration, ...]:
    """Migrations to apply to a database at ``current``; refuses one newer than this code.

    ``where`` names the database in the error (a description without secrets).
    """
    if current > LATEST_VERSION:
        raise StoreError(
            f"{where} has schema version {current}, newer than the {LATEST_VERSION} this "
            "marketfeed knows: upgrade marketfeed (or point it at another database); "
            "refusing to use it"
        )
    return MIGRATIONS[current:]
