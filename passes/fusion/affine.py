"""Fold a per-channel affine op (Mul or Add by a constant) that follows a Conv into its weights.

`Conv(x, W, b) * s` with `s` constant and broadcastable per output channel ([C, 1, .., 1] with
the spatial ones, [1, C, 1, .., 1], [1] or a scalar) equals `Conv(x, W * s[c], b * s[c])`;
`Conv(x, W, b) + t` equals `Conv(x, W, b + t[c])`. Exporters leave such pairs behind from
scaled activations, folded normalisation and "x / 255"-style preprocessing inside the model.
Arithmetic is in float64, cast back to the weight's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mcc.toolchain.rewrite import Builder, Const, Match, Op, Opt, RewritePass, Rule, Var


def _per_channel(value: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """`value` as a [channels] vector when it broadcasts per output channel of a rank-`rank` output."""
    shape = value.shape
    if len(shape) > rank:
        return None  # it would broadcast the output to a higher rank, even with one element
    if value.size == 1:
        return np.full(channels, value.reshape(-1)[0], np.float64)
    padded = (1,) * (rank - len(shape)) + shape
    if padded[1] != channels or any(d != 1 for i, d in enumerate(padded) if i != 1):
        return None
    return value.reshape(-1).astype(np.float64)


class _ConvAffine(Rule):
    def check(self, m: Match) -> str | None:
        weight = m.const("w")
        if weight.dtype.kind != "f":
            return "the Conv weight is not a float constant"
        if m.tensors.get("b") is not None and not hasattr(m["b"], "values"):
            return "the Conv bias is not a constant"
        value = m.const("k")
        if value.dtype != weight.dtype:
            return "the constant's dtype differs from the weight's"
        rank = weight.ndim  # Conv output rank equals its weight's rank
        if _per_channel(value, weight.shape[0], rank) is None:
            return f"the constant's shape {list(value.shape)} is not per output channel ({weight.shape[0]})"
        return None

    def _bias(self, m: Match) -> np.ndarray:
        weight = m.const("w")
        if m.tensors.get("b") is not None:
            return m.const("b").astype(np.float64).reshape(-1)
        return np.zeros(weight.shape[0])

    def _emit(self, m: Match, b: Builder, weight: np.ndarray, bias: np.ndarray) -> None:
        conv = m.node("conv")
        dtype = m.const("w").dtype
        b.node("Conv", [m["x"], b.constant("weight", weight.astype(dtype)), b.constant("bias", bias.astype(dtype))],
               dict(conv.attrs), outputs=list(m.root.outputs))


CONV = Op("Conv", Var("x"), Const("w"), Opt(Const("b")), name="conv")


@dataclass(frozen=True)
class ConvMul(_ConvAffine):
    """Conv(x, W, b) * s, s per output channel -> Conv(x, W * s, b * s)."""

    name: ClassVar[str] = "fold-conv-mul"
    pattern: ClassVar[Op] = Op("Mul", CONV, Const("k"), name="mul")

    def rewrite(self, m: Match, b: Builder) -> None:
        weight = m.const("w")
        scale = _per_channel(m.const("k"), weight.shape[0], weight.ndim)
        shaped = scale.reshape((-1,) + (1,) * (weight.ndim - 1))
        self._emit(m, b, weight.astype(np.float64) * shaped, self._bias(m) * scale)


@dataclass(frozen=True)
class ConvAdd(_ConvAffine):
    """Conv(x, W, b) + t, t per output channel -> Conv(x, W, b + t)."""

    name: ClassVar[str] = "fold-conv-add"
    pattern: ClassVar[Op] = Op("Add", CONV, Const("k"), name="add")

    def rewrite(self, m: Match, b: Builder) -> None:
        weight = m.const("w")
        shift = _per_channel(m.const("k"), weight.shape[0], weight.ndim)
        self._emit(m, b, weight.astype(np.float64), self._bias(m) + shift)


@dataclass(frozen=True)
class FoldConvAffine(RewritePass):
    """Fold per-channel Mul/Add constants that follow a Conv into its weight and bias."""

    name: ClassVar[str] = "fold-conv-affine"
    rules: ClassVar[tuple] = (ConvMul, ConvAdd)
