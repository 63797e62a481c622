"""The one HTTP port: the read API, the history-then-live stream and its seam, the token.

In this process: the stream's seam under concurrent writes (the real ``Writer`` writing a SQLite
file while clients connect, each client's events checked against every version written), a client
too slow for its buffer. As real daemon processes (the simulator into SQLite): every route's
parameters good and bad, /healthz and /metrics on the new port, the token and the refusal to
start bound beyond loopback without one.
"""

from __future__ import annotations

import http.client
import json
import queue
import random
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from candles.model import Candle
from core.ist import IST
from ops.api import Api
from ops.http import HttpServer, is_loopback, scrubbed
from ops.stream import CandleHub, Stream
from pipeline.writer import Writer
from storage.spool import Spool
from storage.sqlite import SQLiteStore
from testkit.cli import main_env, run_main, start_main
from testkit.waiting import free_port, wait_until

T0 = datetime(2026, 11, 24, 9, 15, tzinfo=IST)
MINUTE = timedelta(minutes=1)


def candle(bucket: datetime, version: int, symbol: str = "INFY", interval: str = "1m") -> Candle:
    """Version ``version`` of a bucket: its close (and volume) say which version it is."""
    close = Decimal("1500.00") + Decimal(version) / 100
    return Candle(
        exchange="NSE", symbol=symbol, interval=interval, bucket=bucket,
        open=Decimal("1500.00"), high=max(close, Decimal("1500.00")), low=Decimal("1499.50"), close=close,
        volume=100 + version, oi=None, tick_count=1 + version, first_tick=bucket + timedelta(seconds=1),
        last_tick=bucket + timedelta(seconds=2), cum_volume=None, final=True,
    )  # fmt: skip


def version_of(data: dict) -> int:
    return int(data["volume"]) - 100


# ---- an SSE client ---------------------------------------------------------------------------


class SseClient:
    """Reads a stream's events on a thread of its own: (event, id, data) tuples into ``events``."""

    def __init__(self, port: int, path: str, headers: dict[str, str] | None = None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.conn.request("GET", path, headers=headers or {})
        self.response = self.conn.getresponse()
        self.events: list[tuple[str, str | None, dict]] = []
        self.comments = 0
        self.done = threading.Event()
        if self.response.status == 200:
            self.thread = threading.Thread(target=self._read, daemon=True)
            self.thread.start()
        else:
            self.body = json.loads(self.response.read())
            self.done.set()

    def _read(self) -> None:
        kind, event_id, data = "message", None, None
        try:
            while True:
                line = self.response.readline()
                if not line:
                    return
                line = line.decode().rstrip("\n")
                if line.startswith(":"):
                    self.comments += 1
                elif line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("id: "):
                    event_id = line[4:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                elif line == "" and data is not None:
                    self.events.append((kind, event_id, data))
                    kind, event_id, data = "message", None, None
        except (OSError, ValueError):
            return
        finally:
            self.done.set()

    def candles(self) -> list[dict]:
        return [d for k, _, d in list(self.events) if k == "candle"]

    def close(self) -> None:
        self.conn.close()


# ---- the seam, in this process ---------------------------------------------------------------


class SlowReader(SQLiteStore):
    """The API's own read connection, slowed before and after each read: writes go on meanwhile.
    Before: versions stored between the subscription and the read are both buffered and in the
    history (sent twice, or an older one after the newer, without the seam's rule). After: a
    stream that read its history before subscribing would miss what is stored meanwhile."""

    delay = 0.2  # the writer stores a batch every 0.2 s (pipeline/writer.py _WRITE_LINGER)

    def window(self, *args: object, **kwargs: object) -> list[Candle]:
        time.sleep(random.uniform(0, self.delay))
        rows = super().window(*args, **kwargs)  # type: ignore[arg-type]
        if random.random() < 0.5:  # the other half goes on at once: what settling is for
            time.sleep(random.uniform(0, self.delay))
        return rows


def slow_publisher(candles: list[Candle]) -> None:
    """A publisher ahead of the hub that takes its time (MQTT's comes first in the daemon): the
    store has the candles well before the hub is handed them, which ``Writer.settle`` covers."""
    time.sleep(random.uniform(0, 0.1))


@pytest.fixture
def writing(tmp_path: Path) -> Iterator[tuple[SQLiteStore, queue.Queue, Writer, CandleHub, HttpServer]]:
    path = tmp_path / "candles.db"
    store = SQLiteStore(path)
    store.migrate()
    reader = SlowReader(path, read_only=True)
    hub = CandleHub()
    candles: queue.Queue = queue.Queue()
    writer = Writer(store, Spool(tmp_path / "spool"), candles, on_stored=[slow_publisher, hub.publish_candles])
    hub.settle = writer.settle
    api = Api(reader, streaming=lambda: [("NSE", "INFY")])
    server = HttpServer(lambda: None, port=0, api=api, hub=hub, heartbeat=0.2)  # type: ignore[arg-type, return-value]
    writer.start()
    server.start()
    try:
        yield store, candles, writer, hub, server
    finally:
        server.stop()
        candles.put(None)
        writer.join(10)
        reader.close()
        store.close()


def test_every_version_written_reaches_every_stream_once_in_order_while_clients_connect(writing) -> None:
    """Versions of 40 buckets (each revised 3 times, some revisions in the same batch) are written
    by the real writer while 20 clients connect at random moments; each client's events, history
    then live, must be for every bucket a suffix of the versions written for it: nothing missing
    after the first, nothing twice, in order, ending with the last."""
    store, candles, _, hub, server = writing
    rng = random.Random(7)
    written: list[tuple[datetime, int]] = []  # (bucket, version), in the order written
    for b in range(40):
        for r in range(4):
            written.append((T0 + b * MINUTE, b * 10 + r))
    clients: list[SseClient] = []

    def connect() -> None:
        clients.append(SseClient(server.port, f"/api/stream?symbol=NSE:INFY&interval=1m&since={T0.isoformat()}"))

    connectors = []
    points = [4, 12, 20, 28, 37, 45, 52, 60, 61, 62, 75, 90, 100, 110, 121, 130, 140, 145, 150, 157]
    i = 0
    while i < len(written):
        n = rng.choice((1, 1, 1, 2, 3))  # sometimes a bucket's versions go in one batch
        candles.put([candle(bkt, v) for bkt, v in written[i : i + n]])
        i += n
        while points and i >= points[0]:
            points.pop(0)
            t = threading.Thread(target=connect)
            t.start()
            connectors.append(t)
        time.sleep(rng.uniform(0, 0.02))
    for t in connectors:
        t.join(10)
    assert len(clients) == 20
    last = written[-1][1]
    for client in clients:
        wait_until(lambda c=client: any(version_of(d) == last for d in c.candles()), 15, "the last version streamed")
    try:
        by_bucket: dict[datetime, list[int]] = {}
        for bkt, v in written:
            by_bucket.setdefault(bkt, []).append(v)
        for n, client in enumerate(clients):
            got: dict[datetime, list[int]] = {}
            for d in client.candles():
                got.setdefault(datetime.fromisoformat(d["bucket"]), []).append(version_of(d))
            assert set(got) == set(by_bucket), f"client {n}: buckets missing"
            for bkt, versions in got.items():
                expected = by_bucket[bkt]
                suffix = expected[expected.index(versions[0]) :]
                assert versions == suffix, f"client {n}, bucket {bkt:%H:%M}: got {versions}, written {expected}"
            kinds = [k for k, _, _ in client.events]
            assert kinds.count("live") == 1
            live = kinds.index("live")
            history = [version_of(d) for k, _, d in client.events[:live]]
            assert history == sorted(history), f"client {n}: the history is in bucket order"
    finally:
        for client in clients:
            client.close()
    assert hub.streams <= 20


def test_a_client_resuming_with_last_event_id_gets_only_what_it_has_not_seen(writing) -> None:
    store, candles, _, _, server = writing
    candles.put([candle(T0 + b * MINUTE, b) for b in range(5)])
    wait_until(lambda: len(store.latest("NSE", "INFY", "1m", 10)) == 5, 10, "5 candles stored")
    first = SseClient(server.port, f"/api/stream?symbol=NSE:INFY&since={T0.isoformat()}")
    wait_until(lambda: len(first.candles()) == 5, 10, "the history")
    last_id = first.events[-2][1]  # the last candle's (the live marker follows it)
    first.close()
    candles.put([candle(T0 + 4 * MINUTE, 44), candle(T0 + 5 * MINUTE, 5)])  # a revision of the newest seen, one new
    wait_until(lambda: len(store.latest("NSE", "INFY", "1m", 10)) == 6, 10, "6 candles stored")
    again = SseClient(server.port, f"/api/stream?symbol=NSE:INFY&since={T0.isoformat()}", {"Last-Event-ID": last_id})
    try:
        wait_until(lambda: any(k == "live" for k, _, _ in again.events), 10, "the resumed history")
        assert [version_of(d) for d in again.candles()] == [44, 5]
        candles.put([candle(T0 + MINUTE, 11)])  # a live revision of a bucket older than where it resumed
        wait_until(lambda: len(again.candles()) == 3, 10, "the revision")
        assert version_of(again.candles()[-1]) == 11
        wait_until(lambda: again.comments >= 1, 5, "a keep-alive comment while nothing is stored")
    finally:
        again.close()
    newest_id = [i for k, i, _ in again.events if k == "candle"][-1]  # names bucket 5 still: the newest sent
    assert newest_id is not None and newest_id.startswith(f"{round((T0 + 5 * MINUTE).timestamp() * 1000)}-")
    unchanged = SseClient(server.port, "/api/stream?symbol=NSE:INFY", {"Last-Event-ID": newest_id})
    try:
        wait_until(lambda: any(k == "live" for k, _, _ in unchanged.events), 10, "the resumed history")
        assert unchanged.candles() == []
    finally:
        unchanged.close()
    bad = SseClient(server.port, "/api/stream?symbol=NSE:INFY", {"Last-Event-ID": "yesterday"})
    assert bad.response.status == 400 and "Last-Event-ID" in bad.body["error"]


def test_a_client_too_slow_for_its_buffer_is_ended_with_a_last_event_and_never_holds_up_the_writer(tmp_path) -> None:
    store = SQLiteStore(tmp_path / "candles.db")
    store.migrate()
    hub = CandleHub(buffer=5)
    stream = Stream(hub, store, ("NSE", "INFY", "1m"), T0)
    try:
        assert [e.split(b"\n")[0] for e in stream.open()] == [b"event: live"]
        started = time.perf_counter()
        hub.publish_candles([candle(T0 + b * MINUTE, b) for b in range(1000)])  # nobody reads meanwhile
        assert time.perf_counter() - started < 0.1
        events = stream.next(0)
        assert stream.ended is not None and "too slowly" in stream.ended
        assert events[-1].startswith(b"event: error\n") and b"too slowly" in events[-1]
        assert hub.too_slow == 1
    finally:
        stream.close()
        store.close()
    assert hub.streams == 0


def test_a_stalled_http_client_gets_the_last_event_before_the_stream_closes(tmp_path) -> None:
    store = SQLiteStore(tmp_path / "candles.db")
    store.migrate()
    hub = CandleHub(buffer=3)
    server = HttpServer(lambda: None, port=0, api=Api(store, streaming=lambda: [("NSE", "INFY")]), hub=hub)  # type: ignore[arg-type, return-value]
    server.start()
    try:
        client = SseClient(server.port, "/api/stream?symbol=NSE:INFY")
        wait_until(lambda: hub.streams == 1, 5, "subscribed")
        hub.publish_candles([candle(T0 + b * MINUTE, b) for b in range(10)])
        assert client.done.wait(5)
        kind, _, data = client.events[-1]
        assert kind == "error" and "too slowly" in data["error"]
    finally:
        server.stop()
        store.close()


def test_helpers_scrub_the_token_and_know_loopback() -> None:
    assert scrubbed("/login?token=s3cret&x=1") == "/login?token=***&x=1"
    assert all(is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "127.0.0.2", "[::1]"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "example.com"))
    assert "s3cret" not in repr(HttpServer(lambda: None, token="s3cretTokenValue1234"))  # type: ignore[arg-type, return-value]


# ---- a real daemon: the simulator into SQLite ------------------------------------------------

SIM_START = "2026-11-24T09:15:00+05:30"
DAY = "2026-11-24"
TOKEN = "plantedHttpToken7Qx2-kd93Lz"


def sim_args(*extra: str) -> list[str]:
    return ["--broker", "sim", "--symbols", "NSE:INFY", "NSE:TCS", "--seed", "3", "--sim-speed", "60",
            "--sim-start", SIM_START, "--intervals", "1m,5m", *extra]  # fmt: skip


def get(port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def get_json(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    status, _, body = get(port, path, headers)
    return status, json.loads(body)


class Daemon:
    def __init__(self, tmp_path: Path, port: int, env: dict[str, str], *extra: str) -> None:
        self.port = port
        self.tmp_path = tmp_path
        self.proc = start_main(*sim_args(*extra), cwd=tmp_path, env=env)
        self.err = ""

    def up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the daemon exited {self.proc.returncode}: {self.proc.communicate()[1]}")
        try:
            return get(self.port, "/healthz")[0] == 200
        except OSError:
            return False

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, self.err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, self.err = self.proc.communicate()
        return self.proc.returncode


@pytest.fixture(scope="module")
def daemon(tmp_path_factory) -> Iterator[Daemon]:
    tmp_path = tmp_path_factory.mktemp("http")
    port = free_port()
    d = Daemon(tmp_path, port, main_env(HTTP_PORT=str(port), LOG_LEVEL="DEBUG"))
    try:
        wait_until(d.up, 30, "the daemon's /healthz")
        for symbol, interval, count in (("NSE:INFY", "1m", 3), ("NSE:INFY", "5m", 1), ("NSE:TCS", "5m", 1)):
            path = f"/api/candles?symbol={symbol}&interval={interval}&from={DAY}"
            wait_until(lambda p=path, n=count: len(get_json(port, p)[1]["candles"]) >= n, 30, f"{symbol} {interval}")
        yield d
    finally:
        assert d.stop() == 0, d.err


@pytest.mark.slow
def test_healthz_and_metrics_answer_on_the_http_port_as_before(daemon: Daemon) -> None:
    status, body = get_json(daemon.port, "/healthz")
    assert status == 200 and body == {"status": "ok", "state": "running", "problems": []}
    status, headers, text = get(daemon.port, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    names = {f.name for f in text_string_to_metric_families(text.decode())}
    assert {"marketfeed_ticks", "marketfeed_candles_written", "marketfeed_state", "marketfeed_connection_up"} <= names
    status, headers, _ = get(daemon.port, "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert status == 200 and headers["Content-Type"].startswith("application/openmetrics-text")


@pytest.mark.slow
def test_candles_of_a_range_in_order_with_exact_prices(daemon: Daemon) -> None:
    status, body = get_json(daemon.port, f"/api/candles?symbol=NSE:INFY&interval=1m&from={DAY}T09:15&to={DAY}T09:18")
    assert status == 200, body
    rows = body["candles"]
    assert [r["bucket"] for r in rows] == [f"{DAY}T09:{m}:00+05:30" for m in (15, 16, 17)][: len(rows)]
    assert len(rows) == 3
    store = SQLiteStore(daemon.tmp_path / "data" / "marketfeed.db", read_only=True)
    try:
        stored = store.between("NSE", "INFY", "1m", datetime(2026, 11, 24, 9, 15, tzinfo=IST),
                               datetime(2026, 11, 24, 9, 18, tzinfo=IST))  # fmt: skip
    finally:
        store.close()
    for row, c in zip(rows, stored, strict=True):
        assert set(row) == {"bucket", "bucket_ms", "open", "high", "low", "close", "volume", "oi", "final", "source"}
        assert (row["open"], row["high"], row["low"], row["close"]) == (str(c.open), str(c.high), str(c.low), str(c.close))
        assert (row["volume"], row["oi"], row["final"], row["source"]) == (c.volume, c.oi, c.final, c.source)
        assert row["bucket_ms"] == round(c.bucket.timestamp() * 1000)
    # the same range written in UTC, as a date range, and the newest 2 of it
    same = get_json(daemon.port, f"/api/candles?symbol=INFY&from={DAY}T03:45:00Z&to={DAY}T03:48:00Z")[1]["candles"]
    assert same == rows
    newest = get_json(daemon.port, f"/api/candles?symbol=NSE:INFY&from={DAY}T09:15&to={DAY}T09:18&limit=2")[1]
    assert newest["candles"] == rows[1:] and newest["more"] is True
    day = get_json(daemon.port, f"/api/candles?symbol=NSE:INFY&from={DAY}&to={DAY}")[1]["candles"]
    assert day[:3] == rows
    five = get_json(daemon.port, f"/api/candles?symbol=NSE:TCS&interval=5m&from={DAY}")[1]["candles"]
    assert all(r["bucket"].endswith(("0:00+05:30", "5:00+05:30")) for r in five)
    # an offset with its + unencoded arrives as a space: still understood
    plus = get_json(daemon.port, f"/api/candles?symbol=NSE:INFY&from={DAY}T09:15:00+05:30&to={DAY}T09:18:00+05:30")
    assert plus[1]["candles"] == rows


@pytest.mark.slow
@pytest.mark.parametrize(
    ("query", "status", "words"),
    [
        ("", 400, "'symbol' is required"),
        ("symbol=", 400, "'symbol' is empty"),
        ("symbol=XX:INFY", 400, "unknown exchange"),
        ("symbol=NSE:INFY&interval=7x", 400, "'interval': unknown interval"),
        ("symbol=NSE:INFY&interval=5M", 400, "ambiguous interval"),
        ("symbol=NSE:INFY&from=yesterday", 400, "'from': 'yesterday' is not an ISO 8601"),
        ("symbol=NSE:INFY&to=2026-13-01", 400, "'to'"),
        (f"symbol=NSE:INFY&from={DAY}T10:00&to={DAY}T09:00", 400, "'to'"),
        ("symbol=NSE:INFY&limit=0", 400, "'limit': '0' is not a whole number from 1 to 10000"),
        ("symbol=NSE:INFY&limit=10001", 400, "'limit'"),
        ("symbol=NSE:INFY&limit=ten", 400, "'limit'"),
        ("symbol=NSE:INFY&symbol=NSE:TCS", 400, "'symbol' is given 2 times"),
        ("symbol=NSE:INFY&sort=desc", 400, "unknown parameter 'sort'"),
        ("symbol=NSE%3AINFY%27%3BDROP%20TABLE%20candles%3B--", 400, "'symbol'"),
        ("symbol=NSE:NOSUCH", 404, "unknown symbol NSE:NOSUCH"),
    ],
)
def test_candles_refuses_a_bad_parameter_naming_it(daemon: Daemon, query: str, status: int, words: str) -> None:
    got, body = get_json(daemon.port, f"/api/candles?{query}")
    assert (got, set(body)) == (status, {"error"}), body
    assert words in body["error"]


@pytest.mark.slow
def test_symbols_gaps_and_status(daemon: Daemon) -> None:
    status, body = get_json(daemon.port, "/api/symbols")
    assert status == 200
    assert {s["symbol"]: (s["intervals"], s["streaming"], s["watchlist"]) for s in body["symbols"]} == {
        "NSE:INFY": (["1m", "5m"], True, True), "NSE:TCS": (["1m", "5m"], True, True),
    }  # fmt: skip
    status, body = get_json(daemon.port, "/api/gaps?date=2026-11-24&symbol=NSE:INFY")
    assert status == 200 and body["date"] == "2026-11-24" and body["symbols"] == ["NSE:INFY"]
    assert all(set(g) == {"symbol", "from", "to", "minutes"} for g in body["gaps"])
    shown = run_main("--show-gaps", "NSE:INFY", "--date", "2026-11-24", cwd=daemon.tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert len(body["gaps"]) == (0 if shown.stdout.startswith("no gaps") else len(shown.stdout.splitlines()))
    for bad_query, words in (("date=24-11-2026", "'date'"), ("symbol=XX:Y", "'symbol'"), ("day=1", "unknown parameter 'day'")):
        got, body = get_json(daemon.port, f"/api/gaps?{bad_query}")
        assert got == 400 and words in body["error"]
    status, body = get_json(daemon.port, "/api/status")
    assert status == 200 and body["state"] == "running" and body["broker"] == "sim"
    assert body["connections"][0]["connected"] is True and body["ticks"] > 0 and body["ticks_per_s"] > 0
    assert {"spool_depth", "gaps_open", "ha_role", "candles_written"} <= set(body)
    assert get_json(daemon.port, "/api/status?x=1")[0] == 400


@pytest.mark.slow
def test_unknown_routes_and_wrong_methods(daemon: Daemon) -> None:
    status, body = get_json(daemon.port, "/api/nothing")
    assert status == 404 and "/api/candles" in body["error"]
    status, headers, text = get(daemon.port, "/api/candles?symbol=NSE:INFY", method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD" and "POST is not allowed" in json.loads(text)["error"]
    assert get(daemon.port, "/healthz", method="DELETE")[0] == 405
    assert get(daemon.port, "/login?token=x")[0] == 404  # no token: no login


@pytest.mark.slow
def test_the_page_and_its_files_are_served_with_a_strict_content_policy(daemon: Daemon) -> None:
    status, headers, html = get(daemon.port, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert b'src="/static/page.js"' in html and b'id="chart"' in html
    status, headers, script = get(daemon.port, "/static/page.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert b"new EventSource" in script and b"/api/status" in script
    assert get(daemon.port, "/static/page.css")[0] == 200
    assert get(daemon.port, "/static/../http.py")[0] == 404


@pytest.mark.slow
def test_the_stream_sends_the_history_then_each_candle_as_it_is_stored(daemon: Daemon) -> None:
    client = SseClient(daemon.port, f"/api/stream?symbol=NSE:INFY&interval=1m&since={DAY}T09:15")
    try:
        wait_until(lambda: any(k == "live" for k, _, _ in client.events), 10, "the history")
        history = len(client.candles())
        wait_until(lambda: len(client.candles()) >= history + 2, 15, "2 live candles")
        buckets = [d["bucket"] for d in client.candles()]
        assert buckets[0] == f"{DAY}T09:15:00+05:30"
        assert buckets == sorted(buckets) and len(set(buckets)) == len(buckets)  # a simulator never revises
        assert all(i is not None for k, i, _ in client.events if k == "candle")
    finally:
        client.close()
    for query, status in (("symbol=NSE:NOSUCH", 404), ("symbol=NSE:INFY&since=soon", 400), ("symbol=NSE:INFY&x=1", 400)):
        bad = SseClient(daemon.port, f"/api/stream?{query}")
        assert bad.response.status == status and "error" in bad.body


@pytest.mark.slow
def test_with_a_token_every_route_but_healthz_needs_it_and_it_is_never_logged(tmp_path) -> None:
    port = free_port()
    env = main_env(HTTP_PORT=str(port), HTTP_HOST="0.0.0.0", HTTP_TOKEN=TOKEN, LOG_LEVEL="DEBUG")
    d = Daemon(tmp_path, port, env)
    try:
        wait_until(d.up, 30, "the daemon's /healthz")
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        for path in ("/metrics", "/api/status", "/api/symbols", f"/api/candles?symbol=NSE:INFY&from={DAY}"):
            status, headers, body = get(port, path)
            assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer"), path
            assert "Authorization: Bearer" in json.loads(body)["error"] and TOKEN not in body.decode()
            assert get(port, path, {"Authorization": f"Bearer {TOKEN}x"})[0] == 401
            assert get(port, path, {"Authorization": f"Basic {TOKEN}"})[0] == 401
            assert get(port, path, bearer)[0] == 200, path
        assert get(port, "/healthz")[0] == 200
        assert get(port, "/")[0] == 401 and get(port, "/static/page.js")[0] == 401
        stream = SseClient(port, "/api/stream?symbol=NSE:INFY")
        assert stream.response.status == 401
        # a browser: /login sets the cookie EventSource sends
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/login?token=wrong-token-value-000")
        answer = conn.getresponse()
        assert answer.status == 401 and answer.getheader("Set-Cookie") is None
        answer.read()
        conn.request("GET", f"/login?token={TOKEN}")
        answer = conn.getresponse()
        answer.read()
        cookie = answer.getheader("Set-Cookie")
        assert answer.status == 303 and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        conn.close()
        stream = SseClient(port, f"/api/stream?symbol=NSE:INFY&since={DAY}", {"Cookie": cookie.split(";")[0]})
        try:
            assert stream.response.status == 200
            wait_until(lambda: any(k == "live" for k, _, _ in stream.events), 10, "the stream with the cookie")
        finally:
            stream.close()
        assert get(port, "/api/status", {"Cookie": "marketfeed_token=not-it"})[0] == 401
        assert get(port, "/", {"Cookie": cookie.split(";")[0]})[0] == 200
    finally:
        code = d.stop()
    assert code == 0, d.err
    assert "http on http://0.0.0.0" in d.err and "token=***" in d.err  # the /login request was logged, scrubbed
    assert TOKEN not in d.err


@pytest.mark.slow
@pytest.mark.parametrize(
    ("env", "args", "words"),
    [
        ({"HTTP_PORT": "PORT", "HTTP_HOST": "0.0.0.0"}, (), ("HTTP_HOST=0.0.0.0", "HTTP_TOKEN")),
        ({"METRICS_PORT": "PORT", "METRICS_HOST": "::"}, (), ("HTTP_HOST=::", "HTTP_TOKEN")),
        ({"HTTP_PORT": "18080", "METRICS_PORT": "18081"}, (), ("HTTP_PORT/--http-port (18080)", "(18081)", "different ports")),
        ({}, ("--http-port", "18083", "--metrics-port", "18082"), ("(18083)", "METRICS_PORT/--metrics-port (18082)")),
        ({"HTTP_PORT": "PORT", "HTTP_TOKEN": "plntd7"}, (), ("HTTP_TOKEN is invalid", "at least 16 characters")),
    ],
)
def test_the_daemon_refuses_to_start_serving_publicly_without_a_token_or_on_two_ports(tmp_path, env, args, words) -> None:
    port = str(free_port())
    env = {name: port if value == "PORT" else value for name, value in env.items()}
    result = run_main(*sim_args("--duration", "5", *args), cwd=tmp_path, env=main_env(**env), timeout=60)
    assert result.returncode == 2, result.stderr
    for word in words:
        assert word in result.stderr
    assert "plntd7" not in result.stderr + result.stdout


@pytest.mark.slow
def test_metrics_port_alone_still_serves_everything_and_the_same_port_twice_is_one_server(tmp_path) -> None:
    port = free_port()
    d = Daemon(tmp_path, port, main_env(METRICS_PORT=str(port), HTTP_PORT=str(port)))
    try:
        wait_until(d.up, 30, "the daemon's /healthz")
        assert get(port, "/metrics")[0] == 200 and get(port, "/api/symbols")[0] == 200
    finally:
        assert d.stop() == 0, d.err


def test_the_token_is_redacted_in_the_settings_repr() -> None:
    from config.settings import load_settings

    settings = load_settings({"HTTP_TOKEN": TOKEN, "HTTP_PORT": "9108"}, env_file=None)
    assert settings.http.token == TOKEN and settings.http.port == 9108
    assert TOKEN not in repr(settings) and "token='***'" in repr(settings.http)
