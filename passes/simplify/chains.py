"""Merge or remove chains of layout and type ops: Transpose, Reshape-like ops, Cast.

- Transpose(Transpose(x, p), q) is one Transpose with the composed permutation, or nothing when
  that permutation is the identity.
- A chain of Reshape, Flatten, Squeeze and Unsqueeze with a static result shape is one Reshape
  to that shape, or nothing when the shape is the input's. A lone one that changes no shape goes.
- Cast(Cast(x, T1), T2) is Cast(x, T2) when T1 holds every value of x's type exactly (a widening
  cast in between changes nothing); a Cast to the type x already has goes.

"Nothing" is written as an Identity, which `eliminate-identity` removes (it knows when a graph
output must keep its name).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mcc.toolchain.rewrite import Builder, Match, Op, RewritePass, Rule, Var

RESHAPES = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


def _dtype(tensor) -> np.dtype | None:
    """A tensor's numpy dtype; None when unknown or an ONNX type numpy lacks (bfloat16, float8...)."""
    try:
        return np.dtype(tensor.dtype) if tensor.dtype is not None else None
    except TypeError:
        return None


def _static(shape) -> tuple[int, ...] | None:
    if shape is None or any(not isinstance(d, (int, np.integer)) or d < 0 for d in shape):
        return None
    return tuple(int(d) for d in shape)


@dataclass(frozen=True)
class MergeTransposes(Rule):
    """Transpose(Transpose(x, p), q) -> Transpose(x, p[q]), or nothing when that is the identity."""

    name: ClassVar[str] = "merge-transposes"
    pattern: ClassVar[Op] = Op("Transpose", Op("Transpose", Var("x"), name="inner"), name="outer")

    def check(self, m: Match) -> str | None:
        for role in ("inner", "outer"):
            if "perm" not in m.node(role).attrs:
                return f"the {role} Transpose has no explicit perm"
        return None

    def rewrite(self, m: Match, b: Builder) -> None:
        p = list(m.node("inner").attrs["perm"])
        q = list(m.node("outer").attrs["perm"])
        perm = [p[i] for i in q]
        if perm == list(range(len(perm))):
            b.node("Identity", [m["x"]], outputs=list(m.root.outputs))
        else:
            b.node("Transpose", [m["x"]], {"perm": perm}, outputs=list(m.root.outputs))


@dataclass(frozen=True)
class MergeReshapes(Rule):
    """A chain of two Reshape/Flatten/Squeeze/Unsqueeze with a static result -> one Reshape (or nothing)."""

    name: ClassVar[str] = "merge-reshapes"
    pattern: ClassVar[Op] = Op(RESHAPES, Op(RESHAPES, Var("x"), name="inner", extra_inputs=True),
                               name="outer", extra_inputs=True)

    def check(self, m: Match) -> str | None:
        if _static(m.root.outputs[0].shape) is None:
            return "the chain's result shape is not static"
        return None

    def rewrite(self, m: Match, b: Builder) -> None:
        shape = _static(m.root.outputs[0].shape)
        if _static(m["x"].shape) == shape:
            b.node("Identity", [m["x"]], outputs=list(m.root.outputs))
        else:
            b.node("Reshape", [m["x"], b.constant("shape", np.array(shape, np.int64))], outputs=list(m.root.outputs))


@dataclass(frozen=True)
class RemoveNoopReshape(Rule):
    """A Reshape/Flatten/Squeeze/Unsqueeze whose output shape is its static input shape -> nothing."""

    name: ClassVar[str] = "remove-noop-reshape"
    pattern: ClassVar[Op] = Op(RESHAPES, Var("x"), name="reshape", extra_inputs=True)

    def check(self, m: Match) -> str | None:
        before, after = _static(m["x"].shape), _static(m.root.outputs[0].shape)
        if before is None or after is None:
            return "the shapes are not static"
        if before != after:
            return f"it changes the shape {list(before)} -> {list(after)}"
        return None

    def rewrite(self, m: Match, b: Builder) -> None:
        b.node("Identity", [m["x"]], outputs=list(m.root.outputs))


#: dtype -> the dtypes that represent every one of its values exactly
_EXACT = {
    "bool": {"bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float16", "float32",
             "float64"},
    "int8": {"int8", "int16", "int32", "int64", "float16", "float32", "float64"},
    "uint8": {"uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float16", "float32", "float64"},
    "int16": {"int16", "int32", "int64", "float32", "float64"},
    "uint16": {"uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"},
    "int32": {"int32", "int64", "float64"},
    "uint32": {"uint32", "int64", "uint64", "float64"},
    "float16": {"float16", "float32", "float64"},
    "float32": {"float32", "float64"},
}


@dataclass(frozen=True)
class MergeCasts(Rule):
    """Cast(Cast(x, T1), T2) -> Cast(x, T2) when T1 is exact for x's type; a Cast to x's own type -> nothing."""

    name: ClassVar[str] = "merge-casts"
    pattern: ClassVar[Op] = Op("Cast", Op("Cast", Var("x"), name="inner"), name="outer")

    def check(self, m: Match) -> str | None:
        source, middle, target = m.dtype("x"), _dtype(m.node("inner").outputs[0]), _dtype(m.root.outputs[0])
        if source is None or middle is None or target is None:
            return "the dtypes are not known (or not numpy types, like bfloat16 and float8)"
        if middle.name not in _EXACT.get(source.name, {source.name}):
            return f"the cast {source.name} -> {middle.name} loses values"
        return None

    def rewrite(self, m: Match, b: Builder) -> None:
        outer = m.node("outer")
        if _dtype(outer.outputs[0]) == m.dtype("x"):
            b.node("Identity", [m["x"]], outputs=list(outer.outputs))
        else:
            b.node("Cast", [m["x"]], {"to": outer.attrs["to"]}, outputs=list(outer.outputs))


@dataclass(frozen=True)
class RemoveNoopCast(Rule):
    """Cast(x, T) where x already has type T -> nothing."""

    name: ClassVar[str] = "remove-noop-cast"
    pattern: ClassVar[Op] = Op("Cast", Var("x"), name="cast")

    def check(self, m: Match) -> str | None:
        source, target = m.dtype("x"), _dtype(m.root.outputs[0])
        if source is None or target is None:
            return "the dtypes are not known (or not numpy types, like bfloat16 and float8)"
        if target != source:
            return f"it converts {source.name} to {target.name}"
        return None

    def rewrite(self, m: Match, b: Builder) -> None:
        b.node("Identity", [m["x"]], outputs=list(m.root.outputs))


@dataclass(frozen=True)
class SimplifyChains(RewritePass):
    """Merge or remove chains of Transpose, Reshape-like ops and Cast."""

    name: ClassVar[str] = "simplify-chains"
    rules: ClassVar[tuple] = (MergeTransposes, MergeReshapes, RemoveNoopReshape, MergeCasts, RemoveNoopCast)
