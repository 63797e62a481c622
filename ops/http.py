"""The daemon's one HTTP port: ``/healthz`` and ``/metrics`` (ops/metrics.py, unchanged), the read
API (ops/api.py), the history-then-live stream (ops/stream.py), ``/login``, and the page at ``/``
(ops/static/: its status and a live candlestick chart, a hand-written canvas script).

The standard library's ``ThreadingHTTPServer``: a thread per connection, none on the tick path.
The pipeline thread never calls in here; the writer thread only appends stored candles to the
streams' buffers (``CandleHub.publish_candles``).

Security: with a token (``HTTP_TOKEN``) every route but ``/healthz`` needs it, as
``Authorization: Bearer <token>`` or as the ``marketfeed_token`` cookie that ``/login?token=…``
sets (HttpOnly, SameSite=Strict: a browser's EventSource cannot send a header, it sends the
cookie). Tokens are compared in constant time (``hmac.compare_digest``). The daemon refuses to
listen beyond the loopback addresses without a token (cli/daemon.py). Query strings are logged
with any ``token`` value blanked; the token never appears in a log line, an error or a repr.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ops.api import Api, ApiError, dumps, parse_time, today_start
from ops.metrics import Metrics, MetricsError
from ops.stream import CandleHub, Stream, parse_resume
from pipeline.health import Health
from storage.base import StoreError, StoreUnavailable

log = logging.getLogger(__name__)

_JSON = "application/json"
COOKIE = "marketfeed_token"
#: seconds between the stream's keep-alive comments (proxies close connections idle for a minute)
HEARTBEAT_S = 15.0
#: seconds a connection may sit idle between requests, or a write may wait on a client
IDLE_S = 60.0

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (HTTP_HOST) is reachable from this machine only."""
    if host.strip().lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


_TOKEN_IN_QUERY = re.compile(r"(?i)(token=)[^&]*")


def scrubbed(path: str) -> str:
    """A request path for a log line: any ``token=`` value blanked."""
    return _TOKEN_IN_QUERY.sub(r"\1***", path)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stream or a slow client must not hold up shutdown

    def __init__(self, address: tuple[str, int], owner: HttpServer) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.owner = owner
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("http: request from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive: a poller pays for one connection, not one per request
    timeout = IDLE_S
    server_version = "marketfeed"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.owner.handle(self, "GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self.server.owner.handle(self, "HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self.server.owner.handle(self, "POST")

    def do_PUT(self) -> None:  # noqa: N802
        self.server.owner.handle(self, "PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self.server.owner.handle(self, "DELETE")

    def do_PATCH(self) -> None:  # noqa: N802
        self.server.owner.handle(self, "PATCH")

    def do_OPTIONS(self) -> None:  # noqa: N802
        self.server.owner.handle(self, "OPTIONS")

    def send(self, status: int, content_type: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.debug("http: %s %s %s %s", self.address_string(), self.command, scrubbed(self.path), code)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        # the stdlib's own messages (a malformed request line) may quote the request: scrubbed too
        log.debug("http: %s - %s", self.address_string(), scrubbed(format % args))


#: route -> the Api method that answers it (GET only)
_API_ROUTES = {"/api/candles": "candles", "/api/symbols": "symbols", "/api/gaps": "gaps", "/api/status": "status"}
#: the page at / and its files (ops/static/), served with the read API: route -> (file, content type)
_PAGE = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/static/page.css": ("page.css", "text/css; charset=utf-8"),
}
_STATIC = Path(__file__).resolve().parent / "static"
#: the page runs only its own files, and reaches only this server
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_ROUTES = ("/healthz", "/metrics", "/login", "/api/stream", *_API_ROUTES, *_PAGE)


class HttpServer:
    """Everything HTTP of one daemon, on one port, on background threads.

    ``api`` and ``hub`` None: only ``/healthz`` and ``/metrics`` (and ``/login``). ``port=0``
    picks a free port (read ``.port`` after ``start``)."""

    def __init__(
        self,
        health: Callable[[], Health],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        api: Api | None = None,
        hub: CandleHub | None = None,
        heartbeat: float = HEARTBEAT_S,
    ) -> None:
        self.host = host
        self.port = port
        self._token = token.encode() if token else None
        self.metrics = Metrics(health)
        self.api = api
        self.hub = hub
        self.heartbeat = heartbeat
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"HttpServer({self.host}:{self.port}, token={'***' if self._token else None})"

    def start(self) -> None:
        if self._server is not None:
            return
        try:
            server = _Server((self.host, self.port), self)
        except OSError as exc:
            raise MetricsError(
                f"cannot serve HTTP on {self.host}:{self.port}: {exc}; choose a free port or another address"
            ) from exc
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="http", daemon=True)
        self._thread.start()
        shown = f"[{self.host}]" if ":" in self.host else self.host
        routes = "/healthz, /metrics" + (", /api/candles, /api/symbols, /api/gaps, /api/status, /api/stream" if self.api else "")
        log.info("http on http://%s:%d: %s%s", shown, self.port, routes,
                 "; every route but /healthz needs the token (HTTP_TOKEN)" if self._token else "")  # fmt: skip

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        if self.hub is not None:
            self.hub.stop()  # open streams end with a last event
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> HttpServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- requests ---------------------------------------------------------------------------

    def authorised(self, handler: _Handler) -> bool:
        token = self._token
        if token is None:
            return True
        header = handler.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token):
            return True
        cookie = handler.headers.get("Cookie")
        if cookie:
            try:
                morsel = SimpleCookie(cookie).get(COOKIE)
            except CookieError:
                morsel = None
            if morsel is not None and hmac.compare_digest(morsel.value.encode(), token):
                return True
        return False

    def handle(self, handler: _Handler, method: str) -> None:
        parts = urlsplit(handler.path)
        path = parts.path.rstrip("/") or "/"
        try:
            if path not in _ROUTES or (self.api is None and path not in ("/healthz", "/metrics", "/login")):
                raise ApiError(404, f"no route {path}: the routes are {', '.join(self._routes())}")
            if method not in ("GET", "HEAD") or (method == "HEAD" and path == "/api/stream"):
                handler.close_connection = True  # a body it may have sent is not read
                handler.send(405, _JSON, dumps({"error": f"{method} is not allowed on {path}: use GET"}) + b"\n",
                             {"Allow": "GET, HEAD"})  # fmt: skip
                return
            if path in ("/healthz", "/metrics"):
                if path == "/metrics" and not self.authorised(handler):
                    raise self._unauthorised()
                try:
                    status, content_type, body = self.metrics.answer(path, handler.headers.get("Accept", ""))
                except Exception:  # noqa: BLE001 - a scrape must never take the daemon down
                    log.exception("http: answering %s failed", path)
                    status, content_type = 500, "text/plain; charset=utf-8"
                    body = b"internal error while collecting; see the daemon's log\n"
                handler.send(status, content_type, body)
                return
            query = parse_qs(parts.query, keep_blank_values=True)
            if path == "/login":
                self._login(handler, query)
                return
            if not self.authorised(handler):
                raise self._unauthorised()
            assert self.api is not None
            if path in _PAGE:
                name, content_type = _PAGE[path]
                handler.send(200, content_type, (_STATIC / name).read_bytes(), _PAGE_HEADERS)
                return
            if path == "/api/stream":
                self._stream(handler, query)
                return
            body = getattr(self.api, _API_ROUTES[path])(query)
            handler.send(200, _JSON, dumps(body) + b"\n")
        except ApiError as exc:
            headers = {"WWW-Authenticate": 'Bearer realm="marketfeed"'} if exc.status == 401 else None
            handler.send(exc.status, _JSON, dumps({"error": exc.message}) + b"\n", headers)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            handler.close_connection = True
        except StoreError as exc:  # its words name the store without secrets, and what to do
            log.warning("http: %s: %s", path, exc)
            self._fail(handler, 503 if isinstance(exc, StoreUnavailable) else 500, str(exc))
        except Exception:  # noqa: BLE001 - a request must never take the daemon down
            log.exception("http: answering %s failed", path)
            self._fail(handler, 500, "internal error; see the daemon's log")

    @staticmethod
    def _fail(handler: _Handler, status: int, words: str) -> None:
        try:
            handler.send(status, _JSON, dumps({"error": words}) + b"\n")
        except OSError:
            handler.close_connection = True

    def _routes(self) -> list[str]:
        return [r for r in _ROUTES if self.api is not None or r in ("/healthz", "/metrics", "/login")]

    @staticmethod
    def _unauthorised() -> ApiError:
        return ApiError(401, "this route needs the token: send the header 'Authorization: Bearer <HTTP_TOKEN>', "
                        "or open /login?token=<HTTP_TOKEN> once in a browser (it sets a cookie)")  # fmt: skip

    def _login(self, handler: _Handler, query: dict[str, list[str]]) -> None:
        """``/login?token=…``: a cookie with the token for a browser (EventSource sends no header),
        then to the page at ``/``. A wrong token sets nothing."""
        given = (query.get("token") or [""])[0]
        if self._token is None:
            raise ApiError(404, "no login: this daemon has no HTTP_TOKEN, every route is open")
        if not given or not hmac.compare_digest(given.encode(), self._token):
            raise ApiError(401, "wrong or missing token: open /login?token=<HTTP_TOKEN>")
        cookie = f"{COOKIE}={self._token.decode()}; Path=/; HttpOnly; SameSite=Strict"
        body = dumps({"login": "ok"}) + b"\n"
        handler.send(303, _JSON, body, {"Set-Cookie": cookie, "Location": "/"})

    def _stream(self, handler: _Handler, query: dict[str, list[str]]) -> None:
        from ops.api import check_names, interval_param, symbol_param

        assert self.api is not None and self.hub is not None
        check_names(query, ("symbol", "interval", "since"), "/api/stream")
        exchange, symbol = symbol_param(query)
        interval = interval_param(query)
        text = (query.get("since") or [""])[0].strip()
        since = parse_time(text, "since") if text else today_start(self.api.clock())
        last_id = handler.headers.get("Last-Event-ID")
        resume = parse_resume(last_id) if last_id and last_id.strip() else None
        if not self.api.known((exchange, symbol), interval):
            raise ApiError(404, f"unknown symbol {exchange}:{symbol}: the store has no candles of it and the daemon "
                           "does not stream it; /api/symbols lists the known ones")  # fmt: skip
        stream = Stream(self.hub, self.api.store, (exchange, symbol, interval), since, resume)
        first = stream.open()
        try:
            handler.send_response(200)
            handler.send_header("Content-Type", "text/event-stream")
            handler.send_header("Cache-Control", "no-store")
            handler.send_header("Connection", "close")
            handler.send_header("X-Accel-Buffering", "no")  # nginx: pass events on at once
            handler.end_headers()
            handler.close_connection = True
            out = handler.wfile
            out.write(b"retry: 3000\n\n" + b"".join(first))
            out.flush()
            last_write = time.monotonic()
            while stream.ended is None:
                events = stream.next(self.heartbeat)
                if events:
                    out.write(b"".join(events))
                    out.flush()
                    last_write = time.monotonic()
                elif time.monotonic() - last_write >= self.heartbeat:
                    out.write(b": keep-alive\n\n")
                    out.flush()
                    last_write = time.monotonic()
            log.info("http: stream of %s:%s %s ended: %s", exchange, symbol, interval, stream.ended)
        finally:
            stream.close()
