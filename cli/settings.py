"""The daemon's settings with every venue's own (brokers/registry.py): one error names every
variable to fix."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import Any

from brokers import registry
from config import settings as config
from config.env import raise_problems
from config.settings import Settings


def load_settings(
    env: Mapping[str, str] | None = None,
    env_file: str | os.PathLike[str] | None = ".env",
    *,
    env_file_required: bool = False,
) -> Settings:
    """Settings from ``env`` (default: the process environment) over ``env_file``; a missing
    ``env_file`` is an error when ``env_file_required`` (it was named with --env-file)."""
    return config.load_settings(
        env,
        env_file,
        venues=registry.settings_classes(),
        brokers=registry.choices(),
        env_file_required=env_file_required,
        pg_conn_str_problems=_pg_conn_str_problems,
    )


def _pg_conn_str_problems(dsn: str) -> list[str]:
    from storage.postgres import dsn_problems  # psycopg2 only when PG_CONN_STR is set

    return dsn_problems(dsn)


def broker_name(settings: Settings, args: argparse.Namespace) -> str:
    """``--broker`` if given, else MARKETFEED_BROKER, else the simulator."""
    return args.broker or settings.feed.broker or "sim"


def venue_settings(settings: Settings, broker: str) -> Any:
    """The settings of ``--broker``'s venue; ``ConfigError`` naming every variable it needs and lacks."""
    name = registry.venue(broker).name
    venue = settings.venues[name]
    raise_problems(venue.missing())
    return venue


def feed_context(settings: Settings, args: argparse.Namespace, required: tuple[str, ...] = ()) -> registry.FeedContext:
    """What every venue's factory is given besides its own settings; ``required``: the underlyings
    the watchlist's universes name."""
    return registry.FeedContext(settings.storage.data_dir, settings.feed.stall_seconds, args, required)
