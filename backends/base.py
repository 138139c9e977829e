"""The protocol every compiling backend implements (one phase function each)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx


@dataclass
class CompiledArtifact:
    """A compiled library on disk plus how long each phase took."""

    library: Path
    timings_s: dict[str, float] = field(default_factory=dict)
    details: dict = field(default_factory=dict)


class Runner(Protocol):
    """Runs a loaded artifact; inputs by name, outputs in graph-output order."""

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]: ...


class Backend(Protocol):
    name: str
    #: lowest default-domain opset the backend's importer handles well; the driver upgrades first
    min_opset: int
    library_suffix: str

    def supported_ops(self) -> frozenset[str]: ...

    def unsupported_nodes(self, model: onnx.ModelProto, excluded: frozenset[str] = frozenset()) -> list[onnx.NodeProto]: ...

    def compile(self, model: onnx.ModelProto, target, input_shapes: dict, library_path: Path) -> CompiledArtifact: ...

    def load(self, library_path: Path, model: onnx.ModelProto) -> Runner: ...
