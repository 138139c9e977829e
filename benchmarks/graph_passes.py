"""mcc's graph passes against onnxsim, onnxslim and onnxruntime's offline basic optimization.

For every model in ../shared/models, in one run, with the same concrete input shapes:

- **nodes**: the node count of the original (shapes fixed), after mcc's `default` pipeline (with
  the host target's supported ops, as `mcc compile` runs it), after `onnxsim.simplify`, after
  `onnxslim.slim`, and after onnxruntime's ORT_ENABLE_BASIC offline optimization (the saved
  optimized model);
- **TVM latency** (untuned: mcc's default schedules, `--target host`, the library loaded back
  from disk) of each of those graphs, compiled by mcc's backend (Relax ONNX frontend, `zero`
  pipeline, `tvm.compile`); `none` is the original graph with no mcc pass at all, and only mcc's
  graph gets mcc's opset upgrade; a graph TVM cannot import shows the error. The graphs of one
  model are timed in alternating rounds (`--rounds`, each the median of `--repeat` runs; the
  median round is shown): this VM's speed level shifts between stretches of time, and taking
  turns exposes every graph to the same shifts;
- **valid**: mcc's output against onnxruntime on the original model (fp32 tolerances).

Goals (issue 4): mcc's node count <= the best of the three tools on every model; TVM latency with
mcc's passes < without; every shared model, silero's LSTM model included, compiles and validates.
Needs the benchmark extra: `pip install -e '.[bench]'` (onnxsim, onnxslim).

    python benchmarks/graph_passes.py [--models substr,...] [--rounds 5] [--repeat 20] [--no-latency]
"""

from __future__ import annotations

import os

THREADS = len(os.sched_getaffinity(0))
os.environ.setdefault("TVM_NUM_THREADS", str(THREADS))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402

from compile_host import DEFAULT_SHARED, discover_models, select_models  # noqa: E402
from host_latency import time_alternating  # noqa: E402
from mcc.backends import get_backend  # noqa: E402
from mcc.backends.onnxruntime import ReferenceRunner  # noqa: E402
from mcc.hwmodels import load_target  # noqa: E402
from mcc.toolchain import ir, validate  # noqa: E402
from mcc.toolchain.driver import capture_native_output, resolve_pipeline  # noqa: E402
from mcc.toolchain.passmanager import PassContext, PassManager  # noqa: E402

TOOLS = ("original", "mcc", "onnxsim", "onnxslim", "ort-basic")


def run_mcc(model: onnx.ModelProto, supported: frozenset[str]) -> onnx.ModelProto:
    return PassManager(resolve_pipeline(None), PassContext(supported_ops=supported)).run(model)[0]


def run_onnxsim(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxsim

    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise RuntimeError("onnxsim could not validate its result")
    return simplified


def run_onnxslim(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim

    return onnxslim.slim(model)


def run_ort_basic(model: onnx.ModelProto, work: Path) -> onnx.ModelProto:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(work / "ort_basic.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return onnx.load(str(work / "ort_basic.onnx"))


def error_class(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:40]}" if text else type(exc).__name__


def tvm_runner(model: onnx.ModelProto, shapes: dict, target, backend, inputs, work: Path, upgrade: bool):
    """(runner, outputs) of the graph compiled by mcc's backend, or (error text, None).

    Only mcc's graph gets mcc's opset upgrade (part of `mcc compile`); the others go to TVM as
    the tool left them, as a user of that tool would hand them to TVM.
    """
    library = work / f"lib{len(list(work.iterdir()))}.so"
    try:
        if upgrade:
            model = ir.upgrade_opset(model, backend.min_opset)
        unsupported = backend.unsupported_nodes(model)
        if unsupported:
            return f"unsupported {unsupported[0].op_type}", None
        with capture_native_output():
            backend.compile(model, target.tvm(), shapes, library)
            runner = backend.load(library, model)
            outputs = runner.run(inputs)
    except Exception as exc:  # a benchmark row records the failure and goes on
        return error_class(exc), None
    return runner, outputs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--models", default=None)
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds per model (default 5)")
    parser.add_argument("--repeat", type=int, default=20, help="runs per graph and round (default 20)")
    parser.add_argument("--no-latency", action="store_true", help="node counts only")
    args = parser.parse_args()

    target = load_target("host")
    backend = get_backend(target.backend)
    supported = backend.supported_ops() - frozenset(target.excluded_ops)
    print(f"command: python {' '.join(sys.argv)}")
    print(f"target: {target.description}; threads: {THREADS}; date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    import onnxruntime
    import onnxsim
    import onnxslim

    print(f"onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}, onnxsim {onnxsim.__version__}, "
          f"onnxslim {onnxslim.__version__}\n")
    node_header = " | ".join(f"{tool} nodes" for tool in TOOLS)
    latency_header = "" if args.no_latency else " | " + " | ".join(
        f"TVM ms {'none' if tool == 'original' else tool}" for tool in TOOLS) + " | mcc passes gain (none/mcc)"
    print(f"| model | {node_header}{latency_header} | mcc valid |")
    print("|---" * (2 + len(TOOLS) * (1 if args.no_latency else 2) + (0 if args.no_latency else 1)) + "|")
    wins = faster = validated = total = 0
    for spec in select_models(discover_models(args.shared), args.models):
        total += 1
        original = ir.load_model(args.shared / spec.relative_path)
        static, fixed = ir.fix_input_shapes(original, spec.input_shapes)
        inputs = validate.random_inputs(static, fixed.shapes, seed=0)
        reference = ReferenceRunner(original).run(inputs)
        graphs: dict[str, onnx.ModelProto | str] = {"original": static}
        with tempfile.TemporaryDirectory(prefix="mcc-graphpasses-") as work_text:
            work = Path(work_text)
            for tool, run in (("mcc", lambda m: run_mcc(m, supported)), ("onnxsim", run_onnxsim),
                              ("onnxslim", run_onnxslim), ("ort-basic", lambda m: run_ort_basic(m, work))):
                try:
                    with contextlib.redirect_stdout(io.StringIO()), capture_native_output():
                        graphs[tool] = run(static)
                except Exception as exc:  # recorded in the table
                    graphs[tool] = error_class(exc)
            counts = {tool: (len(g.graph.node) if isinstance(g, onnx.ModelProto) else g) for tool, g in graphs.items()}
            latencies: dict[str, str] = {}
            runners, timed = {}, {}
            valid, gain = "—", "—"
            if not args.no_latency:
                for tool in TOOLS:
                    graph = graphs[tool]
                    if not isinstance(graph, onnx.ModelProto):
                        latencies[tool] = "—"
                        continue
                    runner, outputs = tvm_runner(graph, fixed.shapes, target, backend, inputs, work,
                                                 upgrade=tool == "mcc")
                    if isinstance(runner, str):
                        latencies[tool] = runner
                    else:
                        runners[tool] = runner
                    if tool == "mcc":
                        if outputs is None:
                            valid = "no"
                        else:
                            reports = [validate.compare(str(i), np.asarray(got), want)
                                       for i, (got, want) in enumerate(zip(outputs, reference))]
                            valid = "yes" if all(r.passed for r in reports) else "NO"
                            validated += valid == "yes"
                timed = time_alternating(runners, inputs, args.repeat, args.rounds)
                # three significant digits below 0.1 ms (a 0.05 ms model's cells would all read 0.05)
                latencies.update({tool: f"{ms:.2f}" if ms >= 0.1 else f"{ms:.3g}" for tool, ms in timed.items()})
                if "mcc" in timed and "original" in timed:
                    gain = f"{timed['original'] / timed['mcc']:.2f}x"
        numeric = [c for tool, c in counts.items() if tool not in ("original", "mcc") and isinstance(c, int)]
        if isinstance(counts["mcc"], int) and numeric and counts["mcc"] <= min(numeric):
            wins += 1
        mcc_ms, none_ms = latencies.get("mcc"), latencies.get("original")
        if not args.no_latency and "mcc" in timed and "original" in timed:
            faster += timed["mcc"] < timed["original"]  # the unrounded medians
        elif mcc_ms not in (None, "—") and none_ms not in (None, "—") and "mcc" in runners:
            faster += 1  # bare TVM cannot import the model at all; mcc's graph compiles
        node_cells = " | ".join(str(counts[tool]) for tool in TOOLS)
        latency_cells = "" if args.no_latency else " | " + " | ".join(latencies[tool] for tool in TOOLS)
        if not args.no_latency:
            latency_cells += f" | {gain}"
        print(f"| {spec.name} | {node_cells}{latency_cells} | {valid} |", flush=True)
    print(f"\nmcc node count <= the best of onnxsim/onnxslim/ort-basic on {wins} of {total} models")
    if not args.no_latency:
        print(f"TVM with mcc's passes faster than (or compiling where) TVM without: {faster} of {total}; "
              f"mcc's graph compiles and validates: {validated} of {total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
