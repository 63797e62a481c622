"""Comparing which values two implementations share, for the compiled twins' property tests."""

from __future__ import annotations

from typing import Any


class Identities:
    """Which earlier value each value is the very same object as: the caches' sharing, observable
    as ``is``, compared across decoders whose caches are different objects."""

    def __init__(self) -> None:
        self._first: dict[int, int] = {}
        self._kept: list[Any] = []  # keeps the objects alive, so ids stay unique

    def __call__(self, value: Any) -> int:
        self._kept.append(value)
        return self._first.setdefault(id(value), len(self._kept))
