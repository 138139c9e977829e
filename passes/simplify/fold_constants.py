"""Constant folding, including shape arithmetic.

A node is foldable when it is deterministic, in the default domain, has no subgraph, and every
input is a constant (an initializer, or the output of another foldable node). `Shape` and `Size`
are foldable when their input's shape is static, even though the input itself is not constant:
once the driver has fixed the input shapes, chains such as Shape -> Gather -> Unsqueeze -> Concat
-> Reshape become constants, which is what TVM's importer needs.

All foldable nodes of one round are evaluated together by onnxruntime (graph optimizations off,
so the reference runtime computes exactly the ONNX semantics), their outputs that are still read
become initializers, and the nodes are removed. Shapes are then inferred again and the next round
runs, until nothing is left to fold. Results larger than `max-size-mb` are not materialized
when they are also larger than their inputs (folding a small Expand into a huge constant would
bloat the model; transposing a large weight does not). Quantize/Dequantize nodes
are never folded, so quantized weights stay quantized. Nodes that produce graph outputs are kept
so graph outputs are always computed by a node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mcc.toolchain import ir
from mcc.toolchain.passmanager import Pass, PassContext, PassResult

NEVER_FOLD = frozenset(
    {
        "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
        "Bernoulli", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
        "If", "Loop", "Scan", "SequenceMap", "Optional",
    }
)


def _constant_initializers(model: onnx.ModelProto) -> set[str]:
    """Initializers that are constants: from IR 4 on, one also listed as an input is overridable."""
    names = {tensor.name for tensor in model.graph.initializer}
    if model.ir_version >= 4:
        names -= {value.name for value in model.graph.input}
    return names


@dataclass(frozen=True)
class FoldConstants(Pass):
    """Evaluate nodes whose inputs are constant (shape arithmetic included) into initializers."""

    name: ClassVar[str] = "fold-constants"
    max_size_mb: float = 64.0
    max_rounds: int = 10

    def __post_init__(self) -> None:
        if self.max_size_mb <= 0:
            raise ValueError("max-size-mb must be positive")
        if self.max_rounds < 1:
            raise ValueError("max-rounds must be at least 1")

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        modified = False
        for _ in range(self.max_rounds):
            folded = self._fold_round(model, ctx)
            if folded is None:
                break
            model, modified = folded, True
        return PassResult(model, modified)

    # ---------------------------------------------------------------------------------------------

    def _fold_round(self, model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto | None:
        graph = model.graph
        types = ir.tensor_types(ir.infer_shapes(model))
        limit_bytes = self.max_size_mb * 1024 * 1024
        graph_outputs = {value.name for value in graph.output}
        constants = _constant_initializers(model)
        shape_values: dict[str, np.ndarray] = {}
        evaluated: list[onnx.NodeProto] = []
        shape_nodes: set[int] = set()

        evaluated_indices: list[int] = []
        for index, node in enumerate(graph.node):
            if node.domain not in ir.DEFAULT_DOMAINS or node.op_type in NEVER_FOLD:
                continue
            if any(attr.HasField("g") or attr.graphs for attr in node.attribute):
                continue
            if any(name in graph_outputs for name in node.output):
                continue
            if node.op_type in ("Shape", "Size"):
                value = _static_shape_value(node, types)
                if value is not None:
                    shape_values[node.output[0]] = value
                    shape_nodes.add(index)
                    constants.add(node.output[0])
                continue
            if not all(name in constants for name in node.input if name):
                continue
            if _too_large(node, types, limit_bytes):
                continue
            if any(name and name not in types for name in node.output):
                continue  # untyped outputs cannot be declared for evaluation
            evaluated.append(node)
            evaluated_indices.append(index)
            constants.update(name for name in node.output if name)

        values = dict(shape_values)
        if evaluated:
            computed = _evaluate(model, evaluated, shape_values, types)
            if computed is None:
                # One node onnxruntime cannot evaluate must not block the rest: go node by node,
                # skipping a failing node and everything that depends on it.
                computed, failed = _evaluate_one_by_one(model, evaluated, shape_values, types)
                for node in failed:
                    ctx.note(f"fold-constants: onnxruntime could not evaluate '{node.name}' ({node.op_type}); kept")
                keep = [(i, n) for i, n in zip(evaluated_indices, evaluated) if all(o in computed for o in n.output if o)]
                evaluated_indices, evaluated = [i for i, _ in keep], [n for _, n in keep]
            values.update(computed)
        foldable = shape_nodes | set(evaluated_indices)
        if not foldable:
            return None

        # Oversized results stay computed at run time: keep their producers (and so their inputs).
        for index, node in zip(evaluated_indices, evaluated):
            made_from = sum(np.asarray(values[name]).nbytes if name in values else (_nbytes(name, types) or 0)
                            for name in node.input if name)
            if any(values[name].nbytes > limit_bytes and values[name].nbytes > made_from
                   for name in node.output if name in values):
                foldable.discard(index)
        kept_nodes = [node for index, node in enumerate(graph.node) if index not in foldable]
        if len(kept_nodes) == len(graph.node):
            return None
        needed = {name for node in kept_nodes for name in node.input if name} | graph_outputs
        for node in kept_nodes:
            needed |= ir.subgraph_reads(node)

        result = onnx.ModelProto()
        result.CopyFrom(model)
        result.ir_version = max(result.ir_version, 4)  # new initializers are not listed as inputs
        del result.graph.node[:]
        result.graph.node.extend(kept_nodes)
        taken = {tensor.name for tensor in result.graph.initializer}
        for name, value in values.items():
            producer_kept = any(name in node.output for node in kept_nodes)
            if name in needed and name not in taken and not producer_kept:
                result.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        folded_outputs = set(values)
        value_info = [v for v in result.graph.value_info if v.name not in folded_outputs]
        del result.graph.value_info[:]
        result.graph.value_info.extend(value_info)
        return result


def _static_shape_value(node: onnx.NodeProto, types: dict) -> np.ndarray | None:
    entry = types.get(node.input[0])
    shape = ir.static_shape(entry[1]) if entry else None
    if shape is None:
        return None
    if node.op_type == "Size":
        return np.array(int(np.prod(shape, dtype=np.int64)), dtype=np.int64)
    attrs = {attr.name: attr.i for attr in node.attribute}
    rank = len(shape)
    start = attrs.get("start", 0)
    end = attrs.get("end", rank)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    return np.array(shape[start:end], dtype=np.int64)


def _nbytes(name: str, types: dict) -> int | None:
    entry = types.get(name)
    shape = ir.static_shape(entry[1]) if entry else None
    if shape is None or not entry[0]:
        return None
    return int(np.prod(shape, dtype=np.int64)) * ir.tensor_dtype(entry[0]).itemsize


def _too_large(node: onnx.NodeProto, types: dict, limit_bytes: float) -> bool:
    """Folding would materialize a constant over the cap that is larger than what it is made from.

    Transposing or casting a large weight does not grow the model and is folded whatever its size;
    expanding a small tensor into a large one is not.
    """
    inputs = sum(_nbytes(name, types) or 0 for name in node.input if name)
    for name in node.output:
        size = _nbytes(name, types)
        if size is not None and size > limit_bytes and size > inputs:
            return True
    return False


def _evaluate_one_by_one(
    model: onnx.ModelProto, nodes: list[onnx.NodeProto], shape_values: dict[str, np.ndarray], types: dict
) -> tuple[dict[str, np.ndarray], list[onnx.NodeProto]]:
    known = dict(shape_values)
    initializers = {tensor.name for tensor in model.graph.initializer}
    failed = []
    for node in nodes:
        reads = [name for name in node.input if name]
        if not all(name in known or name in initializers for name in reads):
            continue  # depends on a node that failed
        result = _evaluate(model, [node], known, types)
        if result is None:
            failed.append(node)
        else:
            known.update(result)
    return {name: value for name, value in known.items() if name not in shape_values}, failed


def _evaluate(
    model: onnx.ModelProto, nodes: list[onnx.NodeProto], known: dict[str, np.ndarray], types: dict
) -> dict[str, np.ndarray] | None:
    """Run `nodes` (all inputs constant: initializers or `known` values) in onnxruntime; None when it cannot."""
    import onnxruntime as ort

    produced = {name for node in nodes for name in node.output if name}
    read = {name for node in nodes for name in node.input if name} - produced
    initializers = [tensor for tensor in model.graph.initializer if tensor.name in read and tensor.name not in known]
    initializers += [numpy_helper.from_array(np.asarray(value), name) for name, value in known.items() if name in read]
    outputs = []
    for name in sorted(produced):
        elem_type, dims = types[name]
        outputs.append(helper.make_tensor_value_info(name, elem_type, None))
    graph = helper.make_graph(nodes, "fold_constants", [], outputs, initializer=initializers)
    eval_model = helper.make_model(graph, opset_imports=model.opset_import, ir_version=max(model.ir_version, 4))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(eval_model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        names = [output.name for output in session.get_outputs()]
        arrays = session.run(names, {})
    except Exception:  # onnxruntime raises its own exception types for unsupported cases
        return None
    return {name: np.asarray(array) for name, array in zip(names, arrays)}
