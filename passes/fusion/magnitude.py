"""Recognise the magnitude of a complex tensor stored as two halves of one axis, and make it one ReduceL2.

Audio front ends compute an STFT as a Conv1d whose filters are the cosine and sine bases
stacked along the channel axis, then its magnitude from the two halves:

    re = Slice(x, [p, p+F) on axis a, ...)          im = Slice(x, [p+F, p+2F) on axis a, ...)
    |X| = Sqrt(re^2 + im^2)                         (the squares as Pow(., 2) or Mul(., .))

The two slices agree on every other axis. Splitting axis a of their union into (2, F) puts re
and im at index 0 and 1 of a new axis, and the sum of squares and its root are ReduceL2 over it:

    |X| = ReduceL2(Reshape(Slice(x, [p, p+2F) on axis a, ...), [..., 2, F, ...]), axis=a, keepdims=0)

Six nodes become three (two when the union is all of x, which then needs no Slice): the same
function, summed in the same order (re^2 + im^2). The rule needs x's shape static and steps of 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mcc.toolchain.rewrite import Builder, Const, Match, Op, Opt, RewritePass, Rule, Var


def _slice(name: str) -> Op:
    return Op("Slice", Var("x"), Const(f"{name}_starts"), Const(f"{name}_ends"), Opt(Const(f"{name}_axes")),
              Opt(Const(f"{name}_steps")), name=name)


def _ranges(m: Match, name: str, shape: tuple[int, ...]) -> list[tuple[int, int]] | str:
    """Slice `name`'s [start, end) on every axis of x, clamped as onnxruntime does, or why not."""
    starts = m.const(f"{name}_starts").reshape(-1).tolist()
    ends = m.const(f"{name}_ends").reshape(-1).tolist()
    rank = len(shape)
    axes = (m.const(f"{name}_axes").reshape(-1).tolist() if f"{name}_axes" in m.tensors
            else list(range(len(starts))))
    steps = m.const(f"{name}_steps").reshape(-1).tolist() if f"{name}_steps" in m.tensors else [1] * len(starts)
    if any(step != 1 for step in steps):
        return "a Slice has a step other than 1"
    ranges = [(0, dim) for dim in shape]
    for axis, start, end in zip(axes, starts, ends):
        axis = int(axis) % rank
        dim = shape[axis]
        start = min(max(start + dim if start < 0 else start, 0), dim)
        end = min(max(end + dim if end < 0 else end, 0), dim)
        ranges[axis] = (start, max(start, end))
    return ranges


def _split_axis(m: Match) -> tuple[int, int, int] | str:
    """(axis, start, half) where the two slices are adjacent equal halves, or why they are not."""
    shape = m.shape("x")
    if shape is None or any(not isinstance(d, (int, np.integer)) or d < 0 for d in shape):
        return "the sliced tensor's shape is not static"
    shape = tuple(int(d) for d in shape)
    first, second = _ranges(m, "re", shape), _ranges(m, "im", shape)
    for ranges in (first, second):
        if isinstance(ranges, str):
            return ranges
    differing = [axis for axis, (a, b) in enumerate(zip(first, second)) if a != b]
    if len(differing) != 1:
        return f"the two Slices differ on {len(differing)} axes, not one"
    axis = differing[0]
    (a0, a1), (b0, b1) = sorted((first[axis], second[axis]))
    if a1 != b0 or a1 - a0 != b1 - b0 or a1 == a0:
        return f"the two Slices take [{a0}, {a1}) and [{b0}, {b1}) of axis {axis}: not adjacent halves"
    return axis, a0, a1 - a0


class _Magnitude(Rule):
    produces_op: ClassVar[str | None] = "ReduceL2"
    produces_since: ClassVar[int] = 1

    def check(self, m: Match) -> str | None:
        if m.dtype("x") is None or m.dtype("x").kind != "f":
            return "the input is not a float tensor"
        if self.squares_by_pow and not all(
                m.is_scalar_const(name) and float(m.const(name).reshape(-1)[0]) == 2.0 for name in ("two_re", "two_im")):
            return "the exponent is not 2"
        if self.squares_by_pow and m.shape("x") is not None and any(
                m.const(name).ndim > len(m.shape("x")) for name in ("two_re", "two_im")):
            return "the exponent has a higher rank than the slices (it broadcasts the result up a rank)"
        found = _split_axis(m)
        return found if isinstance(found, str) else None

    def rewrite(self, m: Match, b: Builder) -> None:
        axis, start, half = _split_axis(m)
        shape = [int(d) for d in m.shape("x")]
        ranges = _ranges(m, "re", tuple(shape))
        ranges[axis] = (start, start + 2 * half)
        kept = [(a, lo, hi) for a, (lo, hi) in enumerate(ranges) if (lo, hi) != (0, shape[a])]
        source = m["x"]
        if kept:
            source = b.node("Slice", [source, *(b.constant(label, np.array([k[i] for k in kept], dtype=np.int64))
                                                for i, label in ((1, "starts"), (2, "ends"), (0, "axes")))],
                            dtype=m.dtype("x"))
        split = [hi - lo for lo, hi in ranges]
        split[axis:axis + 1] = [2, half]
        pairs = b.node("Reshape", [source, b.constant("shape", np.array(split, dtype=np.int64))], dtype=m.dtype("x"))
        if b.opset >= 18:
            b.node("ReduceL2", [pairs, b.constant("axes", np.array([axis], dtype=np.int64))], {"keepdims": 0},
                   outputs=list(m.root.outputs))
        else:
            b.node("ReduceL2", [pairs], {"axes": [axis], "keepdims": 0}, outputs=list(m.root.outputs))


@dataclass(frozen=True)
class MagnitudePow(_Magnitude):
    """Sqrt(Pow(Slice(x), 2) + Pow(Slice(x), 2)) over adjacent halves of one axis -> ReduceL2."""

    name: ClassVar[str] = "recognize-magnitude"
    squares_by_pow: ClassVar[bool] = True
    pattern: ClassVar[Op] = Op("Sqrt", Op("Add", Op("Pow", _slice("re"), Const("two_re"), name="square_re"),
                                          Op("Pow", _slice("im"), Const("two_im"), name="square_im"), name="sum"),
                               name="sqrt")


@dataclass(frozen=True)
class MagnitudeMul(_Magnitude):
    """Sqrt(Slice(x)^2 + Slice(x)^2), the squares written as Mul(s, s) -> ReduceL2."""

    name: ClassVar[str] = "recognize-magnitude-mul"
    squares_by_pow: ClassVar[bool] = False
    pattern: ClassVar[Op] = Op("Sqrt", Op("Add", Op("Mul", _slice("re"), _slice("re"), name="square_re"),
                                          Op("Mul", _slice("im"), _slice("im"), name="square_im"), name="sum"),
                               name="sqrt")


@dataclass(frozen=True)
class RecognizeMagnitude(RewritePass):
    """Rewrite sqrt(re^2 + im^2) over two halves of one axis (an STFT's magnitude) to one ReduceL2."""

    name: ClassVar[str] = "recognize-magnitude"
    rules: ClassVar[tuple] = (MagnitudePow, MagnitudeMul)
