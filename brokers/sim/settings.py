"""The simulator's settings: none from the environment; its options are on the command line
(``brokers/sim/factory.py``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Settings:
    def missing(self) -> list[str]:
        return []
