"""int8 accuracy, size and latency, side by side: fp32 vs mcc's quantize-int8 vs onnxruntime's quantize_static.

Models and data from ../shared/models (see its README for provenance and reference accuracies):

- MNIST (mnist_cntk_opset7.onnx) on its 10,000 test images;
- SqueezeNet 1.0 (fp32) on the 1,000 ImageNet sample images (BGR, 0..255, mean [104,117,123]).

Calibration uses every 10th image of the evaluation set for SqueezeNet (100 images) and the first
500 test images for MNIST: the sets are small, so calibration and evaluation overlap (ranges only,
never labels). For each model: top-1 / top-5 under onnxruntime (ORT_DISABLE_ALL, so each graph
runs as written) for fp32, mcc int8 (percentile, minmax and entropy calibration) and
onnxruntime's `quantize_static` with its defaults (QDQ, per-tensor weights, MinMax); weight bytes;
and, with `--latency`, the untuned TVM latency of the fp32 and mcc int8 artifacts and the
onnxruntime int8/fp32 latency ratio (ORT_ENABLE_ALL).

    python benchmarks/quantization.py [--models mnist,squeezenet] [--latency]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from mcc.passes.quantize.int8 import QuantizeInt8
from mcc.toolchain import ir
from mcc.toolchain.driver import resolve_pipeline
from mcc.toolchain.passmanager import PassContext, PassManager

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "models"


def mnist_data():
    def read(name, offset):
        with gzip.open(SHARED / "mnist" / name) as handle:
            return np.frombuffer(handle.read(), np.uint8, offset=offset)

    images = read("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 1, 1, 28, 28).astype(np.float32)
    labels = read("t10k-labels-idx1-ubyte.gz", 8).astype(np.int64)
    return images, labels, images[:500]


def squeezenet_data():
    from PIL import Image

    folder = SHARED / "squeezenet" / "imagenet_sample_224"
    files = sorted(folder.glob("*.jpg"))
    mean = np.array([104.0, 117.0, 123.0], np.float32).reshape(1, 3, 1, 1)
    images = []
    for path in files:
        rgb = np.asarray(Image.open(path).convert("RGB"), np.float32)
        bgr = rgb[:, :, ::-1].transpose(2, 0, 1)[None]
        images.append(bgr - mean)
    images = np.stack(images)  # [N, 1, 3, 224, 224]
    return images, np.arange(len(files)), images[::10]


MODELS = {
    "mnist": ("mnist/mnist_cntk_opset7.onnx", mnist_data),
    "squeezenet": ("squeezenet/squeezenet1.0_fp32_opset7.onnx", squeezenet_data),
}


def session(model: onnx.ModelProto, optimized: bool = False):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimized
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def accuracy(model: onnx.ModelProto, images: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    runner = session(model)
    name = runner.get_inputs()[0].name
    top1 = top5 = 0
    for image, label in zip(images, labels):
        scores = runner.run(None, {name: image})[0].reshape(-1)
        best = np.argsort(scores)[::-1][:5]
        top1 += best[0] == label
        top5 += label in best
    return 100.0 * top1 / len(labels), 100.0 * top5 / len(labels)


def weight_bytes(model: onnx.ModelProto) -> int:
    return sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer if len(t.dims) > 1)


def ort_quantize_static(model: onnx.ModelProto, calibration: np.ndarray, work: Path) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    name = ir.graph_inputs(model)[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(calibration)

        def get_next(self):
            item = next(self.items, None)
            return None if item is None else {name: item}

    source, target = work / "fp32.onnx", work / "ort_int8.onnx"
    onnx.save(ir.infer_shapes(model), str(source))
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_static(str(source), str(target), Reader())
    return onnx.load(str(target))


def latency_ms(run, repeat: int = 5) -> float:
    run()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        samples.append((time.perf_counter() - start) * 1e3)
    return float(np.median(samples))


def tvm_ms(model: onnx.ModelProto, feed: dict, work: Path) -> float:
    from mcc.backends import get_backend
    from mcc.hwmodels import load_target
    from mcc.toolchain.driver import capture_native_output

    backend = get_backend("tvm-llvm")
    library = work / f"lib{len(list(work.iterdir()))}.so"
    shapes = {name: value.shape for name, value in feed.items()}
    with capture_native_output():
        backend.compile(model, load_target("host").tvm(), shapes, library)
        runner = backend.load(library, model)
    return latency_ms(lambda: runner.run(feed))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mnist,squeezenet")
    parser.add_argument("--latency", action="store_true")
    args = parser.parse_args()
    print(f"command: python {' '.join(sys.argv)}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print("| model | variant | top-1 % | top-5 % | top-1 drop | weight MB | weights / fp32 | TVM ms | ORT ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key in [m.strip() for m in args.models.split(",") if m.strip()]:
        relative, loader = MODELS[key]
        images, labels, calibration = loader()
        original = ir.load_model(SHARED / relative)
        static, _ = ir.fix_input_shapes(original, {})
        fp32 = ir.upgrade_opset(PassManager(resolve_pipeline(None)).run(static)[0], 13)
        name = ir.graph_inputs(fp32)[0].name
        with tempfile.TemporaryDirectory(prefix="mcc-quant-") as work_text:
            work = Path(work_text)
            np.savez(work / "calib.npz", **{name: calibration})
            variants = {"fp32": fp32}
            for method in ("percentile", "minmax", "entropy"):
                quantize = QuantizeInt8(calib_data=str(work / "calib.npz"), method=method, samples=len(calibration))
                variants[f"mcc int8 ({method})"] = quantize.run(fp32, PassContext()).model
            variants["onnxruntime quantize_static"] = ort_quantize_static(fp32, calibration, work)
            base_top1 = None
            for variant, model in variants.items():
                top1, top5 = accuracy(model, images, labels)
                base_top1 = top1 if base_top1 is None else base_top1
                size = weight_bytes(model)
                tvm_text = ort_text = "—"
                if args.latency and variant in ("fp32", "mcc int8 (percentile)", "onnxruntime quantize_static"):
                    feed = {name: images[0]}
                    if variant != "onnxruntime quantize_static":
                        tvm_text = f"{tvm_ms(model, feed, work):.2f}"
                    runner = session(model, optimized=True)
                    ort_text = f"{latency_ms(lambda: runner.run(None, feed), repeat=20):.3f}"
                print(f"| {key} | {variant} | {top1:.2f} | {top5:.2f} | {base_top1 - top1:+.2f} | "
                      f"{size / 2**20:.2f} | {size / weight_bytes(fp32):.2f} | {tvm_text} | {ort_text} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
