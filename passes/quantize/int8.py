"""Static int8 post-training quantization in QDQ form, calibrated on data.

For every Conv, MatMul and Gemm with a constant float32 weight:

- the weight becomes int8, **per output channel and symmetric**: scale[c] = max|W[c]| / 127,
  Wq = round(W / scale) in [-127, 127], followed by a DequantizeLinear (axis = the output channel);
- each activation input gets QuantizeLinear -> DequantizeLinear with **one scale per tensor**,
  int8, symmetric (zero point 0) or asymmetric (`symmetric-activations=false`, the default);
- the bias stays float (QDQ consumers read it as is; a backend that lowers the pattern to integer
  kernels requantizes it as int32 with scale_x * scale_w).

Activation ranges come from onnxruntime's calibrators run on the calibration data:
`minmax` (the observed range), `percentile` (for asymmetric activations, each tail of x cut by
half of what the `percentile` leaves; for symmetric ones, the percentile of |x|),
`entropy` (the threshold minimising the KL divergence of the int8 histogram). onnxruntime's own
`quantize_static` builds the entropy calibrator with as many quantized bins as histogram bins
(128/128), which leaves no threshold to choose and returns the min-max range; here it gets
2048 histogram bins and 128 quantized bins (TensorRT's setting), so it does clip outliers.
Measured on SqueezeNet (benchmarks/RESULTS.md): percentile gains 0.2 points of top-1 (60.3 %),
minmax loses 0.6, entropy 8 (it clips post-ReLU activations too hard for per-tensor int8), so
percentile is the default.

Calibration data (`calib-data`, see `mcc.passes.quantize.data`): an .npz with one array per graph
input (first axis = samples), a folder of images with a `preprocess.toml`, or `random` (seeded
uniform inputs; the report says so, since random ranges are not the deployment's).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mcc.passes.quantize.data import load_calibration
from mcc.toolchain import ir
from mcc.toolchain.errors import UsageError
from mcc.toolchain.passmanager import Pass, PassContext, PassResult

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
#: entropy calibration: histogram bins, and the quantized bins the KL divergence is measured at
ENTROPY_BINS = 2048
ENTROPY_QUANTIZED_BINS = 128
METHODS = ("minmax", "percentile", "entropy")


def weight_axis(node: onnx.NodeProto) -> int:
    """The output-channel axis of a node's weight (input 1)."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 1  # MatMul: [K, N]


def quantize_weight(weight: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(int8 values, float scales): symmetric, one scale per index of `axis` (the output
    channel), values in [-127, 127]."""
    weight = weight.astype(np.float64)
    reduce_axes = tuple(i for i in range(weight.ndim) if i != axis)
    bound = np.max(np.abs(weight), axis=reduce_axes) if weight.ndim > 1 else np.abs(weight)
    scale = np.where(bound > 0, bound / 127.0, 1.0)
    shaped = scale.reshape([-1 if i == axis else 1 for i in range(weight.ndim)])
    return np.clip(np.round(weight / shaped), -127, 127).astype(np.int8), scale


def calibrate_ranges(model: onnx.ModelProto, tensors: list[str], feeds: list[dict[str, np.ndarray]], method: str,
                     percentile: float, progress=None, symmetric: bool = False) -> dict[str, tuple[float, float]]:
    """(low, high) of each tensor in `tensors`, from onnxruntime's calibrator for `method`.

    `symmetric` (percentile only): one threshold, the percentile of |x|, for symmetric activations;
    otherwise each tail of x is cut by half of what the percentile leaves, for asymmetric ones
    (SqueezeNet: 60.3 % top-1 against 59.9 % with the |x| threshold). `progress(done, total)` is
    called as samples are fed.
    """
    from onnxruntime.quantization import calibrate as ort_calibrate

    class Reader(ort_calibrate.CalibrationDataReader):
        def __init__(self):
            self.items = iter(feeds)
            self.done = 0

        def get_next(self):
            item = next(self.items, None)
            if item is not None and progress is not None:
                self.done += 1
                progress(self.done, len(feeds))
            return item

    with tempfile.TemporaryDirectory(prefix="mcc-calibrate-") as work, \
            contextlib.redirect_stdout(io.StringIO()):  # the calibrators print their progress
        model_path = Path(work) / "model.onnx"
        onnx.save(ir.infer_shapes(model), str(model_path))  # the calibrator reads value_info
        augmented = str(Path(work) / "augmented.onnx")
        if method == "minmax":
            calibrator = ort_calibrate.MinMaxCalibrater(str(model_path), None, augmented, symmetric=False)
        elif method == "entropy":
            calibrator = ort_calibrate.EntropyCalibrater(str(model_path), None, augmented, symmetric=False,
                                                         num_bins=ENTROPY_BINS,
                                                         num_quantized_bins=ENTROPY_QUANTIZED_BINS)
        else:
            calibrator = ort_calibrate.PercentileCalibrater(str(model_path), None, augmented, symmetric=symmetric,
                                                            num_bins=2048, percentile=percentile)
        def select(loaded: onnx.ModelProto):  # exactly our activations (and their types, which it needs)
            infos = {v.name: v for v in list(loaded.graph.value_info) + list(loaded.graph.input)
                     + list(loaded.graph.output)}
            return {name for name in tensors if name in infos}, infos

        calibrator.select_tensors_to_calibrate = select
        calibrator.augment_graph()
        calibrator.create_inference_session()
        calibrator.collect_data(Reader())
        data = calibrator.compute_data()
    ranges = {}
    for name in tensors:
        if name in data:
            low, high = data[name].range_value
            ranges[name] = (float(np.asarray(low).reshape(-1)[0]), float(np.asarray(high).reshape(-1)[0]))
    return ranges


def activation_qparams(low: float, high: float, symmetric: bool) -> tuple[float, int]:
    """int8 scale and zero point covering [low, high] (0 always representable)."""
    low, high = min(low, 0.0), max(high, 0.0)
    if symmetric:
        bound = max(abs(low), abs(high))
        return (bound / 127.0 if bound > 0 else 1.0), 0
    if high == low:
        return 1.0, 0
    scale = (high - low) / 255.0
    zero_point = int(np.clip(round(-128 - low / scale), -128, 127))
    return scale, zero_point


@dataclass(frozen=True)
class QuantizeInt8(Pass):
    """Static int8 QDQ quantization: per-channel symmetric weights, calibrated per-tensor activations."""

    name: ClassVar[str] = "quantize-int8"
    changes_precision: ClassVar[bool] = True
    precision: ClassVar[str | None] = "int8"
    requires_static_shapes: ClassVar[bool] = True
    min_opset: ClassVar[int | None] = 13  # per-axis DequantizeLinear
    calib_data: str = ""
    method: str = "percentile"
    percentile: float = 99.999
    samples: int = 64
    symmetric_activations: bool = False
    #: nodes (comma-separated names) that stay in float: what a mixed-precision search falls back
    exclude: str = ""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not '{self.method}'")

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        targets = self.targets(model)
        if not targets:
            return PassResult(model, False)
        ranges, samples = self.calibrate(model, ctx)
        result = self.apply(model, ranges, ctx)
        ctx.note(f"quantize-int8: {len(targets)} Conv/MatMul/Gemm node(s) quantized, {len(ranges)} activation(s) "
                 f"calibrated by {self.method} on {samples} sample(s)"
                 + (f", {len(self.targets(model, all_nodes=True)) - len(targets)} node(s) kept in float"
                    if self.exclude else ""))
        return result

    def targets(self, model: onnx.ModelProto, *, all_nodes: bool = False) -> dict[int, onnx.NodeProto]:
        """The nodes to quantize, by position: Conv, MatMul and Gemm with a constant float32
        weight, except those named in `exclude` (unless `all_nodes`)."""
        initializers = {t.name: t for t in model.graph.initializer}
        excluded = set() if all_nodes else {name.strip() for name in self.exclude.split(",") if name.strip()}
        missing = excluded - {node.name for node in model.graph.node}
        if missing:
            raise UsageError(f"quantize-int8: exclude names no node: {', '.join(sorted(missing))}")
        return {
            index: node for index, node in enumerate(model.graph.node)
            if node.op_type in QUANTIZED_OPS and node.domain in ir.DEFAULT_DOMAINS and len(node.input) > 1
            and node.input[1] in initializers and initializers[node.input[1]].data_type == TensorProto.FLOAT
            and not (node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute))
            # per-output-channel needs a channel axis: Conv weights, and 2-D MatMul/Gemm weights
            and (len(initializers[node.input[1]].dims) == 2 or node.op_type == "Conv")
            and node.name not in excluded
        }

    def _activations(self, model: onnx.ModelProto, targets: dict[int, onnx.NodeProto]) -> list[str]:
        initializers = {t.name for t in model.graph.initializer}
        types = {name: elem for name, (elem, _) in ir.tensor_types(ir.infer_shapes(model)).items()}
        return sorted({node.input[0] for node in targets.values()
                       if node.input[0] not in initializers and types.get(node.input[0]) == TensorProto.FLOAT})

    def calibrate(self, model: onnx.ModelProto, ctx: PassContext) -> tuple[dict[str, tuple[float, float]], int]:
        """(activation ranges, samples used): every quantizable node's input (excluded ones too,
        so a mixed-precision search calibrates once)."""
        if not self.calib_data:
            raise UsageError("quantize-int8 needs calibration data: --calib-data FILE.npz (or `random`, "
                             "which the report flags)")
        activations = self._activations(model, self.targets(model, all_nodes=True))
        feeds = load_calibration(self.calib_data, model, self.samples)
        if self.calib_data == "random":
            ctx.note("quantize-int8: calibrated on RANDOM inputs (--calib-data random): activation ranges do not "
                     "reflect real data; accuracy may be much worse than with real calibration data")
        ranges = calibrate_ranges(model, activations, feeds, self.method, self.percentile,
                                  progress=lambda done, total: ctx.report_progress("calibrating", done, total),
                                  symmetric=self.symmetric_activations)
        return ranges, len(feeds)

    def apply(self, model: onnx.ModelProto, ranges: dict[str, tuple[float, float]], ctx: PassContext) -> PassResult:
        """Quantize the target nodes with the given activation ranges."""
        targets = self.targets(model)
        if not targets:
            return PassResult(model, False)
        activations = self._activations(model, targets)
        initializers = {t.name: t for t in model.graph.initializer}
        result = onnx.ModelProto()
        result.CopyFrom(model)
        graph = result.graph
        taken = ir.names_in_use(graph)
        new_initializers: list[onnx.TensorProto] = []
        qdq: dict[str, str] = {}  # activation -> its dequantized name
        inserted: dict[str, list[onnx.NodeProto]] = {}  # activation -> Q/DQ nodes (placed after its producer)
        for name in activations:
            if name not in ranges:
                continue
            scale, zero_point = activation_qparams(*ranges[name], self.symmetric_activations)
            scale_name = ir.unique_name(f"{name}.scale", taken)
            zp_name = ir.unique_name(f"{name}.zero_point", taken)
            quantized = ir.unique_name(f"{name}.int8", taken)
            dequantized = ir.unique_name(f"{name}.dq", taken)
            new_initializers += [numpy_helper.from_array(np.array(scale, np.float32), scale_name),
                                 numpy_helper.from_array(np.array(zero_point, np.int8), zp_name)]
            inserted[name] = [
                helper.make_node("QuantizeLinear", [name, scale_name, zp_name], [quantized],
                                 name=ir.unique_name(f"{name}/QuantizeLinear", taken)),
                helper.make_node("DequantizeLinear", [quantized, scale_name, zp_name], [dequantized],
                                 name=ir.unique_name(f"{name}/DequantizeLinear", taken)),
            ]
            qdq[name] = dequantized
        weight_dq: dict[str, str] = {}
        weight_nodes: list[onnx.NodeProto] = []
        for node in targets.values():
            weight_name = node.input[1]
            if weight_name not in weight_dq:
                axis = weight_axis(node)
                quantized, scale = quantize_weight(numpy_helper.to_array(initializers[weight_name]), axis)
                q_name = ir.unique_name(f"{weight_name}.int8", taken)
                s_name = ir.unique_name(f"{weight_name}.scale", taken)
                z_name = ir.unique_name(f"{weight_name}.zero_point", taken)
                dq_name = ir.unique_name(f"{weight_name}.dq", taken)
                new_initializers += [numpy_helper.from_array(quantized, q_name),
                                     numpy_helper.from_array(scale.astype(np.float32), s_name),
                                     numpy_helper.from_array(np.zeros(scale.shape, np.int8), z_name)]
                weight_nodes.append(helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [dq_name],
                                                     name=ir.unique_name(f"{weight_name}/DequantizeLinear", taken),
                                                     axis=axis))
                weight_dq[weight_name] = dq_name
        graph_inputs = {v.name for v in graph.input}
        ordered: list[onnx.NodeProto] = list(weight_nodes)
        ordered += [n for name in activations if name in graph_inputs for n in inserted.get(name, [])]
        for index, node in enumerate(graph.node):
            if index in targets:  # positions: `targets` holds the input model's nodes, these are the copy's
                if node.input[0] in qdq:
                    node.input[0] = qdq[node.input[0]]
                node.input[1] = weight_dq[node.input[1]]
            ordered.append(node)
            for output in node.output:
                ordered += inserted.get(output, [])
        # weights read only by quantized nodes are now stored as int8 only
        ir.replace_body(graph, ordered, new_initializers)
        return PassResult(result, True)
