"""The pass registry: built-in passes plus plugins from the `mcc.passes` entry-point group.

A plugin distribution declares, in its pyproject.toml:

    [project.entry-points."mcc.passes"]
    my-pass = "my_package.module:MyPass"

The object must be a frozen dataclass subclassing `mcc.toolchain.passmanager.Pass` with a
kebab-case name that no other pass uses. Plugins are validated on load; a broken one is recorded
in `plugin_errors()` with its distribution and entry-point name, and never breaks the CLI.
`MCC_DISABLE_PLUGINS=name1,name2` (entry-point names, or `all`) skips plugins, like pytest's
`-p no:NAME`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata

from mcc.toolchain.passmanager import Pass, validate_pass_class

ENTRY_POINT_GROUP = "mcc.passes"


@dataclass(frozen=True)
class PluginError:
    distribution: str
    entry_point: str
    reason: str

    def __str__(self) -> str:
        return f"plugin '{self.entry_point}' from '{self.distribution}' was not loaded: {self.reason}"


@dataclass(frozen=True)
class PassEntry:
    cls: type[Pass]
    origin: str  # "builtin" or the plugin's distribution name


def builtin_passes() -> list[type[Pass]]:
    from mcc.passes import BUILTIN_PASSES

    return list(BUILTIN_PASSES)


def _disabled_plugins() -> set[str]:
    return {name.strip() for name in os.environ.get("MCC_DISABLE_PLUGINS", "").split(",") if name.strip()}


@lru_cache(maxsize=1)
def _load() -> tuple[dict[str, PassEntry], tuple[PluginError, ...]]:
    entries: dict[str, PassEntry] = {}
    for cls in builtin_passes():
        validate_pass_class(cls)
        if cls.name in entries:
            raise RuntimeError(f"two built-in passes are named '{cls.name}'")
        entries[cls.name] = PassEntry(cls, "builtin")

    from mcc.toolchain.pipeline import NAMED_PIPELINES

    errors: list[PluginError] = []
    disabled = _disabled_plugins()
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        distribution = entry_point.dist.name if entry_point.dist is not None else "unknown distribution"
        if "all" in disabled or entry_point.name in disabled:
            continue
        try:
            cls = entry_point.load()
            validate_pass_class(cls)
            if cls.name in entries:
                other = entries[cls.name].origin
                raise ValueError(f"pass name '{cls.name}' is already taken by {other}")
            if cls.name in NAMED_PIPELINES:
                raise ValueError(f"pass name '{cls.name}' is a named pipeline")
        except Exception as exc:  # a plugin may fail in any way; it must not break mcc
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            reason = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
            errors.append(PluginError(distribution, entry_point.name, reason))
            continue
        entries[cls.name] = PassEntry(cls, distribution)
    return entries, tuple(errors)


def available_passes() -> dict[str, type[Pass]]:
    return {name: entry.cls for name, entry in _load()[0].items()}


def pass_entries() -> dict[str, PassEntry]:
    return dict(_load()[0])


def plugin_errors() -> tuple[PluginError, ...]:
    return _load()[1]
