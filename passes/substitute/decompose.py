"""Decompose ops the target's backend lacks into ops it has; approximate only within a budget.

Exact decompositions (fire only when the target is known and lacks the op):

| op                              | becomes                                                   |
|---------------------------------|-----------------------------------------------------------|
| LayerNormalization(x, g, b)     | (x - mean) / sqrt(mean((x - mean)^2) + eps) * g + b        |
| Gelu(x)                         | 0.5 x (1 + erf(x / sqrt 2))                                |
| Gelu(x, approximate="tanh")     | 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))            |
| HardSwish(x)                    | x * Clip(x / 6 + 0.5, 0, 1)                                |
| HardSigmoid(x, alpha, beta)     | Clip(alpha x + beta, 0, 1)                                 |
| Softmax(x, axis)                | exp(x - max(x)) / sum(exp(x - max(x))) over `axis`         |
| Einsum (one or two operands)    | Transpose, Reshape, MatMul, ReduceSum (`einsum.py`)        |
| ConvInteger, MatMulInteger      | exact float64 Conv/MatMul, cast to int32 (`integer.py`)    |

Lossy approximations (also need the user's accuracy budget, `--min-sqnr-db`; the report lists them
and validation checks the outputs against that budget):

| op          | becomes                              | worst-case error                       |
|-------------|--------------------------------------|----------------------------------------|
| Erf(x)      | tanh(2/sqrt(pi) (x + 0.044715 * 2 x^3)), the tanh-GELU formula | 3.6e-4 absolute |
| Sigmoid(x)  | HardSigmoid(x, 0.2, 0.5) (Keras' hard sigmoid)                  | 0.076 absolute  |
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mcc.passes.substitute.einsum import DecomposeEinsum
from mcc.passes.substitute.integer import DecomposeConvInteger, DecomposeMatMulInteger
from mcc.toolchain.rewrite import Builder, Match, Op, Opt, RewritePass, Rule, Var


def _f(m: Match, b: Builder, name: str, value: float):
    dtype = m.dtype("x") or np.dtype(np.float32)
    return b.constant(name, np.array(value, dtype=dtype))


def _float_input(m: Match) -> str | None:
    dtype = m.dtype("x")
    if dtype is None or dtype.kind != "f":
        return "the input is not a float tensor of known type"
    return None


def _reduce(b: Builder, op: str, x, axes: list[int], opset: int, keepdims: int = 1):
    if opset >= 18 or op == "ReduceSum" and opset >= 13:
        return b.node(op, [x, b.constant("axes", np.array(axes, np.int64))], {"keepdims": keepdims})
    return b.node(op, [x], {"axes": axes, "keepdims": keepdims})


@dataclass(frozen=True)
class DecomposeLayerNorm(Rule):
    """LayerNormalization -> ReduceMean, Sub, Pow, Add, Sqrt, Div, Mul, Add."""

    name: ClassVar[str] = "decompose-layernorm"
    substitutes: ClassVar[bool] = True
    pattern: ClassVar[Op] = Op("LayerNormalization", Var("x"), Var("scale"), Opt(Var("bias")), name="ln")

    def check(self, m: Match) -> str | None:
        if len([t for t in m.root.outputs if t.name]) > 1 or len(m.root.outputs) > 1:
            return "the mean / inverse std outputs are used"
        if m.rank("x") is None:
            return "the input rank is unknown"
        return _float_input(m)

    def rewrite(self, m: Match, b: Builder) -> None:
        ln = m.node("ln")
        rank = m.rank("x")
        axis = int(ln.attrs.get("axis", -1)) % rank
        axes = list(range(axis, rank))
        opset = b.opset
        mean = _reduce(b, "ReduceMean", m["x"], axes, opset)
        centered = b.node("Sub", [m["x"], mean])
        variance = _reduce(b, "ReduceMean", b.node("Mul", [centered, centered]), axes, opset)
        std = b.node("Sqrt", [b.node("Add", [variance, _f(m, b, "eps", float(ln.attrs.get("epsilon", 1e-5)))])])
        scaled = b.node("Mul", [b.node("Div", [centered, std]), m["scale"]])
        if "bias" in m.tensors:
            b.node("Add", [scaled, m["bias"]], outputs=list(m.root.outputs))
        else:
            b.node("Identity", [scaled], outputs=list(m.root.outputs))


@dataclass(frozen=True)
class DecomposeGelu(Rule):
    """Gelu -> 0.5 x (1 + erf(x / sqrt 2)), or the tanh formula for approximate="tanh"."""

    name: ClassVar[str] = "decompose-gelu"
    substitutes: ClassVar[bool] = True
    pattern: ClassVar[Op] = Op("Gelu", Var("x"), name="gelu")

    def check(self, m: Match) -> str | None:
        return _float_input(m)

    def rewrite(self, m: Match, b: Builder) -> None:
        approximate = m.node("gelu").attrs.get("approximate", "none")
        approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
        x = m["x"]
        if approximate == "tanh":
            cube = b.node("Mul", [b.node("Mul", [x, x]), x])
            inner = b.node("Add", [x, b.node("Mul", [cube, _f(m, b, "c", 0.044715)])])
            core = b.node("Tanh", [b.node("Mul", [inner, _f(m, b, "k", math.sqrt(2 / math.pi))])])
        else:
            core = b.node("Erf", [b.node("Div", [x, _f(m, b, "root2", math.sqrt(2.0))])])
        half_x = b.node("Mul", [x, _f(m, b, "half", 0.5)])
        b.node("Mul", [half_x, b.node("Add", [core, _f(m, b, "one", 1.0)])], outputs=list(m.root.outputs))


@dataclass(frozen=True)
class DecomposeHardSwish(Rule):
    """HardSwish -> x * Clip(x / 6 + 0.5, 0, 1)."""

    name: ClassVar[str] = "decompose-hardswish"
    substitutes: ClassVar[bool] = True
    pattern: ClassVar[Op] = Op("HardSwish", Var("x"), name="hswish")

    def check(self, m: Match) -> str | None:
        return _float_input(m)

    def rewrite(self, m: Match, b: Builder) -> None:
        x = m["x"]
        shifted = b.node("Add", [b.node("Mul", [x, _f(m, b, "sixth", 1 / 6)]), _f(m, b, "half", 0.5)])
        gate = b.node("Clip", [shifted, _f(m, b, "zero", 0.0), _f(m, b, "one", 1.0)])
        b.node("Mul", [x, gate], outputs=list(m.root.outputs))


@dataclass(frozen=True)
class DecomposeHardSigmoid(Rule):
    """HardSigmoid(x, alpha, beta) -> Clip(alpha x + beta, 0, 1)."""

    name: ClassVar[str] = "decompose-hardsigmoid"
    substitutes: ClassVar[bool] = True
    pattern: ClassVar[Op] = Op("HardSigmoid", Var("x"), name="hsig")

    def check(self, m: Match) -> str | None:
        return _float_input(m)

    def rewrite(self, m: Match, b: Builder) -> None:
        attrs = m.node("hsig").attrs
        affine = b.node("Add", [b.node("Mul", [m["x"], _f(m, b, "alpha", float(attrs.get("alpha", 0.2)))]),
                                _f(m, b, "beta", float(attrs.get("beta", 0.5)))])
        b.node("Clip", [affine, _f(m, b, "zero", 0.0), _f(m, b, "one", 1.0)], outputs=list(m.root.outputs))


@dataclass(frozen=True)
class DecomposeSoftmax(Rule):
    """Softmax(x, axis) -> Exp(x - ReduceMax) / ReduceSum over axis (opset 13 semantics)."""

    name: ClassVar[str] = "decompose-softmax"
    substitutes: ClassVar[bool] = True
    pattern: ClassVar[Op] = Op("Softmax", Var("x"), name="softmax")

    def check(self, m: Match) -> str | None:
        if m.rank("x") is None:
            return "the input rank is unknown"
        if m.opset is not None and m.opset < 13:
            return "opset < 13 Softmax flattens the trailing axes; upgrade the opset first"
        return _float_input(m)

    def rewrite(self, m: Match, b: Builder) -> None:
        axis = int(m.node("softmax").attrs.get("axis", -1)) % m.rank("x")
        peak = _reduce(b, "ReduceMax", m["x"], [axis], b.opset)
        exp = b.node("Exp", [b.node("Sub", [m["x"], peak])])
        total = _reduce(b, "ReduceSum", exp, [axis], b.opset)
        b.node("Div", [exp, total], outputs=list(m.root.outputs))


@dataclass(frozen=True)
class ApproximateErf(Rule):
    """Erf(x) -> tanh(2/sqrt(pi) (x + 0.08943 x^3)): an approximation (3.6e-4 absolute), only within a budget."""

    name: ClassVar[str] = "approximate-erf"
    substitutes: ClassVar[bool] = True
    lossy: ClassVar[bool] = True
    pattern: ClassVar[Op] = Op("Erf", Var("x"), name="erf")

    def check(self, m: Match) -> str | None:
        return _float_input(m)

    def rewrite(self, m: Match, b: Builder) -> None:
        x = m["x"]
        # erf(z) = 2 Phi(z sqrt 2) - 1, and the tanh-GELU formula approximates Phi
        cube = b.node("Mul", [b.node("Mul", [x, x]), x])
        inner = b.node("Add", [x, b.node("Mul", [cube, _f(m, b, "c", 2 * 0.044715)])])
        b.node("Tanh", [b.node("Mul", [inner, _f(m, b, "k", 2 / math.sqrt(math.pi))])], outputs=list(m.root.outputs))


@dataclass(frozen=True)
class ApproximateSigmoid(Rule):
    """Sigmoid(x) -> HardSigmoid(x, 0.2, 0.5): an approximation (0.076 absolute), only within a budget."""

    name: ClassVar[str] = "approximate-sigmoid"
    substitutes: ClassVar[bool] = True
    lossy: ClassVar[bool] = True
    produces_op: ClassVar[str | None] = "HardSigmoid"
    produces_since: ClassVar[int] = 6
    pattern: ClassVar[Op] = Op("Sigmoid", Var("x"), name="sigmoid")

    def check(self, m: Match) -> str | None:
        return _float_input(m)

    def rewrite(self, m: Match, b: Builder) -> None:
        b.node("HardSigmoid", [m["x"]], {"alpha": 0.2, "beta": 0.5}, outputs=list(m.root.outputs))


@dataclass(frozen=True)
class DecomposeUnsupported(RewritePass):
    """Rewrite ops the target's backend lacks into ops it has (approximations only within --min-sqnr-db)."""

    name: ClassVar[str] = "decompose-unsupported"
    rules: ClassVar[tuple] = (DecomposeLayerNorm, DecomposeGelu, DecomposeHardSwish, DecomposeHardSigmoid,
                              DecomposeSoftmax, DecomposeEinsum, DecomposeConvInteger, DecomposeMatMulInteger,
                              ApproximateErf, ApproximateSigmoid)
