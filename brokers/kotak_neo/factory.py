"""Kotak Neo's broker from its settings: the TOTP + MPIN login, the scrip master, the feed (see
brokers/registry.py)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from brokers.base import BaseBroker, BrokerError
from brokers.kotak_neo import login_limit
from brokers.kotak_neo.auth import KotakAuth
from brokers.kotak_neo.login_limit import LoginLimit
from brokers.kotak_neo.settings import Settings
from brokers.registry import Clock, FeedContext, Report

STALL_SECONDS = 45.0  # the feed sends no heartbeat: the connection pings, and quiet scrips are normal


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Kotak Neo has no options of its own: its settings are all in the environment."""



def _auth(settings: Settings, ctx: FeedContext) -> KotakAuth:
    # the attempts are kept in DATA_DIR: a daemon restarted every few seconds still logs in at most
    # KOTAK_LOGINS_PER_MINUTE times a minute
    limit = LoginLimit(Path(ctx.data_dir) / login_limit.FILE_NAME, max_attempts=settings.logins_per_minute)
    return KotakAuth(
        settings.consumer_key or "",
        settings.mobile_number or "",
        settings.ucc or "",
        settings.mpin or "",
        settings.totp_secret or "",
        login_url=settings.login_url,
        feed_url=settings.feed_url,
        limit=limit,
    )


def open_broker(settings: Settings, ctx: FeedContext, auth: KotakAuth | None = None) -> tuple[BaseBroker, Clock]:
    from brokers.kotak_neo.client import KotakNeoBroker
    from brokers.kotak_neo.instruments import KotakScripMaster

    auth = auth or _auth(settings, ctx)
    session = auth.current()  # log in now: refused credentials stop the start (exit 3) naming what to fix
    master = KotakScripMaster(session.base_url, settings.consumer_key or "", ctx.data_dir, required=ctx.required)
    broker = KotakNeoBroker(
        auth,
        max_symbols_per_connection=settings.max_symbols_per_connection,
        max_connections=settings.max_connections,
        stall_timeout=ctx.stall_seconds or STALL_SECONDS,
        scrips=master,
    )
    return broker, time.time


def check_login(settings: Settings, ctx: FeedContext, report: Report) -> BaseBroker | None:
    auth = _auth(settings, ctx)
    started = time.perf_counter()
    try:
        session = auth.current()
    except BrokerError as exc:
        report("login", "FAILED", str(exc))
        return None
    report("login", f"ok: {session.ucc}, session valid for {(session.expires_at - time.time()) / 3600:.1f} h "
           f"({(time.perf_counter() - started) * 1000:.0f} ms)")  # fmt: skip
    report("feed", session.feed_url)
    return open_broker(settings, ctx, auth)[0]
