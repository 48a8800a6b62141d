"""Where the settings come from: the process environment first, then a `.env` file in
the working directory (python-decouple's order), each value read as its field's type
(settings.py declares them), and a key of that file that is no setting warned of."""

from __future__ import annotations

import difflib
import os
import types
from dataclasses import fields, replace
from typing import Any, Union, get_args, get_origin

from decouple import Config, RepositoryEmpty, RepositoryEnv

from stock_gateway.settings import ConfigError, Settings, choices_of, environment_names, field_type


def load_settings(env_file: str = ".env", **overrides: Any) -> Settings:
    """Read the settings from the environment, then `env_file` if it exists."""
    repository = RepositoryEnv(env_file) if os.path.isfile(env_file) else RepositoryEmpty()
    config = Config(repository)
    values: dict[str, Any] = {}
    for spec in fields(Settings):
        name = spec.name.upper()
        raw = config(name, default=None)
        if raw is not None:
            values[spec.name] = parse_setting(name, raw.strip(), field_type(spec))
    try:
        return replace(Settings(**values), **overrides)
    except TypeError as exc:  # an unknown override: a programming error, say which
        raise ConfigError(str(exc)) from None


def env_file_strays(env_file: str = ".env") -> list[str]:
    """A warning for each key of `env_file` that is not a setting (a typo would otherwise
    be ignored without a word), naming the closest setting. Only the file's keys: the
    process environment holds many variables that are not the gateway's."""
    if not os.path.isfile(env_file):
        return []
    names = environment_names()
    warnings = []
    for key in RepositoryEnv(env_file).data:
        if key not in names:
            close = difflib.get_close_matches(key.upper(), names, n=1)
            hint = f"did you mean {close[0]}?" if close else "docs/configuration.md lists them"
            warnings.append(f"{key} in {env_file} is not a setting; {hint}")
    return warnings


def parse_setting(name: str, raw: str, kind: Any) -> Any:
    """Text from the environment as the field's type, or ConfigError naming the variable."""
    if get_origin(kind) in (Union, types.UnionType):  # Optional[...]: only for completeness
        kind = next(arg for arg in get_args(kind) if arg is not type(None))
    choices = choices_of(kind)
    if choices:
        for choice in choices:
            if raw.lower() == choice.lower():
                return choice
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {raw!r}")
    if kind is bool:
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{name} must be true or false; got {raw!r}")
    if kind is int or kind is float:
        try:
            return kind(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number; got {raw!r}") from None
    if get_origin(kind) is tuple:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw
