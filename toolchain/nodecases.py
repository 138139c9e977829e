"""ONNX backend node-test cases run through mcc, one case at a time.

The onnx package defines a test case per op behaviour (`onnx.backend.test.case.node`: each
`export_*` function calls `expect(node, inputs, outputs, name)`); release wheels may ship them
generated as `onnx/backend/test/data/node/<case>/model.onnx` plus
`test_data_set_0/{input,output}_<j>.pb`. When they are not shipped, `generate_cases` writes them in
that same layout from the case definitions, offline (the expected outputs come from onnx's numpy
reference code).

`run_case` compiles one case the way `mcc compile` does (fix input shapes, the default pass
pipeline with the backend's op set, upgrade to the backend's minimum opset, refuse unsupported
ops, compile for the host, load the library back from disk, run) and compares every output with
the case's expected output (`validate.compare`, fp32 tolerances, integers exact). The verdict:

- `pass`: every output within tolerance, with the expected dtype;
- `fail`: wrong numbers, shape or dtype (the reason gives the metric);
- `error`: an exception (the reason is `<stage>: <type>: <first line>`);
- `skip`: a capability gap or a case the harness cannot judge: an op the backend cannot import,
  non-tensor inputs/outputs (sequences, optionals, maps), random ops, training ops, Dropout in
  training mode.

`tools/onnx_node_tests.py` runs every case (in worker processes, with a timeout) and tracks the
verdicts in `tests/backends/onnx_node_results.json`; `tests/backends/test_onnx_node_cases.py`
checks a sample against that table.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import onnx
from onnx import numpy_helper

STATUSES = ("pass", "fail", "error", "skip")
#: ops whose outputs are random draws: expected outputs cannot be matched
RANDOM_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli", "Multinomial"})
TRAINING_DOMAINS = frozenset({"ai.onnx.preview.training"})
DEFAULT_DOMAINS = ("", "ai.onnx")
_EXPANDED = re.compile(r"^(?P<base>.+)_expanded(_ver\d+)?$")
#: Inputs that real models carry as constants (shapes, axes, sizes, counts, window lengths,
#: quantization parameters), by op and input index. The node cases feed them as graph inputs;
#: when a case fails that way, it is run again with them as constants (`--const-input`).
PARAMETER_INPUTS: dict[str, tuple[int, ...]] = {
    "AffineGrid": (1,), "BlackmanWindow": (0,), "CenterCropPad": (1, 2), "Col2Im": (1, 2),
    "ConstantOfShape": (0,), "CumSum": (1,), "DFT": (1, 2), "DequantizeLinear": (1, 2), "Dropout": (1, 2),
    "Expand": (1,), "HammingWindow": (0,), "HannWindow": (0,), "MatMulInteger": (2, 3), "MaxUnpool": (2,),
    "MelWeightMatrix": (0, 1, 2, 3, 4), "NonMaxSuppression": (2, 3, 4), "OneHot": (1,), "Pad": (1, 3),
    "QuantizeLinear": (1, 2), "Range": (0, 1, 2), "ReduceL1": (1,), "ReduceL2": (1,), "ReduceLogSum": (1,),
    "ReduceLogSumExp": (1,), "ReduceMax": (1,), "ReduceMean": (1,), "ReduceMin": (1,), "ReduceProd": (1,),
    "ReduceSum": (1,), "ReduceSumSquare": (1,), "Reshape": (1,), "Resize": (1, 2, 3), "STFT": (1, 3),
    "Slice": (1, 2, 3, 4), "Split": (1,), "Squeeze": (1,), "Tile": (1,), "TopK": (1,), "Trilu": (1,),
    "Unsqueeze": (1,), "Upsample": (1,),
}
#: the file `generate_cases` writes beside model.onnx: the op a case tests (expanded cases hold many)
OP_FILE = "op.txt"


@dataclass(frozen=True)
class CaseResult:
    name: str
    op: str
    status: str
    reason: str = ""
    #: where an error happened: load, shapes, passes, upgrade-opset, import, build, export,
    #: load-library, run, compare (empty for pass/skip)
    stage: str = ""
    seconds: float = 0.0

    def record(self) -> dict:
        """The tracked part (stable between runs: no timings)."""
        return {"op": self.op, "status": self.status, "reason": self.reason}


# --------------------------------------------------------------------------------------------------
# Finding and generating cases


def shipped_cases_dir() -> Path | None:
    """The generated node cases inside the installed onnx package, when the wheel ships them."""
    path = Path(onnx.__file__).parent / "backend" / "test" / "data" / "node"
    return path if path.is_dir() and any(path.glob("*/model.onnx")) else None


def _op_label(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in DEFAULT_DOMAINS else f"{node.domain}.{node.op_type}"


def generate_cases(dest: Path, select: Callable[[str], bool] | None = None) -> list[Path]:
    """Write the installed onnx's node cases (those `select` accepts) under `dest` in the shipped layout.

    Offline: the cases and their expected outputs come from `onnx.backend.test.case.node`, as
    onnx's own `backend-test-tools generate-data` makes them.
    """
    import warnings

    from onnx.backend.test.case import node as node_cases

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # the reference code divides by zero on purpose, etc.
        cases = node_cases.collect_testcases()
    tested = dict(node_cases._existing_names)  # case name -> the node its `expect` call tested
    written = []
    for case in cases:
        if select is not None and not select(case.name):
            continue
        match = _EXPANDED.match(case.name)
        node = tested.get(case.name) or (tested.get(match.group("base")) if match else None)
        case_dir = Path(dest) / case.name
        _write_case(case_dir, case.model, case.data_sets[0])
        if node is not None:
            (case_dir / OP_FILE).write_text(_op_label(node) + "\n")
        written.append(case_dir)
    return sorted(written)


def _write_case(case_dir: Path, model: onnx.ModelProto, data_set) -> None:
    """model.onnx and test_data_set_0/{input,output}_<j>.pb, as onnx's cmd_tools writes them."""
    data_dir = case_dir / "test_data_set_0"
    if case_dir.exists():
        shutil.rmtree(case_dir)
    data_dir.mkdir(parents=True)
    (case_dir / "model.onnx").write_bytes(model.SerializeToString())
    inputs, outputs = data_set
    for prefix, values, declared in (("input", inputs, model.graph.input), ("output", outputs, model.graph.output)):
        for index, value in enumerate(values):
            (data_dir / f"{prefix}_{index}.pb").write_bytes(_serialize(value, declared[index]))


def _serialize(value, declared: onnx.ValueInfoProto) -> bytes:
    kind = declared.type.WhichOneof("value")
    if kind == "sequence_type":
        return numpy_helper.from_list(value, declared.name).SerializeToString()
    if kind == "optional_type":
        return numpy_helper.from_optional(value, declared.name).SerializeToString()
    if kind == "map_type":
        return numpy_helper.from_dict(value, declared.name).SerializeToString()
    if isinstance(value, onnx.TensorProto):
        return value.SerializeToString()
    return numpy_helper.from_array(value, declared.name).SerializeToString()


def case_dirs(root: Path, substrings: Iterable[str] = ()) -> list[Path]:
    """Case folders under `root` (sorted by name), those containing any of `substrings` if given."""
    substrings = [s for s in substrings if s]
    found = sorted(path.parent for path in Path(root).glob("*/model.onnx"))
    if substrings:
        found = [path for path in found if any(s in path.name for s in substrings)]
    return found


def case_op(case_dir: Path, model: onnx.ModelProto | None = None) -> str:
    """The op a case tests: from `op.txt`, or the single node of the case's (or its base case's) model."""
    case_dir = Path(case_dir)
    if (case_dir / OP_FILE).is_file():
        return (case_dir / OP_FILE).read_text().strip()
    candidates = [case_dir]
    match = _EXPANDED.match(case_dir.name)
    if match:
        candidates.insert(0, case_dir.parent / match.group("base"))
    for candidate in candidates:
        path = candidate / "model.onnx"
        if not path.is_file():
            continue
        graph = (model if candidate == case_dir and model is not None else onnx.load(str(path))).graph
        if len(graph.node) == 1:
            return _op_label(graph.node[0])
    return "?"


# --------------------------------------------------------------------------------------------------
# Running one case


class _Stage:
    """The stage a case is in, reported to an optional observer (the tool's worker sends it to
    the parent, which then knows where a crash or a timeout happened)."""

    def __init__(self, observer: Callable[[str], None] | None):
        self.name = "load"
        self.observer = observer

    def enter(self, name: str) -> None:
        self.name = name
        if self.observer is not None:
            self.observer(name)


def _read_tensor(path: Path) -> np.ndarray:
    tensor = onnx.TensorProto()
    tensor.ParseFromString(path.read_bytes())
    return numpy_helper.to_array(tensor)


def _value_kind(value: onnx.ValueInfoProto) -> str:
    kind = value.type.WhichOneof("value") or "untyped"
    return kind.removesuffix("_type")


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _all_nodes(attr.g)
            for sub in attr.graphs:
                yield from _all_nodes(sub)


def non_tensor_value(model: onnx.ModelProto) -> str | None:
    """The first graph input or output that is not a tensor (sequence, optional, map), described."""
    for role, values in (("input", model.graph.input), ("output", model.graph.output)):
        for value in values:
            kind = _value_kind(value)
            if kind != "tensor":
                return f"non-tensor {role} '{value.name}' ({kind})"
    return None


def harness_skip(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> str | None:
    """Why the harness cannot judge this case (non-tensor values, randomness, training), or None."""
    non_tensor = non_tensor_value(model)
    if non_tensor is not None:
        return non_tensor
    for node in _all_nodes(model.graph):
        if node.domain in TRAINING_DOMAINS:
            return f"training op {node.op_type}"
        if node.op_type in RANDOM_OPS and node.domain in DEFAULT_DOMAINS:
            return f"random op {node.op_type}"
        if node.op_type == "Dropout" and node.domain in DEFAULT_DOMAINS and _dropout_trains(node, model, inputs):
            return "Dropout in training mode (random mask)"
    return None


def _dropout_trains(node: onnx.NodeProto, model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> bool:
    """True when the Dropout draws a random mask: training_mode true and a non-zero ratio."""
    if len(node.input) < 3 or not node.input[2]:
        return False
    known = dict(inputs)
    known.update({tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer})
    training = known.get(node.input[2])
    if training is None:
        return True  # computed in the graph: it may train
    if not bool(np.asarray(training).item()):
        return False
    ratio = known.get(node.input[1]) if len(node.input) > 1 and node.input[1] else 0.5
    return ratio is None or float(np.asarray(ratio).item()) != 0.0


def _error_text(exc: BaseException, scrub: Iterable[str]) -> str:
    """`<Type>: <first line>`, without temporary paths or addresses (the table stays stable)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip() and not line.strip().startswith("==>")]
    text = lines[0] if lines else type(exc).__name__
    if text.startswith("Traceback"):  # a TVM error: its message is at the end
        text = lines[-1]
    elif text.endswith(":") and len(lines) > 1:  # "Check failed: (...) is false:" then the why
        text += " " + lines[1]
    for path in scrub:
        if path:
            text = text.replace(str(path), "<tmp>")
    text = re.sub(r"0x[0-9a-fA-F]{6,}", "0x?", text)
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(exc).__name__}: {text}"


def _compile_stage(exc: BaseException) -> str:
    """Which phase of `backend.compile` raised: the frames on the traceback tell."""
    names = [frame.name for frame in traceback.extract_tb(exc.__traceback__)]
    if "import_onnx" in names:
        return "import"
    if "export_library" in names:
        return "export"
    return "build"


def parameter_inputs(model: onnx.ModelProto) -> list[str]:
    """Graph inputs read in a PARAMETER_INPUTS position of some node (shapes, axes, sizes...)."""
    names = {value.name for value in model.graph.input}
    found = []
    for node in _all_nodes(model.graph):
        if node.domain not in DEFAULT_DOMAINS:
            continue
        for index in PARAMETER_INPUTS.get(node.op_type, ()):
            if index < len(node.input) and node.input[index] in names and node.input[index] not in found:
                found.append(node.input[index])
    return found


def run_case(case_dir: str | os.PathLike, target_name: str = "host",
             on_stage: Callable[[str], None] | None = None) -> CaseResult:
    """Compile one node case with mcc's default flow and compare its outputs with the expected ones.

    A case that fails or errors while it feeds shapes, axes or sizes as graph inputs is run again
    with those inputs as constants, as `mcc compile --const-input` would compile a real model
    (where they are constants). The second verdict counts; its reason names the constant inputs,
    and a pass that needed them keeps the first run's reason.
    """
    start = time.perf_counter()
    first = _run_once(Path(case_dir), target_name, on_stage, ())
    if first.status not in ("fail", "error"):
        return first
    try:
        constants = parameter_inputs(onnx.load(str(Path(case_dir) / "model.onnx")))
    except Exception:  # the first run has reported why the model cannot be read
        return first
    if not constants:
        return first
    second = _run_once(Path(case_dir), target_name, on_stage, tuple(constants))
    seconds = round(time.perf_counter() - start, 3)
    names = ",".join(constants)
    if second.status == "pass":
        reason = f"needs --const-input {names}; as runtime inputs: {first.reason}"
    else:
        reason = f"with --const-input {names}: {second.reason}"
    return CaseResult(second.name, second.op, second.status, reason, second.stage, seconds)


def _run_once(case_dir: Path, target_name: str, on_stage: Callable[[str], None] | None,
              constants: tuple[str, ...]) -> CaseResult:
    from mcc.backends import get_backend
    from mcc.hwmodels import load_target
    from mcc.toolchain import ir
    from mcc.toolchain.driver import capture_native_output, resolve_pipeline
    from mcc.toolchain.errors import UnsupportedError
    from mcc.toolchain.passmanager import PassContext, PassManager

    name = case_dir.name
    start = time.perf_counter()
    stage = _Stage(on_stage)
    work = Path(tempfile.mkdtemp(prefix="mcc-node-case-"))
    scrub = [str(work), str(case_dir)]

    def result(status: str, reason: str = "", at: str = "") -> CaseResult:
        return CaseResult(name, op, status, reason, at, round(time.perf_counter() - start, 3))

    op = "?"
    try:
        stage.enter("load")
        try:
            raw = onnx.load(str(case_dir / "model.onnx"))
            op = case_op(case_dir, raw)
            data_dir = case_dir / "test_data_set_0"
            non_tensor = non_tensor_value(raw)  # before reading the data: only tensors are read
            if non_tensor is not None:
                return result("skip", non_tensor)
            input_names = [value.name for value in raw.graph.input]
            inputs = {input_names[j]: _read_tensor(data_dir / f"input_{j}.pb") for j in range(len(input_names))
                      if (data_dir / f"input_{j}.pb").is_file()}
            expected = [_read_tensor(path) for path in sorted(data_dir.glob("output_*.pb"),
                                                             key=lambda p: int(p.stem.split("_")[1]))]
            skip = harness_skip(raw, inputs)
            if skip is not None:
                return result("skip", skip)
            model = ir.load_model(case_dir / "model.onnx")
        except Exception as exc:
            return result("error", f"load: {_error_text(exc, scrub)}", "load")

        target = load_target(target_name)
        backend = get_backend(target.backend)
        excluded = frozenset(target.excluded_ops)

        # The case's input data fixes every input shape, as `--input-shape NAME=...` would.
        stage.enter("shapes")
        real_inputs = [value.name for value in ir.graph_inputs(model)]
        try:
            static, fixed = ir.fix_input_shapes(model, {n: tuple(inputs[n].shape) for n in real_inputs if n in inputs})
            static = _specialize(static, {n: inputs[n] for n in constants})
        except Exception as exc:
            return result("error", f"shapes: {_error_text(exc, scrub)}", "shapes")
        compile_shapes = {n: shape for n, shape in fixed.shapes.items() if n not in constants}

        stage.enter("passes")
        ctx = PassContext(supported_ops=backend.supported_ops() - excluded)
        ctx.with_config(allow_lossy=False)
        try:
            optimized, _ = PassManager(resolve_pipeline(None), ctx).run(static)
        except Exception as exc:
            return result("error", f"passes: {_error_text(exc, scrub)}", "passes")
        if ir.opset_version(optimized) < backend.min_opset:
            stage.enter("upgrade-opset")
            try:
                from mcc.passes.upgrade_opset import UpgradeOpset

                optimized, _ = PassManager([UpgradeOpset(version=backend.min_opset)], ctx).run(optimized)
            except Exception as exc:
                return result("error", f"upgrade-opset: {_error_text(exc, scrub)}", "upgrade-opset")

        unsupported = backend.unsupported_nodes(optimized, excluded)
        if unsupported:
            ops = sorted({_op_label(node) for node in unsupported})
            return result("skip", f"unsupported op: {', '.join(ops)}")

        library_path = work / f"model{backend.library_suffix}"
        with capture_native_output():
            stage.enter("compile")
            try:
                backend.compile(optimized, target.tvm(), compile_shapes, library_path)
            except Exception as exc:
                at = _compile_stage(exc)
                if isinstance(exc, UnsupportedError):
                    at = "import"
                return result("error", f"{at}: {_error_text(exc, scrub)}", at)
            stage.enter("load-library")
            try:
                runner = backend.load(library_path, optimized)  # from disk, as the driver does
            except Exception as exc:
                return result("error", f"load-library: {_error_text(exc, scrub)}", "load-library")
            stage.enter("run")
            try:
                actual = runner.run({n: inputs[n] for n in real_inputs if n not in constants})
            except Exception as exc:
                return result("error", f"run: {_error_text(exc, scrub)}", "run")

        stage.enter("compare")
        try:
            return _judge(raw, actual, expected, result)
        except Exception as exc:
            return result("error", f"compare: {_error_text(exc, scrub)}", "compare")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _specialize(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The model with the named inputs turned into initializers of exactly these values.

    What `--const-input` does (`ir.specialize_inputs`), but with the case's arrays as they are:
    int64 values such as INT64_MAX survive (the command line goes through float64).
    """
    if not values:
        return model
    from mcc.toolchain import ir

    return ir.bind_inputs(model, values)


def _judge(model: onnx.ModelProto, actual: list[np.ndarray], expected: list[np.ndarray], result) -> CaseResult:
    from mcc.toolchain import validate

    if len(actual) != len(expected):
        return result("fail", f"artifact returned {len(actual)} outputs, expected {len(expected)}")
    problems = []
    for value, got, want in zip(model.graph.output, actual, expected):
        got = np.asarray(got)
        with np.errstate(all="ignore"):  # inf - inf where both sides hold the same infinity
            report = validate.compare(value.name, got, want, "fp32")
        if not report.passed:
            reason = report.reason or f"differs (compare gave no reason; {report.tolerance} comparison of {want.dtype})"
            if report.tolerance == "exact" and report.max_abs != 0 and np.isfinite(report.max_abs):
                reason += f" (max_abs {report.max_abs:.3g})"
            problems.append(f"output '{value.name}': {reason}")
        elif got.dtype != want.dtype:
            problems.append(f"output '{value.name}': dtype {got.dtype}, expected {want.dtype} (values match)")
    if problems:
        return result("fail", " | ".join(problems))
    return result("pass")
