"""At most a few Kotak login attempts a minute, in this process and across restarts.

Kotak counts failed logins against the account, and a daemon that systemd restarts every few
seconds (the login server answering 5xx, say) would log in again at each start. The times of the
recent attempts are kept in a small file in DATA_DIR; before an attempt, ``LoginLimit.acquire``
waits (interruptibly, saying why and until when) while the last minute already holds the maximum.
A file that cannot be read or written costs the memory across restarts only, never the login.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from core.ist import IST

log = logging.getLogger(__name__)

WINDOW_S = 60.0
MAX_ATTEMPTS = 3
FILE_NAME = "kotak-login-attempts.json"


class Interrupted(Exception):
    """The wait for a login slot was cut short (the feed is stopping)."""


def wait_needed(attempts: list[float], now: float, max_attempts: int, window: float = WINDOW_S) -> float:
    """Seconds to wait before the next attempt, given the times of the earlier ones (0: none)."""
    recent = sorted(t for t in attempts if now - window < t <= now)
    if len(recent) < max_attempts:
        return 0.0
    return recent[-max_attempts] + window - now


class LoginLimit:
    """The times of the recent login attempts, in memory and (with ``path``) in a file."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        max_attempts: int = MAX_ATTEMPTS,
        window: float = WINDOW_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts {max_attempts} must be at least 1")
        self.path = Path(path) if path is not None else None
        self.max_attempts = max_attempts
        self.window = window
        self.clock = clock
        #: set to cut a wait short (the feed is stopping); cleared by whoever set it
        self.interrupt = threading.Event()
        self._attempts: list[float] = []
        self._file_warned = False

    def acquire(self) -> None:
        """Wait until an attempt is allowed, then record it. Raises ``Interrupted``."""
        while True:
            now = self.clock()
            attempts = self._load(now)
            delay = wait_needed(attempts, now, self.max_attempts, self.window)
            if delay <= 0:
                break
            until = datetime.fromtimestamp(now + delay, IST).strftime("%H:%M:%S")
            log.warning(
                "kotak: %d login attempts in the last %.0f s; waiting %.0f s, until %s IST, before the next "
                "(Kotak counts failed attempts against the account)", len(attempts), self.window, delay, until,
                extra={"event": "login_throttled", "until": until},
            )  # fmt: skip
            if self.interrupt.wait(delay):
                raise Interrupted("stopped while waiting to log in")
        self._attempts = [*attempts, now]
        self._save()

    def _load(self, now: float) -> list[float]:
        """The attempts of the window: the file's (it holds this process's too), else the memory's."""
        times = self._attempts
        if self.path is not None:
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                times = [float(t) for t in data.get("attempts", []) if isinstance(t, int | float)]
            except FileNotFoundError:
                pass
            except (OSError, ValueError, AttributeError, TypeError) as exc:
                self._warn(f"cannot read {self.path} ({type(exc).__name__})")
        return sorted(t for t in times if now - self.window < t <= now)

    def _save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"attempts": self._attempts}), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            self._warn(f"cannot write {self.path} ({exc.strerror or type(exc).__name__})")

    def _warn(self, what: str) -> None:
        if not self._file_warned:
            self._file_warned = True
            log.warning("kotak: %s: login attempts are limited within this process only", what)
