"""Host latency of every shared model: plain TVM, mcc's default schedules, mcc tuned, onnxruntime.

For each model under `../shared/models` (batch 1, the shapes `compile_host.py` uses), in one run
and with the same seeded random inputs:

- **TVM plain**: the original model through the Relax ONNX frontend, `DecomposeOpsForInference`,
  the `zero` pipeline (LegalizeOps' default schedules) and `tvm.compile`: no mcc pass, no schedule.
- **TVM + mcc schedules**: the same, with mcc's default CPU schedules (no mcc graph pass): what the
  schedules alone give, and the baseline for "mcc's graph passes make TVM faster" (issue 4).
- **mcc default**: `mcc compile` (graph passes + default schedules, no tuning), validated against
  onnxruntime; its compile time.
- **mcc tuned** (with `--tune-budget-s S`): `mcc tune` with that wall-clock budget into a fresh
  tuning database, then `mcc compile` again (which applies the records); tuning time and the time
  of that second compile.
- **onnxruntime**: `ORT_ENABLE_ALL`, as many intra-op threads as TVM uses.

Every TVM column runs through mcc's `RelaxVMRunner`, which keeps the calling thread off the CPUs
TVM pins its workers to (`common.off_tvm_worker_cpus`; without it a parallel kernel ran at one
thread's speed whenever Linux left the two on one CPU): "plain" is TVM's compiler alone, not
TVM's runtime without that.

Latencies are medians (TVM: `time_evaluator`, one warm-up; onnxruntime: after a warm-up), and
onnxruntime and the fast TVM artifacts take turns over `--rounds` rounds (the median of the round
medians is reported): this VM's speed shifts by up to 1.7x between stretches of time, and taking
turns keeps the ratios honest. Ratios are to onnxruntime measured in the same rounds. The tuning database lives in a temporary
`MCC_CACHE_DIR`, so the user's cache neither helps nor is touched. Usage (repository root):

    python benchmarks/host_latency.py [--repeat 20] [--models squeezenet,magika] [--tune-budget-s 600]
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compile_host  # noqa: E402  (sets TVM_NUM_THREADS before tvm is imported)
from compile_host import THREADS, first_line, message_line  # noqa: E402

_CACHE = tempfile.TemporaryDirectory(prefix="mcc-bench-cache-")
os.environ["MCC_CACHE_DIR"] = _CACHE.name

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402

from mcc.toolchain import ir, validate  # noqa: E402
from mcc.toolchain.driver import CompileRequest, compile_model  # noqa: E402
from mcc.toolchain.errors import MccError  # noqa: E402

#: a run slower than this (ms) gets `SLOW_REPEAT` timed runs
SLOW_RUN_MS = 500.0
SLOW_REPEAT = 3
TARGET = "host"


@dataclass
class Row:
    name: str
    cells: dict[str, str] = field(default_factory=dict)
    ms: dict[str, float] = field(default_factory=dict)


def time_vm(vm_runner, inputs: dict[str, np.ndarray], repeat: int) -> float:
    """Median ms of a RelaxVMRunner-like object (fewer runs when one run is slow)."""
    start = time.perf_counter()
    vm_runner.run(inputs)
    probe_ms = (time.perf_counter() - start) * 1000.0
    runs = SLOW_REPEAT if probe_ms > SLOW_RUN_MS else repeat
    return statistics.median(vm_runner.time_ms(inputs, repeat=runs))


def bare_tvm(model: onnx.ModelProto, shapes, target, schedules: bool):
    """(runner, compile s) of the original model through TVM alone, or through mcc's backend
    without mcc's graph passes (`schedules`: its rewrites, default schedules, float16 computed in
    float32 where the CPU lacks half arithmetic)."""
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    from mcc.backends.tvm import half
    from mcc.backends.tvm.llvm import lower
    from mcc.backends.tvm.stack import compile_module

    if schedules:
        model = half.for_target(model, target)[0]
    dtypes = {value.name: str(ir.tensor_dtype(value.type.tensor_type.elem_type)) for value in ir.graph_inputs(model)}
    start = time.perf_counter()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore", UserWarning)
        mod = from_onnx(model, shape_dict={name: list(shape) for name, shape in shapes.items()}, dtype_dict=dtypes)
    mod, _ = lower(mod, target, default_schedules=schedules, use_tuning_records=False)
    # mcc's schedules are compiled as mcc compiles them (their tiles on the stack, stack.py)
    executable = compile_module(mod, target) if schedules else tvm.compile(mod, target=target)
    compile_s = time.perf_counter() - start
    from mcc.backends.tvm.common import RelaxVMRunner

    return RelaxVMRunner.in_memory(executable, [value.name for value in ir.graph_inputs(model)]), compile_s


def mcc_compile(spec, model_path: Path, output_dir: Path) -> dict:
    request = CompileRequest(model_path=model_path, target=TARGET, output_dir=output_dir,
                             input_shapes=dict(spec.input_shapes))
    return compile_model(request).report


def report_runner(report: dict):
    from mcc.backends.tvm.common import RelaxVMRunner

    optimized = onnx.load(report["artifacts"]["model"])
    return RelaxVMRunner(Path(report["artifacts"]["library"]), optimized)


class OrtRunner:
    """onnxruntime (ORT_ENABLE_ALL, THREADS intra-op threads) timed like the TVM runners."""

    def __init__(self, model: onnx.ModelProto):
        from mcc.backends.onnxruntime import ReferenceRunner

        self.reference = ReferenceRunner(model, optimization="all", threads=THREADS)

    def run(self, inputs):
        return self.reference.run(inputs)

    def time_ms(self, inputs, repeat: int = 20):
        warm_start = time.perf_counter()
        runs = 0
        while runs < 3 or time.perf_counter() - warm_start < 0.2:
            self.reference.run(inputs)
            runs += 1
        latencies = []
        for _ in range(repeat):
            start = time.perf_counter()
            self.reference.run(inputs)
            latencies.append((time.perf_counter() - start) * 1000.0)
        return latencies


def time_alternating(runners: dict, inputs, repeat: int, rounds: int) -> dict[str, float]:
    """Median over `rounds` of each runner's median, the runners taking turns within each round.

    On this VM a measurement's level shifts by up to 1.7x from one stretch of time (or process) to
    the next; taking turns exposes every runner to the same shifts, so the ratios hold.
    """
    medians: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, runner in runners.items():
            medians[name].append(time_vm(runner, inputs, repeat))
    return {name: statistics.median(values) for name, values in medians.items()}


def tune(spec, model_path: Path, budget_s: float) -> float:
    """Wall time of `mcc tune` with `budget_s` into the benchmark's database."""
    import subprocess

    command = ["mcc", "tune", str(model_path), "--target", TARGET, "--budget", f"{int(budget_s)}s"]
    for name, shape in spec.input_shapes.items():
        command += ["--input-shape", f"{name}={'x'.join(map(str, shape))}"]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def benchmark(spec, shared: Path, target, repeat: int, rounds: int, tune_budget_s: float, workdir: Path) -> Row:
    row = Row(spec.name)
    model_path = shared / spec.relative_path
    original = onnx.load(str(model_path))
    try:
        shapes = ir.fix_input_shapes(original, dict(spec.input_shapes))[1].shapes
    except MccError as exc:
        row.cells["error"] = f"{exc.kind}: {message_line(exc)}"
        return row
    inputs = validate.random_inputs(original, shapes, seed=0)
    runners = {"ort": OrtRunner(original)}
    slow = {}
    for key, schedules in (("plain", False), ("sched", True)):
        try:
            runner, _ = bare_tvm(original, shapes, target, schedules)
            (slow if key == "plain" else runners)[key] = runner
        except Exception as exc:  # the importer's refusals are results here
            row.cells[key] = f"fails: {first_line(exc, 40)}"
    try:
        start = time.perf_counter()
        report = mcc_compile(spec, model_path, workdir / "default")
        row.ms["compile_s"] = time.perf_counter() - start
        row.cells["valid"] = "yes" if report["validation"]["passed"] else "**no**"
        row.cells["scheduled"] = str(len(report.get("kernels", {}).get("default_schedules", {})))
        runners["default"] = report_runner(report)
    except MccError as exc:
        row.cells["default"] = f"mcc: {exc.kind}: {message_line(exc)[:50]}"
    if tune_budget_s > 0 and "default" in runners:
        try:
            row.ms["tune_s"] = tune(spec, model_path, tune_budget_s)
            start = time.perf_counter()
            report = mcc_compile(spec, model_path, workdir / "tuned")
            row.ms["second_compile_s"] = time.perf_counter() - start
            row.cells["tuned_valid"] = "yes" if report["validation"]["passed"] else "**no**"
            kernels = report.get("kernels", {})
            row.cells["tuned_kernels"] = f"{len(kernels.get('tuned_kernels', []))} ({kernels.get('tuned_flops_fraction') or 0:.0%})"
            runners["tuned"] = report_runner(report)
        except Exception as exc:
            row.cells["tuned"] = f"fails: {first_line(exc, 40)}"
    row.ms.update(time_alternating(runners, inputs, repeat, rounds))
    for key, runner in slow.items():  # plain TVM: hundreds of ms, timed once
        row.ms[key] = time_vm(runner, inputs, repeat)
    return row


def _ms(row: Row, key: str) -> str:
    if key in row.cells:
        return row.cells[key]
    value = row.ms.get(key)
    if value is None:
        return "—"
    return f"{value:.1f}" if value >= 100 else f"{value:.2f}"


def _ratio(row: Row, key: str) -> str:
    if key not in row.ms or "ort" not in row.ms:
        return "—"
    ratio = row.ms[key] / row.ms["ort"]
    return f"{ratio:.0f}×" if ratio >= 10 else f"{ratio:.2f}×"


def table_lines(rows: list[Row], tuned: bool) -> list[str]:
    columns = ["model", "ORT ms", "TVM plain ms", "TVM plain / ORT", "TVM + mcc schedules ms", "mcc default ms",
               "mcc default / ORT", "mcc passes gain", "valid", "kernels scheduled", "compile s"]
    if tuned:
        columns += ["tuning s", "kernels tuned (FLOPs)", "mcc tuned ms", "mcc tuned / ORT", "2nd compile s",
                    "tuning / 2nd compile"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        if "error" in row.cells:
            lines.append(f"| {row.name} | {row.cells['error']} |" + " |" * (len(columns) - 2))
            continue
        gain = "—"
        if "sched" in row.ms and "default" in row.ms:
            gain = f"{row.ms['sched'] / row.ms['default']:.2f}×"
        cells = [row.name, _ms(row, "ort"), _ms(row, "plain"), _ratio(row, "plain"), _ms(row, "sched"),
                 _ms(row, "default"), _ratio(row, "default"), gain, row.cells.get("valid", "—"),
                 row.cells.get("scheduled", "—"),
                 f"{row.ms['compile_s']:.1f}" if "compile_s" in row.ms else "—"]
        if tuned:
            speedup = "—"
            if "tune_s" in row.ms and "second_compile_s" in row.ms:
                speedup = f"{row.ms['tune_s'] / row.ms['second_compile_s']:.0f}×"
            cells += [f"{row.ms['tune_s']:.0f}" if "tune_s" in row.ms else "—", row.cells.get("tuned_kernels", "—"),
                      _ms(row, "tuned"),
                      _ratio(row, "tuned"),
                      f"{row.ms['second_compile_s']:.1f}" if "second_compile_s" in row.ms else "—", speedup]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return lines


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    compile_host.add_common_arguments(parser)
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating timing rounds of onnxruntime and the TVM artifacts (default 3)")
    parser.add_argument("--tune-budget-s", type=float, default=0.0,
                        help="also tune each model for this many seconds and time the tuned artifact (default: 0, no tuning)")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.rounds < 1:
        parser.error("--repeat and --rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    shared = args.shared.resolve()

    def measure(spec, target, workdir: Path) -> Row:
        row = benchmark(spec, shared, target, args.repeat, args.rounds, args.tune_budget_s, workdir)
        print(f"[{spec.name}] {row.ms}", file=sys.stderr, flush=True)
        return row

    header, target, rows = compile_host.run_models(argv, args, "host_latency", measure)
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    compile_host.publish(header, target, table_lines(rows, args.tune_budget_s > 0) + ["", f"Load average at the end: {load}."],
                         args.markdown_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
