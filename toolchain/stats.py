"""Model statistics for pass reports: node count, parameter count, multiply-accumulates.

MACs are counted for the ops that dominate compute (Conv, ConvTranspose, Gemm, MatMul) from
inferred shapes; an op whose shapes are not known counts zero and makes `macs_exact` false.
The per-target cost model (hwmodels) refines this; these numbers are for before/after tables.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from math import prod

import onnx

from mcc.toolchain import ir


@dataclass(frozen=True)
class ModelStats:
    nodes: int
    params: int
    macs: int
    macs_exact: bool

    def as_dict(self) -> dict:
        return asdict(self)


def count_params(model: onnx.ModelProto) -> int:
    total = sum(prod(tensor.dims) for tensor in model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    total += prod(attr.t.dims)
    return int(total)


def node_macs(node: onnx.NodeProto, types: dict) -> int | None:
    """MACs of one node, or None when its shapes are not known."""

    def shape(name: str) -> tuple[int, ...] | None:
        entry = types.get(name)
        return ir.static_shape(entry[1]) if entry else None

    if node.op_type in ("Conv", "ConvTranspose", "ConvInteger", "QLinearConv"):
        weight_index = 3 if node.op_type == "QLinearConv" else 1
        weight = shape(node.input[weight_index]) if len(node.input) > weight_index else None
        if weight is None:
            return None
        if node.op_type != "ConvTranspose":
            out = shape(node.output[0])
            # weight: [M, C/group, k...]; each output element needs C/group * prod(k) MACs
            return None if out is None else prod(out) * prod(weight[1:])
        data = shape(node.input[0])
        # weight: [C, M/group, k...]; each input element scatters into M/group * prod(k) outputs
        return None if data is None else prod(data) * prod(weight[1:])
    if node.op_type in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul"):
        b_index = 3 if node.op_type == "QLinearMatMul" else 1
        a, b, out = shape(node.input[0]), shape(node.input[b_index]), shape(node.output[0])
        if a is None or b is None or out is None or not a:
            return None
        if node.op_type == "Gemm":
            trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
            k = a[0] if trans_a else a[-1]
        else:
            k = a[-1]
        return prod(out) * k
    if node.op_type in RECURRENT_OPS:
        # X: [seq, batch, input]; W: [directions, gates*hidden, input]; R: [directions, gates*hidden, hidden].
        # Per step and direction: gates*hidden x (input + hidden) MACs for every batch row.
        data, weight, recurrence = shape(node.input[0]), shape(node.input[1]), shape(node.input[2])
        if data is None or weight is None or recurrence is None:
            return None
        layout = next((attr.i for attr in node.attribute if attr.name == "layout"), 0)
        seq, batch = (data[0], data[1]) if layout == 0 else (data[1], data[0])
        directions, gates_hidden, inputs = weight
        return seq * batch * directions * gates_hidden * (inputs + recurrence[2])
    if node.op_type in ("Einsum", "Attention", "MultiHeadAttention"):
        return None  # not modelled yet: counted as unknown rather than free
    return 0


#: recurrent ops (the MAC formula reads gates x hidden from W's shape)
RECURRENT_OPS = frozenset({"LSTM", "GRU", "RNN"})


def model_stats(model: onnx.ModelProto) -> ModelStats:
    """Statistics of a model; runs (non-strict) shape inference to count MACs."""
    try:
        inferred = ir.infer_shapes(model)
    except Exception:  # stats must never fail a compile; an uninferable model counts no MACs
        inferred = model
    types = ir.tensor_types(inferred)
    macs = 0
    exact = True
    for node in inferred.graph.node:
        value = node_macs(node, types)
        if value is None:
            exact = False
        else:
            macs += value
    return ModelStats(nodes=len(model.graph.node), params=count_params(model), macs=int(macs), macs_exact=exact)
