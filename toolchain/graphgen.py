"""Random valid static-shape ONNX models, and the properties every pass must keep on them.

A model is a chain of *motifs* grown from one float32 input: each motif is a small builder
(`conv_bn`, `matmul_add`, `hardswish`, `reshape_chain`, ...) that reads the current tensor and
returns the tensor it computed; a motif may branch (two paths joined by Add/Mul or Concat) or
repeat a subexpression, so the graph is a DAG. Every motif is written the way exporters write it,
so the passes that recognise it can fire, with random variants that must not fire (a shift of
2.5 instead of 3, a Pad with a non-zero value or one that shifts, a MatMul input of rank 3, a
one-element constant of higher rank that broadcasts the result up). Shapes are static and
small (batch 1, channels 1-16, spatial 1-12) so onnxruntime runs are fast; weights are normal
values scaled by 1/sqrt(fan-in), so activations stay near magnitude 1 whatever the depth.

Every node is named `<motif>_<step>/<op>_<k>`: `motif_of(node_name)` tells which motif a node
came from, and `touched_motifs(before, after)` which motifs a pass rewrote.

Random decisions go through a `Choices` object, so the same builders serve two drivers:
`graphs()` is a hypothesis strategy (decisions are drawn, and shrink, through hypothesis;
weight values come from a NumPy generator seeded by one drawn integer), and `random_model(seed)`
is a plain seeded model for long runs (`tools/fuzz_passes.py`).

`check_pass` runs one pass (or pipeline) on a model and checks the three properties: the result
passes onnx.checker and strict shape inference (`verify_model`), a second run changes nothing,
and onnxruntime computes the same outputs on the result as on the original model within
`FP32_RELATIVE_TOLERANCE` of the output's magnitude.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence, TypeVar

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

T = TypeVar("T")

OPSETS = (17, 17, 20)  # mostly 17; 20 adds Gelu (and takes ReduceMean axes as an input)
IR_VERSION_BY_OPSET = {17: 8, 20: 9}
MAX_CHANNELS = 16
MAX_SPATIAL = 12
MAX_MOTIFS = 6
FAVOURED_MOTIF_WEIGHT = 10  # a favoured motif is picked this many times as often as another

#: Outputs may differ by this fraction of max(1, max |reference|): fp32 epsilon is 1.2e-7, and a
#: pass that refolds weights or reorders a reduction of length n changes each result by about
#: sqrt(n) * eps per layer; our graphs have n <= 32 * 5 * 5 and a handful of layers, which stays
#: below 1e-5. 1e-4 leaves a 10x margin while a wrong rewrite (a lost bias, a misplaced axis) is off
#: by far more than that.
FP32_RELATIVE_TOLERANCE = 1e-4
#: for passes that compute in half on purpose (`Pass.changes_precision`): float16 has a 2^-11
#: relative step, and the generated chains accumulate a few dozen roundings
HALF_RELATIVE_TOLERANCE = 3e-2
#: for passes that quantize to int8 (`Pass.precision == "int8"`) the check is the output's SQNR: a
#: 2^-8 step per tensor, which a normalisation or a product after it magnifies element-wise (a
#: dynamically quantized MatMul into a LayerNorm and a square: 0.3 off at a scale of 4.8, yet
#: 30-44 dB), while a wrong rewrite (a lost bias, a misplaced scale axis) is far below 25 dB
INT8_MIN_SQNR_DB = 25.0


# --------------------------------------------------------------------------------------------------
# Random decisions: from hypothesis or from a seeded NumPy generator


class Choices(Protocol):
    def integer(self, low: int, high: int) -> int:
        """An integer in [low, high]."""

    def choice(self, options: Sequence[T]) -> T:
        """One of `options` (hypothesis shrinks towards the first)."""

    def flag(self, probability: float) -> bool:
        """True with about `probability` (hypothesis shrinks towards False)."""


@dataclass
class RngChoices:
    rng: np.random.Generator

    def integer(self, low: int, high: int) -> int:
        return int(self.rng.integers(low, high + 1))

    def choice(self, options: Sequence[T]) -> T:
        return options[int(self.rng.integers(len(options)))]

    def flag(self, probability: float) -> bool:
        return bool(self.rng.random() < probability)


@dataclass
class HypothesisChoices:
    draw: Callable

    def integer(self, low: int, high: int) -> int:
        from hypothesis import strategies as st

        return self.draw(st.integers(low, high))

    def choice(self, options: Sequence[T]) -> T:
        from hypothesis import strategies as st

        return self.draw(st.sampled_from(list(options)))

    def flag(self, probability: float) -> bool:
        from hypothesis import strategies as st

        return self.draw(st.integers(0, 999)) >= round(1000 * (1 - probability))


# --------------------------------------------------------------------------------------------------
# The builder: nodes, constants and shapes of the model being grown


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: int = TensorProto.FLOAT
    is_graph_input: bool = False

    @property
    def rank(self) -> int:
        return len(self.shape)


@dataclass
class GraphBuilder:
    choices: Choices
    values: np.random.Generator
    opset: int
    motif: str = "input"
    #: one-element constants keep the rank (set while building a branch that must keep x's shape)
    keep_rank: bool = False
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    produced: list[Tensor] = field(default_factory=list)
    _counter: int = 0

    def _next(self) -> int:
        self._counter += 1
        return self._counter

    def node(self, op: str, inputs: Sequence[str], shape: Sequence[int], dtype: int = TensorProto.FLOAT,
             **attrs) -> Tensor:
        """Add a node with one output of the given static shape; returns that output."""
        k = self._next()
        output = Tensor(f"t{k}", tuple(int(d) for d in shape), dtype)
        self.nodes.append(helper.make_node(op, list(inputs), [output.name], name=f"{self.motif}/{op}_{k}", **attrs))
        self.produced.append(output)
        return output

    def constant(self, values: np.ndarray, hint: str = "c") -> str:
        name = f"{hint}{self._next()}"
        self.initializers.append(numpy_helper.from_array(np.asarray(values), name))
        return name

    def scalar(self, value: float, rank: int = 0) -> str:
        return self.constant(np.full((1,) * rank, value, np.float32), "s")

    def weight(self, shape: Sequence[int], fan_in: int) -> str:
        return self.constant((self.values.normal(size=shape) / math.sqrt(max(fan_in, 1))).astype(np.float32), "w")

    def normal(self, shape: Sequence[int], scale: float = 1.0) -> np.ndarray:
        return (self.values.normal(size=shape) * scale).astype(np.float32)

    def uniform(self, shape: Sequence[int], low: float, high: float) -> np.ndarray:
        return self.values.uniform(low, high, size=shape).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Shape helpers


def _is_image(x: Tensor, max_channels: int = 2 * MAX_CHANNELS) -> bool:
    return x.rank == 4 and x.dtype == TensorProto.FLOAT and x.shape[1] <= max_channels and max(x.shape[2:]) <= 16


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _window_output(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int) -> int:
    return (size + pad_begin + pad_end - kernel) // stride + 1


def _scalar_rank(g: GraphBuilder, rank: int) -> int:
    """The rank of a one-element constant: 0, 1 or the tensor's; rarely one more (it broadcasts the rank up)."""
    if not g.keep_rank and g.choices.flag(0.05):
        return rank + 1
    return g.choices.choice((0, 1, rank))


def _scalar_operand(g: GraphBuilder, x: Tensor, value: float) -> tuple[str, tuple[int, ...]]:
    """A one-element constant of random rank (see `_scalar_rank`) and the shape of x op it."""
    rank = _scalar_rank(g, x.rank)
    return g.scalar(value, rank), (1,) * (rank - x.rank) + x.shape


def _channel_constant(g: GraphBuilder, x: Tensor, values: np.ndarray) -> str:
    """`values` ([C]) shaped to broadcast along axis 1 of `x`: [C, 1, .., 1] or [1, C, 1, .., 1]."""
    trailing = (1,) * (x.rank - 2)
    shape = g.choices.choice(((values.size,) + trailing, (1, values.size) + trailing))
    return g.constant(values.reshape(shape), "k")


def _random_factorization(g: GraphBuilder, total: int, rank: int) -> tuple[int, ...]:
    dims = []
    rest = total
    for _ in range(rank - 1):
        dim = g.choices.choice(_divisors(rest))
        dims.append(dim)
        rest //= dim
    dims.append(rest)
    return tuple(dims)


# --------------------------------------------------------------------------------------------------
# Motifs: each reads `x` and returns what it computed


def conv(g: GraphBuilder, x: Tensor, same_shape: bool = False) -> Tensor:
    """Conv with kernel 1/3/5, stride 1/2, random pads, groups (depthwise too), with or without bias."""
    _, channels, height, width = x.shape
    if same_shape:
        kernel, stride = g.choices.choice((1, 3)), 1
        pads = [kernel // 2] * 4
        group = g.choices.choice((1, channels))
        out_channels = channels
    else:
        kernel = g.choices.choice((1, 3, 5))
        stride = g.choices.choice((1, 2))
        pads = [g.choices.integer(0, kernel // 2) for _ in range(4)]
        for axis, size in enumerate((height, width)):  # the window must fit once
            if size + pads[axis] + pads[axis + 2] < kernel:
                pads[axis + 2] = kernel - size - pads[axis]
        group = channels if g.choices.flag(0.3) else g.choices.choice(_divisors(channels))  # depthwise, often
        out_channels = group * g.choices.integer(1, max(MAX_CHANNELS, group) // group)
    fan_in = channels // group * kernel * kernel
    inputs = [x.name, g.weight((out_channels, channels // group, kernel, kernel), fan_in)]
    if g.choices.flag(0.6):
        inputs.append(g.constant(g.normal((out_channels,), 0.1), "b"))
    shape = (x.shape[0], out_channels, _window_output(height, kernel, stride, pads[0], pads[2]),
             _window_output(width, kernel, stride, pads[1], pads[3]))
    return g.node("Conv", inputs, shape, kernel_shape=[kernel, kernel], strides=[stride, stride], pads=pads,
                  group=group)


def batch_norm(g: GraphBuilder, x: Tensor) -> Tensor:
    channels = x.shape[1]
    params = [g.constant(g.uniform((channels,), 0.5, 1.5), "gamma"), g.constant(g.normal((channels,), 0.1), "beta"),
              g.constant(g.normal((channels,), 0.1), "mean"), g.constant(g.uniform((channels,), 0.5, 1.5), "var")]
    return g.node("BatchNormalization", [x.name] + params, x.shape, epsilon=g.choices.choice((1e-5, 1e-3)))


def conv_bn(g: GraphBuilder, x: Tensor) -> Tensor:
    return batch_norm(g, conv(g, x))


def conv_affine(g: GraphBuilder, x: Tensor) -> Tensor:
    """Conv then Mul and/or Add by a per-channel or one-element constant."""
    y = conv(g, x)
    for op in g.choices.choice((("Mul",), ("Add",), ("Mul", "Add"), ("Add", "Mul"))):
        values = g.uniform((y.shape[1],), 0.5, 1.5) if op == "Mul" else g.normal((y.shape[1],), 0.5)
        if g.choices.flag(0.3):
            rank = _scalar_rank(g, y.rank)
            operand = g.constant(values[:1].reshape((1,) * rank), "k")
            shape = (1,) * (rank - y.rank) + y.shape
        else:
            operand, shape = _channel_constant(g, y, values), y.shape
        inputs = [operand, y.name] if g.choices.flag(0.3) else [y.name, operand]
        y = g.node(op, inputs, shape)
    return y


def _zero_pad(g: GraphBuilder, x: Tensor) -> Tensor:
    """A Pad on the spatial axes, constant 0 (rarely another value or the reflect mode: must not be folded)."""
    pads = [0, 0, g.choices.integer(0, 2), g.choices.integer(0, 2), 0, 0, g.choices.integer(0, 2),
            g.choices.integer(1, 2)]
    inputs = [x.name, g.constant(np.array(pads, np.int64), "pads")]
    mode = "constant"
    if g.choices.flag(0.1):
        inputs.append(g.constant(np.array(0.5, np.float32), "value"))
    elif g.choices.flag(0.1) and min(x.shape[2:]) > 2:
        mode = "reflect"
    elif g.choices.flag(0.3):
        inputs.append(g.constant(np.array(0.0, np.float32), "value"))
    shape = tuple(size + pads[axis] + pads[axis + 4] for axis, size in enumerate(x.shape))
    return g.node("Pad", inputs, shape, mode=mode)


def pad_conv(g: GraphBuilder, x: Tensor) -> Tensor:
    padded = _zero_pad(g, x)
    return conv(g, padded)


def _pool_attrs(g: GraphBuilder, x: Tensor, own_pads: bool = True) -> tuple[dict, tuple[int, ...]]:
    """A pooling window (pads below the kernel size, as onnxruntime requires) and the output shape."""
    smallest = min(x.shape[2:])
    kernel = g.choices.choice([k for k in (3, 2, 1) if k <= smallest])
    stride = g.choices.choice((1, 2))
    pads = [g.choices.integer(0, kernel - 1) if own_pads else 0 for _ in range(4)]
    shape = x.shape[:2] + tuple(_window_output(size, kernel, stride, pads[axis], pads[axis + 2])
                                for axis, size in enumerate(x.shape[2:]))
    return {"kernel_shape": [kernel, kernel], "strides": [stride, stride], "pads": pads}, shape


def pad_average_pool(g: GraphBuilder, x: Tensor) -> Tensor:
    padded = _zero_pad(g, x)
    attrs, shape = _pool_attrs(g, padded, own_pads=g.choices.flag(0.3))  # a folded Pad must stay below the kernel
    return g.node("AveragePool", [padded.name], shape, count_include_pad=1 if g.choices.flag(0.8) else 0, **attrs)


def pool(g: GraphBuilder, x: Tensor) -> Tensor:
    attrs, shape = _pool_attrs(g, x)
    if g.choices.flag(0.5):
        return g.node("MaxPool", [x.name], shape, **attrs)
    return g.node("AveragePool", [x.name], shape, count_include_pad=g.choices.choice((0, 1)), **attrs)


def global_average_pool(g: GraphBuilder, x: Tensor) -> Tensor:
    return g.node("GlobalAveragePool", [x.name], x.shape[:2] + (1, 1))


def matmul_add(g: GraphBuilder, x: Tensor) -> Tensor:
    """MatMul by a constant weight, then Add of a bias ([N], [1, N] or one element; either order)."""
    features = x.shape[-1]
    out_features = g.choices.integer(1, MAX_CHANNELS)
    y = g.node("MatMul", [x.name, g.weight((features, out_features), features)], x.shape[:-1] + (out_features,))
    bias_values = g.normal((out_features,), 0.1)
    shape_kind = g.choices.choice(("N", "1xN", "one"))
    if shape_kind == "one":
        rank = _scalar_rank(g, y.rank)
        bias = g.constant(bias_values[:1].reshape((1,) * rank), "b")
        shape = (1,) * (rank - y.rank) + y.shape
    else:
        bias = g.constant(bias_values if shape_kind == "N" else bias_values.reshape(1, -1), "b")
        shape = (1,) * max(0, 2 - y.rank) + y.shape if shape_kind == "1xN" else y.shape
    inputs = [bias, y.name] if g.choices.flag(0.3) else [y.name, bias]
    return g.node("Add", inputs, shape)


def gemm(g: GraphBuilder, x: Tensor) -> Tensor:
    """Gemm with transB 0/1, random alpha/beta, and a C of shape [N], [1, N], one element, or none."""
    rows, features = x.shape
    out_features = g.choices.integer(1, MAX_CHANNELS)
    trans_b = g.choices.choice((0, 1))
    weight_shape = (out_features, features) if trans_b else (features, out_features)
    inputs = [x.name, g.weight(weight_shape, features)]
    kind = g.choices.choice(("N", "1xN", "one", "none"))
    if kind != "none":
        shape = {"N": (out_features,), "1xN": (1, out_features), "one": (1,)}[kind]
        inputs.append(g.constant(g.normal(shape, 0.1), "c"))
    attrs = {"transB": trans_b}
    if g.choices.flag(0.3):
        attrs.update(alpha=g.choices.choice((0.5, 2.0)), beta=g.choices.choice((0.5, 2.0)))
    return g.node("Gemm", inputs, (rows, out_features), **attrs)


def gemm_bn(g: GraphBuilder, x: Tensor) -> Tensor:
    """BatchNormalization after a Gemm (or after MatMul + Add, which fuse-gemm turns into one)."""
    y = gemm(g, x) if g.choices.flag(0.7) else matmul_add(g, x)
    if y.rank != 2:
        return y
    return batch_norm(g, y)


def activation(g: GraphBuilder, x: Tensor) -> Tensor:
    op = g.choices.choice(("Relu", "Sigmoid", "Tanh", "Clip", "Clip-max-only"))
    if op == "Clip":
        return g.node("Clip", [x.name, g.scalar(-1.0), g.scalar(g.choices.choice((0.5, 6.0)))], x.shape)
    if op == "Clip-max-only":
        return g.node("Clip", [x.name, "", g.scalar(1.0)], x.shape)
    return g.node(op, [x.name], x.shape)


def scalar_affine(g: GraphBuilder, x: Tensor) -> Tensor:
    """x (+ - * /) a one-element or per-channel constant."""
    op = g.choices.choice(("Mul", "Add", "Sub", "Div"))
    if x.rank >= 2 and g.choices.flag(0.4):
        operand, shape = _channel_constant(g, x, g.uniform((x.shape[1],), 0.5, 1.5)), x.shape
    else:
        rank = _scalar_rank(g, x.rank)
        operand = g.constant(g.uniform((1,) * rank, 0.5, 1.5), "k")
        shape = (1,) * (rank - x.rank) + x.shape
    inputs = [operand, x.name] if op in ("Mul", "Add") and g.choices.flag(0.3) else [x.name, operand]
    return g.node(op, inputs, shape)


def _relu6_shift(g: GraphBuilder, x: Tensor) -> Tensor:
    """Clip(x + 3, 0, 6); rarely shifted by 2.5 (must not be recognised)."""
    shift, shape = _scalar_operand(g, x, 2.5 if g.choices.flag(0.1) else 3.0)
    shifted = g.node("Add", [x.name, shift] if g.choices.flag(0.7) else [shift, x.name], shape)
    return g.node("Clip", [shifted.name, g.scalar(0.0), g.scalar(6.0)], shape)


def _div_by_six(g: GraphBuilder, x: Tensor) -> Tensor:
    if g.choices.flag(0.5):
        six, shape = _scalar_operand(g, x, 6.0)
        return g.node("Div", [x.name, six], shape)
    sixth, shape = _scalar_operand(g, x, 1.0 / 6.0)
    return g.node("Mul", [x.name, sixth], shape)


def hardsigmoid(g: GraphBuilder, x: Tensor) -> Tensor:
    """Clip(x + 3, 0, 6) / 6, or Clip(x * a + b, 0, 1)."""
    if g.choices.flag(0.7):
        return _div_by_six(g, _relu6_shift(g, x))
    scaled = g.node("Mul", [x.name, g.scalar(0.2)], x.shape)
    shifted = g.node("Add", [scaled.name, g.scalar(0.5)], x.shape)
    return g.node("Clip", [shifted.name, g.scalar(0.0), g.scalar(1.0)], x.shape)


def hardswish(g: GraphBuilder, x: Tensor) -> Tensor:
    """x * Clip(x + 3, 0, 6) / 6, in both association orders."""
    clipped = _relu6_shift(g, x)
    if g.choices.flag(0.5):
        return _div_by_six(g, g.node("Mul", [x.name, clipped.name], clipped.shape))
    scaled = _div_by_six(g, clipped)
    return g.node("Mul", [scaled.name, x.name], scaled.shape)


def gelu(g: GraphBuilder, x: Tensor) -> Tensor:
    """0.5 x (1 + erf(x / sqrt 2)) with the half outside or first (Gelu exists from opset 20)."""
    if g.choices.flag(0.5):
        scaled = g.node("Div", [x.name, g.scalar(math.sqrt(2.0))], x.shape)
    else:
        scaled = g.node("Mul", [x.name, g.scalar(1.0 / math.sqrt(2.0))], x.shape)
    erf = g.node("Erf", [scaled.name], x.shape)
    plus_one = g.node("Add", [erf.name, g.scalar(1.0)], x.shape)
    if g.choices.flag(0.5):
        product = g.node("Mul", [x.name, plus_one.name], x.shape)
        half, shape = _scalar_operand(g, product, 0.5)
        return g.node("Mul", [product.name, half], shape)
    half, shape = _scalar_operand(g, x, 0.5)
    scaled = g.node("Mul", [x.name, half], shape)
    return g.node("Mul", [scaled.name, plus_one.name], shape)


def layer_norm(g: GraphBuilder, x: Tensor) -> Tensor:
    """(x - mean) / sqrt(mean((x - mean)^2) + eps) * gamma + beta over the last axis."""
    reduced = x.shape[:-1] + (1,)
    if g.opset >= 18:
        axes = g.constant(np.array([-1], np.int64), "axes")
        mean = g.node("ReduceMean", [x.name, axes], reduced)
    else:
        mean = g.node("ReduceMean", [x.name], reduced, axes=[-1])
    centered = g.node("Sub", [x.name, mean.name], x.shape)
    square = g.node("Pow", [centered.name, g.scalar(2.0)], x.shape)
    if g.opset >= 18:
        variance = g.node("ReduceMean", [square.name, g.constant(np.array([-1], np.int64), "axes")], reduced)
    else:
        variance = g.node("ReduceMean", [square.name], reduced, axes=[-1])
    shifted = g.node("Add", [variance.name, g.scalar(g.choices.choice((1e-5, 1e-3)))], reduced)
    std = g.node("Sqrt", [shifted.name], reduced)
    normalized = g.node("Div", [centered.name, std.name], x.shape)
    features = x.shape[-1]
    param_shape = g.choices.choice(((features,), (1, features))) if not g.choices.flag(0.05) else (1, 1, features)
    out_shape = (1,) * max(0, len(param_shape) - x.rank) + x.shape
    scaled = g.node("Mul", [normalized.name, g.constant(g.uniform(param_shape, 0.5, 1.5), "gamma")], out_shape)
    return g.node("Add", [scaled.name, g.constant(g.normal(param_shape, 0.1), "beta")], out_shape)


def magnitude(g: GraphBuilder, x: Tensor) -> Tensor:
    """sqrt(re^2 + im^2) of the two halves of an even axis (an STFT's magnitude), sometimes another
    axis trimmed by one element in both slices, squares as Pow(., 2) or Mul(s, s), halves in either order."""
    axis = g.choices.choice([a for a, d in enumerate(x.shape) if d % 2 == 0])
    half = x.shape[axis] // 2
    halves = [(0, half), (half, 2 * half)]
    shape = list(x.shape)
    shape[axis] = half
    axes, trim = [axis], []
    others = [a for a, d in enumerate(x.shape) if a != axis and d >= 2]
    if others and g.choices.flag(0.3):  # as silero's: both drop the first frame
        other = g.choices.choice(others)
        axes.append(other)
        trim = [(1, 2**63 - 1)]
        shape[other] -= 1
    if g.choices.flag(0.3):
        halves = halves[::-1]
    starts = [[lo] + [t[0] for t in trim] for lo, _ in halves]
    ends = [[hi] + [t[1] for t in trim] for _, hi in halves]
    squares, by_pow = [], g.choices.flag(0.5)  # one form for both halves: a mixed pair is no magnitude
    for start, end in zip(starts, ends):
        part = g.node("Slice", [x.name, g.constant(np.array(start, np.int64), "starts"),
                                g.constant(np.array(end, np.int64), "ends"), g.constant(np.array(axes, np.int64), "axes")],
                      shape)
        squares.append(g.node("Pow", [part.name, g.scalar(2.0)], shape) if by_pow
                       else g.node("Mul", [part.name, part.name], shape))
    total = g.node("Add", [squares[0].name, squares[1].name], shape)
    return g.node("Sqrt", [total.name], shape)


def transpose_chain(g: GraphBuilder, x: Tensor) -> Tensor:
    """Two or three Transposes, the second often the inverse of the first."""
    y = x
    first = None
    for _ in range(g.choices.integer(2, 3)):
        if first is not None and g.choices.flag(0.5):
            perm = [first.index(axis) for axis in range(x.rank)]  # the inverse of the first
        else:
            perm = list(range(x.rank))
            for i in range(x.rank - 1, 0, -1):
                j = g.choices.integer(0, i)
                perm[i], perm[j] = perm[j], perm[i]
        first = first or perm
        y = g.node("Transpose", [y.name], tuple(y.shape[p] for p in perm), perm=perm)
    return y


def reshape_chain(g: GraphBuilder, x: Tensor) -> Tensor:
    """One to three of Reshape (with -1 or 0 entries), Flatten, Squeeze and Unsqueeze."""
    y = x
    total = int(np.prod(x.shape))
    for _ in range(g.choices.integer(1, 3)):
        kind = g.choices.choice(("Reshape", "Flatten", "Unsqueeze", "Squeeze"))
        if kind == "Squeeze" and 1 in y.shape and y.rank > 1:
            axes = [axis for axis, size in enumerate(y.shape) if size == 1][:y.rank - 1]
            axes = axes[:g.choices.integer(1, len(axes))]
            y = g.node("Squeeze", [y.name, g.constant(np.array(axes, np.int64), "axes")],
                       tuple(size for axis, size in enumerate(y.shape) if axis not in axes))
        elif kind == "Unsqueeze" and y.rank < 5:
            axis = g.choices.integer(0, y.rank)
            y = g.node("Unsqueeze", [y.name, g.constant(np.array([axis], np.int64), "axes")],
                       y.shape[:axis] + (1,) + y.shape[axis:])
        elif kind == "Flatten":
            axis = g.choices.integer(0, y.rank)
            y = g.node("Flatten", [y.name], (int(np.prod(y.shape[:axis])), int(np.prod(y.shape[axis:]))), axis=axis)
        else:
            shape = _random_factorization(g, total, g.choices.integer(1, 4))
            written = list(shape)
            if g.choices.flag(0.3):
                written[g.choices.integer(0, len(written) - 1)] = -1
            elif g.choices.flag(0.3) and len(shape) <= y.rank:
                same = [axis for axis in range(len(shape)) if shape[axis] == y.shape[axis]]
                if same:
                    written[g.choices.choice(same)] = 0  # 0 copies the input's dim
            y = g.node("Reshape", [y.name, g.constant(np.array(written, np.int64), "shape")], shape)
    return y


def to_image(g: GraphBuilder, x: Tensor) -> Tensor:
    """Reshape a small tensor to [1, C, H, W] so convolutions and pools can follow."""
    total = int(np.prod(x.shape))
    fitting = [(c, h, total // c // h) for c in _divisors(total) if c <= MAX_CHANNELS
               for h in _divisors(total // c) if h <= 16 and total // c // h <= 16]
    channels, height, width = g.choices.choice(fitting or [(1, 1, total)])
    shape = (1, channels, height, width)
    return g.node("Reshape", [x.name, g.constant(np.array(shape, np.int64), "shape")], shape)


def to_features(g: GraphBuilder, x: Tensor) -> Tensor:
    """Flatten to [1, F] so Gemm can follow."""
    return g.node("Flatten", [x.name], (x.shape[0], int(np.prod(x.shape[1:]))), axis=1)


def cast_chain(g: GraphBuilder, x: Tensor) -> Tensor:
    """float -> double -> float (exact, removable), or float -> half -> float, or a Cast to float itself.

    The half round trip rounds: it reads only a graph input, so that values arriving at it are
    the same before and after any pass (a pass may move an fp32 value by one ulp, which half
    rounding would turn into a difference of 2^-11).
    """
    options = ("double", "float") + (("half",) if x.is_graph_input else ())
    kind = g.choices.choice(options)
    if kind == "float":
        return g.node("Cast", [x.name], x.shape, to=TensorProto.FLOAT)
    middle_type = TensorProto.DOUBLE if kind == "double" else TensorProto.FLOAT16
    middle = g.node("Cast", [x.name], x.shape, middle_type, to=middle_type)
    return g.node("Cast", [middle.name], x.shape, to=TensorProto.FLOAT)


def identity(g: GraphBuilder, x: Tensor) -> Tensor:
    op = g.choices.choice(("Identity", "Dropout"))
    return g.node(op, [x.name], x.shape)


def duplicate(g: GraphBuilder, x: Tensor) -> Tensor:
    """The same computation twice (same op, same inputs; or equal constants under two names), joined by Add."""
    kinds = ["unary", "equal-constants", "transpose"] + (["conv"] if _is_image(x, MAX_CHANNELS) else [])
    kind = g.choices.choice(kinds)
    if kind == "equal-constants":
        values = g.uniform((1,) * x.rank, 0.5, 1.5)
        left = g.node("Mul", [x.name, g.constant(values, "k")], x.shape)
        right = g.node("Mul", [x.name, g.constant(values.copy(), "k")], x.shape)
    elif kind == "conv":
        weight = g.weight((x.shape[1], x.shape[1], 1, 1), x.shape[1])
        left = g.node("Conv", [x.name, weight], x.shape, kernel_shape=[1, 1])
        right = g.node("Conv", [x.name, weight], x.shape, kernel_shape=[1, 1])
    elif kind == "transpose":
        perm = list(range(x.rank))[::-1]
        shape = tuple(x.shape[p] for p in perm)
        left = g.node("Transpose", [x.name], shape, perm=perm)
        right = g.node("Transpose", [x.name], shape, perm=perm)
    else:
        op = g.choices.choice(("Relu", "Sigmoid", "Tanh"))
        left, right = g.node(op, [x.name], x.shape), g.node(op, [x.name], x.shape)
    return g.node("Add", [left.name, right.name], left.shape)


def noop(g: GraphBuilder, x: Tensor) -> Tensor:
    """An op that returns its input: x * 1, x + 0, x - 0, x / 1, Expand or Tile to its own shape, a full
    Slice, a Pad by zeros, a one-input Concat; rarely a Pad that shifts (pads one side, crops the other:
    same shape, other values; must not be removed)."""
    kinds = ["arithmetic", "expand", "tile", "slice", "pad", "concat"] + (["shifting-pad"] if x.shape[-1] > 1 else [])
    kind = g.choices.choice(kinds)
    if kind == "arithmetic":
        op = g.choices.choice(("Mul", "Add", "Sub", "Div"))
        neutral = g.scalar(1.0 if op in ("Mul", "Div") else 0.0, g.choices.integer(0, x.rank))
        return g.node(op, [x.name, neutral], x.shape)
    if kind == "expand":
        shape = x.shape if g.choices.flag(0.5) else (1,)
        return g.node("Expand", [x.name, g.constant(np.array(shape, np.int64), "shape")], x.shape)
    if kind == "tile":
        return g.node("Tile", [x.name, g.constant(np.ones(x.rank, np.int64), "repeats")], x.shape)
    if kind == "slice":
        axes = list(range(x.rank))
        return g.node("Slice", [x.name, g.constant(np.zeros(x.rank, np.int64), "starts"),
                                g.constant(np.full(x.rank, 2**31, np.int64), "ends"),
                                g.constant(np.array(axes, np.int64), "axes")], x.shape)
    if kind == "concat":
        return g.node("Concat", [x.name], x.shape, axis=0)
    pads = np.zeros(2 * x.rank, np.int64)
    if kind == "shifting-pad":
        pads[x.rank - 1], pads[2 * x.rank - 1] = 1, -1
    return g.node("Pad", [x.name, g.constant(pads, "pads")], x.shape, mode="constant")


def constant_subgraph(g: GraphBuilder, x: Tensor) -> Tensor:
    """Work fold-constants can do: constant arithmetic, a transposed weight, or shape arithmetic on Shape(x)."""
    kind = g.choices.choice(("arithmetic", "transposed-weight", "shape"))
    if kind == "arithmetic":  # x * (a + b)
        total = g.node("Add", [g.scalar(0.5), g.scalar(g.choices.choice((0.25, 1.0)))], ())
        return g.node("Mul", [x.name, total.name], x.shape)
    if kind == "transposed-weight":  # MatMul(x, Transpose(W))
        width = g.choices.integer(1, MAX_CHANNELS)
        weight = g.node("Transpose", [g.weight((width, x.shape[-1]), x.shape[-1])], (x.shape[-1], width), perm=[1, 0])
        return g.node("MatMul", [x.name, weight.name], x.shape[:-1] + (width,))
    # Reshape(x, Concat(Slice(Shape(x), 0, 1), [-1])): [d0, d1 * d2 * ...]
    shape = g.node("Shape", [x.name], (x.rank,), TensorProto.INT64)
    head = g.node("Slice", [shape.name, g.constant(np.array([0], np.int64), "starts"),
                            g.constant(np.array([1], np.int64), "ends")], (1,), TensorProto.INT64)
    target = g.node("Concat", [head.name, g.constant(np.array([-1], np.int64), "rest")], (2,), TensorProto.INT64,
                    axis=0)
    return g.node("Reshape", [x.name, target.name], (x.shape[0], int(np.prod(x.shape[1:]))))


#: motifs that keep the tensor's shape and dtype, usable on either side of a two-branch join
SAME_SHAPE_MOTIFS: tuple[Callable[[GraphBuilder, Tensor], Tensor], ...] = (
    activation, hardsigmoid, hardswish, identity,
)


def _same_shape_branch(g: GraphBuilder, x: Tensor) -> Tensor:
    y = x
    g.keep_rank = True
    for _ in range(g.choices.integer(0, 2)):
        choices = list(SAME_SHAPE_MOTIFS) + ([conv] if _is_image(y, MAX_CHANNELS) else [])
        motif = g.choices.choice(choices)
        y = conv(g, y, same_shape=True) if motif is conv else motif(g, y)
    g.keep_rank = False
    return y


def branch_join(g: GraphBuilder, x: Tensor) -> Tensor:
    """Two paths from x joined by Add or Mul; the second may be reduced (broadcast back), as in squeeze-excite."""
    left = _same_shape_branch(g, x)
    if x.rank == 4 and g.choices.flag(0.3):
        right = g.node("Sigmoid", [global_average_pool(g, x).name], x.shape[:2] + (1, 1))
    elif g.choices.flag(0.2):
        reduced = x.shape[:-1] + (1,)
        right = g.node("ReduceMean", [x.name], reduced, axes=[-1]) if g.opset < 18 else g.node(
            "ReduceMean", [x.name, g.constant(np.array([-1], np.int64), "axes")], reduced)
    else:
        right = _same_shape_branch(g, x)
    if left.name == right.name:
        right = activation(g, right)
    return g.node(g.choices.choice(("Add", "Mul")), [left.name, right.name], x.shape)


def concat(g: GraphBuilder, x: Tensor) -> Tensor:
    """x (or a same-shape path from it) joined by Concat with a Conv of x (images: on the channels) or a
    MatMul of x (otherwise: on the last axis)."""
    left = _same_shape_branch(g, x)
    width = g.choices.integer(1, MAX_CHANNELS)
    if _is_image(x, MAX_CHANNELS):
        axis = 1
        if g.choices.flag(0.5):
            right = conv(g, x, same_shape=True)
        else:
            weight = g.weight((width, x.shape[1], 1, 1), x.shape[1])
            right = g.node("Conv", [x.name, weight], (x.shape[0], width) + x.shape[2:], kernel_shape=[1, 1])
    else:
        axis = x.rank - 1
        right = g.node("MatMul", [x.name, g.weight((x.shape[-1], width), x.shape[-1])], x.shape[:-1] + (width,))
    shape = list(x.shape)
    shape[axis] = left.shape[axis] + right.shape[axis]
    return g.node("Concat", [left.name, right.name], shape, axis=axis)



def parallel(g: GraphBuilder, x: Tensor) -> Tensor:
    """Two or three convolutions (images) or MatMuls (otherwise) of x with one kernel shape and
    attributes but their own widths and biases, joined by Concat (or Add when the widths agree):
    an STFT's real and imaginary bases, attention's query/key/value projections."""
    count = g.choices.integer(2, 3)
    widths = [g.choices.integer(1, MAX_CHANNELS) for _ in range(count)]
    if g.choices.flag(0.3):
        widths = [widths[0]] * count
    if _is_image(x, MAX_CHANNELS):
        _, channels, height, width = x.shape
        kernel, stride = g.choices.choice((1, 3)), g.choices.choice((1, 2))
        pads = [g.choices.integer(0, kernel // 2) for _ in range(4)]
        for axis, size in enumerate((height, width)):  # the window must fit once
            if size + pads[axis] + pads[axis + 2] < kernel:
                pads[axis + 2] = kernel - size - pads[axis]
        shape = (_window_output(height, kernel, stride, pads[0], pads[2]),
                 _window_output(width, kernel, stride, pads[1], pads[3]))
        branches = []
        for out_channels in widths:
            inputs = [x.name, g.weight((out_channels, channels, kernel, kernel), channels * kernel * kernel)]
            if g.choices.flag(0.6):
                inputs.append(g.constant(g.normal((out_channels,), 0.1), "b"))
            branches.append(g.node("Conv", inputs, (x.shape[0], out_channels) + shape, kernel_shape=[kernel, kernel],
                                   strides=[stride, stride], pads=pads))
        axis = 1
    else:
        branches = [g.node("MatMul", [x.name, g.weight((x.shape[-1], w), x.shape[-1])], x.shape[:-1] + (w,))
                    for w in widths]
        axis = x.rank - 1
    if len(set(widths)) == 1 and g.choices.flag(0.5):
        return g.node("Sum" if count > 2 else "Add", [b.name for b in branches], branches[0].shape)
    shape = list(branches[0].shape)
    shape[axis] = sum(widths)
    return g.node("Concat", [b.name for b in branches], tuple(shape), axis=axis)


@dataclass(frozen=True)
class Motif:
    name: str
    build: Callable[[GraphBuilder, Tensor], Tensor]
    applies: Callable[[GraphBuilder, Tensor], bool]
    #: the input kind a graph favouring this motif starts from ("any": whichever)
    home: str = "any"


def _float(x: Tensor) -> bool:
    return x.dtype == TensorProto.FLOAT


def _features(x: Tensor) -> bool:
    return _float(x) and x.rank == 2 and x.shape[1] <= 256


MOTIFS: tuple[Motif, ...] = (
    Motif("conv", conv, lambda g, x: _is_image(x), home="image"),
    Motif("conv_bn", conv_bn, lambda g, x: _is_image(x), home="image"),
    Motif("conv_affine", conv_affine, lambda g, x: _is_image(x), home="image"),
    Motif("pad_conv", pad_conv, lambda g, x: _is_image(x), home="image"),
    Motif("pad_average_pool", pad_average_pool, lambda g, x: _is_image(x), home="image"),
    Motif("pool", pool, lambda g, x: _is_image(x), home="image"),
    Motif("global_average_pool", global_average_pool, lambda g, x: _is_image(x), home="image"),
    Motif("matmul_add", matmul_add, lambda g, x: _float(x) and x.rank >= 1 and x.shape[-1] <= 256),
    Motif("gemm", gemm, lambda g, x: _features(x), home="features"),
    Motif("gemm_bn", gemm_bn, lambda g, x: _features(x), home="features"),
    Motif("activation", activation, lambda g, x: _float(x)),
    Motif("scalar_affine", scalar_affine, lambda g, x: _float(x) and x.rank <= 4),
    Motif("hardsigmoid", hardsigmoid, lambda g, x: _float(x)),
    Motif("hardswish", hardswish, lambda g, x: _float(x)),
    Motif("gelu", gelu, lambda g, x: _float(x) and g.opset >= 20),
    Motif("layer_norm", layer_norm, lambda g, x: _float(x) and x.rank >= 1),
    Motif("magnitude", magnitude, lambda g, x: _float(x) and any(d % 2 == 0 for d in x.shape)),
    Motif("transpose_chain", transpose_chain, lambda g, x: _float(x) and x.rank >= 2),
    Motif("reshape_chain", reshape_chain, lambda g, x: _float(x)),
    Motif("to_image", to_image, lambda g, x: _float(x) and x.rank != 4 and int(np.prod(x.shape)) <= 1024),
    Motif("to_features", to_features, lambda g, x: _float(x) and x.rank > 2 and int(np.prod(x.shape)) <= 1024),
    Motif("noop", noop, lambda g, x: _float(x) and x.rank >= 1),
    Motif("constant_subgraph", constant_subgraph, lambda g, x: _float(x) and x.rank >= 1 and x.shape[-1] <= 256),
    Motif("cast_chain", cast_chain, lambda g, x: _float(x)),
    Motif("identity", identity, lambda g, x: True),
    Motif("duplicate", duplicate, lambda g, x: _float(x) and x.rank >= 1),
    Motif("branch_join", branch_join, lambda g, x: _float(x) and x.rank >= 1),
    Motif("concat", concat, lambda g, x: _float(x) and x.rank >= 1 and (x.rank != 4 or _is_image(x, MAX_CHANNELS))),
    Motif("parallel", parallel, lambda g, x: _float(x) and x.rank >= 1 and x.shape[-1] <= 256
          and (x.rank != 4 or _is_image(x, MAX_CHANNELS))),
)
MOTIF_NAMES = tuple(motif.name for motif in MOTIFS)

#: whole-graph features and how often they appear (0.6 when favoured): initializers also listed as
#: graph inputs (IR 3 style), an inner tensor that is also a graph output, a branch nothing reads
FEATURES: dict[str, float] = {"initializer_inputs": 0.1, "extra_output": 0.25, "dead_branch": 0.15}
FAVOURED_FEATURE_PROBABILITY = 0.6

#: the first tensor: an image [1, C, H, W] (twice as often: most motifs are convolutional),
#: features [1, F] or a sequence [1, S, F]
INPUT_KINDS = ("image", "image", "features", "sequence")


def _input_shape(choices: Choices, kind: str) -> tuple[int, ...]:
    if kind == "image":
        return (1, choices.integer(1, 8), choices.integer(1, MAX_SPATIAL), choices.integer(1, MAX_SPATIAL))
    if kind == "features":
        return (1, choices.integer(1, 32))
    return (1, choices.integer(1, 6), choices.integer(1, 16))


def build_model(choices: Choices, values: np.random.Generator, favour: Sequence[str] = (),
                max_motifs: int = MAX_MOTIFS) -> onnx.ModelProto:
    """A random model: an input, then 1..max_motifs motifs, each picked among those that apply.

    Motifs named in `favour` are picked `FAVOURED_MOTIF_WEIGHT` times as often, and `FEATURES`
    named there appear with probability 0.6 (a property test of one pass favours what that pass
    rewrites, so that it fires on most examples).
    """
    unknown = set(favour) - set(MOTIF_NAMES) - set(FEATURES)
    if unknown:
        candidates = ", ".join(MOTIF_NAMES + tuple(FEATURES))
        raise ValueError(f"unknown motifs {sorted(unknown)}; candidates are: {candidates}")
    probability = {name: FAVOURED_FEATURE_PROBABILITY if name in favour else p for name, p in FEATURES.items()}
    opset = choices.choice(OPSETS) if "gelu" not in favour else 20
    g = GraphBuilder(choices, values, opset)
    homes = [motif.home for motif in MOTIFS if motif.name in favour and motif.home != "any"]
    kind = choices.choice(homes or INPUT_KINDS)
    source = Tensor("x", _input_shape(choices, kind), is_graph_input=True)
    current = source
    for step in range(choices.integer(1, max_motifs)):
        candidates = [motif for motif in MOTIFS if motif.applies(g, current)]
        weighted = [motif for motif in candidates
                    for _ in range(FAVOURED_MOTIF_WEIGHT if motif.name in favour else 1)]
        motif = choices.choice(weighted)
        g.motif = f"{motif.name}_{step}"
        current = motif.build(g, current)
    outputs = [current]
    extra = [t for t in g.produced if t.dtype == TensorProto.FLOAT and t.name != current.name]
    if extra and choices.flag(probability["extra_output"]):  # patterns must not swallow a graph output
        outputs.append(choices.choice(extra))
    if extra and choices.flag(probability["dead_branch"]):
        g.motif = "dead_branch"
        activation(g, choices.choice(extra))
    inputs = [helper.make_tensor_value_info(source.name, TensorProto.FLOAT, source.shape)]
    if choices.flag(probability["initializer_inputs"]):
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in g.initializers]
    graph = helper.make_graph(g.nodes, "graphgen", inputs,
                              [helper.make_tensor_value_info(t.name, t.dtype, t.shape) for t in outputs],
                              initializer=g.initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=IR_VERSION_BY_OPSET[opset], producer_name="mcc-graphgen")


def graphs(favour: Sequence[str] = (), max_motifs: int = MAX_MOTIFS):
    """A hypothesis strategy of random models (see `build_model`)."""
    from hypothesis import strategies as st

    @st.composite
    def strategy(draw) -> onnx.ModelProto:
        seed = draw(st.integers(0, 2**32 - 1))
        return build_model(HypothesisChoices(draw), np.random.default_rng(seed), favour, max_motifs)

    return strategy()


def random_model(seed: int, favour: Sequence[str] = (), max_motifs: int = MAX_MOTIFS) -> onnx.ModelProto:
    """The random model of `seed` (the same seed gives the same model)."""
    rng = np.random.default_rng(seed)
    return build_model(RngChoices(rng), rng, favour, max_motifs)


def motif_of(node_name: str) -> str:
    """The motif a generated node belongs to (`conv_bn` for `conv_bn_2/Conv_7` or `conv_bn_2/Conv_7.Gemm`)."""
    label = node_name.split("/", 1)[0]
    head, _, step = label.rpartition("_")
    return head if step.isdigit() else label


def touched_motifs(before: onnx.ModelProto, after: onnx.ModelProto) -> set[str]:
    """Motifs with a node that is gone from `after` or has another op type there (what a pass rewrote)."""
    kept = {(node.name, node.op_type) for node in after.graph.node}
    return {motif_of(node.name) for node in before.graph.node if (node.name, node.op_type) not in kept}


# --------------------------------------------------------------------------------------------------
# The properties every pass keeps


def run_onnxruntime(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of `model` in onnxruntime with graph optimizations off (the reference semantics)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def random_feed(model: onnx.ModelProto, seed: int) -> dict[str, np.ndarray]:
    """Uniform(-1, 1) values for every graph input (all float32 in generated models)."""
    from mcc.toolchain import ir

    rng = np.random.default_rng(seed)
    feed = {}
    for value in ir.graph_inputs(model):
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        feed[value.name] = rng.uniform(-1, 1, size=dims).astype(ir.tensor_dtype(value.type.tensor_type.elem_type))
    return feed


def _one_line(text: str, limit: int = 360) -> str:
    """`text` on one line, its middle elided when long (onnxruntime puts the cause at the end)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else f"{flat[:limit // 2]} ... {flat[-limit // 2:]}"


def numeric_mismatch(reference: onnx.ModelProto, candidate: onnx.ModelProto,
                     seeds: Sequence[int] = (0, 1), tolerance: float = FP32_RELATIVE_TOLERANCE,
                     min_sqnr: float | None = None) -> str | None:
    """Why `candidate` does not compute what `reference` computes (onnxruntime, random inputs), or None.

    An output agrees when its largest error is within `tolerance` x max(1, max |reference|), or,
    with `min_sqnr` (int8), when its SQNR reaches that many dB."""
    reference_names = [value.name for value in reference.graph.output]
    candidate_names = [value.name for value in candidate.graph.output]
    if reference_names != candidate_names:
        return f"the graph outputs changed from {reference_names} to {candidate_names}"
    for seed in seeds:
        feed = random_feed(reference, seed)
        try:
            got = run_onnxruntime(candidate, feed)
        except Exception as exc:  # onnxruntime raises its own exception types
            return f"onnxruntime cannot run the result: {_one_line(str(exc))}"
        for name, want, have in zip(reference_names, run_onnxruntime(reference, feed), got):
            if want.shape != have.shape or want.dtype != have.dtype:
                return f"output '{name}' is {have.dtype}{list(have.shape)}, was {want.dtype}{list(want.shape)}"
            if not np.array_equal(np.isfinite(want), np.isfinite(have)):
                return f"output '{name}' has non-finite values in other places"
            finite = np.isfinite(want)
            if not finite.any():
                continue
            error = float(np.max(np.abs(want[finite].astype(np.float64) - have[finite])))
            scale = max(1.0, float(np.max(np.abs(want[finite]))))
            if min_sqnr is not None and error > tolerance * scale:
                from mcc.passes.quantize.mixed import sqnr_db

                sqnr = sqnr_db(want[finite], have[finite])
                if sqnr >= min_sqnr:
                    continue
                return (f"output '{name}' differs by {error:.3g} at {sqnr:.1f} dB SQNR (needs {min_sqnr:g} dB, "
                        f"input seed {seed})")
            if error > tolerance * scale:
                return (f"output '{name}' differs by {error:.3g} (tolerance {tolerance:g} x {scale:.3g}, "
                        f"input seed {seed})")
    return None


#: crash: the pass raised; contract: it changed its input model in place, or reported modified=False
#: and returned another model; then the three properties
FAILURE_KINDS = ("crash", "contract", "validity", "idempotence", "numeric")


@dataclass(frozen=True)
class PassCheck:
    """What one pass (or pipeline) did to one model, and the first property it broke (if any)."""

    modified: bool
    motifs: frozenset[str]
    failure: str | None = None  # one of FAILURE_KINDS
    reason: str = ""
    result: onnx.ModelProto | None = None


#: a pass or pipeline as a function: model -> (result, modified)
Transform = Callable[[onnx.ModelProto], tuple[onnx.ModelProto, bool]]


def pass_transform(pass_obj) -> Transform:
    from mcc.toolchain.passmanager import PassContext

    def transform(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
        result = pass_obj.run(model, PassContext())
        return result.model, result.modified

    return transform


def pipeline_transform(text: str) -> Transform:
    from mcc.toolchain.passmanager import PassManager
    from mcc.toolchain.pipeline import parse_pipeline

    def transform(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
        result, records = PassManager(parse_pipeline(text)).run(model)
        return result, any(record.modified for record in records)

    return transform


def _precision_passes(name: str) -> list:
    from mcc.toolchain.registry import builtin_passes

    used = {item.split("{")[0].strip() for item in name.replace("(", ",").replace(")", ",").split(",")}
    return [cls for cls in builtin_passes() if cls.changes_precision and cls.name in used]


def relative_tolerance(name: str) -> float:
    """The numeric tolerance for pipeline text `name`: half's when a pass in it changes precision."""
    return HALF_RELATIVE_TOLERANCE if _precision_passes(name) else FP32_RELATIVE_TOLERANCE


def min_sqnr_db(name: str) -> float | None:
    """The SQNR outputs must keep when a pass in pipeline text `name` quantizes to int8, else None."""
    return INT8_MIN_SQNR_DB if any(cls.precision == "int8" for cls in _precision_passes(name)) else None


def check_pass(name: str, transform: Transform, model: onnx.ModelProto) -> PassCheck:
    """Run `transform` on `model` and check validity, idempotence and numeric equivalence, in that order."""
    from mcc.toolchain.errors import PassError
    from mcc.toolchain.passmanager import verify_model

    def first_line(exc: BaseException) -> str:
        text = str(exc).strip()
        return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"

    pristine = onnx.ModelProto()
    pristine.CopyFrom(model)
    try:
        result, modified = transform(model)
    except Exception as exc:
        return PassCheck(False, frozenset(), "crash", f"first run: {first_line(exc)}")
    pristine_bytes = pristine.SerializeToString(deterministic=True)
    if model.SerializeToString(deterministic=True) != pristine_bytes:
        return PassCheck(modified, frozenset(), "contract", "the pass changed its input model in place", result)
    if not modified:
        if result is not model and result.SerializeToString(deterministic=True) != pristine_bytes:
            return PassCheck(False, frozenset(), "contract", "it reported modified=False but changed the model", result)
        return PassCheck(False, frozenset(), result=result)
    motifs = frozenset(touched_motifs(model, result))
    try:
        verify_model(result, name)
    except PassError as exc:
        return PassCheck(True, motifs, "validity", str(exc), result)
    try:
        again, modified_again = transform(result)
    except Exception as exc:
        return PassCheck(True, motifs, "crash", f"second run: {first_line(exc)}", result)
    if modified_again:
        gone = sorted({f"{n.op_type} '{n.name}'" for n in result.graph.node} - {f"{n.op_type} '{n.name}'"
                                                                                   for n in again.graph.node})
        return PassCheck(True, motifs, "idempotence", f"a second run changed the model again (removed: {gone[:6]})",
                         result)
    mismatch = numeric_mismatch(model, result, tolerance=relative_tolerance(name), min_sqnr=min_sqnr_db(name))
    if mismatch is not None:
        return PassCheck(True, motifs, "numeric", mismatch, result)
    return PassCheck(True, motifs, result=result)


#: upgrade-opset's default (17) is the generators' own opset, where it has nothing to do
UPGRADE_TARGET_OPSET = 21


def checked_transforms() -> dict[str, Transform]:
    """What the property checks run, by pipeline text: every built-in pass and the default pipeline."""
    from mcc.toolchain.registry import builtin_passes

    transforms: dict[str, Transform] = {}
    for pass_cls in builtin_passes():
        if pass_cls.name == "fixed-point":  # a group of other passes; empty on its own, run inside `default`
            continue
        pass_obj = pass_cls(version=UPGRADE_TARGET_OPSET) if pass_cls.name == "upgrade-opset" else pass_cls()
        transforms[pass_obj.to_text()] = pass_transform(pass_obj)
    transforms["default"] = pipeline_transform("default")
    return transforms
