"""Replace an `If` whose condition is a constant by the branch it takes.

TVM's importer rejects an `If` whose branches produce different shapes (and cannot fold one with a
constant condition itself); exporters emit such `If`s for options fixed at deployment, e.g. the
sample rate of an audio model. `--const-input sr=16000` turns the input into a constant,
`fold-constants` folds the comparison, and this pass inlines the taken branch:

- the branch's nodes move into the parent graph; every tensor they produce (and every branch
  initializer) gets a fresh name, so nothing collides with the parent's names;
- the branch's outputs become the If's outputs (an Identity when a branch output is not produced
  by a branch node, e.g. a parent tensor passed through);
- nested subgraphs of moved nodes read the renamed tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mcc.toolchain import ir
from mcc.toolchain.passmanager import Pass, PassContext, PassResult


def _constant_condition(name: str, constants: dict[str, onnx.TensorProto]) -> bool | None:
    tensor = constants.get(name)
    if tensor is None:
        return None
    value = numpy_helper.to_array(tensor)
    return bool(value.reshape(-1)[0]) if value.size == 1 else None


def _inline(node: onnx.NodeProto, branch: onnx.GraphProto, taken: set[str]) -> tuple[list, list]:
    """The nodes and initializers that replace `node` (its taken `branch`, renamed)."""
    prefix = node.name or node.output[0]
    renames: dict[str, str] = {}
    for tensor in branch.initializer:
        renames[tensor.name] = ir.unique_name(f"{prefix}/{tensor.name}", taken)
    for inner in branch.node:
        for name in inner.output:
            if name:
                renames[name] = ir.unique_name(f"{prefix}/{name}", taken)
    produced = {name for inner in branch.node for name in inner.output if name}
    pairs = [(value.name, target) for value, target in zip(branch.output, node.output)]
    # a branch output produced by a branch node is written straight into the If's (first) output
    # of that name; a branch output returned again feeds the other If outputs through Identity
    outputs: dict[str, str] = {}
    repeats: list[tuple[str, str]] = []
    for name, target in pairs:
        if not target:
            continue
        if name in outputs:
            repeats.append((outputs[name], target))
            continue
        outputs[name] = target
        if name in produced:
            renames[name] = target
    nodes = []
    for inner in branch.node:
        moved = onnx.NodeProto()
        moved.CopyFrom(inner)
        moved.name = ir.unique_name(f"{prefix}/{inner.name or inner.op_type}", taken)
        for i, name in enumerate(moved.input):
            moved.input[i] = renames.get(name, name)
        for i, name in enumerate(moved.output):
            moved.output[i] = renames.get(name, name)
        for attribute in moved.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                ir.rename_reads(sub, renames)
        nodes.append(moved)
    for name, target in outputs.items():
        if name not in produced:  # a parent tensor or a branch initializer passed through
            nodes.append(helper.make_node("Identity", [renames.get(name, name)], [target],
                                          name=ir.unique_name(f"{prefix}/passthrough", taken)))
    for first, target in repeats:
        nodes.append(helper.make_node("Identity", [first], [target], name=ir.unique_name(f"{prefix}/repeat", taken)))
    initializers = []
    for tensor in branch.initializer:
        moved = onnx.TensorProto()
        moved.CopyFrom(tensor)
        moved.name = renames[tensor.name]
        initializers.append(moved)
    return nodes, initializers


@dataclass(frozen=True)
class FoldConstantIf(Pass):
    """Replace If nodes with a constant condition by the branch they take."""

    name: ClassVar[str] = "fold-constant-if"

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        constants = {tensor.name: tensor for tensor in model.graph.initializer}
        if not any(n.op_type == "If" and n.domain in ir.DEFAULT_DOMAINS and
                   _constant_condition(n.input[0], constants) is not None for n in model.graph.node):
            return PassResult(model, False)
        result = onnx.ModelProto()
        result.CopyFrom(model)
        graph = result.graph
        taken = ir.names_in_use(graph)
        nodes = []
        for node in graph.node:
            condition = _constant_condition(node.input[0], constants) if node.op_type == "If" else None
            if condition is None or node.domain not in ir.DEFAULT_DOMAINS:
                nodes.append(node)
                continue
            branch_name = "then_branch" if condition else "else_branch"
            branch = next(a.g for a in node.attribute if a.name == branch_name)
            moved, initializers = _inline(node, branch, taken)
            nodes.extend(moved)
            graph.initializer.extend(initializers)
            ctx.note(f"fold-constant-if: If '{node.name}' takes its {branch_name.split('_')[0]} branch "
                     f"(condition {np.bool_(condition)})")
        del graph.node[:]
        graph.node.extend(nodes)
        return PassResult(result, True)
