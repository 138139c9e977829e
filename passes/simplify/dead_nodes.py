"""Remove nodes and initializers that no graph output depends on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import onnx

from mcc.toolchain import ir
from mcc.toolchain.passmanager import Pass, PassContext, PassResult


@dataclass(frozen=True)
class EliminateDeadNodes(Pass):
    """Remove nodes and initializers that no graph output depends on."""

    name: ClassVar[str] = "eliminate-dead-nodes"

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        graph = model.graph
        live_tensors = {output.name for output in graph.output}
        live_indices = set()
        for index in reversed(range(len(graph.node))):
            node = graph.node[index]
            # ONNX ops are pure: a node is live only through its outputs.
            if any(name in live_tensors for name in node.output if name):
                live_indices.add(index)
                live_tensors.update(name for name in node.input if name)
                live_tensors.update(ir.subgraph_reads(node))
        live_initializers = [tensor for tensor in graph.initializer if tensor.name in live_tensors]
        if len(live_indices) == len(graph.node) and len(live_initializers) == len(graph.initializer):
            return PassResult(model, False)
        result = onnx.ModelProto()
        result.CopyFrom(model)
        nodes = [node for index, node in enumerate(result.graph.node) if index in live_indices]
        initializers = [tensor for tensor in result.graph.initializer if tensor.name in live_tensors]
        # An IR<4 model lists initializers as inputs: keep the input list consistent.
        removed = {tensor.name for tensor in result.graph.initializer} - {t.name for t in initializers}
        inputs = [value for value in result.graph.input if value.name not in removed]
        _replace(result.graph.node, nodes)
        _replace(result.graph.initializer, initializers)
        _replace(result.graph.input, inputs)
        value_info = [value for value in result.graph.value_info if value.name in live_tensors]
        _replace(result.graph.value_info, value_info)
        return PassResult(result, True)


def _replace(container, items) -> None:
    copies = []
    for item in items:
        copy = type(item)()
        copy.CopyFrom(item)
        copies.append(copy)
    del container[:]
    container.extend(copies)
