"""Flush subnormal float32/float64 constants to zero.

A subnormal (denormal) float is one below the smallest normal value, 2^-126 ~ 1.18e-38 in float32.
x86 cores handle a subnormal operand of a vector multiply-add in microcode, about a hundred cycles
instead of one, unless the process runs with flush-to-zero / denormals-are-zero set (onnxruntime's
`session.set_denormal_as_zero`, off by default; GPUs and TensorRT flush by default). TVM's CPU
code does not set them.

A model rarely ships subnormal weights, but folding makes them: `fuse-conv-bn` and
`fold-conv-affine` multiply a convolution's weights by a per-channel scale, and where a
BatchNormalization's gamma is ~1e-36 (a channel the training switched off) the products underflow.
Measured on PP-OCRv5 det after the default pipeline: 14,148 subnormal weights in 9 convolutions.
Its 1x1 convolution of 192 -> 384 channels at 10 x 10 ran 10.2 ms instead of ~0.1 ms, and the
whole model 39.3 against 25.6 ms flushed, with bit-identical outputs.

Flushing changes each such value by less than 2^-126: a product with it is below float32's
resolution next to any normal term of the same sum. This is what flush-to-zero hardware computes
anyway. float16 is left alone: its subnormals convert exactly to normal float32 values, and CPU
kernels compute float16 in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx
from onnx import numpy_helper

from mcc.toolchain.passmanager import Pass, PassContext, PassResult

#: the types whose subnormals CPU vector units handle slowly, as numpy dtypes
FLUSHED_TYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64}


def flushed(tensor: onnx.TensorProto) -> tuple[onnx.TensorProto, int] | None:
    """(the tensor with its subnormal values set to +-0, how many) or None when it has none."""
    dtype = FLUSHED_TYPES.get(tensor.data_type)
    if dtype is None:
        return None
    values = numpy_helper.to_array(tensor)
    subnormal = (values != 0) & (np.abs(values) < np.finfo(dtype).tiny)
    count = int(np.count_nonzero(subnormal))
    if not count:
        return None
    # copysign keeps the sign of zero, as flush-to-zero hardware does
    result = numpy_helper.from_array(np.where(subnormal, np.copysign(dtype(0), values), values).astype(dtype),
                                     tensor.name)
    result.doc_string = tensor.doc_string
    return result, count


@dataclass(frozen=True)
class FlushSubnormals(Pass):
    """Set subnormal float32/float64 constants to zero (CPU kernels run ~100x slower on them)."""

    name: ClassVar[str] = "flush-subnormals"

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        changes: dict[str, tuple[onnx.TensorProto, int]] = {}
        for tensor in model.graph.initializer:
            change = flushed(tensor)
            if change is not None:
                changes[tensor.name] = change
        constants: dict[int, tuple[onnx.TensorProto, int]] = {}
        for index, node in enumerate(model.graph.node):
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for attribute in node.attribute:
                    if attribute.name == "value" and attribute.type == onnx.AttributeProto.TENSOR:
                        change = flushed(attribute.t)
                        if change is not None:
                            constants[index] = change
        if not changes and not constants:
            return PassResult(model, False)
        result = onnx.ModelProto()
        result.CopyFrom(model)
        for tensor in result.graph.initializer:
            if tensor.name in changes:
                tensor.CopyFrom(changes[tensor.name][0])
        for index, (tensor, _) in constants.items():
            for attribute in result.graph.node[index].attribute:
                if attribute.name == "value":
                    attribute.t.CopyFrom(tensor)
        count = sum(n for _, n in changes.values()) + sum(n for _, n in constants.values())
        ctx.note(f"flush-subnormals: {count} subnormal value(s) in {len(changes) + len(constants)} constant(s) "
                 f"set to zero")
        return PassResult(result, True)
