"""Kotak Neo login: TOTP + MPIN → session token, kept fresh.

The current flow (Kotak's ``docs/authentication.md`` in github.com/Kotak-Neo/Kotak-Neo; the SDK's
``neo_api_client/services/totp.py``):

1. ``POST {login_url}/login/1.0/tradeApiLogin`` with the consumer key in ``Authorization`` and
   ``{"mobileNumber", "ucc", "totp"}`` → a view token and sid;
2. ``POST {login_url}/login/1.0/tradeApiValidate`` with the view token and sid and ``{"mpin"}`` → the
   session token (a JWT), sid, ``baseUrl`` (REST, scrip master) and ``feedUrl`` (market data).

There is no refresh endpoint: a new session is a new login. ``KotakAuth`` logs in again at 90% of
the session's life (read from the JWT ``exp``) and whenever a caller reports that the session was
refused; a lock makes concurrent connections share one re-login. A refusal of the credentials
themselves (wrong MPIN, TOTP secret, UCC, consumer key) raises ``KotakRefused`` (a
``CredentialsRefused``): every later call fails at once with the same message instead of
hammering the login endpoint, until ``RETRY_REFUSED_S`` have passed (at most 3 tries an hour, so
that a fix on Kotak's side is picked up by itself). Every attempt, whatever its outcome, first
takes a slot of the ``LoginLimit`` (at most 3 a minute, also across restarts).

Secrets (consumer key, MPIN, TOTP codes, tokens, sids) never appear in messages or reprs.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pyotp
import requests

from brokers.base import BrokerError, CredentialsRefused
from brokers.kotak_neo.login_limit import Interrupted, LoginLimit
from core.ist import IST

log = logging.getLogger(__name__)

DEFAULT_LOGIN_URL = "https://mis.kotaksecurities.com"
LOGIN_PATH = "/login/1.0/tradeApiLogin"
VALIDATE_PATH = "/login/1.0/tradeApiValidate"
DEFAULT_FEED_URL = "wss://sfeed.kotaksecurities.com/betafeed"
NEO_FIN_KEY = "neotradeapi"
CREDENTIALS_HINT = "check KOTAK_MPIN / KOTAK_TOTP_SECRET"
RETRY_REFUSED_S = 1200.0  # a refused login is tried again after 20 minutes: at most 3 times an hour


class KotakAuthError(BrokerError):
    """The login failed. ``permanent``: the credentials were refused and retrying cannot help."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class KotakRefused(KotakAuthError, CredentialsRefused):
    """Kotak refused the credentials, or these settings cannot log in at all: retrying cannot help."""

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=True)


@dataclass(frozen=True, slots=True)
class KotakSession:
    """One logged-in session. ``serial`` counts logins, so a caller can tell whether the
    session it holds has been replaced."""

    token: str = field(repr=False)
    sid: str = field(repr=False)
    ucc: str
    base_url: str
    feed_url: str
    issued_at: float
    expires_at: float
    serial: int

    def refresh_at(self, fraction: float) -> float:
        return self.issued_at + (self.expires_at - self.issued_at) * fraction


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT (not verified: we hold the token, we do not judge it)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims.get("exp")
        return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None
    except (IndexError, ValueError, AttributeError):
        return None


def next_midnight_ist(now: float) -> float:
    """Where a token without ``exp`` is assumed to expire (Kotak sessions end at midnight IST)."""
    day = datetime.fromtimestamp(now, IST).date() + timedelta(days=1)
    return datetime(day.year, day.month, day.day, tzinfo=IST).timestamp()


def ws_scheme(url: str) -> str:
    """The feed URL comes back with an https scheme; the socket needs wss (ws for http)."""
    if url.startswith("https://"):
        return "wss://" + url[len("https://") :]
    if url.startswith("http://"):
        return "ws://" + url[len("http://") :]
    return url


class KotakAuth:
    """Logs in, hands out the current session and replaces it when due or refused."""

    def __init__(
        self,
        consumer_key: str,
        mobile_number: str,
        ucc: str,
        mpin: str,
        totp_secret: str,
        *,
        login_url: str = DEFAULT_LOGIN_URL,
        feed_url: str | None = None,
        timeout: float = 15.0,
        refresh_fraction: float = 0.9,
        clock: Callable[[], float] = time.time,
        http: requests.Session | None = None,
        limit: LoginLimit | None = None,
    ) -> None:
        given = {"KOTAK_CONSUMER_KEY": consumer_key, "KOTAK_MOBILE_NUMBER": mobile_number, "KOTAK_UCC": ucc,
                 "KOTAK_MPIN": mpin, "KOTAK_TOTP_SECRET": totp_secret}  # fmt: skip
        missing = [name for name, value in given.items() if not value]
        if missing:
            raise KotakRefused(f"{', '.join(missing)} missing: set it in .env")
        try:
            self._totp = pyotp.TOTP(totp_secret.replace(" ", "").upper())
            self._totp.now()
        except (ValueError, TypeError, base64.binascii.Error):
            raise KotakRefused("KOTAK_TOTP_SECRET is not a base32 secret: copy the secret shown when you enabled TOTP") from None
        if not 0.1 <= refresh_fraction < 1.0:
            raise ValueError(f"refresh_fraction {refresh_fraction} must be in [0.1, 1)")
        self._consumer_key = consumer_key
        self._mobile = mobile_number
        self._ucc = ucc
        self._mpin = mpin
        self._secrets = [s for s in (consumer_key, mpin, totp_secret, mobile_number) if s and len(s) >= 4]
        self.login_url = login_url.rstrip("/")
        self.feed_url_override = feed_url
        self.timeout = timeout
        self.refresh_fraction = refresh_fraction
        self.clock = clock
        self._http = http or requests.Session()
        self._lock = threading.Lock()
        self._session: KotakSession | None = None
        self._serial = 0
        #: at most 3 login attempts a minute (a LoginLimit with a file in DATA_DIR also across restarts)
        self.limit = limit or LoginLimit()
        #: set once the credentials were refused: the message every later call raises until
        #: ``RETRY_REFUSED_S`` after ``failed_at`` (the clock's time of the refusal)
        self.failed: str | None = None
        self.failed_at = 0.0
        self.logins = 0  # successful logins, the first included

    def __repr__(self) -> str:
        return f"KotakAuth(ucc={self._ucc!r}, login_url={self.login_url!r}, logins={self.logins})"

    # ---------------------------------------------------------------- public

    @property
    def session(self) -> KotakSession | None:
        return self._session

    def current(self) -> KotakSession:
        """The session, logging in first if there is none (or it is past its refresh point)."""
        session = self._session
        now = self.clock()
        if session is not None and now < session.refresh_at(self.refresh_fraction):
            return session
        try:
            return self.reauth(session, "no session yet" if session is None else "session near its end")
        except KotakAuthError as exc:
            if session is None or now >= session.expires_at:
                raise
            # the renewal failed (refused, or the server is in trouble), but the session has not
            # expired yet: a reconnect may still use it
            log.warning("kotak: using the current session until it expires in %.0f s (%s)", session.expires_at - now, exc)
            return session

    def retry_in(self) -> float:
        """Seconds until a refused login may be tried again (0: it may be tried now, or none was refused)."""
        if self.failed is None:
            return 0.0
        return max(0.0, self.failed_at + RETRY_REFUSED_S - self.clock())

    def refresh_due(self) -> float | None:
        """Seconds until the proactive re-login (<= 0: due now); None without a session."""
        session = self._session
        return None if session is None else session.refresh_at(self.refresh_fraction) - self.clock()

    def reauth(self, stale: KotakSession | None, reason: str) -> KotakSession:
        """Log in again unless another caller already replaced ``stale``; returns the new session.

        Thread-safe: connections that find their session refused at the same moment share one
        login. Raises KotakAuthError (``permanent`` when the credentials were refused)."""
        with self._lock:
            current = self._session
            if current is not None:
                if stale is not None and current.serial != stale.serial:
                    return current  # another connection already logged in again
                if stale is None and self.clock() < current.refresh_at(self.refresh_fraction):
                    return current
            if self.failed is not None:
                if self.retry_in() > 0:
                    raise KotakRefused(self.failed)
                log.warning("kotak: trying the login again, %.0f min after it was refused", (self.clock() - self.failed_at) / 60)
            try:
                self.limit.acquire()
            except Interrupted:
                raise KotakAuthError("stopped while waiting to log in") from None
            try:
                session = self._login()
            except KotakAuthError as exc:
                if exc.permanent:
                    self.failed = str(exc)
                    self.failed_at = self.clock()
                    log.error("kotak: %s", exc)
                raise
            if self.failed is not None:
                log.warning("kotak: the login works again")
                self.failed = None
            self._session = session
            self.logins += 1
            left = session.expires_at - self.clock()
            if self.logins == 1:
                log.info("kotak: logged in as %s; session valid for %.0f s", session.ucc, left)
            else:
                log.warning("kotak: re-authenticated (%s); new session valid for %.0f s", reason, left,
                            extra={"event": "reauthenticated", "reason": reason})  # fmt: skip
            return session

    # ---------------------------------------------------------------- the two calls

    def _login(self) -> KotakSession:
        totp = self._totp.at(self.clock())  # the injected clock, like every other time here
        view = self._post(
            LOGIN_PATH,
            {"Authorization": self._consumer_key, "neo-fin-key": NEO_FIN_KEY, "Content-Type": "application/json"},
            {"mobileNumber": self._mobile, "ucc": self._ucc, "totp": totp},
            "check KOTAK_CONSUMER_KEY, KOTAK_MOBILE_NUMBER, KOTAK_UCC and KOTAK_TOTP_SECRET (and the machine's clock)",
        )
        view_token, view_sid = view.get("token"), view.get("sid")
        if not view_token or not view_sid:
            raise KotakAuthError("Kotak's TOTP login reply has no token/sid: try again later")
        data = self._post(
            VALIDATE_PATH,
            {"Authorization": self._consumer_key, "neo-fin-key": NEO_FIN_KEY, "sid": str(view_sid), "Auth": str(view_token),
             "Content-Type": "application/json"},  # fmt: skip
            {"mpin": self._mpin},
            CREDENTIALS_HINT,
        )
        token, sid = data.get("token"), data.get("sid")
        if not token or not sid:
            raise KotakAuthError("Kotak's MPIN validation reply has no session token/sid: complete the 2FA and try again")
        now = self.clock()
        feed = self.feed_url_override or data.get("feedUrl") or DEFAULT_FEED_URL
        self._serial += 1
        return KotakSession(
            token=str(token),
            sid=str(sid),
            ucc=str(data.get("ucc") or self._ucc),
            base_url=str(data.get("baseUrl") or "").rstrip("/"),
            feed_url=ws_scheme(str(feed)),
            issued_at=now,
            expires_at=jwt_expiry(str(token)) or next_midnight_ist(now),
            serial=self._serial,
        )

    def _post(self, path: str, headers: dict[str, str], body: dict[str, Any], hint: str) -> dict[str, Any]:
        url = self.login_url + path
        step = "TOTP login" if path == LOGIN_PATH else "MPIN validation"
        try:
            reply = self._http.post(url, headers=headers, json=body, timeout=self.timeout)
        except requests.RequestException as exc:
            raise KotakAuthError(f"could not reach Kotak's {step} at {url}: {type(exc).__name__}; check KOTAK_LOGIN_URL "
                                 "and the network") from None  # fmt: skip
        try:
            payload = reply.json()
        except ValueError:
            payload = None
        data = payload.get("data") if isinstance(payload, dict) else None
        if 200 <= reply.status_code < 300 and isinstance(data, dict):
            return data
        text = self._scrub(_error_text(payload) or reply.text[:200].strip() or reply.reason or "no body")
        status = reply.status_code
        if status >= 500 or status == 429 and not _credentials_problem(text):
            raise KotakAuthError(f"Kotak's {step} failed with HTTP {status} ({text}): a server problem, retrying later")
        if status in (404, 405):  # no such endpoint: the URL is wrong, not the credentials
            raise KotakRefused(f"Kotak's {step} is not at {url} (HTTP {status}: {text}): check KOTAK_LOGIN_URL")
        if _error_code(payload) == "10512":  # we send every header the spec names: Kotak's login API changed
            raise KotakRefused(f"Kotak refused the {step} (HTTP {status}: {text}): its login API has changed; "
                               "update marketfeed")  # fmt: skip
        if status >= 400 or _credentials_problem(text) or _error_code(payload) in {"400", "401", "403"}:
            raise KotakRefused(f"Kotak refused the {step} (HTTP {status}: {text}): {hint}")
        raise KotakAuthError(f"Kotak's {step} reply has no data (HTTP {status}: {text}): complete the 2FA and try again")

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


_CREDENTIAL_WORDS = ("invalid", "incorrect", "wrong", "mpin", "totp", "ucc", "credential", "header", "unauthori", "blocked")


def _credentials_problem(text: str) -> bool:
    low = text.lower()
    return any(word in low for word in _CREDENTIAL_WORDS)


def _error_code(payload: Any) -> str | None:
    if not isinstance(payload, dict):
        return None
    for key in ("stCode", "errorCode", "code"):
        if key in payload:
            return str(payload[key])
    errors = payload.get("error")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict) and "code" in errors[0]:
        return str(errors[0]["code"])
    return None


def _error_text(payload: Any) -> str | None:
    """The message of any of the error shapes the login endpoints use."""
    if not isinstance(payload, dict):
        return None
    for key in ("errMsg", "message", "description", "Error", "emsg"):
        value = payload.get(key)
        if isinstance(value, str) and value:
            code = _error_code(payload)
            return f"{value} [{code}]" if code else value
    errors = payload.get("error")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return f"{errors[0].get('message', '')} [{errors[0].get('code', '')}]".strip()
    return None
