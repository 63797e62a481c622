"""Kite's settings: the Kite Connect app's keys, the daily access token, endpoints and mode."""

from __future__ import annotations

from dataclasses import dataclass

from config.env import redacted, require, var


@dataclass(frozen=True, slots=True, repr=False)
class Settings:
    api_key: str | None = var("KITE_API_KEY", hint="your Kite Connect app's API key")  # not a secret: it is in every URL
    api_secret: str | None = var("KITE_API_SECRET", secret=True)  # only --login needs it
    access_token: str | None = var("KITE_ACCESS_TOKEN", secret=True)  # wins over the token file
    token_file: str = var("KITE_TOKEN_FILE", "data/kite_access_token.json")
    mode: str = var("KITE_MODE", "full", choices=("ltp", "quote", "full"))
    ws_url: str = var("KITE_WS_URL", "wss://ws.kite.trade", schemes=("wss", "ws"))
    api_url: str = var("KITE_API_URL", "https://api.kite.trade", schemes=("https", "http"))

    __repr__ = redacted

    def missing(self) -> list[str]:
        return require(self)
