"""Candle storage: the CandleStore interface and its SQLite and PostgreSQL implementations."""

from __future__ import annotations

from storage.base import CandleStore


def open_store(pg_conn_str: str | None, sqlite_path: str, *, read_only: bool = False) -> CandleStore:
    """PostgreSQL when ``pg_conn_str`` is set (non-blank), else the SQLite file at ``sqlite_path``.

    Opening does not migrate: the daemon calls ``migrate()`` at start (idempotent). A
    PostgreSQL store connects on first use, so a database that is down does not stop the
    daemon from starting; a read-only SQLite store needs the file to exist already.
    """
    if pg_conn_str and pg_conn_str.strip():
        from storage.postgres import PostgresStore  # psycopg2 only when PostgreSQL is used

        return PostgresStore(pg_conn_str.strip(), read_only=read_only)
    from storage.sqlite import SQLiteStore

    return SQLiteStore(sqlite_path, read_only=read_only)
