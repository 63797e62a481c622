"""The compiled hot path: which per-tick modules run as compiled code, and why not when they don't.

A few per-tick modules have a compiled twin (Cython, built by ``scripts/build_ext.py``, which
``scripts/bootstrap.sh`` runs): ``candles/_speedups.pyx`` for the aggregator's per-tick path,
``brokers/kite/_speedups.pyx`` for Kite's full-frame decode, ``brokers/kotak_neo/_speedups.pyx``
for Kotak Neo's market-picture frames and ``publishers/_speedups.pyx`` for the NATS tick encoder.
The pure-Python modules stay the reference and the fallback: ``load`` returns the compiled module
only when it imports and was built from the sources on disk now; otherwise the caller keeps its
Python code and ``report`` says why (for the daemon's start-up line).

``MARKETFEED_PURE_PYTHON=1`` (any value but empty or 0) runs the pure-Python path even where the
compiled one is built: the tests run both paths this way.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path
from types import ModuleType

__all__ = ["ENV", "Choice", "forced_pure", "load", "report", "source_digest"]

ENV = "MARKETFEED_PURE_PYTHON"
_ROOT = Path(__file__).resolve().parent.parent


class Choice:
    """One compiled module's outcome: ``compiled`` is True when it runs, else ``reason`` says why not."""

    __slots__ = ("name", "compiled", "reason")

    def __init__(self, name: str, compiled: bool, reason: str = "") -> None:
        self.name = name
        self.compiled = compiled
        self.reason = reason

    def __repr__(self) -> str:
        return f"Choice({self.name!r}, compiled={self.compiled}, reason={self.reason!r})"


_choices: dict[str, Choice] = {}


def forced_pure() -> bool:
    return os.environ.get(ENV, "").strip() not in ("", "0")


def source_digest(sources: tuple[str, ...]) -> str:
    """The digest a compiled module is built with: sha256 over its sources (paths from the project root)."""
    h = hashlib.sha256()
    for rel in sources:
        h.update(rel.encode())
        h.update(b"\0")
        h.update((_ROOT / rel).read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def load(name: str) -> ModuleType | None:
    """The compiled module ``name`` if it should run, else None (the reason is kept for ``report``).

    A module runs when it imports and its ``SOURCES`` (the .pyx and the Python modules it mirrors)
    hash to its ``SOURCE_DIGEST``: a build older than an edit of either side is not used."""
    if forced_pure():
        _choices[name] = Choice(name, False, f"{ENV} is set")
        return None
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        missing = getattr(exc, "name", None) == name
        why = "not built" if missing else f"does not import ({exc})"
        _choices[name] = Choice(name, False, why)
        return None
    try:
        current = source_digest(module.SOURCES)
    except OSError:  # sources not shipped beside the build: trust the build
        current = module.SOURCE_DIGEST
    if current != module.SOURCE_DIGEST:
        _choices[name] = Choice(name, False, "built from older sources")
        return None
    _choices[name] = Choice(name, True)
    return module


def report() -> tuple[bool, str]:
    """(worth a warning, one line for the start-up log) over the modules asked for so far. A
    missing or stale build is worth a warning; the pure path asked for with ``MARKETFEED_PURE_PYTHON`` is not."""
    done = [c.name for c in _choices.values() if c.compiled]
    missing = [c for c in _choices.values() if not c.compiled]
    if not missing:
        return False, f"hot path: compiled ({', '.join(done)})"
    why = "; ".join(f"{c.name} {c.reason}" for c in missing)
    if forced_pure():
        return False, f"hot path: pure Python ({ENV} is set)"
    part = "pure Python" if not done else f"pure Python in part, compiled {', '.join(done)}"
    return True, (
        f"hot path: {part} ({why}): the daemon runs, with more CPU a tick; "
        "run scripts/bootstrap.sh to build it (it needs a C compiler and the Python headers)"
    )
