"""Calibrate the host's cost-model profile from micro-benchmarks compiled through the TVM backend.

Each micro-benchmark is a one-op ONNX model, compiled exactly as `mcc compile` compiles (same
backend, same target) and timed from the exported library with TVM's time_evaluator; a
convolution with channels-last input and output where the backend runs it channels-last, so that
no layout transpose is timed with it (`channels_last_io`). The fit:

1. `kernel_us` = the time of a tiny kernel (Relu on 16 floats): dispatch cost, no work.
2. bandwidth: a large Add streams 3 x 16 MiB; effective GB/s = bytes / (time - overhead);
   `bandwidth_efficiency` = effective / the target's `dram_bandwidth_gb_s` (the peak is raised
   to the measurement if the assumed peak was lower). A small one (3 x 256 KiB) stays in cache
   between runs: `cache_bandwidth_gb_s`, the rate of a model that fits in `cache_kib`.
3. the peak: when compute-bound kernels run faster than the peak the reported clock gives (a CPU
   boosting above /proc/cpuinfo's "cpu MHz"), the peak is scaled by the fastest of them
   (`peak_scale`, at most MAX_PEAK_SCALE, from kernels that ran at least 5x the dispatch cost)
   and the profile keeps the effective clock, so a later clock reading does not move it.
   Fitted against the host as detected, never against an earlier profile's peak.
4. per op class: for each benchmark, the efficiency that makes the roofline prediction equal the
   measurement, eff = compute_s(eff = 1) / (time - overhead), when the kernel is compute-bound at
   that efficiency; the class's efficiency is the geometric mean over its shapes.
5. convolutions (all three conv classes) and matmuls also as a curve over reduction length
   (`fit_curve`), which the cost model interpolates when a profile has one.

The profile is written to the user cache (`hwmodels.host.calibration_path()`), keyed by the CPU,
and `load_target("host")` applies it from then on.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mcc.hwmodels import CURVE_CLASSES, TargetSpec, load_target
from mcc.hwmodels.costmodel import curve_size, estimate
from mcc.hwmodels.workload import model_work
from mcc.toolchain import ir
from mcc.backends.tvm.schedules import SCHEDULES_VERSION
from mcc.hwmodels.host import CALIBRATION_VERSION, calibration_path, cpu_fingerprint


#: the most the fit raises the host's peak above the reported clock's: boost clocks stay within 2x
#: of base; a larger ratio is a mismeasured kernel
MAX_PEAK_SCALE = 2.0

@dataclass(frozen=True)
class MicroBenchmark:
    name: str
    op_class: str  # an efficiency class, or "overhead" / "bandwidth" / "cache_bandwidth"
    build: Callable[[], onnx.ModelProto]


def _model(nodes, inputs: dict[str, list[int]], outputs: dict[str, list[int]], initializers=()) -> onnx.ModelProto:
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes, "micro", [value(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [value(n, TensorProto.FLOAT, s) for n, s in outputs.items()], initializer=list(initializers),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _weights(name: str, shape: tuple[int, ...]):
    rng = np.random.default_rng(0)
    return numpy_helper.from_array((rng.standard_normal(shape) * 0.05).astype(np.float32), name)


def _conv(cin: int, cout: int, size: int, kernel: int, stride: int = 1, group: int = 1) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        pad = kernel // 2
        out = (size + 2 * pad - kernel) // stride + 1
        node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[pad] * 4, strides=[stride] * 2,
                                group=group)
        return _model([node], {"x": [1, cin, size, size]}, {"y": [1, cout, out, out]},
                      [_weights("w", (cout, cin // group, kernel, kernel)), _weights("b", (cout,))])

    return build


def _matmul(m: int, k: int, n: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        node = helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")
        return _model([node], {"x": [m, k]}, {"y": [m, n]}, [_weights("w", (k, n))])

    return build


def _unary(op: str, shape: list[int], **attrs) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        return _model([helper.make_node(op, ["x"], ["y"], name=op.lower(), **attrs)], {"x": shape}, {"y": shape})

    return build


def _binary_add(elements: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        node = helper.make_node("Add", ["a", "b"], ["y"], name="add")
        return _model([node], {"a": [elements], "b": [elements]}, {"y": [elements]})

    return build


def _pool(channels: int, size: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        node = helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[3, 3], strides=[2, 2])
        out = (size - 3) // 2 + 1
        return _model([node], {"x": [1, channels, size, size]}, {"y": [1, channels, out, out]})

    return build


def _reduce_mean(rows: int, cols: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
        node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="mean", keepdims=1)
        graph = helper.make_graph(
            [node], "micro", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, cols])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, 1])], initializer=[axes])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)

    return build


def _transpose(shape: list[int]) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        node = helper.make_node("Transpose", ["x"], ["y"], name="transpose", perm=[0, 2, 3, 1])
        return _model([node], {"x": shape}, {"y": [shape[0], shape[2], shape[3], shape[1]]})

    return build


BENCHMARKS: tuple[MicroBenchmark, ...] = (
    MicroBenchmark("tiny-relu", "overhead", _unary("Relu", [16])),
    MicroBenchmark("add-16MiB", "bandwidth", _binary_add(4 * 2**20)),
    # 3 x 256 KiB stay in cache from one run to the next: a small model's weights and activations
    MicroBenchmark("add-256KiB", "cache_bandwidth", _binary_add(64 * 2**10)),
    # convolutions carry a bias, as nearly every convolution of a real model does once BatchNorm is
    # folded; the reduction lengths (cin / groups x window) sample where untuned kernels change speed
    MicroBenchmark("conv3x3-rgb-112", "conv", _conv(3, 32, 112, 3)),
    MicroBenchmark("conv3x3s2-rgb-112", "conv", _conv(3, 16, 112, 3, stride=2)),
    MicroBenchmark("conv3x3-7x56", "conv", _conv(7, 32, 56, 3)),
    MicroBenchmark("conv3x3-8x56", "conv", _conv(8, 32, 56, 3)),
    MicroBenchmark("conv3x3-12x28", "conv", _conv(12, 32, 28, 3)),
    MicroBenchmark("conv3x3s2-16x56", "conv", _conv(16, 32, 56, 3, stride=2)),
    MicroBenchmark("conv3x3-32x28", "conv", _conv(32, 32, 28, 3)),
    MicroBenchmark("conv3x3-64x14", "conv", _conv(64, 64, 14, 3)),
    MicroBenchmark("conv3x3-128x14", "conv", _conv(128, 128, 14, 3)),
    MicroBenchmark("conv3x3-256x7", "conv", _conv(256, 256, 7, 3)),
    MicroBenchmark("conv3x3-512x7", "conv", _conv(512, 64, 7, 3)),
    MicroBenchmark("conv1x1-16x56", "pointwise_conv", _conv(16, 64, 56, 1)),
    MicroBenchmark("conv1x1-32x56", "pointwise_conv", _conv(32, 64, 56, 1)),
    MicroBenchmark("conv1x1-40x28", "pointwise_conv", _conv(40, 64, 28, 1)),
    MicroBenchmark("conv1x1-48x28", "pointwise_conv", _conv(48, 64, 28, 1)),
    MicroBenchmark("conv1x1-64x28", "pointwise_conv", _conv(64, 64, 28, 1)),
    MicroBenchmark("conv1x1-96x28", "pointwise_conv", _conv(96, 64, 28, 1)),
    MicroBenchmark("conv1x1-128x14", "pointwise_conv", _conv(128, 128, 14, 1)),
    MicroBenchmark("conv1x1-256x28", "pointwise_conv", _conv(256, 64, 28, 1)),
    MicroBenchmark("conv1x1-512x14", "pointwise_conv", _conv(512, 128, 14, 1)),
    MicroBenchmark("conv1x1-1024x7", "pointwise_conv", _conv(1024, 256, 7, 1)),
    MicroBenchmark("dwconv3x3-64x28", "depthwise_conv", _conv(64, 64, 28, 3, group=64)),
    MicroBenchmark("dwconv5x5-32x56", "depthwise_conv", _conv(32, 32, 56, 5, group=32)),
    MicroBenchmark("dwconv7x7-32x28", "depthwise_conv", _conv(32, 32, 28, 7, group=32)),
    # matmuls by min(K, N) (`costmodel.curve_size`)
    MicroBenchmark("matvec-1x2048x128", "matmul", _matmul(1, 2048, 128)),
    MicroBenchmark("matmul-64x256x256", "matmul", _matmul(64, 256, 256)),
    MicroBenchmark("matvec-1x512x512", "matmul", _matmul(1, 512, 512)),
    MicroBenchmark("matvec-1x768x256", "matmul", _matmul(1, 768, 256)),
    MicroBenchmark("matvec-1x512x1024", "matmul", _matmul(1, 512, 1024)),
    MicroBenchmark("matvec-1x1024x1024", "matmul", _matmul(1, 1024, 1024)),
    MicroBenchmark("matvec-1x2048x2048", "matmul", _matmul(1, 2048, 2048)),
    MicroBenchmark("matvec-1x4096x1024", "matmul", _matmul(1, 4096, 1024)),
    MicroBenchmark("matvec-1x4096x4096", "matmul", _matmul(1, 4096, 4096)),
    MicroBenchmark("exp-64x56x56", "elementwise", _unary("Exp", [1, 64, 56, 56])),
    MicroBenchmark("relu-64x56x56", "elementwise", _unary("Relu", [1, 64, 56, 56])),
    MicroBenchmark("maxpool3x3s2-64x56", "pool", _pool(64, 56)),
    MicroBenchmark("softmax-64x1000", "reduction", _unary("Softmax", [64, 1000], axis=1)),
    MicroBenchmark("reducemean-256x1024", "reduction", _reduce_mean(256, 1024)),
    MicroBenchmark("transpose-64x56x56", "data_movement", _transpose([1, 64, 56, 56])),
)


def channels_last_io(model: onnx.ModelProto) -> onnx.ModelProto:
    """The one-convolution model with a channels-last (NHWC) input and output: a Transpose to NCHW
    before the convolution and one back after it.

    The backend runs convolutions channels-last (backends/tvm/layout.py). The NCHW model then gains
    a transpose of its input and of its output, which a real model pays once, not per convolution:
    in a micro-benchmark they took up to 64 % of the time (3 -> 32 channels at 112 x 112: 0.37 of
    0.58 ms). With NHWC at the boundaries the backend's transposes meet these and cancel: the input
    side becomes a view and the output side an identity in the convolution's epilogue, so the
    library runs the convolution kernel alone.
    """
    (value_in,), (value_out,) = model.graph.input, model.graph.output

    def to_nhwc(value) -> list[int]:
        return [value.type.tensor_type.shape.dim[axis].dim_value for axis in (0, 2, 3, 1)]

    nodes = [helper.make_node("Transpose", ["x_nhwc"], [value_in.name], perm=[0, 3, 1, 2], name="to_nchw"),
             *model.graph.node,
             helper.make_node("Transpose", [value_out.name], ["y_nhwc"], perm=[0, 2, 3, 1], name="to_nhwc")]
    graph = helper.make_graph(
        nodes, model.graph.name, [helper.make_tensor_value_info("x_nhwc", TensorProto.FLOAT, to_nhwc(value_in))],
        [helper.make_tensor_value_info("y_nhwc", TensorProto.FLOAT, to_nhwc(value_out))],
        initializer=list(model.graph.initializer))
    return helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def measure_ms(model: onnx.ModelProto, spec: TargetSpec, work_dir: Path, repeat: int) -> float:
    """Median latency in ms of the model compiled by mcc's TVM backend and loaded from disk (TVM's
    time_evaluator). A convolution is timed with channels-last input and output when the backend
    runs it channels-last (`channels_last_io`), so that only its own kernel is timed."""
    from mcc.backends import get_backend

    backend = get_backend(spec.backend)

    def compile_and_load(candidate: onnx.ModelProto):
        shapes = {value.name: tuple(d.dim_value for d in value.type.tensor_type.shape.dim)
                  for value in candidate.graph.input}
        library = work_dir / f"micro-{len(list(work_dir.iterdir()))}.so"
        artifact = backend.compile(candidate, spec.tvm(), shapes, library)
        return artifact, backend.load(library, candidate), shapes

    artifact, runner, shapes = None, None, None
    if any(node.op_type == "Conv" for node in model.graph.node):
        artifact, runner, shapes = compile_and_load(channels_last_io(model))
    if artifact is None or not artifact.details.get("channels_last_convolutions"):
        artifact, runner, shapes = compile_and_load(model)  # the backend keeps it NCHW: time it so
    rng = np.random.default_rng(0)
    inputs = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    return statistics.median(runner.time_ms(inputs, repeat=repeat))


def fit_profile(spec: TargetSpec, measured: dict[str, float]) -> dict:
    """Efficiencies, bandwidth and overhead that make the roofline match the measurements."""
    benchmarks = {b.name: b for b in BENCHMARKS}
    kernel_us = measured["tiny-relu"] * 1e3
    overhead_s = kernel_us * 1e-6
    bandwidth_time_s = max(measured["add-16MiB"] * 1e-3 - overhead_s, 1e-9)
    effective_gb_s = 3 * 4 * 4 * 2**20 / bandwidth_time_s / 1e9
    peak_gb_s = max(spec.dram_bandwidth_gb_s, effective_gb_s)
    cache_gb_s = 0.0
    if "add-256KiB" in measured:
        cache_time_s = max(measured["add-256KiB"] * 1e-3 - overhead_s, 1e-9)
        cache_gb_s = max(3 * 4 * 64 * 2**10 / cache_time_s / 1e9, effective_gb_s)
    base = dataclasses.replace(spec, kernel_overhead_us=kernel_us, dram_bandwidth_gb_s=peak_gb_s,
                               bandwidth_efficiency=effective_gb_s / peak_gb_s, cache_bandwidth_gb_s=cache_gb_s,
                               efficiency={name: 1.0 for name in spec.efficiency}, efficiency_curves={})
    per_class: dict[str, list[float]] = {}
    curve_points: dict[str, list[tuple[float, float]]] = {}  # class -> (curve size, efficiency)
    # (class, bound or lower, compute_s / work_s, curve size, work_s)
    points: list[tuple[str, str, float, float, float]] = []
    for name, latency_ms in measured.items():
        benchmark = benchmarks[name]
        if benchmark.op_class in ("overhead", "bandwidth", "cache_bandwidth"):
            continue
        model = benchmark.build()
        (kernel,) = estimate(model, base).kernels
        works, _ = model_work(ir.infer_shapes(model))
        work_s = max(latency_ms * 1e-3 - overhead_s, 1e-9)
        compute_s = kernel.compute_ms * 1e-3  # at efficiency 1
        memory_s = kernel.memory_ms * 1e-3
        if compute_s <= 0:
            continue
        # Within 10 % of the memory time a kernel is memory-bound: compute_s / work_s is then only a
        # lower bound of the efficiency, used when a class has no compute-bound measurement.
        kind = "bound" if work_s > 1.1 * memory_s else "lower"
        size = 0.0
        if benchmark.op_class in CURVE_CLASSES:
            size = curve_size(next(node for node in works if node.name == kernel.name))
        points.append((benchmark.op_class, kind, compute_s / work_s, size, work_s))
    # A compute-bound kernel faster than the nominal peak means the cores run above the clock
    # /proc/cpuinfo reports (an AMD EPYC VM reads 2.6 GHz; its 1x1 convolutions reached 1.5x that
    # peak). The peak is scaled by the fastest such kernel and efficiencies are taken against it,
    # where clamping them at 1 predicted squeezenet 74 % slow.
    peak_scale = min(max([1.0] + [raw for _, kind, raw, _, work_s in points
                                  if kind == "bound" and work_s >= 5 * overhead_s]), MAX_PEAK_SCALE)
    for op_class, kind, raw, size, _ in points:
        efficiency_point = min(raw / peak_scale, 1.0)
        per_class.setdefault(op_class, {"bound": [], "lower": []})[kind].append(efficiency_point)
        if op_class in CURVE_CLASSES:
            curve_points.setdefault(op_class, []).append((size, efficiency_point))
    efficiency = dict(spec.efficiency)
    for op_class, values in per_class.items():
        if values["bound"]:
            efficiency[op_class] = math.exp(statistics.fmean(math.log(v) for v in values["bound"]))
        else:
            efficiency[op_class] = max(values["lower"])
    if "conv" in per_class:
        # ops with no micro-benchmark of their own run as naive loops like conv does
        efficiency["other"] = efficiency["conv"]
    return {
        "efficiency": {k: float(f"{v:.6g}") for k, v in efficiency.items()},
        "efficiency_curves": {op_class: fit_curve(points) for op_class, points in sorted(curve_points.items())},
        "bandwidth_efficiency": float(f"{effective_gb_s / peak_gb_s:.6g}"),
        "dram_bandwidth_gb_s": float(f"{peak_gb_s:.6g}"),
        "cache_bandwidth_gb_s": float(f"{cache_gb_s:.6g}"),
        "kernel_us": float(f"{kernel_us:.6g}"),
        "peak_scale": float(f"{peak_scale:.6g}"),
        "effective_clock_ghz": float(f"{spec.clock_ghz * peak_scale:.6g}"),
    }


def fit_curve(points: list[tuple[float, float]]) -> list[list[float]]:
    """(size, efficiency) points sorted by size; repeated sizes merge by geometric mean.

    Untuned TVM kernels are loop nests whose cost per MAC depends mostly on the reduction length
    (input channels / groups x window for a convolution, K for a matmul), and not smoothly: measured
    here, a 1x1 convolution costs ~0.1 ns per MAC up to 32 input channels and ~0.4-0.9 ns beyond, a
    3x3 one ~0.1 ns up to 7 input channels and ~0.6-1.2 ns from 8; a matrix-vector product costs
    ~1-2.4 ns per MAC while K or N is at most 768, and 4-10 ns when both are 1000 or more
    (`costmodel.curve_size` gives the x of each class). One efficiency per class cannot describe
    that; the cost model interpolates between these points instead.
    """
    by_length: dict[float, list[float]] = {}
    for length, value in points:
        by_length.setdefault(round(length, 6), []).append(value)
    return [[length, float(f"{math.exp(statistics.fmean(math.log(v) for v in values)):.6g}")]
            for length, values in sorted(by_length.items())]


def calibrate(spec: TargetSpec, repeat: int = 10, progress: Callable[[str], None] | None = None) -> tuple[dict, Path]:
    """Run every micro-benchmark, fit the profile, and save it atomically in the user cache."""
    from mcc.hwmodels.host import without_profile

    if spec.detect_host and spec.path:
        with without_profile():  # the host as detected: an earlier profile's peak is not the base
            spec = load_target(spec.path)
    measured: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="mcc-calibrate-") as work:
        for benchmark in BENCHMARKS:
            if progress is not None:
                progress(benchmark.name)
            measured[benchmark.name] = measure_ms(benchmark.build(), spec, Path(work), repeat)
    profile = fit_profile(spec, measured)
    profile.update({
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "cpu_fingerprint": cpu_fingerprint(),
        "schedules_version": SCHEDULES_VERSION,
        "calibration_version": CALIBRATION_VERSION,
        "tvm_target": str(spec.tvm()),
        "measured_ms": {k: float(f"{v:.6g}") for k, v in measured.items()},
    })
    path = calibration_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + f".tmp{os.getpid()}")
    temporary.write_text(json.dumps(profile, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)
    return profile, path
