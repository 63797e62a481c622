"""systemd integration: the notify protocol on real AF_UNIX datagram sockets, the watchdog thread,
the pipeline liveness check, and the daemon as a process under a pretend systemd."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from brokers.sim.client import SimBroker, SimClock
from candles.model import parse_intervals
from core.ticks import Instrument
from ops import systemd
from pipeline.service import Service
from storage.spool import Spool
from storage.sqlite import SQLiteStore
from testkit.cli import main_env, start_main
from testkit.waiting import wait_until


def _bound_socket(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(10.0)
    return sock


@pytest.fixture
def notify_socket(monkeypatch) -> Iterator[socket.socket]:
    """A datagram socket on a path, named by NOTIFY_SOCKET, as systemd provides it."""
    folder = tempfile.mkdtemp(prefix="sd-")  # short: a socket path must fit in 108 bytes
    path = os.path.join(folder, "notify")
    sock = _bound_socket(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    try:
        yield sock
    finally:
        sock.close()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def abstract_notify_socket(monkeypatch) -> Iterator[socket.socket]:
    """A datagram socket in the abstract namespace: NOTIFY_SOCKET=@name."""
    name = f"marketfeed-test-{uuid.uuid4().hex}"
    sock = _bound_socket("\0" + name)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    try:
        yield sock
    finally:
        sock.close()


@pytest.fixture(autouse=True)
def _fresh_environment(monkeypatch) -> None:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(systemd, "_warned", False)


def _pending(sock: socket.socket) -> list[bytes]:
    """Datagrams already waiting on the socket, without blocking."""
    out = []
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        while True:
            try:
                out.append(sock.recv(4096))
            except BlockingIOError:
                return out
    finally:
        sock.settimeout(timeout)




# ---- the protocol ----------------------------------------------------------------------------


def test_ready_stopping_watchdog_and_status_send_exactly_the_protocol_lines(notify_socket):
    assert systemd.ready() is True
    assert notify_socket.recv(4096) == b"READY=1"
    assert systemd.watchdog() is True
    assert notify_socket.recv(4096) == b"WATCHDOG=1"
    assert systemd.status("streaming 3 instruments from sim") is True
    assert notify_socket.recv(4096) == b"STATUS=streaming 3 instruments from sim"
    assert systemd.stopping() is True
    assert notify_socket.recv(4096) == b"STOPPING=1"
    assert _pending(notify_socket) == []


def test_notify_sends_several_assignments_in_one_datagram(notify_socket):
    assert systemd.notify("READY=1\nSTATUS=up") is True
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=up"


def test_abstract_namespace_socket_named_with_at_receives_the_notifications(abstract_notify_socket):
    assert systemd.ready() is True
    assert systemd.watchdog() is True
    assert abstract_notify_socket.recv(4096) == b"READY=1"
    assert abstract_notify_socket.recv(4096) == b"WATCHDOG=1"


def test_status_with_newlines_stays_a_single_assignment(notify_socket):
    systemd.status("store down\nretrying")
    assert notify_socket.recv(4096) == b"STATUS=store down retrying"


def test_status_is_sent_as_utf8(notify_socket):
    systemd.status("NSE:NIFTY 50 → 1m candles")
    assert notify_socket.recv(4096) == "STATUS=NSE:NIFTY 50 → 1m candles".encode()


def test_without_notify_socket_every_call_does_nothing_and_returns_false():
    assert "NOTIFY_SOCKET" not in os.environ
    assert systemd.ready() is False
    assert systemd.stopping() is False
    assert systemd.watchdog() is False
    assert systemd.status("anything") is False
    assert systemd.notify("READY=1") is False


def test_unreachable_notify_socket_returns_false_and_warns_once(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    caplog.set_level(logging.WARNING, logger="ops.systemd")
    assert systemd.ready() is False
    assert systemd.watchdog() is False
    warnings = [r for r in caplog.records if r.name == "ops.systemd"]
    assert len(warnings) == 1, caplog.text
    assert "nobody-listens" in warnings[0].getMessage()


def test_notify_socket_that_is_not_a_path_is_ignored(monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/notify")
    assert systemd.ready() is False


# ---- the watchdog period -------------------------------------------------------------------


def test_watchdog_interval_is_half_the_watchdog_period_in_seconds(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert systemd.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    assert systemd.watchdog_interval() == 0.2


def test_watchdog_interval_is_none_without_watchdog_usec():
    assert systemd.watchdog_interval() is None


def test_watchdog_interval_applies_when_watchdog_pid_is_this_process(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 15.0


def test_watchdog_interval_is_none_when_watchdog_pid_is_another_process(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert systemd.watchdog_interval() is None


@pytest.mark.parametrize("usec", ["0", "-5", "soon", ""])
def test_watchdog_interval_is_none_for_a_zero_or_malformed_period(monkeypatch, usec):
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    assert systemd.watchdog_interval() is None


# ---- the watchdog thread -------------------------------------------------------------------


class ScriptedCheck:
    """A liveness check answering from a script (then repeating its last answer), counting calls."""

    def __init__(self, *answers: bool | Exception) -> None:
        self.answers = list(answers)
        self.calls = 0

    def __call__(self) -> bool:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_watchdog_thread_pets_systemd_while_the_check_passes(notify_socket, caplog):
    check = ScriptedCheck(True)
    dog = systemd.Watchdog(check, 0.05)
    dog.start()
    try:
        received = [notify_socket.recv(4096) for _ in range(3)]
    finally:
        dog.stop()
    assert received == [b"WATCHDOG=1"] * 3
    assert dog.join(5)
    assert not dog.failed
    assert "no progress" not in caplog.text


def test_watchdog_thread_stops_petting_for_good_once_the_check_fails(notify_socket, caplog):
    caplog.set_level(logging.ERROR, logger="ops.systemd")
    check = ScriptedCheck(True, True, True, False, True)  # recovers later: petting stays off
    dog = systemd.Watchdog(check, 0.05)
    dog.start()
    assert dog.join(10), "the watchdog thread should end after a failed check"
    assert dog.failed
    assert check.calls == 4  # never asked again after the failure
    assert dog.pets == 3
    assert _pending(notify_socket) == [b"WATCHDOG=1"] * 3
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "no progress" in errors[0].getMessage()


def test_watchdog_thread_never_pets_when_the_first_check_fails(notify_socket):
    dog = systemd.Watchdog(ScriptedCheck(False), 0.05)
    dog.start()
    assert dog.join(10)
    assert dog.failed and dog.pets == 0
    assert _pending(notify_socket) == []


def test_liveness_check_that_raises_counts_as_a_failure(notify_socket, caplog):
    check = ScriptedCheck(True, RuntimeError("pipeline state unreadable"))
    dog = systemd.Watchdog(check, 0.05)
    dog.start()
    assert dog.join(10)
    assert dog.failed
    assert _pending(notify_socket) == [b"WATCHDOG=1"]
    assert "pipeline state unreadable" in caplog.text


def test_stopped_watchdog_ends_without_reporting_a_failure(caplog):
    pets = []
    dog = systemd.Watchdog(ScriptedCheck(True), 0.05, pet=lambda: pets.append(1) or True)
    dog.start()
    wait_until(lambda: len(pets) >= 1, 10.0, "a first pet")
    dog.stop()
    assert dog.join(5)
    assert not dog.failed
    assert "no progress" not in caplog.text


def test_watchdog_rejects_a_non_positive_interval():
    with pytest.raises(ValueError, match="positive"):
        systemd.Watchdog(lambda: True, 0)


# ---- the pipeline liveness check -----------------------------------------------------------


@pytest.fixture
def sim_service(tmp_path) -> Iterator[Service]:
    store = SQLiteStore(tmp_path / "candles.db")
    store.migrate()
    clock = SimClock(1_795_491_900.0, 60.0)
    broker = SimBroker(clock, seed=1)
    spool = Spool(tmp_path / "spool")
    service = Service(broker, store, [Instrument("NSE", "INFY")], parse_intervals("1m"), clock=clock, spool=spool)
    try:
        yield service
    finally:
        service.stop()
        store.close()


def test_pipeline_alive_only_while_the_pipeline_thread_runs(sim_service):
    assert not sim_service.pipeline_alive(max_age=60.0), "not started yet"
    sim_service.start()
    wait_until(lambda: sim_service.pipeline_alive(max_age=60.0), 10.0, "the pipeline's first loop")
    sim_service.stop()
    assert not sim_service.pipeline_alive(max_age=60.0), "stopped"


def test_pipeline_stuck_inside_a_loop_is_not_alive(sim_service):
    release = threading.Event()
    sim_service.start()
    wait_until(lambda: sim_service.pipeline_alive(max_age=60.0), 10.0, "the pipeline's first loop")
    advance = sim_service.aggregator.advance
    sim_service.aggregator.advance = lambda: release.wait() and advance()  # the next loop hangs here
    try:
        wait_until(lambda: not sim_service.pipeline_alive(max_age=0.3), 10.0, "the stuck pipeline noticed")
        assert sim_service._pipeline.is_alive(), "stuck, not dead: only the loop's age tells"
    finally:
        release.set()
    wait_until(lambda: sim_service.pipeline_alive(max_age=60.0), 10.0, "the pipeline looping again")


def test_watchdog_on_the_service_stops_petting_when_the_pipeline_hangs(sim_service, notify_socket):
    release = threading.Event()
    sim_service.start()
    dog = systemd.Watchdog(lambda: sim_service.pipeline_alive(max_age=0.3), 0.05)
    dog.start()
    try:
        received = [notify_socket.recv(4096)]  # healthy: petting
        advance = sim_service.aggregator.advance
        sim_service.aggregator.advance = lambda: release.wait() and advance()
        assert dog.join(10), "the watchdog should give up on a hung pipeline"
    finally:
        release.set()
        dog.stop()
    assert dog.failed
    received += _pending(notify_socket)
    assert received == [b"WATCHDOG=1"] * dog.pets, "only the pings from before the hang"


# ---- the daemon under a pretend systemd -------------------------------------------------------


@pytest.mark.slow
def test_daemon_reports_ready_pets_the_watchdog_and_reports_stopping_on_sigterm(notify_socket, tmp_path):
    env = main_env(NOTIFY_SOCKET=os.environ["NOTIFY_SOCKET"], WATCHDOG_USEC="400000")  # pets every 0.2 s
    proc = start_main("--broker", "sim", "--symbols", "NSE:INFY", "--sim-speed", "30", cwd=tmp_path, env=env)
    try:
        messages = [notify_socket.recv(4096)]
        while b"WATCHDOG=1" not in messages:
            messages.append(notify_socket.recv(4096))
        proc.send_signal(signal.SIGTERM)
        while b"STOPPING=1" not in messages:
            messages.append(notify_socket.recv(4096))
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    messages += _pending(notify_socket)
    assert messages[0] == b"READY=1", messages
    assert any(m.startswith(b"STATUS=streaming 1 instrument from sim") for m in messages), messages
    stopping = messages.index(b"STOPPING=1")
    assert b"WATCHDOG=1" in messages[1:stopping]
    assert b"WATCHDOG=1" not in messages[stopping:], "no watchdog pings after STOPPING=1"
    assert "Traceback" not in err


@pytest.mark.slow
def test_daemon_outside_systemd_runs_without_notifications(tmp_path):
    assert "NOTIFY_SOCKET" not in os.environ
    proc = start_main("--broker", "sim", "--symbols", "NSE:INFY", "--duration", "1", cwd=tmp_path, env=main_env())
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "systemd" not in err
    assert Path(tmp_path, "data", "marketfeed.db").is_file()
