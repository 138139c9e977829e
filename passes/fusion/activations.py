"""Recognise activations exporters decompose, and rewrite each to its single ONNX op.

| found (either operand order)                              | becomes                              | opset |
|-----------------------------------------------------------|--------------------------------------|-------|
| Clip(x + 3, 0, 6) / 6, or x (*|/) 6 form with Mul by 1/6   | HardSigmoid(x, alpha=1/6, beta=0.5)   | 6     |
| Clip(x * a + b, 0, 1)                                      | HardSigmoid(x, alpha=a, beta=b)       | 6     |
| x * HardSigmoid(x, 1/6, 0.5)                               | HardSwish(x)                          | 14    |
| x * Clip(x + 3, 0, 6) / 6                                  | HardSwish(x)                          | 14    |
| 0.5 x (1 + erf(x / sqrt 2))                                | Gelu(x)                               | 20    |
| 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))            | Gelu(x, approximate="tanh")           | 20    |
| x * Sigmoid(x)                                             | Swish(x) (= SiLU)                     | 24    |
| (x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) * g + b  | LayerNormalization(x, g, b, eps)      | 17    |

A rule fires only when the model's opset has the op and the target's backend supports it (the
`supported-ops` of the pass context); otherwise `--explain` says which of the two is missing.
Every rewrite computes the same function up to float rounding: constants are matched within 1e-6
relative error (a `Div` by 1.4142135 is `x / sqrt 2`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mcc.toolchain.rewrite import Builder, Const, Match, Op, Opt, RewritePass, Rule, Var


def _close(m: Match, name: str, value: float, rtol: float = 1e-6) -> bool:
    return m.is_scalar_const(name) and math.isclose(float(m.const(name).reshape(-1)[0]), value, rel_tol=rtol,
                                                    abs_tol=rtol)


def _scalar(m: Match, name: str) -> float:
    return float(m.const(name).reshape(-1)[0])


def _clip_bounds(m: Match, clip_role: str, low: str, high: str) -> tuple[float, float] | None:
    """The (min, max) of a Clip: from its constant inputs (opset 11+) or attributes (before)."""
    clip = m.node(clip_role)
    if low in m.tensors or high in m.tensors:
        lo = _scalar(m, low) if low in m.tensors else -math.inf
        hi = _scalar(m, high) if high in m.tensors else math.inf
        return lo, hi
    if "min" in clip.attrs or "max" in clip.attrs:
        return float(clip.attrs.get("min", -math.inf)), float(clip.attrs.get("max", math.inf))
    return None


def _relu6_shift(name: str) -> Op:
    """Clip(x + 3, 0, 6), the core of hard-sigmoid/-swish."""
    return Op("Clip", Op("Add", Var("x"), Const("three"), name=f"{name}_add"), Opt(Const("lo")), Opt(Const("hi")),
              name=f"{name}_clip")


def _keeps_shape(m: Match) -> str | None:
    """Why one op on x would not have the matched result's shape (a constant broadcasts x up), or None."""
    before, after = m.shape("x"), m.root.outputs[0].shape
    if before is not None and after is not None and tuple(before) != tuple(after):
        return f"a constant broadcasts the result to {list(after)}, not the input's shape {list(before)}"
    return None


def _relu6_check(m: Match, name: str) -> str | None:
    if (reason := _keeps_shape(m)) is not None:
        return reason
    if not _close(m, "three", 3.0):
        return "the shift is not 3"
    bounds = _clip_bounds(m, f"{name}_clip", "lo", "hi")
    if bounds != (0.0, 6.0):
        return f"the Clip bounds are {bounds}, not (0, 6)"
    return None


@dataclass(frozen=True)
class HardSigmoidDiv(Rule):
    """Clip(x + 3, 0, 6) / 6 -> HardSigmoid(x, alpha=1/6, beta=0.5)."""

    name: ClassVar[str] = "recognize-hardsigmoid-relu6"
    produces_op: ClassVar[str | None] = "HardSigmoid"
    produces_since: ClassVar[int] = 6
    pattern: ClassVar[Op] = Op(("Div", "Mul"), _relu6_shift("hs"), Const("six"), name="scale")

    def check(self, m: Match) -> str | None:
        scale = 6.0 if m.node("scale").op == "Div" else 1.0 / 6.0
        if not _close(m, "six", scale):
            return "the scale is not 1/6"
        if m.dtype("x") is None or m.dtype("x").kind != "f":
            return "the input is not a float tensor"
        return _relu6_check(m, "hs")

    def rewrite(self, m: Match, b: Builder) -> None:
        b.node("HardSigmoid", [m["x"]], {"alpha": 1.0 / 6.0, "beta": 0.5}, outputs=list(m.root.outputs))


@dataclass(frozen=True)
class HardSigmoidAffine(Rule):
    """Clip(x * a + b, 0, 1) -> HardSigmoid(x, alpha=a, beta=b)."""

    name: ClassVar[str] = "recognize-hardsigmoid"
    produces_op: ClassVar[str | None] = "HardSigmoid"
    produces_since: ClassVar[int] = 6
    pattern: ClassVar[Op] = Op("Clip", Op("Add", Op("Mul", Var("x"), Const("alpha"), name="mul"), Const("beta"),
                                          name="add"), Opt(Const("lo")), Opt(Const("hi")), name="clip")

    def check(self, m: Match) -> str | None:
        if not (m.is_scalar_const("alpha") and m.is_scalar_const("beta")):
            return "the slope or offset is not a scalar"
        if (reason := _keeps_shape(m)) is not None:
            return reason
        bounds = _clip_bounds(m, "clip", "lo", "hi")
        if bounds != (0.0, 1.0):
            return f"the Clip bounds are {bounds}, not (0, 1)"
        return None

    def rewrite(self, m: Match, b: Builder) -> None:
        b.node("HardSigmoid", [m["x"]], {"alpha": _scalar(m, "alpha"), "beta": _scalar(m, "beta")},
               outputs=list(m.root.outputs))


@dataclass(frozen=True)
class HardSwish(Rule):
    """x * HardSigmoid(x, alpha=1/6, beta=0.5) -> HardSwish(x)."""

    name: ClassVar[str] = "recognize-hardswish"
    produces_op: ClassVar[str | None] = "HardSwish"
    produces_since: ClassVar[int] = 14
    pattern: ClassVar[Op] = Op("Mul", Var("x"), Op("HardSigmoid", Var("x"), name="hsig"), name="mul")

    def check(self, m: Match) -> str | None:
        attrs = m.node("hsig").attrs
        if not (math.isclose(attrs.get("alpha", 0.2), 1 / 6, rel_tol=1e-6)
                and math.isclose(attrs.get("beta", 0.5), 0.5, rel_tol=1e-6)):
            return "the HardSigmoid is not alpha=1/6, beta=0.5"
        return None

    def rewrite(self, m: Match, b: Builder) -> None:
        b.node("HardSwish", [m["x"]], outputs=list(m.root.outputs))


@dataclass(frozen=True)
class HardSwishRelu6(Rule):
    """x * Clip(x + 3, 0, 6) / 6 -> HardSwish(x)."""

    name: ClassVar[str] = "recognize-hardswish-relu6"
    produces_op: ClassVar[str | None] = "HardSwish"
    produces_since: ClassVar[int] = 14
    pattern: ClassVar[Op] = Op(("Div", "Mul"), Op("Mul", Var("x"), _relu6_shift("hw"), name="mul"), Const("six"),
                               name="scale")

    def check(self, m: Match) -> str | None:
        scale = 6.0 if m.node("scale").op == "Div" else 1.0 / 6.0
        if not _close(m, "six", scale):
            return "the scale is not 1/6"
        return _relu6_check(m, "hw")

    def rewrite(self, m: Match, b: Builder) -> None:
        b.node("HardSwish", [m["x"]], outputs=list(m.root.outputs))


def _erf_core() -> Op:
    """1 + erf(x / sqrt 2) (or x * 1/sqrt 2)."""
    return Op("Add", Op("Erf", Op(("Div", "Mul"), Var("x"), Const("root2"), name="scale"), name="erf"), Const("one"),
              name="plus1")


def _gelu_check(m: Match) -> str | None:
    if (reason := _keeps_shape(m)) is not None:
        return reason
    scale = math.sqrt(2.0) if m.node("scale").op == "Div" else 1.0 / math.sqrt(2.0)
    if not _close(m, "root2", scale, rtol=1e-5):
        return "the erf argument is not x / sqrt(2)"
    if not _close(m, "one", 1.0):
        return "erf is not offset by 1"
    if not _close(m, "half", 0.5):
        return "the product is not scaled by 0.5"
    return None


@dataclass(frozen=True)
class GeluErfOuterHalf(Rule):
    """(x * (1 + erf(x / sqrt 2))) * 0.5 -> Gelu(x)."""

    name: ClassVar[str] = "recognize-gelu"
    produces_op: ClassVar[str | None] = "Gelu"
    produces_since: ClassVar[int] = 20
    pattern: ClassVar[Op] = Op("Mul", Op("Mul", Var("x"), _erf_core(), name="mul"), Const("half"), name="root")

    def check(self, m: Match) -> str | None:
        return _gelu_check(m)

    def rewrite(self, m: Match, b: Builder) -> None:
        b.node("Gelu", [m["x"]], outputs=list(m.root.outputs))


@dataclass(frozen=True)
class GeluErfInnerHalf(GeluErfOuterHalf):
    """(x * 0.5) * (1 + erf(x / sqrt 2)) -> Gelu(x)."""

    name: ClassVar[str] = "recognize-gelu-half-first"
    pattern: ClassVar[Op] = Op("Mul", Op("Mul", Var("x"), Const("half"), name="mul"), _erf_core(), name="root")


@dataclass(frozen=True)
class GeluTanh(Rule):
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) -> Gelu(x, approximate="tanh")."""

    name: ClassVar[str] = "recognize-gelu-tanh"
    produces_op: ClassVar[str | None] = "Gelu"
    produces_since: ClassVar[int] = 20
    pattern: ClassVar[Op] = Op("Mul", Op("Mul", Var("x"), Const("half"), name="mul"), Op(
        "Add", Op("Tanh", Op("Mul", Op("Add", Var("x"), Op("Mul", Op("Pow", Var("x"), Const("three"), name="cube"),
                                                                 Const("c"), name="cubic"), name="inner"),
                                 Const("k"), name="scaled"), name="tanh"), Const("one"), name="plus1"), name="root")

    def check(self, m: Match) -> str | None:
        checks = (("half", 0.5, "the product is not scaled by 0.5"), ("three", 3.0, "the power is not 3"),
                  ("c", 0.044715, "the cubic coefficient is not 0.044715"),
                  ("k", math.sqrt(2 / math.pi), "the tanh scale is not sqrt(2/pi)"), ("one", 1.0, "tanh is not offset by 1"))
        for name, value, reason in checks:
            if not _close(m, name, value, rtol=1e-4):
                return reason
        return _keeps_shape(m)

    def rewrite(self, m: Match, b: Builder) -> None:
        b.node("Gelu", [m["x"]], {"approximate": "tanh"}, outputs=list(m.root.outputs))


@dataclass(frozen=True)
class Silu(Rule):
    """x * Sigmoid(x) -> Swish(x) (SiLU)."""

    name: ClassVar[str] = "recognize-silu"
    produces_op: ClassVar[str | None] = "Swish"
    produces_since: ClassVar[int] = 24
    pattern: ClassVar[Op] = Op("Mul", Var("x"), Op("Sigmoid", Var("x"), name="sigmoid"), name="mul")

    def rewrite(self, m: Match, b: Builder) -> None:
        b.node("Swish", [m["x"]], outputs=list(m.root.outputs))


def _axes(node, rank: int) -> list[int] | None:
    """A ReduceMean's axes (attribute before opset 18, constant input from 18), normalised."""
    inputs = list(node.inputs)
    if len(inputs) > 1 and inputs[1].name:
        if not hasattr(inputs[1], "values"):
            return None
        axes = np.asarray(inputs[1].values).reshape(-1).tolist()
    else:
        axes = list(node.attrs.get("axes", []))
    return sorted(int(a) % rank for a in axes)


@dataclass(frozen=True)
class LayerNorm(Rule):
    """(x - mean) / sqrt(var + eps) * gamma + beta over the last axes -> LayerNormalization."""

    name: ClassVar[str] = "recognize-layernorm"
    produces_op: ClassVar[str | None] = "LayerNormalization"
    produces_since: ClassVar[int] = 17
    pattern: ClassVar[Op] = Op("Add", Op("Mul", Op("Div", Op("Sub", Var("x"), Op("ReduceMean", Var("x"), name="mean",
                                                                                  extra_inputs=True), name="centered"),
                                                   Op("Sqrt", Op("Add", Op("ReduceMean", Op(
                                                       "Pow", Op("Sub", Var("x"), Op("ReduceMean", Var("x"), name="mean",
                                                                                     extra_inputs=True),
                                                                  name="centered"), Const("two"), name="square"),
                                                       name="var", extra_inputs=True), Const("eps"), name="add_eps"),
                                                      name="std"), name="normalized"),
                                            Const("gamma"), name="scale"), Const("beta"), name="shift")

    def check(self, m: Match) -> str | None:
        rank = m.rank("x")
        if rank is None:
            return "the input rank is unknown"
        if not _close(m, "two", 2.0):
            return "the variance is not a mean of squares"
        axes = [_axes(m.node(role), rank) for role in ("mean", "var")]
        if axes[0] is None or axes[0] != axes[1]:
            return "the two ReduceMeans do not reduce the same constant axes"
        if not axes[0]:
            return "the ReduceMeans give no axes (they reduce every axis)"
        if axes[0] != list(range(rank - len(axes[0]), rank)):
            return f"the reduced axes {axes[0]} are not the last ones"
        for role in ("mean", "var"):
            if not m.node(role).attrs.get("keepdims", 1):
                return "a ReduceMean drops the reduced axes"
        if not m.is_scalar_const("eps"):
            return "epsilon is not a scalar"
        normalized = tuple(m.shape("x")[rank - len(axes[0]):]) if m.shape("x") else None
        for name in ("gamma", "beta"):
            shape = m.const(name).shape
            if normalized is None or tuple(shape[-len(normalized):]) != normalized or int(np.prod(shape)) != int(
                    np.prod(normalized)):
                return f"{name} does not have the normalized shape {list(normalized or [])}"
            if len(shape) > rank:
                return f"{name} has rank {len(shape)}: it broadcasts the rank-{rank} input to a higher rank"
        if m.const("gamma").dtype != m.dtype("x") or m.const("beta").dtype != m.dtype("x"):
            return "gamma or beta has another dtype than the input"
        return None

    def rewrite(self, m: Match, b: Builder) -> None:
        rank = m.rank("x")
        axes = _axes(m.node("mean"), rank)
        normalized = m.shape("x")[axes[0]:]
        gamma = b.constant("gamma", m.const("gamma").reshape(normalized))
        beta = b.constant("beta", m.const("beta").reshape(normalized))
        b.node("LayerNormalization", [m["x"], gamma, beta], {"axis": axes[0], "epsilon": _scalar(m, "eps")},
               outputs=list(m.root.outputs))


ACTIVATION_RULES = (HardSigmoidDiv, HardSigmoidAffine, HardSwish, HardSwishRelu6, GeluErfOuterHalf,
                    GeluErfInnerHalf, GeluTanh, Silu, LayerNorm)


@dataclass(frozen=True)
class RecognizeActivations(RewritePass):
    """Rewrite decomposed HardSigmoid, HardSwish, GELU, SiLU and LayerNorm to single ops the target supports."""

    name: ClassVar[str] = "recognize-activations"
    rules: ClassVar[tuple] = ACTIVATION_RULES
