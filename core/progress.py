"""Progress of long start-up work: a bar on a terminal (tqdm), a log line every few seconds otherwise.

``with progress("loading the scrip master", total=n, unit="rows") as bar: bar.update(k)``; work that
cannot count its units (one blocking call, such as pykiteconnect's ``instruments()``) is shown by
the seconds it has taken: ``with elapsed("downloading the Kite instruments dump"): ...``. Nothing
is shown for work that ends within ``quiet`` seconds, so the common short case stays silent; under
systemd (stderr not a terminal) the journal gets one line every ``every`` seconds.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from tqdm import tqdm

log = logging.getLogger("marketfeed")

#: seconds of work before anything is shown
QUIET_S = 1.0
#: seconds between log lines (no terminal) or bar redraws (terminal)
LOG_EVERY_S = 5.0
BAR_EVERY_S = 0.2


class Progress:
    """Counts done units; shows them now and then. Not thread-safe: one caller updates it."""

    def __init__(
        self,
        what: str,
        total: int | None,
        unit: str,
        *,
        stream: TextIO | None = None,
        quiet: float = QUIET_S,
        every: float | None = None,
    ) -> None:
        self.what = what
        self.total = total
        self.unit = unit
        self.done = 0
        stream = stream if stream is not None else sys.stderr
        self._bar: tqdm | None = None
        if _is_terminal(stream):
            self._bar = tqdm(
                total=total, desc=what, unit=unit, unit_scale=unit == "bytes", file=stream, delay=quiet,
                mininterval=every if every is not None else BAR_EVERY_S, dynamic_ncols=True,
            )  # fmt: skip
        self._every = every if every is not None else LOG_EVERY_S
        self._started = time.monotonic()
        self._next = self._started + quiet
        self._logged = False

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self._every
            self._logged = True
            log.info("%s: %s so far (%.0f s)", self.what, self._count(), now - self._started)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._logged:
            log.info("%s: done, %s in %.1f s", self.what, self._count(), time.monotonic() - self._started)

    def _count(self) -> str:
        if self.total:
            return f"{self.done:,}/{self.total:,} {self.unit}"
        return f"{self.done:,} {self.unit}"


@contextmanager
def progress(what: str, total: int | None = None, unit: str = "items", **kwargs: object) -> Iterator[Progress]:
    """A ``Progress`` closed on the way out (its last line shown only if any was)."""
    bar = Progress(what, total, unit, **kwargs)  # type: ignore[arg-type]
    try:
        yield bar
    finally:
        bar.close()


@contextmanager
def elapsed(what: str, *, stream: TextIO | None = None, quiet: float = QUIET_S, every: float | None = None) -> Iterator[None]:
    """Work that cannot count its units: a thread shows the seconds it has taken (a log line every
    ``every`` seconds, or a bar with the time on a terminal) until the block ends."""
    stream = stream if stream is not None else sys.stderr
    every = every if every is not None else (BAR_EVERY_S if _is_terminal(stream) else LOG_EVERY_S)
    done = threading.Event()
    shown: list[tqdm | bool] = []
    started = time.monotonic()

    def tick() -> None:
        if done.wait(quiet):
            return
        if _is_terminal(stream):
            bar = tqdm(desc=what, bar_format="{desc}: {elapsed}", file=stream, mininterval=0, dynamic_ncols=True)
            shown.append(bar)
            while not done.wait(every):
                bar.refresh()
            return
        shown.append(True)
        while True:
            log.info("%s: %.0f s so far", what, time.monotonic() - started)
            if done.wait(every):
                return

    ticker = threading.Thread(target=tick, name="progress", daemon=True)
    ticker.start()
    try:
        yield
    finally:
        done.set()
        ticker.join()
        for bar in shown:
            if isinstance(bar, tqdm):
                bar.close()
            else:
                log.info("%s: done in %.1f s", what, time.monotonic() - started)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
