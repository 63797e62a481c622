"""Hot standby as processes: two daemons stream the Kite fake into one PostgreSQL, one writes.

Across a SIGKILLed leader, a leader paused (SIGSTOP) for longer than the lease and a killed
standby, the stored candles equal the reference built from every tick sent: nothing lost, nothing
written twice in two versions, and the paused leader writes nothing once it resumes.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from candles.model import parse_intervals
from publishers.nats import TICKS_STREAM
from testkit.fakes.kite_server import KiteFakeServer, arrivals, random_tape
from testkit.ha_pair import BY_SYMBOL, TOKENS, WATCH, HaDaemon, lease, stored
from testkit.nats import stream_messages
from testkit.reference import reference_candles
from testkit.waiting import wait_until

TTL = 2.0
INTERVALS = parse_intervals("1m")


@pytest.fixture
def server() -> Iterator[KiteFakeServer]:
    with KiteFakeServer(heartbeat_interval=0.5) as srv:
        yield srv


def phases(n: int) -> list[list]:
    """A tape of the ``n`` whole minutes before the last minute boundary 3 s past, one list per
    minute: each phase's buckets have closed on the daemons' clocks and none spans two phases."""
    end = (int(time.time()) - 3) // 60 * 60
    start = end - 60 * n
    tape = random_tape([BY_SYMBOL[s] for s in WATCH], seconds=60 * n, seed=5, start_epoch=start)
    return [[t for t in tape if start + 60 * k <= t.exchange_ts < start + 60 * (k + 1)] for k in range(n)]


class Run:
    def __init__(self, server: KiteFakeServer, dsn: str) -> None:
        self.server, self.dsn, self.sent = server, dsn, []

    def send(self, ticks: list) -> None:
        assert self.server.send_ticks(ticks) >= len(ticks)  # packets, to every subscribed connection
        self.sent += ticks
        expected = reference_candles(arrivals(self.sent), INTERVALS)
        wait_until(lambda: stored(self.dsn, INTERVALS) == expected, 15, "the stored candles equal the reference")


def start_pair(tmp_path: Path, server: KiteFakeServer, dsn: str, **env: str) -> tuple[HaDaemon, HaDaemon]:
    a = HaDaemon(tmp_path, "a", server, dsn, TTL, **env).start()
    wait_until(lambda: lease(dsn) == ("a", 1), 30, "a taking the lease")
    server.wait_subscribed(TOKENS, timeout=30, mode="full")
    mark = server.last_connection_id
    b = HaDaemon(tmp_path, "b", server, dsn, TTL, **env).start()
    server.wait_subscribed(TOKENS, timeout=30, mode="full", after=mark)
    wait_until(lambda: "standby" in b.text() and "status:" in b.text(), 15, "b running as standby")
    return a, b


@pytest.mark.slow
def test_sigkill_of_the_leader_the_standby_takes_over_at_once(tmp_path, server, pg_dsn, nats_server) -> None:
    """A killed leader's lease session ends with it: the standby takes over on its next look,
    not at the expiry. Only the leader puts ticks on the bus: each tick is there once."""
    parts = phases(2)
    a, b = start_pair(tmp_path, server, pg_dsn, NATS_URL=nats_server.url)
    run = Run(server, pg_dsn)
    try:
        run.send(parts[0])  # a writes
        assert b.written() == 0
        wait_until(lambda: stream_messages(nats_server.url, TICKS_STREAM) >= len(run.sent), 10, "a's ticks on the bus")
        killed = time.monotonic()
        a.signal(signal.SIGKILL)
        a.wait()
        wait_until(lambda: lease(pg_dsn) == ("b", 2), TTL + 5, "b taking over")
        assert time.monotonic() - killed <= TTL + TTL / 3 + 2
        run.send(parts[1])  # b writes; a's stored minute is not written again
        wait_until(lambda: stream_messages(nats_server.url, TICKS_STREAM) >= len(run.sent), 10, "b's ticks on the bus")
        time.sleep(1.0)
        assert stream_messages(nats_server.url, TICKS_STREAM) == len(run.sent)  # once each, from the leader
    finally:
        b.signal(signal.SIGTERM)
        assert b.wait() == 0, b.text()
        a.stop()
    log = b.text()
    assert "HA: b took the lease 'pair' (session ended), epoch 2: leader" in log
    assert "Traceback" not in log + a.text()
    assert lease(pg_dsn) is None  # released at b's clean stop
    assert stored(pg_dsn, INTERVALS) == reference_candles(arrivals(run.sent), INTERVALS)


@pytest.mark.slow
def test_a_paused_leader_never_writes_after_losing_the_lease_and_a_killed_standby_changes_nothing(tmp_path, server, pg_dsn) -> None:
    parts = phases(4)
    a, b = start_pair(tmp_path, server, pg_dsn)
    run = Run(server, pg_dsn)
    try:
        run.send(parts[0])  # a writes
        time.sleep(1.5)  # a status line with a's count
        before = a.written()
        assert before > 0
        a.signal(signal.SIGSTOP)
        wait_until(lambda: lease(pg_dsn) == ("b", 2), TTL + 5, "b taking over from the paused a")
        run.send(parts[1])  # b writes while a is paused
        assert "HA: b took the lease 'pair' (expired), epoch 2: leader" in b.text()  # a's session is open
        a.signal(signal.SIGCONT)
        wait_until(lambda: "HA: stepping down to standby (epoch 1)" in a.text(), TTL + 5, "a stepping down")
        run.send(parts[2])  # a has these ticks too, and writes none of them
        time.sleep(1.5)
        assert a.written() == before, "the paused leader wrote after it lost the lease"
        a.signal(signal.SIGKILL)  # the standby dies: nothing changes
        a.wait()
        time.sleep(TTL * 1.5)
        assert lease(pg_dsn) == ("b", 2)
        run.send(parts[3])
    finally:
        b.signal(signal.SIGTERM)
        assert b.wait() == 0, b.text()
        a.stop()
    assert "Traceback" not in a.text() + b.text()
    assert stored(pg_dsn, INTERVALS) == reference_candles(arrivals(run.sent), INTERVALS)


@pytest.mark.slow
def test_ha_with_sqlite_refuses_to_start_and_says_what_to_set(tmp_path) -> None:
    from testkit.cli import main_env, run_main

    proc = run_main("--symbols", "NSE:INFY", "--duration", "1", cwd=tmp_path, env=main_env(HA="true"))
    assert proc.returncode == 2, proc.stderr
    assert "HA=true needs PostgreSQL (PG_CONN_STR)" in proc.stderr and "or HA=false" in proc.stderr
    assert "Traceback" not in proc.stderr
