"""Kite's daily login (--login)."""

from __future__ import annotations

import argparse
import logging

from cli.errors import UsageError
from cli.venues import kite_rest
from config.settings import ConfigError, Settings

log = logging.getLogger("marketfeed")


def login(settings: Settings, args: argparse.Namespace) -> int:
    """Kite's daily login: print the login URL, take the request_token, store the access token."""
    from brokers.kite.auth import generate_access_token, parse_request_token, save_token

    if args.broker != "kite":
        raise UsageError(f"--login is for --broker kite; {args.broker} logs in by itself from its settings")
    if not settings.kite_api_secret:
        raise ConfigError("KITE_API_SECRET is missing: set it in .env (your Kite Connect app's API secret); --login needs it")
    kite = kite_rest(settings)
    if args.request_token:
        pasted = args.request_token
    else:
        print("1. Open this URL in a browser and log in to Kite:")
        print(f"   {kite.login_url()}")
        print("2. Paste the request_token, or the whole address the browser was sent to:")
        try:
            pasted = input("> ")
        except EOFError:
            raise UsageError("no request_token given: paste it at the prompt or pass --request-token") from None
    assert settings.kite_api_secret is not None
    token = generate_access_token(kite, parse_request_token(pasted), settings.kite_api_secret)
    path = save_token(settings.kite_token_file, token)
    print(f"saved today's access token to {path} (readable by its owner only).")
    print("A running daemon picks it up by itself; it is valid until about 06:00 IST tomorrow.")
    if settings.kite_access_token:
        print("warning: KITE_ACCESS_TOKEN is set and wins over the file: unset it to use this token.")
    return 0


