"""Sibling convolutions and matmuls that read the same input become one op and a Split.

`Conv(x, W1, b1)`, ..., `Conv(x, Wk, bk)` with the same attributes, `group` 1 and constant weights
of one dtype and kernel shape compute `Split(Conv(x, concat(W1..Wk), concat(b1..bk)), axis=1)`
exactly: each output channel of a convolution depends only on its own filter and bias (a missing
bias is zeros). Likewise `MatMul(a, B1)`, ..., `MatMul(a, Bk)` with constant 2-D `Bi` compute
`Split(MatMul(a, concat(B1..Bk, axis=1)), axis=-1)`: each output column depends only on its own
column of B.

Why: the input is read once instead of k times, and the backend's kernel gets one wider output
axis to tile. An STFT written as two convolutions (real and imaginary bases, openWakeWord's
melspectrogram) and attention's query/key/value projections are the common cases; TVM's Relax
pipeline has no such combination for ONNX imports (Relay had CombineParallelConv2D). Measured on
melspectrogram: the two 257-channel convolutions 72 + 72 us alone, merged 127 us (see
benchmarks/RESULTS.md).

Left alone: grouped convolutions (their channel groups would interleave), weights that are not
initializers or are also graph inputs (a caller may override them), and nodes that are not in
the default domain.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mcc.toolchain import ir
from mcc.toolchain.passmanager import Pass, PassContext, PassResult


def _sibling_key(node: onnx.NodeProto, weights: dict[str, np.ndarray], inputs: set[str], opset: int):
    """What siblings must share to merge (None: the node cannot merge)."""
    if node.domain not in ("", "ai.onnx") or len(node.output) != 1 or len(node.input) < 2:
        return None
    weight_name = node.input[1]
    if weight_name not in weights or weight_name in inputs:
        return None
    weight = weights[weight_name]
    if weight.dtype.kind != "f":
        return None
    attributes = tuple(sorted((a.name, a.SerializeToString()) for a in node.attribute))
    if node.op_type == "Conv":
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if group != 1 or weight.ndim < 3:
            return None
        if len(node.input) > 2 and node.input[2] and (node.input[2] not in weights or node.input[2] in inputs):
            return None
        return ("Conv", node.input[0], attributes, weight.dtype.str, weight.shape[1:])
    if node.op_type == "MatMul" and weight.ndim == 2 and opset >= 11:  # Split's axis -1 is opset 11's
        return ("MatMul", node.input[0], attributes, weight.dtype.str, weight.shape[:1])
    return None


@dataclass(frozen=True)
class CombineParallel(Pass):
    """Merge convolutions (or matmuls) with constant weights that read the same input into one and a Split."""

    name: ClassVar[str] = "combine-parallel"

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        graph = model.graph
        if ctx.supported_ops is not None and "Split" not in ctx.supported_ops:
            return PassResult(model, False)
        weights = {tensor.name: tensor for tensor in graph.initializer}
        arrays: dict[str, np.ndarray] = {}
        inputs = {value.name for value in graph.input}
        groups: dict[tuple, list[int]] = defaultdict(list)
        for index, node in enumerate(graph.node):
            if node.op_type not in ("Conv", "MatMul"):
                continue
            for name in node.input[1:3]:
                if name in weights and name not in arrays:
                    arrays[name] = numpy_helper.to_array(weights[name])
            key = _sibling_key(node, arrays, inputs, ir.opset_version(model))
            if key is not None:
                groups[key].append(index)
        groups = {key: members for key, members in groups.items() if len(members) > 1}
        if not groups:
            return PassResult(model, False)

        result = onnx.ModelProto()
        result.CopyFrom(model)
        graph = result.graph
        taken = ir.names_in_use(graph)
        opset = ir.opset_version(result)
        replaced: dict[int, list[onnx.NodeProto]] = {}
        merged_away: set[int] = set()
        for key, members in groups.items():
            nodes = [graph.node[i] for i in members]
            kind = key[0]
            parts = [arrays[node.input[1]] for node in nodes]
            sizes = [part.shape[0] if kind == "Conv" else part.shape[1] for part in parts]
            stem = nodes[0].name or nodes[0].output[0]
            weight_name = ir.unique_name(f"{stem}_combined_weight", taken)
            taken.add(weight_name)
            graph.initializer.append(numpy_helper.from_array(np.concatenate(parts, axis=0 if kind == "Conv" else 1),
                                                             weight_name))
            node_inputs = [nodes[0].input[0], weight_name]
            if kind == "Conv" and any(len(node.input) > 2 and node.input[2] for node in nodes):
                biases = [arrays[node.input[2]].reshape(-1) if len(node.input) > 2 and node.input[2]
                          else np.zeros(size, parts[0].dtype) for node, size in zip(nodes, sizes)]
                bias_name = ir.unique_name(f"{stem}_combined_bias", taken)
                taken.add(bias_name)
                graph.initializer.append(numpy_helper.from_array(np.concatenate(biases).astype(parts[0].dtype),
                                                                 bias_name))
                node_inputs.append(bias_name)
            combined_name = ir.unique_name(f"{stem}_combined", taken)
            taken.add(combined_name)
            combined = helper.make_node(kind, node_inputs, [combined_name], name=combined_name)
            combined.attribute.extend(nodes[0].attribute)
            axis = 1 if kind == "Conv" else -1
            outputs = [node.output[0] for node in nodes]
            split_name = ir.unique_name(f"{stem}_split", taken)
            taken.add(split_name)
            if opset >= 13:
                sizes_name = ir.unique_name(f"{stem}_split_sizes", taken)
                taken.add(sizes_name)
                graph.initializer.append(numpy_helper.from_array(np.array(sizes, np.int64), sizes_name))
                split = helper.make_node("Split", [combined_name, sizes_name], outputs, name=split_name, axis=axis)
            else:
                split = helper.make_node("Split", [combined_name], outputs, name=split_name, axis=axis, split=sizes)
            # the siblings' common input and the constants exist before the first of them, and every
            # reader of any sibling's output comes after that sibling: the first position is safe
            replaced[members[0]] = [combined, split]
            merged_away.update(members[1:])
            ctx.note(f"combine-parallel: {len(nodes)} {kind} nodes reading '{nodes[0].input[0]}' merged into "
                     f"'{combined_name}' ({' + '.join(map(str, sizes))} output {'channels' if kind == 'Conv' else 'columns'})")
        nodes = []
        for index, node in enumerate(graph.node):
            if index in merged_away:
                continue
            nodes.extend(replaced.get(index, [node]))
        del graph.node[:]
        graph.node.extend(nodes)
        # the siblings' own weights and biases go unless something else still reads them
        old = {name for members in groups.values() for i in members for name in model.graph.node[i].input[1:3]}
        used = ({name for node in graph.node for name in node.input} | {value.name for value in graph.output}
                | {name for node in graph.node for name in ir.subgraph_reads(node)})
        kept = [tensor for tensor in graph.initializer if tensor.name not in old or tensor.name in used]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        return PassResult(result, True)
