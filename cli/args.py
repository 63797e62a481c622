"""The command line's options."""

from __future__ import annotations

import argparse
from datetime import date

from brokers import registry
from cli.errors import UsageError
from config.numbers import PORT, Range


def parse_day(text: str) -> date:
    """``YYYY-MM-DD`` for --from, --to and --reconcile."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date: write it as YYYY-MM-DD, e.g. 2024-01-15") from None


def day_option(text: str | None, option: str) -> date | None:
    """``parse_day`` for an option read as text (``--from``, ``--to``: ``--chart`` takes times
    too), its error a ``UsageError`` naming the option."""
    if text is None:
        return None
    try:
        return parse_day(text)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"{option} {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="main.py",
        description="Stream live market data, build OHLCV candles and store them.",
        epilog="Settings come from the environment and .env; see .env.example.",
    )
    p.add_argument("--broker", choices=registry.choices(), help="market-data source (default: MARKETFEED_BROKER, else sim)")
    src = p.add_argument_group("watchlist (EXCHANGE:SYMBOL; a bare symbol means NSE)")
    src.add_argument("--symbols", nargs="+", metavar="SYM", default=[], help="symbols to stream")
    src.add_argument("--symbols-file", metavar="PATH", help="one symbol per line, # comments")
    src.add_argument("--symbols-from-db", action="store_true", help="enabled rows of the watchlist table")
    src.add_argument("--shard", metavar="I/N", help="stream only part I of N of the watchlist (one daemon per part)")
    p.add_argument("--intervals", help="candle intervals, e.g. 1m,5m,15m,1h,1d (default: CANDLE_INTERVALS or 1m)")
    seconds = Range(0, above=True, unit="seconds")
    p.add_argument("--duration", type=seconds.option, metavar="SECONDS", help="run this long, then shut down cleanly")
    p.add_argument("--env-file", metavar="PATH", help="settings file (default: .env, if there is one)")
    p.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="overrides LOG_LEVEL")
    p.add_argument("--log-format", choices=("text", "json"), help="overrides LOG_FORMAT")
    p.add_argument("--http-port", type=PORT.option, metavar="PORT", help="serve /healthz, /metrics, the read API "
                   "and the live stream on this port (overrides HTTP_PORT)")  # fmt: skip
    p.add_argument("--metrics-port", type=PORT.option, metavar="PORT", help="older name of --http-port (overrides METRICS_PORT)")

    checks = p.add_argument_group("checks and views (each exits when done)")
    checks.add_argument("--test-database", action="store_true", help="connect, migrate, write and read back a candle")
    checks.add_argument("--test-broker", action="store_true", help="connect to the broker and wait for a first tick")
    checks.add_argument("--test-mqtt", action="store_true", help="publish a message to MQTT and read it back")
    checks.add_argument(
        "--show-candles", metavar="SYM",
        help="print the latest candles of a symbol, or of a continuous futures series such as NFO:NIFTY-I (read-only)",
    )  # fmt: skip
    checks.add_argument("--show-gaps", nargs="*", metavar="SYM", help="print the session minutes the daemon did not "
                        "watch, per symbol (all symbols when none is named; read-only)")  # fmt: skip
    checks.add_argument("--date", metavar="YYYY-MM-DD", help="day for --show-gaps (default: today, IST)")
    checks.add_argument("--tail", metavar="SYM", help="print a symbol's live ticks from the NATS bus (NATS_URL) until "
                        "Ctrl-C or --duration")  # fmt: skip
    checks.add_argument("--candles", metavar="INTERVAL", help="with --tail: its candles of this interval instead of ticks")
    checks.add_argument("--since", metavar="TIME", help="with --tail: replay from this time first: 2026-11-24T09:15 (IST), "
                        "09:15 (today) or 15m, 2h, 1d ago")  # fmt: skip
    checks.add_argument(
        "--chart", metavar="SYM",
        help="draw a symbol's (or a continuous series') candles with volume as a PNG (--out), gaps and backfilled "
        "candles marked; --interval, --from/--to (a day, 2026-11-24T09:15 in IST, 09:15 today or 2h ago; default: "
        "the day of the newest candle) (read-only)",
    )  # fmt: skip
    checks.add_argument("--out", metavar="PATH.png", help="with --chart: the PNG file to write")
    pixels = Range(200, 10_000, whole=True)
    checks.add_argument("--width", type=pixels.option, default=1600, metavar="PX", help="with --chart: width (default 1600)")
    checks.add_argument("--height", type=pixels.option, default=900, metavar="PX", help="with --chart: height (default 900)")
    checks.add_argument("--interval", default="1m", help="interval for --show-candles and --chart (default 1m)")
    rows = Range(1, 100_000, whole=True)
    checks.add_argument("--limit", type=rows.option, default=20, help="rows for --show-candles (default 20)")

    arch = p.add_argument_group("tick archive (TICK_ARCHIVE_DIR)")
    arch.add_argument("--replay", type=parse_day, metavar="YYYY-MM-DD", help="run the day's archived ticks through the "
                      "candle aggregator (the daemon's settings; --symbols and --intervals narrow it) and print a "
                      "summary (with --symbols, their candles), then exit")  # fmt: skip
    arch.add_argument("--verify", action="store_true", help="with --replay: compare the candles with the stored ones "
                      "and print every difference (exit 1: some differ)")  # fmt: skip

    back = p.add_argument_group("backfill and reconciliation from Kite's historical API "
                                "(needs the Kite settings, whatever --broker is)")  # fmt: skip
    back.add_argument("--backfill", action="store_true", help="fetch past candles of the watchlist's symbols, then exit "
                      "(the same command again resumes a stopped run)")  # fmt: skip
    back.add_argument("--from", dest="backfill_from", metavar="YYYY-MM-DD", help="first day (default: today, IST); "
                      "--chart takes a time too")  # fmt: skip
    back.add_argument("--to", dest="backfill_to", metavar="YYYY-MM-DD", help="last day (default: today, IST); "
                      "--chart takes a time too")  # fmt: skip
    back.add_argument("--reconcile", type=parse_day, metavar="YYYY-MM-DD", help="compare the day's stored live 1m "
                      "candles of the watchlist's symbols with Kite's, store and print the differences, then exit "
                      "(1: some differ)")  # fmt: skip

    kite = p.add_argument_group("Zerodha Kite (--broker kite)")
    kite.add_argument("--login", action="store_true", help="daily login: print the login URL, store the access token")
    kite.add_argument("--request-token", metavar="TOKEN_OR_URL", help="for --login: the request_token (or redirect URL) "
                      "instead of the prompt")  # fmt: skip

    for venue in registry.VENUES:
        registry.factory(venue.name).add_arguments(p)
    return p
