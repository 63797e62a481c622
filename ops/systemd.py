"""systemd's notify protocol (readiness, stopping, status, watchdog) and a watchdog thread that
pets only while the daemon makes progress.

The protocol is one datagram of newline-separated ``VAR=value`` lines sent to the AF_UNIX socket
named by $NOTIFY_SOCKET; a leading ``@`` names a socket in the abstract namespace. Outside systemd
the variable is unset and every call here does nothing, so the daemon runs the same from a
terminal. See sd_notify(3) and systemd.service(5) (Type=notify, WatchdogSec=).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

_SEND_TIMEOUT = 1.0  # seconds; a wedged notify socket must not hang shutdown
_warned = False


def notify(state: str) -> bool:
    """Send ``state`` (``"READY=1"``; several assignments separated by newlines) to systemd.

    True when the datagram was sent; False when $NOTIFY_SOCKET is unset (not under systemd) or
    the socket refused it. A failure is logged once, not at every watchdog interval.
    """
    name = os.environ.get("NOTIFY_SOCKET")
    if not name:
        return False
    if name.startswith("@"):
        address = "\0" + name[1:]
    elif name.startswith("/"):
        address = name
    else:
        _warn_once("NOTIFY_SOCKET=%r is not an AF_UNIX socket path: systemd notifications are off", name)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(_SEND_TIMEOUT)
            sock.sendto(state.encode("utf-8"), address)
    except OSError as exc:
        _warn_once("cannot notify systemd through NOTIFY_SOCKET=%s: %s", name, exc)
        return False
    return True


def ready() -> bool:
    """Tell systemd start-up is complete (Type=notify: the unit becomes active now)."""
    return notify("READY=1")


def stopping() -> bool:
    """Tell systemd the daemon is shutting down (it stops expecting watchdog pings)."""
    return notify("STOPPING=1")


def watchdog() -> bool:
    """Pet systemd's watchdog: the daemon is alive (WatchdogSec= restarts it when this stops)."""
    return notify("WATCHDOG=1")


def status(text: str) -> bool:
    """One line shown by ``systemctl status``."""
    # a newline would start a new assignment in the datagram
    return notify("STATUS=" + " ".join(text.splitlines()))


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings: half of WatchdogSec= (systemd's recommendation), or None
    when the watchdog is off or meant for another process ($WATCHDOG_PID)."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            log.warning("WATCHDOG_PID=%r is not a process id: systemd watchdog ignored", pid)
            return None
    try:
        period = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not a number of microseconds: systemd watchdog ignored", usec)
        return None
    if period <= 0:
        return None
    return period / 2_000_000


class Watchdog:
    """Pets systemd's watchdog every ``interval`` seconds while ``alive()`` returns True.

    ``alive`` says whether the daemon made progress recently (``Service.pipeline_alive``). The
    first failed check (False, or an exception) ends the petting for good and is logged once:
    systemd then kills the daemon when WatchdogSec= runs out and Restart= starts a fresh one. A
    daemon that has been stuck once is not trusted to vouch for itself again.
    """

    def __init__(
        self,
        alive: Callable[[], bool],
        interval: float,
        *,
        pet: Callable[[], bool] = watchdog,
        what: str = "the pipeline thread",
    ) -> None:
        if interval <= 0:
            raise ValueError(f"the watchdog interval must be positive, got {interval}")
        self.interval = interval
        self.what = what
        self.failed = False  # the check failed: petting has stopped for good
        self.pets = 0
        self._alive = alive
        self._pet = pet
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="systemd-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop petting (at shutdown, before the pipeline ends on purpose)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end (after stop() or a failed check); True when it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        # The first check comes one interval after start: systemd's timer starts at READY=1, so
        # there is a whole period left, and the pipeline has had time to loop.
        while not self._stop.wait(self.interval):
            try:
                ok = bool(self._alive())
            except Exception:  # noqa: BLE001 - a broken check must stop the petting, not the daemon
                log.exception("watchdog: the liveness check of %s raised", self.what)
                ok = False
            if self._stop.is_set():
                return
            if not ok:
                self.failed = True
                log.error(
                    "watchdog: %s made no progress recently; no longer petting systemd's watchdog, "
                    "so systemd will stop and restart the daemon",
                    self.what,
                )
                return
            self._pet()
            self.pets += 1


def _warn_once(message: str, *args: object) -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning(message, *args)
