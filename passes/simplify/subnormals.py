"""Flush subnormal float32/float64 constants to zero.

A subnormal (denormal) float is one below the smallest normal value, 2^-126 ~ 1.18e-38 in float32.
x86 cores handle a subnormal operand of a vector multiply-add in microcode, about a hundred cycles
instead of one, unless the process runs with flush-to-zero / denormals-are-zero set (onnxruntime's
`session.set_denormal_as_zero`, off by default; GPUs and TensorRT flush by default). TVM's CPU
code does not set them.

A model rarely ships subnormal weights, but folding makes them: `fuse-conv-bn` and
`fold-conv-affine` multiply a convolution's weights by a per-channel scale, and where a
BatchNormalization's gamma is ~1e-36 (a channel the training switched off) the products underflow
or land just above the subnormal range. A multiply-add is slow when its result is subnormal too,
and in such a dead channel every partial sum is: its weights times activations of ~1 stay below
2^-126. So the pass also zeroes the multiplicand weights of Conv, ConvTranspose, MatMul and Gemm
below 2^`min-weight-log2` (default 2^-100 ~ 7.9e-31): their products with any activation above
2^-26 are normal numbers, and each changes a sum by less than 2^-100 times the activation it
multiplies: with activations up to 2^30, 2^-70, some 2^-47 below float32's resolution (2^-23)
of an output of magnitude 1. The assumption, on by default: no later op scales a convolution's
or matmul's output up by 2^70 or more.

Measured on PP-OCRv5 det after the default pipeline: 14,148 subnormal weights and 21,167 more
below 2^-100 (35,315 zeroed in 19 constants); in one 1x1 convolution of 192 -> 384 channels at 10 x 10, 14 %
of the weight-activation products were subnormal, and it ran 10.2 ms instead of ~0.1 ms. The
whole model: 39.3 against 25.6 ms with the subnormals flushed, outputs bit-identical.

Flushing a subnormal changes a value by less than 2^-126, and a product with it is below
float32's resolution next to any normal term of the same sum: what flush-to-zero hardware
computes anyway. float16 is left alone: widened to float32 (F16C), its subnormals are normal
values, and AVX512-FP16, which LLVM uses for TVM's float16 kernels where the CPU has it, handles
float16 subnormals at full speed. bfloat16 is not handled yet (its subnormals stay subnormal
when widened).
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


#: ops whose constant operands (not their bias) are multiplied into sums: input positions
WEIGHT_OPERANDS = {"Conv": (1,), "ConvTranspose": (1,), "MatMul": (0, 1), "Gemm": (0, 1)}


def flushed(tensor: onnx.TensorProto, below: float | None = None) -> tuple[onnx.TensorProto, int] | None:
    """(the tensor with its values under `below` in magnitude set to +-0, how many) or None when it
    has none; `below` defaults to the dtype's smallest normal value (so: its subnormals)."""
    dtype = FLUSHED_TYPES.get(tensor.data_type)
    if dtype is None:
        return None
    values = numpy_helper.to_array(tensor)
    limit = max(float(np.finfo(dtype).tiny), below or 0.0)
    subnormal = (values != 0) & (np.abs(values) < limit)
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
    """Zero subnormal float32/float64 constants and weights below 2^-100 (CPUs run ~100x slower on them)."""

    name: ClassVar[str] = "flush-subnormals"

    #: weights of Conv, ConvTranspose, MatMul and Gemm below 2^min_weight_log2 are zeroed too
    min_weight_log2: int = -100

    def __post_init__(self) -> None:
        if not -149 <= self.min_weight_log2 <= -64:
            raise ValueError(f"min-weight-log2 must be within [-149, -64], got {self.min_weight_log2}")

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        weights = {node.input[i] for node in model.graph.node if node.domain in ("", "ai.onnx")
                   for i in WEIGHT_OPERANDS.get(node.op_type, ()) if i < len(node.input)}
        below = 2.0 ** self.min_weight_log2
        changes: dict[str, tuple[onnx.TensorProto, int]] = {}
        for tensor in model.graph.initializer:
            change = flushed(tensor, below if tensor.name in weights else None)
            if change is not None:
                changes[tensor.name] = change
        constants: dict[int, tuple[onnx.TensorProto, int]] = {}
        for index, node in enumerate(model.graph.node):
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for attribute in node.attribute:
                    if attribute.name == "value" and attribute.type == onnx.AttributeProto.TENSOR:
                        change = flushed(attribute.t, below if node.output[0] in weights else None)
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
        ctx.note(f"flush-subnormals: {count} subnormal or negligible value(s) in {len(changes) + len(constants)} "
                 f"constant(s) set to zero")
        return PassResult(result, True)
