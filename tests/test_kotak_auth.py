"""KotakAuth against the fake Kotak login service over real HTTP: a TOTP + MPIN login gives a session that
carries the fake's token, sid and URLs and lasts as long as the JWT says; it is renewed at 90% of its life on
an injected clock and once for many callers; refused credentials fail for good without touching the server
again; every error shape says what happened and whether retrying can help; no secret is ever shown."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from brokers.base import BrokerError, CredentialsRefused
from brokers.kotak_neo.auth import (
    CREDENTIALS_HINT,
    RETRY_REFUSED_S,
    KotakAuth,
    KotakAuthError,
    KotakSession,
    jwt_expiry,
    next_midnight_ist,
    ws_scheme,
)
from brokers.kotak_neo.login_limit import FILE_NAME, LoginLimit, wait_needed
from core.ist import IST
from testkit.fakes.kotak_server import ERROR_SHAPES, KotakFakeServer, make_jwt

T0 = 1768448700.0  # 2026-01-15 09:15 IST, far from the wall clock: a TOTP made from time.time() would be refused
LIFETIME = 3600
CONSUMER_KEY = "ck-7Qz9-live-consumer-key-do-not-show"
MOBILE = "+919812345678"
UCC = "XY7K2"
MPIN = "739184"
TOTP_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
OTHER_TOTP_SECRET = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"  # valid base32, just not the account's
LOGIN_HINT_VARS = ("KOTAK_CONSUMER_KEY", "KOTAK_MOBILE_NUMBER", "KOTAK_UCC", "KOTAK_TOTP_SECRET")


class Clock:
    """A wall clock the test moves by hand; the fake and KotakAuth share it."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def start_server(clock: Clock, **kwargs: Any) -> KotakFakeServer:
    return KotakFakeServer(consumer_key=CONSUMER_KEY, mobile_number=MOBILE, ucc=UCC, mpin=MPIN, totp_secret=TOTP_SECRET,
                           token_lifetime=LIFETIME, clock=clock, **kwargs).start()  # fmt: skip


@pytest.fixture
def server(clock: Clock, caplog: pytest.LogCaptureFixture) -> Iterator[KotakFakeServer]:
    caplog.set_level(logging.DEBUG)  # every logger, urllib3's request lines included, is checked for secrets
    srv = start_server(clock)
    try:
        yield srv
    finally:
        srv.stop()


def make_auth(server: KotakFakeServer, clock: Clock, **overrides: Any) -> KotakAuth:
    creds: dict[str, Any] = {"consumer_key": CONSUMER_KEY, "mobile_number": MOBILE, "ucc": UCC, "mpin": MPIN,
                             "totp_secret": TOTP_SECRET}  # fmt: skip
    options: dict[str, Any] = {"login_url": server.login_url, "clock": clock, "timeout": 5.0}
    for name, value in overrides.items():
        (creds if name in creds else options)[name] = value
    return KotakAuth(**creds, **options)


def assert_no_secrets(server: KotakFakeServer, *texts: str, extra: tuple[str, ...] = ()) -> None:
    """None of the credentials, nor any token or sid the fake minted, shows in ``texts``."""
    secrets = {
        "consumer key": CONSUMER_KEY, "MPIN": MPIN, "TOTP secret": TOTP_SECRET, "mobile number": MOBILE,
        "mobile number without +91": MOBILE[3:],
    }  # fmt: skip
    secrets.update({f"session token {i}": t for i, t in enumerate(server.session_tokens)})
    secrets.update({f"session sid {i}": s for i, s in enumerate(server.session_sids)})
    secrets.update({f"given value {i}": v for i, v in enumerate(extra)})
    for text in texts:
        for what, secret in secrets.items():
            assert secret not in text, f"the {what} leaked into: {text[:300]!r}"


def expect_auth_error(call: Any) -> KotakAuthError:
    with pytest.raises(KotakAuthError) as info:
        call()
    return info.value


# ---------------------------------------------------------------------------------------------- login


def test_login_gives_a_session_with_the_fakes_token_sid_urls_and_the_jwt_expiry(
    server: KotakFakeServer, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    auth = make_auth(server, clock)
    assert auth.session is None and auth.refresh_due() is None
    session = auth.current()
    assert session.token == server.session_tokens[-1] and session.sid == server.session_sids[-1]
    assert session.ucc == UCC
    assert session.base_url == server.api_url
    assert server.feed_url.startswith("http://") and session.feed_url == "ws://" + server.feed_url[len("http://") :]
    assert session.feed_url == server.ws_url
    assert session.issued_at == T0
    assert session.expires_at == jwt_expiry(session.token) == int(T0) + LIFETIME
    assert session.serial == 1 and auth.logins == 1 and auth.session is session
    assert (server.login_attempts, server.validate_attempts, server.logins_completed) == (1, 1, 1)
    assert auth.failed is None
    assert_no_secrets(server, repr(auth), repr(session), str(session), caplog.text)


def test_the_totp_code_comes_from_the_injected_clock_not_the_wall_clock(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock(T0 - 400 * 86400)  # more than a year away from any wall clock this runs on
    with start_server(clock) as server:
        auth = make_auth(server, clock)
        assert auth.current().issued_at == clock.now
        assert server.logins_completed == 1


def test_a_feed_url_override_is_used_with_its_scheme_mapped_for_the_socket(server: KotakFakeServer, clock: Clock) -> None:
    auth = make_auth(server, clock, feed_url="https://feed.example.test/betafeed")
    assert auth.current().feed_url == "wss://feed.example.test/betafeed"


def test_ws_scheme_maps_https_to_wss_and_http_to_ws_and_leaves_socket_urls_alone() -> None:
    assert ws_scheme("https://sfeed.kotaksecurities.com/apifeed") == "wss://sfeed.kotaksecurities.com/apifeed"
    assert ws_scheme("http://127.0.0.1:8765/apifeed") == "ws://127.0.0.1:8765/apifeed"
    assert ws_scheme("wss://sfeed.kotaksecurities.com/betafeed") == "wss://sfeed.kotaksecurities.com/betafeed"


# ---------------------------------------------------------------------------------------------- renewal


def test_refresh_due_follows_the_injected_clock_and_current_logs_in_again_only_past_90_percent(
    server: KotakFakeServer, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    auth = make_auth(server, clock)
    first = auth.current()
    assert auth.refresh_due() == pytest.approx(0.9 * LIFETIME)
    clock.now += 1000
    assert auth.refresh_due() == pytest.approx(0.9 * LIFETIME - 1000)
    clock.now = T0 + 0.9 * LIFETIME - 1
    assert auth.current() is first  # still before the refresh point: no login
    assert server.logins_completed == 1
    assert auth.refresh_due() == pytest.approx(1)
    clock.now = T0 + 0.9 * LIFETIME + 1
    assert auth.refresh_due() == pytest.approx(-1)
    second = auth.current()
    assert second is not first and second.serial == 2 and auth.logins == 2
    assert server.logins_completed == 2
    assert second.token == server.session_tokens[-1] != first.token
    assert second.issued_at == clock.now and second.expires_at == int(clock.now) + LIFETIME
    assert auth.refresh_due() == pytest.approx(0.9 * LIFETIME)
    assert auth.current() is second and server.logins_completed == 2
    assert_no_secrets(server, repr(auth), repr(first), repr(second), caplog.text)


def test_a_failed_renewal_falls_back_to_the_current_session_until_it_really_expires(
    server: KotakFakeServer, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    auth = make_auth(server, clock)
    first = auth.current()
    server.fail_next("validate", "bad_mpin", times=10)
    clock.now = T0 + 0.95 * LIFETIME  # past the refresh point, before the expiry
    assert auth.current() is first  # a reconnect now still gets a usable session
    assert auth.failed is not None and "check KOTAK_MPIN / KOTAK_TOTP_SECRET" in auth.failed
    assert auth.current() is first and server.validate_attempts == 2  # refused once: never asked again
    clock.now = T0 + LIFETIME + 1
    with pytest.raises(KotakAuthError, match="check KOTAK_MPIN"):
        auth.current()
    assert server.validate_attempts == 2
    assert "using the current session until it expires" in caplog.text


def test_eight_threads_reauthing_the_same_stale_session_share_exactly_one_new_login(
    server: KotakFakeServer, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    auth = make_auth(server, clock)
    stale = auth.current()
    barrier = threading.Barrier(8)
    results: list[KotakSession] = []
    errors: list[BaseException] = []
    guard = threading.Lock()

    def refused() -> None:
        barrier.wait()
        try:
            got = auth.reauth(stale, "the feed refused the session")
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            with guard:
                errors.append(exc)
        else:
            with guard:
                results.append(got)

    threads = [threading.Thread(target=refused) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert errors == []
    assert len(results) == 8
    assert server.logins_completed == 2  # the first login and exactly one re-login
    assert {id(s) for s in results} == {id(auth.session)}
    assert results[0].serial == 2 and results[0].token != stale.token
    assert_no_secrets(server, repr(auth), repr(results[0]), caplog.text)


def test_reauth_with_a_session_already_replaced_returns_the_new_one_without_a_login(server: KotakFakeServer, clock: Clock) -> None:
    auth = make_auth(server, clock)
    old = auth.current()
    new = auth.reauth(old, "refused")
    assert new.serial == 2 and server.logins_completed == 2
    assert auth.reauth(old, "a late report about the old session") is new
    assert auth.reauth(None, "anyone wanting a session") is new
    assert server.logins_completed == 2


def test_a_session_the_server_expired_is_replaced_by_a_fresh_login(server: KotakFakeServer, clock: Clock) -> None:
    auth = make_auth(server, clock)
    old = auth.current()
    server.expire_sessions()
    new = auth.reauth(old, "the feed answered 1120")
    assert new.sid == server.session_sids[-1] != old.sid
    assert server.logins_completed == 2


# ---------------------------------------------------------------------------------------------- refused credentials

WRONG = {  # what is wrong -> (the KotakAuth argument, its wrong value, the variable the message must name)
    "mpin": ("mpin", "000111", "KOTAK_MPIN"),
    "totp": ("totp_secret", OTHER_TOTP_SECRET, "KOTAK_TOTP_SECRET"),
    "ucc": ("ucc", "ZZ999", "KOTAK_UCC"),
    "consumer key": ("consumer_key", "ck-someone-elses-consumer-key", "KOTAK_CONSUMER_KEY"),
}


@pytest.mark.parametrize("style", ["http_401", "http_200"])
@pytest.mark.parametrize("wrong", list(WRONG))
def test_refused_credentials_fail_permanently_naming_the_variables_and_are_never_retried(
    wrong: str, style: str, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    arg, value, variable = WRONG[wrong]
    with start_server(clock, credential_errors=style) as server:
        auth = make_auth(server, clock, **{arg: value})
        exc = expect_auth_error(auth.current)
        assert exc.permanent, str(exc)
        assert isinstance(exc, BrokerError)
        message = str(exc)
        assert variable in message, message
        if wrong == "mpin":
            assert CREDENTIALS_HINT in message and "MPIN validation" in message
            assert (server.login_attempts, server.validate_attempts) == (1, 1)
        else:
            assert all(name in message for name in LOGIN_HINT_VARS), message
            assert "TOTP login" in message
            assert (server.login_attempts, server.validate_attempts) == (1, 0)
        assert server.logins_completed == 0 and auth.session is None and auth.failed == message
        requests_before = len(server.rest_requests)
        again = expect_auth_error(lambda: auth.reauth(None, "retry"))
        assert again.permanent and str(again) == message
        again = expect_auth_error(auth.current)
        assert again.permanent and str(again) == message
        assert len(server.rest_requests) == requests_before  # the login endpoint is not hammered
        assert_no_secrets(server, message, repr(auth), caplog.text, extra=() if arg == "ucc" else (value,))  # the UCC is no secret


# ---------------------------------------------------------------------------------------------- error shapes

#: fail_next shape -> (permanent, text the message must carry)
SHAPES: dict[str | int, tuple[bool, str]] = {
    "bad_credentials": (True, "Invalid credentials or TOTP."),
    "bad_mpin": (True, "Invalid MPIN."),
    "invalid_ucc_200": (True, "Invalid UCC"),
    "invalid_mpin_200": (True, "Invalid MPIN"),
    "no_data_200": (False, "No Data"),
    "missing_data": (False, "has no data"),
    "missing_field": (True, "Missing required field 'Mpin'"),
    "missing_header": (True, "Required header not found. [10512]"),
    "invalid_session": (True, "Invalid session"),
    "not_json": (False, "HTTP 502"),
    400: (True, "HTTP 400"),
    401: (True, "HTTP 401"),
    403: (True, "HTTP 403"),
    404: (True, "HTTP 404"),
    405: (True, "HTTP 405"),
    422: (True, "HTTP 422"),
    429: (False, "HTTP 429"),
    500: (False, "HTTP 500"),
    502: (False, "HTTP 502"),
    503: (False, "HTTP 503"),
    504: (False, "HTTP 504"),
}


def test_the_shape_table_covers_every_named_error_shape_of_the_fake() -> None:
    assert set(ERROR_SHAPES) <= set(SHAPES)


@pytest.mark.parametrize("shape", list(SHAPES), ids=str)
@pytest.mark.parametrize("endpoint", ["login", "validate"])
def test_every_error_shape_gives_a_clear_error_with_the_right_permanence(
    endpoint: str, shape: str | int, server: KotakFakeServer, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    permanent, text = SHAPES[shape]
    auth = make_auth(server, clock)
    server.fail_next(endpoint, shape)
    exc = expect_auth_error(auth.current)
    message = str(exc)
    assert exc.permanent is permanent, message
    assert text in message, message
    assert ("TOTP login" if endpoint == "login" else "MPIN validation") in message, message
    assert server.logins_completed == 0 and auth.session is None
    if permanent:
        if shape in (404, 405):
            assert "KOTAK_LOGIN_URL" in message, message
        elif shape == "missing_header":  # we send every header: a 10512 means Kotak changed its API
            assert "update marketfeed" in message, message
        elif endpoint == "login":
            assert all(name in message for name in LOGIN_HINT_VARS), message
        else:
            assert CREDENTIALS_HINT in message, message
        before = len(server.rest_requests)
        assert expect_auth_error(auth.current).permanent
        assert len(server.rest_requests) == before
    else:
        assert "try again" in message or "retrying later" in message, message
        assert auth.failed is None
        session = auth.current()  # the fault was one-off: the next attempt logs in
        assert session.token == server.session_tokens[-1] and server.logins_completed == 1
    assert_no_secrets(server, message, repr(auth), caplog.text)


def test_an_unreachable_login_url_is_a_transient_error_naming_kotak_login_url(
    server: KotakFakeServer, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as s:  # a port that was just free and is closed again: connecting is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    auth = make_auth(server, clock, login_url=f"http://127.0.0.1:{port}")
    exc = expect_auth_error(auth.current)
    assert not exc.permanent
    assert "KOTAK_LOGIN_URL" in str(exc) and f"127.0.0.1:{port}" in str(exc)
    assert auth.failed is None
    assert_no_secrets(server, str(exc), repr(auth), caplog.text)


# ---------------------------------------------------------------------------------------------- construction


def test_a_totp_secret_that_is_not_base32_is_refused_at_construction_naming_kotak_totp_secret(server: KotakFakeServer) -> None:
    for bad in ("not base32 at all!", "18181818", "Z"):
        exc = expect_auth_error(lambda bad=bad: make_auth(server, Clock(), totp_secret=bad))
        assert exc.permanent and "KOTAK_TOTP_SECRET" in str(exc) and "base32" in str(exc)
        assert bad not in str(exc)
    assert server.login_attempts == 0


def test_a_totp_secret_with_spaces_and_lower_case_is_accepted(server: KotakFakeServer, clock: Clock) -> None:
    spaced = " ".join(TOTP_SECRET[i : i + 4] for i in range(0, len(TOTP_SECRET), 4)).lower()
    assert make_auth(server, clock, totp_secret=spaced).current().serial == 1


def test_missing_credentials_are_refused_at_construction_naming_each_variable(server: KotakFakeServer) -> None:
    exc = expect_auth_error(lambda: make_auth(server, Clock(), mpin="", ucc=""))
    assert exc.permanent and "KOTAK_UCC" in str(exc) and "KOTAK_MPIN" in str(exc) and ".env" in str(exc)
    assert "KOTAK_CONSUMER_KEY" not in str(exc)
    assert server.login_attempts == 0


# ---------------------------------------------------------------------------------------------- expiry functions


def test_jwt_expiry_reads_the_exp_claim_and_gives_none_for_anything_else() -> None:
    assert jwt_expiry(make_jwt({"exp": 1768501800, "iat": 1768448700})) == 1768501800.0
    assert jwt_expiry(make_jwt({"exp": 1768501800.5})) == 1768501800.5
    assert jwt_expiry(make_jwt({"iat": 1768448700})) is None  # no exp
    assert jwt_expiry(make_jwt({"exp": "1768501800"})) is None  # not a number
    assert jwt_expiry(make_jwt({"exp": True})) is None  # a bool is not a time
    assert jwt_expiry("not-a-jwt") is None
    assert jwt_expiry("") is None
    assert jwt_expiry("a.!!!!.c") is None  # payload is not base64
    assert jwt_expiry("a.bm90IGpzb24.c") is None  # payload is base64 of "not json"
    assert jwt_expiry("a.WzEsMl0.c") is None  # payload is a JSON list
    assert jwt_expiry("a.__8.c") is None  # payload bytes are not UTF-8


def test_next_midnight_ist_is_the_start_of_the_following_ist_day() -> None:
    def ist(*args: int) -> float:
        return datetime(*args, tzinfo=IST).timestamp()

    assert next_midnight_ist(ist(2026, 1, 15, 9, 15)) == ist(2026, 1, 16, 0, 0)
    assert next_midnight_ist(ist(2026, 1, 15, 23, 59, 59)) == ist(2026, 1, 16, 0, 0)
    assert next_midnight_ist(ist(2026, 1, 16, 0, 0)) == ist(2026, 1, 17, 0, 0)  # at midnight: the next one
    assert next_midnight_ist(ist(2026, 1, 16, 1, 30)) == ist(2026, 1, 17, 0, 0)  # 20:00 UTC the day before
    assert next_midnight_ist(ist(2026, 12, 31, 12, 0)) == ist(2027, 1, 1, 0, 0)
    assert next_midnight_ist(ist(2026, 1, 15, 9, 15)) == 1768501800  # 2026-01-15 18:30 UTC


# ---------------------------------------------------------------------------------------------- refusal policy


def test_refused_credentials_are_credentials_refused_and_tried_again_at_most_three_times_an_hour(
    server: KotakFakeServer, clock: Clock
) -> None:
    auth = make_auth(server, clock)
    server.fail_next("validate", "bad_mpin", times=2)
    exc = expect_auth_error(auth.current)
    assert isinstance(exc, CredentialsRefused) and exc.permanent
    assert auth.retry_in() == RETRY_REFUSED_S == 1200
    clock.now += RETRY_REFUSED_S - 1  # within the 20 minutes: refused at once, no request
    before = server.validate_attempts
    assert isinstance(expect_auth_error(auth.current), CredentialsRefused)
    assert server.validate_attempts == before
    clock.now += 1  # 20 minutes after the refusal: one attempt, refused again
    expect_auth_error(auth.current)
    assert server.validate_attempts == before + 1 and auth.retry_in() == RETRY_REFUSED_S
    clock.now += RETRY_REFUSED_S  # the account was fixed meanwhile: the next try logs in
    session = auth.current()
    assert session.serial == 1 and auth.failed is None and server.logins_completed == 1


def test_a_fourth_login_attempt_within_a_minute_waits_for_its_slot_and_says_until_when(
    server: KotakFakeServer, clock: Clock, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    wall = Clock(T0)
    path = tmp_path / FILE_NAME
    auth = make_auth(server, clock, limit=LoginLimit(path, clock=wall))
    server.fail_next("login", 503, times=10)
    for _ in range(3):
        assert not expect_auth_error(auth.current).permanent
    assert server.login_attempts == 3
    # a new process (a restart) reads the attempts from the file: its first attempt must wait
    limit = LoginLimit(path, clock=wall)
    limit.interrupt.set()  # the wait returns at once, as when the feed stops
    restarted = make_auth(server, clock, limit=limit)
    assert not expect_auth_error(restarted.current).permanent
    assert server.login_attempts == 3
    assert "3 login attempts in the last 60 s; waiting 60 s, until" in caplog.text
    wall.now += 60  # the oldest attempt leaves the window: one more is allowed
    limit.interrupt.clear()
    expect_auth_error(restarted.current)
    assert server.login_attempts == 4


def test_wait_needed_counts_only_the_attempts_of_the_last_minute() -> None:
    assert wait_needed([], 100.0, 3) == 0
    assert wait_needed([50.0, 60.0], 100.0, 3) == 0
    assert wait_needed([39.0, 50.0, 60.0, 70.0], 100.0, 3) == 10.0  # 50 leaves the window at 110
    assert wait_needed([10.0, 20.0, 30.0], 100.0, 3) == 0
