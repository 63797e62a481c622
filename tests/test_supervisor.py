"""No thread dies unnoticed: an exception that ends any of the daemon's threads is logged once with
its traceback, turns health to ``failed`` and makes the daemon stop and exit 1 for systemd to restart."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from brokers.sim.client import SimBroker
from candles.aggregator import CandleAggregator
from cli.app import main
from storage.sqlite import SQLiteStore
from testkit.waiting import free_port, wait_until


def _fail_after(calls: int, exc: Exception):  # noqa: ANN202
    """A replacement that behaves like ``original`` ``calls`` times, then raises ``exc``."""
    count = [0]

    def wrap(original):  # noqa: ANN001, ANN202
        def replacement(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            count[0] += 1
            if count[0] > calls:
                raise exc
            return original(*args, **kwargs)

        return replacement

    return wrap


def _run_daemon(args: list[str]) -> tuple[int, float]:
    started = time.monotonic()
    code = main(["--broker", "sim", "--symbols", "NSE:INFY", "NSE:TCS", "--sim-speed", "60", *args])
    return code, time.monotonic() - started


@pytest.mark.parametrize(
    ("thread", "target", "method"),
    [
        ("sim-feed", SimBroker, "due_ticks"),  # a broker's feed thread
        ("pipeline", CandleAggregator, "advance"),  # the pipeline thread (it catches, and fails the daemon)
        ("writer", SQLiteStore, "upsert"),  # the store writer: an exception that is not a StoreError
    ],
)
def test_a_thread_that_dies_fails_the_daemon_with_exit_1_and_one_traceback(in_process, monkeypatch, capfd, thread, target, method):
    monkeypatch.setattr(target, method, _fail_after(1, RuntimeError("injected fault"))(getattr(target, method)))

    code, took = _run_daemon(["--duration", "60"])

    err = capfd.readouterr().err
    assert code == 1
    assert took < 30, "the daemon went on after the thread died"
    assert err.count("RuntimeError: injected fault\n") == 1, err  # one traceback, in the log
    assert "Exception in thread" not in err  # not Python's bare report on stderr
    assert f"thread {thread} died (RuntimeError: injected fault)" in err
    assert "exiting with status 1 after a failure" in err


def test_healthz_says_failed_and_names_the_thread_while_the_daemon_stops(in_process, monkeypatch):
    port = free_port()
    release = threading.Event()
    seen: list[tuple[int, dict]] = []
    scraped: list[str] = []

    original_stop = SimBroker.disconnect

    def slow_disconnect(self: SimBroker) -> None:  # hold the stop until /healthz has been read
        release.wait(10)
        original_stop(self)

    monkeypatch.setattr(SimBroker, "disconnect", slow_disconnect)
    monkeypatch.setattr(SimBroker, "due_ticks", _fail_after(2, RuntimeError("injected fault"))(SimBroker.due_ticks))

    def scrape() -> None:
        def failed() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    seen.append((r.status, json.loads(r.read())))
            except urllib.error.HTTPError as exc:
                seen.append((exc.code, json.loads(exc.read())))
            except OSError:
                return False
            if seen[-1][1].get("state") != "failed":
                return False
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
                scraped.append(r.read().decode())
            return True

        try:
            wait_until(failed, 20, "/healthz to say failed")
        finally:
            release.set()

    scraper = threading.Thread(target=scrape)
    scraper.start()
    code, _ = _run_daemon(["--duration", "60", "--metrics-port", str(port)])
    scraper.join()

    assert code == 1
    status, body = seen[-1]
    assert status == 503
    assert body["state"] == "failed"
    assert any("thread sim-feed died" in p for p in body["problems"]), body
    assert 'marketfeed_state{state="failed"} 1.0' in scraped[-1], scraped[-1]


def test_a_batch_the_service_cannot_take_fails_the_daemon_once_instead_of_being_lost(tmp_path, monkeypatch, caplog):
    """Kite's and Kotak's connections catch what the tick callback raises and go on reading (one
    bad batch must not kill the feed); so the service itself must not let a batch vanish."""
    from brokers.sim.client import SimClock
    from candles.model import parse_intervals
    from core.ticks import Instrument
    from pipeline.journal import TickJournal
    from pipeline.service import Service
    from storage.spool import Spool

    start = 1_795_491_900.0  # 2026-11-24 09:15 IST
    broker = SimBroker(SimClock(start, 1.0), seed=1)
    instruments = [Instrument("NSE", "INFY")]
    broker.subscribe(instruments)
    store = SQLiteStore(tmp_path / "candles.db")
    store.migrate()
    journal = TickJournal(tmp_path / "journal")
    spool = Spool(tmp_path / "spool")
    service = Service(broker, store, instruments, parse_intervals("1m"), clock=broker.clock, spool=spool, journal=journal)
    monkeypatch.setattr(journal, "append", _fail_after(0, RuntimeError("injected fault"))(journal.append))
    try:
        for second in (5, 10):
            service._on_ticks(broker.due_ticks(start + second))  # as a feed connection calls it: no exception
        assert service.failure == "the feed's ticks could not be taken (RuntimeError: injected fault)"
        assert service.health().state == "failed"
        assert caplog.text.count("RuntimeError: injected fault\n") == 1, caplog.text  # one traceback
    finally:
        journal.close()
        spool.close()
        store.close()
