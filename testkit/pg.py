"""A real, throwaway PostgreSQL server for integration tests.

``PostgresServer`` runs initdb into a temporary directory, starts the server on a free port on
127.0.0.1 (socket in the same directory), and can be stopped and started again on the same
port and data (tests that take the database away mid-run). Tuned for speed, not durability.

initdb and postgres refuse to run as root; as root (here and in CI) the directory is handed to
the ``postgres`` system user (else ``nobody``) and the binaries run as that user.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg2
from psycopg2 import sql

from testkit.waiting import free_port

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found on PATH or under "
    "/usr/lib/postgresql/*/bin: install them, e.g. 'sudo apt-get install -y postgresql' on "
    "Debian/Ubuntu"
)

# fsync off: only the machine crashing could lose data, and the data lives for one session.
# synchronous_commit stays on: with it off, a commit could still sit in WAL buffers when stop()
# kills the server (-m immediate), and tests that restart PostgreSQL would see it vanish.
_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "full_page_writes": "off",
    "max_connections": "100",
    "shared_buffers": "32MB",
    "log_min_messages": "warning",
    "log_statement": "none",
}


class PostgresNotFound(RuntimeError):
    """The server binaries are not installed; the message says how to install them."""


def find_bindir() -> Path:
    """Directory holding initdb, pg_ctl and postgres: PATH first, else the newest
    /usr/lib/postgresql/<version>/bin."""
    names = ("initdb", "pg_ctl", "postgres")
    found = [shutil.which(n) for n in names]
    if all(found):
        dirs = {Path(os.path.realpath(f)).parent for f in found if f}
        if len(dirs) == 1:
            return dirs.pop()
    candidates = [Path(d) for d in glob.glob("/usr/lib/postgresql/*/bin")]
    candidates = [d for d in candidates if all((d / n).is_file() for n in names)]

    def version(d: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", d.parent.name)) or (0,)

    if candidates:
        return max(candidates, key=version)
    raise PostgresNotFound(INSTALL_HINT)



def _unprivileged_user() -> pwd.struct_passwd:
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError(
        "running as root, and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL "
        "as (initdb refuses root): create one, e.g. 'useradd --system postgres'"
    )


class PostgresServer:
    """One PostgreSQL cluster in a temp dir. Use as a context manager, or start()/cleanup().

    ``start()`` initialises on first call and (re)starts the server; ``stop()`` kills it
    (``-m immediate``, like a crash) leaving the data in place; ``cleanup()`` stops it and
    deletes everything. ``dsn(dbname)`` is a key=value DSN for user ``postgres`` (trust auth).
    """

    def __init__(self, bindir: Path | None = None) -> None:
        self.bindir = bindir or find_bindir()
        self.port = 0
        self.host = "127.0.0.1"
        self.base: Path | None = None
        self._user: pwd.struct_passwd | None = _unprivileged_user() if os.geteuid() == 0 else None
        self._running = False
        self._version = 0

    # -- paths ----------------------------------------------------------------------------------

    @property
    def datadir(self) -> Path:
        assert self.base is not None, "the server was never started"
        return self.base / "data"

    @property
    def logfile(self) -> Path:
        assert self.base is not None, "the server was never started"
        return self.base / "server.log"

    @property
    def running(self) -> bool:
        return self._running

    # -- lifecycle ------------------------------------------------------------------------------

    def _run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        kwargs: dict = {}
        if self._user is not None:
            kwargs = {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}
        env = {**os.environ, "LC_ALL": "C", "LANG": "C", "HOME": str(self.base)}
        for var in ("PGDATA", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD", "PGOPTIONS"):
            env.pop(var, None)
        proc = subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            cwd=self.base,  # postgres must be able to read its working directory
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            **kwargs,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{args[0]} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n"
                f"{self._log_tail()}"
            )
        return proc

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.logfile.read_text(errors="replace").splitlines()
        except (OSError, AssertionError):
            return ""
        return "server log (last lines):\n" + "\n".join(text[-lines:])

    def _init(self) -> None:
        root = Path(tempfile.gettempdir())
        if self._user is not None and not os.access(root, os.X_OK):  # pragma: no cover
            root = Path("/tmp")
        self.base = Path(tempfile.mkdtemp(prefix="marketfeed-pg-", dir=root))
        atexit.register(self.cleanup)
        if self._user is not None:
            os.chown(self.base, self._user.pw_uid, self._user.pw_gid)
        self._run("initdb", "-D", str(self.datadir), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8", "--locale=C")
        settings = {**_SETTINGS, "unix_socket_directories": f"'{self.base}'"}
        with open(self.datadir / "postgresql.conf", "a") as conf:
            conf.write("\n# testkit/pg.py\n")
            conf.writelines(f"{k} = {v}\n" for k, v in settings.items())

    def start(self, timeout: float = 60) -> None:
        """Initialise (first time only) and start; returns once connections are accepted."""
        if self._running:
            return
        if self.base is None:
            self._init()
        first = self.port == 0
        for attempt in range(3):
            if first:
                self.port = free_port()
            proc = self._run(
                "pg_ctl", "start", "-D", str(self.datadir), "-l", str(self.logfile), "-w",
                "-t", str(int(timeout)), "-o", f"-p {self.port}", check=False, timeout=timeout + 10,
            )
            if proc.returncode == 0:
                break
            # Another process took the port between free_port() and bind: pick another.
            if first and attempt < 2 and "could not bind" in self._log_tail(10):
                continue
            raise RuntimeError(
                f"PostgreSQL did not start on port {self.port}:\n{proc.stdout}\n{proc.stderr}\n{self._log_tail()}"
            )
        self._running = True
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg2.connect(self.dsn("postgres"), connect_timeout=2).close()
                return
            except psycopg2.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"PostgreSQL on port {self.port} never accepted connections: {exc}\n{self._log_tail()}"
                    ) from exc
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop at once (``-m immediate``); data and port are kept for a later start()."""
        if not self._running:
            return
        self._run("pg_ctl", "stop", "-D", str(self.datadir), "-m", "immediate", "-w", check=False)
        self._running = False

    def cleanup(self) -> None:
        """Stop and delete the data directory. Safe to call more than once."""
        if self.base is None:
            return
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None
            self.port = 0

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # -- databases ------------------------------------------------------------------------------

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.host} port={self.port} user=postgres dbname={dbname}"

    def url(self, dbname: str = "postgres", password: str | None = None) -> str:
        secret = f":{password}" if password else ""
        return f"postgresql://postgres{secret}@{self.host}:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """Create an empty database and return its DSN."""
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if self._server_version() >= 150000:
            # FILE_COPY is ~4x faster than 15's default WAL_LOG for tiny template databases.
            statement += sql.SQL(" STRATEGY FILE_COPY")
        self.execute(statement)
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting whoever is still on it."""
        self.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def _server_version(self) -> int:
        if not self._version:
            conn = psycopg2.connect(self.dsn("postgres"), connect_timeout=5)
            self._version = conn.server_version
            conn.close()
        return self._version

    def execute(self, statement: str | sql.Composable, dbname: str = "postgres") -> None:
        """Run one statement outside a transaction (autocommit) as the superuser."""
        conn = psycopg2.connect(self.dsn(dbname), connect_timeout=5)
        try:
            conn.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
            with conn.cursor() as cur:
                cur.execute(statement)
        finally:
            conn.close()
