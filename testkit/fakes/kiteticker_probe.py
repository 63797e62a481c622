"""Run pykiteconnect's own KiteTicker against a Kite endpoint and print what it sees as JSON lines.

A subprocess helper for tests: Twisted's reactor cannot be restarted, so every ticker run needs its
own process. Each stdout line is one event::

    {"event": "connect"}
    {"event": "ticks", "ticks": [{...}, ...]}   # datetimes as epoch seconds, floats as JSON numbers
    {"event": "error", "code": 1006, "reason": "..."}
    {"event": "close", "code": 1006, "reason": "..."}
    {"event": "done", "ticks": N, "why": "count" | "timeout" | "error"}

Usage: python -m testkit.fakes.kiteticker_probe --root ws://127.0.0.1:PORT --api-key K --access-token T
       --tokens 408065,256265 --mode full --count 10 --timeout 10 [--exit-on-error]
Run it with TZ=Asia/Kolkata: the client builds naive local datetimes.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date, datetime
from typing import Any

from kiteconnect import KiteTicker
from twisted.internet import reactor


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.timestamp()  # naive local time: timestamp() is the exact inverse of fromtimestamp()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **_plain(fields)}) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--access-token", required=True)
    parser.add_argument("--tokens", required=True, help="comma-separated instrument tokens")
    parser.add_argument("--mode", default="full", choices=("ltp", "quote", "full"))
    parser.add_argument("--count", type=int, default=1, help="exit after this many ticks")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--exit-on-error", action="store_true", help="exit at the first error instead of letting it retry")
    args = parser.parse_args(argv)
    tokens = [int(t) for t in args.tokens.split(",") if t]

    kws = KiteTicker(args.api_key, args.access_token, root=args.root, reconnect_max_tries=3)
    state = {"ticks": 0, "done": False}

    def finish(why: str) -> None:
        if state["done"]:
            return
        state["done"] = True
        _emit("done", ticks=state["ticks"], why=why)
        kws.stop_retry()
        if kws.is_connected():
            kws._close()
        reactor.callLater(0.1, reactor.stop)

    def on_connect(ws: KiteTicker, response: Any) -> None:
        _emit("connect")
        ws.subscribe(tokens)
        ws.set_mode(args.mode, tokens)

    def on_ticks(ws: KiteTicker, ticks: list[dict[str, Any]]) -> None:
        if state["done"]:
            return
        state["ticks"] += len(ticks)
        _emit("ticks", ticks=ticks)
        if state["ticks"] >= args.count:
            finish("count")

    def on_error(ws: KiteTicker, code: int, reason: Any) -> None:
        _emit("error", code=code, reason=str(reason))
        if args.exit_on_error:
            finish("error")

    def on_close(ws: KiteTicker, code: int, reason: Any) -> None:
        _emit("close", code=code, reason=str(reason))

    kws.on_connect = on_connect
    kws.on_ticks = on_ticks
    kws.on_error = on_error
    kws.on_close = on_close
    reactor.callLater(args.timeout, finish, "timeout")
    kws.connect(threaded=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
