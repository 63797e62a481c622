"""Planted credentials never reach a log line, an exception text, a report or a repr.

Each run of main.py below is a real process at ``--log-level DEBUG`` (urllib3, websocket-client,
paho and psycopg2 at their most talkative), pointed at the fakes with distinctive planted
credentials, or at a closed port; its stdout and stderr together are searched for every planted
secret, in the forms a leak would take (as is, URL-encoded; a digits-only secret as a number
standing alone, so that timings and ports cannot match it by chance). Every run also asserts
that it reached the failure it is about, so a test cannot pass by not exercising it.

The Kite API key is an identifier, not a secret: Kite puts it in the login URL the operator opens,
and ``Settings`` and ``KiteBroker`` show it on purpose. The Kotak UCC (client code) likewise.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import quote

import pyotp
import pytest

from brokers.kite.client import KiteBroker
from brokers.kotak_neo.auth import KotakAuth, KotakAuthError, KotakSession
from brokers.kotak_neo.client import KotakNeoBroker
from cli.settings import load_settings
from config.settings import MqttSettings
from storage.base import StoreError
from storage.postgres import PostgresStore
from testkit.cli import main_env, run_main
from testkit.fakes import kite_server, kotak_server
from testkit.fakes.kite_server import KiteFakeServer
from testkit.fakes.kotak_server import ERROR_SHAPES, KotakFakeServer
from testkit.waiting import free_port

# ---- the planted credentials ---------------------------------------------------------------

KITE_API_KEY = "plantedKiteApiKey4d1c"  # an identifier (see above): planted, not searched for
KITE_API_SECRET = "plantedKiteApiSecret9b7e"
KITE_ACCESS_TOKEN = "plantedKiteAccessToken3f8a"
KITE_WRONG_SECRET = "plantedWrongKiteSecret2c6d"
KITE_SECRETS = (KITE_API_SECRET, KITE_ACCESS_TOKEN, KITE_WRONG_SECRET)

KOTAK_CONSUMER_KEY = "plantedKotakConsumerKey5e2b"
KOTAK_MOBILE = "+918765401234"
KOTAK_UCC = "PLNT7"
KOTAK_MPIN = "482915"
KOTAK_WRONG_MPIN = "193847"
KOTAK_TOTP_SECRET = "PLANTEDKOTAKTOTPSECRETQ7ZX4MN2WA"  # valid base32
KOTAK_WRONG_TOTP_SECRET = "WRONGTOTPSECRETPLANTEDQ7ZX4MN2WB"  # valid base32 too, just not the account's
KOTAK_SECRETS = (KOTAK_CONSUMER_KEY, KOTAK_MOBILE, KOTAK_MOBILE[1:], KOTAK_MOBILE[3:], KOTAK_MPIN, KOTAK_WRONG_MPIN,
                 KOTAK_TOTP_SECRET, KOTAK_WRONG_TOTP_SECRET)  # fmt: skip

PG_PASSWORD = "plantedPgPassw0rd8c4d"
MQTT_PASSWORD = "plantedMqttPassw0rd1e9f"


def _forms(secret: str) -> Iterator[str | re.Pattern[str]]:
    """How a secret would show in a leak: as is, URL-encoded; digits alone as a standalone number."""
    if secret.isdigit():
        yield re.compile(rf"(?<!\d){secret}(?!\d)")
        return
    yield secret
    if quote(secret, safe="") != secret:
        yield quote(secret, safe="")


def leaks(text: str, secrets: Iterable[str]) -> list[str]:
    found = []
    for secret in secrets:
        for form in _forms(secret):
            if form.search(text) if isinstance(form, re.Pattern) else form in text:
                found.append(secret)
                break
    return found


def assert_no_leak(proc: subprocess.CompletedProcess, secrets: Iterable[str], *reached: str) -> None:
    """No secret in stdout+stderr, and the run got as far as the failure under test (each of ``reached``)."""
    output = f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    assert not leaks(output, secrets), f"{leaks(output, secrets)} leaked:\n{output}"
    for needle in reached:
        assert needle in output, f"the run did not reach {needle!r}:\n{output}"


def closed_port() -> int:
    return free_port()  # nothing listens there, and no other test takes it meanwhile (testkit/waiting.py)


def run_debug(*args: str, cwd: Path, env: dict[str, str], log_format: str = "text") -> subprocess.CompletedProcess:
    return run_main(*args, "--log-level", "DEBUG", "--log-format", log_format, cwd=cwd, env=env, timeout=60)


# JSON lines carry every extra attribute of a log record: one more way for a value to slip out
LOG_FORMATS = pytest.mark.parametrize("log_format", ["text", "json"])


DAEMON = ("--symbols", "NSE:INFY", "--duration", "1.5")


# ---- Kite ------------------------------------------------------------------------------------


@pytest.fixture
def kite() -> Iterator[KiteFakeServer]:
    with KiteFakeServer(api_key=KITE_API_KEY, api_secret=KITE_API_SECRET, access_token=KITE_ACCESS_TOKEN,
                        heartbeat_interval=0.5) as server:  # fmt: skip
        yield server


def kite_env(server: KiteFakeServer, **extra: str) -> dict[str, str]:
    settings = {
        "KITE_API_KEY": KITE_API_KEY, "KITE_API_SECRET": KITE_API_SECRET, "KITE_ACCESS_TOKEN": KITE_ACCESS_TOKEN,
        "KITE_WS_URL": server.ws_url, "KITE_API_URL": server.api_url, "FEED_STALL_SECONDS": "2", "STATUS_INTERVAL_SECONDS": "1",
    }  # fmt: skip
    return main_env(**(settings | extra))


@pytest.mark.parametrize("fault", ["reject_tokens", "expire_access_token"])
@pytest.mark.slow
def test_kite_daemon_whose_access_token_the_feed_rejects_logs_no_credential(tmp_path, kite, fault):
    getattr(kite, fault)()  # every WebSocket upgrade gets HTTP 403; expired, REST refuses the token too
    # long enough for status lines, which carry the broker's problem
    proc = run_debug("--broker", "kite", "--symbols", "NSE:INFY", "--duration", "2.5", cwd=tmp_path, env=kite_env(kite))
    assert_no_leak(proc, KITE_SECRETS, "Kite rejected the access token (HTTP 403)", "feed DOWN")


@pytest.mark.slow
def test_kite_broker_check_with_an_expired_access_token_reports_without_echoing_it(tmp_path, kite):
    kite.expire_access_token()
    proc = run_debug("--broker", "kite", "--test-broker", cwd=tmp_path, env=kite_env(kite))
    assert proc.returncode == 1
    assert_no_leak(proc, KITE_SECRETS, "profile          FAILED", "the access token is invalid or expired")


@pytest.mark.parametrize("command", [("--test-broker",), DAEMON], ids=["broker-check", "daemon"])
@pytest.mark.slow
def test_kite_with_an_unreachable_api_url_fails_without_a_credential_in_the_output(tmp_path, kite, command):
    proc = run_debug(
        "--broker", "kite", *command, cwd=tmp_path, env=kite_env(kite, KITE_API_URL=f"http://127.0.0.1:{closed_port()}")
    )
    assert proc.returncode == 1
    assert_no_leak(proc, KITE_SECRETS, "Connection refused")


@pytest.mark.slow
def test_kite_daemon_with_an_unreachable_ws_url_retries_without_logging_the_url_token(tmp_path, kite):
    # the access token travels in the WebSocket URL's query: a connect error must not carry the URL
    proc = run_debug("--broker", "kite", *DAEMON, cwd=tmp_path, env=kite_env(kite, KITE_WS_URL=f"ws://127.0.0.1:{closed_port()}"))
    assert_no_leak(proc, KITE_SECRETS, "ConnectionRefusedError", "reconnecting in")


@pytest.mark.slow
def test_kite_login_with_a_wrong_secret_names_the_variable_but_neither_secret_nor_request_token(tmp_path, kite):
    request_token = kite.request_token
    proc = run_debug("--broker", "kite", "--login", "--request-token", request_token, cwd=tmp_path,
                     env=kite_env(kite, KITE_API_SECRET=KITE_WRONG_SECRET))  # fmt: skip
    assert proc.returncode == 1
    assert_no_leak(proc, (*KITE_SECRETS, request_token), "Kite refused the login", "check KITE_API_SECRET")


@pytest.mark.slow
def test_kite_login_stores_the_new_access_token_without_printing_it(tmp_path, kite):
    request_token = kite.request_token
    env = kite_env(kite)
    del env["KITE_ACCESS_TOKEN"]
    proc = run_debug("--broker", "kite", "--login", "--request-token", request_token, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert_no_leak(proc, (*KITE_SECRETS, kite.access_token, request_token), "saved today's access token")


@LOG_FORMATS
@pytest.mark.slow
def test_kite_broker_check_that_streams_a_tick_prints_no_credential(tmp_path, kite, log_format):
    infy = kite_server.DEFAULT_INSTRUMENTS[0]
    kite.send_ticks(kite_server.random_tape([infy], seconds=1)[:1], mode="full")  # the snapshot a new subscription gets
    proc = run_debug("--broker", "kite", "--test-broker", cwd=tmp_path, env=kite_env(kite), log_format=log_format)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_no_leak(proc, KITE_SECRETS, "first tick       ok", "result           OK", "connected, subscribed 1 instruments")


# ---- Kotak Neo -------------------------------------------------------------------------------


@pytest.fixture
def kotak() -> Iterator[KotakFakeServer]:
    with KotakFakeServer(consumer_key=KOTAK_CONSUMER_KEY, mobile_number=KOTAK_MOBILE, ucc=KOTAK_UCC, mpin=KOTAK_MPIN,
                         totp_secret=KOTAK_TOTP_SECRET) as server:  # fmt: skip
        yield server


def kotak_env(server: KotakFakeServer, **extra: str) -> dict[str, str]:
    settings = {
        "KOTAK_CONSUMER_KEY": KOTAK_CONSUMER_KEY, "KOTAK_MOBILE_NUMBER": KOTAK_MOBILE, "KOTAK_UCC": KOTAK_UCC,
        "KOTAK_MPIN": KOTAK_MPIN, "KOTAK_TOTP_SECRET": KOTAK_TOTP_SECRET, "KOTAK_LOGIN_URL": server.login_url,
        "FEED_STALL_SECONDS": "5", "STATUS_INTERVAL_SECONDS": "1",
    }  # fmt: skip
    return main_env(**(settings | extra))


def kotak_secrets(server: KotakFakeServer) -> tuple[str, ...]:
    """The planted credentials, the sessions the fake minted, and the TOTP codes around now."""
    now = time.time()
    codes = {pyotp.TOTP(s).at(now + k * 30) for s in (KOTAK_TOTP_SECRET, KOTAK_WRONG_TOTP_SECRET) for k in range(-4, 2)}
    return (*KOTAK_SECRETS, *server.session_tokens, *server.session_sids, *codes)


KOTAK_COMMANDS = pytest.mark.parametrize("command", [("--test-broker",), DAEMON], ids=["broker-check", "daemon"])


@KOTAK_COMMANDS
@pytest.mark.slow
def test_kotak_login_with_a_wrong_mpin_fails_without_either_mpin_in_the_output(tmp_path, kotak, command):
    proc = run_debug("--broker", "kotak", *command, cwd=tmp_path, env=kotak_env(kotak, KOTAK_MPIN=KOTAK_WRONG_MPIN))
    assert proc.returncode == (3 if command == DAEMON else 1)  # the daemon: credentials refused, not restarted
    assert_no_leak(proc, kotak_secrets(kotak), "Kotak refused the MPIN validation", "check KOTAK_MPIN")


@KOTAK_COMMANDS
@pytest.mark.slow
def test_kotak_login_with_another_totp_secret_fails_without_either_secret_in_the_output(tmp_path, kotak, command):
    proc = run_debug("--broker", "kotak", *command, cwd=tmp_path, env=kotak_env(kotak, KOTAK_TOTP_SECRET=KOTAK_WRONG_TOTP_SECRET))
    assert proc.returncode == (3 if command == DAEMON else 1)
    assert_no_leak(proc, kotak_secrets(kotak), "Kotak refused the TOTP login", "KOTAK_TOTP_SECRET")


@KOTAK_COMMANDS
@pytest.mark.slow
def test_kotak_with_an_unreachable_login_url_fails_without_a_credential_in_the_output(tmp_path, kotak, command):
    proc = run_debug("--broker", "kotak", *command, cwd=tmp_path,
                     env=kotak_env(kotak, KOTAK_LOGIN_URL=f"http://127.0.0.1:{closed_port()}"))  # fmt: skip
    assert proc.returncode == 1
    assert_no_leak(proc, kotak_secrets(kotak), "could not reach Kotak's TOTP login", "check KOTAK_LOGIN_URL")


LOGIN_FAULTS = [(endpoint, shape) for endpoint in ("login", "validate") for shape in (*ERROR_SHAPES, 429, 503)]
KOTAK_FAULTS = [*LOGIN_FAULTS, *(("file_paths", shape) for shape in ("invalid_session", "not_json", 401, 500)), ("csv", 404)]


@pytest.mark.parametrize(("endpoint", "shape"), KOTAK_FAULTS, ids=[f"{e}-{s}" for e, s in KOTAK_FAULTS])
@pytest.mark.slow
def test_kotak_broker_check_reports_every_error_shape_of_the_fake_without_a_credential(tmp_path, kotak, endpoint, shape):
    kotak.fail_next(endpoint, shape)
    proc = run_debug("--broker", "kotak", "--test-broker", cwd=tmp_path, env=kotak_env(kotak))
    assert proc.returncode == 1
    assert_no_leak(proc, kotak_secrets(kotak), "FAILED")


@LOG_FORMATS
@pytest.mark.slow
def test_kotak_broker_check_that_streams_a_tick_prints_neither_credentials_nor_session(tmp_path, kotak, log_format):
    infy = next(i for i in kotak_server.DEFAULT_INSTRUMENTS if i.key == "nse_cm|1594")
    kotak.send_ticks(kotak_server.random_tape([infy], seconds=1)[:1])  # the snapshot a new subscription gets
    proc = run_debug("--broker", "kotak", "--test-broker", cwd=tmp_path, env=kotak_env(kotak), log_format=log_format)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert kotak.session_tokens and kotak.session_sids
    assert_no_leak(proc, kotak_secrets(kotak), "first tick       ok", "result           OK", "logged in as PLNT7")


@LOG_FORMATS
@pytest.mark.slow
def test_kotak_daemon_whose_session_the_feed_refuses_logs_in_again_without_logging_credentials_or_sessions(
    tmp_path, kotak, log_format
):
    kotak.reject_sessions()  # every SFeed auth frame gets 1120: the daemon logs in again and again
    proc = run_debug("--broker", "kotak", *DAEMON, cwd=tmp_path, env=kotak_env(kotak), log_format=log_format)
    assert len(kotak.session_tokens) >= 2, proc.stderr
    assert_no_leak(proc, kotak_secrets(kotak), "the feed refused the session (1120)")


# ---- PostgreSQL and MQTT ---------------------------------------------------------------------


def pg_dsns(port: int) -> dict[str, str]:
    return {
        "url": f"postgresql://feeder:{PG_PASSWORD}@127.0.0.1:{port}/candles?connect_timeout=2",
        "key-value": f"host=127.0.0.1 port={port} user=feeder password={PG_PASSWORD} dbname=candles connect_timeout=2",
        "url-query": f"postgresql://feeder@127.0.0.1:{port}/candles?password={PG_PASSWORD}&connect_timeout=2",
        # libpq's parse error quotes the bad token back, here the password
        "malformed": f"postgresql://feeder:{PG_PASSWORD}%zz@127.0.0.1:{port}/candles",
    }


PG_FORMS = pytest.mark.parametrize("form", ["url", "key-value", "url-query", "malformed"])


@PG_FORMS
@pytest.mark.parametrize("command", [("--test-database",), ("--broker", "sim", *DAEMON)], ids=["database-check", "daemon"])
@pytest.mark.slow
def test_postgres_password_in_any_dsn_form_stays_out_of_a_failed_connection_report(tmp_path, form, command):
    proc = run_debug(*command, cwd=tmp_path, env=main_env(PG_CONN_STR=pg_dsns(closed_port())[form]))
    assert proc.returncode == (2 if form == "malformed" else 1)  # 2: a setting that cannot be right
    assert_no_leak(proc, (PG_PASSWORD,), "not a valid PostgreSQL connection string" if form == "malformed" else "refused")


def mqtt_env(**extra: str) -> dict[str, str]:
    return main_env(MQTT_HOST="127.0.0.1", MQTT_PORT=str(closed_port()), MQTT_USERNAME="feeder", MQTT_PASSWORD=MQTT_PASSWORD,
                    MQTT_HEARTBEAT_SECONDS="1", **extra)  # fmt: skip


@pytest.mark.slow
def test_mqtt_check_against_an_unreachable_broker_does_not_print_the_password(tmp_path):
    proc = run_debug("--test-mqtt", cwd=tmp_path, env=mqtt_env())
    assert proc.returncode == 1
    assert_no_leak(proc, (MQTT_PASSWORD,), "FAILED", "cannot connect to mqtt://127.0.0.1:")


@pytest.mark.slow
def test_daemon_publishing_to_an_unreachable_mqtt_broker_does_not_log_the_password(tmp_path):
    proc = run_debug("--broker", "sim", *DAEMON, cwd=tmp_path, env=mqtt_env())
    assert proc.returncode == 0, proc.stderr
    assert_no_leak(proc, (MQTT_PASSWORD,), "stopped:")


# ---- in-process: reprs and exception texts ----------------------------------------------------


def _shown(*objects: object) -> str:
    return "\n".join(f"{o!r}\n{o!s}" for o in objects)


def test_settings_repr_and_str_mask_every_planted_secret():
    env = {
        "PG_CONN_STR": pg_dsns(5432)["url"], "KITE_API_KEY": KITE_API_KEY, "KITE_API_SECRET": KITE_API_SECRET,
        "KITE_ACCESS_TOKEN": KITE_ACCESS_TOKEN, "KOTAK_CONSUMER_KEY": KOTAK_CONSUMER_KEY, "KOTAK_MOBILE_NUMBER": KOTAK_MOBILE,
        "KOTAK_UCC": KOTAK_UCC, "KOTAK_MPIN": KOTAK_MPIN, "KOTAK_TOTP_SECRET": KOTAK_TOTP_SECRET, "MQTT_HOST": "127.0.0.1",
        "MQTT_USERNAME": "feeder", "MQTT_PASSWORD": MQTT_PASSWORD,
    }  # fmt: skip
    settings = load_settings(env, env_file=None)
    assert settings.venues["kite"].api_secret == KITE_API_SECRET and settings.mqtt.password == MQTT_PASSWORD  # planted indeed
    text = _shown(settings)
    assert not leaks(text, (*KITE_SECRETS, *KOTAK_SECRETS, PG_PASSWORD, MQTT_PASSWORD)), text


def test_kite_broker_repr_and_str_mask_the_access_token():
    broker = KiteBroker(KITE_API_KEY, KITE_ACCESS_TOKEN, ws_url="ws://127.0.0.1:1")
    text = _shown(broker)
    assert "access_token='***'" in text
    assert not leaks(text, KITE_SECRETS), text


def test_kotak_auth_session_and_broker_reprs_show_neither_credentials_nor_session(kotak):
    auth = KotakAuth(KOTAK_CONSUMER_KEY, KOTAK_MOBILE, KOTAK_UCC, KOTAK_MPIN, KOTAK_TOTP_SECRET, login_url=kotak.login_url)
    session = auth.current()
    planted = KotakSession(token="plantedSessionJwt7a1b", sid="plantedSessionSid6c2d", ucc=KOTAK_UCC, base_url="http://x",
                           feed_url="ws://x", issued_at=0.0, expires_at=1.0, serial=1)  # fmt: skip
    broker = KotakNeoBroker(auth)
    text = _shown(auth, session, planted, broker)
    assert KOTAK_UCC in text  # the reprs do describe the objects
    assert not leaks(text, (*kotak_secrets(kotak), "plantedSessionJwt7a1b", "plantedSessionSid6c2d")), text


@PG_FORMS
def test_postgres_store_repr_description_and_connect_error_mask_the_password(form):
    shown = ""
    with pytest.raises(StoreError) as failed:
        store = PostgresStore(pg_dsns(closed_port())[form], connect_timeout=2)  # a malformed DSN fails here
        shown = _shown(store, store.description)
        assert "***" in store.description
        store.migrate()  # the others here: nothing listens on the port
    text = shown + _shown(failed.value) + repr(failed.value.args)
    assert not leaks(text, (PG_PASSWORD,)), text


def test_mqtt_config_repr_and_str_leave_out_the_password():
    config = MqttSettings(host="127.0.0.1", username="feeder", password=MQTT_PASSWORD)
    text = _shown(config)
    assert "feeder" in text
    assert not leaks(text, (MQTT_PASSWORD,)), text


@pytest.mark.parametrize(("endpoint", "shape"), LOGIN_FAULTS, ids=[f"{e}-{s}" for e, s in LOGIN_FAULTS])
def test_kotak_login_errors_carry_no_credential_in_their_text_or_in_the_debug_log(kotak, caplog, endpoint, shape):
    caplog.set_level("DEBUG")
    kotak.fail_next(endpoint, shape)
    auth = KotakAuth(KOTAK_CONSUMER_KEY, KOTAK_MOBILE, KOTAK_UCC, KOTAK_MPIN, KOTAK_TOTP_SECRET, login_url=kotak.login_url)
    with pytest.raises(KotakAuthError) as failed:
        auth.current()
    text = _shown(failed.value, auth) + repr(failed.value.args) + caplog.text
    assert not leaks(text, kotak_secrets(kotak)), text


def test_a_kotak_error_reply_that_echoes_the_credentials_is_scrubbed(kotak, caplog, monkeypatch):
    # a server may quote what it was sent; what reaches the operator must not
    echo = f"Invalid MPIN {KOTAK_MPIN} for {KOTAK_MOBILE} with key {KOTAK_CONSUMER_KEY}"
    monkeypatch.setitem(ERROR_SHAPES, "echo", (401, {"status": "error", "message": echo, "errorCode": "401"}))
    caplog.set_level("DEBUG")
    kotak.fail_next("validate", "echo")
    auth = KotakAuth(KOTAK_CONSUMER_KEY, KOTAK_MOBILE, KOTAK_UCC, KOTAK_MPIN, KOTAK_TOTP_SECRET, login_url=kotak.login_url)
    with pytest.raises(KotakAuthError) as failed:
        auth.current()
    text = _shown(failed.value) + caplog.text
    assert "Invalid MPIN ***" in str(failed.value)
    assert not leaks(text, kotak_secrets(kotak)), text


def test_planted_values_are_distinctive_enough_to_be_found():
    # the search itself: a leak in any of its forms is found, a look-alike is not
    assert leaks(f"url?access_token={KITE_ACCESS_TOKEN}&x", KITE_SECRETS) == [KITE_ACCESS_TOKEN]
    assert leaks(f"mobile={quote(KOTAK_MOBILE, safe='')}", (KOTAK_MOBILE,)) == [KOTAK_MOBILE]
    assert leaks(f"mpin {KOTAK_MPIN}.", (KOTAK_MPIN,)) == [KOTAK_MPIN]
    assert leaks(f"epoch 1{KOTAK_MPIN}0 and port 4829", (KOTAK_MPIN,)) == []
