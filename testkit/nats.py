"""Real, throwaway NATS servers with JetStream for integration tests and benchmarks.

``NatsServer`` writes a config into a temporary directory (its JetStream store beside it) and runs
``nats-server`` on free ports on 127.0.0.1; it can be stopped (or killed) and started again on the
same ports with the same store, as a restarted server would be. ``NatsCluster`` runs three of them
routed to each other as one JetStream cluster.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import nats

from testkit.waiting import free_port

INSTALL_HINT = (
    "nats-server was not found on PATH or in /usr/sbin: install it, e.g. 'sudo apt-get install -y nats-server' on "
    "Debian/Ubuntu (scripts/bootstrap.sh --dev does)"
)


class NatsNotFound(RuntimeError):
    """The server binary is not installed; the message says how to install it."""


def find_nats_server() -> str:
    candidates = ("/usr/sbin/nats-server", "/usr/local/bin/nats-server", "/usr/bin/nats-server")
    found = shutil.which("nats-server") or next((p for p in candidates if os.access(p, os.X_OK)), None)
    if not found:
        raise NatsNotFound(INSTALL_HINT)
    return found


class NatsServer:
    """One nats-server with JetStream (``-js``) on 127.0.0.1; ``url`` is its client address."""

    def __init__(self, name: str = "n1", *, cluster: str | None = None, dir: Path | None = None) -> None:  # noqa: A002
        self.binary = find_nats_server()
        self.name = name
        self.port = free_port()
        self.monitor_port = free_port()
        self.cluster_port = free_port() if cluster else None
        self.cluster = cluster
        self.routes: list[str] = []
        self._own_dir = dir is None
        self.dir = Path(tempfile.mkdtemp(prefix=f"marketfeed-nats-{name}-")) if dir is None else dir
        self.store = self.dir / "jetstream"
        self.config = self.dir / "nats.conf"
        self.log = self.dir / "nats.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _write_config(self) -> None:
        lines = [
            f'server_name: "{self.name}"',
            f"listen: 127.0.0.1:{self.port}",
            f"http: 127.0.0.1:{self.monitor_port}",
            f'jetstream {{ store_dir: "{self.store}" }}',
            f'log_file: "{self.log}"',
        ]
        if self.cluster:
            routes = ", ".join(self.routes)
            lines.append(f'cluster {{ name: "{self.cluster}", listen: 127.0.0.1:{self.cluster_port}, routes: [{routes}] }}')
        self.config.write_text("\n".join(lines) + "\n")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 20.0, *, wait_ready: bool = True) -> None:
        if self.running:
            return
        self._write_config()
        self.proc = subprocess.Popen([self.binary, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if wait_ready:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 20.0, path: str = "/healthz?js-enabled-only=true") -> None:
        """Until the server answers its monitor's health check (its own port: not another's server)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                log = self.log.read_text(errors="replace") if self.log.exists() else ""
                raise RuntimeError(f"nats-server exited with {self.proc.returncode} on port {self.port}: {err}{log[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}{path}", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"nats-server {self.name} was not ready on port {self.port} within {timeout} s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it (``signal.SIGKILL``: kill it, as a crash would); the store stays for a restart."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stderr:
            proc.stderr.close()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


class NatsCluster:
    """Three JetStream servers routed to each other on loopback; ``url`` names them all."""

    def __init__(self, size: int = 3, name: str = "marketfeed-test") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="marketfeed-nats-cluster-"))
        self.nodes = []
        for i in range(size):
            node_dir = self.dir / f"n{i + 1}"
            node_dir.mkdir()
            self.nodes.append(NatsServer(f"n{i + 1}", cluster=name, dir=node_dir))
        for node in self.nodes:
            node.routes = [f"nats://127.0.0.1:{other.cluster_port}" for other in self.nodes if other is not node]

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            node.start(wait_ready=False)
        for node in self.nodes:  # JetStream's health waits for the cluster's meta leader
            node.wait_ready(timeout, "/healthz")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(_js_ready(node) for node in self.nodes):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the NATS cluster had no JetStream leader within {timeout} s")

    def cleanup(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _js_ready(node: NatsServer) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{node.monitor_port}/healthz?js-enabled-only=true", timeout=1) as a:
            if a.status != 200:
                return False
        with urllib.request.urlopen(f"http://127.0.0.1:{node.monitor_port}/jsz", timeout=1) as a:
            import json

            info = json.loads(a.read())
    except (urllib.error.URLError, OSError, ValueError):
        return False
    meta = info.get("meta_cluster") or {}
    return bool(meta.get("leader"))


def stream_messages(url: str, stream: str) -> int:
    """How many messages JetStream stream ``stream`` holds."""

    async def count() -> int:
        nc = await nats.connect(url)
        try:
            return (await nc.jetstream().stream_info(stream)).state.messages
        finally:
            await nc.close()

    return asyncio.run(count())
