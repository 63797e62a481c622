"""The fake Kotak Neo server is faithful: the official SDK (kotakneoapi 3.0.9) logs in against it, reads its
scrip master, decodes its SFeed packets and streams its ticks exactly, and its faults look like the spec says."""

from __future__ import annotations

import asyncio
import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyotp
import pytest
import requests
import websocket

from testkit.fakes.kotak_server import (
    DEFAULT_DIVIDERS,
    DEFAULT_INSTRUMENTS,
    EXCHANGE_IDS,
    INTENTS,
    DepthLevel,
    FakeInstrument,
    KotakFakeServer,
    TapeTick,
    encode_cas,
    encode_index,
    encode_market_event,
    encode_market_picture,
    encode_market_status,
    encode_mini,
    encode_tick,
    jwt_public_key_pem,
    net_change_percent_raw,
    random_tape,
    split_batch,
    synthetic_instruments,
)

os.environ.setdefault("NEO_LOG_FILE_ENABLED", "false")  # importing the SDK would otherwise create ./logs/

import jwt  # noqa: E402 - PyJWT comes with the SDK
from neo_api_client import NeoAPI  # noqa: E402
from neo_api_client.utils import neo_utility  # noqa: E402
from neo_api_client.websocket.feed import SFeedWebSocket, WsToken  # noqa: E402
from neo_api_client.websocket.feed.exceptions import AuthenticationError  # noqa: E402
from neo_api_client.websocket.feed.protocol import decode_packet  # noqa: E402
from neo_api_client.websocket.feed.protocol import split_batch as sdk_split_batch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
INST = {i.feed_key: i for i in DEFAULT_INSTRUMENTS}
BY_KEY = {i.key: i for i in DEFAULT_INSTRUMENTS}
INFY, TCS, NIFTY50 = INST["nse_cm|1594"], INST["nse_cm|11536"], INST["nse_cm|Nifty 50"]
SENSEX, BSE_INFY, NIFTY_FUT = INST["bse_cm|SENSEX"], INST["bse_cm|500209"], INST["nse_fo|52168"]
NIFTY_CE, USDINR, CRUDE = INST["nse_fo|52213"], INST["cde_fo|1201"], INST["mcx_fo|451669"]
SDK_DIVIDERS = {EXCHANGE_IDS[seg]: d for seg, d in DEFAULT_DIVIDERS.items()}  # what the SDK keeps from the auth reply

# The test vector of Kotak's websocket.md (section 10): a mini touch line for nse_cm 11536.
SPEC_MINI_VECTOR = bytes.fromhex(
    "36 00 28 1c 01 01 00 07 00 10 2d 00 00 80 26 b4 68 00 00 00 00 40 e2 01 00 32 00 00 00 00 00 00 00 90 dc 01 00 "
    "77 00 00 00 b0 05 00 00 01 00 00 00 02 01 00 00 00".replace(" ", "")
)


class Clock:
    """An injected wall clock that tests move by hand."""

    def __init__(self, now: float = 1768448700.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server() -> Iterator[KotakFakeServer]:
    with KotakFakeServer(clock=Clock()) as s:  # a fixed clock: TOTP codes and expiry do not depend on the wall clock
        yield s


@pytest.fixture
def sdk_at(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Point the SDK's module-level production hosts at a fake; returns a factory of logged-out NeoAPI clients."""

    def make(server: KotakFakeServer) -> NeoAPI:
        monkeypatch.setattr(neo_utility, "SESSION_PROD_BASE_URL", server.login_url)
        monkeypatch.setattr(neo_utility, "PROD_BASE_URL", server.api_url)
        monkeypatch.setattr(neo_utility, "CONFIG_SERVICE_URL_PROD", server.config_url)
        return NeoAPI(consumer_key=server.consumer_key, environment="prod")

    return make


def sdk_login(client: NeoAPI, server: KotakFakeServer) -> dict[str, Any]:
    login = client.totp_login(mobile_number=server.mobile_number, ucc=server.ucc, totp=server.totp_now())
    assert "data" in login, login
    return client.totp_validate(mpin=server.mpin)


def ws_open(server: KotakFakeServer, sid: str | None = None, **frame: Any) -> websocket.WebSocket:
    """A raw client past the auth frame (the reply is checked to be a success)."""
    ws = websocket.create_connection(server.ws_url, timeout=2)
    if sid is None:
        sid = server.grant_session()[1]
    ws.send(json.dumps({"user": server.ucc, "auth": sid, "format": "native_batch", "source": "NEOTRADEAPI", **frame}))
    reply = json.loads(ws.recv())
    assert reply["message_code"] in (1117, 1119), reply
    return ws


def subscribe(ws: websocket.WebSocket, event: str, keys: list[str], ack: bool = True) -> None:
    msg: dict[str, Any] = {"event": event, "inputtoken": ",".join(keys)}
    if ack:
        msg["ack_symbol"] = True
    ws.send(json.dumps(msg))


def recv_json(ws: websocket.WebSocket) -> dict[str, Any]:
    opcode, data = ws.recv_data()
    assert opcode == websocket.ABNF.OPCODE_TEXT, (opcode, data[:40])
    return json.loads(data)


def until_pong(ws: websocket.WebSocket) -> list[tuple[int, bytes]]:
    """Ping and collect every frame before the pong: the server handles a client's frames in order, so whatever
    its earlier frames caused has been sent by then."""
    ws.ping(b"barrier")
    frames = []
    while (frame := ws.recv_data(control_frame=True))[0] != websocket.ABNF.OPCODE_PONG:
        frames.append(frame)
    return frames


def recv_packets(ws: websocket.WebSocket, n: int) -> list[bytes]:
    """Read binary frames until ``n`` packets have arrived (text frames are not expected here)."""
    packets: list[bytes] = []
    while len(packets) < n:
        opcode, data = ws.recv_data()
        assert opcode == websocket.ABNF.OPCODE_BINARY, data[:80]
        packets.extend(split_batch(data))
    assert len(packets) == n
    return packets


def expected_scrip(t: TapeTick, level: int, inst: FakeInstrument) -> dict[str, Any]:
    """What the SDK's SFeedScrip should hold for a resolved tick (floats from the exact Decimals)."""
    per_side = {4: 1, 8: 5, 16: 20}[level]

    def side(levels: tuple[DepthLevel, ...]) -> list[dict[str, Any]]:
        return [{"quantity": lv.quantity, "price": float(lv.price), "orders": lv.orders} for lv in levels[:per_side]]

    assert t.close is not None and t.average_price is not None and t.total_traded_value is not None
    return {
        "type": "scrip", "exchange_segment": t.segment, "instrument_token": str(t.token), "level": level,
        "last_traded_price": float(t.last_price), "open_price": float(t.open), "high_price": float(t.high),
        "low_price": float(t.low), "close_price": float(t.close), "average_trade_price": float(t.average_price),
        "last_trade_time": t.last_trade_ts, "last_update_time": t.exchange_ts, "last_trade_qty": t.last_quantity,
        "total_buy_quantity": t.total_buy_quantity, "total_sell_quantity": t.total_sell_quantity,
        "volume_traded_today": t.volume, "open_interest": t.oi, "net_change": float(t.last_price - t.close),
        "net_change_percent": net_change_percent_raw(t.last_price, t.close) / 100,
        "upper_circuit_limit": float(t.upper_circuit), "lower_circuit_limit": float(t.lower_circuit),
        "yearly_high": float(t.yearly_high), "yearly_low": float(t.yearly_low),
        "total_traded_value": float(t.total_traded_value), "market_lot": max(inst.lot_size, 1),
        "precision": inst.precision, "multiplier": inst.multiplier, "auction": False,
        "buy": side(t.bids), "sell": side(t.asks),
    }  # fmt: skip


def expected_lite(t: TapeTick, inst: FakeInstrument) -> dict[str, Any]:
    assert t.close is not None
    return {
        "type": "scrip_lite", "exchange_segment": t.segment, "instrument_token": str(t.token),
        "last_traded_price": float(t.last_price), "last_trade_time": t.last_trade_ts, "last_trade_qty": t.last_quantity,
        "close_price": float(t.close), "net_change": float(t.last_price - t.close),
        "net_change_percent": net_change_percent_raw(t.last_price, t.close) / 100, "market_lot": max(inst.lot_size, 1),
        "precision": inst.precision, "multiplier": inst.multiplier,
    }  # fmt: skip


def expected_index(t: TapeTick, inst: FakeInstrument) -> dict[str, Any]:
    assert t.close is not None
    div = DEFAULT_DIVIDERS[t.segment]
    return {
        "type": "index", "exchange_segment": t.segment, "instrument_token": str(t.token), "name": inst.trading_symbol,
        "last_traded_price": float(t.last_price), "open_price": float(t.open), "high_price": float(t.high),
        "low_price": float(t.low), "close_price": float(t.close), "change": float(t.last_price - t.close),
        "net_change_percent": net_change_percent_raw(t.last_price, t.close) / 100, "yearly_high": float(t.yearly_high),
        "yearly_low": float(t.yearly_low), "last_trade_time": t.exchange_ts, "precision": inst.precision,
        "multiplier": inst.multiplier / div,  # the SDK divides an index's multiplier by the price divider
    }  # fmt: skip


def expected_for(t: TapeTick, intent: str, inst: FakeInstrument) -> dict[str, Any]:
    if inst.is_index:
        return expected_index(t, inst)
    if intent == "scrips_lite":
        return expected_lite(t, inst)
    return expected_scrip(t, {"scrips": 4, "depth": 8, "full_depth": 16}[intent], inst)


def dump(message: Any) -> dict[str, Any]:
    d = message.model_dump()
    d.pop("trading_symbol", None)
    return d


# ---------------------------------------------------------------------------------------------- encoder vs SDK decoder


def test_encoder_reproduces_the_spec_mini_touch_line_vector_byte_for_byte() -> None:
    tick = TapeTick("nse_cm", 11536, Decimal("1234.56"), 50, 0, 1756636800, close=Decimal("1220.00"))
    assert encode_mini(tick, seq=7) == SPEC_MINI_VECTOR
    decoded = decode_packet(SPEC_MINI_VECTOR, {1: 100})
    assert (decoded.instrument_token, decoded.last_traded_price, decoded.last_trade_qty) == ("11536", 1234.56, 50)
    assert (decoded.net_change, decoded.net_change_percent, decoded.close_price) == (14.56, 1.19, 1220.0)


def test_sdk_decoder_reads_every_market_data_packet_kind_exactly() -> None:
    """Every instrument of a whole tape, in every intent it supports, through the SDK's own decode_packet."""
    tape = random_tape(seconds=20, seed=7)
    last: dict[str, TapeTick] = {}
    for t in tape:
        last[t.key] = t
    assert len(last) == len(DEFAULT_INSTRUMENTS)
    kinds = 0
    for key, t in last.items():
        inst = BY_KEY[key]
        for intent in ("index",) if inst.is_index else ("scrips_lite", "scrips", "depth", "full_depth"):
            packet = encode_tick(t, intent, inst)
            (length,) = struct.unpack_from("<H", packet)
            assert length == len(packet), (key, intent)
            assert dump(decode_packet(packet, SDK_DIVIDERS)) == expected_for(t, intent, inst), (key, intent)
            kinds += 1
    assert kinds == 2 + 4 * (len(DEFAULT_INSTRUMENTS) - 2)


def test_sdk_decoder_reads_market_status_open_close_and_cas_packets() -> None:
    status = decode_packet(encode_market_status("nse_cm", 1), SDK_DIVIDERS)
    assert (status.type, status.exchange_segment, status.status_code) == ("market_status", "nse_cm", 1)
    closing = decode_packet(encode_market_status("bse_cm", 6, ""), SDK_DIVIDERS)
    assert (closing.exchange_segment, closing.status_code) == ("bse_cm", 6)
    for opened, code in ((True, 1), (False, 2)):
        event = decode_packet(encode_market_event("nse_fo", opened), SDK_DIVIDERS)
        assert (event.type, event.exchange_segment, event.status_code) == ("market_status", "nse_fo", code)
    cas_packet = encode_cas("nse_cm", 11536, Decimal("3210.55"), 1200, -300)
    assert len(cas_packet) == 48  # DOC's layout; the SDK reads the first 24 body bytes
    cas = decode_packet(cas_packet, SDK_DIVIDERS)
    assert (cas.type, cas.instrument_token, cas.ref_price, cas.imbalance_qty, cas.imbalance_qty_at_market) == (
        "cas_change", "11536", 3210.55, 1200, -300)  # fmt: skip
    assert decode_packet(encode_cas("nse_cm", 11536, Decimal(0), 0, 0), SDK_DIVIDERS) is None  # SDK drops empty CAS


def test_dividers_scale_each_segment_and_a_missing_divider_means_100() -> None:
    usdinr = TapeTick("cde_fo", 1201, Decimal("90.1225"), 1, 10, 1768448700, close=Decimal("90.0000"))
    packet = encode_market_picture(usdinr, 4)
    assert struct.unpack_from("<I", packet, 69)[0] == 901_225_000  # LTP at @69, ×1e7
    assert decode_packet(packet, SDK_DIVIDERS).last_traded_price == 90.1225
    infy = TapeTick("nse_cm", 1594, Decimal("1573.15"), 1, 10, 1768448700)
    assert decode_packet(encode_market_picture(infy, 4), {}).last_traded_price == 1573.15


def test_batched_frames_split_identically_with_the_sdk() -> None:
    tape = random_tape(seconds=2, seed=1)
    frame = b"".join(encode_tick(t, "index" if BY_KEY[t.key].is_index else "depth", BY_KEY[t.key]) for t in tape)
    assert sdk_split_batch(frame) == split_batch(frame)
    assert sdk_split_batch(frame + b"\x05\x00\x01") == split_batch(frame)  # a short or bogus tail is dropped


def test_encoder_refuses_values_the_wire_cannot_carry() -> None:
    with pytest.raises(ValueError, match="1/100"):
        encode_mini(TapeTick("nse_cm", 1594, Decimal("1573.155"), 1, 1, 1))
    with pytest.raises(ValueError, match="21 bytes"):
        encode_index(TapeTick("nse_cm", 26000, Decimal("1"), 0, 0, 1), "A NAME LONGER THAN TWENTY ONE")
    with pytest.raises(ValueError, match="unknown exchange segment"):
        encode_mini(TapeTick("nse_xx", 1, Decimal("1"), 1, 1, 1))


def test_random_tape_is_deterministic_on_the_tick_grid_with_rising_volume_and_quote_only_repeats() -> None:
    tape = random_tape(seconds=30, seed=3)
    assert tape == random_tape(seconds=30, seed=3)
    assert tape != random_tape(seconds=30, seed=4)
    assert [t.exchange_ts for t in tape] == sorted(t.exchange_ts for t in tape)
    quote_only = 0
    for inst in DEFAULT_INSTRUMENTS:
        series = [t for t in tape if (t.segment, t.token) == (inst.segment, inst.token)]
        assert series, inst.trading_symbol
        assert all(t.last_price % inst.tick_size == 0 for t in series), inst.trading_symbol
        volumes = [t.volume for t in series]
        assert volumes == sorted(volumes), inst.trading_symbol
        if not inst.is_index:
            assert volumes[-1] > volumes[0], inst.trading_symbol
            quote_only += sum(1 for a, b in zip(series, series[1:]) if (a.volume, a.last_price) == (b.volume, b.last_price))
    assert quote_only > 0


# ---------------------------------------------------------------------------------------------- login with the SDK


def test_sdk_totp_login_and_validate_yield_a_trade_token_base_url_and_feed_url(server: KotakFakeServer, sdk_at: Any) -> None:
    client = sdk_at(server)
    login = client.totp_login(mobile_number=server.mobile_number, ucc=server.ucc, totp=server.totp_now())
    assert login["data"]["kType"] == "View" and login["data"]["status"] == "success"
    validate = client.totp_validate(mpin=server.mpin)
    data = validate["data"]
    cfg = client.configuration
    assert (cfg.edit_token, cfg.edit_sid, cfg.base_url, cfg.ucc) == (data["token"], data["sid"], server.api_url, server.ucc)
    assert cfg.feed_url == server.feed_url  # validate's feedUrl
    assert cfg.sfeed_websocket_url == server.config_feed_url  # the config service wins, as in production
    assert data["sid"] != login["data"]["sid"]  # the feed needs the validate sid, not the login one
    claims = jwt.decode(data["token"], jwt_public_key_pem(), algorithms=["RS256"], options={"verify_exp": False})
    assert claims["kType"] == "Trade" and claims["ucc"] == server.ucc and claims["exp"] > claims["iat"]
    assert jwt.get_unverified_header(data["token"])["alg"] == "RS256"
    assert (server.login_attempts, server.validate_attempts, server.logins_completed, server.config_requests) == (1, 1, 1, 1)
    (_, _, _, login_headers, login_body), (_, _, _, validate_headers, _) = server.rest_requests[:2]
    assert login_headers["authorization"] == server.consumer_key and login_headers["neo-fin-key"] == "neotradeapi"
    assert json.loads(login_body) == {"mobileNumber": server.mobile_number, "ucc": server.ucc, "totp": server.totp_now()}
    assert (validate_headers["sid"], validate_headers["auth"]) == (login["data"]["sid"], login["data"]["token"])


def test_sdk_accepts_a_totp_one_step_old_and_refuses_one_two_steps_old(server: KotakFakeServer, sdk_at: Any) -> None:
    client = sdk_at(server)
    assert "data" in client.totp_login(mobile_number=server.mobile_number, ucc=server.ucc, totp=server.totp_now(-1))
    stale = server.totp_now(-2)
    result = client.totp_login(mobile_number=server.mobile_number, ucc=server.ucc, totp=stale)
    assert result == {"status": "error", "message": "Invalid credentials or TOTP.", "errorCode": "401"}
    assert server.login_attempts == 2


def test_sdk_login_with_a_wrong_totp_fails_clearly_and_sets_no_token(server: KotakFakeServer, sdk_at: Any) -> None:
    client = sdk_at(server)
    wrong = f"{(int(server.totp_now()) + 1) % 1_000_000:06d}"
    result = client.totp_login(mobile_number=server.mobile_number, ucc=server.ucc, totp=wrong)
    assert result == {"status": "error", "message": "Invalid credentials or TOTP.", "errorCode": "401"}
    assert client.configuration.view_token is None
    assert "Complete the 2fa process" in client.positions()["Error Message"]


@pytest.mark.parametrize(
    ("style", "expected"),
    [
        ("http_401", {"status": "error", "message": "Invalid MPIN.", "errorCode": "401"}),
        ("http_200", {"stCode": 401, "errMsg": "Invalid MPIN", "status": "failure"}),
    ],
)
def test_sdk_validate_with_a_wrong_mpin_fails_clearly_in_either_error_style(
    style: str, expected: dict[str, Any], sdk_at: Any
) -> None:
    with KotakFakeServer(credential_errors=style) as server:
        client = sdk_at(server)
        assert "data" in client.totp_login(mobile_number=server.mobile_number, ucc=server.ucc, totp=server.totp_now())
        assert client.totp_validate(mpin="654321") == expected
        assert client.configuration.edit_token is None and server.logins_completed == 0
        assert "data" in client.totp_validate(mpin=server.mpin)  # the view token is still good for a retry


def test_http_200_style_reports_a_wrong_ucc_with_st_code(sdk_at: Any) -> None:
    with KotakFakeServer(credential_errors="http_200") as server:
        result = sdk_at(server).totp_login(mobile_number=server.mobile_number, ucc="OTHER", totp=server.totp_now())
        assert result == {"stCode": 429, "errMsg": "Invalid UCC", "status": "failure"}


@pytest.mark.parametrize(
    ("endpoint", "shape", "status"),
    [
        ("login", 500, 500), ("login", 503, 503), ("login", 429, 429), ("login", "invalid_ucc_200", 200),
        ("login", "missing_header", 400), ("validate", "missing_data", 200), ("validate", "no_data_200", 200),
        ("validate", 504, 504), ("validate", "invalid_session", 403), ("validate", "missing_field", 400),
    ],
)  # fmt: skip
def test_forced_error_shapes_reach_the_sdk_as_json_without_data(
    server: KotakFakeServer, sdk_at: Any, endpoint: str, shape: str | int, status: int
) -> None:
    client = sdk_at(server)
    server.fail_next(endpoint, shape)
    if endpoint == "validate":
        assert "data" in client.totp_login(mobile_number=server.mobile_number, ucc=server.ucc, totp=server.totp_now())
        result = client.totp_validate(mpin=server.mpin)
    else:
        result = client.totp_login(mobile_number=server.mobile_number, ucc=server.ucc, totp=server.totp_now())
    assert isinstance(result, dict) and "data" not in result, result
    assert client.configuration.edit_token is None
    raw = requests.post(server.login_endpoint, json={}, headers={"Authorization": server.consumer_key}, timeout=5)
    assert raw.status_code == 400  # the fault was used once; the next call is judged normally
    if isinstance(shape, int):
        assert result == {"error": [{"code": str(status), "message": result["error"][0]["message"]}], "stat": "Not_Ok"}


def test_a_non_json_reply_gives_the_sdk_its_unexpected_format_error(server: KotakFakeServer, sdk_at: Any) -> None:
    server.fail_next("login", "not_json")
    result = sdk_at(server).totp_login(mobile_number=server.mobile_number, ucc=server.ucc, totp=server.totp_now())
    assert result == {"Error": "Unexpected response format. Expected JSON but received something else."}


def test_wrong_consumer_key_missing_headers_and_bad_view_tokens_are_refused(server: KotakFakeServer) -> None:
    body = {"mobileNumber": server.mobile_number, "ucc": server.ucc, "totp": server.totp_now()}
    good = {"Authorization": server.consumer_key, "neo-fin-key": "neotradeapi"}
    r = requests.post(server.login_endpoint, json=body, headers={**good, "Authorization": "not-the-key"}, timeout=5)
    assert (r.status_code, r.json()["message"]) == (401, "Invalid credentials or TOTP.")
    r = requests.post(server.login_endpoint, json=body, headers={"Authorization": server.consumer_key}, timeout=5)
    assert (r.status_code, r.json()) == (400, {"error": [{"code": "10512", "message": "Required header not found."}]})
    view = requests.post(server.login_endpoint, json=body, headers=good, timeout=5).json()["data"]
    r = requests.post(server.validate_endpoint, json={"mpin": server.mpin}, timeout=5,
                      headers={**good, "sid": view["sid"], "Auth": "someone-else's-token"})  # fmt: skip
    assert r.status_code == 403
    r = requests.post(server.validate_endpoint, json={}, headers={**good, "sid": view["sid"], "Auth": view["token"]}, timeout=5)
    assert r.json() == {"error": [{"code": "400", "message": "Missing required field 'Mpin'"}]}
    assert server.login_attempts == 3 and server.validate_attempts == 2 and server.logins_completed == 0


def test_a_reused_totp_is_refused_when_asked_to(sdk_at: Any) -> None:
    with KotakFakeServer(reject_reused_totp=True) as server:
        client = sdk_at(server)
        code = server.totp_now()
        assert "data" in client.totp_login(mobile_number=server.mobile_number, ucc=server.ucc, totp=code)
        assert "data" not in client.totp_login(mobile_number=server.mobile_number, ucc=server.ucc, totp=code)


def test_token_lifetime_sets_exp_and_an_expired_login_cannot_open_the_feed(sdk_at: Any) -> None:
    clock = Clock()
    with KotakFakeServer(token_lifetime=60, clock=clock) as server:
        client = sdk_at(server)
        sdk_login(client, server)
        claims = jwt.decode(client.configuration.edit_token, options={"verify_signature": False})
        assert (claims["iat"], claims["exp"]) == (int(clock.now), int(clock.now) + 60)
        ws_open(server, client.configuration.edit_sid).close()
        clock.now += 61
        ws = websocket.create_connection(server.ws_url, timeout=2)
        ws.send(json.dumps({"user": server.ucc, "auth": client.configuration.edit_sid, "format": "native_batch"}))
        assert recv_json(ws)["message_code"] == 1120
        ws.close()
        new = KotakFakeServer(clock=clock)
        assert new.token_lifetime is None
        with new:
            token = new.grant_session()[0]
            exp = jwt.decode(token, options={"verify_signature": False})["exp"]
            assert exp == 1768501800  # 2026-01-16 00:00 IST: without a lifetime a login lasts until midnight IST


# ---------------------------------------------------------------------------------------------- scrip master


def test_sdk_finds_dated_csv_files_and_search_scrip_parses_them_with_the_expiry_quirk(
    server: KotakFakeServer, sdk_at: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEO_SCRIP_CACHE_DIR", str(tmp_path))
    client = sdk_at(server)  # the scrip master needs only the consumer key, no login
    paths = client.scrip_master()
    assert paths["baseFolder"] == f"{server.lapi_url}/wso2-scripmaster/v1/prod"
    assert client.scrip_master(exchange_segment="nse_cm") == server.scrip_csv_url("nse_cm")
    assert server.scrip_csv_url("nse_cm").endswith(f"/{server.scrip_master_date}/transformed-v1/nse_cm-v1.csv")
    assert server.scrip_csv_url("nse_fo").endswith(f"/{server.scrip_master_date}/transformed/nse_fo.csv")
    infy = client.search_scrip(exchange_segment="nse_cm", symbol="infy")
    assert [(r["pSymbol"], r["pTrdSymbol"], r["pExchSeg"]) for r in infy] == [(1594, "INFY-EQ", "nse_cm")]
    fut = client.search_scrip(exchange_segment="nse_fo", symbol="nifty", option_type="FUT", expiry="27Jan2026")
    assert [(r["pSymbol"], r["pTrdSymbol"], r["lLotSize"]) for r in fut] == [(52168, "NIFTY26JANFUT", 75)]
    ce = client.search_scrip(exchange_segment="nse_fo", symbol="nifty", option_type="CE", strike_price="26000")
    assert [r["pTrdSymbol"] for r in ce] == ["NIFTY26JAN26000CE"]
    mcx = client.search_scrip(exchange_segment="mcx_fo", symbol="crudeoil", expiry="19Jan2026")
    assert [r["pTrdSymbol"] for r in mcx] == ["CRUDEOIL26JANFUT"]  # mcx expiries are plain Unix time
    assert server.file_paths_requests >= 3


def test_scrip_csv_keeps_the_header_quirks_and_lists_hundreds_of_synthetic_instruments() -> None:
    with KotakFakeServer(instruments=DEFAULT_INSTRUMENTS + synthetic_instruments(300)) as server:
        r = requests.get(server.file_paths_url, headers={"Authorization": server.consumer_key}, timeout=5)
        files = r.json()["data"]["filesPaths"]
        cm = requests.get(next(f for f in files if "nse_cm" in f), timeout=5)  # the files need no auth
        lines = cm.text.splitlines()
        header = lines[0].split(",")
        assert header[:3] == ["pSymbol", "pGroup", "pExchSeg"] and len(header) == 78
        assert {"dTickSize ", "lExpiryDate ", "lMultiplier ", "dStrikePrice;"} <= set(header)
        rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
        assert len(rows) == 4 + 300  # INFY, TCS, RELIANCE, Nifty 50 and the synthetic ones
        syn = next(r for r in rows if r["pTrdSymbol"] == "SYN0300-EQ")
        assert (syn["pSymbol"], syn["dTickSize "], syn["lLotSize"], syn["lPrecision"]) == ("100300", "5", "1", "2")
        fo = requests.get(server.scrip_csv_url("nse_fo"), timeout=5).text.splitlines()
        fo_rows = [dict(zip(fo[0].split(","), line.split(","))) for line in fo[1:]]
        ce = next(r for r in fo_rows if r["pOptionType"] == "CE")
        assert (ce["dStrikePrice;"], ce["dTickSize "]) == ("2.6e+06", "5")  # strikes in paise, written as %g
        assert int(ce["pExpiryDate"]) + 315513000 == NIFTY_CE.expiry  # nse_fo: seconds from 1980-01-01 00:00 IST
        assert fo[0].split(",")[-1] == "CASEligible"
        assert requests.get(server.file_paths_url, timeout=5).status_code == 401  # the list needs the consumer key
        stale = server.scrip_csv_url("nse_cm").replace(server.scrip_master_date, "2020-01-01")
        assert requests.get(stale, timeout=5).status_code == 404  # the folder is dated


# ---------------------------------------------------------------------------------------------- the SDK's feed client


def run_sdk(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


async def take(ws: SFeedWebSocket, n: int) -> list[Any]:
    return [await asyncio.wait_for(ws.__anext__(), 5) for _ in range(n)]


def test_sdk_feed_client_receives_every_kind_of_tick_exactly_with_trading_symbols(server: KotakFakeServer, sdk_at: Any) -> None:
    client = sdk_at(server)
    sdk_login(client, server)
    plan = {
        "scrips": [INFY, BSE_INFY], "scrips_lite": [INFY, USDINR], "depth": [TCS, CRUDE], "full_depth": [NIFTY_FUT],
        "index": [NIFTY50, SENSEX],
    }  # fmt: skip
    tape = random_tape(seconds=3, seed=5)
    expected: list[tuple[str, dict[str, Any], str]] = []

    async def main() -> list[Any]:
        ws = client.create_websocket(reconnect_delay=0, max_connect_retries=0)
        assert ws.url == server.config_feed_url.replace("http://", "ws://")
        await ws.connect()
        try:
            for intent, insts in plan.items():
                await getattr(ws, f"subscribe_{intent}")([WsToken(i.segment, i.feed_key.partition("|")[2]) for i in insts])
            await ws.subscribe_exchange()
            assert ws.trading_symbols["nse_cm|Nifty 50"] == "Nifty 50"
            await asyncio.to_thread(server.wait_subscribed, [i.feed_key for insts in plan.values() for i in insts])
            sent = await asyncio.to_thread(server.send_ticks, tape)
            for t in tape:  # random_tape ticks are fully specified, so they are what the server sends
                inst = BY_KEY[t.key]
                for intent in INTENTS:
                    if inst in plan[intent]:
                        expected.append((intent, expected_for(t, intent, inst), inst.trading_symbol))
            assert sent == len(expected)
            await asyncio.to_thread(server.send_market_status, "nse_cm", 2)
            await asyncio.to_thread(server.send_cas, "nse_cm", TCS.token, Decimal("3210.55"), 500, 20)
            return await take(ws, sent + 2)
        finally:
            await ws.close()

    got = run_sdk(main())
    ticks, extra = got[:-2], got[-2:]
    assert [dump(m) for m in ticks] == [e for _, e, _ in expected]  # order kept: one frame per tape tick batch
    assert [m.trading_symbol for m in ticks] == [s for _, _, s in expected]
    assert {e["type"] for _, e, _ in expected} == {"scrip", "scrip_lite", "index"}
    assert {e.get("level") for _, e, _ in expected} >= {4, 8, 16}
    status, cas = extra
    assert (status.type, status.exchange_segment, status.status_code) == ("market_status", "nse_cm", 2)
    assert (cas.type, cas.instrument_token, cas.ref_price, cas.trading_symbol) == ("cas_change", "11536", 3210.55, "TCS-EQ")
    assert (server.handshakes, server.auth_successes) == (1, 1)


def test_sdk_feed_client_auth_frame_and_subscribe_frames_match_the_spec(server: KotakFakeServer, sdk_at: Any) -> None:
    client = sdk_at(server)
    sdk_login(client, server)

    async def main() -> None:
        ws = client.create_websocket(max_connect_retries=0)
        await ws.connect()
        try:
            await ws.subscribe_scrips([WsToken("nse_cm", "1594"), WsToken("nse_cm", "11536")])
            await ws.unsubscribe_scrips([WsToken("nse_cm", "11536")])
            await asyncio.to_thread(server.wait_unsubscribed, ["nse_cm|11536"])
            conn = server.connections[0]
            assert conn.subscriptions == {"nse_cm|1594": frozenset({"scrips"})}
            auth = conn.auth
            assert auth is not None
            assert (auth["user"], auth["auth"], auth["format"]) == (server.ucc, client.configuration.edit_sid, "native_batch")
            assert conn.messages[1:] == [
                {"event": "subscribeScrips", "inputtoken": "nse_cm|1594,nse_cm|11536", "ack_symbol": True},
                {"event": "unsubscribeScrips", "inputtoken": "nse_cm|11536"},  # no ack_symbol on unsubscribes
            ]
            assert conn.path == "/betafeed"
        finally:
            await ws.close()

    run_sdk(main())


def test_sdk_feed_client_reconnects_after_drop_all_and_resubscribes(server: KotakFakeServer, sdk_at: Any) -> None:
    client = sdk_at(server)
    sdk_login(client, server)
    tick = TapeTick("nse_cm", INFY.token, Decimal("1600.05"), 7, 1000, 1768448760)

    async def main() -> Any:
        ws = client.create_websocket(reconnect_delay=0, max_connect_retries=0)
        await ws.connect()
        try:
            await ws.subscribe_scrips([WsToken("nse_cm", "1594")])
            await asyncio.to_thread(server.wait_subscribed, ["nse_cm|1594"])
            await asyncio.to_thread(server.drop_all)
            await asyncio.to_thread(server.wait_auth_attempts, 2)
            await asyncio.to_thread(server.wait_subscribed, ["nse_cm|1594"])
            assert await asyncio.to_thread(server.send_ticks, [tick]) == 1
            return (await take(ws, 1))[0]
        finally:
            await ws.close()

    message = run_sdk(main())
    assert (message.instrument_token, message.last_traded_price, message.trading_symbol) == ("1594", 1600.05, "INFY-EQ")
    assert server.handshakes == 2 and server.auth_successes == 2


def test_sdk_feed_client_fails_authentication_with_1120_on_an_expired_login(server: KotakFakeServer, sdk_at: Any) -> None:
    client = sdk_at(server)
    sdk_login(client, server)
    server.expire_sessions()

    async def main() -> None:
        ws = client.create_websocket(max_connect_retries=0)
        with pytest.raises(AuthenticationError, match="1120"):
            await ws.connect()
        if ws._ws is not None:  # the SDK leaves the socket to the caller when auth fails
            await ws._ws.close()

    run_sdk(main())
    assert server.auth_failures == 1


# ---------------------------------------------------------------------------------------------- raw WebSocket: replies and faults


def test_auth_reply_carries_every_exchange_divider_and_can_send_both_auth_codes() -> None:
    with KotakFakeServer(auth_codes=(1119, 1117)) as server:
        ws = websocket.create_connection(server.ws_url, timeout=2)
        ws.send(json.dumps({"user": server.ucc, "auth": server.grant_session()[1], "format": "native_batch", "sdk_version": 2}))
        first, second = recv_json(ws), recv_json(ws)
        assert (first["message_code"], second["message_code"]) == (1119, 1117)
        assert first["exchanges"]["cde_fo"] == {"value": 3, "divider": 10_000_000}
        assert {k: v["divider"] for k, v in first["exchanges"].items()} == DEFAULT_DIVIDERS
        assert "format" not in first
        ws.close()


def test_a_client_asking_for_another_format_gets_native_fallback_and_no_binary(server: KotakFakeServer) -> None:
    ws = websocket.create_connection(server.ws_url, timeout=2)
    ws.send(json.dumps({"user": server.ucc, "auth": server.grant_session()[1], "format": "json"}))
    assert recv_json(ws)["format"] == "native_fallback"
    subscribe(ws, "subscribeScrips", ["nse_cm|1594"], ack=False)
    server.wait_subscribed(["nse_cm|1594"])
    assert server.send_ticks([TapeTick("nse_cm", 1594, Decimal("1500"), 1, 1, 1768448700)]) == 0
    ws.close()


@pytest.mark.parametrize("why", ["unknown sid", "wrong user", "not json", "rejected"])
def test_a_bad_auth_frame_gets_1120_then_a_close_frame(server: KotakFakeServer, why: str) -> None:
    sid = server.grant_session()[1]
    frame: Any = {"user": server.ucc, "auth": sid, "format": "native_batch"}
    if why == "unknown sid":
        frame["auth"] = "00000000-0000-0000-0000-000000000000"
    elif why == "wrong user":
        frame["user"] = "SOMEONE"
    elif why == "not json":
        frame = "hello"
    else:
        server.reject_sessions()
    ws = websocket.create_connection(server.ws_url, timeout=2)
    ws.send(frame if isinstance(frame, str) else json.dumps(frame))
    reply = recv_json(ws)
    assert reply["message_code"] == 1120 and reply["message"].startswith("Auth failed")
    opcode, data = ws.recv_data(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE and struct.unpack(">H", data[:2])[0] == 1000
    server.wait_connections(0)
    assert (server.auth_failures, server.auth_successes) == (1, 0)
    server.reject_sessions(False)
    ws_open(server, sid).close()


def test_expire_sessions_with_kick_sends_1120_to_live_connections(server: KotakFakeServer) -> None:
    ws = ws_open(server)
    server.wait_connections(1, authenticated=True)
    server.expire_sessions(kick=True)
    assert recv_json(ws)["message_code"] == 1120
    assert ws.recv_data(control_frame=True)[0] == websocket.ABNF.OPCODE_CLOSE
    assert server.connections == []
    with pytest.raises(AssertionError):
        ws_open(server, server.session_sids[0])  # the old sid stays dead
    ws_open(server).close()  # a new login works


@pytest.mark.parametrize("mode", ["merged", "doc", "sdk", "both", "none"])
def test_subscribe_ack_comes_in_the_chosen_shape_keyed_as_subscribed(mode: str) -> None:
    with KotakFakeServer(ack_mode=mode) as server:
        ws = ws_open(server)
        subscribe(ws, "subscribeScrips", ["nse_cm|1594", "nse_cm|999999"])
        subscribe(ws, "subscribeIndices", ["nse_cm|Nifty 50"])
        frames = [json.loads(data) for opcode, data in until_pong(ws) if opcode == websocket.ABNF.OPCODE_TEXT]
        doc = [f for f in frames if "data" in f]
        sdk = [f for f in frames if "trading_symbols" in f]
        assert all(f["message_code"] == 1109 for f in frames)
        expected_frames = {"merged": 2, "doc": 2, "sdk": 2, "both": 4, "none": 0}[mode]
        assert len(frames) == expected_frames
        if mode in ("merged", "doc", "both"):
            assert doc[0]["data"] == {"nse_cm|1594": {"cas_status": 1, "trading_symbols": "INFY-EQ"}}  # unknown keys left out
            assert doc[0]["error_code"] == 0 and doc[0]["description"] == "SUBSCRIBED"
        if mode in ("merged", "sdk", "both"):
            assert [f["trading_symbols"] for f in sdk] == [{"nse_cm|1594": "INFY-EQ"}, {"nse_cm|Nifty 50": "Nifty 50"}]
        ws.close()


def test_no_ack_without_ack_symbol_and_ticks_may_precede_the_ack() -> None:
    with KotakFakeServer(ack_first=False) as server:
        server.send_ticks([TapeTick("nse_cm", 1594, Decimal("1500"), 1, 10, 1768448700)])
        ws = ws_open(server)
        subscribe(ws, "subscribeScrips", ["nse_cm|1594"], ack=False)
        opcode, _ = ws.recv_data()
        assert opcode == websocket.ABNF.OPCODE_BINARY  # the snapshot, and no ack
        subscribe(ws, "subscribeDepth", ["nse_cm|1594"])
        assert ws.recv_data()[0] == websocket.ABNF.OPCODE_BINARY  # snapshot first ...
        assert recv_json(ws)["message_code"] == 1109  # ... then the ack
        ws.close()


def test_every_intent_gets_its_own_packet_kind_and_the_sdk_decodes_the_frames(server: KotakFakeServer) -> None:
    ws = ws_open(server)
    for event, keys in (("subscribeScripsLite", ["nse_cm|1594"]), ("subscribeScrips", ["nse_cm|1594", "mcx_fo|451669"]),
                        ("subscribeDepth", ["cde_fo|1201"]), ("subscribeFullDepth", ["nse_fo|52168"]),
                        ("subscribeIndices", ["nse_cm|Nifty 50", "bse_cm|SENSEX"])):  # fmt: skip
        subscribe(ws, event, keys)
        assert recv_json(ws)["message_code"] == 1109
    tape = [t for t in random_tape(seconds=2, seed=9) if t.segment != "bse_cm" or t.token == 1]
    wanted = {"nse_cm|1594": 2, "mcx_fo|451669": 1, "cde_fo|1201": 1, "nse_fo|52168": 1, "nse_cm|26000": 1, "bse_cm|1": 1}
    n = sum(wanted.get(t.key, 0) for t in tape)
    assert server.send_ticks(tape) == n
    decoded = [decode_packet(p, SDK_DIVIDERS) for p in recv_packets(ws, n)]
    kinds = {(m.exchange_segment, m.type, getattr(m, "level", None)) for m in decoded}
    assert kinds == {("nse_cm", "scrip_lite", None), ("nse_cm", "scrip", 4), ("mcx_fo", "scrip", 4), ("cde_fo", "scrip", 8),
                     ("nse_fo", "scrip", 16), ("nse_cm", "index", None), ("bse_cm", "index", None)}  # fmt: skip
    last_usdinr = [m for m in decoded if m.exchange_segment == "cde_fo"][-1]
    assert last_usdinr.last_traded_price == float(server.last_tick("cde_fo", 1201).last_price)  # type: ignore[union-attr]
    ws.close()


def test_packets_carry_a_per_connection_sequence_number(server: KotakFakeServer) -> None:
    ws = ws_open(server)
    subscribe(ws, "subscribeScrips", ["nse_cm|1594"], ack=False)
    server.wait_subscribed(["nse_cm|1594"])
    ticks = [TapeTick("nse_cm", 1594, Decimal("1500") + i, 1, 10 + i, 1768448700 + i) for i in range(300)]
    assert server.send_ticks(ticks) == 300
    assert [p[7] for p in recv_packets(ws, 300)] == [i & 0xFF for i in range(300)]
    ws.close()


def test_subscribing_past_the_token_limit_is_refused_whole_with_an_error_ack() -> None:
    with KotakFakeServer(max_per_connection=5) as server:
        ws = ws_open(server)
        keys = ["nse_cm|1594", "nse_cm|11536", "nse_cm|2885"]
        subscribe(ws, "subscribeScrips", keys)
        assert recv_json(ws)["error_code"] == 0
        subscribe(ws, "subscribeScrips", keys)  # the same keys again do not count twice
        assert recv_json(ws)["error_code"] == 0
        subscribe(ws, "subscribeDepth", keys)  # 3 + 3 > 5: the limit counts every intent
        refused = recv_json(ws)
        assert (refused["message_code"], refused["error_code"], refused["trading_symbols"]) == (1109, 1, {})
        assert "limit of 5" in refused["description"]
        conn = server.connections[0]
        assert (conn.token_count, conn.rejected_subscribes) == (3, 1)
        subscribe(ws, "subscribeDepth", keys[:2])
        assert recv_json(ws)["error_code"] == 0
        server.wait_subscribed(keys[:2], intent="depth")
        assert server.connections[0].token_count == 5
        ws.close()


def test_three_hundred_synthetic_symbols_subscribe_in_one_frame_and_all_tick() -> None:
    syn = synthetic_instruments(300)
    with KotakFakeServer(instruments=DEFAULT_INSTRUMENTS + syn) as server:
        ws = ws_open(server)
        subscribe(ws, "subscribeScripsLite", [i.key for i in syn])
        ack = recv_json(ws)
        assert len(ack["trading_symbols"]) == 300 and ack["trading_symbols"]["nse_cm|100001"] == "SYN0001-EQ"
        tape = random_tape(syn, seconds=2, seed=4)
        assert server.send_ticks(tape) == len(tape)
        frames: list[list[bytes]] = []
        while sum(map(len, frames)) < len(tape):
            frames.append(split_batch(ws.recv_data()[1]))
        assert max(map(len, frames)) <= 100  # batch_size
        assert {decode_packet(p, SDK_DIVIDERS).instrument_token for f in frames for p in f} == {str(t.token) for t in tape}
        ws.close()


def test_unsubscribe_stops_ticks_and_snapshot_sends_last_values_without_subscribing(server: KotakFakeServer) -> None:
    tape = random_tape(seconds=3, seed=2)
    assert server.send_ticks(tape) == 0  # nobody listens, but the server remembers the last values
    ws = ws_open(server)
    subscribe(ws, "snapshotDepth", ["nse_cm|11536"])
    assert recv_json(ws)["message_code"] == 1109
    (packet,) = recv_packets(ws, 1)
    last_tcs = server.last_tick("nse_cm", 11536)
    assert last_tcs is not None and decode_packet(packet, SDK_DIVIDERS).last_traded_price == float(last_tcs.last_price)
    assert server.connections[0].subscriptions == {}
    subscribe(ws, "subscribeScrips", ["nse_cm|2885"], ack=False)
    assert decode_packet(recv_packets(ws, 1)[0], SDK_DIVIDERS).instrument_token == "2885"  # snapshot on subscribe
    subscribe(ws, "unsubscribeScrips", ["nse_cm|2885"], ack=False)
    assert until_pong(ws) == []  # the unsubscribe is done and got no reply
    assert server.send_ticks(tape) == 0
    ws.close()


def test_exchange_subscription_gets_market_status_and_everyone_gets_open_close(server: KotakFakeServer) -> None:
    a, b = ws_open(server), ws_open(server)
    a.send(json.dumps({"event": "subscribeExchange"}))
    server.wait_connections(2, authenticated=True)
    assert until_pong(a) == []  # subscribeExchange is handled and has no reply while no status is known
    assert server.send_market_status("nse_cm", 1) == 1
    status = decode_packet(recv_packets(a, 1)[0], SDK_DIVIDERS)
    assert (status.type, status.status_code, status.status) == ("market_status", 1, "Market open")
    assert server.send_market_event("nse_fo", opened=False) == 2
    for ws in (a, b):
        assert decode_packet(recv_packets(ws, 1)[0], SDK_DIVIDERS).status_code == 2
    c = ws_open(server)
    c.send(json.dumps({"event": "subscribeExchange"}))
    assert decode_packet(recv_packets(c, 1)[0], SDK_DIVIDERS).status_code == 1  # the last status, on subscribe
    for ws in (a, b, c):
        ws.close()


def test_drop_all_cuts_sockets_without_a_close_frame(server: KotakFakeServer) -> None:
    a, b = ws_open(server), ws_open(server)
    server.wait_connections(2, authenticated=True)
    server.drop_all()
    for ws in (a, b):
        with pytest.raises(websocket.WebSocketConnectionClosedException):
            ws.recv_data(control_frame=True)  # a close frame would return opcode 8 instead
    assert server.connections == []
    ws_open(server).close()  # the server itself is still up


def test_go_down_cuts_sockets_and_answers_upgrades_with_503_until_it_is_back(server: KotakFakeServer) -> None:
    sid = server.grant_session()[1]
    ws = ws_open(server, sid)
    server.wait_connections(1, authenticated=True)
    server.go_down()
    with pytest.raises(websocket.WebSocketConnectionClosedException):
        ws.recv_data(control_frame=True)  # no close frame: the socket is cut
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(server.ws_url, timeout=2)
    assert refused.value.status_code == 503 and server.connections == []
    tick = TapeTick("nse_cm", 1594, Decimal("1500"), 1, 1, 1768448700)
    assert server.send_ticks([tick]) == 0  # nobody gets it, but it is the instrument's last tick
    server.go_down(False)
    ws = ws_open(server, sid)  # the session minted before the outage still authenticates
    subscribe(ws, "subscribeScrips", ["nse_cm|1594"], ack=False)
    assert decode_packet(recv_packets(ws, 1)[0], SDK_DIVIDERS).last_traded_price == 1500.0  # the snapshot
    ws.close()


def test_close_all_sends_a_close_frame_with_the_code(server: KotakFakeServer) -> None:
    ws = ws_open(server)
    server.wait_connections(1)
    server.close_all(1001, "going away")
    opcode, data = ws.recv_data(control_frame=True)
    assert (opcode, struct.unpack(">H", data[:2])[0], data[2:]) == (websocket.ABNF.OPCODE_CLOSE, 1001, b"going away")


def test_go_mute_sends_nothing_not_even_pongs_and_holds_client_frames_until_unmuted(server: KotakFakeServer) -> None:
    ws = ws_open(server)
    ws.ping(b"alive?")
    assert ws.recv_data_frame(control_frame=True)[1].data == b"alive?"
    server.go_mute()
    ws.settimeout(0.3)
    ws.ping(b"anyone?")
    subscribe(ws, "subscribeScrips", ["nse_cm|1594"])
    with pytest.raises(websocket.WebSocketTimeoutException):
        ws.recv_data_frame(control_frame=True)  # no pong, no ack
    assert server.connections[0].subscriptions == {}  # held, as a dead link holds it
    assert server.send_ticks([TapeTick("nse_cm", 1594, Decimal("1500"), 1, 1, 1768448700)]) == 0
    with pytest.raises(websocket.WebSocketTimeoutException):
        websocket.create_connection(server.ws_url, timeout=0.3)  # no 101 either
    assert len(server.connections) == 1  # the socket is still open
    server.go_mute(False)
    ws.settimeout(2)
    assert ws.recv_data_frame(control_frame=True)[1].data == b"anyone?"  # late, in order
    assert recv_json(ws)["trading_symbols"] == {"nse_cm|1594": "INFY-EQ"}
    server.wait_subscribed(["nse_cm|1594"])
    ws.close()


def test_play_tape_streams_in_the_background_and_send_raw_reaches_everyone(server: KotakFakeServer) -> None:
    tape = random_tape(seconds=2, seed=5)
    infy = [t for t in tape if t.key == "nse_cm|1594"]
    ws = ws_open(server)
    subscribe(ws, "subscribeScripsLite", ["nse_cm|1594"], ack=False)
    server.wait_subscribed(["nse_cm|1594"])
    server.play_tape(tape, rate=500)
    assert server.wait_tape(timeout=10)
    got = [decode_packet(p, SDK_DIVIDERS).last_traded_price for p in recv_packets(ws, len(infy))]
    assert got == [float(t.last_price) for t in infy]
    server.send_raw(b"\x09\x00\x01\x02")
    server.send_raw('{"message_code": 9999}')
    assert ws.recv_data() == (websocket.ABNF.OPCODE_BINARY, b"\x09\x00\x01\x02")
    assert recv_json(ws) == {"message_code": 9999}
    ws.close()


@pytest.mark.slow
def test_cli_prints_urls_and_credentials_a_daemon_can_log_in_with() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "testkit.fakes.kotak_server", "--synthetic", "5"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert set(info["env"]) == {"KOTAK_CONSUMER_KEY", "KOTAK_MOBILE_NUMBER", "KOTAK_UCC", "KOTAK_MPIN", "KOTAK_TOTP_SECRET",
                                    "KOTAK_LOGIN_URL"}  # fmt: skip
        body = {"mobileNumber": info["mobile_number"], "ucc": info["ucc"], "totp": pyotp.TOTP(info["totp_secret"]).now()}
        headers = {"Authorization": info["consumer_key"], "neo-fin-key": "neotradeapi"}
        r = requests.post(info["login_url"] + "/login/1.0/tradeApiLogin", json=body, headers=headers, timeout=5)
        assert r.json()["data"]["kType"] == "View"
        assert info["ws_url"].startswith("ws://127.0.0.1:")
    finally:
        proc.terminate()
        proc.wait(10)


def test_sdk_subscribes_indices_by_name_and_decodes_their_ticks_when_the_scrip_master_lists_none(
    sdk_at: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEO_SCRIP_CACHE_DIR", str(tmp_path))
    with KotakFakeServer(index_rows=False) as server:
        client = sdk_at(server)
        rows = client.search_scrip(exchange_segment="nse_cm", symbol="nifty")
        assert not [r for r in (rows if isinstance(rows, list) else []) if r.get("pInstType") == "INDEX"], rows
        sdk_login(client, server)
        tape = random_tape([NIFTY50, SENSEX], seconds=3, seed=4)

        async def main() -> tuple[list[Any], list[Any]]:
            ws = client.create_websocket(reconnect_delay=0, max_connect_retries=0)
            await ws.connect()
            try:
                await ws.subscribe_index([WsToken("nse_cm", "Nifty 50"), WsToken("bse_cm", "SENSEX")])
                await asyncio.to_thread(server.wait_subscribed, ["nse_cm|Nifty 50", "bse_cm|SENSEX"])
                sent = await asyncio.to_thread(server.send_ticks, tape)
                frames = [m for c in server.connections for m in c.messages if isinstance(m, dict)]
                return await take(ws, sent), frames
            finally:
                await ws.close()

        got, frames = run_sdk(main())
    assert {"event": "subscribeIndices", "inputtoken": "nse_cm|Nifty 50,bse_cm|SENSEX", "ack_symbol": True} in frames
    assert len(got) == len(tape) and {m.type for m in got} == {"index"}
    names = {"nse_cm": "Nifty 50", "bse_cm": "SENSEX"}
    assert [(m.exchange_segment, m.name, m.trading_symbol) for m in got] == [(t.segment, names[t.segment],
                                                                              names[t.segment]) for t in tape]  # fmt: skip
    assert [Decimal(str(m.last_traded_price)) for m in got] == [t.last_price for t in tape]
    assert [m.last_trade_time for m in got] == [t.exchange_ts for t in tape]
