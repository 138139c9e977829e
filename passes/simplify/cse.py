"""Common-subexpression elimination: one node per distinct computation, one initializer per distinct value.

Two nodes are the same computation when they have the same domain, op type, attributes and
(already deduplicated) inputs, in any order for commutative ops; the later one goes and its readers read the earlier one's outputs.
Initializers with the same dtype, shape and bytes are merged the same way (exporters repeat
scalars such as 1.0 and shapes such as [-1] hundreds of times). Left alone: nodes with subgraphs,
random ops (each call draws new values), nodes whose outputs are graph outputs (their names are
the model's interface), and initializers that are also graph inputs (callers may override them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import onnx

from mcc.toolchain import ir
from mcc.toolchain.passmanager import Pass, PassContext, PassResult

#: ops whose result does not depend on the order of their (two or more) inputs
COMMUTATIVE_OPS = {"Add", "Mul", "Max", "Min", "Sum", "Mean", "And", "Or", "Xor", "Equal", "BitwiseAnd", "BitwiseOr",
                   "BitwiseXor"}
RANDOM_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
              "Dropout"}


@dataclass(frozen=True)
class EliminateCommonSubexpressions(Pass):
    """Merge nodes computing the same op on the same inputs, and initializers holding equal values."""

    name: ClassVar[str] = "cse"

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        result = onnx.ModelProto()
        result.CopyFrom(model)
        graph = result.graph
        interface = {value.name for value in graph.input} | {value.name for value in graph.output}
        renames: dict[str, str] = {}

        seen_values: dict[tuple, str] = {}
        kept = []
        for tensor in graph.initializer:
            key = (tensor.data_type, tuple(tensor.dims), onnx.numpy_helper.to_array(tensor).tobytes())
            if tensor.name not in interface and key in seen_values:
                renames[tensor.name] = seen_values[key]
                continue
            if tensor.name not in interface:
                seen_values[key] = tensor.name
            kept.append(tensor)
        if len(kept) != len(graph.initializer):
            del graph.initializer[:]
            graph.initializer.extend(kept)
            ir.rename_reads(graph, renames)

        outputs = {value.name for value in graph.output}
        seen_nodes: dict[tuple, onnx.NodeProto] = {}
        removed = 0
        node_renames: dict[str, str] = {}
        keep_nodes = []
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name in node_renames:
                    node.input[i] = node_renames[name]
            has_subgraph = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
            if has_subgraph or node.op_type in RANDOM_OPS or not node.output or outputs & set(node.output):
                keep_nodes.append(node)
                continue
            attributes = tuple(sorted((a.name, a.SerializeToString()) for a in node.attribute))
            inputs = tuple(node.input)
            if node.op_type in COMMUTATIVE_OPS and (node.domain or "") in ("", "ai.onnx"):
                inputs = tuple(sorted(inputs))  # Add(a, b) is Add(b, a)
            key = (node.domain or "", node.op_type, inputs, attributes, len(node.output))
            earlier = seen_nodes.get(key)
            if earlier is None:
                seen_nodes[key] = node
                keep_nodes.append(node)
                continue
            if any(mine and not theirs for mine, theirs in zip(node.output, earlier.output)):
                keep_nodes.append(node)  # the earlier node leaves an output this one provides unnamed
                continue
            for mine, theirs in zip(node.output, earlier.output):
                if mine:
                    node_renames[mine] = theirs
            removed += 1
        if removed:
            del graph.node[:]
            graph.node.extend(keep_nodes)
            ir.rename_reads(graph, node_renames)  # subgraphs reading merged outer names
            kept_names = {n for node in graph.node for n in node.output}
            values = [v for v in graph.value_info if v.name in kept_names or v.name not in node_renames]
            del graph.value_info[:]
            graph.value_info.extend(values)
        if not renames and not removed:
            return PassResult(model, False)
        return PassResult(result, True)
