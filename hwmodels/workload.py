"""Per-node work from inferred shapes: op class, MACs, arithmetic ops, tensors read and written.

Counting rules (one "op" = one arithmetic operation; a MAC is 2 ops):

- conv / pointwise_conv (1x1) / depthwise_conv / matmul: MACs from `toolchain.stats.node_macs`; ops = 2 x MACs.
- elementwise: one op per output element, times a weight for transcendental functions
  (exp, tanh, sigmoid, erf, log, pow, sqrt: 8 ops; the polynomial/LUT cost of libm-style code).
- pool: one op per input element read by a window (output elements x window size; global pools
  read every input element once).
- reduction: ops per input element (softmax 4: max, sub+exp, sum, div; reductions 1;
  normalizations 5).
- data_movement: no arithmetic, only bytes. Views (Reshape, Flatten, Squeeze, Unsqueeze,
  Identity, Dropout, Shape, Constant) are free: TVM lowers them to no kernel.

Tensor sizes are counted at the precision the node runs at (activations and weights alike), so a
"what if int8" question changes both the ops' rate and the bytes moved.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import onnx

from mcc.toolchain import ir
from mcc.toolchain.stats import node_macs

BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "int8": 1}

CONV_OPS = {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "DeformConv"}
MATMUL_OPS = {"MatMul", "Gemm", "MatMulInteger", "QLinearMatMul", "Einsum", "LSTM", "GRU", "RNN"}
MAC_CLASSES = ("conv", "pointwise_conv", "depthwise_conv", "matmul")
#: ops that read only output-sized slices of their data input (input 0)
SLICING_OPS = {"Gather", "GatherElements", "GatherND", "Slice"}
POOL_OPS = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool", "MaxRoiPool"}
REDUCTION_OPS = {
    "ReduceMax", "ReduceMin", "ReduceSum", "ReduceMean", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin", "Softmax", "LogSoftmax", "Hardmax", "TopK", "CumSum",
    "LayerNormalization", "InstanceNormalization", "GroupNormalization", "LpNormalization", "RMSNormalization",
    "MeanVarianceNormalization", "LRN",
}
DATA_MOVEMENT_OPS = {
    "Transpose", "Concat", "Split", "Slice", "Gather", "GatherElements", "GatherND", "Pad", "Expand", "Tile",
    "Resize", "Upsample", "DepthToSpace", "SpaceToDepth", "ScatterND", "ScatterElements", "ConstantOfShape",
    "Range", "OneHot", "NonZero", "Compress", "ReverseSequence", "Trilu", "EyeLike",
}
VIEW_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Shape", "Size", "Constant"}
ELEMENTWISE_OPS = {
    "Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Clip", "Neg", "Abs",
    "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Max", "Min", "Sum", "Mean", "Cast", "CastLike", "Where",
    "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Not", "And", "Or", "Xor", "BitShift", "Mod",
    "HardSigmoid", "HardSwish", "BatchNormalization", "QuantizeLinear", "DequantizeLinear", "IsNaN", "IsInf",
    "ThresholdedRelu", "Shrink", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot",
}
TRANSCENDENTAL_OPS = {
    "Exp", "Log", "Tanh", "Sigmoid", "Erf", "Pow", "Sqrt", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh",
    "Cosh", "Asinh", "Acosh", "Atanh", "Softplus", "Softsign", "Mish", "Gelu", "Swish",
}
TRANSCENDENTAL_WEIGHT = 8.0
REDUCTION_WEIGHT = {"Softmax": 4.0, "LogSoftmax": 5.0, "LayerNormalization": 5.0, "InstanceNormalization": 5.0,
                    "GroupNormalization": 5.0, "RMSNormalization": 4.0, "MeanVarianceNormalization": 5.0, "LRN": 6.0}


@dataclass(frozen=True)
class NodeWork:
    """What one node costs before precision and target are applied."""

    index: int
    name: str
    op_type: str
    op_class: str  # one of hwmodels.schema.OP_CLASSES, or "view"
    macs: int
    ops: float
    inputs: tuple[str, ...]  # activation tensors read (not initializers)
    weights: tuple[str, ...]  # initializers read
    input_names: tuple[str, ...]  # every non-empty input, in order (activations and weights)
    outputs: tuple[str, ...]
    output_shape: tuple[int, ...] | None


def classify(node: onnx.NodeProto, types: dict) -> str:
    op = node.op_type
    if op in VIEW_OPS:
        return "view"
    if op in CONV_OPS:
        group = next((attr.i for attr in node.attribute if attr.name == "group"), 1)
        weight_index = 3 if op == "QLinearConv" else 1
        entry = types.get(node.input[weight_index]) if len(node.input) > weight_index else None
        weight = ir.static_shape(entry[1]) if entry else None
        if group > 1 and weight is not None and len(weight) > 1 and weight[1] == 1:
            return "depthwise_conv"
        if op != "ConvTranspose" and weight is not None and len(weight) > 2 and all(k == 1 for k in weight[2:]):
            return "pointwise_conv"
        return "conv"
    if op in MATMUL_OPS:
        return "matmul"
    if op in POOL_OPS:
        return "pool"
    if op in REDUCTION_OPS:
        return "reduction"
    if op in DATA_MOVEMENT_OPS:
        return "data_movement"
    if op in ELEMENTWISE_OPS or op in TRANSCENDENTAL_OPS:
        return "elementwise"
    return "other"


def _elements(name: str, types: dict) -> int | None:
    entry = types.get(name)
    shape = ir.static_shape(entry[1]) if entry else None
    return None if shape is None else int(prod(shape))


def _attr_ints(node: onnx.NodeProto, name: str) -> list[int]:
    for attr in node.attribute:
        if attr.name == name:
            return list(attr.ints)
    return []


def node_ops(node: onnx.NodeProto, op_class: str, macs: int, types: dict) -> float:
    out = _elements(node.output[0], types) if node.output else None
    first_in = _elements(node.input[0], types) if node.input and node.input[0] else None
    if op_class in MAC_CLASSES:
        return 2.0 * macs
    if op_class == "elementwise":
        weight = TRANSCENDENTAL_WEIGHT if node.op_type in TRANSCENDENTAL_OPS else 1.0
        return weight * (out or 0)
    if op_class == "pool":
        if node.op_type.startswith("Global"):
            return float(first_in or 0)
        kernel = _attr_ints(node, "kernel_shape")
        return float((out or 0) * (prod(kernel) if kernel else 1))
    if op_class == "reduction":
        return REDUCTION_WEIGHT.get(node.op_type, 1.0) * (first_in or 0)
    if op_class == "other":
        return float(out or 0)
    return 0.0


def model_work(model: onnx.ModelProto) -> tuple[list[NodeWork], dict]:
    """Work of every node of a shape-inferred model, and the tensor type table used."""
    types = ir.tensor_types(model)
    constants = {tensor.name for tensor in model.graph.initializer}
    constants |= {node.output[0] for node in model.graph.node if node.op_type == "Constant" and node.output}
    works = []
    for index, node in enumerate(model.graph.node):
        op_class = classify(node, types)
        macs = (node_macs(node, types) or 0) if op_class in MAC_CLASSES else 0
        entry = types.get(node.output[0]) if node.output else None
        works.append(
            NodeWork(
                index=index,
                name=node.name or f"{node.op_type}_{index}",
                op_type=node.op_type,
                op_class=op_class,
                macs=int(macs),
                ops=node_ops(node, op_class, int(macs), types),
                inputs=tuple(name for name in node.input if name and name not in constants),
                weights=tuple(name for name in node.input if name in constants),
                input_names=tuple(name for name in node.input if name),
                outputs=tuple(name for name in node.output if name),
                output_shape=ir.static_shape(entry[1]) if entry else None,
            )
        )
    return works, types


def tensor_bytes(name: str, types: dict, precision: str) -> float:
    """Bytes of a tensor at `precision` (non-float tensors, and every tensor under "native", keep their own size)."""
    entry = types.get(name)
    if entry is None:
        return 0.0
    elements = _elements(name, types)
    if elements is None:
        return 0.0
    dtype = ir.tensor_dtype(entry[0]) if entry[0] else None
    if dtype is not None and (dtype.kind != "f" or precision == "native"):
        return float(elements * dtype.itemsize)
    return float(elements * BYTES_PER_ELEMENT.get(precision, 4))


def native_precision(name: str, types: dict) -> str:
    """The precision a tensor's dtype implies: fp16 for half floats, int8 for 8-bit ints, else fp32."""
    entry = types.get(name)
    dtype = ir.tensor_dtype(entry[0]) if entry and entry[0] else None
    if dtype is None:
        return "fp32"
    if dtype.itemsize == 2 and dtype.kind == "f" or dtype.name == "bfloat16":
        return "fp16"
    if dtype.itemsize == 1 and dtype.kind in "iu":
        return "int8"
    return "fp32"


def qdq_precisions(model: onnx.ModelProto, works: list[NodeWork]) -> dict[str, str]:
    """Layers of a QDQ model that compute in int8: multiply-accumulate nodes whose activation and
    weight both come from DequantizeLinear of 8-bit integers (what quantize-int8 writes and
    backends lower to integer kernels). Name -> "int8"."""
    producers = {output: node for node in model.graph.node for output in node.output}
    types = ir.tensor_types(model)
    initializers = {tensor.name: tensor.data_type for tensor in model.graph.initializer}

    def int8_dequantized(name: str) -> bool:
        node = producers.get(name)
        if node is None or node.op_type != "DequantizeLinear":
            return False
        source = node.input[0]
        elem = initializers.get(source) or (types.get(source) or (None, None))[0]
        dtype = ir.tensor_dtype(elem) if elem else None
        return dtype is not None and dtype.itemsize == 1 and dtype.kind in "iu"

    def grouped(work: NodeWork) -> bool:
        node = model.graph.node[work.index]
        return any(a.name == "group" and a.i > 1 for a in node.attribute)

    # grouped and depthwise convolutions stay float in mcc's integer lowering (backends/tvm/integer.py)
    return {work.name: "int8" for work in works
            if work.op_class in MAC_CLASSES and len(work.input_names) >= 2 and not grouped(work)
            and all(int8_dequantized(name) for name in work.input_names[:2])}
