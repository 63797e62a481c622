"""Kite's REST side through kiteconnect against the fake server: instruments and the login."""

import stat

import pytest
from kiteconnect import KiteConnect

from brokers.base import BrokerError
from brokers.kite.auth import generate_access_token, load_token, parse_request_token, save_token
from brokers.kite.instruments import KiteInstruments
from testkit.fakes.kite_server import KiteFakeServer

DAY = 1_795_491_900.0  # 2026-11-24 09:15 IST


@pytest.fixture(scope="module")
def server():
    with KiteFakeServer() as srv:
        yield srv


def _kite(server, token=None):
    return KiteConnect(server.api_key, access_token=token or server.access_token, root=server.api_url)


def test_symbols_resolve_to_tokens_and_unknown_ones_are_reported(server, tmp_path):
    table = KiteInstruments(_kite(server), tmp_path, clock=lambda: DAY)
    known, unknown = table.resolve([("NSE", "INFY"), ("NSE", "NOSUCH"), ("NSE", "RELIANCE")])
    assert [(i.symbol, i.token) for i in known] == [("INFY", 408065), ("RELIANCE", 738561)]
    assert unknown == ["NSE:NOSUCH"]


def test_instruments_dump_is_cached_per_day(server, tmp_path):
    before = len([r for r in server.rest_requests if r[1].startswith("/instruments")])
    now = [DAY]
    KiteInstruments(_kite(server), tmp_path, clock=lambda: now[0]).load()
    KiteInstruments(_kite(server), tmp_path, clock=lambda: now[0]).load()  # from the cache
    fetched = len([r for r in server.rest_requests if r[1].startswith("/instruments")]) - before
    assert fetched == 1
    now[0] = DAY + 86_400  # the next day needs a fresh dump, and the old file goes
    KiteInstruments(_kite(server), tmp_path, clock=lambda: now[0]).load()
    assert len([r for r in server.rest_requests if r[1].startswith("/instruments")]) - before == 2
    assert [p.name for p in tmp_path.glob("kite-instruments-*.csv")] == ["kite-instruments-2026-11-25.csv"]


def test_unreachable_instruments_endpoint_is_a_clear_error(tmp_path):
    kite = KiteConnect("k", access_token="t", root="http://127.0.0.1:9")
    with pytest.raises(BrokerError, match="could not download the Kite instruments dump"):
        KiteInstruments(kite, tmp_path).load()


@pytest.mark.parametrize(
    "pasted",
    ["abc123", "  abc123\n", "http://127.0.0.1/callback?request_token=abc123&action=login&status=success"],
)
def test_request_token_is_taken_bare_or_from_the_redirect_url(pasted):
    assert parse_request_token(pasted) == "abc123"


def test_garbage_instead_of_a_request_token_is_refused():
    with pytest.raises(BrokerError, match="request_token"):
        parse_request_token("not a token!")


def test_login_exchanges_the_request_token_and_the_token_file_is_private(server, tmp_path):
    kite = KiteConnect(server.api_key, root=server.api_url)
    token = generate_access_token(kite, server.request_token, server.api_secret)
    assert token == server.access_token
    path = save_token(tmp_path / "secrets" / "kite_token.json", token)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_token(path) == token
    assert _kite(server, token).profile()["user_id"] == server.user_id


def test_login_with_a_wrong_secret_says_what_to_check_without_the_secret(server):
    kite = KiteConnect(server.api_key, root=server.api_url)
    with pytest.raises(BrokerError) as err:
        generate_access_token(kite, server.request_token, "wrong-s3cret")
    assert "KITE_API_SECRET" in str(err.value)
    assert "wrong-s3cret" not in str(err.value)


def test_missing_token_file_means_no_token(tmp_path):
    assert load_token(tmp_path / "none.json") is None
