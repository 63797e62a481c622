"""Tick journal: what the open buckets were built from, so that a killed daemon resumes them exactly.

Closed candles are safe in the spool; open buckets live in the aggregator's memory. The journal
keeps a snapshot of the aggregator's state (a checkpoint, taken every minute or so) followed by
every tick batch the pipeline added since. After a crash or SIGKILL the next start restores the
oldest snapshot still kept and adds the journalled ticks again: the aggregator is where it was,
and the candles it emits again are upserted with the values they already had.

Tick batches are journalled by the broker threads as they hand them over (numbered, in queue
order), so a batch still waiting in the pipeline's queue at a kill is not lost either.
Records are written with one ``write`` per batch and no fsync: they survive the process being
killed (the kernel has them), not the machine losing power. A checkpoint's older segments are
deleted only once the store writer has spooled every candle emitted before it (``release``).

File format, per segment ``ticks-<seq>.jnl``: records of ``kind (1 byte) · length (u32) · payload``;
the first record is the snapshot: kind ``C`` = covered batch number (u64) followed by the snapshot's
bytes, written piece by piece as they are made (the service passes
``CandleAggregator.snapshot_chunks()``), or kind ``S`` = pickled (covered batch number, state) for any
other state; ``T`` =
marshalled (number, (broker, receive time, rows of what the aggregator reads of each tick)): the
token, last quantity and depth are not kept, and every tick of a batch gets the batch's first
receive time. A batch decoded from one frame as a whole (``brokers.base.FrameBatch``, the Kite feed)
is kept as its frame instead, with no work per tick: ``F`` = number (u64), source key (u32),
receive time (f64) and the frame as its source packs it (a Kite frame of full packets without its
depth blocks: 66 bytes a tick, against about 40 for a ``T`` row); ``K`` = key (u32), codec name
(u8 length + text) and the source as it dumps itself (the decoder's table), written in a segment
before its first ``F`` that uses it. The journal does not know any feed: recovery is handed the
loaders of the codecs it may meet (``BaseBroker.frame_codecs``), and refuses a frame whose codec
it was not given.
A record cut short by a kill is ignored. The journal is the
daemon's own state in DATA_DIR: it is trusted like the code (pickle).
"""

from __future__ import annotations

import logging
import marshal
import os
import pickle
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

from core.ist import IST
from core.ticks import FrameBatch, FrameSource, TickData

log = logging.getLogger(__name__)

_HEAD = struct.Struct("<cI")
_SNAPSHOT = b"S"
_CHUNKED = b"C"
_COVERED = struct.Struct("<Q")
_TICKS = b"T"
_FRAME = b"F"
_FRAME_HEAD = struct.Struct("<QId")  # batch number, source key, receive time
_SOURCE = b"K"
_SOURCE_KEY = struct.Struct("<I")
_SHORTEST = {_SNAPSHOT: 0, _CHUNKED: _COVERED.size, _TICKS: 0, _FRAME: _FRAME_HEAD.size, _SOURCE: _SOURCE_KEY.size}


def _pack(ticks: Sequence[TickData]) -> tuple:
    """A batch as what the aggregator reads of it: per tick (exchange, symbol, price as text,
    volume, OI, exchange time as epoch seconds); the broker and receive time once per batch."""
    if not ticks:
        return ("", 0.0, [])
    rows = []
    append = rows.append
    # the decoders share one datetime per exchange second: convert each datetime object once
    # (an aware timestamp() is the costliest step here)
    last_dt: object = None
    ts = 0.0
    for t in ticks:
        dt = t.exchange_ts
        if dt is not last_dt:
            last_dt = dt
            ts = dt.timestamp()
        append((t.exchange, t.symbol, str(t.last_price), t.volume, t.oi, ts))
    first = ticks[0]
    return (first.broker, first.receive_ts.timestamp(), rows)


def _unpack(packed: tuple, times: dict[float, datetime]) -> list[TickData]:
    def when(epoch: float) -> datetime:
        value = times.get(epoch)
        if value is None:
            value = times[epoch] = datetime.fromtimestamp(epoch, IST)
        return value

    broker, rts, rows = packed
    received = when(rts)
    return [TickData(broker, e, s, 0, Decimal(p), None, v, oi, when(ts), received) for e, s, p, v, oi, ts in rows]


class TickJournal:
    """Appended to by the broker threads (``append``, under a lock that also keeps the order of
    the pipeline's queue), checkpointed by the pipeline thread, released by the store writer.

    Every tick batch gets a record number ``n``; a snapshot records the last ``n`` it includes.
    Recovery takes the newest snapshot whose earlier candles were spooled (released) and adds the
    batches numbered after it, wherever they are (a batch queued before a checkpoint but processed
    after it sits in the segment before the snapshot's)."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self._file: Any = None
        self.seq = max((self._seq(p) for p in self._segments()), default=0)
        self.number = 0  # number of the last tick batch appended
        self.records = 0
        self._sources: dict[FrameSource, int] = {}  # frame sources written in the current segment
        self._next_key = 0

    def __repr__(self) -> str:
        return f"TickJournal({str(self.dir)!r}, segment={self.seq})"

    @staticmethod
    def _seq(path: Path) -> int:
        return int(path.stem.split("-")[1])

    def _segments(self) -> list[Path]:
        return sorted(self.dir.glob("ticks-*.jnl"), key=self._seq)

    # ---------------------------------------------------------------- writing

    def checkpoint(self, state: Any, covered: int) -> int:
        """Start a new segment with a snapshot of ``state``, which includes the batches numbered up
        to ``covered``; returns the segment number, for ``release``. ``state`` is either an iterator
        of ``bytes`` pieces, written as they come (recovery returns them joined), or any picklable
        object. Only one thread checkpoints; ``append`` goes on into the old segment meanwhile."""
        seq = self.seq + 1
        new = open(self.dir / f"ticks-{seq:08d}.jnl", "wb")  # noqa: SIM115 - the current segment from now on
        try:
            if isinstance(state, Iterator):
                self._write_chunked(new, state, covered)
            else:
                payload = pickle.dumps((covered, state), protocol=pickle.HIGHEST_PROTOCOL)
                new.write(_HEAD.pack(_SNAPSHOT, len(payload)))
                new.write(payload)
            new.flush()
            os.fsync(new.fileno())
        except BaseException:
            new.close()
            (self.dir / f"ticks-{seq:08d}.jnl").unlink(missing_ok=True)
            raise
        with self.lock:
            old, self._file, self.seq = self._file, new, seq
            self._sources = {}  # a segment names its own sources: recovery may start at any kept one
        if old is not None:
            old.close()
        return seq

    @staticmethod
    def _write_chunked(out: Any, chunks: Iterable[bytes], covered: int) -> None:
        out.write(_HEAD.pack(_CHUNKED, 0))  # the length is filled in once known
        length = out.write(_COVERED.pack(covered))
        for chunk in chunks:
            length += out.write(chunk)
        if length >= 1 << 32:
            raise OSError(f"a journal snapshot of {length} bytes does not fit a record (4 GiB at most)")
        out.seek(0)
        out.write(_HEAD.pack(_CHUNKED, length))
        out.seek(0, os.SEEK_END)

    def append(self, ticks: Sequence[TickData]) -> int:
        """Journal a batch (call with ``lock`` held); returns its number."""
        self.number += 1
        out = self._file
        if out is not None:
            if isinstance(ticks, FrameBatch):
                source = ticks.source
                key = self._sources.get(source)
                if key is None:
                    key = self._write_source(out, source)
                packed = source.pack(ticks.frame)
                head = _FRAME_HEAD.pack(self.number, key, ticks.receive_epoch)
                out.write(_HEAD.pack(_FRAME, len(head) + len(packed)) + head + packed)
            else:
                payload = marshal.dumps((self.number, _pack(ticks)))
                out.write(_HEAD.pack(_TICKS, len(payload)) + payload)
            out.flush()  # in the kernel's hands: survives a kill of this process
            self.records += 1
        return self.number

    def _write_source(self, out: Any, source: FrameSource) -> int:
        self._next_key += 1
        key = self._next_key
        name = source.codec.encode()
        payload = _SOURCE_KEY.pack(key) + bytes((len(name),)) + name + source.dumps()
        out.write(_HEAD.pack(_SOURCE, len(payload)) + payload)
        self._sources[source] = key
        return key

    def release(self, seq: int) -> None:
        """Everything emitted before checkpoint ``seq`` is spooled: recovery may start from it, and
        segments before the one preceding it can go. The mark is replaced whole (a full disk
        leaves the previous one, never an empty file); the old segments go either way, which frees
        space and leaves recovery an older snapshot than the mark's at worst."""
        tmp = self.dir / "released.tmp"
        try:
            tmp.write_text(str(seq))
            os.replace(tmp, self.dir / "released")
        except OSError as exc:
            log.warning("journal %s: could not mark checkpoint %d released (%s)", self.dir, seq, exc)
        for path in self._segments():
            if self._seq(path) < seq - 1:
                path.unlink(missing_ok=True)

    def close(self) -> None:
        with self.lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    # ---------------------------------------------------------------- recovery (at start)

    def recover(
        self, codecs: Mapping[str, Callable[[bytes], FrameSource]] | None = None
    ) -> tuple[Any, list[list[TickData]]] | None:
        """The newest released snapshot (else the oldest one) and the batches numbered after it.
        ``codecs`` loads the frame sources the journal kept, by codec name. Raises ``ValueError``
        for a journal that cannot be replayed (a frame of a codec not given, say)."""
        codecs = codecs or {}
        try:
            released = int((self.dir / "released").read_text())
        except (OSError, ValueError):
            released = 0
        snapshots: list[tuple[int, bytes, bytes]] = []
        times: dict[float, datetime] = {}
        batches: dict[int, Callable[[], list[TickData]]] = {}  # number -> what builds its ticks again
        for path in self._segments():
            sources: dict[int, FrameSource] = {}
            for kind, payload in self._records(path):
                if kind == _TICKS:
                    n, packed = marshal.loads(payload)
                    batches[n] = partial(_unpack, packed, times)
                elif kind == _FRAME:
                    n, key, epoch = _FRAME_HEAD.unpack_from(payload)
                    if key not in sources:
                        raise ValueError(f"journal {path}: a frame of batch {n} names source {key}, not written before it")
                    batches[n] = partial(sources[key].replay, payload[_FRAME_HEAD.size :], epoch)
                elif kind == _SOURCE:
                    sources.update([self._load_source(path, payload, codecs)])
                else:
                    snapshots.append((self._seq(path), kind, payload))
        if not snapshots:
            return None
        usable = [s for s in snapshots if s[0] <= released] or snapshots[:1]
        _, kind, payload = usable[-1]
        if kind == _CHUNKED:
            (covered,) = _COVERED.unpack_from(payload)
            state: Any = payload[_COVERED.size :]
        else:
            covered, state = pickle.loads(payload)
        self.number = max([covered, *batches])  # go on numbering after what is on disk
        later = [batches[n]() for n in sorted(batches) if n > covered]
        return state, later

    @staticmethod
    def _load_source(
        path: Path, payload: bytes, codecs: Mapping[str, Callable[[bytes], FrameSource]]
    ) -> tuple[int, FrameSource]:
        (key,) = _SOURCE_KEY.unpack_from(payload)
        at = _SOURCE_KEY.size
        size = payload[at] if len(payload) > at else 0
        name = payload[at + 1 : at + 1 + size].decode("utf-8", "replace")
        loader = codecs.get(name)
        if loader is None:
            raise ValueError(f"journal {path}: frames of codec {name!r}, which this feed cannot replay")
        return key, loader(payload[at + 1 + size :])

    @staticmethod
    def _records(path: Path) -> Iterator[tuple[bytes, bytes]]:
        data = path.read_bytes()
        pos = 0
        while pos + _HEAD.size <= len(data):
            kind, length = _HEAD.unpack_from(data, pos)
            end = pos + _HEAD.size + length
            if end > len(data) or length < _SHORTEST.get(kind, 1 << 32):
                # (a snapshot being written when the process was killed still has its length 0; an
                # unknown kind is garbage, e.g. the tail of a torn write)
                log.warning("journal %s: ignoring a record cut short at offset %d", path, pos)
                return
            yield kind, data[pos + _HEAD.size : end]
            pos = end
