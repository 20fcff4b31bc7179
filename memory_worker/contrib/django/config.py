"""``settings.MEMORY_WORKER`` as ``Settings``: the dict, the environment over it, one validation.

The dict is keyed by the variables of SPEC §3 and may hold Python values: a
boolean (``True`` → ``"true"``), a whole number, a string or a path. They become
the strings the environment would hold, the environment is laid over them (a
variable set to a non-empty value in the environment wins), and the result is
validated by ``Settings.from_env``, exactly as a worker validates its
environment. Errors are ``ConfigError`` naming the variable and where its value
came from. Nothing here imports Django.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass

from memory_worker.config import VARIABLES, Settings
from memory_worker.errors import ConfigError

SETTING = "MEMORY_WORKER"
FROM_SETTING = f"settings.{SETTING}"
FROM_ENVIRONMENT = "the environment"
# prometheus_client chooses multiprocess mode when it is imported, before any app is ready.
IMPORT_TIME_ONLY = frozenset({"PROMETHEUS_MULTIPROC_DIR"})


@dataclass(frozen=True)
class Resolved:
    """The validated settings, and the dict's values the environment did not override."""

    settings: Settings
    from_setting: dict[str, str]


def setting_values(value: object) -> dict[str, str]:
    """``settings.MEMORY_WORKER`` as environment strings; ``None`` values count as unset."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(SETTING, f"expected a dict of memory_worker variables, "
                                   f"got {type(value).__name__}")
    values: dict[str, str] = {}
    for key, item in value.items():
        if key not in VARIABLES:
            raise ConfigError(f"{SETTING}[{key!r}]", _unknown(key))
        if item is not None:
            values[key] = _as_text(key, item)
    return values


def resolve(value: object, environ: Mapping[str, str] | None = None) -> Resolved:
    """The settings of a Django process: the dict, the environment over it, validated whole."""
    env = os.environ if environ is None else environ
    values = setting_values(value)
    from_setting = {key: text for key, text in values.items() if not env.get(key, "").strip()}
    for key in IMPORT_TIME_ONLY & from_setting.keys():
        raise ConfigError(key, f"set it in the environment, not in {FROM_SETTING}: "
                               "prometheus_client reads it when it is first imported")
    try:
        settings = Settings.from_env({**env, **from_setting})
    except ConfigError as exc:
        where = (FROM_SETTING if exc.variable in from_setting
                 else FROM_ENVIRONMENT if exc.variable in env else None)
        if where is None:
            raise
        raise ConfigError(exc.variable, f"{exc.problem} (from {where})") from None
    return Resolved(settings, from_setting)


def _as_text(key: str, item: object) -> str:
    if isinstance(item, bool):  # before int: True is an int too
        return "true" if item else "false"
    if isinstance(item, int):
        return str(item)
    if isinstance(item, str):
        return item
    if isinstance(item, os.PathLike) and isinstance(path := os.fspath(item), str):
        return path
    raise ConfigError(key, f"expected a string, a whole number or a boolean in {FROM_SETTING}, "
                           f"got {type(item).__name__} {item!r}")


def _unknown(key: object) -> str:
    close = difflib.get_close_matches(str(key), VARIABLES, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"not a memory_worker variable{hint}"
