"""The page at ``/`` in a real browser: Debian's chromium, headless, driven by Playwright
(testkit/browser.py), against a real daemon process (the simulator into SQLite, a market minute per
wall second). The page loads, a series is chosen as a user chooses it, the chart draws candles,
a new candle appears without a reload, the status panel shows the daemon; with ``HTTP_TOKEN`` the
page needs ``/login`` first. A screenshot of each is saved (testkit/browser.py ``screenshot``:
the test's tmp dir and ``$ARTIFACTS_DIR`` or ``test-artifacts/``).
"""

from __future__ import annotations

import json
import signal
import struct
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from testkit.browser import headless_chromium, screenshot
from testkit.cli import main_env, start_main
from testkit.waiting import free_port, wait_until

SIM_START = "2026-11-24T09:15:00+05:30"
DAY = "2026-11-24"
TOKEN = "plantedPageToken4Rw8-zq61Mv"
WAIT_S = 20  # for anything the page must show (a new 1m candle comes about every second)

# The chart's colours (ops/static/page.css --up, --down), as RGB.
UP, DOWN = (0x1A, 0x9C, 0x5B), (0xD2, 0x3C, 0x3C)


# ---- the daemon ------------------------------------------------------------------------------


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@contextmanager
def daemon(tmp_path: Path, **env: str) -> Iterator[str]:
    """The simulator (INFY and TCS, 1m and 5m, 60x speed) into SQLite with the HTTP port; its base
    URL. Stopped with SIGTERM after the block, which must end with exit 0."""
    port = free_port()
    args = ["--broker", "sim", "--symbols", "NSE:INFY", "NSE:TCS", "--seed", "3", "--sim-speed", "60",
            "--sim-start", SIM_START, "--intervals", "1m,5m", "--http-port", str(port)]  # fmt: skip
    proc = start_main(*args, cwd=tmp_path, env=main_env(**env))
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the daemon exited {proc.returncode}: {proc.communicate()[1]}")
        try:
            return http_get(base + "/healthz")[0] == 200
        except OSError:
            return False

    try:
        wait_until(up, 30, "the daemon's /healthz")
        yield base
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert proc.returncode == 0, err


# ---- what the page shows ---------------------------------------------------------------------


def wait_in_page(page, function: str, what: str, arg: object = None) -> None:
    """Poll ``function`` in the page until it returns true. Not ``page.wait_for_function``: its
    polling evaluates the predicate with ``eval``, which the page's Content-Security-Policy refuses."""
    wait_until(lambda: page.evaluate(function, arg), WAIT_S, what)


def chart(page) -> tuple[int, str]:
    """The chart's own account of what it drew (ops/static/page.js ``draw``): candles, last bucket."""
    canvas = page.locator("#chart")
    return int(canvas.get_attribute("data-candles")), canvas.get_attribute("data-last-bucket")


def painted(page) -> tuple[int, int]:
    """Pixels of the canvas in the up and in the down colour: what was drawn, not what was meant."""
    return tuple(
        page.evaluate(
            """([up, down]) => {
                const c = document.getElementById("chart");
                const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
                const near = (i, rgb) => rgb.every((v, k) => Math.abs(d[i + k] - v) <= 40);
                let u = 0, w = 0;
                for (let i = 0; i < d.length; i += 4) {
                    if (d[i + 3] < 40) continue;
                    if (near(i, up)) u++;
                    else if (near(i, down)) w++;
                }
                return [u, w];
            }""",
            [UP, DOWN],
        )
    )


def wait_for_candles(page) -> None:
    wait_in_page(page, "() => document.body.dataset.live === 'true'", "the stream's live event")
    wait_in_page(page, "() => Number(document.getElementById('chart').dataset.candles) > 0", "candles on the chart")
    count, _ = chart(page)
    up, down = painted(page)
    assert up + down >= 2 * count, f"{count} candles said drawn, but only {up} + {down} pixels in their colours"


def wait_for_status(page) -> None:
    """The status panel filled from /api/status: the simulator's one connection, candles written."""
    wait_in_page(
        page,
        """() => {
            const t = (id) => document.getElementById(id).textContent;
            return t("state") === "running" && t("s-broker") === "sim" && t("s-connections") === "1 / 1"
                && Number(t("s-written").replace(/\\D/g, "")) > 0;
        }""",
        "the status panel: running, sim, 1 / 1 connections, candles written",
    )
    assert page.locator("#state").get_attribute("class") == "badge running"
    assert page.locator("#problems li").count() == 0, page.locator("#problems").inner_text()


def watch_errors(page) -> list[str]:
    """Script errors and console errors (a refused script or stream, a CSP violation) from now on."""
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"script: {exc}"))
    page.on(
        "console",
        lambda msg: (
            errors.append(f"console: {msg.text} ({msg.location.get('url')})")
            if msg.type == "error" and not msg.location.get("url", "").endswith("/favicon.ico")
            else None
        ),
    )
    return errors


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def save(page, name: str, tmp_path: Path) -> None:
    for path in screenshot(page, name, tmp_path):
        width, height = png_size(path)
        assert width >= 1000 and height >= 600, (path, width, height)


# ---- the tests -------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_page_draws_the_chosen_series_and_a_new_candle_appears_without_a_reload(tmp_path) -> None:
    with daemon(tmp_path) as base, headless_chromium() as browser:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors = watch_errors(page)
        try:
            answer = page.goto(base + "/")
            assert answer is not None and answer.status == 200
            # as a user: pick the series and the day in the form, then "show"
            page.wait_for_selector("#symbol option[value='NSE:TCS']", state="attached", timeout=WAIT_S * 1000)
            page.select_option("#symbol", "NSE:TCS")
            page.select_option("#interval", "1m")
            page.fill("#since", DAY)
            page.click("#pick button[type=submit]")
            wait_for_candles(page)
            query = parse_qs(urlsplit(page.url).query)
            assert query == {"symbol": ["NSE:TCS"], "interval": ["1m"], "since": [DAY]}, page.url
            wait_for_status(page)

            # a new candle, in the same document (a reload would lose the marker)
            page.evaluate("window.sameDocument = true")
            count, last = chart(page)
            wait_in_page(page, "(b) => document.getElementById('chart').dataset.lastBucket !== b", "a new candle", last)
            new_count, new_last = chart(page)
            assert datetime.fromisoformat(new_last) > datetime.fromisoformat(last), (last, new_last)
            assert new_count > count, (count, new_count)
            assert page.evaluate("window.sameDocument === true"), "the page was reloaded"
            wait_for_candles(page)

            # what is drawn is the chosen series: the first candle (09:15, final) read back under the mouse
            status, body = http_get(f"{base}/api/candles?symbol=NSE:TCS&interval=1m&from={DAY}&limit=10000")
            assert status == 200
            first = json.loads(body)["candles"][0]
            box = page.locator("#chart").bounding_box()
            assert box is not None
            page.mouse.move(box["x"] + 10, box["y"] + box["height"] / 2)
            expected = (
                f"{first['bucket'][:16].replace('T', ' ')} IST  O {first['open']}  H {first['high']}  "
                f"L {first['low']}  C {first['close']}  V {first['volume']}  {first['source']}, final"
            )
            wait_in_page(page, "(t) => document.getElementById('readout').textContent === t", expected, expected)
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] - 200)  # away: the newest candle again
            assert errors == [], errors
        except BaseException:
            screenshot(page, "page-failed.png", tmp_path)
            raise
        save(page, "page.png", tmp_path)


@pytest.mark.slow
def test_with_a_token_the_page_needs_the_login_then_draws_candles(tmp_path) -> None:
    with daemon(tmp_path, HTTP_TOKEN=TOKEN) as base, headless_chromium() as browser:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        try:
            answer = page.goto(base + "/")
            assert answer is not None and answer.status == 401
            said = page.locator("body").inner_text()
            assert "/login?token=" in said and TOKEN not in said, said
            assert page.locator("#chart").count() == 0

            errors = watch_errors(page)
            answer = page.goto(f"{base}/login?token={TOKEN}")
            assert answer is not None and answer.status == 200 and urlsplit(page.url).path == "/", page.url
            assert TOKEN not in page.evaluate("document.cookie")  # HttpOnly: no script reads it
            wait_for_status(page)
            page.goto(f"{base}/?symbol=NSE:INFY&interval=1m&since={DAY}")  # the page's own parameters
            wait_for_candles(page)
            assert page.locator("#symbol").input_value() == "NSE:INFY"
            assert errors == [], errors
        except BaseException:
            screenshot(page, "page-token-failed.png", tmp_path)
            raise
        save(page, "page-token.png", tmp_path)
