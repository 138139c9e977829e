"""Remove ops that return their input unchanged, once static shapes show it.

- Expand to the shape the input already has; Tile by all ones;
- Slice that keeps every element (output shape = input shape, every step 1);
- Pad by zeros on every side;
- x + 0, x - 0, x * 1, x / 1 with a constant that broadcasts to nothing new (the result has x's
  shape and dtype; x + 0 maps -0.0 to +0.0, which no comparison or later arithmetic can tell apart
  except through division by zero, so the rewrite is exact for every finite use);
- Concat of one input.

Each becomes an Identity, which `eliminate-identity` removes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mcc.toolchain.rewrite import Builder, Const, Match, Op, RewritePass, Rule, Var


def _same_shape(m: Match, name: str = "x") -> str | None:
    before, after = m.shape(name), m.root.outputs[0].shape
    if before is None or after is None or any(not isinstance(d, (int, np.integer)) for d in list(before) + list(after)):
        return "the shapes are not static"
    if tuple(before) != tuple(after):
        return f"it changes the shape {list(before)} -> {list(after)}"
    return None


class _ToIdentity(Rule):
    def rewrite(self, m: Match, b: Builder) -> None:
        b.node("Identity", [m["x"]], outputs=list(m.root.outputs))


@dataclass(frozen=True)
class NoopExpand(_ToIdentity):
    """Expand or Tile that leaves the shape unchanged -> nothing."""

    name: ClassVar[str] = "remove-noop-expand"
    pattern: ClassVar[Op] = Op(("Expand", "Tile"), Var("x"), Var("shape"), name="expand")

    def check(self, m: Match) -> str | None:
        return _same_shape(m)


@dataclass(frozen=True)
class NoopSlice(_ToIdentity):
    """Slice that keeps every element (same shape, unit steps) -> nothing."""

    name: ClassVar[str] = "remove-noop-slice"
    pattern: ClassVar[Op] = Op("Slice", Var("x"), name="slice", extra_inputs=True)

    def check(self, m: Match) -> str | None:
        node = m.node("slice")
        inputs = list(node.inputs)
        if len(inputs) > 4 and inputs[4].name:
            if not hasattr(inputs[4], "values"):
                return "the steps are not constant"
            if np.any(np.asarray(inputs[4].values) != 1):
                return "a step is not 1"
        if len(inputs) == 1 and any(s != 1 for s in node.attrs.get("steps", [])):
            return "a step is not 1"
        return _same_shape(m)


@dataclass(frozen=True)
class NoopPad(_ToIdentity):
    """Pad by zero on every side -> nothing."""

    name: ClassVar[str] = "remove-noop-pad"
    pattern: ClassVar[Op] = Op("Pad", Var("x"), name="pad", extra_inputs=True)

    def check(self, m: Match) -> str | None:
        # The same shape is not enough: pads [1, -1] pad one side and crop the other (a shift).
        pad = m.node("pad")
        inputs = list(pad.inputs)
        if len(inputs) > 1 and not hasattr(inputs[1], "values"):
            return "the pads are not constant"
        pads = np.asarray(inputs[1].values) if len(inputs) > 1 else np.asarray(pad.attrs.get("pads", []))
        if np.any(pads != 0):
            return "a pad is not 0 (it shifts the values)"
        return _same_shape(m)


_NEUTRAL = {"Add": 0.0, "Sub": 0.0, "Mul": 1.0, "Div": 1.0}


@dataclass(frozen=True)
class NoopArithmetic(_ToIdentity):
    """x + 0, x - 0, x * 1, x / 1 that broadcast to x's own shape -> nothing."""

    name: ClassVar[str] = "remove-noop-arithmetic"
    pattern: ClassVar[Op] = Op(("Add", "Sub", "Mul", "Div"), Var("x"), Const("k"), name="arith")

    def check(self, m: Match) -> str | None:
        op = m.node("arith").op  # Sub/Div only match x - k, x / k; Add/Mul either order
        value = m.const("k")
        if value.size == 0 or np.any(value != _NEUTRAL[op]):
            return f"the constant is not {_NEUTRAL[op]:g}"
        if m.dtype("x") is None or m.dtype("x") != value.dtype:
            return "the dtypes differ (the op would convert)"
        return _same_shape(m)


@dataclass(frozen=True)
class SingleConcat(_ToIdentity):
    """Concat of a single input -> nothing."""

    name: ClassVar[str] = "remove-single-concat"
    pattern: ClassVar[Op] = Op("Concat", Var("x"), name="concat")


@dataclass(frozen=True)
class RemoveNoops(RewritePass):
    """Remove Expand, Tile, Slice, Pad, Concat and +0/-0/*1//1 that return their input unchanged."""

    name: ClassVar[str] = "remove-noops"
    rules: ClassVar[tuple] = (NoopExpand, NoopSlice, NoopPad, NoopArithmetic, SingleConcat)
