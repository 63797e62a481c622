"""Dispatch: every expected failure becomes one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import logging
import sys

from brokers import registry
from brokers.base import BrokerError, CredentialsRefused
from cli.args import build_parser
from cli.backfill import run_backfill
from cli.checks import test_broker, test_database, test_mqtt
from cli.daemon import run_daemon
from cli.errors import EXIT_CREDENTIALS_REFUSED, UsageError
from cli.kite_login import login
from cli.reconcile import run_reconcile
from cli.settings import broker_name, load_settings, venue_settings
from cli.views import show_candles, show_gaps
from cli.watchlist import listed_symbols, split
from config.env import ConfigError
from config.logs import setup_logging
from config.symbols import SymbolError
from storage.base import StoreError
from storage.spool import SpoolError

log = logging.getLogger("marketfeed")

def run(args: argparse.Namespace) -> int:
    """Dispatch; every expected failure becomes one line on stderr and a non-zero exit."""
    try:
        settings = load_settings(env_file=args.env_file or ".env", env_file_required=args.env_file is not None)
        args.broker = broker_name(settings, args)
        setup_logging(args.log_level or settings.log.level, args.log_format or settings.log.format)
        if args.show_gaps is not None:
            listed = [] if args.show_gaps else split(listed_symbols(args, required=False))[0]
            return show_gaps(settings, args.show_gaps, args.date, listed)
        if args.tail:
            from cli.tail import tail  # nats-py only when asked

            return tail(settings, args.tail, args.candles, args.since, args.duration)
        if args.candles or args.since:
            raise UsageError("--candles and --since go with --tail SYMBOL")
        if args.chart:
            from cli.chart import chart  # mplfinance and matplotlib only when asked

            return chart(settings, args.chart, args.interval, args.backfill_from, args.backfill_to, args.out, args.width,
                         args.height)  # fmt: skip
        if args.replay is not None:
            from cli.replay import run_replay  # pyarrow only when asked

            return run_replay(settings, args)
        if args.verify:
            raise UsageError("--verify goes with --replay DATE")
        if args.show_candles:
            return show_candles(settings, args.show_candles, args.interval, args.limit)
        if args.test_database:
            return test_database(settings)
        if args.test_mqtt:
            return test_mqtt(settings)
        if args.reconcile is not None:
            return run_reconcile(settings, args)
        if args.backfill:
            return run_backfill(settings, args)
        venue = venue_settings(settings, args.broker)
        if args.login:
            if registry.venue(args.broker).name != "kite":
                raise UsageError(f"--login is for --broker kite; {args.broker} logs in by itself from its settings")
            return login(venue, args)
        if args.test_broker:
            return test_broker(settings, args)
        return run_daemon(settings, args)
    except (ConfigError, UsageError, SymbolError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except CredentialsRefused as exc:
        print(f"error: {exc}; then restart the daemon (systemctl restart marketfeed)", file=sys.stderr)
        return EXIT_CREDENTIALS_REFUSED
    except (StoreError, BrokerError, SpoolError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))
