"""Hot standby: the lease thread, the role (leader or standby) and what a new leader writes.

Both daemons of a pair stream and aggregate the same watchlist; only the holder of the lease
(storage/lease.py) writes candles. The ``ha`` thread of a standby looks every
``STANDBY_POLL_SECONDS`` and takes the lease once it has expired or its holder's session has
ended (a dead process); a leader renews it every TTL/3; a renewal refused, or none succeeding for a whole TTL, makes the leader a
standby at once (the store's fence is dropped first, so its next write is refused even before the
database would refuse it). The writer asks ``admit`` which of its candles to write:

- standby: none. It keeps its closed candles in memory, the newest ``window`` seconds of buckets
  (a revision replaces the version it revises), for a takeover.
- on becoming leader (``begin``, on the writer thread, after the lease is taken: every write of
  the old epoch has committed or been refused by then): the store's newest bucket of each series
  is its *horizon*. A retained candle is written only when its bucket is newer than the horizon,
  or is the horizon's bucket itself while the store holds it non-final (a clean stop's flush of
  an open bucket). Older buckets keep the old leader's version, gaps included (backfill mends
  those): never two versions of one bucket from two daemons.
- while leader: the same horizon filters every candle of the term (a late revision of a bucket
  the old leader stored is not written); the bucket open at the takeover is newer than the
  horizon, so it is written when it closes. Backfill candles pass: they are the broker's history,
  the same for either daemon, and the store's upsert keeps a final live candle from them (rule 8).
  A standby's backfill thread waits (``active``): its spans are mended once it leads.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime

from candles.model import BACKFILL, Candle
from storage.base import StoreError
from storage.lease import Fence, Lease

log = logging.getLogger(__name__)

LEADER = "leader"
STANDBY = "standby"
RETAIN_SECONDS = 900.0  # a standby keeps the last 15 minutes of closed candles
STANDBY_POLL_SECONDS = 0.5  # how often a standby asks whether the lease is free (a plain read)
_PRUNE_EVERY = 5.0  # seconds between prunings of what a standby keeps

Series = tuple[str, str, str]  # exchange, symbol, interval


class HaRole:
    """The role of this daemon; the ``ha`` thread changes it, the writer reads it."""

    def __init__(
        self,
        lease: Lease,
        store: object,
        *,
        clock: Callable[[], float] = time.time,
        window: float = RETAIN_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lease = lease
        self.store = store  # the writer's store: its ``fence`` is set while this daemon leads
        self.clock = clock
        self.window = window
        self.monotonic = monotonic
        self.ttl = lease.ttl
        self.node = lease.holder
        self.problem: str | None = None  # the lease cannot be read or renewed
        self.takeovers = 0
        self.step_downs = 0
        self.skipped = 0  # candles not written: at or before the horizon of a term
        self.registered = False  # this daemon's broker account is recorded (``Lease.register``)
        self._lock = threading.Lock()
        self._term: Fence | None = None  # the lease this daemon holds
        self._begun: Fence | None = None  # the term the writer has begun (horizon read)
        self._renewed = 0.0  # monotonic time the latest successful acquire/renew was sent
        self._seen = float("-inf")  # monotonic time this daemon last said it is alive (``Lease.seen``)
        self._horizon: dict[Series, tuple[datetime, bool]] = {}
        self._retained: dict[tuple, Candle] = {}
        self._pruned = float("-inf")  # clock time of the last pruning of ``_retained``
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ha", daemon=True)

    # ---- what the others read --------------------------------------------------------------
    @property
    def role(self) -> str:
        return LEADER if self._term is not None else STANDBY

    @property
    def epoch(self) -> int | None:
        term = self._term
        return None if term is None else term.epoch

    @property
    def leading(self) -> bool:
        """The writer may write: the term is begun and renewed within the TTL."""
        term = self._begun
        return term is not None and term is self._term and self.monotonic() - self._renewed < self.ttl

    @property
    def retained(self) -> int:
        return len(self._retained)

    # ---- the lease thread ------------------------------------------------------------------
    def start(self) -> None:
        self.tick()  # before the writer runs: a lone daemon leads from its first candle
        self._thread.start()

    def stop(self, release: bool = True) -> None:
        """Stop renewing; ``release``: let the lease expire now (after the writer drained)."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(5)
        term = self._term
        if term is not None:
            self.step_down("stopping", quiet=True)
            if release:
                try:
                    self.lease.release(term)
                    log.info("HA: released the lease %r (epoch %d)", term.name, term.epoch)
                except StoreError as exc:
                    log.warning("HA: could not release the lease (it expires in %gs): %s", self.ttl, exc)

    def _run(self) -> None:
        # a leader renews every TTL/3; a standby looks more often, so that a holder whose session
        # ended (its process died) is replaced within the poll instead of the TTL
        while not self._stop.wait(self.ttl / 3 if self._term is not None else min(self.ttl / 3, STANDBY_POLL_SECONDS)):
            self.tick()

    def tick(self) -> None:
        """Take the lease if it is free, else renew it; step down when it is lost."""
        term = self._term
        sent = self.monotonic()
        if self.registered and sent - self._seen >= self.ttl / 3:
            self._seen = sent
            with contextlib.suppress(StoreError):  # the acquire or renewal below says what is wrong
                self.lease.seen()
        if term is None:
            try:
                why = self.lease.free()
                fence = None if why is None else self.lease.acquire()
            except StoreError as exc:
                self.problem = f"HA lease {self.lease.name!r}: {exc}"
                return
            self.problem = None
            if fence is not None:
                with self._lock:
                    self._term, self._renewed = fence, sent
                self.takeovers += 1
                log.warning("HA: %s took the lease %r (%s), epoch %d: leader", self.node, fence.name, why, fence.epoch)
            return
        try:
            renewed = self.lease.renew(term)
        except StoreError as exc:
            self.problem = f"HA lease {self.lease.name!r}: {exc}"
            renewed = None
        if renewed:
            self.problem = None
            self._renewed = sent
        elif renewed is False:
            self.step_down(f"the lease {term.name!r} epoch {term.epoch} was not renewed (expired or taken over)")
        elif self.monotonic() - self._renewed >= self.ttl:
            self.step_down(f"the lease {term.name!r} could not be renewed for {self.ttl:g}s")

    def step_down(self, reason: str, *, quiet: bool = False) -> None:
        """Standby from now: the store's fence goes first, so no write follows."""
        with self._lock:
            was = self._term
            self.store.fence = None  # type: ignore[attr-defined]
            self._term = self._begun = None
            self._horizon = {}
            if was is not None:
                self.step_downs += 1  # with the role: a reader never sees one without the other
        if was is not None and not quiet:
            log.error("HA: stepping down to standby (epoch %d): %s", was.epoch, reason)

    # ---- the writer thread -----------------------------------------------------------------
    def admit(self, candles: list[Candle]) -> list[Candle]:
        """The candles to write now: none from a standby (kept in memory); a new leader's retained
        ones past the horizon once its term is begun; a leader's past the horizon."""
        if not self.leading:
            if self._term is not None and self._begun is not self._term:
                return self._begin(candles)
            if self._begun is not None and self.monotonic() - self._renewed >= self.ttl:
                self.step_down(f"no renewal of the lease for {self.ttl:g}s")
            self.retain(candles)
            return []
        return self._past_horizon(candles)

    def retain(self, candles: Iterable[Candle]) -> None:
        kept = self._retained
        for c in candles:
            kept.pop(c.key, None)
            kept[c.key] = c
        now = self.clock()
        if now - self._pruned < _PRUNE_EVERY:
            return  # the writer calls this every 0.2 s; a scan of 15 minutes of candles is not free
        self._pruned = now
        oldest = now - self.window
        for key in [k for k, c in kept.items() if c.bucket.timestamp() < oldest]:
            del kept[key]

    def _begin(self, candles: list[Candle]) -> list[Candle]:
        self.retain(candles)
        term = self._term
        try:
            newest = self.store.latest_per_series(self.clock() - 86_400)  # type: ignore[attr-defined]
        except StoreError as exc:
            log.warning("HA: leader, but the store's newest candles cannot be read yet: %s", exc)
            return []
        with self._lock:
            if term is None or self._term is not term:
                return []  # lost meanwhile
            self._horizon = {(c.exchange, c.symbol, c.interval): (c.bucket, c.final) for c in newest}
            self.store.fence = term  # type: ignore[attr-defined]
            self._begun = term
        retained = sorted(self._retained.values(), key=lambda c: c.bucket)
        self._retained = {}
        out = self._past_horizon(retained)
        log.warning(
            "HA: leader with epoch %d: writing %d retained candles newer than the store's%s; %d older kept as stored",
            term.epoch, len(out), f" (buckets {out[0].bucket:%H:%M} to {out[-1].bucket:%H:%M})" if out else "",
            len(retained) - len(out),
        )  # fmt: skip
        return out

    def _past_horizon(self, candles: list[Candle]) -> list[Candle]:
        horizon = self._horizon
        if not horizon:
            return candles
        out = []
        for c in candles:
            h = horizon.get((c.exchange, c.symbol, c.interval))
            if h is None or c.bucket > h[0] or (c.bucket == h[0] and not h[1]) or c.source == BACKFILL:
                out.append(c)
        self.skipped += len(candles) - len(out)
        return out
