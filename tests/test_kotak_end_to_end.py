"""The daemon as a process with --broker kotak, pointed at the fake Kotak Neo server on loopback.

Sessions live a few seconds here, so the daemon renews them while the tape streams; the candles
it stores must equal the reference computed from exactly the ticks the fake sent: nothing lost
across renewals, a forced expiry, or the split of the watchlist across connections.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from candles.model import Interval, parse_intervals
from core.ist import IST
from storage.postgres import PostgresStore
from storage.sqlite import SQLiteStore
from testkit.cli import main_env, run_main, start_main
from testkit.fakes.kotak_server import DEFAULT_INSTRUMENTS, KotakFakeServer, TapeTick, random_tape, synthetic_instruments
from testkit.reference import candle_to_dict, reference_candles

pytestmark = pytest.mark.slow  # every test runs main.py

ROOT = Path(__file__).resolve().parent.parent

# watchlist spelling -> the fake's scrip-master row
WATCH = {"NSE:INFY": 1594, "NSE:TCS": 11536, "NSE:RELIANCE": 2885, "NSE:NIFTY 50": 26000}
ROWS = {i.token: i for i in DEFAULT_INSTRUMENTS if i.segment == "nse_cm" and i.token in WATCH.values()}
SYMBOL_OF = {token: sym.split(":")[1] for sym, token in WATCH.items()}
FEED_KEYS = ["nse_cm|1594", "nse_cm|11536", "nse_cm|2885", "nse_cm|Nifty 50"]


def kotak_env(server: KotakFakeServer, **extra: str) -> dict[str, str]:
    settings = {
        "KOTAK_CONSUMER_KEY": server.consumer_key,
        "KOTAK_MOBILE_NUMBER": server.mobile_number,
        "KOTAK_UCC": server.ucc,
        "KOTAK_MPIN": server.mpin,
        "KOTAK_TOTP_SECRET": server.totp_secret,
        "KOTAK_LOGIN_URL": server.login_url,
        "FEED_STALL_SECONDS": "5",
        "STATUS_INTERVAL_SECONDS": "1",
    }
    return main_env(**(settings | extra))


def as_arrivals(ticks: list[TapeTick]) -> list[SimpleNamespace]:
    out = []
    for t in ticks:
        index = ROWS[t.token].is_index
        out.append(
            SimpleNamespace(
                exchange="NSE",
                symbol=SYMBOL_OF[t.token],
                last_price=t.last_price,
                volume=None if index else t.volume,
                oi=None if index else t.oi,
                exchange_ts=datetime.fromtimestamp(t.exchange_ts, IST),
            )
        )
    return out


def stored_candles(dsn: str, intervals) -> dict:
    store = PostgresStore(dsn)
    rows = {}
    try:
        for sym in WATCH:
            exchange, name = sym.split(":")
            for iv in intervals:
                for candle in store.latest(exchange, name, iv.name, limit=10_000):
                    key, value = candle_to_dict(candle)
                    rows[key] = (value, candle.final)
    finally:
        store.close()
    return rows


@pytest.fixture
def server() -> Iterator[KotakFakeServer]:
    with KotakFakeServer(token_lifetime=6) as srv:
        yield srv


def test_kotak_daemon_renews_and_recovers_sessions_without_losing_a_tick(tmp_path, server, pg_dsn):
    intervals = parse_intervals("1m,5m")
    proc = start_main(
        "--broker", "kotak", "--symbols", *WATCH, "NSE:NOSUCHSCRIP", "--intervals", "1m,5m",
        cwd=tmp_path, env=kotak_env(server, PG_CONN_STR=pg_dsn, KOTAK_LOGINS_PER_MINUTE="30"),  # 6 s sessions
    )  # fmt: skip
    try:
        server.wait_subscribed(FEED_KEYS, timeout=30)
        logins_at_start = server.logins_completed
        end = (int(time.time()) - 3) // 60 * 60  # every bucket of the tape has closed on the daemon's clock
        tape = random_tape(list(ROWS.values()), seconds=160, seed=5, start_epoch=end - 160)
        # stream the tape over ~16 s: with 6 s sessions the daemon renews at least twice meanwhile
        per_second = len(tape) // 16 + 1
        half = len(tape) // 2
        sent = 0
        while sent < half:
            chunk = tape[sent : min(sent + per_second, half)]
            server.send_ticks(chunk)
            sent += len(chunk)
            time.sleep(1.0)
        # Kotak ends every session early: each connection gets 1120 and must log in again
        kicked_at = server.logins_completed
        server.expire_sessions(kick=True)
        deadline = time.monotonic() + 20
        while server.logins_completed == kicked_at and time.monotonic() < deadline:
            time.sleep(0.05)
        server.wait_subscribed(FEED_KEYS, timeout=20)
        while sent < len(tape):
            chunk = tape[sent : sent + per_second]
            server.send_ticks(chunk)
            sent += len(chunk)
            time.sleep(1.0)
        time.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    stopped = time.time()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "unknown symbol NSE:NOSUCHSCRIP: skipped" in err
    assert err.count("re-authenticated (90% of the session's life)") >= 2, err
    assert "the feed refused the session (1120)" in err
    assert "moved to the renewed session" in err
    assert server.logins_completed >= logins_at_start + 3
    for secret in (server.mpin, server.totp_secret, server.consumer_key, *server.session_sids, *server.session_tokens):
        assert secret not in err

    stored = stored_candles(pg_dsn, intervals)
    expected = reference_candles(as_arrivals(tape), intervals)
    got = {k: v for k, (v, _) in stored.items()}
    diff = {k: (got.get(k), expected.get(k)) for k in set(got) | set(expected) if got.get(k) != expected.get(k)}
    assert not diff, f"stored vs reference: {diff}\n{err}"
    for (_, _, iv, bucket), (_, final) in stored.items():
        if bucket + Interval.parse(iv).seconds + 2 < stopped - 1:
            assert final, f"{iv} candle at {datetime.fromtimestamp(bucket, IST)} closed before the stop but is not final"


def test_250_symbols_run_on_three_connections_with_the_default_limit(tmp_path):
    rows = synthetic_instruments(250)
    with KotakFakeServer(instruments=DEFAULT_INSTRUMENTS + rows) as srv:
        (tmp_path / "watch.txt").write_text("".join(f"NSE:{r.symbol_name}\n" for r in rows))
        proc = start_main("--broker", "kotak", "--symbols-file", "watch.txt", cwd=tmp_path, env=kotak_env(srv))
        try:
            srv.wait_subscribed([r.key for r in rows], timeout=30)
            sizes = sorted(c.token_count for c in srv.connections)
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert sizes == [50, 100, 100]


def test_more_symbols_than_the_connections_carry_are_refused_with_the_numbers(tmp_path):
    rows = synthetic_instruments(31)
    with KotakFakeServer(instruments=DEFAULT_INSTRUMENTS + rows) as srv:
        (tmp_path / "watch.txt").write_text("".join(f"NSE:{r.symbol_name}\n" for r in rows))
        proc = run_main(
            "--broker", "kotak", "--symbols-file", "watch.txt", cwd=tmp_path,
            env=kotak_env(srv, KOTAK_MAX_SYMBOLS_PER_CONNECTION="10", KOTAK_MAX_CONNECTIONS="3"),
        )  # fmt: skip
        assert srv.handshakes == 0
    assert proc.returncode == 1
    assert "31 instruments exceed what kotak_neo allows: 10 per connection x 3 connections = 30" in proc.stderr


def unit_restart_prevent_statuses() -> set[int]:
    """The exit statuses after which the shipped systemd unit does not restart the daemon."""
    lines = (ROOT / "deploy" / "marketfeed.service").read_text().splitlines()
    values = [line.split("=", 1)[1] for line in lines if line.startswith("RestartPreventExitStatus=")]
    return {int(v) for value in values for v in value.split()}


def test_wrong_mpin_stops_the_start_with_exit_3_which_systemd_does_not_restart(tmp_path, server):
    proc = run_main("--broker", "kotak", "--symbols", "NSE:INFY", cwd=tmp_path, env=kotak_env(server, KOTAK_MPIN="999999"))
    assert proc.returncode == 3, proc.stderr
    assert "check KOTAK_MPIN / KOTAK_TOTP_SECRET" in proc.stderr
    assert "restart the daemon (systemctl restart marketfeed)" in proc.stderr
    assert "999999" not in proc.stderr
    assert server.validate_attempts == 1
    assert {2, 3} <= unit_restart_prevent_statuses()


def test_quick_restarts_against_a_failing_login_server_make_at_most_three_login_attempts_a_minute(tmp_path, server):
    server.fail_next("login", 503, times=100)  # Kotak's login server is in trouble: every start exits 1
    env = kotak_env(server)
    for _ in range(3):  # systemd restarts the daemon every 5 s; here at once
        proc = run_main("--broker", "kotak", "--symbols", "NSE:INFY", cwd=tmp_path, env=env)
        assert proc.returncode == 1 and "HTTP 503" in proc.stderr, proc.stderr
    assert server.login_attempts == 3
    proc = start_main("--broker", "kotak", "--symbols", "NSE:INFY", cwd=tmp_path, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while not any("login attempts in the last 60 s; waiting" in line for line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.1)
        time.sleep(1.0)  # an attempt that did not wait would reach the fake now
        assert server.login_attempts == 3
    finally:
        proc.kill()
        proc.wait(10)
    assert any("until" in line and "IST" in line for line in lines), "".join(lines)


def test_broker_check_reports_login_symbol_and_first_tick(tmp_path, server):
    proc = start_main("--broker", "kotak", "--test-broker", "--symbols", "NSE:TCS", cwd=tmp_path, env=kotak_env(server))
    try:
        server.wait_subscribed(["nse_cm|11536"], timeout=30)
        server.send_ticks(random_tape([ROWS[11536]], seconds=2, seed=1, start_epoch=int(time.time()) - 2))
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out + err
    lines = out.splitlines()
    assert lines[0] == "marketfeed broker check: kotak"
    assert any(line.split()[:2] == ["login", "ok:"] and server.ucc in line for line in lines)
    assert any("NSE:TCS = instrument 11536" in line for line in lines)
    assert any(line.split()[:3] == ["first", "tick", "ok:"] for line in lines), out
    assert lines[-1].split() == ["result", "OK"]


def test_an_index_the_scrip_master_does_not_list_is_subscribed_by_name_and_makes_candles(tmp_path):
    nifty = ROWS[26000]
    with KotakFakeServer(index_rows=False) as srv:
        proc = start_main("--broker", "kotak", "--symbols", "NSE:NIFTY 50", "NSE:INFY", "--intervals", "1m",
                          cwd=tmp_path, env=kotak_env(srv))  # fmt: skip
        try:
            srv.wait_subscribed(["nse_cm|Nifty 50", "nse_cm|1594"], timeout=30)
            end = (int(time.time()) - 3) // 60 * 60  # the tape's buckets have all closed on the daemon's clock
            tape = random_tape([nifty], seconds=120, seed=2, start_epoch=end - 120)
            assert srv.send_ticks(tape) == len(tape)
            time.sleep(1.0)
            events = [m for c in srv.connections for m in c.messages if "Nifty 50" in str(m)]
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "unknown symbol" not in err
    assert [m["event"] for m in events] == ["subscribeIndices"]
    store = SQLiteStore(tmp_path / "data" / "marketfeed.db")
    try:
        got = {candle_to_dict(c)[0]: candle_to_dict(c)[1] for c in store.latest("NSE", "NIFTY 50", "1m", limit=1000)}
    finally:
        store.close()
    expected = reference_candles(as_arrivals(tape), parse_intervals("1m"))
    assert got and got == expected
