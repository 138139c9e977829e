"""int8 without calibration data: weight-only (`quantize-weights`) and dynamic (`quantize-dynamic`)
quantization of MatMul and Gemm, for models whose time and size are in their matrix products
(transformers, recurrent and dense classifiers).

Both store each constant 2-D weight as int8, symmetric, one scale per output column (the same
weight quantization as quantize-int8; 4x smaller weights):

- `quantize-weights`: DequantizeLinear(W_int8) feeds the unchanged MatMul/Gemm; activations and
  arithmetic stay float. Only the stored model shrinks; accuracy is that of int8 weights alone.
- `quantize-weights-int4`: the same with int4 values and one scale per block of `block-size`
  (default 32) elements along the reduction axis (opset 21's blocked DequantizeLinear; 8x smaller
  weights). TVM 0.27 cannot read int4 initializers: its backend folds such constant dequantizations
  to float32 before import (the compiled artifact computes in float either way).
- `quantize-dynamic`: the activation is quantized at run time, per call, to uint8 over its own
  observed range (DynamicQuantizeLinear), multiplied in integers (MatMulInteger, int32 sums) and
  rescaled: y = float(acc) * (x_scale * w_scale[n]) (+ beta * C for Gemm). No calibration data:
  the ranges adapt to every input, at the cost of computing them. onnxruntime's quantize_dynamic
  writes the same pattern (with per-tensor weights); TVM imports both ops and computes the integer
  product exactly (widened to int32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mcc.passes.quantize.int8 import quantize_weight, weight_axis
from mcc.toolchain import ir
from mcc.toolchain.passmanager import Pass, PassContext, PassResult

MATRIX_OPS = ("MatMul", "Gemm")


def _attr(node: onnx.NodeProto, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _matrix_nodes(model: onnx.ModelProto) -> list[tuple[int, onnx.NodeProto]]:
    """MatMul/Gemm nodes whose weight (input 1) is a constant float32 matrix."""
    initializers = {t.name: t for t in model.graph.initializer}
    found = []
    for index, node in enumerate(model.graph.node):
        if node.op_type not in MATRIX_OPS or node.domain not in ir.DEFAULT_DOMAINS or len(node.input) < 2:
            continue
        weight = initializers.get(node.input[1])
        if weight is None or weight.data_type != TensorProto.FLOAT or len(weight.dims) != 2:
            continue
        if node.op_type == "Gemm" and _attr(node, "transA", 0):
            continue
        found.append((index, node))
    return found


def _dequantized_weights(model: onnx.ModelProto, targets: dict[int, onnx.NodeProto], quantize) -> tuple[
        onnx.ModelProto, int]:
    """`model` with each target's weight replaced by DequantizeLinear of its quantized form.

    `quantize(node, weight) -> (values TensorProto maker, scale, DequantizeLinear attributes,
    suffix)`: `values(name)` builds the stored tensor. Returns (model, weights replaced)."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    taken = ir.names_in_use(result.graph)
    initializers = {t.name: t for t in model.graph.initializer}
    dequantized: dict[str, str] = {}
    new_initializers: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    for index, node in enumerate(result.graph.node):
        if index in targets:
            weight_name = node.input[1]
            if weight_name not in dequantized:
                values, scale, attrs, suffix = quantize(node, numpy_helper.to_array(initializers[weight_name]))
                q_name, s_name, out = (ir.unique_name(f"{weight_name}.{part}", taken) for part in (suffix, "scale", "dq"))
                new_initializers += [values(q_name), numpy_helper.from_array(scale.astype(np.float32), s_name)]
                nodes.append(helper.make_node("DequantizeLinear", [q_name, s_name], [out], **attrs,
                                              name=ir.unique_name(f"{weight_name}/DequantizeLinear", taken)))
                dequantized[weight_name] = out
            node.input[1] = dequantized[weight_name]
        nodes.append(node)
    ir.replace_body(result.graph, nodes, new_initializers)
    return result, len(dequantized)


@dataclass(frozen=True)
class QuantizeWeights(Pass):
    """Weight-only int8: MatMul/Gemm weights stored as int8 per output column, dequantized before the op."""

    name: ClassVar[str] = "quantize-weights"
    changes_precision: ClassVar[bool] = True
    precision: ClassVar[str | None] = "int8"
    min_opset: ClassVar[int | None] = 13  # per-axis DequantizeLinear

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        targets = dict(_matrix_nodes(model))
        if not targets:
            return PassResult(model, False)

        def quantize(node, weight):
            axis = weight_axis(node)
            values, scale = quantize_weight(weight, axis)
            return (lambda name: numpy_helper.from_array(values, name)), scale, {"axis": axis}, "int8"

        result, count = _dequantized_weights(model, targets, quantize)
        ctx.note(f"quantize-weights: {count} MatMul/Gemm weight(s) stored as int8")
        return PassResult(result, True)


def quantize_blockwise_int4(weight: np.ndarray, axis: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(int4 values in [-7, 7] as int8, float scales): symmetric, one scale per `block_size`
    consecutive elements along `axis` (the reduction axis) and per index of the other axis."""
    weight = weight.astype(np.float64)
    moved = np.moveaxis(weight, axis, 0)  # [K, N]
    k = moved.shape[0]
    blocks = -(-k // block_size)
    padded = np.zeros((blocks * block_size, *moved.shape[1:]))
    padded[:k] = moved
    bound = np.abs(padded.reshape(blocks, block_size, *moved.shape[1:])).max(axis=1)  # [blocks, N]
    scale = np.where(bound > 0, bound / 7.0, 1.0)
    values = np.clip(np.round(moved / np.repeat(scale, block_size, axis=0)[:k]), -7, 7).astype(np.int8)
    return np.moveaxis(values, 0, axis), np.moveaxis(scale, 0, axis)


@dataclass(frozen=True)
class QuantizeWeightsInt4(Pass):
    """Blockwise int4 weights: MatMul/Gemm weights stored as int4 with one scale per block of the reduction axis."""

    name: ClassVar[str] = "quantize-weights-int4"
    changes_precision: ClassVar[bool] = True
    precision: ClassVar[str | None] = "int8"
    min_opset: ClassVar[int | None] = 21  # int4 and blocked DequantizeLinear
    #: elements of the reduction axis (K) sharing a scale
    block_size: int = 32

    def __post_init__(self) -> None:
        if self.block_size < 2:
            raise ValueError(f"block-size must be at least 2, not {self.block_size}")

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        targets = dict(_matrix_nodes(model))
        if not targets:
            return PassResult(model, False)
        if (ir.opset_version(model) or 0) < self.min_opset:
            # run outside a pass manager (which upgrades first): int4 does not exist before opset 21
            ctx.note(f"quantize-weights-int4: skipped, the model's opset {ir.opset_version(model)} has no int4 "
                     f"(run it in a pipeline: the pass manager upgrades to {self.min_opset})")
            return PassResult(model, False)

        def quantize(node, weight):
            # the reduction axis: K of MatMul's [K, N], of Gemm's [K, N] or (transB) [N, K]
            axis = 1 if node.op_type == "Gemm" and _attr(node, "transB", 0) else 0
            values, scale = quantize_blockwise_int4(weight, axis, self.block_size)

            def tensor(name):
                return helper.make_tensor(name, TensorProto.INT4, list(values.shape), values.reshape(-1).tolist())

            return tensor, scale, {"axis": axis, "block_size": self.block_size}, "int4"

        result, count = _dequantized_weights(model, targets, quantize)
        ctx.note(f"quantize-weights-int4: {count} MatMul/Gemm weight(s) stored as int4, blocks of "
                 f"{self.block_size}")
        return PassResult(result, True)


@dataclass(frozen=True)
class QuantizeDynamic(Pass):
    """Dynamic int8: MatMul/Gemm activations quantized per call, integer products, int8 weights per output column."""

    name: ClassVar[str] = "quantize-dynamic"
    changes_precision: ClassVar[bool] = True
    precision: ClassVar[str | None] = "int8"
    min_opset: ClassVar[int | None] = 11  # DynamicQuantizeLinear

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        initializers = {t.name: t for t in model.graph.initializer}
        types = {name: elem for name, (elem, _) in ir.tensor_types(ir.infer_shapes(model)).items()}
        targets = {}
        for index, node in _matrix_nodes(model):
            if types.get(node.input[0]) != TensorProto.FLOAT:
                continue  # a float16 or unknown activation
            if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] and node.input[2] not in initializers:
                continue  # a computed C: not folded into a constant bias
            targets[index] = node
        if not targets:
            return PassResult(model, False)
        result = onnx.ModelProto()
        result.CopyFrom(model)
        taken = ir.names_in_use(result.graph)
        new_initializers: list[onnx.TensorProto] = []
        nodes: list[onnx.NodeProto] = []
        activations: dict[str, tuple[str, str, str]] = {}  # float input -> (xq, x_scale, x_zero_point)
        for index, node in enumerate(result.graph.node):
            if index not in targets:
                nodes.append(node)
                continue
            prefix = node.name or f"{node.op_type}_{index}"
            weight = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float64)
            alpha, beta = 1.0, 1.0
            if node.op_type == "Gemm":
                alpha, beta = float(_attr(node, "alpha", 1.0)), float(_attr(node, "beta", 1.0))
                if _attr(node, "transB", 0):
                    weight = weight.T  # [N, K] -> [K, N]: MatMulInteger's layout
            values, scale = quantize_weight(weight, axis=1)
            source = node.input[0]
            if source not in activations:
                names = tuple(ir.unique_name(f"{source}.{suffix}", taken) for suffix in ("uint8", "scale", "zero_point"))
                nodes.append(helper.make_node("DynamicQuantizeLinear", [source], list(names),
                                              name=ir.unique_name(f"{source}/DynamicQuantizeLinear", taken)))
                activations[source] = names
            xq, x_scale, x_zero = activations[source]
            w_name, ws_name, acc, accf, rescale, product = (
                ir.unique_name(f"{prefix}.{suffix}", taken)
                for suffix in ("weight_int8", "weight_scale", "int32", "float", "rescale", "product"))
            new_initializers += [numpy_helper.from_array(values, w_name),
                                 numpy_helper.from_array((alpha * scale).astype(np.float32), ws_name)]
            output = node.output[0]
            bias = None
            if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
                bias = numpy_helper.to_array(initializers[node.input[2]]).astype(np.float64) * beta
            nodes += [
                helper.make_node("MatMulInteger", [xq, w_name, x_zero], [acc], name=ir.unique_name(f"{prefix}/MatMulInteger", taken)),
                helper.make_node("Cast", [acc], [accf], to=TensorProto.FLOAT, name=ir.unique_name(f"{prefix}/Cast", taken)),
                helper.make_node("Mul", [x_scale, ws_name], [rescale], name=ir.unique_name(f"{prefix}/Scale", taken)),
                helper.make_node("Mul", [accf, rescale], [product if bias is not None else output],
                                 name=ir.unique_name(f"{prefix}/Rescale", taken)),
            ]
            if bias is not None:
                bias_name = ir.unique_name(f"{prefix}.bias", taken)
                new_initializers.append(numpy_helper.from_array(bias.astype(np.float32), bias_name))
                nodes.append(helper.make_node("Add", [product, bias_name], [output],
                                              name=ir.unique_name(f"{prefix}/Bias", taken)))
        ir.replace_body(result.graph, nodes, new_initializers)
        ctx.note(f"quantize-dynamic: {len(targets)} MatMul/Gemm node(s) with int8 weights and per-call uint8 activations")
        return PassResult(result, True)
