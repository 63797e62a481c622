"""Shared pytest fixtures."""

from __future__ import annotations

import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.mosquitto import MosquittoNotFound, MosquittoServer
from testkit.nats import NatsNotFound, NatsServer
from testkit.pg import PostgresNotFound, PostgresServer


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL for the whole session, started on first use (see testkit/pg.py)."""
    try:
        server = PostgresServer()
    except PostgresNotFound as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def pg_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """DSN of a fresh, empty database on the session server, dropped after the test."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    if not postgres_server.running:  # a previous test stopped it and failed before restarting
        postgres_server.start()
    dsn = postgres_server.create_database(name)
    yield dsn
    if postgres_server.running:
        postgres_server.drop_database(name)


@pytest.fixture
def mosquitto() -> Iterator[MosquittoServer]:
    """A real Mosquitto on a free port for one test (tests may stop and start it)."""
    try:
        server = MosquittoServer()
    except MosquittoNotFound as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    """A real nats-server with JetStream on a free port for one test (tests may kill it)."""
    try:
        server = NatsServer()
    except NatsNotFound as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run main() in this process, in ``tmp_path``, with the signal handlers and the thread hook it
    installs undone after."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    hook = threading.excepthook
    monkeypatch.chdir(tmp_path)
    for name in ("PG_CONN_STR", "SQLITE_PATH", "DATA_DIR", "METRICS_PORT", "MQTT_HOST", "MARKETFEED_BROKER"):
        monkeypatch.delenv(name, raising=False)
    yield tmp_path
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    threading.excepthook = hook
