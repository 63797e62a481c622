"""Hot standby's rules, in process, against a real PostgreSQL (pipeline/ha.py, the writer).

A standby writes nothing and keeps its recent candles; a new leader writes those newer than the
store's newest bucket of each series (that bucket too while the store holds it non-final) and
never a version of an older bucket; a fenced or unrenewed leader steps down before writing again.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from candles.model import Candle
from pipeline.ha import LEADER, STANDBY, HaRole
from pipeline.writer import Writer
from storage.lease import Lease
from storage.postgres import PostgresStore
from storage.spool import Spool
from tests.test_store_contract import T0, make_candle

TTL = 1.0
MIN = timedelta(minutes=1)


class Pair:
    """One daemon's half: its fenced candle store, its lease store and its role."""

    def __init__(self, dsn: str, node: str, now: float) -> None:
        self.store = PostgresStore(dsn)
        self.store.fenced = True
        self.store.session_timeout = TTL
        self.lease_store = PostgresStore(dsn)
        self.now = now
        self.role = HaRole(Lease(self.lease_store, "pair", node, TTL), self.store, clock=lambda: self.now)

    def close(self) -> None:
        self.store.close()
        self.lease_store.close()


@pytest.fixture
def pair(pg_dsn: str) -> Iterator[tuple[Pair, Pair, PostgresStore]]:
    plain = PostgresStore(pg_dsn)
    plain.migrate()
    now = (T0 + 10 * MIN).timestamp()
    a, b = Pair(pg_dsn, "a", now), Pair(pg_dsn, "b", now)
    yield a, b, plain
    for p in (a, b):
        p.close()
    plain.close()


def c(minute: int, price: str = "100", **changes: object) -> Candle:
    return make_candle(bucket=T0 + minute * MIN, price=price, **changes)


def stored(store: PostgresStore) -> dict[int, str]:
    return {int((x.bucket - T0) / MIN): str(x.open) for x in store.between("NSE", "INFY", "1m", T0, T0 + 60 * MIN)}


def test_standby_writes_nothing_and_keeps_a_bounded_window(pair: tuple[Pair, Pair, PostgresStore]) -> None:
    a, b, plain = pair
    a.role.tick()
    b.role.tick()
    assert (a.role.role, b.role.role) == (LEADER, STANDBY)
    assert b.role.admit([c(0), c(1), c(9)]) == []
    b.role.retain([c(9, "101")])  # a revision replaces the version it revises
    assert b.role.retained == 3
    b.now += 10 * 60  # 15 minutes' window: minute 0 and 1 are now older than it
    b.role.retain([])  # pruned (at most every few seconds)
    assert sorted(int((k[3] - T0) / MIN) for k in b.role._retained) == [9]
    assert str(b.role._retained[c(9).key].open) == "101"
    assert stored(plain) == {}


def test_takeover_writes_only_buckets_newer_than_the_stores(pair: tuple[Pair, Pair, PostgresStore]) -> None:
    a, b, plain = pair
    a.role.tick()
    b.role.tick()
    assert a.role.admit([c(0, "1"), c(1, "1")]) == [c(0, "1"), c(1, "1")]  # begins a's term
    a.store.upsert([c(0, "1"), c(1, "1")])
    b.role.admit([c(0, "2"), c(1, "2"), c(2, "2"), c(3, "2")])  # b's versions differ a little
    other = replace(c(1, "2"), symbol="TCS")  # a series the store has nothing of
    b.role.admit([other])
    time.sleep(TTL + 0.2)  # a dies (stops renewing)
    b.role.tick()
    assert b.role.role == LEADER and b.role.epoch == 2
    out = b.role.admit([])
    assert out == [other, c(2, "2"), c(3, "2")]  # minute 0 and 1 keep a's versions
    b.store.upsert(out)
    # during the term: a late revision of a bucket a stored is not written; newer ones are
    assert b.role.admit([c(1, "3"), c(4, "2")]) == [c(4, "2")]
    assert b.role.skipped == 3
    b.store.upsert([c(4, "2")])
    assert stored(plain) == {0: "1", 1: "1", 2: "2", 3: "2", 4: "2"}


def test_a_non_final_newest_bucket_is_written_by_the_new_leader(pair: tuple[Pair, Pair, PostgresStore]) -> None:
    """A clean stop flushes the open bucket non-final and releases the lease: the new leader's
    final version of that bucket replaces it when it closes."""
    a, b, plain = pair
    a.role.tick()
    b.role.tick()
    a.role.admit([])
    a.store.upsert([c(0, "1"), c(1, "1", final=False)])
    a.role.stop()  # releases
    b.role.admit([c(0, "2")])
    b.role.tick()
    assert b.role.role == LEADER
    assert b.role.admit([]) == []  # minute 0: a's final version stands
    assert b.role.admit([c(1, "2"), c(0, "3")]) == [c(1, "2")]
    b.store.upsert([c(1, "2")])
    assert stored(plain) == {0: "1", 1: "2"}


def test_fenced_leader_steps_down_and_keeps_its_candles(pair: tuple[Pair, Pair, PostgresStore], tmp_path: Path) -> None:
    a, b, plain = pair
    frozen = time.monotonic()
    a.role.monotonic = lambda: frozen  # a's clock notices nothing: only the database fences it
    a.role.tick()
    candles: queue.Queue = queue.Queue()
    writer = Writer(a.store, Spool(tmp_path / "spool"), candles, ha=a.role)
    writer.start()
    try:
        candles.put([c(0, "1")])
        _until(lambda: stored(plain) == {0: "1"})
        # a pauses past the TTL (its lease thread does not run); b takes over
        time.sleep(TTL + 0.2)
        b.role.tick()
        assert b.role.role == LEADER
        candles.put([c(1, "1")])
        _until(lambda: a.role.role == STANDBY)
        assert a.role.step_downs == 1
        # kept for a later takeover, not dropped: handed over from the spool, which is then cleared
        _until(lambda: c(1).key in a.role._retained and writer.spool.depth == 0)
        assert stored(plain) == {0: "1"}
        assert writer.stats.rejected_candles == 0 and not writer.stats.store_down
    finally:
        candles.put(None)
        writer.join(5)
        writer.spool.close()


def test_a_leader_without_a_renewal_for_the_ttl_stops_writing(pair: tuple[Pair, Pair, PostgresStore]) -> None:
    a, _b, _plain = pair
    a.role.tick()
    assert a.role.admit([c(0)]) == [c(0)]
    a.role._renewed -= TTL  # its lease thread has not renewed for a TTL (the database is away)
    assert a.role.admit([c(1)]) == []
    assert a.role.role == STANDBY and a.store.fence is None
    assert c(1).key in a.role._retained


def test_renewal_keeps_the_term_and_a_lost_lease_ends_it(pair: tuple[Pair, Pair, PostgresStore]) -> None:
    a, b, _plain = pair
    a.role.tick()
    for _ in range(4):
        time.sleep(TTL / 3)
        a.role.tick()
        b.role.tick()
    assert (a.role.role, b.role.role, a.role.epoch) == (LEADER, STANDBY, 1)
    time.sleep(TTL + 0.2)
    b.role.tick()  # takes it over: a's next renewal is refused
    a.role.tick()
    assert (a.role.role, b.role.role, b.role.epoch) == (STANDBY, LEADER, 2)


def _until(condition, timeout: float = 5.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_healthy_standby_is_healthy_and_says_its_role_everywhere() -> None:
    from ops.metrics import Metrics
    from tests.test_health import HEALTHY

    standby = replace(HEALTHY, ha_role=STANDBY, ha_epoch=None, ha_retained=120)
    leader = replace(HEALTHY, ha_role=LEADER, ha_epoch=3)
    assert standby.problems == [] and standby.state == "running"
    assert standby.heartbeat(0.0)["ha_role"] == "standby" and leader.heartbeat(0.0)["ha_epoch"] == 3
    assert (standby.ha_line(), leader.ha_line()) == ("standby (120 candles kept)", "leader epoch 3")
    lost = replace(standby, ha_problem="HA lease 'pair': cannot reach PostgreSQL")
    assert lost.problems == ["HA lease 'pair': cannot reach PostgreSQL"]
    for reading, code, gauge in ((standby, 200, "marketfeed_ha_leader 0.0"), (leader, 200, "marketfeed_ha_leader 1.0"),
                                 (lost, 503, "marketfeed_ha_leader 0.0")):  # fmt: skip
        server = Metrics(lambda reading=reading: reading)
        assert server.answer("/healthz", "")[0] == code
        assert gauge in server.answer("/metrics", "text/plain")[2].decode()


def test_a_standbys_backfill_waits_and_mends_once_it_leads() -> None:
    from tests.test_backfill_daemon import INFY, MONDAY_10, make

    b, history, clock, emitted, _ = make("1m", delay=60)
    leading = [False]
    b.active = lambda: leading[0]
    clock.now = MONDAY_10 + 150
    b.want([INFY], MONDAY_10 + 30, MONDAY_10 + 150)
    clock.now = MONDAY_10 + 240
    b.step()
    assert history.asked == [] and emitted == []  # a standby asks no history
    with b._cond:
        assert b._wait_s() == 1.0  # and does not spin on the due jobs
    leading[0] = True
    b.step()
    assert history.asked == [(INFY, MONDAY_10, MONDAY_10 + 180)]


def test_backfill_candles_pass_the_horizon(pair: tuple[Pair, Pair, PostgresStore]) -> None:
    """The broker's history is the same for either daemon, and the store keeps a final live
    candle from it (rule 8): a new leader's backfill of an older bucket is written."""
    a, _b, plain = pair
    plain.upsert([c(0, "1"), c(5, "1")])
    a.role.tick()
    assert a.role.admit([]) == []
    mended = c(2, "7", source="backfill")
    assert a.role.admit([mended, c(3, "7")]) == [mended]


def test_a_standby_replaces_a_dead_leader_without_waiting_out_the_ttl(pg_dsn: str) -> None:
    """The standby's thread polls the lease: once the leader's session has ended (its process
    died), it leads with the next epoch while the lease still had most of its TTL to run."""
    from testkit.waiting import wait_until

    PostgresStore(pg_dsn).migrate()
    ttl = 60.0
    stores = [PostgresStore(pg_dsn) for _ in range(4)]
    a = HaRole(Lease(stores[0], "slow", "a", ttl), stores[1])
    b = HaRole(Lease(stores[2], "slow", "b", ttl), stores[3])
    try:
        a.tick()
        assert a.role == LEADER and a.epoch == 1
        b.start()
        time.sleep(1.0)
        assert b.role == STANDBY  # a is alive: its session is open and its lease runs 60 s
        stores[0]._drop_connection()  # a's process is gone: its lease session ends
        wait_until(lambda: b.role == LEADER, 10, "the standby leads")
        assert b.epoch == 2 and b.takeovers == 1
        state = b.lease.read()
        assert state is not None and state.holder == "b" and state.remaining > ttl - 15
    finally:
        b.stop(release=False)
        for s in stores:
            s.close()
