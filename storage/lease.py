"""The writer's lease of a hot-standby pair, in PostgreSQL: who may write candles, and the epoch
that fences everyone else.

Two daemons stream the same watchlist; the one holding the lease named ``name`` (table
``ha_lease``) writes. Every time is the database's own clock (``now()``), never a host's, so the
hosts' clocks may disagree. ``acquire`` takes the lease only once it has expired, with the epoch
one higher; ``renew`` extends it only while the holder and the epoch still match and it has not
expired. A write transaction of the leader first takes the lease row ``FOR SHARE`` where name,
holder and epoch match and it has not expired (``PostgresStore.fence``): a takeover's UPDATE waits
for that transaction to end, and a write carrying a stale epoch finds no row and is rolled back as
``Fenced``. Row locks and ``SELECT ... FOR SHARE`` are PostgreSQL's (the manual's "Explicit
Locking", "The Locking Clause"); ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` re-checks its
condition on the newest row version under READ COMMITTED, so of concurrent takeovers exactly one
gets the lease.

A holder's process that dies (a crash, SIGKILL, the OOM killer) closes its connection, and the
server ends that session at once; a host that dies or is cut off leaves its sessions open until
TCP gives up. Each acquire and renewal therefore records the holder's session on the lease
connection (``pg_backend_pid()`` and ``pg_postmaster_start_time()``), and the lease is free once
it has expired *or* that session is gone from ``pg_stat_activity`` (its ``pid`` column is shown
to every role) on the same server start: a dead process is replaced within the standby's poll, a
dead host within the TTL. A server restart ends every session, so a record from an earlier start
proves nothing and only the expiry counts. The lease connection must be a session of its own (not
a transaction pooler's shared one: the pid would be the pooler's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from storage.base import StoreError

_SESSION = "pg_backend_pid(), pg_postmaster_start_time()"
# the holder's session has ended (only provable on the server start it was recorded on)
_GONE = """l.holder_boot = pg_postmaster_start_time()
    AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = l.holder_pid)"""
_ACQUIRE = f"""
INSERT INTO ha_lease AS l (name, holder, epoch, expires_at, acquired_at, holder_pid, holder_boot)
VALUES (%(name)s, %(holder)s, 1, now() + make_interval(secs => %(ttl)s), now(), {_SESSION})
ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, epoch = l.epoch + 1,
    expires_at = EXCLUDED.expires_at, acquired_at = now(),
    holder_pid = EXCLUDED.holder_pid, holder_boot = EXCLUDED.holder_boot
WHERE l.expires_at <= now() OR ({_GONE})
RETURNING epoch
"""
# a plain read (no row lock, unlike the upsert's): a standby asks it often
_FREE = f"""
SELECT CASE WHEN l.expires_at <= now() THEN 'expired' WHEN {_GONE} THEN 'session ended' END
FROM ha_lease l WHERE l.name = %(name)s
"""
_RENEW = f"""
UPDATE ha_lease SET expires_at = now() + make_interval(secs => %(ttl)s),
    (holder_pid, holder_boot) = ({_SESSION})
WHERE name = %(name)s AND holder = %(holder)s AND epoch = %(epoch)s AND expires_at > now()
RETURNING epoch
"""
_RELEASE = """
UPDATE ha_lease SET expires_at = now()
WHERE name = %(name)s AND holder = %(holder)s AND epoch = %(epoch)s AND expires_at > now()
"""
_REGISTER = """
INSERT INTO ha_nodes (lease, node, broker, account, connections, seen_at)
VALUES (%(name)s, %(holder)s, %(broker)s, %(account)s, %(connections)s, now())
ON CONFLICT (lease, node) DO UPDATE SET broker = EXCLUDED.broker, account = EXCLUDED.account,
    connections = EXCLUDED.connections, seen_at = now()
RETURNING (
    SELECT COALESCE(sum(connections), 0) FROM ha_nodes
    WHERE lease = %(name)s AND node <> %(holder)s AND broker = %(broker)s AND account = %(account)s
      AND seen_at > now() - make_interval(secs => %(ttl)s * 3)
)
"""
_SEEN = "UPDATE ha_nodes SET seen_at = now() WHERE lease = %(name)s AND node = %(holder)s"
_READ = """
SELECT holder, epoch, extract(epoch FROM expires_at - now()) FROM ha_lease WHERE name = %(name)s
"""
FENCE_CHECK = """
SELECT epoch FROM ha_lease
WHERE name = %s AND holder = %s AND epoch = %s AND expires_at > now()
FOR SHARE
"""


@dataclass(frozen=True, slots=True)
class Fence:
    """What a leader's write carries: the lease, its holder and the epoch it was granted."""

    name: str
    holder: str
    epoch: int


@dataclass(frozen=True, slots=True)
class LeaseState:
    holder: str
    epoch: int
    remaining: float  # seconds until it expires by the database's clock (negative: expired)


class Lease:
    """Lease operations for ``holder`` on lease ``name``, run through ``store`` (a
    ``PostgresStore`` of its own: renewals must not wait behind the writer's connection)."""

    def __init__(self, store: Any, name: str, holder: str, ttl: float) -> None:
        if not name or not holder:
            raise StoreError("the lease needs a name (HA_LEASE_NAME) and a holder (HA_NODE_ID)")
        self.store = store
        self.name = name
        self.holder = holder
        self.ttl = float(ttl)
        # a writer paused inside its transaction holds the lease row: PostgreSQL ends such a
        # session after the TTL, so a takeover never waits on it for longer
        self._lock_timeout_ms = max(100, int(self.ttl * 1000 / 3))

    def _params(self, epoch: int | None = None) -> dict[str, Any]:
        return {"name": self.name, "holder": self.holder, "ttl": self.ttl, "epoch": epoch}

    def _one(self, action: str, statement: str, params: dict[str, Any]) -> Any:
        def work(cur: Any) -> Any:
            cur.execute(f"SET LOCAL lock_timeout = {self._lock_timeout_ms}")
            cur.execute(statement, params)
            return cur.fetchone() if cur.description else None

        return self.store._run(action, work)

    def free(self) -> str | None:
        """Why the lease may be taken now (``'expired'``, ``'session ended'``; ``'free'`` if it
        was never taken), or None while its holder's term runs. A read: cheap to ask often."""
        row = self._one(f"read the lease {self.name!r}", _FREE, self._params())
        return "free" if row is None else row[0]

    def acquire(self) -> Fence | None:
        """The lease with a new epoch if it had expired, its holder's session had ended, or it
        never existed; None if another (or this holder's still-valid term) holds it."""
        row = self._one(f"take the lease {self.name!r}", _ACQUIRE, self._params())
        return None if row is None else Fence(self.name, self.holder, int(row[0]))

    def renew(self, fence: Fence) -> bool:
        """Extend the lease by the TTL; False once it is no longer this fence's (expired or taken)."""
        row = self._one(f"renew the lease {self.name!r}", _RENEW, self._params(fence.epoch))
        return row is not None

    def release(self, fence: Fence) -> None:
        """Let it expire now (a clean stop): the standby takes over at its next try."""
        self._one(f"release the lease {self.name!r}", _RELEASE, self._params(fence.epoch))

    def register(self, broker: str, account: str, connections: int) -> int:
        """Record this daemon's broker account (a digest, never the key) and the connections it
        needs; returns the connections the pair's other live daemons hold on the same account."""
        params = {**self._params(), "broker": broker, "account": account, "connections": connections}
        row = self._one("register with the lease", _REGISTER, params)
        return int(row[0]) if row else 0

    def seen(self) -> None:
        """This daemon is alive (each lease tick): ``register`` counts daemons seen within 3 TTLs."""
        self._one("register with the lease", _SEEN, self._params())

    def read(self) -> LeaseState | None:
        row = self._one(f"read the lease {self.name!r}", _READ, self._params())
        return None if row is None else LeaseState(str(row[0]), int(row[1]), float(row[2]))
