"""Two hot-standby daemons against the Kite fake and one PostgreSQL: what the takeover test and
the takeover benchmark share. Each daemon runs in its own directory (its own DATA_DIR: spool,
journal) with its log in a file there (a pipe would fill and stall it)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psycopg2

from storage.postgres import PostgresStore
from testkit.cli import MAIN, kite_env
from testkit.fakes.kite_server import DEFAULT_INSTRUMENTS
from testkit.reference import candle_to_dict

WATCH = ("NSE:INFY", "NSE:RELIANCE")
BY_SYMBOL = {f"{i.exchange}:{i.tradingsymbol}": i for i in DEFAULT_INSTRUMENTS}
TOKENS = [BY_SYMBOL[s].token for s in WATCH]
_WRITTEN = re.compile(r"status: .*?, (\d+) candles written")


class HaDaemon:
    """One daemon of the pair, ``node``, in ``root/node``."""

    def __init__(self, root: Path, node: str, server: Any, dsn: str, ttl: float, intervals: str = "1m", **env: str) -> None:
        self.node = node
        self.dir = root / node
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "daemon.log"
        self.env = kite_env(
            server, PG_CONN_STR=dsn, HA="true", HA_LEASE_NAME="pair", HA_NODE_ID=node,
            HA_LEASE_TTL_SECONDS=f"{ttl:g}", STATUS_INTERVAL_SECONDS="1", FEED_STALL_SECONDS="2", **env,
        )  # fmt: skip
        self.args = ["--broker", "kite", "--symbols", *WATCH, "--intervals", intervals]
        self.proc: subprocess.Popen | None = None

    def start(self) -> HaDaemon:
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, MAIN, *self.args], cwd=self.dir, env=self.env,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def written(self) -> int:
        """Candle writes by its latest status line (0 before the first)."""
        found = _WRITTEN.findall(self.text())
        return int(found[-1]) if found else 0


def lease(dsn: str, name: str = "pair") -> tuple[str, int] | None:
    """(holder, epoch) of an unexpired lease, else None."""
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT holder, epoch FROM ha_lease WHERE name = %s AND expires_at > now()", (name,))
            row = cur.fetchone()
            return None if row is None else (row[0], int(row[1]))
    except psycopg2.errors.UndefinedTable:
        return None
    finally:
        conn.close()


def stored(dsn: str, intervals: Iterable[Any]) -> dict:
    store = PostgresStore(dsn)
    try:
        rows = {}
        for sym in WATCH:
            exchange, name = sym.split(":")
            for iv in intervals:
                for candle in store.latest(exchange, name, iv.name, limit=10_000):
                    key, value = candle_to_dict(candle)
                    rows[key] = value
        return rows
    finally:
        store.close()
