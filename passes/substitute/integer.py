"""Integer convolutions and matmuls for targets without ConvInteger / MatMulInteger, exactly.

`ConvInteger(x, w, x_zp, w_zp)` is sum((x - x_zp) (w - w_zp)) in int32. In float64 every such sum
is exact (products of two 8-bit differences are below 2^17, so 2^36 of them fit in the 53-bit
mantissa), so `Cast(Conv(Cast(x, f64) - x_zp, w - w_zp), int32)` computes the same integers.
The weight and its zero point must be constants (folded into one float64 weight); the input's
zero point may be computed. MatMulInteger is rewritten the same way with MatMul.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from onnx import TensorProto

from mcc.toolchain.rewrite import Builder, Const, Match, Op, Opt, Rule, Var


def _centered_weight(m: Match, axis: int) -> np.ndarray:
    weight = m.const("w").astype(np.float64)
    if "w_zp" not in m.tensors:
        return weight
    zero = m.const("w_zp").astype(np.float64).reshape(-1)
    if zero.size == 1:
        return weight - zero[0]
    shape = [1] * weight.ndim
    shape[axis] = zero.size
    return weight - zero.reshape(shape)


def _centered_input(m: Match, b: Builder):
    x = b.node("Cast", [m["x"]], {"to": TensorProto.DOUBLE})
    if "x_zp" not in m.tensors:
        return x
    return b.node("Sub", [x, b.node("Cast", [m["x_zp"]], {"to": TensorProto.DOUBLE})])


class _IntegerRule(Rule):
    weight_axis: ClassVar[int]

    def check(self, m: Match) -> str | None:
        if "w_zp" in m.tensors and not hasattr(m["w_zp"], "values"):
            return "the weight zero point is not a constant"
        if "x_zp" in m.tensors and m.shape("x_zp") not in ((), (1,), None):
            return "the input zero point is not a scalar"
        zero = m.const("w_zp").reshape(-1) if "w_zp" in m.tensors else np.zeros(1)
        channels = m.const("w").shape[self.weight_axis]
        if zero.size not in (1, channels):
            return f"the weight zero point has {zero.size} values, not 1 or {channels}"
        return None


@dataclass(frozen=True)
class DecomposeConvInteger(_IntegerRule):
    """ConvInteger -> Cast to float64, Sub zero point, Conv, Cast to int32 (exact)."""

    name: ClassVar[str] = "decompose-convinteger"
    substitutes: ClassVar[bool] = True
    weight_axis: ClassVar[int] = 0
    pattern: ClassVar[Op] = Op("ConvInteger", Var("x"), Const("w"), Opt(Var("x_zp")), Opt(Var("w_zp")), name="conv")

    def rewrite(self, m: Match, b: Builder) -> None:
        weight = b.constant("weight", _centered_weight(m, 0))
        attrs = dict(m.node("conv").attrs)
        result = b.node("Conv", [_centered_input(m, b), weight], attrs)
        b.node("Cast", [result], {"to": TensorProto.INT32}, outputs=list(m.root.outputs))


@dataclass(frozen=True)
class DecomposeMatMulInteger(_IntegerRule):
    """MatMulInteger with a constant B -> Cast to float64, Sub zero point, MatMul, Cast to int32 (exact)."""

    name: ClassVar[str] = "decompose-matmulinteger"
    substitutes: ClassVar[bool] = True
    weight_axis: ClassVar[int] = -1
    pattern: ClassVar[Op] = Op("MatMulInteger", Var("x"), Const("w"), Opt(Var("x_zp")), Opt(Var("w_zp")),
                               name="matmul")

    def rewrite(self, m: Match, b: Builder) -> None:
        weight = b.constant("weight", _centered_weight(m, -1))
        result = b.node("MatMul", [_centered_input(m, b), weight])
        b.node("Cast", [result], {"to": TensorProto.INT32}, outputs=list(m.root.outputs))
