"""Kite's broker from its settings: the access token, the instruments dump, the feed (see
brokers/registry.py). The REST client is pykiteconnect's ``KiteConnect``."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from typing import Any

from brokers.base import BaseBroker, BrokerError, CredentialsRefused
from brokers.kite.auth import load_token, probably_expired, token_day
from brokers.kite.settings import Settings
from brokers.registry import Clock, FeedContext, Report
from config.env import raise_problems

log = logging.getLogger(__name__)

STALL_SECONDS = 10.0  # the server sends a heartbeat every second


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Kite's --login is the command line's own (cli/kite_login.py)."""


def access_token(settings: Settings) -> tuple[str, str, Callable[[], str | None] | None]:
    """(access token, where it came from, provider of a replacement after a rejection)."""
    if settings.access_token:
        return settings.access_token, "KITE_ACCESS_TOKEN", None
    file = settings.token_file
    token = load_token(file)
    if not token:
        raise CredentialsRefused(
            f"no Kite access token: log in first with `python main.py --broker kite --login` (it writes {file}), "
            "or set KITE_ACCESS_TOKEN"
        )
    day = token_day(file)
    if day is not None and probably_expired(day, time.time()):
        log.warning(
            "the Kite access token in %s was issued on %s and has probably expired (they expire around 06:00 IST): "
            "run `python main.py --broker kite --login`; the daemon picks the new token up by itself",
            file,
            day,
        )
    return token, f"{file} (issued {day})" if day else file, lambda: load_token(file)


def rest_client(settings: Settings, token: str | None = None) -> Any:
    """pykiteconnect's ``KiteConnect`` for ``settings`` (imported here: only Kite needs it)."""
    from kiteconnect import KiteConnect

    raise_problems(settings.missing())  # the API key, worded where it is declared
    assert settings.api_key is not None
    return KiteConnect(settings.api_key, access_token=token, root=settings.api_url, timeout=15)


def open_broker(
    settings: Settings, ctx: FeedContext, token: tuple[str, str, Callable[[], str | None] | None] | None = None
) -> tuple[BaseBroker, Clock]:
    from brokers.kite.client import KiteBroker
    from brokers.kite.instruments import KiteInstruments

    token_value, _, provider = token or access_token(settings)
    assert settings.api_key is not None  # missing() checked it
    master = KiteInstruments(rest_client(settings, token_value), ctx.data_dir, required=ctx.required)
    dump = master.load()
    broker = KiteBroker(
        settings.api_key,
        token_value,
        ws_url=settings.ws_url,
        mode=settings.mode,
        instruments={i.token: i for i in dump.values()},
        stall_timeout=ctx.stall_seconds or STALL_SECONDS,
        token_provider=provider,
        depth=False,  # full mode for exchange times and OI; candles never read the depth
        master=master,
    )
    return broker, time.time


def check_login(settings: Settings, ctx: FeedContext, report: Report) -> BaseBroker | None:
    """Token, profile() and the instruments dump, each reported."""
    token = access_token(settings)
    report("access token", f"from {token[1]}")
    started = time.perf_counter()
    try:
        profile = rest_client(settings, token[0]).profile()
    except Exception as exc:  # noqa: BLE001 - kiteconnect's exception family and network errors
        text = f"{type(exc).__name__}: {exc}".replace(token[0], "***")
        hint = (
            "the access token is invalid or expired: log in again (python main.py --broker kite --login)"
            if "Token" in text or "403" in text
            else "check KITE_API_URL and the network"
        )
        report("profile", "FAILED", f"{text}; {hint}")
        return None
    report("profile", f"ok: {profile.get('user_id', '?')} ({profile.get('user_name', '')}), "
           f"{(time.perf_counter() - started) * 1000:.0f} ms")  # fmt: skip
    started = time.perf_counter()
    try:
        broker, _ = open_broker(settings, ctx, token)
    except BrokerError as exc:
        report("instruments", "FAILED", str(exc))
        return None
    report("instruments", f"ok: {len(broker.instruments)} in the dump ({time.perf_counter() - started:.1f} s)")  # type: ignore[attr-defined]
    return broker
