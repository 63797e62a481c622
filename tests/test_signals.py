"""Signals reach the daemon in every phase: SIGTERM/SIGINT stop it cleanly during start-up as well as
while it streams, SIGHUP reloads the watchlist on the live connections, and a large simulated
watchlist starts streaming without replaying the day."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.sqlite import SQLiteStore
from testkit.cli import kite_env, start_main
from testkit.fakes.kite_server import DEFAULT_INSTRUMENTS, KiteFakeServer, random_tape
from testkit.waiting import wait_until

pytestmark = pytest.mark.slow

BY_SYMBOL = {f"{i.exchange}:{i.tradingsymbol}": i for i in DEFAULT_INSTRUMENTS}


class Daemon:
    """main.py as a process whose stderr is read as it comes (killed at the end of the test if it
    still runs: see the ``daemons`` fixture)."""

    started: list[Daemon] = []

    def __init__(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.proc = start_main(*args, cwd=cwd, env=env)
        Daemon.started.append(self)
        self._lines: list[str] = []
        self._out = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        threading.Thread(target=lambda: setattr(self, "_out", self.proc.stdout.read()), daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._lines.append(line)

    @property
    def err(self) -> str:
        return "".join(self._lines)

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        wait_until(lambda: text in self.err or self.proc.poll() is not None, timeout, f"{text!r} in the log")
        assert text in self.err, f"exited with {self.proc.returncode} before {text!r}:\n{self.err}"

    def stop(self, sig: signal.Signals = signal.SIGTERM, within: float = 10.0) -> int:
        """Send ``sig``; the exit status, which must come within ``within`` seconds."""
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(within)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"still running {within} s after {sig.name}:\n{self.err}") from None
        self._reader.join(5)
        return code


@pytest.fixture(autouse=True)
def daemons() -> Iterator[None]:
    yield
    while Daemon.started:
        proc = Daemon.started.pop().proc
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def kite() -> Iterator[KiteFakeServer]:
    with KiteFakeServer(heartbeat_interval=0.5) as srv:
        yield srv


def test_sigterm_while_the_kite_instrument_list_downloads_stops_at_once_with_status_0(tmp_path, kite):
    kite.instruments_delay = 60.0
    daemon = Daemon("--broker", "kite", "--symbols", "NSE:INFY", cwd=tmp_path, env=kite_env(kite))
    wait_until(lambda: any(path == "/instruments" for _, path, _ in kite.rest_requests), 30, "the instruments request")

    assert daemon.stop() == 0, daemon.err
    assert "received SIGTERM while opening the kite feed (logging in, loading its instrument list)" in daemon.err
    assert "Traceback" not in daemon.err


def test_sigint_during_the_simulator_warm_up_of_a_huge_watchlist_stops_at_once_with_status_0(tmp_path):
    (tmp_path / "symbols.txt").write_text("\n".join(f"NSE:SYM{i:06d}" for i in range(100_000)) + "\n")
    daemon = Daemon("--broker", "sim", "--symbols-file", "symbols.txt", cwd=tmp_path)
    daemon.wait_for("ready (schema version")
    time.sleep(1.0)

    assert daemon.stop(signal.SIGINT) == 0, daemon.err
    assert "received SIGINT while" in daemon.err
    assert "streaming 100000 instruments" not in daemon.err
    assert "Traceback" not in daemon.err


def test_twenty_thousand_simulated_symbols_reach_streaming(tmp_path):
    (tmp_path / "symbols.txt").write_text("\n".join(f"NSE:SYM{i:05d}" for i in range(20_000)) + "\n")
    tape = tmp_path / "tape.jsonl"
    daemon = Daemon("--broker", "sim", "--symbols-file", "symbols.txt", "--sim-tape", str(tape), cwd=tmp_path)
    wait_until(lambda: tape.exists() and tape.stat().st_size > 0, 60, "the first tick of 20,000 symbols")
    # the feed ticks from the moment it connects, a moment before the start-up is over and says so
    daemon.wait_for("streaming 20000 instruments from sim", 30)

    assert daemon.stop(within=30) == 0, daemon.err


def _tape_symbols(tape: Path, after: int = 0) -> set[str]:
    with tape.open(encoding="utf-8") as src:
        src.seek(after)
        return {line.split('"symbol": "', 1)[1].split('"', 1)[0] for line in src if '"symbol": "' in line}


def test_sighup_changes_the_simulated_watchlist_live_and_a_broken_file_keeps_it(tmp_path):
    symbols = tmp_path / "symbols.txt"
    symbols.write_text("NSE:INFY\nNSE:TCS\n")
    tape = tmp_path / "tape.jsonl"
    daemon = Daemon(
        "--broker", "sim", "--symbols-file", "symbols.txt", "--symbols", "NSE:SBIN", "--sim-tape", str(tape),
        "--sim-speed", "20", "--intervals", "1m", cwd=tmp_path,
    )  # fmt: skip
    daemon.wait_for("streaming 3 instruments")

    symbols.write_text("NSE:INFY\nNSE:WIPRO\n")
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for("watchlist reloaded: +1 (NSE:WIPRO), -1 (NSE:TCS); 3 symbols")
    mark = tape.stat().st_size
    wait_until(lambda: "WIPRO" in _tape_symbols(tape, mark), 10, "ticks of the added symbol")
    mark = tape.stat().st_size
    time.sleep(1.0)
    assert _tape_symbols(tape, mark) == {"INFY", "WIPRO", "SBIN"}  # TCS is gone

    symbols.write_text("NSE:INFY\nNOT A SYMBOL::\n")
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for("watchlist not reloaded: ")
    assert "symbols.txt:2:" in daemon.err
    assert "still streaming the 3 symbols it had" in daemon.err
    mark = tape.stat().st_size
    wait_until(lambda: {"INFY", "WIPRO", "SBIN"} <= _tape_symbols(tape, mark), 10, "ticks of the kept watchlist")
    assert daemon.proc.poll() is None

    assert daemon.stop() == 0, daemon.err
    assert "Traceback" not in daemon.err
    store = SQLiteStore(str(tmp_path / "data" / "marketfeed.db"))
    try:
        assert store.latest("NSE", "WIPRO", "1m", limit=10), "no candle for the symbol added by SIGHUP"
    finally:
        store.close()


def test_sighup_subscribes_and_unsubscribes_on_the_live_kite_connection(tmp_path, kite):
    infy, reliance, tcs = (BY_SYMBOL[s] for s in ("NSE:INFY", "NSE:RELIANCE", "NSE:TCS"))
    symbols = tmp_path / "symbols.txt"
    symbols.write_text("NSE:INFY\nNSE:RELIANCE\n")
    daemon = Daemon("--broker", "kite", "--symbols-file", "symbols.txt", "--intervals", "1m", cwd=tmp_path, env=kite_env(kite))
    kite.wait_subscribed([infy.token, reliance.token], timeout=30)
    [before] = kite.connections

    symbols.write_text("NSE:INFY\nNSE:TCS\n")
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for("watchlist reloaded: +1 (NSE:TCS), -1 (NSE:RELIANCE); 2 symbols")
    kite.wait_subscribed([tcs.token], timeout=10)
    [after] = kite.connections
    assert after.id == before.id and kite.handshakes == 1  # the same socket, no reconnect
    assert set(after.subscribed) == {infy.token, tcs.token}
    sent = after.messages[len(before.messages):]
    assert {"a": "unsubscribe", "v": [reliance.token]} in sent
    assert any(m.get("a") == "subscribe" and m.get("v") == [tcs.token] for m in sent if isinstance(m, dict))

    now = int(time.time())
    tape = random_tape([tcs], seconds=5, seed=3, start_epoch=now - 5)
    assert kite.send_ticks(tape) == len(tape)
    time.sleep(1.0)  # the ticks reach the pipeline; the stop flushes the open candle
    assert daemon.stop() == 0, daemon.err
    store = SQLiteStore(str(tmp_path / "data" / "marketfeed.db"))
    try:
        assert store.latest("NSE", "TCS", "1m", limit=10), "no candle for the symbol added by SIGHUP"
    finally:
        store.close()


def test_sighup_reads_the_watchlist_table_again_and_a_bad_row_is_named_and_skipped(tmp_path):
    from storage.base import WatchlistEntry

    (tmp_path / "data").mkdir()
    db = tmp_path / "data" / "marketfeed.db"
    store = SQLiteStore(str(db))
    store.migrate()
    store.set_watchlist([WatchlistEntry("NSE", "INFY", True, 9), WatchlistEntry("NSE", "TCS", True, 8)])
    tape = tmp_path / "tape.jsonl"
    daemon = Daemon("--broker", "sim", "--symbols-from-db", "--sim-tape", str(tape), "--sim-speed", "20", cwd=tmp_path)
    try:
        daemon.wait_for("streaming 2 instruments")
        store.set_watchlist([WatchlistEntry("NSE", "TCS", False, 8), WatchlistEntry("nse", "wipro", True, 8),
                             WatchlistEntry("NSE", "BAD;SYM", True, 7)])  # fmt: skip
    finally:
        store.close()
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for("watchlist reloaded: +1 (NSE:WIPRO), -1 (NSE:TCS); 2 symbols", 10)
    assert "('NSE', 'BAD;SYM') skipped" in daemon.err
    mark = tape.stat().st_size
    wait_until(lambda: _tape_symbols(tape, mark) == {"INFY", "WIPRO"}, 10, "ticks of the reloaded table's symbols only")

    assert daemon.stop() == 0, daemon.err
