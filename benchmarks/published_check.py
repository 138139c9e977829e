"""Does the cost model agree with PUBLISHED measurements on the non-host targets?

Reads benchmarks/published_measurements.toml (every number there was copied or derived from a
public result file named in the entry: MLPerf Tiny and MLPerf Inference closed-division logs),
builds each measured network as an ONNX graph (onnx.helper + seeded random weights: the cost
model only needs shapes, dtypes and structure), runs mcc's estimate for the matching target at
the matching precision, and prints one markdown table:

    target | model | precision | published ms | predicted ms | predicted/published | note

then a per-(target, runtime) summary (geometric mean of the ratios). A ratio < 1 means mcc
predicts faster than the published run; > 1 slower. The published runs use vendor-tuned runtimes
(X-CUBE-AI, CMSIS-NN, TensorRT, ...), not mcc/TVM 0.27 code, so this checks the target figures
(peaks, bandwidth, overheads) and the assumed efficiencies against what tuned kernels reach; it is
not a fit and nothing here changes a target file.

The graphs follow the reference definitions (BatchNorm folded into the preceding layer):
- MLPerf Tiny (mlcommons/tiny, commit bceb91c5, benchmark/training/*):
  keyword_spotting/keras_model.py `ds_cnn` (49x10x1 input, 12 labels from train.py),
  visual_wake_words/vww_model.py `mobilenet_v1` (alpha 0.25: 8 first filters, 96x96x3, 2 classes),
  image_classification/keras_model.py `resnet_v1_eembc` (16/32/64 filters, 32x32x3, 10 classes),
  anomaly_detection/keras_model.py `get_model` (640 = n_mels 128 x frames 5 from baseline.yaml).
  Keras 'same' padding is reproduced exactly (asymmetric where TF pads more at the end).
  Layer shapes were checked against the reference .tflite files in the same commit
  (benchmark/training/*/trained_models/{kws_ref_model,vww_96_int8,pretrainedResnet_quant,ad01_int8}.tflite).
- MLPerf Inference ResNet-50 v1.5 (resnet50_v1.onnx: TF official resnet_model, stride 2 on the
  3x3 conv of each stage's first bottleneck), 1000-class FC, no Softmax (NVIDIA's engine drops it).

    python benchmarks/published_check.py [--data PATH] [--no-summary]

Runs offline in a few seconds and exits 0 (nonzero only if the data file or mcc fails).
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
import tomllib
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mcc.hwmodels import load_target
from mcc.hwmodels.costmodel import estimate
from mcc.toolchain import ir
from mcc.toolchain.driver import resolve_pipeline
from mcc.toolchain.passmanager import PassManager

HERE = Path(__file__).resolve().parent
DATA = HERE / "published_measurements.toml"
OPSET = 13


# --------------------------------------------------------------------------------------------------
# A tiny graph builder (NCHW, fp32, seeded random weights scaled by 1/sqrt(fan-in))


class Graph:
    def __init__(self, name: str, input_shape: list[int], seed: int = 0):
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(seed)
        self.count = 0
        self.input = helper.make_tensor_value_info("input", TensorProto.FLOAT, input_shape)

    def _fresh(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def _weight(self, base: str, shape: tuple[int, ...], fan_in: int) -> str:
        name = self._fresh(base)
        values = (self.rng.standard_normal(shape) / math.sqrt(max(fan_in, 1))).astype(np.float32)
        self.inits.append(numpy_helper.from_array(values, name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        out = self._fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, kernel: tuple[int, int], stride: int = 1,
             pads: tuple[int, int, int, int] = (0, 0, 0, 0), group: int = 1) -> str:
        """pads = (top, left, bottom, right) as ONNX orders them (begin H, begin W, end H, end W)."""
        kh, kw = kernel
        w = self._weight("w", (cout, cin // group, kh, kw), cin // group * kh * kw)
        b = self._weight("b", (cout,), 1)
        return self.op("Conv", [x, w, b], kernel_shape=[kh, kw], strides=[stride, stride],
                       pads=list(pads), group=group)

    def relu(self, x: str) -> str:
        return self.op("Relu", [x])

    def add(self, a: str, b: str) -> str:
        return self.op("Add", [a, b])

    def gemm(self, x: str, cin: int, cout: int) -> str:
        w = self._weight("w", (cout, cin), cin)
        b = self._weight("b", (cout,), 1)
        return self.op("Gemm", [x, w, b], transB=1)

    def model(self, output: str) -> onnx.ModelProto:
        out = helper.make_tensor_value_info(output, TensorProto.FLOAT, None)
        graph = helper.make_graph(self.nodes, self.name, [self.input], [out], initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="benchmarks/published_check.py")
        model.ir_version = 8
        # onnx.checker wants the output's shape: let shape inference fill it in
        inferred = onnx.shape_inference.infer_shapes(model)
        model.graph.output[0].CopyFrom(inferred.graph.output[0])
        return model


def tf_same_pads(size: tuple[int, int], kernel: tuple[int, int], stride: int) -> tuple[int, int, int, int]:
    """TensorFlow/Keras padding='same': out = ceil(in/stride), the odd pixel padded at the end."""
    begin, end = [], []
    for n, k in zip(size, kernel):
        out = -(-n // stride)
        total = max((out - 1) * stride + k - n, 0)
        begin.append(total // 2)
        end.append(total - total // 2)
    return (begin[0], begin[1], end[0], end[1])


# --------------------------------------------------------------------------------------------------
# The measured networks


def kws_dscnn() -> onnx.ModelProto:
    """DS-CNN (keyword_spotting/keras_model.py, model_name == 'ds_cnn')."""
    g = Graph("kws_ds_cnn", [1, 1, 49, 10])
    x = g.relu(g.conv("input", 1, 64, (10, 4), 2, tf_same_pads((49, 10), (10, 4), 2)))  # -> 25x5
    for _ in range(4):
        x = g.relu(g.conv(x, 64, 64, (3, 3), 1, (1, 1, 1, 1), group=64))  # depthwise 3x3
        x = g.relu(g.conv(x, 64, 64, (1, 1)))  # pointwise
    # AveragePooling2D(pool_size=(int(49/2), int(10/2))) = (24, 5), strides = pool size, valid -> 1x1
    x = g.op("AveragePool", [x], kernel_shape=[24, 5], strides=[24, 5])
    x = g.op("Flatten", [x], axis=1)
    x = g.op("Softmax", [g.gemm(x, 64, 12)], axis=-1)
    return g.model(x)


def vww_mobilenet_v1() -> onnx.ModelProto:
    """MobileNetV1 alpha 0.25 (visual_wake_words/vww_model.py)."""
    g = Graph("vww_mobilenet_v1_025", [1, 3, 96, 96])
    size = 96
    x = g.relu(g.conv("input", 3, 8, (3, 3), 2, tf_same_pads((size, size), (3, 3), 2)))
    size, channels = 48, 8
    # (depthwise stride, pointwise filters) for layers 2..14
    layers = [(1, 16), (2, 32), (1, 32), (2, 64), (1, 64), (2, 128)] + [(1, 128)] * 5 + [(2, 256), (1, 256)]
    for stride, filters in layers:
        x = g.relu(g.conv(x, channels, channels, (3, 3), stride, tf_same_pads((size, size), (3, 3), stride),
                          group=channels))
        size = -(-size // stride)
        x = g.relu(g.conv(x, channels, filters, (1, 1)))
        channels = filters
    x = g.op("AveragePool", [x], kernel_shape=[size, size], strides=[size, size])  # 3x3 -> 1x1
    x = g.op("Flatten", [x], axis=1)
    x = g.op("Softmax", [g.gemm(x, channels, 2)], axis=-1)
    return g.model(x)


def ic_resnet8() -> onnx.ModelProto:
    """ResNet-8 (image_classification/keras_model.py resnet_v1_eembc, num_filters 16/32/64)."""
    g = Graph("ic_resnet8", [1, 3, 32, 32])
    x = g.relu(g.conv("input", 3, 16, (3, 3), 1, (1, 1, 1, 1)))
    # first stack: identity shortcut
    y = g.relu(g.conv(x, 16, 16, (3, 3), 1, (1, 1, 1, 1)))
    y = g.conv(y, 16, 16, (3, 3), 1, (1, 1, 1, 1))
    x = g.relu(g.add(x, y))
    size, channels = 32, 16
    for filters in (32, 64):  # second and third stacks: stride 2, 1x1 stride-2 projection
        y = g.relu(g.conv(x, channels, filters, (3, 3), 2, tf_same_pads((size, size), (3, 3), 2)))
        y = g.conv(y, filters, filters, (3, 3), 1, (1, 1, 1, 1))
        s = g.conv(x, channels, filters, (1, 1), 2, tf_same_pads((size, size), (1, 1), 2))
        x = g.relu(g.add(s, y))
        size, channels = size // 2, filters
    x = g.op("AveragePool", [x], kernel_shape=[size, size], strides=[size, size])  # 8x8 -> 1x1
    x = g.op("Flatten", [x], axis=1)
    x = g.op("Softmax", [g.gemm(x, channels, 10)], axis=-1)
    return g.model(x)


def ad_autoencoder() -> onnx.ModelProto:
    """Dense autoencoder (anomaly_detection/keras_model.py get_model(640))."""
    g = Graph("ad_fc_autoencoder", [1, 640])
    x, width = "input", 640
    for units in (128, 128, 128, 128, 8, 128, 128, 128, 128):
        x = g.relu(g.gemm(x, width, units))
        width = units
    return g.model(g.gemm(x, width, 640))


def resnet50_v15() -> onnx.ModelProto:
    """ResNet-50 v1.5 as in MLPerf's resnet50_v1.onnx (stride on the 3x3 conv), 1000 classes."""
    g = Graph("resnet50_v1_5", [1, 3, 224, 224])
    x = g.relu(g.conv("input", 3, 64, (7, 7), 2, (3, 3, 3, 3)))  # 112x112
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])  # 56x56
    channels = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for index in range(blocks):
            s = stride if index == 0 else 1
            y = g.relu(g.conv(x, channels, width, (1, 1)))
            y = g.relu(g.conv(y, width, width, (3, 3), s, (1, 1, 1, 1)))
            y = g.conv(y, width, 4 * width, (1, 1))
            shortcut = g.conv(x, channels, 4 * width, (1, 1), s) if index == 0 else x
            x = g.relu(g.add(shortcut, y))
            channels = 4 * width
    x = g.op("GlobalAveragePool", [x])
    x = g.op("Flatten", [x], axis=1)
    return g.model(g.gemm(x, channels, 1000))


BUILDERS = {
    "kws-dscnn": kws_dscnn,
    "vww-mobilenetv1-0.25": vww_mobilenet_v1,
    "ic-resnet8": ic_resnet8,
    "ad-fc-autoencoder": ad_autoencoder,
    "resnet50-v1.5": resnet50_v15,
}


# --------------------------------------------------------------------------------------------------
# Estimation: the same steps as `mcc estimate` (static shapes, default pipeline, then the model)


def prepared(model: onnx.ModelProto) -> onnx.ModelProto:
    ir.name_nodes(model.graph)
    ir.check_structure(model)
    static, _ = ir.fix_input_shapes(model, {})
    optimized, _ = PassManager(resolve_pipeline(None)).run(static)
    return optimized


def fmt(value: float) -> str:
    if value >= 100:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.3f}"
    return f"{value:.4f}"


def short_source(entry: dict) -> str:
    repo = entry["source_repo"].split("/")[-1]
    submitter = entry["source_path"].split("/")[1]
    return f"{repo} {submitter}"


def mcc_revision() -> str:
    """The commit the estimates came from, and whether the cost model files differ from it."""
    try:
        head = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(HERE.parent), "status", "--porcelain", "--", "hwmodels"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head or 'unknown'}{' + uncommitted hwmodels changes' if dirty else ''}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DATA), help="measurements TOML [default: %(default)s]")
    parser.add_argument("--no-summary", action="store_true", help="print only the main table")
    args = parser.parse_args()

    start = time.perf_counter()
    with open(args.data, "rb") as handle:
        entries = tomllib.load(handle)["measurement"]

    models: dict[str, onnx.ModelProto] = {}
    targets: dict = {}
    rows = []
    for entry in entries:
        key = entry["model"]
        if key not in models:
            models[key] = prepared(BUILDERS[key]())
        if entry["target"] not in targets:
            targets[entry["target"]] = load_target(entry["target"])
        spec = targets[entry["target"]]
        result = estimate(models[key], spec, entry["precision"])
        published = float(entry["value"])
        ratio = result.latency_ms / published
        note = f"{entry['runtime']}; {short_source(entry)}"
        if entry.get("caveat"):
            note += f"; {entry['caveat']}"
        if entry["precision"] not in spec.peak_gops:
            note += f"; {spec.name} has no {entry['precision']} peak: estimated at its fp32 rate"
        rows.append((entry, result, published, ratio, note))

    print("| target | model | precision | published ms | predicted ms | predicted/published | note |")
    print("|---|---|---|---:|---:|---:|---|")
    for entry, result, published, ratio, note in rows:
        print(f"| {entry['target']} | {entry['model']} | {entry['precision']} | {fmt(published)} | "
              f"{fmt(result.latency_ms)} | {ratio:.2f} | {note} |")

    if not args.no_summary:
        groups: dict[tuple[str, str], list[float]] = defaultdict(list)
        for entry, _, _, ratio, _ in rows:
            groups[(entry["target"], f"{entry['runtime'].split(' (')[0]} ({entry['precision']})")].append(ratio)
        print()
        print("| target | runtime (precision) | n | geomean predicted/published | min | max |")
        print("|---|---|---:|---:|---:|---:|")
        for (target, runtime), ratios in groups.items():
            geomean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
            print(f"| {target} | {runtime} | {len(ratios)} | {geomean:.2f} | {min(ratios):.2f} | {max(ratios):.2f} |")
        print()
        print(f"{len(rows)} published measurements, {len(models)} models, {len(targets)} targets; "
              f"mcc {mcc_revision()}; {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
