"""Kite's historical API: an instrument's minute candles over a range, within Kite's limits.

``KiteHistorical(kite).minute_candles(instrument, start, end)`` calls pykiteconnect's
``historical_data`` (``GET /instruments/historical/{token}/minute``) and returns final 1m
``Candle`` values:

- a long range is split into requests of at most 60 calendar dates (Kite's limit for minutes);
- every client of one API key in the process shares a ``RateLimiter``: at most 3 requests started
  in any 1.075 s (Kite's limit for this API is 3 a second,
  https://kite.trade/docs/connect/v3/exceptions/#api-rate-limit; the 75 ms absorb network jitter);
  requests from several threads overlap, so the rate does not depend on how long a reply takes;
- 429, 5xx and network errors are retried with capped exponential backoff and full jitter, a
  bounded number of times;
- 403 becomes ``HistoricalUnavailable``, which says what to do: enable the historical data add-on
  (``PermissionException``; remembered, so later calls do not ask again) or log in again
  (``TokenException``); 400 (``InputException``) is a ``BrokerError`` naming the request.

Kite sends prices as JSON numbers (floats in Python). Each becomes a ``Decimal`` through its
shortest text form, rounded to the decimal places of the instrument's tick size, so 1573.15 stays
1573.15 and never 1573.1500000000000909. Prices are not snapped to multiples of the tick: Kite
adjusts old prices for splits and bonuses, which takes them off the grid.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta
from datetime import time as dt_time
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from kiteconnect import exceptions as kite_errors

from brokers.base import BrokerError, HistoryUnavailable
from candles.model import Candle
from core.ist import IST
from core.ticks import Instrument

RATE = 3  # requests per second, per API key (Kite's limit for the historical API)
MARGIN = 0.075  # seconds added to the limit's window: see RateLimiter
MAX_MINUTE_DAYS = 60  # calendar dates one minute request may span
INTERVAL = "1m"
_FORMAT = "%Y-%m-%d %H:%M:%S"  # Kite reads it as IST wall time


class HistoricalUnavailable(HistoryUnavailable):
    """Kite refuses the historical API to this app or access token (HTTP 403): retrying with the
    same token cannot help (``lasting``: nor can a new one)."""


class RateLimiter:
    """At most ``calls`` requests started in any window of ``per + margin`` seconds, across threads.

    The rule is on when requests start, not on when their replies come back, so requests overlap
    and a slow reply never lowers the rate. The server counts requests when they arrive; a request
    arrives one network trip after we start it, and two trips differ by the network's jitter (and by
    how long a thread waits for the GIL between ``acquire`` and its send). Starts spaced one full
    window apart could then arrive less than ``per`` apart and draw a 429. ``margin`` (default
    ``MARGIN``, 75 ms) widens the window to absorb that difference: several times the usual
    variation of one path's delay from one second to the next (milliseconds to tens of
    milliseconds), at a cost of 7% of the limit at 3 a second (2.79 requests/s). A 429 that still
    comes is retried after a window (see ``KiteHistorical``). ``clock`` and ``sleep`` are
    injectable so tests move time without waiting.
    """

    def __init__(
        self,
        calls: int = RATE,
        per: float = 1.0,
        margin: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        margin = MARGIN if margin is None else margin
        if calls < 1 or per <= 0 or margin < 0:
            raise ValueError(f"a rate limit needs calls >= 1, per > 0 and margin >= 0, not {calls} per {per} s + {margin} s")
        self.calls = calls
        self.per = per
        self.margin = margin
        self.window = per + margin
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._starts: deque[float] = deque(maxlen=calls)  # the last ``calls`` start times

    def acquire(self) -> float:
        """Wait until a request may start, count it as started and return its start time."""
        while True:
            with self._lock:
                now = self._clock()
                if len(self._starts) < self.calls or now >= self._starts[0] + self.window:
                    self._starts.append(now)
                    return now
                delay = self._starts[0] + self.window - now
            # nothing frees a start earlier than this (starts are never given back): a plain sleep
            self._sleep(delay)


_limiters: dict[str, RateLimiter] = {}
_limiters_lock = threading.Lock()


def shared_limiter(api_key: str) -> RateLimiter:
    """The one limiter every historical client of ``api_key`` in this process uses."""
    with _limiters_lock:
        return _limiters.setdefault(api_key, RateLimiter())


def minute_chunks(start: datetime, end: datetime, max_days: int = MAX_MINUTE_DAYS) -> list[tuple[datetime, datetime]]:
    """``(from, to)`` pairs in IST, whole seconds, ``to`` inclusive, covering ``[start, end)``; each
    spans at most ``max_days`` calendar dates (the stricter reading of Kite's limit)."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("give the range as timezone-aware datetimes (e.g. in core.ist.IST)")
    cur = start.astimezone(IST).replace(microsecond=0)
    last = (end.astimezone(IST) - timedelta(microseconds=1)).replace(microsecond=0)
    out = []
    while cur <= last:
        to = min(last, datetime.combine(cur.date() + timedelta(days=max_days - 1), dt_time(23, 59, 59), IST))
        out.append((cur, to))
        cur = to + timedelta(seconds=1)
    return out


def _price_places(tick_size: Decimal) -> Decimal | None:
    """The quantum of the tick size's decimal places (0.05 -> 0.01); None for a tick of 0 (indices)."""
    if tick_size <= 0:
        return None
    exponent = tick_size.normalize().as_tuple().exponent
    return Decimal(1).scaleb(min(0, int(exponent)))


def _price(value: float | int, places: Decimal | None) -> Decimal:
    exact = Decimal(repr(value))
    return exact if places is None else exact.quantize(places, ROUND_HALF_EVEN)


class KiteHistorical:
    """Minute candles from Kite's historical API through a ``KiteConnect`` (see the module's doc).

    One client may be used from several threads at once (pykiteconnect's one ``requests`` session
    pools its connections; the counters are locked); the limiter paces them all."""

    def __init__(
        self,
        kite: Any,
        *,
        limiter: RateLimiter | None = None,
        attempts: int = 6,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._kite = kite
        self._limiter = limiter or shared_limiter(str(kite.api_key))
        self._attempts = max(1, attempts)
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._sleep = sleep
        self._rng = rng
        self._refused: HistoricalUnavailable | None = None
        self._count_lock = threading.Lock()
        self.requests = 0  # requests sent, retries included
        self.retries = 0  # of which retries

    def minute_candles(self, instrument: Instrument, start: datetime, end: datetime) -> list[Candle]:
        """Final 1m candles whose minute starts in ``[start, end)`` (aware datetimes), oldest first.

        Minutes without a trade have no candle (Kite sends none). ``tick_count`` is 0 and
        ``first_tick``/``last_tick`` are the minute's start: no ticks were seen; ``cum_volume`` is
        None (Kite's candles do not carry the day's running volume); ``oi`` is Kite's OI at the minute's close.
        """
        places = _price_places(instrument.tick_size)
        lo, hi = start.astimezone(IST), end.astimezone(IST)
        found: dict[datetime, Candle] = {}
        for frm, to in minute_chunks(start, end):
            for row in self._fetch(instrument, frm, to):
                bucket = row["date"].astimezone(IST)
                if not lo <= bucket < hi:
                    continue
                found[bucket] = Candle(
                    instrument.exchange,
                    instrument.symbol,
                    INTERVAL,
                    bucket,
                    _price(row["open"], places),
                    _price(row["high"], places),
                    _price(row["low"], places),
                    _price(row["close"], places),
                    int(row["volume"]),
                    int(row["oi"]) if row.get("oi") is not None else None,
                    0,
                    bucket,
                    bucket,
                    None,
                    True,
                )
        return [found[b] for b in sorted(found)]

    def take_new_token(self, provider: Callable[[], str | None] | None) -> bool:
        """Use the provider's access token if it differs from the one in use; whether it did."""
        token = provider() if provider is not None else None
        if not token or token == getattr(self._kite, "access_token", None):
            return False
        self._kite.set_access_token(token)
        return True

    def _fetch(self, instrument: Instrument, frm: datetime, to: datetime) -> list[dict[str, Any]]:
        if self._refused is not None:
            raise self._refused
        what = f"{instrument.key} from {frm:%Y-%m-%d %H:%M} to {to:%Y-%m-%d %H:%M} IST"
        problem, floor = "", 0.0
        for attempt in range(self._attempts):
            if attempt:  # a 429 waits out at least one window of the limit
                cap = min(self._max_backoff, self._backoff * 2 ** (attempt - 1))
                self._sleep(max(floor, cap * self._rng()))
            try:
                self._limiter.acquire()
                with self._count_lock:
                    self.requests += 1
                    self.retries += attempt > 0
                return self._kite.historical_data(instrument.token, frm.strftime(_FORMAT), to.strftime(_FORMAT), "minute", oi=True)
            except kite_errors.PermissionException:
                self._refused = HistoricalUnavailable(
                    "Kite refuses historical data to this app (403 permission denied): subscribe the app to the "
                    "historical data add-on at developers.kite.trade, then start again",
                    lasting=True,
                )
                raise self._refused from None
            except kite_errors.TokenException:
                raise HistoricalUnavailable(
                    "Kite refused the access token for historical data (403): it is invalid or expired; "
                    "log in again with `python main.py --broker kite --login`"
                ) from None
            except kite_errors.InputException as exc:
                raise BrokerError(
                    f"Kite refused the historical request for {what} (400): {self._scrub(exc)}; "
                    "check the instrument token and the range"
                ) from None
            except kite_errors.KiteException as exc:
                code = getattr(exc, "code", 0) or 0
                if code != 429 and code < 500:
                    raise BrokerError(f"Kite's historical API answered {code} for {what}: {self._scrub(exc)}") from None
                problem, floor = f"HTTP {code}: {self._scrub(exc)}", self._limiter.window if code == 429 else 0.0
            except OSError as exc:  # requests' connection errors and timeouts
                problem, floor = f"{type(exc).__name__}: {self._scrub(exc)}", 0.0
        raise BrokerError(
            f"Kite's historical API failed for {what}, {self._attempts} tries (last: {problem}): "
            "check the network and KITE_API_URL, or try again later"
        )

    def _scrub(self, exc: BaseException) -> str:
        text = str(exc)[:300]
        token = getattr(self._kite, "access_token", None)
        return text.replace(token, "***") if token else text


class KiteHistory:
    """``brokers.base.History`` over Kite's historical API, for symbols by (exchange, symbol)
    whatever broker streams them: ``resolve`` finds their Kite instruments (the dump), a batch at a
    time (``prepare``). A refused access token is replaced by the provider's (the token file a new
    ``--login`` writes) once per call before giving up."""

    name = "Kite's historical API"

    def __init__(
        self,
        historical: KiteHistorical,
        resolve: Callable[[list[tuple[str, str]]], tuple[list[Instrument], list[str]]],
        token_provider: Callable[[], str | None] | None = None,
    ) -> None:
        self.historical = historical
        self._resolve = resolve
        self._provider = token_provider
        self._instruments: dict[tuple[str, str], Instrument | None] = {}

    def prepare(self, keys: list[tuple[str, str]]) -> None:
        """Find the Kite instruments of ``keys`` not looked up yet, in one go."""
        todo = [k for k in keys if k not in self._instruments]
        if not todo:
            return
        found, _ = self._resolve(todo)
        for key in todo:
            self._instruments[key] = None
        for instrument in found:
            self._instruments[(instrument.exchange, instrument.symbol)] = instrument

    def minute_candles(self, exchange: str, symbol: str, start: datetime, end: datetime) -> list[Candle] | None:
        key = (exchange, symbol)
        self.prepare([key])
        instrument = self._instruments[key]
        if instrument is None:
            return None
        try:
            return self.historical.minute_candles(instrument, start, end)
        except HistoricalUnavailable as exc:
            if exc.lasting or not self.historical.take_new_token(self._provider):
                raise
        return self.historical.minute_candles(instrument, start, end)
