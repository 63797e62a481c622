"""Building each venue's broker from the settings."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from datetime import datetime

from cli.errors import UsageError
from config.settings import Settings
from core.ist import IST

log = logging.getLogger("marketfeed")


def make_broker(settings: Settings, args: argparse.Namespace):  # noqa: ANN202
    if args.broker == "kite":
        return make_kite(settings), time.time
    if args.broker in ("kotak", "kotak_neo"):
        return make_kotak(settings), time.time
    if args.broker == "sim":
        from brokers.sim.client import SimBroker, SimClock

        if args.sim_speed <= 0:
            raise UsageError("--sim-speed must be positive")
        start = time.time()
        if args.sim_start:
            try:
                when = datetime.fromisoformat(args.sim_start)
            except ValueError:
                raise UsageError(f"--sim-start {args.sim_start!r} is not an ISO time like 2026-11-24T09:15:00+05:30") from None
            start = (when if when.tzinfo else when.replace(tzinfo=IST)).timestamp()
        clock = SimClock(start, args.sim_speed)
        return SimBroker(clock, seed=args.seed, tick_rate=args.sim_tick_rate, tape_path=args.sim_tape), clock
    raise UsageError(f"--broker {args.broker} is not yet available in this version; use --broker sim")


# ---- Kite ----------------------------------------------------------------------------------


def kite_token(settings: Settings) -> tuple[str, str, Callable[[], str | None] | None]:
    """(access token, where it came from, provider of a replacement after a rejection)."""
    from brokers.kite.auth import load_token, probably_expired, token_day

    if settings.kite_access_token:
        return settings.kite_access_token, "KITE_ACCESS_TOKEN", None
    file = settings.kite_token_file
    token = load_token(file)
    if not token:
        raise UsageError(
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


def kite_rest(settings: Settings, access_token: str | None = None):  # noqa: ANN202
    from kiteconnect import KiteConnect

    assert settings.kite_api_key is not None  # validate("kite") checked it
    return KiteConnect(settings.kite_api_key, access_token=access_token, root=settings.kite_api_url, timeout=15)


def make_kite(settings: Settings, token: tuple[str, str, Callable[[], str | None] | None] | None = None):  # noqa: ANN202
    from brokers.kite.client import KiteBroker
    from brokers.kite.instruments import KiteInstruments

    access_token, _, provider = token or kite_token(settings)
    assert settings.kite_api_key is not None
    dump = KiteInstruments(kite_rest(settings, access_token), settings.data_dir).load()
    return KiteBroker(
        settings.kite_api_key,
        access_token,
        ws_url=settings.kite_ws_url,
        mode=settings.kite_mode,
        instruments={i.token: i for i in dump.values()},
        stall_timeout=settings.feed_stall_seconds or 10.0,
        token_provider=provider,
        depth=False,  # full mode for exchange times and OI; candles never read the depth
    )


# ---- Kotak Neo ---------------------------------------------------------------------------------


def kotak_auth(settings: Settings):  # noqa: ANN202
    from brokers.kotak_neo.auth import KotakAuth

    return KotakAuth(
        settings.kotak_consumer_key or "",
        settings.kotak_mobile_number or "",
        settings.kotak_ucc or "",
        settings.kotak_mpin or "",
        settings.kotak_totp_secret or "",
        login_url=settings.kotak_login_url,
        feed_url=settings.kotak_feed_url,
    )


def make_kotak(settings: Settings, auth=None):  # noqa: ANN001, ANN202
    from brokers.kotak_neo.client import KotakNeoBroker
    from brokers.kotak_neo.instruments import KotakScripMaster

    auth = auth or kotak_auth(settings)
    session = auth.current()  # log in now: bad credentials stop the start with the variables to check
    master = KotakScripMaster(session.base_url, settings.kotak_consumer_key or "", settings.data_dir)
    return KotakNeoBroker(
        auth,
        max_symbols_per_connection=settings.kotak_max_symbols_per_connection,
        max_connections=settings.kotak_max_connections,
        stall_timeout=settings.feed_stall_seconds or 45.0,
        resolver=master.resolve,
    )
