"""A real, throwaway Mosquitto broker for integration tests.

``MosquittoServer`` writes a config into a temporary directory and runs ``mosquitto`` on a free
port on 127.0.0.1 with anonymous access and no persistence; it can be stopped and started again
on the same port (tests that take the broker away).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from testkit.waiting import free_port

INSTALL_HINT = (
    "mosquitto was not found on PATH or in /usr/sbin: install it, e.g. 'sudo apt-get install -y mosquitto' on Debian/Ubuntu"
)


class MosquittoNotFound(RuntimeError):
    """The broker binary is not installed; the message says how to install it."""


def find_mosquitto() -> str:
    candidates = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
    found = shutil.which("mosquitto") or next((p for p in candidates if os.access(p, os.X_OK)), None)
    if not found:
        raise MosquittoNotFound(INSTALL_HINT)
    return found



def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` listens on 127.0.0.1:``port``; not merely whether something does, which
    a server of another test on a port it took first would answer. Without /proc: whether something does."""
    try:
        with open("/proc/net/tcp") as table:
            inodes = {
                f"socket:[{fields[9]}]"
                for fields in (line.split() for line in list(table)[1:])
                if fields[3] == "0A" and fields[1].endswith(f":{port:04X}")  # LISTEN on the port
            }
        fds = list(Path(f"/proc/{pid}/fd").iterdir()) if inodes else []
    except OSError:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False
    for fd in fds:
        with contextlib.suppress(OSError):  # closed meanwhile
            if os.readlink(fd) in inodes:
                return True
    return False


class _PortTaken(RuntimeError):
    """Another process bound the port first."""


class MosquittoServer:
    def __init__(self, port: int | None = None) -> None:
        self.binary = find_mosquitto()
        # a port of our choosing may be taken by someone else before mosquitto binds it: start() then
        # picks another, unless the server has run on it before (tests that restart it keep its port)
        self._may_move = port is None
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="marketfeed-mosquitto-"))
        self.config = self.dir / "mosquitto.conf"
        self.log = self.dir / "mosquitto.log"
        self._write_config()
        os.chmod(self.dir, 0o777)  # mosquitto may drop privileges to its own user when run as root
        self.proc: subprocess.Popen | None = None

    def _write_config(self) -> None:
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            f"log_dest file {self.log}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
        )
        os.chmod(self.config, 0o644)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        for attempt in range(3):
            try:
                self._start(timeout)
            except _PortTaken:
                if not self._may_move or attempt == 2:
                    raise
                self.port = free_port()
                self._write_config()
                continue
            self._may_move = False
            return

    def _start(self, timeout: float) -> None:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                log = self.log.read_text(errors="replace") if self.log.exists() else ""
                if self.proc.stderr:
                    self.proc.stderr.close()
                kind = _PortTaken if "Address already in use" in err + log else RuntimeError
                raise kind(f"mosquitto exited with {self.proc.returncode} on port {self.port}: {err}{log}")
            if _listens(self.proc.pid, self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within {timeout} s")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stderr:
            proc.stderr.close()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
