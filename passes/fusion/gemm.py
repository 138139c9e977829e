"""MatMul + Add -> Gemm, and Gemm + BatchNormalization folded into the Gemm.

`MatMul(a, B) + c`, with `a` 2-D, `B` a 2-D constant and `c` a constant broadcastable to the
[M, N] result along N (shape [N], [1, N] or a scalar), is exactly `Gemm(a, B, c)`: one kernel and
one fewer intermediate. A BatchNormalization reading a Gemm's [M, N] output normalises per column
n, so it folds into the Gemm's B and C like `fuse-conv-bn` folds into a Conv.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mcc.toolchain.rewrite import Builder, Const, Match, Op, RewritePass, Rule, Var


@dataclass(frozen=True)
class MatMulAddToGemm(Rule):
    """MatMul(a, B) + c with a 2-D, B and c constant -> Gemm(a, B, c)."""

    name: ClassVar[str] = "matmul-add-to-gemm"
    pattern: ClassVar[Op] = Op("Add", Op("MatMul", Var("a"), Const("b"), name="matmul"), Const("c"), name="add")

    def check(self, m: Match) -> str | None:
        if m.rank("a") != 2:
            return f"the MatMul input has rank {m.rank('a')}, Gemm needs 2"
        b, c = m.const("b"), m.const("c")
        if b.ndim != 2 or b.dtype.kind != "f":
            return "the MatMul weight is not a 2-D float constant"
        if c.dtype != b.dtype:
            return "the added constant's dtype differs from the weight's"
        if c.size != 1 and c.shape not in ((b.shape[1],), (1, b.shape[1])):
            return f"the added constant has shape {list(c.shape)}, not [N] = [{b.shape[1]}] or a scalar"
        if c.ndim > 2:
            return f"the added constant has rank {c.ndim}: it broadcasts the result to a higher rank"
        return None

    def rewrite(self, m: Match, b: Builder) -> None:
        n = m.const("b").shape[1]
        bias = np.broadcast_to(m.const("c").reshape(-1), (n,))
        b.node("Gemm", [m["a"], m["b"], b.constant("bias", bias)], outputs=list(m.root.outputs))


@dataclass(frozen=True)
class GemmBatchNorm(Rule):
    """Gemm(a, B, C) followed by an inference BatchNormalization -> one Gemm with scaled B and C."""

    name: ClassVar[str] = "fold-gemm-batchnorm"
    pattern: ClassVar[Op] = Op(
        "BatchNormalization",
        Op("Gemm", Var("a"), Const("b"), name="gemm", extra_inputs=True),
        Const("gamma"), Const("beta"), Const("mean"), Const("var"), name="bn",
    )

    def check(self, m: Match) -> str | None:
        gemm, bn = m.node("gemm"), m.node("bn")
        if len(bn.outputs) != 1 or bn.attrs.get("training_mode", 0):
            return "BatchNormalization is in training mode"
        inputs = [t for t in gemm.inputs]
        if len(inputs) > 2 and inputs[2].name and not hasattr(inputs[2], "values"):
            return "the Gemm's C is not a constant"
        b = m.const("b")
        if b.ndim != 2 or b.dtype.kind != "f":
            return "the Gemm's B is not a 2-D float constant"
        n = b.shape[0] if gemm.attrs.get("transB", 0) else b.shape[1]
        params = [m.const(k) for k in ("gamma", "beta", "mean", "var")]
        if any(p.size != n for p in params):
            return f"BatchNormalization parameters do not have the Gemm's {n} columns"
        if np.any(params[3].astype(np.float64) + float(bn.attrs.get("epsilon", 1e-5)) <= 0):
            return "variance + epsilon is not positive"
        if len(inputs) > 2 and inputs[2].name:
            c = np.asarray(inputs[2].values)
            if c.size != 1 and c.shape not in ((n,), (1, n)):
                return f"the Gemm's C has shape {list(c.shape)}, not [N] or a scalar"
        return None

    def rewrite(self, m: Match, b: Builder) -> None:
        gemm, bn = m.node("gemm"), m.node("bn")
        weight = m.const("b")
        trans_b = gemm.attrs.get("transB", 0)
        n = weight.shape[0] if trans_b else weight.shape[1]
        alpha, beta = float(gemm.attrs.get("alpha", 1.0)), float(gemm.attrs.get("beta", 1.0))
        inputs = list(gemm.inputs)
        c = np.asarray(inputs[2].values, np.float64) if len(inputs) > 2 and inputs[2].name else np.zeros(1)
        c = np.broadcast_to(c.reshape(-1), (n,)) * beta
        gamma, shift, mean, var = (m.const(k).astype(np.float64).reshape(-1) for k in ("gamma", "beta", "mean", "var"))
        scale = gamma / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
        scaled = weight.astype(np.float64) * alpha * (scale[:, None] if trans_b else scale[None, :])
        bias = (c - mean) * scale + shift
        attrs = {key: value for key, value in gemm.attrs.items() if key in ("transA", "transB")}
        b.node("Gemm", [m["a"], b.constant("weight", scaled.astype(weight.dtype)),
                        b.constant("bias", bias.astype(weight.dtype))], attrs, outputs=list(m.root.outputs))


@dataclass(frozen=True)
class FuseGemm(RewritePass):
    """Fuse MatMul + Add into Gemm, and fold BatchNormalization into a preceding Gemm."""

    name: ClassVar[str] = "fuse-gemm"
    rules: ClassVar[tuple] = (MatMulAddToGemm, GemmBatchNorm)
