"""Targets as data: one TOML file per device under `hwmodels/targets/`.

A target names its backend and its TVM target (a JSON-style dict, as TVM 0.27 requires), and gives
a source for every figure. `load_target` accepts a built-in name or a path to a user's TOML file.
The cost-model fields (peak throughput, bandwidth, power, ...) arrive with the cost models.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from mcc.toolchain.errors import UsageError

TARGETS_DIR = Path(__file__).parent / "targets"
REQUIRED_FIELDS = {"name": str, "description": str, "backend": str}


@dataclass(frozen=True)
class TargetSpec:
    name: str
    description: str
    backend: str
    tvm_target: dict
    detect_host: bool = False
    sources: dict = field(default_factory=dict)
    path: str = ""

    def tvm(self):
        """The `tvm.target.Target`, with the host CPU detected when the target asks for it."""
        import tvm

        config = dict(self.tvm_target)
        if self.detect_host:
            detected = tvm.target.Target.from_device(tvm.cpu())
            mcpu = detected.attrs.get("mcpu")
            if mcpu:
                config.setdefault("mcpu", str(mcpu))
            config.setdefault("num-cores", len(os.sched_getaffinity(0)))
        return tvm.target.Target(config)


def list_targets() -> list[str]:
    return sorted(path.stem for path in TARGETS_DIR.glob("*.toml"))


def load_target(name_or_path: str) -> TargetSpec:
    """A built-in target by name, or a user target from a `.toml` path."""
    if name_or_path.endswith(".toml") or os.sep in name_or_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise UsageError(f"target file '{name_or_path}' does not exist")
    else:
        path = TARGETS_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            raise UsageError(f"unknown target '{name_or_path}'; candidates are: {', '.join(list_targets())}")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"target file '{path}': invalid TOML ({exc})") from None
    for key, kind in REQUIRED_FIELDS.items():
        if key not in data:
            raise UsageError(f"target file '{path}': missing field '{key}'")
        if not isinstance(data[key], kind):
            raise UsageError(f"target file '{path}': field '{key}' must be a {kind.__name__}")
    tvm_section = data.get("tvm", {})
    if not isinstance(tvm_section.get("target"), dict):
        raise UsageError(f"target file '{path}': missing table 'tvm.target' (a TVM target as a dict)")
    return TargetSpec(
        name=data["name"],
        description=data["description"],
        backend=data["backend"],
        tvm_target=dict(tvm_section["target"]),
        detect_host=bool(data.get("detect_host", False)),
        sources=dict(data.get("sources", {})),
        path=str(path),
    )
