"""Fold an inference BatchNormalization into the Conv that feeds it.

BatchNormalization computes, per output channel c,

    y = gamma[c] * (x - mean[c]) / sqrt(var[c] + eps) + beta[c]

and a Conv is x = W * in + b. With s[c] = gamma[c] / sqrt(var[c] + eps):

    y = (s[c] * W[c]) * in + (s[c] * (b[c] - mean[c]) + beta[c])

so the pair becomes one Conv with W'[c] = s[c] * W[c] and b'[c] = s[c] * (b[c] - mean[c]) + beta[c].
Arithmetic is done in float64 and cast back to the weight dtype. The rule fires only when the Conv
output feeds nothing but the BatchNormalization (and is not a graph output), every parameter is
a constant, and the BatchNormalization is in inference mode (one output, spatial).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx

from mcc.toolchain import ir
from mcc.toolchain.passmanager import Pass, PassContext, PassResult


def _constant(tensor):
    import onnx_graphsurgeon as gs

    return np.asarray(tensor.values) if isinstance(tensor, gs.Constant) else None


def why_not_fold(conv, bn, graph) -> str | None:
    """The reason the Conv/BatchNormalization pair cannot be folded, or None when it can."""
    if conv.op != "Conv" or conv.domain not in ir.DEFAULT_DOMAINS:
        return "producer is not a Conv"
    conv_out = conv.outputs[0]
    if len(conv_out.outputs) != 1 or conv_out in graph.outputs:
        return "the Conv output has other readers"
    if len(bn.outputs) != 1:
        return "BatchNormalization is in training mode (several outputs)"
    if bn.attrs.get("spatial", 1) != 1:
        return "BatchNormalization is not spatial"
    if bn.attrs.get("training_mode", 0) != 0:
        return "BatchNormalization is in training mode"
    weight = _constant(conv.inputs[1])
    if weight is None or weight.dtype.kind != "f":
        return "Conv weight is not a float constant"
    if len(conv.inputs) > 2 and conv.inputs[2].name and _constant(conv.inputs[2]) is None:
        return "Conv bias is not a constant"
    params = [_constant(t) for t in bn.inputs[1:5]]
    if any(p is None for p in params):
        return "BatchNormalization parameters are not constants"
    channels = weight.shape[0]
    if any(p.size != channels for p in params):
        return "BatchNormalization parameters do not match the Conv's output channels"
    if np.any(params[3].astype(np.float64) + float(bn.attrs.get("epsilon", 1e-5)) <= 0):
        return "BatchNormalization variance + epsilon is not positive (the layer computes NaN/Inf)"
    return None


@dataclass(frozen=True)
class FuseConvBatchNorm(Pass):
    """Fold inference BatchNormalization into the preceding Conv's weights and bias."""

    name: ClassVar[str] = "fuse-conv-bn"

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        import onnx_graphsurgeon as gs

        graph = ir.to_graphsurgeon(model)
        # Dead readers must not block a fold: the export below removes them, so the next run would fold.
        graph.cleanup(remove_unused_graph_inputs=False)
        taken = set(graph.tensors())
        folded = 0
        for bn in list(graph.nodes):
            if bn.op != "BatchNormalization" or bn.domain not in ir.DEFAULT_DOMAINS:
                continue
            producers = list(bn.inputs[0].inputs)
            if len(producers) != 1 or why_not_fold(producers[0], bn, graph) is not None:
                continue
            conv = producers[0]
            weight = _constant(conv.inputs[1])
            channels = weight.shape[0]
            has_bias = len(conv.inputs) > 2 and conv.inputs[2].name
            bias = _constant(conv.inputs[2]).astype(np.float64) if has_bias else np.zeros(channels)
            gamma, beta, mean, var = (_constant(t).astype(np.float64).reshape(-1) for t in bn.inputs[1:5])
            scale = gamma / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
            new_weight = weight.astype(np.float64) * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
            new_bias = (bias.reshape(-1) - mean) * scale + beta
            conv_out = conv.outputs[0]
            conv.inputs[1] = gs.Constant(ir.unique_name(f"{conv.name}.folded_weight", taken), new_weight.astype(weight.dtype))
            bias_tensor = gs.Constant(ir.unique_name(f"{conv.name}.folded_bias", taken), new_bias.astype(weight.dtype))
            if len(conv.inputs) > 2:
                conv.inputs[2] = bias_tensor  # replaces a real bias or an explicit empty input ""
            else:
                conv.inputs.append(bias_tensor)
            result = bn.outputs[0]
            bn.inputs.clear()
            bn.outputs.clear()
            conv.outputs[conv.outputs.index(conv_out)] = result
            graph.nodes.remove(bn)
            folded += 1
        if not folded:
            return PassResult(model, False)
        return PassResult(ir.from_graphsurgeon(graph, like=model), True)
