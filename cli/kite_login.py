"""Kite's daily login (--login): print the login URL, take the request_token, store the access token.

Kite Connect's login flow: https://kite.trade/docs/connect/v3/user/#login-flow
"""

from __future__ import annotations

import argparse

from brokers.kite.auth import generate_access_token, parse_request_token, save_token
from brokers.kite.factory import rest_client
from brokers.kite.settings import Settings as KiteSettings
from cli.errors import UsageError
from config.env import ConfigError


def login(kite: KiteSettings, args: argparse.Namespace) -> int:
    if not kite.api_secret:
        raise ConfigError("KITE_API_SECRET is missing: set it in .env (your Kite Connect app's API secret); --login needs it")
    client = rest_client(kite)
    if args.request_token:
        pasted = args.request_token
    else:
        print("1. Open this URL in a browser and log in to Kite:")
        print(f"   {client.login_url()}")
        print("2. Paste the request_token, or the whole address the browser was sent to:")
        try:
            pasted = input("> ")
        except EOFError:
            raise UsageError("no request_token given: paste it at the prompt or pass --request-token") from None
    token = generate_access_token(client, parse_request_token(pasted), kite.api_secret)
    path = save_token(kite.token_file, token)
    print(f"saved today's access token to {path} (readable by its owner only).")
    print("A running daemon picks it up by itself; it is valid until about 06:00 IST tomorrow.")
    if kite.access_token:
        print("warning: KITE_ACCESS_TOKEN is set and wins over the file: unset it to use this token.")
    return 0
