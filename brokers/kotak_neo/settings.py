"""Kotak Neo's settings: the Neo API app's consumer key, the login (mobile, UCC, MPIN, TOTP), limits."""

from __future__ import annotations

from dataclasses import dataclass

from config.env import redacted, require, var


@dataclass(frozen=True, slots=True, repr=False)
class Settings:
    consumer_key: str | None = var("KOTAK_CONSUMER_KEY", secret=True, hint="the consumer key of your Neo API app")
    mobile_number: str | None = var(
        "KOTAK_MOBILE_NUMBER", secret=True, hint="the mobile number registered with Kotak, e.g. +919876543210"
    )
    ucc: str | None = var("KOTAK_UCC", hint="your client code (UCC)")
    mpin: str | None = var("KOTAK_MPIN", secret=True, hint="your 6-digit MPIN")
    totp_secret: str | None = var("KOTAK_TOTP_SECRET", secret=True, hint="the base32 secret shown when you enabled TOTP")
    login_url: str = var("KOTAK_LOGIN_URL", "https://mis.kotaksecurities.com", schemes=("https", "http"))
    feed_url: str | None = var("KOTAK_FEED_URL", schemes=("wss", "ws", "https", "http"))  # None: the login reply's feedUrl
    max_symbols_per_connection: int = var("KOTAK_MAX_SYMBOLS_PER_CONNECTION", 100, minimum=1)
    max_connections: int = var("KOTAK_MAX_CONNECTIONS", 30, minimum=1)
    # Kotak counts failed logins against the account: more than 3 a minute only for a test server
    logins_per_minute: int = var("KOTAK_LOGINS_PER_MINUTE", 3, minimum=1)

    __repr__ = redacted

    def missing(self) -> list[str]:
        problems = require(self)
        if self.mpin and not (self.mpin.isdigit() and len(self.mpin) == 6):
            problems.append("KOTAK_MPIN is invalid: it must be exactly 6 digits")
        return problems
