"""Upgrade the default-domain opset with onnx's version converter.

The pass manager inserts it before a pass whose `min_opset` the model does not meet, and the
driver before a backend that needs a newer opset; it can also be named in a pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import onnx

from mcc.toolchain import ir
from mcc.toolchain.passmanager import Pass, PassContext, PassResult


@dataclass(frozen=True)
class UpgradeOpset(Pass):
    """Convert the model to a newer default-domain opset (never downgrades)."""

    name: ClassVar[str] = "upgrade-opset"
    version: int = 17

    def __post_init__(self) -> None:
        if not 7 <= self.version <= onnx.defs.onnx_opset_version():
            raise ValueError(f"version must be between 7 and {onnx.defs.onnx_opset_version()}")

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        if ir.opset_version(model) >= self.version:
            return PassResult(model, False)
        return PassResult(ir.upgrade_opset(model, self.version), True)
