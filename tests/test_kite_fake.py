"""The fake Kite server is faithful: the official pykiteconnect clients (KiteTicker, KiteConnect) and a
plain websocket-client see from it what they would see from Zerodha, faults included."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
import websocket
from kiteconnect import KiteConnect, KiteTicker
from kiteconnect.exceptions import TokenException

from testkit.fakes.kite_server import (
    DEFAULT_INSTRUMENTS,
    DepthLevel,
    FakeInstrument,
    KiteFakeServer,
    TapeTick,
    derivative_instruments,
    derivatives_dump,
    encode_frame,
    encode_packet,
    random_tape,
)

ROOT = Path(__file__).resolve().parent.parent
INFY, RELIANCE, TCS, NIFTY = 408065, 738561, 2953217, 256265
USDINR = DEFAULT_INSTRUMENTS[4].token  # segment 3 (CDS)
CRUDE = DEFAULT_INSTRUMENTS[5].token  # segment 7 (MCX)
# Segments whose divisor is easy to get wrong: BCD (6) and NCO (12 in pykiteconnect 5.2.x) divide by 1e4.
BCD = FakeInstrument((2001 << 8) | 6, "BCD", "USDINR24JANFUT", segment="BCD-FUT", tick_size="0.0025", instrument_type="FUT")
NCO = FakeInstrument((3001 << 8) | 12, "NCO", "GOLDGUINEA24JANFUT", segment="NCO-FUT", tick_size="0.0025", instrument_type="FUT")
ALL_INSTRUMENTS = (*DEFAULT_INSTRUMENTS, BCD, NCO)

# Golden vectors: Zerodha's mock 44-byte quote packet for INFY.
GOLDEN_QUOTE = bytes.fromhex(
    "00063a01 00026683 00000001 00026569 0011f1b2 0003e9ff 00058037 000264f3 0002673c 000261c9 0002646c".replace(" ", "")
)


@pytest.fixture
def server() -> Iterator[KiteFakeServer]:
    with KiteFakeServer(instruments=ALL_INSTRUMENTS, heartbeat_interval=0.2) as s:
        yield s


def ws_connect(server: KiteFakeServer, token: str | None = None, **extra: str) -> websocket.WebSocket:
    query = f"api_key={server.api_key}&access_token={token or server.access_token}"
    query += "".join(f"&{k}={v}" for k, v in extra.items())
    return websocket.create_connection(f"{server.ws_url}?{query}", timeout=2)


def send_json(ws: websocket.WebSocket, action: str, value: Any) -> None:
    ws.send(json.dumps({"a": action, "v": value}))


def recv_data(ws: websocket.WebSocket, skip_heartbeats: bool = True) -> tuple[int, bytes]:
    while True:
        opcode, data = ws.recv_data()
        if not (skip_heartbeats and opcode == websocket.ABNF.OPCODE_BINARY and len(data) < 2):
            return opcode, data


def packet_lengths(frame: bytes) -> list[int]:
    (n,) = struct.unpack_from(">H", frame)
    lengths, pos = [], 2
    for _ in range(n):
        (size,) = struct.unpack_from(">H", frame, pos)
        lengths.append(size)
        pos += 2 + size
    assert pos == len(frame), "frame has trailing bytes"
    return lengths


def subscribed_ws(server: KiteFakeServer, tokens: list[int], mode: str | None = None) -> websocket.WebSocket:
    ws = ws_connect(server)
    send_json(ws, "subscribe", tokens)
    if mode:
        send_json(ws, "mode", [mode, tokens])
    server.wait_subscribed(tokens, mode=mode or "quote")
    return ws


def expected_tick(t: TapeTick) -> dict[str, Any]:
    """What pykiteconnect should produce for a fully specified full-mode snapshot (floats from the exact Decimals)."""
    ohlc = {"open": float(t.open), "high": float(t.high), "low": float(t.low), "close": float(t.close)}
    if t.token & 0xFF == 9:
        return {"instrument_token": t.token, "tradable": False, "last_price": float(t.last_price), "ohlc": ohlc,
                "exchange_timestamp": float(t.exchange_ts)}  # fmt: skip

    def side(levels: tuple[DepthLevel, ...]) -> list[dict[str, Any]]:
        rows = [{"quantity": lv.quantity, "price": float(lv.price), "orders": lv.orders} for lv in levels]
        return rows + [{"quantity": 0, "price": 0.0, "orders": 0}] * (5 - len(rows))

    return {
        "instrument_token": t.token,
        "tradable": True,
        "last_price": float(t.last_price),
        "last_traded_quantity": t.last_quantity,
        "average_traded_price": float(t.average_price),
        "volume_traded": t.volume,
        "total_buy_quantity": t.total_buy_quantity,
        "total_sell_quantity": t.total_sell_quantity,
        "ohlc": ohlc,
        "last_trade_time": float(t.last_trade_ts),
        "oi": t.oi,
        "oi_day_high": t.oi_day_high,
        "oi_day_low": t.oi_day_low,
        "exchange_timestamp": float(t.exchange_ts),
        "depth": {"buy": side(t.bids), "sell": side(t.asks)},
    }


def pick(tick: dict[str, Any], like: dict[str, Any]) -> dict[str, Any]:
    return {k: tick.get(k) for k in like}


# ---------------------------------------------------------------------------------------------- encoder


def test_encoder_reproduces_zerodha_golden_quote_packet() -> None:
    tick = TapeTick(INFY, Decimal("1573.15"), 1, 1175986, 1625461887, average_price=Decimal("1570.33"),
                    total_buy_quantity=256511, total_sell_quantity=360503, open=Decimal("1569.15"),
                    high=Decimal("1575.00"), low=Decimal("1561.05"), close=Decimal("1567.80"))  # fmt: skip
    assert encode_packet(tick, "quote") == GOLDEN_QUOTE


def test_encoder_refuses_prices_off_the_wire_grid() -> None:
    with pytest.raises(ValueError, match="1/100"):
        encode_packet(TapeTick(INFY, Decimal("1573.155"), 1, 1, 1), "ltp")


def test_official_parser_reads_every_mode_and_segment_exactly() -> None:
    """pykiteconnect's own parser (in-process, no reactor) over one frame per mode of a whole tape."""
    parser = KiteTicker("k", "t")
    tape = random_tape(ALL_INSTRUMENTS, seconds=20, seed=7)
    by_token: dict[int, TapeTick] = {}
    for t in tape:
        by_token[t.token] = t
    assert len(by_token) == len(ALL_INSTRUMENTS)
    for mode, tradable_len, index_len in (("ltp", 8, 8), ("quote", 44, 28), ("full", 184, 32)):
        frame = encode_frame([encode_packet(t, mode) for t in by_token.values()])
        lengths = packet_lengths(frame)
        assert lengths == [index_len if tok & 0xFF == 9 else tradable_len for tok in by_token]
        parsed = parser._parse_binary(frame)
        assert [p["mode"] for p in parsed] == [mode] * len(by_token)
        for p in parsed:
            t = by_token[p["instrument_token"]]
            assert p["last_price"] == float(t.last_price), (mode, t.token)
            if mode == "full" and t.token & 0xFF != 9:
                assert p["depth"]["sell"][0]["price"] == float(t.asks[0].price)
                assert p["average_traded_price"] == float(t.average_price)


def test_random_tape_is_deterministic_on_the_tick_grid_with_rising_volume_and_quote_only_repeats() -> None:
    tape = random_tape(seconds=30, seed=3)
    assert tape == random_tape(seconds=30, seed=3)
    assert tape != random_tape(seconds=30, seed=4)
    assert [t.exchange_ts for t in tape] == sorted(t.exchange_ts for t in tape)
    ticks = {i.token: Decimal(i.tick_size) for i in DEFAULT_INSTRUMENTS}
    quote_only = 0
    for inst in DEFAULT_INSTRUMENTS:
        series = [t for t in tape if t.token == inst.token]
        assert series, inst.tradingsymbol
        grid = ticks[inst.token] or Decimal("0.05")
        assert all(t.last_price % grid == 0 for t in series), inst.tradingsymbol
        volumes = [t.volume for t in series]
        assert volumes == sorted(volumes), inst.tradingsymbol
        quote_only += sum(1 for a, b in zip(series, series[1:]) if b.volume == a.volume and b.last_price == a.last_price)
        if inst.token & 0xFF != 9:
            assert volumes[-1] > volumes[0]
    assert quote_only > 0


# ---------------------------------------------------------------------------------------------- KiteTicker (subprocess)


def run_probe(server: KiteFakeServer, tokens: list[int], *, count: int, access_token: str | None = None,
              extra: tuple[str, ...] = ()) -> subprocess.Popen[str]:  # fmt: skip
    cmd = [sys.executable, "-m", "testkit.fakes.kiteticker_probe", "--root", server.ws_url, "--api-key", server.api_key,
           "--access-token", access_token or server.access_token, "--tokens", ",".join(map(str, tokens)),
           "--mode", "full", "--count", str(count), "--timeout", "15", *extra]  # fmt: skip
    env = dict(os.environ, TZ="Asia/Kolkata", PYTHONPATH=str(ROOT))
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def probe_events(proc: subprocess.Popen[str]) -> list[dict[str, Any]]:
    out, err = proc.communicate(timeout=30)
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert events, f"probe printed nothing; stderr:\n{err[-2000:]}"
    return events


@pytest.mark.slow
def test_official_kiteticker_receives_the_tape_exactly_in_full_mode(server: KiteFakeServer) -> None:
    tokens = [i.token for i in ALL_INSTRUMENTS]
    tape = random_tape(ALL_INSTRUMENTS, seconds=3, seed=11)
    proc = run_probe(server, tokens, count=len(tape))
    try:
        server.wait_subscribed(tokens, timeout=15, mode="full")
    except TimeoutError:
        proc.kill()
        raise
    conn = server.connections[0]
    assert conn.headers["x-kite-version"] == "3"
    assert conn.messages[0] == {"a": "subscribe", "v": tokens}
    assert server.send_ticks(tape) == len(tape)
    events = probe_events(proc)
    done = [e for e in events if e["event"] == "done"]
    assert done and done[0]["why"] == "count", events[-3:]
    got = [t for e in events if e["event"] == "ticks" for t in e["ticks"]]
    assert len(got) == len(tape)
    for token in tokens:
        expected = [expected_tick(t) for t in tape if t.token == token]
        actual = [pick(t, e) for t, e in zip([g for g in got if g["instrument_token"] == token], expected)]
        assert actual == expected, f"token {token} (segment {token & 0xFF})"
    assert all(t["mode"] == "full" for t in got)


@pytest.mark.slow
def test_official_kiteticker_reports_403_and_gets_no_ticks_with_a_rejected_token(server: KiteFakeServer) -> None:
    proc = run_probe(server, [INFY], count=1, access_token="wrong_token", extra=("--exit-on-error",))
    events = probe_events(proc)
    errors = [e for e in events if e["event"] == "error"]
    assert errors and "403" in errors[0]["reason"], events
    assert not [e for e in events if e["event"] == "ticks"]
    assert server.rejected_handshakes >= 1 and server.handshakes == 0


# ---------------------------------------------------------------------------------------------- KiteConnect REST


def test_generate_session_returns_the_access_token_and_profile_works_with_it(server: KiteFakeServer) -> None:
    kite = KiteConnect(server.api_key, root=server.api_url)
    session = kite.generate_session(server.request_token, api_secret=server.api_secret)
    assert session["access_token"] == server.access_token == kite.access_token
    assert isinstance(session["login_time"], datetime)
    assert kite.profile()["user_id"] == session["user_id"]
    method, path, headers = server.rest_requests[-1]
    assert (method, path) == ("GET", "/user/profile")
    assert headers["x-kite-version"] == "3"
    assert headers["authorization"] == f"token {server.api_key}:{server.access_token}"


def test_generate_session_rejects_a_wrong_secret_and_a_reused_request_token(server: KiteFakeServer) -> None:
    kite = KiteConnect(server.api_key, root=server.api_url)
    with pytest.raises(TokenException, match="checksum"):
        kite.generate_session(server.request_token, api_secret="not_the_secret")
    used = server.request_token
    kite.generate_session(used, api_secret=server.api_secret)
    with pytest.raises(TokenException, match="expired"):
        kite.generate_session(used, api_secret=server.api_secret)


def test_expired_access_token_raises_token_exception_and_a_new_login_recovers(server: KiteFakeServer) -> None:
    expired_hook_calls: list[bool] = []
    kite = KiteConnect(server.api_key, access_token=server.access_token, root=server.api_url)
    kite.set_session_expiry_hook(lambda: expired_hook_calls.append(True))
    assert kite.profile()["broker"] == "ZERODHA"
    old = server.access_token
    server.expire_access_token()
    with pytest.raises(TokenException) as info:
        kite.profile()
    assert info.value.code == 403 and expired_hook_calls == [True]
    with pytest.raises(websocket.WebSocketBadStatusException) as ws_info:
        ws_connect(server, old)
    assert ws_info.value.status_code == 403
    new = kite.generate_session(server.request_token, api_secret=server.api_secret)["access_token"]
    assert new != old
    assert kite.profile()["user_id"]
    server.reject_tokens(False)
    ws_connect(server, new).close()
    with pytest.raises(websocket.WebSocketBadStatusException):
        ws_connect(server, old)


def test_instruments_dump_parses_into_the_right_rows(server: KiteFakeServer) -> None:
    kite = KiteConnect(server.api_key, root=server.api_url)  # the dump needs no auth
    rows = kite.instruments()
    assert [r["instrument_token"] for r in rows] == [i.token for i in ALL_INSTRUMENTS]
    header = "instrument_token,exchange_token,tradingsymbol,name,last_price,expiry,strike,tick_size,lot_size,instrument_type,segment,exchange"  # noqa: E501 - the instruments dump's exact header
    assert ",".join(rows[0]) == header
    by_key = {f"{r['exchange']}:{r['tradingsymbol']}": r for r in rows}
    infy = by_key["NSE:INFY"]
    assert (infy["instrument_token"], infy["exchange_token"], infy["tick_size"], infy["lot_size"], infy["segment"]) == (
        INFY, str(INFY >> 8), 0.05, 1, "NSE")  # fmt: skip
    assert by_key["NSE:NIFTY 50"]["segment"] == "INDICES"
    usdinr = by_key["CDS:USDINR24JANFUT"]
    assert usdinr["tick_size"] == 0.0025 and usdinr["expiry"].isoformat() == "2024-01-29"
    nse = kite.instruments("NSE")
    assert {r["tradingsymbol"] for r in nse} == {"INFY", "RELIANCE", "TCS", "NIFTY 50"}
    assert kite.instruments("MCX")[0]["lot_size"] == 100


def test_derivatives_dump_parses_with_expiry_dates_float_strikes_and_no_expired_contract() -> None:
    today = date(2026, 1, 20)  # a Tuesday: NIFTY's weekly expiry day, and the week of its monthly one
    with KiteFakeServer(instruments=derivatives_dump(today)) as srv:
        rows = KiteConnect(srv.api_key, root=srv.api_url).instruments()
    by_symbol = {r["tradingsymbol"]: r for r in rows}
    monthly = by_symbol["NIFTY26JAN25000CE"]  # the last Tuesday of January 2026: monthly symbol
    assert (monthly["expiry"], monthly["strike"], monthly["lot_size"], monthly["name"], monthly["segment"]) == (
        date(2026, 1, 27), 25000.0, 65, "NIFTY", "NFO-OPT")  # fmt: skip
    weekly = by_symbol["NIFTY2612024950PE"]  # today's weekly (year, month 1-9/O/N/D, day)
    assert (weekly["expiry"], weekly["strike"], weekly["instrument_type"]) == (date(2026, 1, 20), 24950.0, "PE")
    sensex = by_symbol["SENSEX26JAN82000CE"]
    assert (sensex["exchange"], sensex["segment"], sensex["expiry"], sensex["lot_size"]) == (
        "BFO",
        "BFO-OPT",
        date(2026, 1, 29),
        20,
    )
    assert by_symbol["SENSEX2612282100CE"]["expiry"] == date(2026, 1, 22)  # BSE's weeklies are Thursdays
    futures = sorted((r["expiry"], r["tradingsymbol"]) for r in rows if r["instrument_type"] == "FUT" and r["name"] == "NIFTY")
    assert futures == [
        (date(2026, 1, 27), "NIFTY26JANFUT"),
        (date(2026, 2, 24), "NIFTY26FEBFUT"),
        (date(2026, 3, 31), "NIFTY26MARFUT"),
    ]
    crude = [r for r in rows if r["name"] == "CRUDEOIL" and r["exchange"] == "MCX" and r["expiry"] >= today]
    assert {r["segment"] for r in crude} == {"MCX-FUT", "MCX-OPT"} and by_symbol["CRUDEOIL26FEBFUT"]["expiry"] == date(2026, 2, 19)
    assert by_symbol["CRUDEOIL26FEB5500CE"]["expiry"] == date(2026, 2, 17)  # two business days before its future
    assert not [r for r in rows if r["name"] == "BANKNIFTY" and r["expiry"].weekday() != 1]  # monthly only, Tuesdays
    assert {by_symbol[s]["segment"] for s in ("NIFTY 50", "NIFTY BANK", "SENSEX")} == {"INDICES"}
    strikes = sorted({r["strike"] for r in rows if r["name"] == "NIFTY" and r["instrument_type"] == "CE" and r["expiry"] == today})
    assert strikes == [24500.0 + 50 * k for k in range(21)]
    assert len(rows) == len({r["instrument_token"] for r in rows})


@pytest.mark.parametrize("offset", range(0, 400, 37))
def test_derivatives_dump_never_lists_an_expired_contract(offset: int) -> None:
    today = date(2025, 12, 1) + timedelta(days=offset)
    rows = derivative_instruments(today)
    assert min(date.fromisoformat(i.expiry) for i in rows) >= today
    assert sum(i.instrument_type == "FUT" for i in rows) == 5 * 3  # near, next, far of each underlying


def test_login_page_redirects_with_a_request_token(server: KiteFakeServer) -> None:
    resp = requests.get(server.login_url, allow_redirects=False, timeout=5)
    assert resp.status_code == 302
    assert resp.headers["Location"] == f"http://127.0.0.1/callback?request_token={server.request_token}&action=login&status=success"


# ---------------------------------------------------------------------------------------------- raw WebSocket


def test_idle_connection_gets_one_byte_heartbeats_at_the_configured_interval(server: KiteFakeServer) -> None:
    ws = ws_connect(server, uid="1700000000000")  # unknown query params (kiteconnectjs adds uid) are ignored
    try:
        stamps = []
        for _ in range(4):
            opcode, data = ws.recv_data()
            stamps.append(time.monotonic())
            assert (opcode, data) == (websocket.ABNF.OPCODE_BINARY, b"\x00")
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        assert all(0.1 < g < 0.6 for g in gaps), gaps  # interval 0.2 s; loose bounds for a loaded machine
    finally:
        ws.close()


def test_bad_token_gets_403_at_the_handshake(server: KiteFakeServer) -> None:
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        ws_connect(server, "bad_token")
    assert info.value.status_code == 403
    server.reject_tokens()
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        ws_connect(server)
    assert info.value.status_code == 403
    assert (server.handshakes, server.rejected_handshakes) == (0, 2)
    server.reject_tokens(False)
    ws_connect(server).close()


def test_fourth_connection_gets_429(server: KiteFakeServer) -> None:
    conns = [ws_connect(server) for _ in range(3)]
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        ws_connect(server)
    assert info.value.status_code == 429
    conns[0].close()
    server.wait_connections(2)
    conns.append(ws_connect(server))  # a slot freed by a clean close is usable again
    for c in conns[1:]:
        c.close()


def test_wait_subscribed_after_a_connection_id_waits_for_a_newer_connection(server: KiteFakeServer) -> None:
    token = ALL_INSTRUMENTS[0].token
    old = subscribed_ws(server, [token], mode="full")  # still on the server's books, as a killed client's may be
    before = server.last_connection_id
    assert before == server.connections[0].id
    with pytest.raises(TimeoutError, match=f"on a connection after #{before}"):
        server.wait_subscribed([token], timeout=0.3, mode="full", after=before)
    new = ws_connect(server)
    send_json(new, "subscribe", [token])
    send_json(new, "mode", ["full", [token]])
    server.wait_subscribed([token], mode="full", after=before)
    assert server.last_connection_id == before + 1
    old.close()
    new.close()


def test_drop_all_closes_sockets_without_a_close_frame(server: KiteFakeServer) -> None:
    a, b = ws_connect(server), ws_connect(server)
    server.wait_connections(2)
    server.drop_all()
    for ws in (a, b):
        with pytest.raises(websocket.WebSocketConnectionClosedException):
            while True:  # heartbeats already in flight may arrive first; a close frame would return opcode 8
                opcode, _ = ws.recv_data(control_frame=True)
                assert opcode == websocket.ABNF.OPCODE_BINARY
    assert server.connections == []
    ws_connect(server).close()  # the server itself is still up


def test_go_mute_stops_heartbeats_ticks_and_pongs(server: KiteFakeServer) -> None:
    ws = subscribed_ws(server, [INFY])
    try:
        ws.ping(b"alive?")
        while (frame := ws.recv_data_frame(control_frame=True)[1]).opcode != websocket.ABNF.OPCODE_PONG:
            pass
        assert frame.data == b"alive?"
        server.go_mute()
        time.sleep(0.3)  # let frames already sent drain
        ws.settimeout(0.1)
        with pytest.raises(websocket.WebSocketTimeoutException):
            while True:
                ws.recv_data(control_frame=True)
        ws.settimeout(1.0)
        assert server.send_ticks(random_tape(seconds=1)) == 0
        ws.ping(b"anyone?")
        with pytest.raises(websocket.WebSocketTimeoutException):
            ws.recv_data_frame(control_frame=True)  # 5 heartbeat intervals: nothing, not even a pong
        assert len(server.connections) == 1  # the socket is still open
        server.go_mute(False)
        assert recv_data(ws, skip_heartbeats=False)[1] == b"\x00"
    finally:
        ws.close()


def test_mode_changes_change_the_packet_length(server: KiteFakeServer) -> None:
    ws = subscribed_ws(server, [INFY, NIFTY])
    try:
        tick = [TapeTick(INFY, Decimal("1500.05"), 3, 1000, 1705290300), TapeTick(NIFTY, Decimal("21894.55"), 0, 0, 1705290300)]
        assert server.send_ticks(tick) == 2
        assert packet_lengths(recv_data(ws)[1]) == [44, 28]  # new subscriptions start in quote mode
        for mode, lengths in (("ltp", [8, 8]), ("full", [184, 32]), ("quote", [44, 28])):
            send_json(ws, "mode", [mode, [INFY, NIFTY]])
            assert packet_lengths(recv_data(ws)[1]) == lengths, mode  # the mode change re-sends the last snapshot
            assert server.send_ticks(tick) == 2
            assert packet_lengths(recv_data(ws)[1]) == lengths, mode
        assert server.connections[0].subscribed == {INFY: "quote", NIFTY: "quote"}
        assert server.send_ticks(tick, mode="ltp") == 2
        assert packet_lengths(recv_data(ws)[1]) == [8, 8]
    finally:
        ws.close()


def test_subscribe_sends_the_last_snapshot_and_unsubscribe_stops_ticks(server: KiteFakeServer) -> None:
    tape = random_tape(seconds=5, seed=2)
    assert server.send_ticks(tape) == 0  # nobody is subscribed, but the server remembers the last values
    last = [t for t in tape if t.token == TCS][-1]
    ws = subscribed_ws(server, [TCS])
    try:
        frame = recv_data(ws)[1]
        assert frame == encode_frame([encode_packet(last, "quote")])
        send_json(ws, "subscribe", [TCS])  # duplicate subscribes are idempotent (pykiteconnect resubscribes)
        assert recv_data(ws)[1] == frame
        assert server.connections[0].subscribed == {TCS: "quote"}
        send_json(ws, "unsubscribe", [TCS])
        deadline = time.monotonic() + 2
        while server.connections[0].subscribed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.send_ticks(tape) == 0
    finally:
        ws.close()


def test_repeated_tokens_are_split_into_snapshot_frames(server: KiteFakeServer) -> None:
    ws = subscribed_ws(server, [INFY, TCS])
    try:
        ticks = [TapeTick(tok, Decimal(p), 1, v, 1705290300) for tok, p, v in
                 ((INFY, "1500", 1), (TCS, "3700", 1), (INFY, "1500.05", 2))]  # fmt: skip
        assert server.send_ticks(ticks) == 3
        assert packet_lengths(recv_data(ws)[1]) == [44, 44]
        assert packet_lengths(recv_data(ws)[1]) == [44]
    finally:
        ws.close()


def test_bad_messages_and_subscribing_past_the_limit_get_text_errors() -> None:
    with KiteFakeServer(max_per_connection=3, heartbeat_interval=5) as server:
        ws = ws_connect(server)
        try:
            for bad in ("not json", json.dumps({"a": "dance", "v": []}), json.dumps({"a": "mode", "v": ["turbo", [INFY]]}),
                        json.dumps({"a": "subscribe", "v": "INFY"})):  # fmt: skip
                ws.send(bad)
                opcode, data = recv_data(ws)
                assert opcode == websocket.ABNF.OPCODE_TEXT
                reply = json.loads(data)
                assert reply["type"] == "error" and isinstance(reply["data"], str), bad
            send_json(ws, "subscribe", [INFY, TCS])
            send_json(ws, "subscribe", [RELIANCE, NIFTY])
            assert json.loads(recv_data(ws)[1]) == {"type": "error", "data": "Can't subscribe to more than 3 instruments."}
            assert server.connections[0].subscribed == {INFY: "quote", TCS: "quote"}  # only the new ones failed
            send_json(ws, "subscribe", [RELIANCE])
            server.wait_subscribed([INFY, TCS, RELIANCE])
            assert server.connections[0].messages[0] == "not json"
        finally:
            ws.close()


def test_play_tape_streams_in_the_background_to_every_subscribed_connection(server: KiteFakeServer) -> None:
    tape = random_tape(seconds=2, seed=5)
    infy = [t for t in tape if t.token == INFY]
    a, b = subscribed_ws(server, [INFY]), subscribed_ws(server, [INFY], mode="ltp")
    try:
        server.play_tape(tape, rate=200)
        assert server.wait_tape(timeout=5)
        for ws, size in ((a, 44), (b, 8)):
            got = []
            while len(got) < len(infy):
                frame = recv_data(ws)[1]
                assert packet_lengths(frame) == [size]  # one token: one snapshot per frame
                got.append(struct.unpack_from(">I", frame, 8)[0])  # count, length, token, then last price
            assert got == [int(t.last_price * 100) for t in infy]
    finally:
        a.close()
        b.close()


def test_send_raw_reaches_every_connection_unchanged(server: KiteFakeServer) -> None:
    a, b = ws_connect(server), ws_connect(server)
    try:
        server.wait_connections(2)
        server.send_raw(b"\x00\x01\x00\x07abc")
        server.send_raw('{"type": "message", "data": "hello"}')
        for ws in (a, b):
            assert recv_data(ws) == (websocket.ABNF.OPCODE_BINARY, b"\x00\x01\x00\x07abc")
            assert recv_data(ws) == (websocket.ABNF.OPCODE_TEXT, b'{"type": "message", "data": "hello"}')
    finally:
        a.close()
        b.close()
