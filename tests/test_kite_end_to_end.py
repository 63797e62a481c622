"""The daemon as a process with --broker kite, pointed at the fake Kite server on loopback.

The fake streams a tape of full-mode snapshots; the candles the daemon stores must equal the
reference computed from exactly the ticks the fake sent, across a dropped connection and a
silent one. The CLI's login and broker check run against the same fake.
"""

from __future__ import annotations

import os
import signal
import stat
import time
from collections.abc import Iterator
from datetime import datetime

import pytest
from kiteconnect import KiteConnect

from brokers.kite.auth import generate_access_token
from candles.model import Interval, parse_intervals
from core.ist import IST
from storage.postgres import PostgresStore
from storage.sqlite import SQLiteStore
from testkit.cli import main_env, run_main, start_main
from testkit.fakes.kite_server import DEFAULT_INSTRUMENTS, FakeInstrument, KiteFakeServer, random_tape
from testkit.fakes.kite_server import arrivals as as_arrivals
from testkit.reference import candle_to_dict, reference_candles
from testkit.waiting import wait_until

BY_SYMBOL = {f"{i.exchange}:{i.tradingsymbol}": i for i in DEFAULT_INSTRUMENTS}
WATCH = ["NSE:INFY", "NSE:RELIANCE", "NSE:NIFTY 50"]
TOKENS = [BY_SYMBOL[s].token for s in WATCH]
STALL = 2.0


@pytest.fixture
def server() -> Iterator[KiteFakeServer]:
    with KiteFakeServer(heartbeat_interval=0.5) as srv:
        yield srv


def kite_env(server: KiteFakeServer, **extra: str) -> dict[str, str]:
    return main_env(
        KITE_API_KEY=server.api_key,
        KITE_API_SECRET=server.api_secret,
        KITE_WS_URL=server.ws_url,
        KITE_API_URL=server.api_url,
        FEED_STALL_SECONDS=str(STALL),
        STATUS_INTERVAL_SECONDS="1",
        **extra,
    )


def stored_candles(store, intervals) -> dict:
    rows = {}
    for sym in WATCH:
        exchange, name = sym.split(":")
        for iv in intervals:
            for candle in store.latest(exchange, name, iv.name, limit=10_000):
                key, value = candle_to_dict(candle)
                rows[key] = (value, candle.final)
    return rows




def wait_settled(server: KiteFakeServer, timeout: float = 20.0) -> None:
    """Until the daemon holds one subscribed connection that has lived through a whole stall period."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server.wait_subscribed(TOKENS, timeout=max(0.1, deadline - time.monotonic()), mode="full")
        before = server.handshakes
        time.sleep(STALL + 0.5)
        if server.handshakes == before and len(server.connections) == 1:
            return
    raise AssertionError(f"the daemon's connection never settled within {timeout} s")


@pytest.mark.slow
def test_kite_daemon_into_postgres_equals_the_reference_across_a_drop_and_a_stall(tmp_path, server, pg_dsn):
    intervals = parse_intervals("1m,5m")
    proc = start_main(
        "--broker", "kite", "--symbols", *WATCH, "NSE:NOSUCHSYMBOL", "--intervals", "1m,5m",
        cwd=tmp_path, env=kite_env(server, PG_CONN_STR=pg_dsn, KITE_ACCESS_TOKEN=server.access_token),
    )  # fmt: skip
    try:
        server.wait_subscribed(TOKENS, timeout=30, mode="full")
        # a tape of the 150 s before the last minute boundary that is 3 s past: every bucket it
        # touches has closed on the daemon's clock (end + 2 s grace) by the time it is sent
        end = (int(time.time()) - 3) // 60 * 60
        tape = random_tape([BY_SYMBOL[s] for s in WATCH], seconds=150, seed=7, start_epoch=end - 150)
        cut1 = next(k for k, t in enumerate(tape) if t.exchange_ts >= end - 100)
        cut2 = next(k for k, t in enumerate(tape) if t.exchange_ts >= end - 50)

        assert server.send_ticks(tape[:cut1]) == cut1
        server.drop_all()  # TCP reset, no close frame
        server.wait_subscribed(TOKENS, timeout=15, mode="full")
        assert server.handshakes == 2
        assert server.send_ticks(tape[cut1:cut2]) == cut2 - cut1

        server.go_mute()  # socket stays open, nothing arrives: the watchdog must notice
        wait_until(lambda: server.handshakes >= 3, STALL * 4, "reconnect after the stall")
        server.go_mute(False)
        wait_settled(server)
        assert server.send_ticks(tape[cut2:]) == len(tape) - cut2
        time.sleep(1.0)  # the writer's batch linger, so that the closed candles are written as final
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    stopped = time.time()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "unknown symbol NSE:NOSUCHSYMBOL: skipped" in err
    assert "reconnected, resubscribed 3 instruments" in err
    assert "stalled (no data for" in err
    assert server.access_token not in err

    store = PostgresStore(pg_dsn)
    try:
        stored = stored_candles(store, intervals)
    finally:
        store.close()
    expected = reference_candles(as_arrivals(tape), intervals)
    assert len(expected) > 10
    got = {k: v for k, (v, _) in stored.items()}
    diff = {k: (got.get(k), expected.get(k)) for k in set(got) | set(expected) if got.get(k) != expected.get(k)}
    assert not diff, f"stored vs reference: {diff}\n{err}"
    for (_, _, iv, bucket), (_, final) in stored.items():
        if bucket + Interval.parse(iv).seconds + 2 < stopped - 1:
            assert final, f"{iv} candle at {datetime.fromtimestamp(bucket, IST)} closed before the stop but is not final"


@pytest.mark.slow
def test_login_writes_a_private_token_file_that_the_broker_check_then_uses(tmp_path, server):
    redirect = f"{server.redirect_url}?action=login&type=login&status=success&request_token={server.request_token}"
    login = run_main("--broker", "kite", "--login", cwd=tmp_path, env=kite_env(server), input_text=redirect + "\n")
    assert login.returncode == 0, login.stderr
    assert "api_key=fake_key" in login.stdout  # the login URL to open
    token_file = tmp_path / "data" / "kite_access_token.json"
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    assert server.access_token not in login.stdout + login.stderr

    check = run_main("--broker", "kite", "--test-broker", "--symbols", "NSE:RELIANCE", cwd=tmp_path, env=kite_env(server))
    assert check.returncode == 0, check.stdout + check.stderr
    lines = check.stdout.splitlines()
    assert lines[0] == "marketfeed broker check: kite"
    assert any(line.split()[:2] == ["profile", "ok:"] and "AB1234" in line for line in lines)
    assert any("NSE:RELIANCE = instrument 738561" in line for line in lines)
    assert any(line.split()[:3] == ["first", "tick", "ok:"] or "heartbeat after" in line for line in lines), check.stdout
    assert lines[-1].split() == ["result", "OK"]
    assert server.access_token not in check.stdout + check.stderr


@pytest.mark.slow
def test_broker_check_with_a_rejected_token_fails_and_says_to_log_in_again(tmp_path, server):
    server.expire_access_token()
    check = run_main(
        "--broker", "kite", "--test-broker", cwd=tmp_path, env=kite_env(server, KITE_ACCESS_TOKEN=server.access_token)
    )
    assert check.returncode == 1
    assert "profile" in check.stdout and "FAILED" in check.stdout
    assert "log in again (python main.py --broker kite --login)" in check.stdout
    assert server.access_token not in check.stdout + check.stderr


@pytest.mark.slow
def test_daemon_without_any_access_token_says_how_to_log_in(tmp_path, server):
    proc = run_main("--broker", "kite", "--symbols", "NSE:INFY", cwd=tmp_path, env=kite_env(server))
    assert proc.returncode == 3  # credentials refused: the unit file does not restart it
    assert "no Kite access token: log in first with `python main.py --broker kite --login`" in proc.stderr


@pytest.mark.slow
def test_running_daemon_picks_up_the_token_of_a_fresh_login_after_a_rejection(tmp_path, server):
    env = kite_env(server)
    first = run_main("--broker", "kite", "--login", "--request-token", server.request_token, cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    proc = start_main("--broker", "kite", "--symbols", "NSE:INFY", cwd=tmp_path, env=env)
    try:
        server.wait_subscribed([BY_SYMBOL["NSE:INFY"].token], timeout=30)
        server.expire_access_token()  # the next morning: the token is refused from now on
        server.drop_all()
        wait_until(lambda: server.rejected_handshakes >= 1, 10, "the daemon's reconnect being refused")
        time.sleep(2)
        assert server.rejected_handshakes == 1, "a refused token must not be retried"
        again = run_main("--broker", "kite", "--login", "--request-token", server.request_token, cwd=tmp_path, env=env)
        assert again.returncode == 0, again.stderr
        server.reject_tokens(False)
        server.wait_subscribed([BY_SYMBOL["NSE:INFY"].token], timeout=15)
        assert server.connections[0].query["access_token"] == server.access_token
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "log in again" in err and "a new access token is available" in err


def _many(n: int) -> list[FakeInstrument]:
    return [FakeInstrument(((20_000 + k) << 8) | 1, "NSE", f"SYN{k}") for k in range(n)]


@pytest.mark.slow
def test_more_than_9000_instruments_are_refused_with_the_numbers(tmp_path):
    with KiteFakeServer(instruments=_many(9001)) as srv:
        (tmp_path / "watch.txt").write_text("\n".join(f"NSE:SYN{k}" for k in range(9001)) + "\n")
        proc = run_main(
            "--broker", "kite", "--symbols-file", "watch.txt", cwd=tmp_path,
            env=kite_env(srv, KITE_ACCESS_TOKEN=srv.access_token),
        )  # fmt: skip
    assert proc.returncode == 1
    assert "9001 instruments exceed what kite allows: 3000 per connection x 3 connections = 9000" in proc.stderr


def test_shard_splits_a_watchlist_between_daemons_without_overlap_and_keeps_parts_stable():
    from cli.watchlist import shard_of

    pairs = [("NSE", f"SYN{k}") for k in range(300)]
    parts = [shard_of(pairs, i, 3) for i in (1, 2, 3)]
    assert sorted(p for part in parts for p in part) == sorted(pairs)
    assert all(60 < len(part) < 140 for part in parts)
    grown = [shard_of(pairs + [("NSE", "NEW")], i, 3) for i in (1, 2, 3)]
    assert sum(len(g) for g in grown) == 301
    assert all(set(part) <= set(g) for part, g in zip(parts, grown))  # adding a symbol moves no other


@pytest.mark.parametrize("bad", ["3/2", "0/2", "x", "1-2"])
@pytest.mark.slow
def test_bad_shard_option_is_refused_before_anything_starts(tmp_path, bad):
    proc = run_main("--symbols", "NSE:INFY", "--shard", bad, cwd=tmp_path)
    assert proc.returncode == 2
    assert "--shard" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_login_rejects_a_stale_request_token_with_a_clear_message(tmp_path, server):
    kite = KiteConnect(server.api_key, root=server.api_url)
    used = server.request_token
    generate_access_token(kite, used, server.api_secret)  # request tokens work once
    proc = run_main("--broker", "kite", "--login", "--request-token", used, cwd=tmp_path, env=kite_env(server))
    assert proc.returncode == 1
    assert "check KITE_API_SECRET and use a fresh request_token" in proc.stderr
    assert not (tmp_path / "data" / "kite_access_token.json").exists()


@pytest.mark.slow
def test_sqlite_default_store_works_with_kite_too(tmp_path, server):
    proc = start_main(
        "--broker", "kite", "--symbols", "NSE:INFY", cwd=tmp_path, env=kite_env(server, KITE_ACCESS_TOKEN=server.access_token)
    )
    try:
        server.wait_subscribed([BY_SYMBOL["NSE:INFY"].token], timeout=30, mode="full")
        now = int(time.time())
        tape = random_tape([BY_SYMBOL["NSE:INFY"]], seconds=120, seed=3, start_epoch=now - 130)
        server.send_ticks(tape)
        time.sleep(1.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    store = SQLiteStore(tmp_path / "data" / "marketfeed.db")
    try:
        got = {candle_to_dict(c)[0]: candle_to_dict(c)[1] for c in store.latest("NSE", "INFY", "1m", limit=100)}
    finally:
        store.close()
    assert got == reference_candles(as_arrivals(tape), [Interval.parse("1m")])


@pytest.mark.slow
def test_a_kite_daemon_killed_with_sigkill_resumes_its_open_buckets_from_the_journalled_frames(tmp_path, server):
    from pipeline.journal import TickJournal

    stocks = [BY_SYMBOL["NSE:INFY"], BY_SYMBOL["NSE:RELIANCE"]]
    intervals = parse_intervals("5m,15m")
    args = ["--broker", "kite", "--symbols", "NSE:INFY", "NSE:RELIANCE", "--intervals", "5m,15m"]
    env = kite_env(server, KITE_ACCESS_TOKEN=server.access_token)
    # The fake stamps each tick with the tape's exchange time, the daemon places it by that time and
    # closes buckets on its wall clock. A tape in the first seconds of the next 5-minute bucket keeps
    # every bucket it touches open for at least five minutes from now, whatever the time of day.
    five = Interval.parse("5m")
    tape = random_tape(stocks, seconds=20, seed=11, start_epoch=five.bucket_start(time.time()) + five.seconds + 1)
    cut = len(tape) * 2 // 3
    journal_dir = tmp_path / "data" / "journal"

    def journalled_ticks() -> int:  # packets in the frames the journal holds
        return sum(
            int.from_bytes(payload[21:23], "big")
            for path in journal_dir.glob("ticks-*.jnl")
            for kind, payload in TickJournal._records(path)
            if kind == b"F"
        )

    proc = start_main(*args, cwd=tmp_path, env=env)
    try:
        server.wait_subscribed([i.token for i in stocks], timeout=30, mode="full")
        assert server.send_ticks(tape[:cut]) == cut
        wait_until(lambda: journalled_ticks() == cut, 10, "every tick sent journalled as frames")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)

    # The killed daemon's connection stays on the fake's books until the fake has read its end: wait for
    # the subscriptions of a connection the restarted daemon opened, or the rest of the tape goes nowhere.
    killed = server.last_connection_id
    proc = start_main(*args, cwd=tmp_path, env=env)
    try:
        server.wait_subscribed([i.token for i in stocks], timeout=30, mode="full", after=killed)
        assert server.send_ticks(tape[cut:]) == len(tape) - cut
        time.sleep(1.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "resumed the open buckets from the tick journal" in err
    store = SQLiteStore(tmp_path / "data" / "marketfeed.db")
    try:
        got = {
            candle_to_dict(c)[0]: candle_to_dict(c)[1]
            for i in stocks
            for iv in intervals
            for c in store.latest(i.exchange, i.tradingsymbol, iv.name, limit=100)
        }
    finally:
        store.close()
    assert got == reference_candles(as_arrivals(tape), intervals)
