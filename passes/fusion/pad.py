"""Fold an explicit zero Pad into the Conv or AveragePool that reads it.

`Conv(Pad(x, pads, 0))` equals `Conv(x)` with the spatial pads added to the Conv's own `pads`
(exporters emit the explicit Pad for asymmetric "same" padding and TF-style graphs). The same
holds for `AveragePool` when it counts padded zeros (`count_include_pad=1`), and for `MaxPool` when
the padded tensor cannot be negative (it comes from Relu, Sigmoid, ...): a window always holds
at least one real value, so padded zeros never win over it. The Pad must be in
constant mode with value 0, pad no batch or channel axis, and add (not crop) on every side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mcc.toolchain.rewrite import Builder, Match, Op, Opt, RewritePass, Rule, Var

PAD = Op("Pad", Var("x"), name="pad", extra_inputs=True)


def _pads(pad_node, rank: int) -> np.ndarray | str:
    """The Pad's [begin..., end...] pads over all `rank` axes, or why they cannot be known."""
    inputs = list(pad_node.inputs)
    if len(inputs) > 1:  # opset >= 11: pads (and constant_value, axes) are inputs
        if not hasattr(inputs[1], "values"):
            return "the pads are not a constant"
        pads = np.asarray(inputs[1].values, np.int64).reshape(-1)
        if len(inputs) > 2 and (inputs[2].name or hasattr(inputs[2], "values")):
            if not hasattr(inputs[2], "values"):
                return "the pad value is not a constant"
            if np.any(np.asarray(inputs[2].values) != 0):
                return "the pad value is not 0"
        if len(inputs) > 3 and inputs[3].name:
            if not hasattr(inputs[3], "values"):
                return "the pad axes are not a constant"
            axes = [int(a) % rank for a in np.asarray(inputs[3].values).reshape(-1)]
            full = np.zeros(2 * rank, np.int64)
            for i, axis in enumerate(axes):
                full[axis], full[rank + axis] = pads[i], pads[len(axes) + i]
            pads = full
    else:
        pads = np.asarray(pad_node.attrs.get("pads", []), np.int64)
        if float(pad_node.attrs.get("value", 0.0)) != 0.0:
            return "the pad value is not 0"
    if pads.size != 2 * rank:
        return f"the pads have {pads.size} values, not {2 * rank}"
    return pads


class _PadInto(Rule):
    consumer: ClassVar[str]

    def check(self, m: Match) -> str | None:
        pad, consumer = m.node("pad"), m.node("consumer")
        mode = pad.attrs.get("mode", "constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode != "constant":
            return f"the Pad mode is {mode}, not constant"
        rank = m.rank("x")
        if rank is None:
            return "the padded tensor's rank is unknown"
        pads = _pads(pad, rank)
        if isinstance(pads, str):
            return pads
        if np.any(pads < 0):
            return "the Pad crops (negative pads)"
        if np.any(pads[[0, 1, rank, rank + 1]] != 0):
            return "the Pad pads the batch or channel axis"
        auto_pad = consumer.attrs.get("auto_pad", "NOTSET")
        if (auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad) != "NOTSET":
            return f"the {consumer.op} uses auto_pad"
        return self.extra_check(consumer)

    def extra_check(self, consumer) -> str | None:
        return None

    def pool_check(self, m: Match) -> str | None:
        """Pools: explicit pads must stay smaller than the kernel (onnxruntime refuses the model
        otherwise), and ceil_mode must be off (with it, windows starting in an explicit pad are
        dropped, so the output shape would change)."""
        consumer, rank = m.node("consumer"), m.rank("x")
        if consumer.attrs.get("ceil_mode", 0):
            return f"the {consumer.op} uses ceil_mode (the output shape would change)"
        pads, spatial = _pads(m.node("pad"), rank), rank - 2
        own = list(consumer.attrs.get("pads", [0] * (2 * spatial)))
        kernel = list(consumer.attrs.get("kernel_shape", []))
        for i, size in enumerate(kernel[:spatial]):
            if max(int(own[i]) + int(pads[2 + i]), int(own[spatial + i]) + int(pads[rank + 2 + i])) >= size:
                return f"the merged pads would not be smaller than the kernel {kernel}"
        return None

    def rewrite(self, m: Match, b: Builder) -> None:
        consumer = m.node("consumer")
        rank = m.rank("x")
        pads = _pads(m.node("pad"), rank)
        spatial = rank - 2
        own = list(consumer.attrs.get("pads", [0] * (2 * spatial)))
        merged = [int(own[i]) + int(pads[2 + i]) for i in range(spatial)] + \
                 [int(own[spatial + i]) + int(pads[rank + 2 + i]) for i in range(spatial)]
        attrs = {**consumer.attrs, "pads": merged}
        attrs.pop("auto_pad", None)
        inputs = [m["x"]] + list(consumer.inputs)[1:]
        b.node(consumer.op, inputs, attrs, outputs=list(consumer.outputs))


@dataclass(frozen=True)
class PadIntoConv(_PadInto):
    """Conv(Pad(x)) with a zero constant Pad on spatial axes -> Conv(x) with larger pads."""

    name: ClassVar[str] = "fold-pad-into-conv"
    pattern: ClassVar[Op] = Op("Conv", PAD, Var("w"), Opt(Var("b")), name="consumer")


@dataclass(frozen=True)
class PadIntoAveragePool(_PadInto):
    """AveragePool(Pad(x)) with a zero Pad and count_include_pad=1 -> AveragePool(x) with larger pads."""

    name: ClassVar[str] = "fold-pad-into-averagepool"
    pattern: ClassVar[Op] = Op("AveragePool", PAD, name="consumer")

    def extra_check(self, consumer) -> str | None:
        if not consumer.attrs.get("count_include_pad", 0):
            return "the AveragePool does not count padded values (count_include_pad=0)"
        return None

    def check(self, m: Match) -> str | None:
        return super().check(m) or self.pool_check(m)


NON_NEGATIVE = ("Relu", "Sigmoid", "Softplus", "Abs", "Exp")


@dataclass(frozen=True)
class PadIntoMaxPool(_PadInto):
    """MaxPool(Pad(Relu(x))) with a zero Pad -> MaxPool with larger pads (zeros never win over values >= 0)."""

    name: ClassVar[str] = "fold-pad-into-maxpool"
    pattern: ClassVar[Op] = Op("MaxPool", PAD, name="consumer")

    def check(self, m: Match) -> str | None:
        # the producer is looked at, not matched: it stays (a matched node would be replaced)
        producers = list(m["x"].inputs)
        if len(producers) != 1 or producers[0].op not in NON_NEGATIVE:
            return "the padded tensor may be negative (it does not come from Relu, Sigmoid, ...)"
        return super().check(m) or self.pool_check(m)

    def extra_check(self, consumer) -> str | None:
        if len(consumer.outputs) > 1:
            return "the MaxPool's Indices output is used (padding changes indices)"
        return None


def _attr_text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _ExplicitAutoPad(Rule):
    """auto_pad SAME_UPPER / SAME_LOWER / VALID -> the explicit `pads` it means, for the input's
    static spatial shape (ONNX's formula: output = ceil(input / stride) for SAME, the odd pixel at the
    end for SAME_UPPER, at the beginning for SAME_LOWER). Backends then see ordinary padding: TVM's
    importer otherwise emits a separate padding kernel, which hides the convolution's input from
    the rewrites that follow (a quantized convolution's integer lowering)."""

    def check(self, m: Match) -> str | None:
        node = m.node("consumer")
        mode = _attr_text(node.attrs.get("auto_pad", "NOTSET"))
        if mode == "NOTSET":
            return "the node has explicit pads (auto_pad NOTSET)"
        if mode not in ("SAME_UPPER", "SAME_LOWER", "VALID"):
            return f"unknown auto_pad {mode}"
        if self._pads(m) is None:
            return "the input's spatial shape or the kernel shape is not static"
        return None

    def _kernel(self, m: Match) -> list[int] | None:
        kernel = list(m.node("consumer").attrs.get("kernel_shape", []))
        if not kernel and "w" in m.tensors:
            shape = m.shape("w")
            kernel = list(shape[2:]) if shape is not None else []
        return [int(k) for k in kernel] if kernel and all(isinstance(k, (int, np.integer)) for k in kernel) else None

    def _pads(self, m: Match) -> list[int] | None:
        node = m.node("consumer")
        shape, kernel = m.shape("x"), self._kernel(m)
        if shape is None or kernel is None or len(shape) != len(kernel) + 2:
            return None
        spatial = shape[2:]
        if not all(isinstance(d, (int, np.integer)) and d > 0 for d in spatial):
            return None
        mode = _attr_text(node.attrs.get("auto_pad"))
        strides = list(node.attrs.get("strides", [1] * len(kernel)))
        dilations = list(node.attrs.get("dilations", [1] * len(kernel)))
        begin, end = [], []
        for size, k, stride, dilation in zip(spatial, kernel, strides, dilations):
            if mode == "VALID":
                total = 0
            else:
                out = -(-int(size) // int(stride))
                total = max((out - 1) * int(stride) + (k - 1) * int(dilation) + 1 - int(size), 0)
            small = total // 2
            begin.append(small if mode != "SAME_LOWER" else total - small)
            end.append(total - begin[-1])
        return begin + end

    def rewrite(self, m: Match, b: Builder) -> None:
        node = m.node("consumer")
        attrs = {**node.attrs, "pads": self._pads(m)}
        attrs.pop("auto_pad", None)
        b.node(node.op, [m["x"]] + list(node.inputs)[1:], attrs, outputs=list(node.outputs))


@dataclass(frozen=True)
class ExplicitAutoPadConv(_ExplicitAutoPad):
    """Conv with auto_pad -> Conv with the explicit pads it means (static input shape)."""

    name: ClassVar[str] = "explicit-auto-pad-conv"
    pattern: ClassVar[Op] = Op("Conv", Var("x"), Var("w"), Opt(Var("b")), name="consumer")


@dataclass(frozen=True)
class ExplicitAutoPadPool(_ExplicitAutoPad):
    """MaxPool/AveragePool with auto_pad -> explicit pads (static input shape)."""

    name: ClassVar[str] = "explicit-auto-pad-pool"
    pattern: ClassVar[Op] = Op(("MaxPool", "AveragePool"), Var("x"), name="consumer")

    def check(self, m: Match) -> str | None:
        node = m.node("consumer")
        if len(node.outputs) > 1:
            return "the MaxPool's Indices output is used"
        if node.attrs.get("ceil_mode", 0):
            return "the pool uses ceil_mode (explicit pads would change the output shape)"
        return super().check(m)


@dataclass(frozen=True)
class FoldPad(RewritePass):
    """Fold zero constant Pads into the Conv/AveragePool/MaxPool that reads them; auto_pad becomes
    explicit pads where the input shape is static."""

    name: ClassVar[str] = "fold-pad"
    rules: ClassVar[tuple] = (ExplicitAutoPadConv, ExplicitAutoPadPool, PadIntoConv, PadIntoAveragePool,
                              PadIntoMaxPool)
