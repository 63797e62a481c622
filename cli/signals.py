"""The daemon's signals, from the first line of ``run_daemon`` to its last.

SIGTERM and SIGINT stop the daemon in every phase. Before the service streams, the handler raises
``StopRequested`` in the main thread (Python runs handlers there between bytecodes, and a blocking
socket read it interrupts raises too, PEP 475), so the start-up unwinds through the daemon's
``ExitStack``: what was started is stopped in reverse. ``StopRequested`` is a ``BaseException``, so
the ``except Exception`` of a library (a download, a login) cannot swallow it. Once the service
streams, and while the daemon winds down, the handlers only set flags: the main thread's wait loop
acts on them (``poll``). SIGHUP only sets a flag too: the watchlist is reloaded by that loop.

The handlers take no lock and log nothing: a handler runs on top of whatever the main thread was
doing, which may hold the very lock it would need.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

_STOPS = (signal.SIGTERM, signal.SIGINT)
_HANDLED = (*_STOPS, signal.SIGHUP)
_thread_start = threading.Thread.start


def _start_without_signals(thread: threading.Thread) -> None:
    """``Thread.start`` with the daemon's signals blocked while the thread is made: it inherits
    the mask, so it never takes them. A signal that arrives meanwhile stays pending and reaches
    the main thread as the mask is put back."""
    # A handler that raises (StopRequested) runs between bytecodes, so it may fire right after the
    # blocking call returns, before its result is stored: the mask to put back is worked out first,
    # by a query that changes nothing, and unblocking is in the ``finally``, so no raise can leave
    # the main thread deaf to the signals.
    unblock = set(_HANDLED) - signal.pthread_sigmask(signal.SIG_BLOCK, ())
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)
        _thread_start(thread)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, unblock)


class StopRequested(BaseException):  # noqa: N818 - a request, not an error
    """SIGTERM or SIGINT arrived during start-up: leave, stopping what was started."""

    def __init__(self, signame: str) -> None:
        super().__init__(signame)
        self.signame = signame


class DaemonSignals:
    """Installed with ``install`` (the main thread only), undone with ``restore``.

    ``phase`` says what the start-up is doing, for the log line of a stop that interrupts it.
    """

    def __init__(self) -> None:
        self.phase = "starting"
        self.stop_signal: str | None = None  # the name of the first stop signal received
        self.reload_pending = False
        self._mode = "starting"  # "starting": raise; "running" / "closing": set flags only
        self._previous: dict[int, Any] = {}

    def install(self) -> bool:
        """Take over SIGTERM, SIGINT and SIGHUP; False (nothing done) off the main thread.

        Threads started from now on start with these signals blocked (``Thread.start`` is
        wrapped until ``restore``), so the kernel delivers them to the main thread: a signal that
        lands on another thread runs its handler only when the main thread next runs Python code,
        and would not interrupt a blocking call there (a download, a sleep, a lock wait)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        for sig in _HANDLED:
            self._previous[sig] = signal.getsignal(sig)
        for sig in _STOPS:
            signal.signal(sig, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        threading.Thread.start = _start_without_signals  # type: ignore[method-assign]
        return True

    def restore(self) -> None:
        threading.Thread.start = _thread_start  # type: ignore[method-assign]
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def enter(self, phase: str) -> None:
        """The start-up moves on to ``phase`` (words that follow "while")."""
        self.phase = phase

    def running(self) -> None:
        """The service streams: from now on a stop signal is a flag the wait loop reads. A signal
        that arrived in between raises here."""
        self._mode = "running"
        self.phase = "streaming"

    def closing(self) -> None:
        """The daemon winds down: stop signals no longer interrupt anything."""
        self._mode = "closing"

    @contextmanager
    def interruptible(self, phase: str) -> Iterator[None]:
        """While streaming, make the work of the block (a watchlist reload: a scrip master
        download) stop at SIGTERM/SIGINT as the start-up does, raising ``StopRequested``."""
        saved = self._mode, self.phase
        self._mode, self.phase = "starting", phase
        try:
            if self.stop_signal is not None:
                raise StopRequested(self.stop_signal)
            yield
        finally:
            self._mode, self.phase = saved

    def take_reload(self) -> bool:
        """Whether a SIGHUP arrived since the last call."""
        if self.reload_pending:
            self.reload_pending = False
            return True
        return False

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        if self.stop_signal is not None:
            return
        self.stop_signal = signal.Signals(signum).name
        if self._mode == "starting":
            raise StopRequested(self.stop_signal)

    def _on_hup(self, _signum: int, _frame: FrameType | None) -> None:
        self.reload_pending = True
