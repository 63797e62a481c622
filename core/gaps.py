"""Gaps: the session minutes a symbol's watched spans leave out.

A session minute is covered when one watched span (merged with the spans it touches) lasts from
its start to its end; a gap is a session minute that is not. Times are epoch seconds; sessions
come from the market calendar (aware datetimes, on whole minutes). Pure functions: the pipeline
counts today's gap minutes with them, the ``--show-gaps`` view prints them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime

Span = tuple[float, float]


def merged(spans: Iterable[Span]) -> list[Span]:
    """``spans`` sorted, the overlapping and touching ones joined."""
    out: list[list[float]] = []
    for began, ended in sorted(spans):
        if out and began <= out[-1][1]:
            if ended > out[-1][1]:
                out[-1][1] = ended
        else:
            out.append([began, ended])
    return [(b, e) for b, e in out]


def gaps(sessions: Sequence[tuple[datetime, datetime]], spans: Iterable[Span], until: float = math.inf) -> list[Span]:
    """The uncovered minutes of ``sessions`` as merged (start, end) ranges, whole minutes only;
    minutes that end after ``until`` (now: not over yet) are left out."""
    watched = merged(spans)
    out: list[Span] = []
    for open_, close in sessions:
        start = open_.timestamp()
        end = close.timestamp()
        if until < end:
            end = start + 60 * math.floor((until - start) / 60)
        at = start  # from here on, nothing in this session is known to be covered yet
        for began, ended in watched:
            if at >= end or began >= end:
                break
            if ended <= at:
                continue
            if began > at:
                _add(out, start, at, began, end)
            at = ended
        if at < end:
            _add(out, start, at, end, end)
    return out


def _add(out: list[Span], start: float, a: float, b: float, end: float) -> None:
    """Add the minutes (on the grid of ``start``) that the hole ``a``..``b`` touches, up to ``end``."""
    first = start + 60 * math.floor((a - start) / 60)
    last = min(end, start + 60 * math.ceil((b - start) / 60))
    if last <= first:
        return
    if out and first <= out[-1][1]:
        out[-1] = (out[-1][0], max(out[-1][1], last))
    else:
        out.append((first, last))


def gap_minutes(sessions: Sequence[tuple[datetime, datetime]], spans: Iterable[Span], until: float = math.inf) -> int:
    """How many session minutes ``gaps`` finds."""
    return sum(round((end - start) / 60) for start, end in gaps(sessions, spans, until))
