"""``--chart SYMBOL --out PATH.png``: a symbol's stored candles as a candlestick chart with volume.

Read-only, like ``--show-candles``. The x axis has one slot per bucket of the exchange's sessions
in the range (nights, weekends and holidays left out), so a bucket without a candle is an empty
slot rather than a jump. Marked on it:

- the unwatched session minutes ``--show-gaps`` reports (``core.gaps``), shaded red over the
  buckets they touch;
- session buckets with no candle that no unwatched span explains (no trade in the bucket, candle
  rule 5, or a candle missing from the store), shaded grey;
- ``backfill`` candles (the broker's history) with a blue triangle above the high, and ``partial``
  ones (candle rule 8: the bucket was not watched from start to end) with an orange dot.

Drawn with mplfinance (https://github.com/matplotlib/mplfinance) on matplotlib's non-interactive
Agg backend, both imported by this command alone: the daemon never loads them.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from candles.model import BACKFILL, PARTIAL, Candle, Interval
from cli.errors import UsageError
from cli.tail import parse_since
from config.market_calendar import build_calendar, library_holidays, read_overrides
from config.settings import Settings
from config.symbols import parse_symbol
from core.gaps import gaps
from core.ist import IST
from core.market_calendar import MarketCalendar
from storage import open_store
from storage.base import CandleStore
from storage.continuous import continuous_candles, latest_continuous, series_index

DPI = 100  # figure inches x DPI = the pixels asked for
DAILY_DEFAULT = timedelta(days=180)  # a 1d chart without --from: this far back from its newest candle
NEAREST = timedelta(days=31)  # how far from an empty range to look for the nearest candles
GAP_COLOUR = "#d62728"
EMPTY_COLOUR = "#7f7f7f"
BACKFILL_COLOUR = "#1f77b4"
PARTIAL_COLOUR = "#ff7f0e"
MPLFINANCE = "mplfinance>=0.12.10b0,<0.13"


@dataclass
class Layout:
    """What is drawn: one slot per bucket, the candles by slot, and the marks as slot ranges."""

    buckets: list[datetime]  # aware IST, in order
    candles: dict[int, Candle]  # slot -> candle
    unwatched: list[tuple[int, int]] = field(default_factory=list)  # first and last slot, inclusive
    empty: list[tuple[int, int]] = field(default_factory=list)
    unwatched_minutes: int = 0


def chart(
    settings: Settings, symbol: str, interval: str, since_text: str | None, until_text: str | None, out: str | None,
    width: int, height: int,
) -> int:  # fmt: skip
    exchange, name = parse_symbol(symbol)
    iv = Interval.parse(interval)
    if not out:
        raise UsageError("--chart needs --out PATH.png: the file to write the chart to")
    target = _writable(Path(out))
    mpf = _mplfinance()
    now = datetime.now(IST)
    since, until = _bounds(since_text, "--from", now, start=True), _bounds(until_text, "--to", now, start=False)
    if since is not None and until is not None and since >= until:
        raise UsageError(f"--from {since_text} is not before --to {until_text} (IST): give the earlier time first")
    series = series_index(name) is not None
    store = open_store(settings.storage.pg_conn_str, settings.storage.sqlite_path, read_only=True)
    try:
        rolls = store.rolls(exchange, name) if series else []
        if series and not rolls:
            raise UsageError(
                f"no contracts recorded for the continuous series {exchange}:{name} in {store.description}: the daemon "
                "records a series' contract each session day while a FUT universe entry of its underlying is streamed; "
                f"--show-candles {exchange}:{name} says the same, and --chart {exchange}:<contract> draws one contract"
            )
        if since is None or until is None:
            newest = _newest(store, exchange, name, iv, rolls, series, until)
            since = since or _default_since(newest, iv)
            until = until or max(_default_until(newest, iv), since + timedelta(days=1))
        if series:
            candles = continuous_candles(store, exchange, name, iv.name, since, until, rolls=rolls)
        else:
            candles = store.between(exchange, name, iv.name, since, until)
        if not candles:
            raise UsageError(_nothing_in_range(store, exchange, name, iv, rolls, series, since, until))
        contracts = dict(rolls) if series else {}
        keys = sorted({(exchange, contracts.get(d, name)) for d in _days(since, until)})
        spans = store.watched(since.timestamp(), until.timestamp(), keys)
    finally:
        store.close()
    calendar = build_calendar(library_holidays(Path(settings.storage.data_dir)), read_overrides(settings.calendar.file))
    layout = _layout(calendar, exchange, name, contracts, iv, candles, spans, since, until, now)
    title = _title(exchange, name, iv, since, until, len(candles), sorted({c.symbol for c in candles}) if series else [])
    drawn = _draw(mpf, layout, title, target, width, height, daily=iv.name == "1d")
    backfill = sum(c.source == BACKFILL for c in candles)
    partial = sum(c.source == PARTIAL for c in candles)
    marked = len(layout.unwatched) + len(layout.empty)
    print(
        f"{out}: {width}x{height} px, {_count(drawn, 'candle')} drawn, {_count(marked, 'gap')} marked "
        f"({layout.unwatched_minutes} min unwatched in {len(layout.unwatched)}, {len(layout.empty)} without a candle), "
        f"{backfill + partial} backfilled marked ({backfill} backfill, {partial} partial)"
    )
    return 0


# -- reading --------------------------------------------------------------------------------------


def _bounds(text: str | None, option: str, now: datetime, *, start: bool) -> datetime | None:
    """A day (its start for --from, the next day's for --to: the day is included) or a time."""
    if text is None:
        return None
    try:
        day = date.fromisoformat(text.strip())
    except ValueError:
        return parse_since(text, now, option)
    return datetime.combine(day if start else day + timedelta(days=1), datetime.min.time(), IST)


def _newest(
    store: CandleStore, exchange: str, name: str, iv: Interval, rolls: Sequence[tuple[date, str]], series: bool,
    until: datetime | None,
) -> Candle:  # fmt: skip
    """The candle a range without --from (or --to) is placed by: the newest before --to, else the newest."""
    if until is not None:
        before = _read(store, exchange, name, iv, rolls, series, until - NEAREST, until)
        if before:
            return before[-1]
    newest = _latest(store, exchange, name, iv, rolls, series)
    if not newest:
        raise UsageError(_unknown(store, exchange, name, iv))
    return newest[0]


def _latest(
    store: CandleStore, exchange: str, name: str, iv: Interval, rolls: Sequence[tuple[date, str]], series: bool
) -> list[Candle]:
    if series:
        return latest_continuous(store, exchange, name, iv.name, 1, rolls=rolls)
    return store.latest(exchange, name, iv.name, 1)


def _default_since(newest: Candle, iv: Interval) -> datetime:
    if iv.name == "1d":
        return newest.bucket - DAILY_DEFAULT
    return datetime.combine(newest.bucket.astimezone(IST).date(), datetime.min.time(), IST)


def _default_until(newest: Candle, iv: Interval) -> datetime:
    if iv.name == "1d":
        return newest.bucket + timedelta(days=1)
    return datetime.combine(newest.bucket.astimezone(IST).date() + timedelta(days=1), datetime.min.time(), IST)


def _read(
    store: CandleStore, exchange: str, name: str, iv: Interval, rolls: Sequence[tuple[date, str]], series: bool,
    since: datetime, until: datetime,
) -> list[Candle]:  # fmt: skip
    if series:
        return continuous_candles(store, exchange, name, iv.name, since, until, rolls=rolls)
    return store.between(exchange, name, iv.name, since, until)


def _unknown(store: CandleStore, exchange: str, name: str, iv: Interval) -> str:
    """No candle of this interval at all: the intervals the symbol has, or the symbols the store has."""
    series = store.latest_per_series(0.0)
    others = sorted({c.interval for c in series if (c.exchange, c.symbol) == (exchange, name)}, key=_seconds)
    if others:
        return (
            f"no {iv.name} candles of {exchange}:{name} in {store.description}; it has {', '.join(others)}: "
            f"use --interval {others[0]}"
        )
    symbols = sorted({f"{c.exchange}:{c.symbol}" for c in series})
    if not symbols:
        return f"unknown symbol {exchange}:{name}: {store.description} has no candles at all (is this the daemon's store?)"
    shown = ", ".join(symbols[:20]) + (f" and {len(symbols) - 20} more" if len(symbols) > 20 else "")
    return f"unknown symbol {exchange}:{name}: {store.description} has candles of {_count(len(symbols), 'symbol')}: {shown}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _seconds(name: str) -> int:
    return Interval.parse(name).seconds


def _nothing_in_range(
    store: CandleStore, exchange: str, name: str, iv: Interval, rolls: Sequence[tuple[date, str]], series: bool,
    since: datetime, until: datetime,
) -> str:  # fmt: skip
    newest = _latest(store, exchange, name, iv, rolls, series)
    if not newest:
        return _unknown(store, exchange, name, iv)
    where = f"no {iv.name} candles of {exchange}:{name} in {_span_text(since, until)} (IST) in {store.description}"
    near = []
    before = _read(store, exchange, name, iv, rolls, series, since - NEAREST, since)
    if before:
        near.append(f"the last before it is at {_when(before[-1].bucket)}")
    if newest[0].bucket >= until:
        after = _read(store, exchange, name, iv, rolls, series, until, until + NEAREST)
        near.append(
            f"the first after it is at {_when(after[0].bucket)}" if after else f"the newest is at {_when(newest[0].bucket)}"
        )
    elif not before:
        near.append(f"the newest is at {_when(newest[0].bucket)}")
    return f"{where}: {', '.join(near)}; choose --from/--to around it"


def _span_text(since: datetime, until: datetime) -> str:
    """``2024-01-15`` (a whole day), ``2024-01-15 to 2024-01-19`` (whole days, the last included),
    else ``2024-01-15 09:15 to 2024-01-15 12:00``."""
    a, b = since.astimezone(IST), until.astimezone(IST)
    midnight = datetime.min.time()
    if a.time() == midnight and b.time() == midnight:
        last = b.date() - timedelta(days=1)
        return f"{a:%Y-%m-%d}" if last <= a.date() else f"{a:%Y-%m-%d} to {last:%Y-%m-%d}"
    return f"{_when(a)} to {_when(b)}"


def _when(t: datetime) -> str:
    local = t.astimezone(IST)
    return f"{local:%Y-%m-%d}" if local.time() == datetime.min.time() else f"{local:%Y-%m-%d %H:%M}"


def _days(since: datetime, until: datetime) -> list[date]:
    first, last = since.astimezone(IST).date(), (until - timedelta(microseconds=1)).astimezone(IST).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _writable(out: Path) -> Path:
    """``out``, once it is known to be a PNG path whose folder exists and takes a new file."""
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder: name the PNG file to write, e.g. {out / 'chart.png'}")
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out {out}: the chart is a PNG, name the file PATH.png")
    folder = out.parent
    if not folder.is_dir():
        raise UsageError(f"--out {out}: the folder {folder} does not exist: create it or write elsewhere")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{out.name}.", suffix=".tmp"):
            pass
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write in {folder} ({exc.strerror}): choose a writable folder") from None
    return out


def _mplfinance() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)  # a style's missing font weight
        import mplfinance
    except ImportError as exc:
        raise UsageError(
            f"--chart draws with mplfinance, which cannot be imported ({exc}): install it with "
            f".venv/bin/pip install -r requirements.txt (or pip install '{MPLFINANCE}')"
        ) from None
    return mplfinance


# -- layout ---------------------------------------------------------------------------------------


def _layout(
    calendar: MarketCalendar, exchange: str, name: str, contracts: dict[date, str], iv: Interval, candles: list[Candle],
    spans: dict[tuple[str, str], list[tuple[float, float]]], since: datetime, until: datetime, now: datetime,
) -> Layout:  # fmt: skip
    """Slots for every session bucket in the range that has begun, and every candle's bucket; the
    unwatched minutes (as --show-gaps computes them) and the empty session buckets as slot ranges."""
    lo, hi = since.timestamp(), min(until, now).timestamp()
    session_buckets: set[float] = set()
    holes: list[tuple[float, float]] = []
    for day in _days(since, until):
        symbol = contracts.get(day, name)
        sessions = []
        for open_, close in calendar.sessions(exchange, day, symbol):
            a, b = max(open_.timestamp(), lo), min(close.timestamp(), until.timestamp())
            if a < b:
                sessions.append((datetime.fromtimestamp(a, IST), datetime.fromtimestamp(b, IST)))
                b = min(b, hi)
                t = iv.bucket_start(a)
                while t < b:
                    session_buckets.add(t)
                    t += iv.seconds
        if contracts and day not in contracts:
            continue  # a series has no contract that day: nothing was to be watched
        holes += gaps(sessions, spans.get((exchange, symbol), ()), now.timestamp())
    by_bucket = {c.bucket.timestamp(): c for c in candles}
    times = sorted(session_buckets | set(by_bucket))
    slot = {t: i for i, t in enumerate(times)}
    layout = Layout([datetime.fromtimestamp(t, IST) for t in times], {slot[t]: c for t, c in by_bucket.items()})
    covered: set[int] = set()
    for a, b in holes:
        layout.unwatched_minutes += round((b - a) / 60)
        touched = [i for i, t in enumerate(times) if t < b and a < t + iv.seconds]
        if touched:
            covered.update(touched)
            _extend(layout.unwatched, touched[0], touched[-1])
    for i in range(len(times)):
        if i not in layout.candles and i not in covered:
            _extend(layout.empty, i, i)
    return layout


def _extend(ranges: list[tuple[int, int]], first: int, last: int) -> None:
    """Add slots ``first``..``last``, joining a range that ends just before."""
    if ranges and first <= ranges[-1][1] + 1:
        ranges[-1] = (ranges[-1][0], max(ranges[-1][1], last))
    else:
        ranges.append((first, last))


def _title(exchange: str, name: str, iv: Interval, since: datetime, until: datetime, count: int, contracts: list[str]) -> str:
    of = f" ({', '.join(contracts)})" if contracts else ""
    return f"{exchange}:{name}{of} {iv.name}, {_span_text(since, until)} IST, {count} candles"


# -- drawing --------------------------------------------------------------------------------------


def _draw(mpf: Any, layout: Layout, title: str, out: Path, width: int, height: int, *, daily: bool) -> int:
    """Draw and write the PNG (through a temporary file, so a failure leaves no half file);
    returns the number of candle bodies in the figure."""
    import matplotlib.pyplot as plt
    import pandas as pd
    from matplotlib.collections import PolyCollection
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    nan = float("nan")
    rows = [layout.candles.get(i) for i in range(len(layout.buckets))]
    frame = pd.DataFrame(
        {
            "Open": [float(c.open) if c else nan for c in rows],
            "High": [float(c.high) if c else nan for c in rows],
            "Low": [float(c.low) if c else nan for c in rows],
            "Close": [float(c.close) if c else nan for c in rows],
            "Volume": [float(c.volume) if c else nan for c in rows],
        },
        index=pd.DatetimeIndex([b.replace(tzinfo=None) for b in layout.buckets]),
    )
    frame.index.name = "IST"
    span = (frame["High"].max() - frame["Low"].min()) or 1.0
    marks = {BACKFILL: ("v", BACKFILL_COLOUR, "backfill: the broker's history"),
             PARTIAL: ("o", PARTIAL_COLOUR, "partial: bucket not watched start to end")}  # fmt: skip
    extra, handles = [], []
    for source, (marker, colour, label) in marks.items():
        above = [float(c.high) + span * 0.03 if c and c.source == source else nan for c in rows]
        if any(v == v for v in above):
            extra.append(mpf.make_addplot(above, type="scatter", marker=marker, markersize=40, color=colour))
            handles.append(Line2D([], [], linestyle="", marker=marker, color=colour, label=label))
    fig, axes = mpf.plot(
        frame, type="candle", volume=True, style="yahoo", addplot=extra, returnfig=True,
        figsize=(width / DPI, height / DPI), title=title, ylabel="price", ylabel_lower="volume",
        warn_too_much_data=len(frame) + 1, datetime_format="%d %b %Y" if daily else "%d %b %H:%M",
        scale_padding={"left": 0.3, "right": 0.9, "top": 0.6, "bottom": 0.9},
    )  # fmt: skip
    try:
        price, volume = axes[0], axes[2]
        for ranges, colour, alpha, label in ((layout.unwatched, GAP_COLOUR, 0.25, "unwatched session minutes (gap)"),
                                             (layout.empty, EMPTY_COLOUR, 0.18, "session bucket without a candle")):  # fmt: skip
            for first, last in ranges:
                for ax in (price, volume):
                    ax.axvspan(first - 0.5, last + 0.5, color=colour, alpha=alpha, linewidth=0)
            if ranges:
                handles.append(Patch(color=colour, alpha=alpha + 0.15, label=label))
        if handles:
            price.legend(handles=handles, loc="upper left", fontsize="small", framealpha=0.85)
        bodies = sum(
            sum(bool(p.vertices.size) and bool(_finite(p.vertices)) for p in c.get_paths())
            for c in price.collections
            if type(c) is PolyCollection
        )
        handle, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
        os.close(handle)
        try:
            fig.savefig(tmp, dpi=DPI, format="png")
            os.replace(tmp, out)
        except OSError as exc:
            raise UsageError(f"--out {out}: cannot write it ({exc.strerror}): choose a writable path") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    finally:
        plt.close(fig)
    return bodies


def _finite(vertices: Any) -> bool:
    import numpy as np

    return bool(np.isfinite(vertices).all())
