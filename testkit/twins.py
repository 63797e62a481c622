"""What the compiled twins' property tests share: the built module, and which values two
implementations share as the very same object."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import pytest

from core import accel


def built_twin(module: str, what: str) -> ModuleType:
    """The compiled module ``module`` (``what`` names it), even under MARKETFEED_PURE_PYTHON; skips
    the test when it is not built, or was built from older sources."""
    try:
        twin = importlib.import_module(module)
    except ImportError as exc:
        pytest.skip(f"the compiled {what} is not built ({exc}): run scripts/build_ext.py")
    if accel.source_digest(twin.SOURCES) != twin.SOURCE_DIGEST:
        pytest.skip(f"the compiled {what} was built from older sources: run scripts/build_ext.py")
    return twin


def assert_default_follows_the_switch(default: type, reference: type) -> None:
    """The name a module exports (``default``) is the compiled subclass of ``reference``, unless
    MARKETFEED_PURE_PYTHON forces the reference itself."""
    forced = accel.forced_pure()
    assert default.compiled is not forced
    assert (default is reference) is forced
    assert issubclass(default, reference) and reference.compiled is False


class Identities:
    """Which earlier value each value is the very same object as: the caches' sharing, observable
    as ``is``, compared across decoders whose caches are different objects."""

    def __init__(self) -> None:
        self._first: dict[int, int] = {}
        self._kept: list[Any] = []  # keeps the objects alive, so ids stay unique

    def __call__(self, value: Any) -> int:
        self._kept.append(value)
        return self._first.setdefault(id(value), len(self._kept))
