"""Reading settings from the environment and `.env`: one declaration per setting, problems collected.

A part of the daemon declares its settings as a frozen dataclass whose fields say, with ``var``,
which variable sets them, their default (written once, there) and what a valid value is.
``read(cls, env)`` fills it from an ``Env``; every problem is added to ``env.problems`` so that one
``ConfigError`` can name every variable to fix. Secrets are marked ``secret=True``: ``redacted``
shows them as ``'***'``.
"""

from __future__ import annotations

import io
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from dotenv import dotenv_values
from dotenv.parser import parse_stream

from config.numbers import PORT, Range

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
    maximum: float | None = None
    above: bool = False  # the minimum itself is not allowed
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


def load_env(
    env: Mapping[str, str] | None = None, env_file: str | os.PathLike[str] | None = ".env", *, required: bool = False
) -> Env:
    """The process environment (or ``env``) over ``env_file``; the environment wins.

    An absent ``env_file`` is no settings file, unless ``required`` (it was named on the command
    line). A file that cannot be read or parsed is a ``ConfigError`` naming the file and the line:
    settings half read are worse than none (a PostgreSQL URL lost to a stray quote sends candles
    to SQLite)."""
    merged: dict[str, str] = {}
    if env_file:
        path = Path(env_file)
        if required or path.exists():
            merged.update(read_env_file(path))
    merged.update(os.environ if env is None else env)
    return Env(merged)


_NAME = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.]*)\s*=")


def read_text_file(
    path: Path, what: str, where: str, form: str, error: type[Exception] | None = None
) -> str:
    """The text of a file the operator names (a BOM is dropped: editors on Windows write one);
    ``error`` (ConfigError) naming the file, what it is (``what``), the setting that names it
    (``where``) and, for text that is not UTF-8, the line and what the file holds (``form``)."""
    error = error or ConfigError
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{what} {str(path)!r} does not exist: check {where}") from None
    except IsADirectoryError:
        raise error(f"{what} {str(path)!r} is a directory: name the file ({where})") from None
    except OSError as exc:
        raise error(f"cannot read {what} {str(path)!r}: {exc.strerror}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = text_line(data, exc.start)
        raise error(f"{path}:{line}: not UTF-8 text (byte {exc.start}): a {what} is text, {form}") from None


def read_env_file(path: Path) -> dict[str, str]:
    """The variables a settings file sets; ``ConfigError`` naming the file (and the line) if it is
    missing, unreadable, not UTF-8 text or has a line python-dotenv cannot parse."""
    text = read_text_file(path, "settings file", "--env-file", "NAME=value a line")
    problems = []
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            # Never the line itself: it may hold a secret. Its variable's name, when it has one.
            named = _NAME.match(binding.original.string)
            what = f"the line setting {named.group(1)}" if named else "this line"
            problems.append(
                f"{path}:{binding.original.line}: cannot parse {what}: write NAME=value, and close every "
                "quote opened (NAME=\"value\")"
            )
    raise_problems(problems)
    return {k: v for k, v in dotenv_values(stream=io.StringIO(text)).items() if v is not None}


def text_line(data: bytes, offset: int) -> int:
    """The line number (from 1) of byte ``offset`` of ``data``."""
    return data.count(b"\n", 0, offset) + 1


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
            return number_range(spec, kind).parse(raw)
        except ValueError as exc:
            env.problem(f"{name} is invalid: {exc}")
            return default
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


def number_range(spec: Var, kind: type) -> Range:
    """The numbers the variable accepts."""
    if spec.port:
        return PORT
    unit = "seconds" if spec.name.endswith("_SECONDS") else ""
    return Range(spec.minimum, spec.maximum, above=spec.above, whole=kind is int, unit=unit)


def require(settings: Any) -> list[str]:
    """A problem for every field of ``settings`` declared with a ``hint`` and left unset."""
    missing = []
    for f in fields(settings):
        spec = variable(f)
        if spec is not None and spec.hint and not getattr(settings, f.name):
            missing.append(
                f"{spec.name} is missing: set it in the settings file (.env, or the one --env-file names) "
                f"or the environment ({spec.hint})"
            )
    return missing
