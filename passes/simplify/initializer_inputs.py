"""Stop listing initializers as graph inputs (IR version 3 style).

Before IR 4 every initializer had to appear in `graph.input`; from IR 4 on, such an entry means
"a default the caller may override". Deployed models never override weights, and TVM's importer
and shape analyses treat those entries as real inputs, so this pass drops them and raises the IR
version to 4 where needed. The function computed for the real inputs is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import onnx

from mcc.toolchain.passmanager import Pass, PassContext, PassResult


@dataclass(frozen=True)
class InlineInitializerInputs(Pass):
    """Treat initializers that are also listed as graph inputs as constants."""

    name: ClassVar[str] = "inline-initializer-inputs"

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        initializers = {tensor.name for tensor in model.graph.initializer}
        kept = [value for value in model.graph.input if value.name not in initializers]
        if len(kept) == len(model.graph.input):
            return PassResult(model, False)
        result = onnx.ModelProto()
        result.CopyFrom(model)
        del result.graph.input[:]
        for value in kept:
            result.graph.input.add().CopyFrom(value)
        result.ir_version = max(result.ir_version, 4)
        return PassResult(result, True)
