"""Reading settings from the environment and `.env`: one declaration per setting, problems collected.

A part of the daemon declares its settings as a frozen dataclass whose fields say, with ``var``,
which variable sets them, their default (written once, there) and what a valid value is.
``read(cls, env)`` fills it from an ``Env``; every problem is added to ``env.problems`` so that one
``ConfigError`` can name every variable to fix. Secrets are marked ``secret=True``: ``redacted``
shows them as ``'***'``.
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from dotenv import dotenv_values

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}

T = TypeVar("T")


class ConfigError(Exception):
    """A setting is missing or invalid; the message names every variable to fix."""


@dataclass(frozen=True, slots=True)
class Var:
    """How one setting is read: its variable, and what a valid value is."""

    name: str
    secret: bool = False
    minimum: float | None = None
    choices: tuple[str, ...] = ()  # case-insensitive; stored as written here
    schemes: tuple[str, ...] = ()  # a URL with one of these schemes and a host
    port: bool = False  # a whole number 1..65535
    file: bool = False  # an existing file
    hint: str = ""  # shown when a required value is missing


def var(name: str, default: Any = None, **how: Any) -> Any:
    """A dataclass field read from the variable ``name`` (see ``Var`` for ``how``)."""
    return field(default=default, metadata={"var": Var(name, **how)})


def variable(f: Field) -> Var | None:
    return f.metadata.get("var")


def redacted(obj: Any) -> str:
    """``Cls(field=value, ...)`` with every secret that is set shown as ``'***'``."""
    parts = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        spec = variable(f)
        secret = spec is not None and spec.secret
        parts.append(f"{f.name}='***'" if secret and value else f"{f.name}={value!r}")
    return f"{type(obj).__name__}({', '.join(parts)})"


class Env:
    """The merged variables (the process environment over the settings file) and the problems found."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self.values = dict(values)
        self.problems: list[str] = []

    def raw(self, name: str) -> str | None:
        """The variable's text, stripped; None when unset or blank."""
        value = self.values.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def raise_problems(self) -> None:
        raise_problems(self.problems)


def raise_problems(problems: list[str]) -> None:
    """One ``ConfigError`` naming every problem, if there is any."""
    if problems:
        raise ConfigError("invalid settings:\n  - " + "\n  - ".join(problems))


def load_env(env: Mapping[str, str] | None = None, env_file: str | os.PathLike[str] | None = ".env") -> Env:
    """The process environment (or ``env``) over ``env_file``; the environment wins."""
    merged: dict[str, str] = {}
    if env_file and Path(env_file).is_file():
        merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    merged.update(os.environ if env is None else env)
    return Env(merged)


def read(cls: type[T], env: Env, **defaults: Any) -> T:
    """An instance of the settings dataclass ``cls`` from ``env``; ``defaults`` replace declared
    defaults that depend on other settings. Problems go to ``env.problems`` (the default is used)."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        spec = variable(f)
        if spec is None:
            continue
        default = defaults.get(f.name, f.default if f.default is not MISSING else None)
        values[f.name] = _value(env, spec, hints[f.name], default)
    return cls(**values)


def _base_type(hint: Any) -> type:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0]
    return hint


def _value(env: Env, spec: Var, hint: Any, default: Any) -> Any:
    raw = env.raw(spec.name)
    if raw is None:
        return default
    kind = _base_type(hint)
    name = spec.name
    if kind is bool:
        low = raw.lower()
        if low in TRUE:
            return True
        if low in FALSE:
            return False
        env.problem(f"{name} is invalid: {raw!r} is not true/false")
        return default
    if kind in (int, float):
        try:
            number = float(raw)
        except ValueError:
            env.problem(f"{name} is invalid: {raw!r} is not a number")
            return default
        if spec.port and (number != int(number) or not 1 <= number <= 65535):
            env.problem(f"{name} is invalid: {raw} is not a port number")
            return default
        if spec.minimum is not None and number < spec.minimum:
            env.problem(f"{name} is invalid: must be at least {spec.minimum:g}, got {raw}")
        return int(number) if kind is int else number
    if spec.choices:
        for choice in spec.choices:
            if raw.lower() == choice.lower():
                return choice
        env.problem(f"{name} is invalid: {raw!r}; use {', '.join(spec.choices[:-1])} or {spec.choices[-1]}")
        return default
    if spec.schemes:
        try:
            parts = urlsplit(raw)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            env.problem(f"{name} is invalid: {raw!r} is not a URL")
            return raw
        if parts.scheme not in spec.schemes or not parts.hostname:
            env.problem(f"{name} is invalid: {raw!r} must be a {' or '.join(s + '://' for s in spec.schemes)} URL with a host")
        return raw
    if spec.file and not Path(raw).is_file():
        env.problem(f"{name} is invalid: {raw} is not a readable file")
    return raw


def require(settings: Any) -> list[str]:
    """A problem for every field of ``settings`` declared with a ``hint`` and left unset."""
    missing = []
    for f in fields(settings):
        spec = variable(f)
        if spec is not None and spec.hint and not getattr(settings, f.name):
            missing.append(f"{spec.name} is missing: set it in .env ({spec.hint})")
    return missing
