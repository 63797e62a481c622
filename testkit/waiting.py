"""Small helpers the tests share: waiting for a condition, a free port on loopback."""

from __future__ import annotations

import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable


def wait_until(pred: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``pred`` until it is true; AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"{what} did not happen within {timeout} s")


# Ports handed out by free_port(): below the kernel's ephemeral range, where bind(("", 0)) and every
# outgoing connection take their ports, so that neither can take a port between free_port() and the
# bind of the server it is for. Under pytest-xdist each worker hands out its own slice of the range.
_LOWEST = 15_000
_lock = threading.Lock()
_next: dict[tuple[int, int], int] = {}


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def _slice() -> tuple[int, int]:
    """[start, end) of the ports this process hands out: its xdist worker's share of the range."""
    worker = re.fullmatch(r"gw(\d+)", os.environ.get("PYTEST_XDIST_WORKER", ""))
    index = int(worker.group(1)) if worker else 0
    count = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1), index + 1)
    size = (_ephemeral_low() - _LOWEST) // count
    start = _LOWEST + index * size
    return start, start + size


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on, for a server the caller starts next (or for a
    connection that must be refused). Successive calls in one process go round this process's
    slice of the ports below the ephemeral range (see above), skipping ports that are taken."""
    start, end = _slice()
    if end - start < 100:  # an unusual ip_local_port_range leaves no room below it: let the kernel pick
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    with _lock:
        port = _next.get((start, end)) or random.randrange(start, end)
        for _ in range(end - start):
            candidate = port
            port = port + 1 if port + 1 < end else start
            if _bindable(candidate):
                _next[(start, end)] = port
                return candidate
    raise RuntimeError(f"no free port on 127.0.0.1 in {start}-{end - 1}")
