"""``--replay DATE [--symbols …] [--intervals …] [--verify]``: a day's archived ticks through the
daemon's own aggregator, and (``--verify``) the candles it builds against the stored ones.

The ticks of each exchange go through a ``CandleAggregator`` with the daemon's settings (intervals,
grace, empty buckets) in the order the daemon took them, its clock set to their receive times (a
chunk of ticks at a time: a tick the daemon took before its bucket closed may be taken after it
here, and revises the candle the same way, rule 6). Exchanges are replayed one after the other:
a symbol's candles depend only on its own ticks.

``--verify`` compares every stored candle of the day that a replay can rebuild, field by field
(open, high, low, close, volume, oi, tick count, first and last tick, cumulative volume; not
``final``, which says whether the daemon was running at bucket end + grace). It leaves out, and
counts: ``backfill`` candles (the broker's history), ``partial`` ones (a span nobody watched
overlaps them: the ticks were never received), and candles whose bucket lies outside the
archive's coverage (the archive was off, the window was lost to a kill, or ticks were dropped).
"""

from __future__ import annotations

import argparse
import gc
import time
from collections import Counter
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from pathlib import Path

from candles.aggregator import CandleAggregator
from candles.model import BACKFILL, PARTIAL, Candle, Interval, parse_intervals
from cli.errors import UsageError
from config.settings import Settings
from config.symbols import parse_symbol
from core.ist import IST
from storage import open_store

_FIELDS = ("open", "high", "low", "close", "volume", "oi", "tick_count", "first_tick", "last_tick", "cum_volume")


def replay_day(
    root: Path,
    day: date,
    intervals: Iterable[Interval],
    *,
    grace: float = 2.0,
    emit_empty: bool = False,
    wanted: set[tuple[str, str]] | None = None,
) -> tuple[dict[tuple, Candle], int, int]:
    """The candles a day's archived ticks make (the last version of each), the ticks and the files read.

    The cyclic garbage collector does not run on its own meanwhile, only once after each part file:
    its passes, set off by the candles the aggregator makes, would each visit all of the aggregator's
    state (some 200,000 objects at 9,000 symbols) for cycles the replay does not make (about a tenth
    of the replay's CPU). Run after each file, it still frees any cycle within a file's worth of ticks.
    """
    from storage import tick_archive

    intervals = tuple(intervals)
    candles: dict[tuple, Candle] = {}
    ticks = files = 0
    automatic = gc.isenabled()
    gc.disable()
    try:
        for exchange, paths in tick_archive.parts(root, day).items():
            symbols = None if wanted is None else {s for e, s in wanted if e == exchange}
            if symbols is not None and not symbols:
                continue
            now = [0.0]
            agg = CandleAggregator(intervals, lambda now=now: now[0], grace=grace, emit_empty=emit_empty)
            for path in paths:
                files += 1
                for chunk in tick_archive.replay_chunks(path, exchange, symbols):
                    now[0] = chunk.clock
                    ticks += chunk.size
                    for c in agg.add(chunk.ticks):
                        candles[c.key] = c
                    for c in agg.advance():
                        candles[c.key] = c
                gc.collect()
            for c in agg.advance():
                candles[c.key] = c
            for c in agg.flush():
                candles[c.key] = c
    finally:
        if automatic:
            gc.enable()
    return candles, ticks, files


def run_replay(settings: Settings, args: argparse.Namespace) -> int:
    if not settings.archive.dir:
        raise UsageError("--replay reads the tick archive: set TICK_ARCHIVE_DIR to the folder the daemon archived into")
    root = Path(settings.archive.dir)
    day: date = args.replay
    if not (root / f"date={day.isoformat()}").is_dir():
        raise UsageError(f"no ticks archived on {day.isoformat()} in {root} (TICK_ARCHIVE_DIR): nothing to replay")
    intervals = parse_intervals(settings.candles.intervals if args.intervals is None else args.intervals)
    wanted = {parse_symbol(s) for s in args.symbols} or None
    started = time.perf_counter()
    candles, ticks, files = replay_day(
        root, day, intervals, grace=settings.candles.grace_seconds, emit_empty=settings.candles.emit_empty, wanted=wanted
    )
    elapsed = max(time.perf_counter() - started, 1e-9)
    per = Counter(c.interval for c in candles.values())
    shown = ", ".join(f"{iv.name}: {per[iv.name]}" for iv in intervals)
    print(
        f"replay {day.isoformat()}: {ticks:,} ticks from {files} files in {elapsed:.2f} s "
        f"({ticks / elapsed:,.0f} ticks/s): {len(candles):,} candles ({shown})"
    )
    if not args.verify:
        if wanted is not None:
            from cli.views import _HEADER, _row

            for key in sorted({(c.exchange, c.symbol, c.interval) for c in candles.values()}):
                print(f"\n{key[0]}:{key[1]} {key[2]}")
                print(_HEADER)
                for c in sorted((c for c in candles.values() if (c.exchange, c.symbol, c.interval) == key), key=lambda c: c.bucket):
                    print(_row(c))
        return 0
    return _verify(settings, root, day, intervals, candles, wanted)


def _verify(
    settings: Settings,
    root: Path,
    day: date,
    intervals: tuple[Interval, ...],
    replayed: dict[tuple, Candle],
    wanted: set[tuple[str, str]] | None,
) -> int:
    from storage import tick_archive

    spans = tick_archive.coverage(root, day)
    grace = settings.candles.grace_seconds
    start = datetime.combine(day, datetime.min.time(), IST)
    end = start + timedelta(days=1)
    store = open_store(settings.storage.pg_conn_str, settings.storage.sqlite_path, read_only=True)
    try:
        keys = {(c.exchange, c.symbol) for c in replayed.values()}
        keys |= set(store.watched(start.timestamp(), end.timestamp()))
        if wanted is not None:
            keys &= wanted
        stored: dict[tuple, Candle] = {}
        for exchange, symbol in sorted(keys):
            for iv in intervals:
                for c in store.between(exchange, symbol, iv.name, start, end):
                    stored[c.key] = c
    finally:
        store.close()
    seconds = {iv.name: iv.seconds for iv in intervals}

    def covered(c: Candle, final: bool) -> bool:
        a = c.bucket.timestamp()
        b = a + seconds[c.interval] + grace
        # a stored non-final candle was flushed at a stop: the ticks up to the stop are all it has
        return any(s <= a and (b <= u if final else a < u) for s, u in spans)

    skipped: Counter[str] = Counter()
    lines: list[str] = []
    equal = 0
    for key, c in sorted(stored.items(), key=_order):
        if c.source == BACKFILL:
            skipped["backfill"] += 1
            continue
        if c.source == PARTIAL:
            skipped["partial"] += 1
            continue
        if not covered(c, c.final):
            skipped["outside"] += 1
            continue
        r = replayed.get(key)
        if r is None:
            lines.append(f"{_name(c)}: missing from the replay (stored {_brief(c)}): the archive lacks its ticks")
            continue
        diffs = [f"{f} stored {getattr(c, f)} replayed {getattr(r, f)}" for f in _FIELDS if getattr(c, f) != getattr(r, f)]
        if diffs:
            lines.append(f"{_name(c)}: differs: {'; '.join(diffs)}")
        else:
            equal += 1
    extra = 0
    for key, r in sorted(replayed.items(), key=_order):
        if key not in stored and covered(r, True):
            extra += 1
            lines.append(f"{_name(r)}: extra: replayed {_brief(r)}, not in the store")
    compared = equal + len(lines) - extra
    where = "PostgreSQL" if settings.storage.pg_conn_str else f"sqlite:{settings.storage.sqlite_path}"
    for line in lines:
        print(line)
    print(
        f"verify against {where}: {compared:,} stored candles compared, {equal:,} equal, "
        f"{len(lines) - extra:,} differ or missing, {extra:,} extra"
    )
    notes = []
    if skipped["backfill"]:
        notes.append(f"{skipped['backfill']:,} backfill (from the broker's history, not built from ticks)")
    if skipped["partial"]:
        notes.append(f"{skipped['partial']:,} partial (a span nobody watched overlaps them: their ticks were never received)")
    if skipped["outside"]:
        notes.append(
            f"{skipped['outside']:,} outside the archived spans (the archive was off, a window was lost to a kill, "
            "or ticks were dropped)"
        )
    if notes:
        print("not compared: " + "; ".join(notes))
    if not compared and not extra:
        print("nothing to compare: no stored candle of the day lies in the archived spans")
    return 1 if lines else 0


def _order(item: tuple[tuple, Candle]) -> tuple:
    c = item[1]
    return (c.exchange, c.symbol, c.interval, c.bucket)


def _name(c: Candle) -> str:
    return f"{c.exchange}:{c.symbol} {c.interval} {c.bucket.astimezone(IST):%Y-%m-%d %H:%M}"


def _brief(c: Candle) -> str:
    return f"O {c.open} H {c.high} L {c.low} C {c.close} V {c.volume} ticks {c.tick_count}"
