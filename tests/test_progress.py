"""Long start-up work shows progress: a bar on a terminal, a log line now and then otherwise."""

from __future__ import annotations

import io
import logging
import time

from core.progress import elapsed, progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_without_a_terminal_long_work_logs_its_count_now_and_then_and_when_done(caplog):
    caplog.set_level(logging.INFO, logger="marketfeed")
    stream = io.StringIO()
    with progress("preparing the simulated streams", 300, "symbols", stream=stream, quiet=0.05, every=0.05) as bar:
        for _ in range(3):
            time.sleep(0.06)
            bar.update(100)
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("preparing the simulated streams: 100/300 symbols so far") for line in lines), lines
    assert lines[-1].startswith("preparing the simulated streams: done, 300/300 symbols in "), lines
    assert stream.getvalue() == ""  # no bar drawn into a log


def test_short_work_says_nothing(caplog):
    caplog.set_level(logging.INFO, logger="marketfeed")
    terminal = _Terminal()
    with progress("quick", 10, "rows", stream=io.StringIO()) as bar:
        bar.update(10)
    with progress("quick", 10, "rows", stream=terminal) as bar:
        bar.update(10)
    assert caplog.records == []
    assert terminal.getvalue() == ""


def test_on_a_terminal_long_work_draws_a_bar(caplog):
    caplog.set_level(logging.INFO, logger="marketfeed")
    terminal = _Terminal()
    with progress("downloading the Kotak nse_cm scrip master", 2_000_000, "bytes", stream=terminal, quiet=0.0, every=0.0) as bar:
        for _ in range(4):
            bar.update(500_000)
    drawn = terminal.getvalue()
    assert "downloading the Kotak nse_cm scrip master" in drawn
    assert "100%" in drawn and "2.00M/2.00M" in drawn, drawn
    assert caplog.records == []  # the bar, not log lines


def test_work_that_cannot_count_logs_its_seconds_now_and_then_and_when_done(caplog):
    caplog.set_level(logging.INFO, logger="marketfeed")
    with elapsed("downloading the Kite instruments dump", stream=io.StringIO(), quiet=0.05, every=0.1):
        time.sleep(0.3)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "downloading the Kite instruments dump: 0 s so far", lines
    assert 2 <= len(lines) - 1 <= 4, lines  # a line every 0.1 s
    assert lines[-1].startswith("downloading the Kite instruments dump: done in 0."), lines


def test_work_that_cannot_count_and_ends_quickly_says_nothing_and_draws_its_time_on_a_terminal(caplog):
    caplog.set_level(logging.INFO, logger="marketfeed")
    with elapsed("quick", stream=io.StringIO()):
        pass
    assert caplog.records == []
    terminal = _Terminal()
    with elapsed("downloading the Kite instruments dump", stream=terminal, quiet=0.0, every=0.05):
        time.sleep(0.2)
    assert "downloading the Kite instruments dump: 00:00" in terminal.getvalue(), terminal.getvalue()
    assert caplog.records == []  # the bar, not log lines
