"""The hot-standby lease and its fencing, against a real PostgreSQL (storage/lease.py)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import psycopg2
import pytest

from storage.base import Fenced, StoreUnavailable
from storage.lease import Fence, Lease
from storage.postgres import PostgresStore
from tests.test_store_contract import T0, make_candle

TTL = 1.0


@pytest.fixture
def stores(pg_dsn: str) -> Iterator[list[PostgresStore]]:
    opened: list[PostgresStore] = []

    def open_store() -> PostgresStore:
        s = PostgresStore(pg_dsn)
        opened.append(s)
        return s

    open_store().migrate()
    yield opened
    for s in opened:
        s.close()


def _lease(pg_dsn: str, stores: list[PostgresStore], holder: str, ttl: float = TTL) -> Lease:
    store = PostgresStore(pg_dsn)
    stores.append(store)
    return Lease(store, "pair", holder, ttl)


def _writer(pg_dsn: str, stores: list[PostgresStore], fence: Fence | None) -> PostgresStore:
    store = PostgresStore(pg_dsn)
    stores.append(store)
    store.fenced = True
    store.fence = fence
    return store


def test_acquire_renew_expire_takeover(pg_dsn: str, stores: list[PostgresStore]) -> None:
    a, b = _lease(pg_dsn, stores, "a"), _lease(pg_dsn, stores, "b")
    fa = a.acquire()
    assert fa == Fence("pair", "a", 1)
    assert b.acquire() is None  # held and not expired
    assert a.acquire() is None  # not even by its holder: it renews instead
    state = b.read()
    assert state is not None and state.holder == "a" and state.epoch == 1 and 0 < state.remaining <= TTL
    for _ in range(4):  # renewing well inside the TTL keeps it past several TTLs
        time.sleep(TTL / 3)
        assert a.renew(fa)
    assert b.acquire() is None
    assert not b.renew(Fence("pair", "b", 1))  # the holder must match
    assert not a.renew(Fence("pair", "a", 0))  # and the epoch
    time.sleep(TTL + 0.2)  # a stopped renewing
    assert not a.renew(fa)  # an expired lease is not renewed, even when nobody took it
    fb = b.acquire()
    assert fb == Fence("pair", "b", 2)
    assert not a.renew(fa)
    b.release(fb)
    fa2 = a.acquire()  # a released lease is taken at once
    assert fa2 == Fence("pair", "a", 3)


def test_paused_leader_is_fenced_after_takeover(pg_dsn: str, stores: list[PostgresStore]) -> None:
    a, b = _lease(pg_dsn, stores, "a"), _lease(pg_dsn, stores, "b")
    fa = a.acquire()
    assert fa is not None
    writer_a = _writer(pg_dsn, stores, fa)
    writer_a.upsert([make_candle(bucket=T0)])
    time.sleep(TTL + 0.2)  # paused: no renewal past the TTL
    fb = b.acquire()
    assert fb is not None and fb.epoch == 2
    with pytest.raises(Fenced, match="epoch 1 is no longer"):
        writer_a.upsert([make_candle(bucket=T0), make_candle(bucket=T0.replace(minute=T0.minute + 1))])
    writer_b = _writer(pg_dsn, stores, fb)
    writer_b.upsert([make_candle(bucket=T0, price="9.5")])
    rows = writer_b.between("NSE", "INFY", "1m", T0, T0.replace(hour=T0.hour + 1))
    assert [(c.bucket, str(c.open)) for c in rows] == [(T0, "9.5")]  # nothing of a's refused write


def test_expired_lease_fences_even_without_a_takeover(pg_dsn: str, stores: list[PostgresStore]) -> None:
    a = _lease(pg_dsn, stores, "a")
    fa = a.acquire()
    writer = _writer(pg_dsn, stores, fa)
    time.sleep(TTL + 0.2)
    with pytest.raises(Fenced):
        writer.upsert([make_candle()])
    with pytest.raises(Fenced, match="not the leader"):
        _writer(pg_dsn, stores, None).upsert([make_candle()])
    assert writer.latest("NSE", "INFY", "1m") == []


def test_takeover_waits_for_a_write_in_flight(pg_dsn: str, stores: list[PostgresStore]) -> None:
    """A write transaction holds the lease row FOR SHARE: the takeover cannot commit until it
    ends, so the old leader's write is never committed after the new leader's term began."""
    a, b = _lease(pg_dsn, stores, "a"), _lease(pg_dsn, stores, "b")
    fa = a.acquire()
    assert fa is not None
    conn = psycopg2.connect(pg_dsn)
    try:
        cur = conn.cursor()
        cur.execute(
            "SELECT epoch FROM ha_lease WHERE name = %s AND holder = %s AND epoch = %s AND expires_at > now() FOR SHARE",
            ("pair", "a", fa.epoch),
        )
        assert cur.fetchone() == (1,)
        time.sleep(TTL + 0.2)  # the lease expires while the write is in flight
        with pytest.raises(StoreUnavailable):  # lock_timeout: it waited for the write
            b.acquire()
        conn.commit()
    finally:
        conn.close()
    assert b.acquire() == Fence("pair", "b", 2)


def test_concurrent_takeovers_make_exactly_one_leader(pg_dsn: str, stores: list[PostgresStore]) -> None:
    contenders = [_lease(pg_dsn, stores, f"n{i}") for i in range(8)]
    for round_ in range(3):
        start = threading.Barrier(len(contenders))
        won: list[Fence] = []

        def attempt(lease: Lease, start: threading.Barrier = start, won: list[Fence] = won) -> None:
            start.wait()
            fence = lease.acquire()
            if fence is not None:
                won.append(fence)

        threads = [threading.Thread(target=attempt, args=(c,)) for c in contenders]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(won) == 1, won
        assert won[0].epoch == round_ + 1
        time.sleep(TTL + 0.2)


def test_ha_with_sqlite_is_refused_at_start_naming_the_fix() -> None:
    from config.env import ConfigError
    from config.settings import load_settings

    with pytest.raises(ConfigError, match=r"HA=true needs PostgreSQL \(PG_CONN_STR\).*or HA=false"):
        load_settings({"HA": "true"}, env_file=None)
    settings = load_settings({"HA": "true", "PG_CONN_STR": "postgresql://u@h/db"}, env_file=None)
    assert settings.ha.enabled and settings.ha.lease_ttl_seconds == 4 and settings.ha.node_id.count("-") >= 1


def test_a_pair_on_one_broker_account_must_fit_its_connections(pg_dsn: str, stores: list[PostgresStore]) -> None:
    from types import SimpleNamespace

    from cli.daemon import _pair_fits
    from cli.errors import UsageError

    kite = SimpleNamespace(name="kite", max_symbols_per_connection=3000, max_connections=3)
    one_key = SimpleNamespace(venues={"kite": SimpleNamespace(api_key="k1")})
    a = SimpleNamespace(lease=_lease(pg_dsn, stores, "a"), registered=False)
    b = SimpleNamespace(lease=_lease(pg_dsn, stores, "b"), registered=False)
    _pair_fits(a, one_key, kite, 4000)  # 2 connections
    assert a.registered
    _pair_fits(b, one_key, kite, 3000)  # 1 more: 3, the limit
    with pytest.raises(UsageError, match=r"needs 2 kite connections for 3001 instruments and its partner holds 2"):
        _pair_fits(b, one_key, kite, 3001)  # b's own earlier row is not its partner's
    _pair_fits(b, SimpleNamespace(venues={"kite": SimpleNamespace(api_key="k2")}), kite, 9000)  # its own key
    b.lease.ttl = 0.1
    time.sleep(0.5)  # a not seen within 3 TTLs (its lease thread would refresh it): gone
    _pair_fits(b, one_key, kite, 3001)
    rows = stores[0]._run("read", lambda cur: (cur.execute("SELECT account FROM ha_nodes"), cur.fetchall())[1])
    assert all("k1" not in r[0] and "k2" not in r[0] for r in rows)  # a digest, never the key


def test_a_writer_paused_inside_its_transaction_does_not_hold_off_the_takeover(pg_dsn: str, stores: list[PostgresStore]) -> None:
    """A leader stopped (SIGSTOP) between the fence check and its commit holds the lease row
    FOR SHARE: PostgreSQL ends its session after the TTL idle in the transaction, the takeover
    goes through, and the paused write never commits."""
    from storage.lease import FENCE_CHECK

    a, b = _lease(pg_dsn, stores, "a"), _lease(pg_dsn, stores, "b")
    fa = a.acquire()
    assert fa is not None
    writer = _writer(pg_dsn, stores, fa)
    writer.session_timeout = TTL
    outcome: list[BaseException | None] = []

    def paused_write(cur) -> None:  # noqa: ANN001
        cur.execute(FENCE_CHECK, (fa.name, fa.holder, fa.epoch))
        assert cur.fetchone() is not None
        time.sleep(TTL * 4)  # stopped mid-transaction
        cur.execute("INSERT INTO watchlist (exchange, symbol) VALUES ('NSE', 'PAUSED')")

    def run() -> None:
        try:
            writer._run("write while paused", paused_write)
            outcome.append(None)
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.2)
    started = time.monotonic()
    fb = None
    while fb is None and time.monotonic() - started < TTL * 3:
        with contextlib.suppress(StoreUnavailable):  # lock_timeout while the paused write holds the row
            fb = b.acquire()
        time.sleep(0.05)
    assert fb == Fence("pair", "b", 2)
    assert time.monotonic() - started < TTL * 2.5
    thread.join(TTL * 5)
    assert isinstance(outcome[0], StoreUnavailable), outcome
    assert writer.watchlist() == []


def _session_gone(store: PostgresStore) -> None:
    """End the lease connection's session as a dead process does (its socket closes)."""
    conn = store._conn
    assert conn is not None
    pid = conn.get_backend_pid()
    store._drop_connection()
    probe = psycopg2.connect(store._dsn)
    probe.autocommit = True
    try:
        with probe.cursor() as cur:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
                if not cur.fetchone()[0]:
                    return
                time.sleep(0.01)
    finally:
        probe.close()
    raise AssertionError(f"session {pid} still open")


def test_a_dead_holders_session_frees_the_lease_before_its_expiry(pg_dsn: str, stores: list[PostgresStore]) -> None:
    """A holder whose process died has no session left: the lease is free at once, by a plain
    read, and taken with the next epoch long before the TTL ends."""
    a, b = _lease(pg_dsn, stores, "a", ttl=60), _lease(pg_dsn, stores, "b", ttl=60)
    fa = a.acquire()
    assert fa is not None and b.free() is None
    _session_gone(a.store)
    assert b.free() == "session ended"
    fb = b.acquire()
    assert fb == Fence("pair", "b", 2)
    state = b.read()
    assert state is not None and state.remaining > 50  # taken, not expired
    assert not a.renew(fa)  # the old holder, back, finds it taken
    assert b.free() is None and a.free() is None


def test_a_renewal_records_the_holders_new_session(pg_dsn: str, stores: list[PostgresStore]) -> None:
    """A leader whose connection was replaced (a reconnect) records its new session at the next
    renewal: from then on it is alive again to the standby."""
    a, b = _lease(pg_dsn, stores, "a", ttl=60), _lease(pg_dsn, stores, "b", ttl=60)
    fa = a.acquire()
    assert fa is not None
    _session_gone(a.store)
    assert b.free() == "session ended"
    assert a.renew(fa)  # reconnects and records its new session
    assert b.free() is None and b.acquire() is None


def test_a_session_recorded_before_a_server_restart_proves_nothing(pg_dsn: str, stores: list[PostgresStore]) -> None:
    """A server restart ends every session: a holder recorded on an earlier start of the server
    is not taken for dead; only the expiry frees its lease."""
    a, b = _lease(pg_dsn, stores, "a", ttl=1.5), _lease(pg_dsn, stores, "b", ttl=1.5)
    fa = a.acquire()
    assert fa is not None
    stores[0]._run("age the record", lambda cur: cur.execute("UPDATE ha_lease SET holder_boot = holder_boot - interval '1 hour'"))
    _session_gone(a.store)
    assert b.free() is None and b.acquire() is None
    time.sleep(1.7)
    assert b.free() == "expired"
    assert b.acquire() == Fence("pair", "b", 2)
