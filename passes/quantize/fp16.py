"""Convert a float32 model to float16 (or bfloat16) compute, keeping its inputs' and outputs' types.

Type-driven, so the result is always a valid model:

- A node is converted when its op is in `HALF_SAFE_OPS` (ops whose float inputs and outputs all
  share one type constraint, so converting every float tensor of the node keeps the schema), not
  in `keep-fp32`, and its schema at the model's opset admits the half type for every float
  input and output (ONNX's Conv has no bfloat16, for example). Its float32 tensors become half.
- Everything else stays float32: ops outside the allow-list (Resize's scales, Range, TopK, NMS,
  ...), nodes with subgraphs, and the numerically sensitive ops of `keep-fp32` (by default
  Softmax, LayerNormalization, the reductions and Exp/Log/Pow/Sqrt/Reciprocal, which overflow or
  lose the small terms of a sum in half).
- A tensor crossing between the two regions gets one Cast per direction; a float32 initializer
  read only by half nodes is stored as half (values beyond the half range are clamped to +-65504,
  and the report says how many), one read by both keeps a float32 copy.
- Graph inputs and outputs keep float32 (callers feed and read what they did): a Cast follows
  each input and precedes each output, and the outputs keep their names.
- Shape and Size read whatever type their input has (no Cast for them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mcc.toolchain import ir
from mcc.toolchain.errors import UsageError
from mcc.toolchain.passmanager import Pass, PassContext, PassResult

HALF_SAFE_OPS = frozenset({
    "Abs", "Add", "AveragePool", "BatchNormalization", "Ceil", "Clip", "Concat", "Conv", "ConvTranspose",
    "DepthToSpace", "Div", "Dropout", "Elu", "Erf", "Expand", "Flatten", "Floor", "Gather", "Gelu", "Gemm",
    "GlobalAveragePool", "GlobalMaxPool", "HardSigmoid", "HardSwish", "Identity", "InstanceNormalization",
    "LeakyRelu", "MatMul", "Max", "MaxPool", "Min", "Mish", "Mul", "Neg", "Pad", "PRelu", "Relu", "Reshape",
    "Selu", "Sigmoid", "Slice", "Softplus", "Softsign", "SpaceToDepth", "Split", "Squeeze", "Sub", "Sum", "Tanh",
    "Tile", "Transpose", "Unsqueeze", "Where",
})
DEFAULT_KEEP_FP32 = ("Softmax,LogSoftmax,LayerNormalization,ReduceMean,ReduceSum,ReduceSumSquare,ReduceL2,"
                     "ReduceLogSumExp,Exp,Log,Pow,Sqrt,Reciprocal,InstanceNormalization")
#: ops that read a tensor of any type (they need no Cast)
TYPE_AGNOSTIC = frozenset({"Shape", "Size"})
HALF_TYPES = {"float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16}
FP16_MAX = 65504.0


def _to_half(array: np.ndarray, dtype: str) -> tuple[np.ndarray, int]:
    """`array` as half, clamped to the half range; also how many values were clamped."""
    clamped = int(np.count_nonzero(np.abs(array[np.isfinite(array)]) > FP16_MAX)) if dtype == "float16" else 0
    if dtype == "float16":
        return np.clip(array, -FP16_MAX, FP16_MAX).astype(np.float16), clamped
    import ml_dtypes

    return array.astype(ml_dtypes.bfloat16), 0


@dataclass(frozen=True)
class ConvertFloat16(Pass):
    """Compute in float16 (or bfloat16), keeping I/O types and numerically sensitive ops in float32."""

    name: ClassVar[str] = "convert-float16"
    changes_precision: ClassVar[bool] = True
    precision: ClassVar[str | None] = "fp16"
    dtype: str = "float16"
    keep_fp32: str = DEFAULT_KEEP_FP32
    #: only these nodes (comma-separated names) go half; empty: every node that may (a mixed-precision
    #: search's fallback layers use it)
    nodes: str = ""

    def __post_init__(self) -> None:
        if self.dtype not in HALF_TYPES:
            raise ValueError(f"dtype must be one of {', '.join(HALF_TYPES)}, not '{self.dtype}'")

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        keep = {op.strip() for op in self.keep_fp32.split(",") if op.strip()}
        inferred = ir.infer_shapes(model)
        types = {name: elem for name, (elem, _) in ir.tensor_types(inferred).items()}
        for tensor in model.graph.initializer:
            types[tensor.name] = tensor.data_type
        half = HALF_TYPES[self.dtype]

        opset = ir.opset_version(model)
        half_name = "tensor(float16)" if self.dtype == "float16" else "tensor(bfloat16)"

        def schema_allows(node: onnx.NodeProto) -> bool:
            """Every float32 input and output of `node` may be half under its schema at this opset."""
            try:
                schema = onnx.defs.get_schema(node.op_type, opset, "")
            except onnx.defs.SchemaError:
                return False
            allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
            for names, formals in ((node.input, schema.inputs), (node.output, schema.outputs)):
                for position, name in enumerate(names):
                    if not name or types.get(name) != TensorProto.FLOAT:
                        continue
                    formal = formals[min(position, len(formals) - 1)]  # variadic: the last formal repeats
                    if half_name not in allowed.get(formal.type_str, {formal.type_str}):
                        return False
            return True

        # tensors If/Loop bodies read from the outer graph keep float32: the bodies expect it
        implicit = set().union(*(ir.subgraph_reads(node) for node in model.graph.node))

        selected = {name.strip() for name in self.nodes.split(",") if name.strip()}
        missing = selected - {node.name for node in model.graph.node}
        if missing:
            raise UsageError(f"convert-float16: no node named {', '.join(sorted(missing))}")

        def convertible(node: onnx.NodeProto) -> bool:
            if node.domain not in ir.DEFAULT_DOMAINS or node.op_type not in HALF_SAFE_OPS or node.op_type in keep:
                return False
            if selected and node.name not in selected:
                return False
            if implicit.intersection(node.output):
                return False
            if not schema_allows(node):
                return False
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                return False
            names = [n for n in list(node.input) + list(node.output) if n]
            # every float tensor of the node must be float32 with a known type
            return any(types.get(n) == TensorProto.FLOAT for n in names) and all(
                n in types for n in names)

        half_nodes = {index for index, node in enumerate(model.graph.node) if convertible(node)}  # positions
        if not half_nodes:
            return PassResult(model, False)

        result = onnx.ModelProto()
        result.CopyFrom(model)
        graph = result.graph
        taken = ir.names_in_use(graph)
        initializers = {t.name: t for t in graph.initializer}
        graph_inputs = {v.name for v in graph.input}
        producers_half: set[str] = set()  # float tensors a half node produces (they are half now)
        readers: dict[str, list[tuple[bool, onnx.NodeProto]]] = {}
        nodes = list(graph.node)
        for position, node in enumerate(nodes):
            is_half = position in half_nodes
            for name in node.input:
                if name and types.get(name) == TensorProto.FLOAT:
                    readers.setdefault(name, []).append((is_half, node))
            if is_half:
                producers_half.update(n for n in node.output if n and types.get(n) == TensorProto.FLOAT)

        casts_before: dict[int, list[onnx.NodeProto]] = {}  # node position -> casts inserted before it
        renamed: dict[tuple[str, bool], str] = {}  # (tensor, wants half) -> the name carrying that type
        new_initializers: list[onnx.TensorProto] = []
        clamped = 0

        def variant(name: str, want_half: bool, position: int) -> str:
            """The name of `name` in the requested type (a Cast or converted initializer if needed)."""
            nonlocal clamped
            is_half_now = name in producers_half
            if is_half_now == want_half:
                return name
            key = (name, want_half)
            if key in renamed:
                return renamed[key]
            if name in initializers and want_half and name not in graph_inputs:
                others = [r for r, _ in readers.get(name, []) if not r]
                array, count = _to_half(numpy_helper.to_array(initializers[name]), self.dtype)
                clamped += count
                if not others and name not in implicit:  # read only by half nodes: convert in place
                    initializers[name].CopyFrom(numpy_helper.from_array(array, name) if self.dtype == "float16"
                                                else _bf16_tensor(array, name))
                    renamed[key] = name
                    producers_half.add(name)
                    return name
                copy = ir.unique_name(f"{name}.{self.dtype}", taken)
                new_initializers.append(numpy_helper.from_array(array, copy) if self.dtype == "float16"
                                        else _bf16_tensor(array, copy))
                renamed[key] = copy
                return copy
            cast_name = ir.unique_name(f"{name}.to_{self.dtype if want_half else 'float32'}", taken)
            cast = helper.make_node("Cast", [name], [cast_name], name=ir.unique_name(f"{cast_name}/Cast", taken),
                                    to=half if want_half else TensorProto.FLOAT)
            casts_before.setdefault(position, []).append(cast)
            renamed[key] = cast_name
            return cast_name

        for position, node in enumerate(nodes):
            if node.op_type in TYPE_AGNOSTIC and node.domain in ir.DEFAULT_DOMAINS:
                continue  # Shape/Size read either type
            is_half = position in half_nodes
            for i, name in enumerate(node.input):
                if not name or types.get(name) != TensorProto.FLOAT:
                    continue
                node.input[i] = variant(name, is_half, position)

        # Each Cast goes right before its first reader, hence after its source's producer.
        ordered: list[onnx.NodeProto] = []
        for position, node in enumerate(nodes):
            ordered.extend(casts_before.get(position, []))
            ordered.append(node)

        # Graph outputs produced in half keep float32 (and their names) with a final Cast.
        for output in graph.output:
            if output.name in producers_half:
                inner = ir.unique_name(f"{output.name}.{self.dtype}", taken)
                for node in ordered:
                    node.output[:] = [inner if n == output.name else n for n in node.output]
                    node.input[:] = [inner if n == output.name else n for n in node.input]
                ordered.append(helper.make_node("Cast", [inner], [output.name],
                                                name=ir.unique_name(f"{output.name}/Cast", taken),
                                                to=TensorProto.FLOAT))

        del graph.node[:]
        graph.node.extend(ordered)
        graph.initializer.extend(new_initializers)
        del graph.value_info[:]
        if clamped:
            ctx.note(f"convert-float16: {clamped} weight value(s) beyond the float16 range were clamped to +-65504")
        kept = sorted({node.op_type for position, node in enumerate(nodes) if position not in half_nodes
                       and any(types.get(n) == TensorProto.FLOAT for n in list(node.input) + list(node.output))})
        if kept:
            ctx.note(f"convert-float16: kept in float32: {', '.join(kept)}")
        return PassResult(result, True)


def _bf16_tensor(array: np.ndarray, name: str) -> onnx.TensorProto:
    """A BFLOAT16 TensorProto (numpy_helper has no ml_dtypes round trip in every onnx version)."""
    bits = array.view(np.uint16).astype(np.uint16)
    return helper.make_tensor(name, TensorProto.BFLOAT16, array.shape, bits.tobytes(), raw=True)
