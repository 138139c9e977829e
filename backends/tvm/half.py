"""Float16 models computed in float32 on CPUs without half-precision arithmetic.

TVM compiles a float16 kernel with float16 arithmetic. Where the CPU has it (x86 AVX512-FP16,
AArch64 FP16), LLVM emits native instructions: squeezenet fp16 ran 782 `vfmadd*ph` and 0.65-0.72x
the float32 time on a Xeon with AVX512-FP16. Where it has not (x86 without AVX512-FP16: AMD Zen,
Intel's client parts and older Xeons; AArch64 before ARMv8.2), LLVM promotes *every operation* to float32 and rounds its result back to float16:
two conversions per multiply-add, and a float16 accumulator. squeezenet fp16 measured 13.2 ms
there, 7.8x its float32 twin (1.70 ms) and 8.1x onnxruntime, which computes such nodes in float32.

On those CPUs the backend compiles the model in float32 (`float16_as_float32`): float16 weights,
constants and casts become float32, each float16 graph input is cast to float32 once where it
enters and each float16 output cast back where it leaves. The graph's inputs and outputs keep
their float16 types, so the artifact has the same signature. The results are float32
computations of the same function, closer to a float32 reference than float16 arithmetic is.
Weights are stored as float32 in the artifact (twice the bytes); activations move as float32.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from mcc.toolchain import ir

#: LLVM features that give a CPU float16 arithmetic in vector registers
HALF_ARITHMETIC_FEATURES = ("avx512fp16", "fullfp16", "zvfh")

#: attributes that name an element type (Cast's `to`, EyeLike/Random*'s `dtype`)
DTYPE_ATTRIBUTES = frozenset({"to", "dtype"})

#: suffix of the float32 twin of a float16 graph input or output
FLOAT32_SUFFIX = "__as_float32"


def has_half_arithmetic(target) -> bool:
    """Whether LLVM compiles float16 arithmetic for `target` to native instructions."""
    from tvm.target import codegen

    if target.kind.name != "llvm":
        return True  # GPU targets: their own code generators
    for feature in HALF_ARITHMETIC_FEATURES:
        try:
            if bool(codegen.target_has_features(feature, target)):
                return True
        except Exception:  # a feature LLVM does not know for this architecture
            continue
    return False


def uses_float16(model: onnx.ModelProto) -> bool:
    graph = model.graph
    if any(t.data_type == TensorProto.FLOAT16 for t in graph.initializer):
        return True
    values = list(graph.input) + list(graph.output) + list(graph.value_info)
    if any(v.type.tensor_type.elem_type == TensorProto.FLOAT16 for v in values):
        return True
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.name in DTYPE_ATTRIBUTES and attribute.i == TensorProto.FLOAT16:
                return True
            if attribute.HasField("t") and attribute.t.data_type == TensorProto.FLOAT16:
                return True
    return False


def _widened(tensor: TensorProto) -> TensorProto:
    array = numpy_helper.to_array(tensor).astype(np.float32)
    return numpy_helper.from_array(array, tensor.name)


def float16_as_float32(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """(model computing in float32, float16 tensors widened). The model itself when it has no
    float16 or holds subgraphs (If/Loop bodies, left as written)."""
    graph = model.graph
    if not uses_float16(model) or any(
            attribute.HasField("g") or len(attribute.graphs) for node in graph.node
            for attribute in node.attribute):
        return model, 0
    if {t.name for t in graph.initializer} & {v.name for v in graph.output}:
        return model, 0  # a constant output (no node writes it): left as written
    if len(model.functions) or len(graph.sparse_initializer) or any(
            attribute.HasField("sparse_tensor") or len(attribute.tensors) for node in graph.node
            for attribute in node.attribute):
        return model, 0  # local functions, sparse or tensor-list constants: left as written
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    widened = 0
    for i, tensor in enumerate(graph.initializer):
        if tensor.data_type == TensorProto.FLOAT16:
            graph.initializer[i].CopyFrom(_widened(tensor))
            widened += 1
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.name in DTYPE_ATTRIBUTES and attribute.type == onnx.AttributeProto.INT \
                    and attribute.i == TensorProto.FLOAT16:
                attribute.i = TensorProto.FLOAT
                widened += 1
            elif attribute.HasField("t") and attribute.t.data_type == TensorProto.FLOAT16:
                attribute.t.CopyFrom(_widened(attribute.t))
                widened += 1

    taken = ir.names_in_use(graph)
    initializers = {t.name for t in graph.initializer}
    entry, renames = [], {}
    for value in graph.input:
        if value.type.tensor_type.elem_type != TensorProto.FLOAT16:
            continue
        if value.name in initializers:  # an initializer listed as an input (IR < 4): widened with it
            value.type.tensor_type.elem_type = TensorProto.FLOAT
            continue
        inside = ir.unique_name(value.name + FLOAT32_SUFFIX, taken)
        renames[value.name] = inside
        entry.append(onnx.helper.make_node("Cast", [value.name], [inside], to=TensorProto.FLOAT,
                                           name=ir.unique_name(inside + "_cast", taken)))
    ir.rename_reads(graph, renames)
    exits, done = [], set()
    inputs = {value.name for value in graph.input}
    for value in graph.output:
        if value.type.tensor_type.elem_type != TensorProto.FLOAT16 or value.name in inputs | done:
            continue  # a graph input passed through keeps its float16 tensor; a repeated output, its cast
        done.add(value.name)
        # the node that writes the output writes its float32 twin, which its readers read
        inside = ir.unique_name(value.name + FLOAT32_SUFFIX, taken)
        for node in graph.node:
            for i, name in enumerate(node.output):
                if name == value.name:
                    node.output[i] = inside
        ir.rename_reads(graph, {value.name: inside})
        exits.append(onnx.helper.make_node("Cast", [inside], [value.name], to=TensorProto.FLOAT16,
                                           name=ir.unique_name(value.name + "_cast", taken)))
    widened += len(entry) + len(exits)
    nodes = entry + list(graph.node) + exits
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # float16 shapes and types: re-inferred by whoever needs them
    return out, widened


def for_target(model: onnx.ModelProto, target) -> tuple[onnx.ModelProto, int]:
    """`model` as the backend compiles it for `target`: computed in float32 when it holds float16
    and the target has no half-precision arithmetic; (model, float16 tensors widened)."""
    if not uses_float16(model) or has_half_arithmetic(target):
        return model, 0
    return float16_as_float32(model)
