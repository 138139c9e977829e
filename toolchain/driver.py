"""The compile driver: ONNX in -> IR -> pass pipeline -> backend -> artifact validated -> report.

Every output goes into a staging folder beside the requested output folder and is renamed into
place only when the whole compile succeeded (or validation produced a complete, failing report),
so a failed run never leaves partial output. The report is plain data (`report.json`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from mcc.toolchain import ir
from mcc.toolchain.errors import UnsupportedError, UsageError, ValidationFailed
from mcc.toolchain.passmanager import PassContext, PassManager, verify_model
from mcc.toolchain.pipeline import NAMED_PIPELINES, format_pipeline, parse_pipeline
from mcc.toolchain.stats import model_stats

REPORT_VERSION = 1
MODEL_FILE = "model.onnx"
REPORT_FILE = "report.json"
NATIVE_LOG_FILE = "native.log"
LIBRARY_STEM = "model"


@dataclass
class CompileRequest:
    model_path: Path
    target: str = "host"
    output_dir: Path | None = None
    passes: str | None = None
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: inputs specialised to constants (`--const-input`): name -> values
    const_inputs: dict[str, list[float]] = field(default_factory=dict)
    inputs_path: Path | None = None
    precision: str = "fp32"
    seed: int = 0
    verify_each: bool = False
    dump_dir: Path | None = None
    #: rewrite rules whose firing (or why not) the report and the terminal explain
    explain: tuple[str, ...] = ()
    #: int8 calibration: an .npz of samples per input, or "random"; and the calibration method
    calib_data: str | None = None
    calib_method: str = "percentile"
    #: `--precision mixed`: evaluation samples (.npz, `labels` for top-1) and the top-1 budget in
    #: points (or `min_sqnr_db` as a fidelity budget)
    eval_data: str | None = None
    max_accuracy_drop: float | None = None
    #: the precision of the layers the mixed search takes out of int8 ("fp32" or "fp16")
    fallback_precision: str = "fp32"
    #: progress of long steps (calibration): (label, done, total)
    progress: object = None
    #: the accuracy budget: outputs must keep this SQNR against the reference (instead of the
    #: precision's tolerances), and lossy rewrites (approximations of ops the target lacks) may apply
    min_sqnr_db: float | None = None
    #: tune the kernels the target's tuning database lacks for this many seconds first (`--budget`)
    budget_s: float | None = None
    #: tuning: trials per kernel at most, trials per kernel per round, search ("evolutionary", "random")
    max_trials_per_task: int = 32
    trials_per_round: int = 8
    search: str = "evolutionary"
    #: validate (and measure tuning candidates) on an RPC device: the tracker's (host, port) and the key
    rpc: tuple[str, int] | None = None
    rpc_key: str | None = None


@dataclass
class CompileOutcome:
    report: dict
    output_dir: Path

    @property
    def passed(self) -> bool:
        return bool(self.report["validation"]["passed"])


class Timer:
    """Collects named wall-clock phases in seconds."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self._start = time.perf_counter()

    def measure(self, name: str):
        timer = self

        class _Phase:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                timer.phases[name] = timer.phases.get(name, 0.0) + time.perf_counter() - self.start
                return False

        return _Phase()

    def total(self) -> float:
        return time.perf_counter() - self._start


# --------------------------------------------------------------------------------------------------
# Output folder handling


def default_output_dir(model_path: Path, target: str) -> Path:
    return Path.cwd() / f"{model_path.stem}.{Path(target).stem}.mcc"


def prepare_staging(output_dir: Path) -> Path:
    """Check the output folder can be (re)placed and create a staging folder beside it."""
    output_dir = Path(output_dir)
    if output_dir.exists():
        if not output_dir.is_dir():
            raise UsageError(f"output '{output_dir}' exists and is not a directory")
        entries = list(output_dir.iterdir())
        if entries and not (output_dir / REPORT_FILE).is_file():
            raise UsageError(
                f"output directory '{output_dir}' is not empty and holds no mcc report; refusing to replace it"
            )
    parent = output_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.staging-", dir=parent))
    except (OSError, NotADirectoryError) as exc:
        raise UsageError(f"output directory '{output_dir}' is not writable ({exc.strerror or exc})") from None
    if not os.access(staging, os.W_OK):
        shutil.rmtree(staging, ignore_errors=True)
        raise UsageError(f"output directory '{output_dir}' is not writable")
    return staging


def publish(staging: Path, output_dir: Path) -> None:
    """Atomically move the finished staging folder to `output_dir`, replacing an earlier mcc output."""
    backup = None
    if output_dir.exists():
        backup = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
        os.rmdir(backup)
        os.rename(output_dir, backup)
    try:
        os.rename(staging, output_dir)
    except OSError:
        if backup is not None:
            os.rename(backup, output_dir)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def write_json(path: Path, data: dict) -> None:
    """Write JSON deterministically (sorted keys; non-finite floats as null), via rename."""
    text = json.dumps(_json_safe(data), indent=2, sort_keys=True) + "\n"
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _json_safe(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return _json_safe(value.item())
    if isinstance(value, Path):
        return str(value)
    return value


# --------------------------------------------------------------------------------------------------
# The compile flow


class _CapturedText:
    text = ""


@contextlib.contextmanager
def capture_native_output():
    """Redirect file descriptors 1 and 2 (where TVM's and onnxruntime's C++ code log) to a file.

    mcc's own output is one summary or one error line; native warnings go to `native.log` in the
    output folder instead of the terminal. The captured text is available after the block,
    also when it raises.
    """
    captured = _CapturedText()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield captured
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            captured.text = sink.read().decode(errors="replace")


def resolve_pipeline(text: str | None):
    return parse_pipeline(NAMED_PIPELINES["default"] if text is None else text)


def compile_model(request: CompileRequest) -> CompileOutcome:
    """Run the whole flow; raises MccError subclasses for user-facing failures."""
    timer = Timer()
    # Everything that can be checked without the model is checked first, before any work.
    target, backend, passes = _check_request(request)
    _check_explain(request.explain, passes)
    output_dir = Path(request.output_dir or default_output_dir(request.model_path, request.target)).absolute()
    if request.inputs_path is not None and not Path(request.inputs_path).is_file():
        raise UsageError(f"--inputs {request.inputs_path}: no such file")
    if request.dump_dir is not None:
        try:
            Path(request.dump_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--dump-dir {request.dump_dir}: cannot create ({exc.strerror or exc})") from None
        if not os.access(request.dump_dir, os.W_OK):
            raise UsageError(f"--dump-dir {request.dump_dir}: not writable")
    _check_remote(request)
    staging = prepare_staging(output_dir)
    try:
        report = _compile_into(request, target, backend, passes, staging, output_dir, timer)
        publish(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return CompileOutcome(report=report, output_dir=output_dir)


def _check_request(request: CompileRequest):
    """The checks `mcc compile` and `mcc tune` share, before any work; (target, backend, passes)."""
    from mcc.backends import get_backend
    from mcc.hwmodels import load_target
    from mcc.toolchain import validate

    if request.precision not in validate.TOLERANCES:
        raise UsageError(f"unknown precision '{request.precision}'; candidates are: {', '.join(validate.TOLERANCES)}")
    if request.precision in ("int8", "mixed") and not request.calib_data:
        raise UsageError(f"--precision {request.precision} needs --calib-data FILE.npz (samples per input; or "
                         "`random`, which the report flags)")
    if request.eval_data and not Path(request.eval_data).is_file():
        raise UsageError(f"--eval-data {request.eval_data}: no such file")
    if request.precision == "mixed":
        if request.max_accuracy_drop is not None and request.min_sqnr_db is not None:
            raise UsageError("--precision mixed takes one budget: --max-accuracy-drop (top-1 on --eval-data) or "
                             "--min-sqnr-db (output fidelity), not both")
        if not request.eval_data:
            raise UsageError("--precision mixed needs --eval-data FILE.npz (samples per input, and 'labels' for "
                             "--max-accuracy-drop)")
        if request.max_accuracy_drop is None and request.min_sqnr_db is None:
            raise UsageError("--precision mixed needs a budget: --max-accuracy-drop POINTS or --min-sqnr-db DB")
    elif request.fallback_precision != "fp32":
        raise UsageError("--fallback-precision applies to --precision mixed")
    elif request.precision != "int8" and (request.eval_data or request.max_accuracy_drop is not None):
        raise UsageError("--eval-data and --max-accuracy-drop apply to --precision int8 or mixed")
    elif request.max_accuracy_drop is not None and not request.eval_data:
        raise UsageError("--max-accuracy-drop is measured on --eval-data FILE.npz (with 'labels')")
    if request.calib_data and request.calib_data != "random" and not Path(request.calib_data).exists():
        raise UsageError(f"--calib-data {request.calib_data}: no such file or folder")
    if request.budget_s is not None and not request.budget_s > 0:
        raise UsageError("--budget must be a positive duration")
    if (request.rpc is None) != (request.rpc_key is None):
        raise UsageError("--rpc HOST:PORT and --rpc-key KEY go together")
    target = load_target(request.target)
    backend = get_backend(target.backend)
    passes = resolve_pipeline(request.passes)
    if (request.budget_s is not None or request.rpc is not None) and _tuning_of(backend) is None:
        raise UsageError(f"target '{target.name}': backend {backend.name} has no tuning or RPC support")
    return target, backend, passes


def _check_remote(request: CompileRequest) -> None:
    """An unreachable tracker or a missing device key fails in one line before any work."""
    if request.rpc is not None:
        from mcc.backends.tvm import remote

        remote.check_tracker(*request.rpc, request.rpc_key)


def _tuning_of(backend):
    """The tuning database module of a backend that has one (TVM's), else None."""
    if backend.name.startswith("tvm-"):
        from mcc.backends.tvm import tuning

        return tuning
    return None


def _check_explain(names: tuple[str, ...], passes) -> None:
    """Every --explain names a rewrite rule of the pipeline (checked before any work)."""
    from mcc.toolchain.rewrite import RewritePass

    def flatten(items):
        for item in items:
            yield from flatten(item.passes) if item.name == "fixed-point" else (item,)

    known = sorted({rule.name for p in flatten(passes) if isinstance(p, RewritePass) for rule in p.rules})
    for name in names:
        if name not in known:
            from mcc.toolchain.pipeline import _suggest

            raise UsageError(f"--explain {name}: no rewrite rule of that name in the pipeline{_suggest(name, known)}")


def _estimate_or_note(model: onnx.ModelProto, target, precision: str, ctx: PassContext) -> dict | None:
    """The cost model's prediction for the compiled model; a cost-model failure never fails a compile."""
    from mcc.hwmodels.costmodel import estimate

    try:
        return estimate(model, target, precision).as_dict()
    except Exception as exc:  # reported in the notes: the artifact is still built and validated
        ctx.note(f"estimate failed: {type(exc).__name__}: {ir._first_line(exc)}")
        return None


@dataclass
class _Optimized:
    """The front half of a compile: the loaded model, its validation inputs, the optimized model."""

    original: onnx.ModelProto
    source_hash: str
    fixed: object
    constants: dict
    inputs: dict
    compile_shapes: dict
    optimized: onnx.ModelProto
    records: list
    ctx: PassContext
    stats_before: object
    stats_after: object
    #: `--precision mixed`: the search's report (passes/quantize/mixed.py)
    precision_search: dict | None = None


def _optimize(request: CompileRequest, target, backend, passes, timer: Timer, with_inputs: bool = True) -> _Optimized:
    """Load, fix shapes, run the pass pipeline (and precision conversion), check the result and that
    the backend can compile it: what `mcc compile` and `mcc tune` share."""
    from mcc.toolchain import validate

    with timer.measure("load"):
        original = ir.load_model(request.model_path)
        source_hash = ir.content_hash(original)
        static, fixed = ir.fix_input_shapes(original, request.input_shapes)
        static, constants = ir.specialize_inputs(static, request.const_inputs)
        inputs: dict = {}
        if with_inputs and request.inputs_path is not None:
            inputs = validate.load_inputs(request.inputs_path, static, fixed.shapes)
        elif with_inputs:
            inputs = validate.random_inputs(static, fixed.shapes, seed=request.seed)
        inputs.update(constants)  # the reference runs the original model, where they are inputs
        compile_shapes = {name: shape for name, shape in fixed.shapes.items() if name not in constants}

    excluded = frozenset(target.excluded_ops)
    ctx = PassContext(verify_each=request.verify_each, supported_ops=backend.supported_ops() - excluded,
                      progress=request.progress)
    if request.explain:
        ctx.with_config(explain=",".join(request.explain))
    ctx.with_config(allow_lossy=request.min_sqnr_db is not None)
    if request.dump_dir is not None:
        ctx.with_config(dump_dir=str(request.dump_dir))
    stats_before = model_stats(static)
    precision_search = None
    with timer.measure("passes"):
        optimized, records = PassManager(passes, ctx).run(static)
        if ir.opset_version(optimized) < backend.min_opset:
            from mcc.passes.upgrade_opset import UpgradeOpset

            optimized, more = PassManager([UpgradeOpset(version=backend.min_opset)], ctx).run(optimized)
            records.extend(more)
        if request.precision == "fp16":
            from mcc.passes.quantize.fp16 import ConvertFloat16

            optimized, more = PassManager([ConvertFloat16()], ctx).run(optimized)
            records.extend(more)
        elif request.precision == "int8":
            from mcc.passes.quantize.int8 import QuantizeInt8

            quantize = QuantizeInt8(calib_data=str(request.calib_data), method=request.calib_method)
            float_model = optimized
            optimized, more = PassManager([quantize], ctx).run(optimized)
            records.extend(more)
            if request.eval_data:
                from mcc.passes.quantize import mixed

                budget = (mixed.Budget(max_accuracy_drop=request.max_accuracy_drop)
                          if request.max_accuracy_drop is not None else None)
                data = mixed.load_eval_data(request.eval_data, float_model)
                precision_search = mixed.measure_against_budget(float_model, optimized, data, budget)
                if not precision_search["budget_met"]:
                    raise ValidationFailed(
                        f"int8 misses the accuracy budget on --eval-data: top-1 {precision_search['int8']} % against "
                        f"float32 {precision_search['fp32']} % (allowed drop {request.max_accuracy_drop} points); "
                        "--precision mixed keeps the most sensitive layers in float32")
        elif request.precision == "mixed":
            from mcc.passes.quantize import mixed
            from mcc.passes.quantize.int8 import QuantizeInt8

            budget = mixed.Budget(max_accuracy_drop=request.max_accuracy_drop, min_sqnr_db=request.min_sqnr_db)
            data = mixed.load_eval_data(request.eval_data, optimized)
            quantize = QuantizeInt8(calib_data=str(request.calib_data), method=request.calib_method)
            result = mixed.search(optimized, quantize, data, budget, ctx, fallback=request.fallback_precision)
            optimized, precision_search = result.model, result.report
    if not request.verify_each:
        # one check of the final model (cheap next to the compile): a pass that broke the model is
        # an internal error named here, not an obscure importer failure later
        last = next((r.name for r in reversed(records) if r.modified), "pipeline")
        verify_model(optimized, f"{last} (or an earlier pass; --verify-each names it)")
    stats_after = model_stats(optimized)

    unsupported = backend.unsupported_nodes(optimized, excluded)
    if unsupported:
        first = unsupported[0]
        others = [f"'{node.op_type}' at '{node.name}'" for node in unsupported[1:6]]
        if len(unsupported) > 6:
            others.append(f"{len(unsupported) - 6} more")
        more = f" (and {len(unsupported) - 1} more node(s): {', '.join(others)})" if others else ""
        domain = f" in domain '{first.domain}'" if first.domain not in ir.DEFAULT_DOMAINS else ""
        from mcc.toolchain.rewrite import why_not_substituted

        # a node the backend claims but could not lower (a recurrent op its rule refuses): the rule
        # is asked as for a backend without the op, so it says what it refused, not that it is supported
        asked = replace(ctx, supported_ops=ctx.supported_ops - {first.op_type}) if ctx.supported_ops else ctx
        why = why_not_substituted(optimized, first.name, passes, asked)
        raise UnsupportedError(
            f"op '{first.op_type}'{domain} at node '{first.name}' is not supported by backend {backend.name} "
            f"for target '{target.name}'{more}" + (f"; no substitution applies ({why})" if why else "")
        )

    return _Optimized(original, source_hash, fixed, constants, inputs, compile_shapes, optimized, records, ctx,
                      stats_before, stats_after, precision_search)


def _compile_into(request: CompileRequest, target, backend, passes, staging: Path, output_dir: Path, timer: Timer) -> dict:
    """Load, optimize, compile, validate; write every output into `staging`; return the report."""
    from mcc.backends.onnxruntime import ReferenceRunner
    from mcc.toolchain import validate

    front = _optimize(request, target, backend, passes, timer)
    original, optimized, ctx, inputs = front.original, front.optimized, front.ctx, front.inputs
    records, constants, fixed, compile_shapes = front.records, front.constants, front.fixed, front.compile_shapes
    stats_before, stats_after, source_hash = front.stats_before, front.stats_after, front.source_hash

    with timer.measure("estimate"):
        # The optimized model carries the precision it will run at (convert-float16 for fp16), so
        # the estimate reads the dtypes from it.
        estimate = _estimate_or_note(optimized, target, "native", ctx)

    # The reference runs first: inputs it cannot run on are reported before a long compile.
    with timer.measure("reference"), capture_native_output() as reference_log:
        expected = ReferenceRunner(original).run(inputs)

    library_path = staging / f"{LIBRARY_STEM}{backend.library_suffix}"
    tuning = _tuning_of(backend)
    tuned_summary = None
    remote_report = None
    with capture_native_output() as backend_log:
        tvm_target = target.tvm()
        if tuning is not None:
            for note in tuning.check_database(tvm_target):
                ctx.note(note)
        if request.budget_s is not None:
            with timer.measure("tune"):
                tuned_summary = _tune(request, tuning, optimized, tvm_target, compile_shapes)
            if tuned_summary.interrupted:
                raise KeyboardInterrupt  # the records measured so far are in the database
            for note in tuned_summary.notes:
                ctx.note(note)
        with timer.measure("compile"):
            artifact = backend.compile(optimized, tvm_target, compile_shapes, library_path)
        with timer.measure("kernel_flops"):
            kernels = _kernel_report(artifact.details, tuning, optimized, tvm_target, compile_shapes)
        with timer.measure("validate"):
            if request.rpc is None:
                runner = backend.load(library_path, optimized)  # from disk, never the in-memory executable
            else:
                from mcc.backends.tvm import remote

                runner = remote.RemoteRunner(remote.connect(*request.rpc, request.rpc_key), library_path, optimized)
            actual = runner.run(inputs)
        if request.rpc is not None:
            with timer.measure("remote_timing"):
                remote_report = _remote_report(request, runner.time_ms(inputs))
    with timer.measure("save_model"):
        onnx.save(optimized, str(staging / MODEL_FILE))
    native_log = (reference_log.text + backend_log.text).strip()
    if native_log:
        (staging / NATIVE_LOG_FILE).write_text(native_log + "\n")
    output_names = [value.name for value in original.graph.output]
    if len(actual) != len(expected):
        raise ValidationFailed(f"artifact returned {len(actual)} outputs, the reference {len(expected)}")
    # passes that change precision on purpose (quantize-dynamic in --passes) loosen validation
    from mcc.toolchain.registry import available_passes

    registry = available_passes()
    lowered = [registry[r.name].precision for r in records
               if r.modified and r.name in registry and registry[r.name].precision]
    precision = validate.loosest(request.precision, *lowered)
    outputs = [
        validate.compare(name, np.asarray(got), want, precision, request.min_sqnr_db)
        for name, got, want in zip(output_names, actual, expected)
    ]
    passed = all(output.passed for output in outputs)

    report = {
        "report_version": REPORT_VERSION,
        "model": {
            "source": str(Path(request.model_path).absolute()),
            "sha256": source_hash,
            "optimized_sha256": ir.content_hash(optimized),
            "opset": ir.opset_version(original),
            "optimized_opset": ir.opset_version(optimized),
            "input_shapes": {name: list(shape) for name, shape in compile_shapes.items()},
            "const_inputs": {name: array.tolist() for name, array in constants.items()},
            "assumed_dims": fixed.assumed,
            "stats_before": stats_before.as_dict(),
            "stats_after": stats_after.as_dict(),
        },
        "target": {
            "name": target.name,
            "backend": backend.name,
            "tvm_target": str(tvm_target),
            "file": target.path,
        },
        "pipeline": format_pipeline(passes),
        "passes": [record.as_dict() for record in records],
        "notes": list(ctx.notes),
        "explanations": list(ctx.explanations),
        "lossy_rewrites": list(ctx.lossy_rewrites),
        "validation": {
            "passed": passed,
            "precision": precision,
            "inputs": "file" if request.inputs_path else f"random(seed={request.seed})",
            "reference": "onnxruntime on the original model",
            "device": "local" if request.rpc is None else "remote",
            "outputs": [output.as_dict() for output in outputs],
        },
        "kernels": kernels,
        "artifacts": {
            "model": str(output_dir / MODEL_FILE),
            "library": str(output_dir / library_path.name),
            "report": str(output_dir / REPORT_FILE),
        },
        "estimate": estimate,
        "timings_s": {},
    }
    if native_log:
        report["artifacts"]["native_log"] = str(output_dir / NATIVE_LOG_FILE)
    if tuned_summary is not None:
        report["tuning"] = tuned_summary.as_dict()
    if remote_report is not None:
        report["remote"] = remote_report
    if front.precision_search is not None:
        # mixed: the search; int8 with --eval-data: the measured metric
        report["precision_search" if request.precision == "mixed" else "accuracy"] = front.precision_search
    timings = dict(timer.phases)
    timings.update({f"backend_{key}": value for key, value in artifact.timings_s.items()})
    timings["total"] = timer.total()
    report["timings_s"] = {key: round(value, 4) for key, value in timings.items()}
    write_json(staging / REPORT_FILE, report)
    return report


# --------------------------------------------------------------------------------------------------
# Tuning, kernel coverage, remote runs


def _tune(request: CompileRequest, tuning, optimized: onnx.ModelProto, tvm_target, compile_shapes: dict):
    """Tune the kernels of the optimized model that the target's database lacks, within the budget."""
    runner = None
    if request.rpc is not None:
        from mcc.backends.tvm import remote

        runner = remote.tuning_runner(*request.rpc, request.rpc_key)
    summary = tuning.tune_model(
        optimized, tvm_target, compile_shapes, request.budget_s, progress=request.progress, runner=runner,
        max_trials_per_task=request.max_trials_per_task, trials_per_round=request.trials_per_round,
        search=request.search,
    )
    if request.rpc is not None:
        summary.runner = f"rpc {request.rpc[0]}:{request.rpc[1]} key {request.rpc_key}"
    return summary


def _kernel_report(details: dict, tuning, optimized: onnx.ModelProto, tvm_target, compile_shapes: dict) -> dict:
    """The backend's kernel details plus `tuned_flops_fraction`: the share of the model's estimated
    FLOPs (TVM's per-kernel estimate times calls) in kernels with a tuned schedule."""
    kernels = dict(details)
    tuned = list(details.get("tuned_kernels", []))
    if tuning is None:
        return kernels
    kernels["tuning_database"] = str(tuning.database_dir(tvm_target))
    if not tuned:
        kernels["tuned_flops_fraction"] = 0.0
        return kernels
    flops = details.get("kernel_flops") or tuning.kernel_flops(
        tuning.lowered_for_tuning(optimized, tvm_target, compile_shapes))
    fraction = tuning.tuned_flops_fraction(flops, tuned)
    kernels["tuned_flops_fraction"] = None if fraction is None else round(fraction, 4)
    return kernels


def _remote_report(request: CompileRequest, latencies_ms: list[float]) -> dict:
    host, port = request.rpc
    return {
        "tracker": f"{host}:{port}",
        "key": request.rpc_key,
        "latency_ms": {
            "median": float(np.median(latencies_ms)),
            "min": float(min(latencies_ms)),
            "runs": len(latencies_ms),
        },
    }


@dataclass
class TuneOutcome:
    summary: object
    notes: list[str]
    pipeline: str


def tune_model(request: CompileRequest) -> TuneOutcome:
    """`mcc tune`: the front half of `mcc compile` (load, shapes, passes), then tune the kernels of
    the optimized model that the target's tuning database lacks, within `request.budget_s`."""
    if request.budget_s is None:
        raise UsageError("mcc tune needs --budget (e.g. 10m)")
    target, backend, passes = _check_request(request)  # also: the backend can tune
    _check_remote(request)
    front = _optimize(request, target, backend, passes, Timer(), with_inputs=False)
    with capture_native_output() as native:
        summary = _tune(request, _tuning_of(backend), front.optimized, target.tvm(), front.compile_shapes)
    if native.text.strip() and summary.log:
        with open(summary.log, "a") as stream:
            stream.write("\n# native output\n" + native.text)
    return TuneOutcome(summary=summary, notes=list(front.ctx.notes), pipeline=format_pipeline(passes))
