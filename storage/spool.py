"""A durable spool in front of the store: a closed candle is on disk before it counts as accepted.

The writer appends every batch of candles (one JSON line each) and fsyncs the batch, then
upserts it into the store. Once the store has taken everything the spool holds, the file is
truncated. While the store is away the writer only appends (the spool grows on disk, not in
memory) and replays the file, in order and in chunks, when the store answers again; a restart
replays what an earlier run left. Replays are idempotent: the store upserts by primary key and
later lines (revisions) overwrite earlier ones, as they did live.

A line cut short by a crash in the middle of an append is skipped and counted. An append the
disk refuses (full, I/O error) raises ``OSError`` and leaves the file as it was before it: the
file is cut back to its last whole batch, then and again before the next append, so a failed
append never glues a half line to the next one nor writes a candle twice. One daemon per
spool: a lock file refuses a second one.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from decimal import Decimal
from itertools import islice
from pathlib import Path

from candles.model import LIVE, Candle
from core.ist import IST
from storage.base import TextMemo

log = logging.getLogger(__name__)

_APPEND_PIECE = 1000  # candles encoded and handed to the file at a time


class SpoolError(Exception):
    """The spool cannot be used; the message says why and what to do."""


def _dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, IST)


def _time_text(value: datetime | None) -> str:
    return "null" if value is None else repr(value.timestamp())


def encoder() -> Callable[[Candle], bytes]:
    """A candle's spool line: the JSON array ``json.dumps`` makes of its fields (times as epoch
    seconds, prices as text), built with the text of names and times made once per encoder. Take
    one encoder per batch: its memory of names and times lasts as long as it does."""
    name = TextMemo(json.dumps)
    when = TextMemo(_time_text)

    def encode(c: Candle) -> bytes:
        return (
            f'[{name[c.exchange]},{name[c.symbol]},{name[c.interval]},{when[c.bucket]},'
            f'"{str(c.open)}","{str(c.high)}","{str(c.low)}","{str(c.close)}",'
            f"{_number(c.volume)},{_number(c.oi)},{_number(c.tick_count)},{when[c.first_tick]},"
            f"{when[c.last_tick]},{_number(c.cum_volume)},{'true' if c.final else 'false'},{name[c.source]}]\n"
        ).encode()

    return encode


def _number(value: int | None) -> str:
    if type(value) is int:
        return int.__repr__(value)
    return json.dumps(value)


def encode(candle: Candle) -> bytes:
    return encoder()(candle)


def decode(line: bytes) -> Candle:
    """A candle from its spool line. A line of 15 fields (written before candles had a source)
    is a ``live`` candle: the spool an upgraded daemon finds at its first start still replays."""
    fields = json.loads(line)
    e, s, i, b, o, h, lo, c, v, oi, n, first, last, cum, final = fields[:15]
    source = fields[15] if len(fields) == 16 else (LIVE if len(fields) == 15 else None)
    if source is None:
        raise ValueError(f"a spool line of {len(fields)} fields: not a candle")
    return Candle(
        e, s, i, datetime.fromtimestamp(b, IST), Decimal(o), Decimal(h), Decimal(lo), Decimal(c),
        v, oi, n, _dt(first), _dt(last), cum, bool(final), source,
    )  # fmt: skip


class Spool:
    """Append-only candle file with a replay cursor; used by one thread (the store writer)."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.dir / "spool.lock", "a+")  # noqa: SIM115 - held for the spool's life
        except OSError as exc:
            raise SpoolError(f"cannot use the spool directory {self.dir}: {exc.strerror}; check DATA_DIR") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise SpoolError(
                f"another marketfeed process uses the spool in {self.dir}: give each daemon its own DATA_DIR"
            ) from None
        self.path = self.dir / "candles.spool"
        # unbuffered: a write the disk refuses leaves nothing behind in a buffer to be written later
        self._file = open(self.path, "ab+", buffering=0)  # noqa: SIM115
        self._cut_torn_tail()
        self._size = self._file.seek(0, os.SEEK_END)  # bytes of whole, fsynced batches
        self.depth = sum(1 for _ in self._lines())  # candles on disk not yet known to be in the store
        self.torn = 0  # lines cut short by a crash, skipped
        self.appended = 0
        self._replayed = 0  # byte offset up to which a replay has been taken by the store

    def __repr__(self) -> str:
        return f"Spool({str(self.path)!r}, depth={self.depth})"

    def _cut_torn_tail(self) -> None:
        """A crash in the middle of an append leaves a last line without its newline: drop it,
        or the next append would glue a good line onto it."""
        size = self._file.seek(0, os.SEEK_END)
        if size == 0:
            return
        self._file.seek(max(0, size - 65536))
        tail = self._file.read()
        cut = tail.rfind(b"\n") + 1
        if cut != len(tail):
            keep = size - (len(tail) - cut)
            log.warning("spool %s: dropping %d bytes of a line cut short by a crash", self.path, size - keep)
            self._file.truncate(keep)
            self._file.flush()
            os.fsync(self._file.fileno())

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def append(self, candles: Iterable[Candle]) -> int:
        """Append and fsync; returns how many were written. Raises ``OSError`` when the disk refuses
        (full, I/O error): then none of them counts as written and the file is as it was."""
        # In pieces of _APPEND_PIECE candles, one fsync at the end: a 27,000-candle close never
        # stands in memory as one block of lines.
        n = 0
        it = iter(candles)
        encode = encoder()
        try:
            while piece := b"".join(map(encode, islice(it, _APPEND_PIECE))):
                if not n:
                    self._cut_to_size()
                self._write_all(piece)
                n += piece.count(b"\n")
            if not n:
                return 0
            os.fsync(self._file.fileno())
        except OSError:
            self._undo()
            raise
        self._size = self._file.seek(0, os.SEEK_END)
        self.depth += n
        self.appended += n
        return n

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self._file.write(view) :]  # a full disk may take part of it, then raises

    def _cut_to_size(self) -> None:
        """Cut off what a refused append left after the last whole batch."""
        if self._file.seek(0, os.SEEK_END) != self._size:
            os.ftruncate(self._file.fileno(), self._size)

    def _undo(self) -> None:
        try:
            self._cut_to_size()  # cutting frees space: it works on a full disk
        except OSError as exc:
            log.warning("spool %s: could not cut back a refused append (%s); the next append does", self.path, exc)

    def clear(self) -> None:
        """The store has everything the spool holds: start the file afresh. Raises ``OSError`` when
        the disk refuses; the spool's count is then still what the file holds."""
        self._file.truncate(0)
        self._size = 0
        self.depth = 0
        self._replayed = 0
        os.fsync(self._file.fileno())

    def _lines(self, start: int = 0) -> Iterator[tuple[int, bytes]]:
        """(offset after the line, line) from ``start``; a last line without newline is torn.
        Stops at the end of the last whole batch: what a refused append left after it never counts."""
        end = self._size
        with open(self.path, "rb") as src:
            src.seek(start)
            offset = start
            for line in src:
                if offset + len(line) > end:
                    break
                offset += len(line)
                if line.endswith(b"\n"):
                    yield offset, line

    def chunks(self, size: int = 2000) -> Iterator[tuple[int, list[Candle]]]:
        """Chunks of spooled candles not yet replayed, in order, with the offset each ends at.
        Call ``replayed(offset)`` once the store has taken a chunk."""
        chunk: list[Candle] = []
        end = self._replayed
        for offset, line in self._lines(self._replayed):
            try:
                chunk.append(decode(line))
            except (ValueError, TypeError):
                self.torn += 1
                log.warning("spool %s: skipped an unreadable line at offset %d", self.path, offset - len(line))
            end = offset
            if len(chunk) >= size:
                yield end, chunk
                chunk = []
        if chunk or end != self._replayed:
            yield end, chunk

    def replayed(self, offset: int, count: int) -> None:
        self._replayed = offset
        self.depth = max(0, self.depth - count)

    def close(self) -> None:
        self._file.close()
        try:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
        finally:
            self._lock.close()
