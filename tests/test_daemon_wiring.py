"""The daemon's parts are stopped in reverse whatever ends the start: nothing keeps running or holding."""

from __future__ import annotations

import signal
import socket
import threading
import time

import pytest

from brokers.base import BrokerError
from brokers.sim.client import SimBroker
from cli.app import main
from storage.spool import Spool
from storage.sqlite import SQLiteStore
from testkit.waiting import free_port, wait_until


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _threads(*names: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name in names and t.is_alive()]


def test_a_feed_that_fails_to_connect_stops_every_part_started_before_it(in_process, monkeypatch):
    def refuse(self: SimBroker, on_ticks: object) -> None:
        raise BrokerError("the feed refused the connection (simulated)")

    monkeypatch.setattr(SimBroker, "connect", refuse)
    port = free_port()
    code = main(["--broker", "sim", "--symbols", "NSE:INFY", "--metrics-port", str(port), "--duration", "30"])

    assert code == 1
    wait_until(lambda: not _threads("pipeline", "writer", "metrics"), 5, "the pipeline, writer and metrics threads to end")
    assert _port_is_free(port), "the metrics server still holds its port"
    Spool(in_process / "data" / "spool").close()  # the spool's lock was released: a new daemon may start here


def test_a_busy_metrics_port_stops_the_start_before_any_thread_and_releases_the_spool(in_process):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code = main(["--broker", "sim", "--symbols", "NSE:INFY", "--metrics-port", str(busy.getsockname()[1])])
    assert code == 2
    assert not _threads("pipeline", "writer", "sim-feed")
    Spool(in_process / "data" / "spool").close()


def test_a_clean_run_ends_with_every_thread_stopped(in_process):
    code = main(["--broker", "sim", "--symbols", "NSE:INFY", "--duration", "0.5", "--metrics-port", str(free_port())])
    assert code == 0
    assert not _threads("pipeline", "writer", "metrics", "sim-feed")


def test_sigterm_during_a_slow_reload_asked_for_during_start_up_stops_the_daemon_within_seconds(in_process, monkeypatch, capfd):
    (in_process / "symbols.txt").write_text("NSE:INFY\n")
    reloading = threading.Event()
    original = SimBroker.resolve
    calls = [0]

    def slow_resolve(self: SimBroker, pairs):  # noqa: ANN001, ANN202
        calls[0] += 1
        if calls[0] > 1:  # the reload's: as slow as a scrip master download on a bad day
            reloading.set()
            time.sleep(60)
        return original(self, pairs)

    monkeypatch.setattr(SimBroker, "resolve", slow_resolve)
    migrate = SQLiteStore.migrate

    def slow_migrate(self: SQLiteStore) -> int:  # a start-up that takes a while: the SIGHUP lands in it
        time.sleep(1.5)
        return migrate(self)

    monkeypatch.setattr(SQLiteStore, "migrate", slow_migrate)
    asked: list[float] = []

    # Sent to the main thread itself: in the daemon every other thread blocks these signals (the next
    # test), but a test process has threads of its own (pytest-xdist's) that the kernel may pick.
    main_thread = threading.main_thread().ident

    def operator() -> None:
        time.sleep(1.0)
        signal.pthread_kill(main_thread, signal.SIGHUP)
        if reloading.wait(20):
            # while the download runs: sent the instant the main thread lets go of the GIL to start
            # its sleep, the signal would land before the sleep's system call began, and no blocking
            # call is interrupted by a signal that came before it
            time.sleep(0.5)
            asked.append(time.monotonic())
            signal.pthread_kill(main_thread, signal.SIGTERM)

    threading.Thread(target=operator, daemon=True).start()
    code = main(["--broker", "sim", "--symbols-file", "symbols.txt", "--duration", "90"])

    assert asked, "the reload never started"
    assert time.monotonic() - asked[0] < 10, "the stop waited for the reload"
    assert code == 0
    assert "received SIGTERM while reloading the watchlist: reload abandoned, shutting down" in capfd.readouterr().err


def test_a_run_that_stores_nothing_says_why_in_its_stop_line(in_process, monkeypatch, capfd):
    monkeypatch.setattr(SimBroker, "due_ticks", lambda self, now: [])  # a feed that sends nothing
    code = main(["--broker", "sim", "--symbols", "NSE:INFY", "--duration", "0.5"])
    err = capfd.readouterr().err
    assert code == 0
    (line,) = [x for x in err.splitlines() if "stopped: " in x]
    assert line.endswith("stopped: 0 ticks, 0 candle writes (a revision or a replay writes a candle again), "
                         "no tick arrived: the feed lines above say whether it was connected"), line  # fmt: skip


def test_the_stop_line_says_how_many_ticks_were_dropped_or_came_late():
    from types import SimpleNamespace

    from cli.daemon import _summary

    service = SimpleNamespace(
        stats=SimpleNamespace(ticks=120),
        aggregator=SimpleNamespace(stats=SimpleNamespace(late_ticks=3, dropped_ticks=117)),
        writer=SimpleNamespace(stats=SimpleNamespace(candles_written=0)),
    )
    line = _summary(service, drained=True)  # type: ignore[arg-type]
    assert line == ("120 ticks, 0 candle writes (a revision or a replay writes a candle again), "
                    "3 late ticks revised closed candles, "
                    "117 ticks dropped (their bucket had closed beyond the revision horizon)"), line  # fmt: skip


def test_threads_started_while_the_daemon_runs_leave_its_signals_to_the_main_thread(in_process):
    """A stop signal taken by another thread would not interrupt the main thread's blocking call
    (a download, a lock wait): the daemon's threads block them, so the kernel picks the main thread."""
    from cli.signals import DaemonSignals

    masks: list[set[int]] = []

    def record() -> None:
        masks.append(signal.pthread_sigmask(signal.SIG_BLOCK, []))

    signals = DaemonSignals()
    assert signals.install()
    try:
        thread = threading.Thread(target=record)
        thread.start()
        thread.join()
        assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # the main thread still takes them
    finally:
        signals.restore()
    after = threading.Thread(target=record)
    after.start()
    after.join()
    assert {signal.SIGTERM, signal.SIGINT, signal.SIGHUP} <= masks[0]
    assert signal.SIGTERM not in masks[1]  # restore() puts Thread.start back


def test_a_stop_raised_as_a_thread_starts_leaves_the_main_thread_taking_signals(in_process, monkeypatch):
    """The handler raises ``StopRequested`` between bytecodes: it may fire the moment the call that
    blocks the signals returns. The main thread must not stay blocked (a later stop would wait)."""
    import cli.signals as daemon_signals

    real = signal.pthread_sigmask

    def block_then_handler_raises(how: int, mask):  # noqa: ANN001, ANN202
        result = real(how, mask)
        if how == signal.SIG_BLOCK and signal.SIGTERM in set(mask):
            raise daemon_signals.StopRequested("SIGTERM")  # what the handler does, at that moment
        return result

    signals = daemon_signals.DaemonSignals()
    assert signals.install()
    try:
        with monkeypatch.context() as patched:
            patched.setattr(daemon_signals.signal, "pthread_sigmask", block_then_handler_raises)
            with pytest.raises(daemon_signals.StopRequested):
                threading.Thread(target=lambda: None).start()
        assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
        signals.restore()
