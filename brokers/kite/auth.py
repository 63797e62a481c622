"""Kite's daily access token: the login flow and the token file the daemon reads.

Kite access tokens expire every day (around 06:00 IST). ``--login`` prints the login URL, takes
the ``request_token`` (or the whole redirect URL) and exchanges it for an access token through
``generate_session``; the token goes to a file only its owner can read.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta
from datetime import time as dt_time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from brokers.base import BrokerError
from core.ist import IST


def parse_request_token(text: str) -> str:
    """A bare request_token, or the redirect URL that carries one."""
    raw = text.strip()
    if "request_token=" in raw:
        values = parse_qs(urlsplit(raw).query).get("request_token") or parse_qs(raw.split("?", 1)[-1]).get("request_token")
        if not values or not values[0].strip():
            raise BrokerError("the redirect URL has an empty request_token: log in again")
        return values[0].strip()
    if not raw or not raw.isalnum():
        raise BrokerError("paste the request_token (letters and digits) or the whole redirect URL")
    return raw


def generate_access_token(kite: Any, request_token: str, api_secret: str) -> str:
    """Exchange a request_token for an access token (``kite`` is a KiteConnect)."""
    try:
        session = kite.generate_session(request_token, api_secret=api_secret)
    except Exception as exc:  # kiteconnect.exceptions.* and network errors
        raise BrokerError(
            f"Kite refused the login ({type(exc).__name__}): check KITE_API_SECRET and use a fresh request_token "
            "(each works once, for a few minutes)"
        ) from None
    token = session.get("access_token") if isinstance(session, dict) else None
    if not token:
        raise BrokerError("Kite's session reply had no access_token: log in again")
    return str(token)


def save_token(path: str | Path, token: str, clock: Callable[[], float] = time.time) -> Path:
    """Write the token with the IST day it was issued on, readable by the owner only."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    day = datetime.fromtimestamp(clock(), IST).date().isoformat()
    fd = os.open(file.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump({"access_token": token, "day": day}, out)
    os.chmod(file.with_suffix(".tmp"), 0o600)
    os.replace(file.with_suffix(".tmp"), file)
    return file


def load_token(path: str | Path) -> str | None:
    """The token from the file, or None when there is none."""
    file = Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        raise BrokerError(f"the Kite token file {file} is unreadable: run --broker kite --login again") from None
    token = data.get("access_token") if isinstance(data, dict) else None
    return str(token) if token else None


def token_day(path: str | Path) -> date | None:
    """The IST day the token in the file was issued on, None when unknown."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return date.fromisoformat(data["day"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def probably_expired(day: date, now: float) -> bool:
    """Kite tokens expire around 06:00 IST on the day after they were issued."""
    expiry = datetime.combine(day + timedelta(days=1), dt_time(6, 0), IST)
    return now >= expiry.timestamp()
