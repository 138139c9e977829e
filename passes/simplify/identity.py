"""Remove Identity nodes and Dropout nodes that run in inference mode.

Dropout in inference is the identity on its first output (ONNX spec: "If training_mode is false,
the output Y is a copy of the input X"). A Dropout whose mask output is read, or whose
`training_mode` input is not a constant false, is left alone. When the removed node's output is a
graph output, the producer of its input is made to write the graph output directly, so output
names never change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx

from mcc.toolchain import ir
from mcc.toolchain.passmanager import Pass, PassContext, PassResult


def _is_inference_dropout(node, graph, opset: int) -> bool:
    import onnx_graphsurgeon as gs

    if len(node.outputs) > 1 and node.outputs[1].outputs:
        return False  # the mask is read
    if len(node.outputs) > 1 and node.outputs[1] in graph.outputs:
        return False
    if opset < 7 and node.attrs.get("is_test", 0) != 1:
        return False  # before opset 7, Dropout trains unless is_test=1
    if len(node.inputs) > 2 and node.inputs[2].name:
        training = node.inputs[2]
        if not isinstance(training, gs.Constant) or bool(np.asarray(training.values).any()):
            return False
    return True


@dataclass(frozen=True)
class EliminateIdentity(Pass):
    """Remove Identity nodes and inference-mode Dropout nodes."""

    name: ClassVar[str] = "eliminate-identity"
    dropout: bool = True

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        graph = ir.to_graphsurgeon(model)
        opset = ir.opset_version(model)
        removed = 0
        for node in list(graph.nodes):
            if node.op == "Identity" and node.domain in ir.DEFAULT_DOMAINS:
                pass
            elif self.dropout and node.op == "Dropout" and _is_inference_dropout(node, graph, opset):
                pass
            else:
                continue
            if _bypass(node, graph):
                removed += 1
        if not removed:
            return PassResult(model, False)
        return PassResult(ir.from_graphsurgeon(graph, like=model), True)


def _bypass(node, graph) -> bool:
    """Rewire consumers around `node` and remove it; False when that would rename an interface."""
    source, result = node.inputs[0], node.outputs[0]
    if result in graph.outputs:
        producers = list(source.inputs)
        if not producers or source in graph.outputs or source in graph.inputs:
            return False
        producer = producers[0]
        for consumer in list(source.outputs):
            if consumer is node:
                continue
            for index, tensor in enumerate(consumer.inputs):
                if tensor is source:
                    consumer.inputs[index] = result
        node.inputs.clear()
        node.outputs.clear()
        producer.outputs[producer.outputs.index(source)] = result
    else:
        for consumer in list(result.outputs):
            for index, tensor in enumerate(consumer.inputs):
                if tensor is result:
                    consumer.inputs[index] = source
        node.inputs.clear()
        node.outputs.clear()
    graph.nodes.remove(node)
    return True
