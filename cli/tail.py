"""``--tail SYMBOL [--candles INTERVAL] [--since TIME]``: a symbol's ticks (or candles) from the
NATS JetStream bus, as a daemon with ``NATS_URL`` publishes them (publishers/nats.py), one line each.

A JetStream ordered consumer reads the stream: from ``--since`` first (its stored messages from
that time on), then live; without ``--since``, live from now. It runs until Ctrl-C, or
``--duration`` seconds.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from datetime import datetime, timedelta
from typing import Any

from candles.model import Interval
from cli.errors import UsageError
from config.settings import Settings
from config.symbols import parse_symbol
from core.ist import IST
from publishers.nats import token

_AGO = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: datetime | None = None, option: str = "--since") -> datetime:
    """``--since`` (and ``--chart``'s ``--from``/``--to``, named by ``option``): an ISO 8601
    date-time (without an offset: IST), a time of day today in IST
    (``09:15``, ``09:15:30``) or a span ago (``90s``, ``15m``, ``2h``, ``1d``)."""
    now = now or datetime.now(IST)
    raw = text.strip()
    ago = _AGO.fullmatch(raw)
    if ago:
        return now - timedelta(seconds=float(ago.group(1)) * _UNIT[ago.group(2)])
    try:
        if re.fullmatch(r"\d{1,2}:\d{2}(:\d{2})?", raw):
            clock = datetime.strptime(raw, "%H:%M:%S" if raw.count(":") == 2 else "%H:%M").time()
            return datetime.combine(now.astimezone(IST).date(), clock, IST)
        at = datetime.fromisoformat(raw)
    except ValueError:
        raise UsageError(
            f"{option} {text!r} is not a time: write 2026-11-24T09:15 (IST unless it has an offset), 09:15 (today, IST) "
            "or a span ago such as 15m, 2h or 1d"
        ) from None
    return at.replace(tzinfo=IST) if at.tzinfo is None else at


def subject(settings: Settings, symbol: str, candles: str | None) -> tuple[str, str, str]:
    """(subject, what it carries, EXCHANGE:SYMBOL) for ``--tail``."""
    exchange, name = parse_symbol(symbol)
    prefix = settings.nats.prefix
    if candles is None:
        return f"{prefix}.ticks.{token(exchange)}.{token(name)}", "ticks", f"{exchange}:{name}"
    iv = Interval.parse(candles)
    return f"{prefix}.candles.{token(iv.name)}.{token(exchange)}.{token(name)}", f"{iv.name} candles", f"{exchange}:{name}"


def tail(settings: Settings, symbol: str, candles: str | None, since: str | None, duration: float | None) -> int:
    if not settings.nats.url:
        raise UsageError("--tail reads the NATS bus, and NATS_URL is not set: set it to the daemon's, e.g. nats://127.0.0.1:4222")
    subj, what, key = subject(settings, symbol, candles)
    start = None if since is None else parse_since(since)
    try:
        return asyncio.run(_tail(settings, subj, what, key, start, duration))
    except KeyboardInterrupt:
        return 0


async def _tail(settings: Settings, subj: str, what: str, key: str, start: datetime | None, duration: float | None) -> int:
    import nats
    import nats.errors
    import nats.js.errors
    from nats.js.api import ConsumerConfig, DeliverPolicy

    where = settings.nats.where
    try:
        nc = await nats.connect(servers=settings.nats.servers, connect_timeout=3, max_reconnect_attempts=2,
                                reconnect_time_wait=0.5, name="marketfeed-tail")  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - whatever the client says, the fix is the address
        print(f"error: cannot reach NATS at {where} ({type(exc).__name__}: {exc}): check NATS_URL and that "
              "nats-server runs", file=sys.stderr)  # fmt: skip
        return 1
    try:
        js = nc.jetstream()
        try:
            if start is None:
                sub = await js.subscribe(subj, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW)
            else:
                config = ConsumerConfig(opt_start_time=start)  # type: ignore[arg-type]
                sub = await js.subscribe(subj, ordered_consumer=True, config=config,
                                         deliver_policy=DeliverPolicy.BY_START_TIME)  # fmt: skip
        except (nats.js.errors.NotFoundError, nats.errors.NoRespondersError) as exc:
            print(f"error: no JetStream stream at {where} holds {subj} ({exc}): has a daemon with this NATS_URL and "
                  f"NATS_SUBJECT_PREFIX={settings.nats.prefix} published there?", file=sys.stderr)  # fmt: skip
            return 1
        since = "" if start is None else f" since {start.astimezone(IST).isoformat(timespec='seconds')}"
        print(f"{key} {what} from {where}{since} (Ctrl-C stops)", file=sys.stderr, flush=True)
        deadline = None if duration is None else time.monotonic() + duration
        while deadline is None or time.monotonic() < deadline:
            wait = 1.0 if deadline is None else max(0.01, min(1.0, deadline - time.monotonic()))
            try:
                msg = await sub.next_msg(wait)
            except nats.errors.TimeoutError:
                continue
            print(_line(msg.data, candles="candles" in what), flush=True)
        return 0
    finally:
        await nc.close()


def _line(data: bytes, *, candles: bool) -> str:
    try:
        body: dict[str, Any] = json.loads(data)
    except ValueError:
        return data.decode(errors="replace")
    if candles:
        state = "final" if body.get("final") else "open"
        return (f"{body['bucket']} {body['interval']} {body['exchange']}:{body['symbol']} O {body['open']} H {body['high']} "
                f"L {body['low']} C {body['close']} V {body['volume']} OI {_dash(body.get('oi'))} {state} "
                f"{body['source']}")  # fmt: skip
    return (f"{body['ts']} {body['exchange']}:{body['symbol']} {body['price']} qty {_dash(body.get('qty'))} "
            f"vol {_dash(body.get('volume'))} oi {_dash(body.get('oi'))}")  # fmt: skip


def _dash(value: object) -> str:
    return "-" if value is None else str(value)
