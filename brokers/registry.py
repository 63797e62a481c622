"""Every venue the daemon can stream from, one line each.

A venue is a package ``brokers/<name>/`` with a ``settings.py`` (its ``Settings`` class, read from
the environment like the daemon's own, see ``config.env``, whose ``missing()`` lists what the venue
needs and the settings lack, each naming the variable to set) and a ``factory.py`` that follows
``VenueFactory``. Adding a venue is that folder and one line in ``VENUES``.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

from brokers.base import BaseBroker, BrokerError

Clock = Callable[[], float]
Report = Callable[..., None]  # report(what, status, detail=""): one line of a --test-broker report


@dataclass(frozen=True, slots=True)
class Venue:
    name: str  # canonical: what logs, metrics and candles' broker column say
    package: str  # brokers.<name>: settings.py and factory.py
    title: str
    aliases: tuple[str, ...] = ()


VENUES: tuple[Venue, ...] = (
    Venue("sim", "brokers.sim", "the built-in simulator"),
    Venue("kite", "brokers.kite", "Zerodha Kite Connect"),
    Venue("kotak_neo", "brokers.kotak_neo", "Kotak Neo", aliases=("kotak",)),
)


@dataclass(frozen=True, slots=True)
class FeedContext:
    """What every venue's factory is given besides its own settings."""

    data_dir: str  # where instrument masters and tokens are kept
    stall_seconds: float | None  # FEED_STALL_SECONDS; None: the venue's own default
    options: argparse.Namespace  # the command line, for the venue's own options (add_arguments)
    #: underlyings the watchlist's universes name (NIFTY, ...): a fresh instrument master without
    #: their contracts is taken for a bad download and the cached one is used instead
    required: tuple[str, ...] = ()


class VenueFactory(Protocol):
    """What ``brokers/<venue>/factory.py`` provides."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The venue's own command-line options (a group of its own), if any."""

    def open_broker(self, settings: Any, ctx: FeedContext) -> tuple[BaseBroker, Clock]:
        """A broker ready to resolve symbols and connect, and the clock its candles run on.
        Raises ``BrokerError`` (a login or a download failed) or ``ValueError`` (a bad option)."""

    def check_login(self, settings: Any, ctx: FeedContext, report: Report) -> BaseBroker | None:
        """For --test-broker: log in and load what the feed needs, reporting each step; None
        (after a FAILED line) when a step fails."""


def choices() -> tuple[str, ...]:
    """Every spelling ``--broker`` accepts."""
    return tuple(n for v in VENUES for n in sorted((v.name, *v.aliases)))


def venue(name: str) -> Venue:
    for v in VENUES:
        if name == v.name or name in v.aliases:
            return v
    raise BrokerError(f"unknown broker {name!r}: use one of {', '.join(choices())}")


def settings_classes() -> dict[str, type]:
    """Each venue's settings class, by the venue's name."""
    return {v.name: importlib.import_module(f"{v.package}.settings").Settings for v in VENUES}


def factory(name: str) -> VenueFactory:
    module: ModuleType = importlib.import_module(f"{venue(name).package}.factory")
    return module  # type: ignore[return-value]  # a module that follows VenueFactory

