"""Find where a wrong result comes from: the first pass (or the backend) that breaks the outputs,
and the first tensor that diverges.

`bisect` re-runs the compile flow one step at a time (after LLVM's `-opt-bisect-limit`). The
reference is onnxruntime on the original model, on the validation inputs `mcc compile` uses. The
model after every step that changed it runs under onnxruntime and is compared with the reference
(`validate.compare`, fp32 tolerances). The scan is linear rather than a binary search: a pass can
break the outputs and a later one hide it again, and onnxruntime on a small model costs
milliseconds. The steps are the pipeline's passes plus the `upgrade-opset` runs mcc inserts (before
a pass whose `min_opset` the model does not meet, and for the backend's minimum opset). When every
step matches, the final model is compiled with the target's backend; a divergence there puts the
blame on the backend.

`compare_layerwise` then localizes the divergence: every intermediate tensor that has the same name
in the reference and the candidate model and an inferred element type in both is exposed as an
extra graph output; both run on the same inputs, and the first tensor that differs beyond
tolerance, in the candidate's topological order, is reported with its producing node. For a pass
the two models are the ones before and after it (onnxruntime); for the backend, the reference is
onnxruntime on the final model and the candidate that model compiled with the extra outputs (which
changes what the backend fuses, so a fusion bug may not show in that variant; the result says so).

Tensors are matched by name. A pass that reuses a name for a different value shows up as a
divergence at that name (with the reason, e.g. a different shape).
Nothing is written to disk except compiled libraries, inside a temporary directory.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto

from mcc.toolchain import ir
from mcc.toolchain.errors import ModelError, UsageError
from mcc.toolchain.passmanager import Pass, PassContext, PassManager, PassResult
from mcc.toolchain.pipeline import format_pipeline
from mcc.toolchain.validate import OutputReport

FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16})

#: runs a model on the debug inputs and returns its outputs by name
ModelRunner = Callable[[onnx.ModelProto], dict[str, np.ndarray]]


# --------------------------------------------------------------------------------------------------
# Results


@dataclass
class StepCheck:
    """One step of the compile flow and whether its model still matches the reference."""

    #: 0 is the loaded model with fixed input shapes; k is the model after the k-th step
    index: int
    name: str
    text: str
    modified: bool
    #: False when the step changed nothing, so the previous verdict carries over
    checked: bool
    passed: bool
    outputs: list[OutputReport] = field(default_factory=list)
    #: inserted by mcc rather than listed in the pipeline (upgrade-opset), or the backend compile
    kind: str = "pass"
    reason: str = ""

    def failing_outputs(self) -> list[OutputReport]:
        return [output for output in self.outputs if not output.passed]

    def as_dict(self) -> dict:
        return {
            "index": self.index, "name": self.name, "pipeline_text": self.text, "kind": self.kind,
            "modified": self.modified, "checked": self.checked, "passed": self.passed, "reason": self.reason,
            "outputs": [output.as_dict() for output in self.outputs],
        }


@dataclass
class TensorDivergence:
    """The first intermediate tensor that differs, and the node of the candidate that produces it."""

    tensor: str
    node: str
    op_type: str
    #: the producing node's position in the candidate's topological order
    position: int
    metrics: OutputReport
    #: the node in the reference model that produces the same tensor name
    reference_node: str = ""
    reference_op_type: str = ""
    #: inputs of the node that are computed tensors but were not compared (not shared or untyped):
    #: the divergence may start there instead
    uncompared_inputs: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "tensor": self.tensor, "node": self.node, "op_type": self.op_type, "position": self.position,
            "reference_node": self.reference_node, "reference_op_type": self.reference_op_type,
            "uncompared_inputs": list(self.uncompared_inputs), "metrics": self.metrics.as_dict(),
        }


@dataclass
class LayerwiseResult:
    """Shared tensors of a reference and a candidate model, compared in the candidate's order."""

    reference: str
    candidate: str
    #: shared tensors compared, and computed tensors of the candidate that could not be compared
    compared: int
    skipped: int
    first: TensorDivergence | None
    #: the candidate's graph outputs against the reference's, by position
    outputs: list[OutputReport] = field(default_factory=list)
    note: str = ""

    @property
    def diverged(self) -> bool:
        return self.first is not None or any(not output.passed for output in self.outputs)

    def as_dict(self) -> dict:
        return {
            "reference": self.reference, "candidate": self.candidate, "diverged": self.diverged,
            "compared": self.compared, "skipped": self.skipped,
            "first_diverging_tensor": self.first.as_dict() if self.first else None,
            "outputs": [output.as_dict() for output in self.outputs], "note": self.note,
        }


@dataclass
class BisectResult:
    model: str
    target: str
    backend: str
    pipeline: str
    inputs: str
    input_shapes: dict[str, tuple[int, ...]]
    steps: list[StepCheck]
    #: whether the final model was compiled and run (only when every pass matched)
    backend_checked: bool
    first_bad: StepCheck | None
    layerwise: LayerwiseResult | None
    notes: list[str] = field(default_factory=list)

    @property
    def diverged(self) -> bool:
        return self.first_bad is not None

    def as_dict(self) -> dict:
        return {
            "model": self.model, "target": self.target, "backend": self.backend, "pipeline": self.pipeline,
            "inputs": self.inputs, "input_shapes": {name: list(shape) for name, shape in self.input_shapes.items()},
            "diverged": self.diverged, "backend_checked": self.backend_checked,
            "first_bad_step": self.first_bad.as_dict() if self.first_bad else None,
            "layerwise": self.layerwise.as_dict() if self.layerwise else None,
            "steps": [step.as_dict() for step in self.steps], "notes": list(self.notes),
        }


# --------------------------------------------------------------------------------------------------
# Running and comparing


def onnxruntime_runner(inputs: dict[str, np.ndarray], optimization: str = "none") -> ModelRunner:
    """Run a model under onnxruntime; outputs by graph-output name."""
    from mcc.backends.onnxruntime import ReferenceRunner

    def run(model: onnx.ModelProto) -> dict[str, np.ndarray]:
        runner = ReferenceRunner(model, optimization=optimization)
        return dict(zip(runner.output_names, runner.run(inputs)))

    return run


def backend_runner(backend, tvm_target, input_shapes: dict, inputs: dict[str, np.ndarray], workdir: Path,
                   stem: str = "debug") -> ModelRunner:
    """Compile a model with `backend` into `workdir`, load it back and run it; outputs by graph-output name."""

    def run(model: onnx.ModelProto) -> dict[str, np.ndarray]:
        library = Path(workdir) / f"{stem}{backend.library_suffix}"
        backend.compile(model, tvm_target, input_shapes, library)
        values = backend.load(library, model).run(inputs)
        names = [value.name for value in model.graph.output]
        if len(values) != len(names):
            raise ModelError(f"the compiled model returned {len(values)} outputs, the model declares {len(names)}")
        return {name: np.asarray(value) for name, value in zip(names, values)}

    return run


def compare_outputs(names: Sequence[str], actual: Sequence[np.ndarray], expected: Sequence[np.ndarray],
                    precision: str) -> list[OutputReport]:
    from mcc.toolchain import validate

    return [validate.compare(name, np.asarray(got), np.asarray(want), precision)
            for name, got, want in zip(names, actual, expected)]


def _typed_tensors(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor shape inference can type (empty where inference fails)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # inference is best effort here: untyped tensors are skipped, not fatal
        inferred = model
    return {name: elem_type for name, (elem_type, _) in ir.tensor_types(inferred).items()
            if elem_type != TensorProto.UNDEFINED}


def _topological_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The graph's nodes in topological order (the stored order when the graph is cyclic)."""
    import networkx as nx

    try:
        order = list(nx.lexicographical_topological_sort(ir.to_networkx(model)))
    except nx.NetworkXUnfeasible:
        order = range(len(model.graph.node))
    return [model.graph.node[index] for index in order]


def _producers(model: onnx.ModelProto) -> dict[str, tuple[int, onnx.NodeProto]]:
    """Tensor name -> (position in topological order, producing node)."""
    return {output: (position, node) for position, node in enumerate(_topological_nodes(model))
            for output in node.output if output}


def _expose(model: onnx.ModelProto, names: Sequence[str], types: dict[str, int]) -> onnx.ModelProto:
    """A copy of `model` whose graph also outputs `names` (typed, shapes left to the runtime)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {value.name for value in exposed.graph.output}
    for name in names:
        if name not in present:
            exposed.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None))
    return exposed


def compare_layerwise(reference: onnx.ModelProto, candidate: onnx.ModelProto, precision: str = "fp32", *,
                      run_reference: ModelRunner, run_candidate: ModelRunner, float_only: bool = False,
                      reference_label: str = "reference", candidate_label: str = "candidate") -> LayerwiseResult:
    """Expose the tensors both models compute under the same name and find the first that differs.

    `float_only` exposes only floating-point tensors (a compiled backend may not return integer
    shape tensors as outputs).
    """
    reference_types, candidate_types = _typed_tensors(reference), _typed_tensors(candidate)
    reference_producers, candidate_producers = _producers(reference), _producers(candidate)
    computed = sorted(candidate_producers, key=lambda name: candidate_producers[name][0])
    shared = [
        name for name in computed
        if name in reference_producers and name in reference_types and name in candidate_types
        and (not float_only or (candidate_types[name] in FLOAT_TYPES and reference_types[name] in FLOAT_TYPES))
    ]
    reference_values = run_reference(_expose(reference, shared, reference_types))
    candidate_values = run_candidate(_expose(candidate, shared, candidate_types))

    reference_outputs = [value.name for value in reference.graph.output]
    candidate_outputs = [value.name for value in candidate.graph.output]
    outputs = compare_outputs(reference_outputs, [candidate_values[name] for name in candidate_outputs],
                              [reference_values[name] for name in reference_outputs], precision)

    from mcc.toolchain import validate

    compared = set(shared)
    first = None
    for name in shared:
        metrics = validate.compare(name, candidate_values[name], reference_values[name], precision)
        if metrics.passed:
            continue
        position, node = candidate_producers[name]
        _, reference_node = reference_producers[name]
        uncompared = [tensor for tensor in node.input if tensor in candidate_producers and tensor not in compared]
        first = TensorDivergence(name, node.name, node.op_type, position, metrics, reference_node.name,
                                 reference_node.op_type, uncompared)
        break
    result = LayerwiseResult(reference_label, candidate_label, len(shared), len(computed) - len(shared), first, outputs)
    if first is None and result.diverged:
        result.note = ("no shared tensor diverges although the outputs do: the difference starts in tensors that "
                       "exist in only one of the models")
    return result


# --------------------------------------------------------------------------------------------------
# Bisect


class _StepRecorder:
    """Instrument: the model before and after every pass the manager runs (inserted upgrades included)."""

    def __init__(self) -> None:
        self.steps: list[tuple[Pass, onnx.ModelProto, PassResult]] = []
        self._before: onnx.ModelProto | None = None

    def before_pass(self, pass_: Pass, model: onnx.ModelProto, ctx: PassContext) -> None:
        # a copy: a pass that edits its input in place must not change what "before" means
        self._before = onnx.ModelProto()
        self._before.CopyFrom(model)

    def after_pass(self, pass_: Pass, result: PassResult, seconds: float, ctx: PassContext) -> None:
        self.steps.append((pass_, self._before, result))


def _flatten(passes: Sequence[Pass]):
    """The passes and the members of pass groups (`fixed-point(...)`), recursively."""
    for item in passes:
        yield item
        yield from _flatten(getattr(item, "passes", ()))


def _load(model: str | Path | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    if isinstance(model, onnx.ModelProto):
        loaded = onnx.ModelProto()
        loaded.CopyFrom(model)
        ir.name_nodes(loaded.graph)
        ir.check_structure(loaded)
        return loaded, loaded.graph.name or "<model>"
    return ir.load_model(model), str(model)


def prepare_inputs(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None,
                   inputs_path: str | Path | None, seed: int):
    """The static model, its fixed shapes, and the validation inputs `mcc compile` would use."""
    from mcc.toolchain import validate

    static, fixed = ir.fix_input_shapes(model, dict(input_shapes or {}))
    if inputs_path is not None:
        if not Path(inputs_path).is_file():
            raise UsageError(f"--inputs {inputs_path}: no such file")
        inputs = validate.load_inputs(inputs_path, static, fixed.shapes)
        label = "file"
    else:
        inputs = validate.random_inputs(static, fixed.shapes, seed=seed)
        label = f"random(seed={seed})"
    return static, fixed, inputs, label


def bisect(model: str | Path | onnx.ModelProto, target: str = "host", passes: str | Sequence[Pass] | None = None, *,
           input_shapes: dict[str, tuple[int, ...]] | None = None, inputs_path: str | Path | None = None,
           seed: int = 0, precision: str = "fp32", backend=None, layerwise: bool = True) -> BisectResult:
    """Find the first step of the compile flow after which the outputs diverge from onnxruntime.

    `passes` is pipeline text or a list of pass instances (default: the `default` pipeline);
    `backend` replaces the target's backend (any object with the `mcc.backends.Backend` methods).
    Raises MccError subclasses for bad usage, a bad model or an op the backend cannot compile.
    """
    from mcc.backends import get_backend
    from mcc.backends.onnxruntime import ReferenceRunner
    from mcc.hwmodels import load_target
    from mcc.toolchain import validate
    from mcc.toolchain.driver import capture_native_output, resolve_pipeline

    if precision not in validate.TOLERANCES:
        raise UsageError(f"unknown precision '{precision}'; candidates are: {', '.join(validate.TOLERANCES)}")
    spec = load_target(target)
    backend = backend if backend is not None else get_backend(spec.backend)
    pipeline = resolve_pipeline(passes) if passes is None or isinstance(passes, str) else list(passes)
    if inputs_path is not None and not Path(inputs_path).is_file():
        raise UsageError(f"--inputs {inputs_path}: no such file")

    original, label = _load(model)
    static, fixed, inputs, inputs_label = prepare_inputs(original, input_shapes, inputs_path, seed)
    output_names = [value.name for value in original.graph.output]
    excluded = frozenset(spec.excluded_ops)
    result = BisectResult(label, spec.name, backend.name, format_pipeline(pipeline), inputs_label, fixed.shapes,
                          steps=[], backend_checked=False, first_bad=None, layerwise=None)

    with capture_native_output():
        expected = ReferenceRunner(original).run(inputs)

    def check(index: int, name: str, text: str, candidate: onnx.ModelProto, modified: bool, kind: str) -> StepCheck:
        if not modified and result.steps:
            previous = result.steps[-1]
            step = StepCheck(index, name, text, False, False, previous.passed, previous.outputs, kind)
        else:
            try:
                with capture_native_output():
                    actual = ReferenceRunner(candidate).run(inputs)
            except ModelError as exc:  # the step produced a model onnxruntime rejects: that is the divergence
                step = StepCheck(index, name, text, modified, True, False, [], kind, reason=str(exc))
            else:
                if len(actual) != len(expected):
                    step = StepCheck(index, name, text, modified, True, False, [], kind,
                                     reason=f"the model has {len(actual)} outputs, the original {len(expected)}")
                else:
                    outputs = compare_outputs(output_names, actual, expected, precision)
                    step = StepCheck(index, name, text, modified, True, all(o.passed for o in outputs), outputs, kind)
        result.steps.append(step)
        return step

    # Step 0 guards the comparison itself: the shape-fixed model must match the original.
    if not check(0, "load", "fix input shapes", static, True, "load").passed:
        result.first_bad = result.steps[-1]
        return result

    recorder = _StepRecorder()
    ctx = PassContext(supported_ops=backend.supported_ops() - excluded, instruments=[recorder])
    listed = {id(item) for item in _flatten(pipeline)}
    current = static
    guilty: tuple[onnx.ModelProto, onnx.ModelProto] | None = None
    for pass_ in pipeline:
        recorder.steps.clear()
        current, _ = PassManager([pass_], ctx).run(current)
        # a group (fixed-point) reports every run of its members, round after round
        for ran, before, outcome in recorder.steps:
            step = check(len(result.steps), ran.name, ran.to_text(), outcome.model, outcome.modified,
                         "pass" if id(ran) in listed else "inserted")
            if not step.passed:
                guilty = (before, outcome.model)
                break
        if guilty is not None:
            break
    result.notes.extend(ctx.notes)

    if guilty is None and ir.opset_version(current) < backend.min_opset:
        from mcc.passes.upgrade_opset import UpgradeOpset

        upgrade = UpgradeOpset(version=backend.min_opset)
        before = current
        current, _ = PassManager([upgrade], PassContext()).run(current)
        step = check(len(result.steps), upgrade.name, upgrade.to_text(), current, True, "inserted")
        if not step.passed:
            guilty = (before, current)

    if guilty is not None:
        result.first_bad = result.steps[-1]
        if layerwise and result.first_bad.outputs:
            with capture_native_output():
                result.layerwise = compare_layerwise(
                    guilty[0], guilty[1], precision,
                    run_reference=onnxruntime_runner(inputs), run_candidate=onnxruntime_runner(inputs),
                    reference_label=f"onnxruntime on the model before '{result.first_bad.text}'",
                    candidate_label=f"onnxruntime on the model after '{result.first_bad.text}'",
                )
        return result

    _check_backend(result, current, spec, backend, excluded, fixed.shapes, inputs, expected, output_names,
                   precision, layerwise)
    return result


def _check_backend(result: BisectResult, model: onnx.ModelProto, spec, backend, excluded, shapes, inputs,
                   expected, output_names, precision: str, layerwise: bool) -> None:
    """Compile the final model with the backend, compare, and localize a divergence there."""
    from mcc.toolchain.driver import capture_native_output
    from mcc.toolchain.errors import UnsupportedError

    unsupported = backend.unsupported_nodes(model, excluded)
    if unsupported:
        first = unsupported[0]
        raise UnsupportedError(f"op '{first.op_type}' at node '{first.name}' is not supported by backend "
                               f"{backend.name} for target '{spec.name}'")
    index = len(result.steps)
    name, text = "backend", f"{backend.name} compile for {spec.name}"
    with tempfile.TemporaryDirectory(prefix="mcc-debug-") as workdir, capture_native_output():
        tvm_target = spec.tvm()
        run_compiled = backend_runner(backend, tvm_target, shapes, inputs, Path(workdir), stem="model")
        values = run_compiled(model)
        actual = [values[value.name] for value in model.graph.output]
        result.backend_checked = True
        if len(actual) != len(expected):
            step = StepCheck(index, name, text, True, True, False, [], "backend",
                             reason=f"the artifact returned {len(actual)} outputs, the reference {len(expected)}")
        else:
            outputs = compare_outputs(output_names, actual, expected, precision)
            step = StepCheck(index, name, text, True, True, all(o.passed for o in outputs), outputs, "backend")
        result.steps.append(step)
        if step.passed:
            return
        result.first_bad = step
        if not layerwise or not step.outputs:
            return
        run_exposed = backend_runner(backend, tvm_target, shapes, inputs, Path(workdir), stem="layerwise")
        try:
            result.layerwise = compare_layerwise(
                model, model, precision, run_reference=onnxruntime_runner(inputs), run_candidate=run_exposed,
                float_only=True, reference_label="onnxruntime on the final model",
                candidate_label=f"{backend.name} on the final model with intermediate tensors exposed",
            )
        except Exception as exc:  # the localization is a bonus: the verdict above stands without it
            result.notes.append(f"layerwise comparison unavailable: the variant with exposed tensors failed "
                                f"({type(exc).__name__}: {ir._first_line(exc)})")
            return
        if not result.layerwise.diverged:
            result.layerwise.note = ("the variant with exposed tensors matches: exposing tensors changes what the "
                                     "backend fuses, so the divergence is inside a fused kernel of the full build")


def compare_files(reference_path: str | Path, candidate_path: str | Path, *,
                  input_shapes: dict[str, tuple[int, ...]] | None = None, inputs_path: str | Path | None = None,
                  seed: int = 0, precision: str = "fp32") -> tuple[LayerwiseResult, str]:
    """`mcc debug compare`: both models under onnxruntime on the same inputs, tensor by tensor.

    Returns the result and the inputs' description.
    """
    from mcc.toolchain.driver import capture_native_output

    if inputs_path is not None and not Path(inputs_path).is_file():
        raise UsageError(f"--inputs {inputs_path}: no such file")
    reference, _ = _load(reference_path)
    candidate, _ = _load(candidate_path)
    reference_inputs = {value.name for value in ir.graph_inputs(reference)}
    candidate_inputs = {value.name for value in ir.graph_inputs(candidate)}
    extra = sorted(candidate_inputs - reference_inputs)
    if extra:
        raise UsageError(f"the candidate reads input '{extra[0]}', which the reference does not have; "
                         f"the models must take the same inputs")
    if len(candidate.graph.output) != len(reference.graph.output):
        raise UsageError(f"the candidate has {len(candidate.graph.output)} outputs, the reference "
                         f"{len(reference.graph.output)}; the models must compute the same outputs")
    static_reference, fixed, inputs, label = prepare_inputs(reference, input_shapes, inputs_path, seed)
    candidate_shapes = {name: shape for name, shape in fixed.shapes.items() if name in candidate_inputs}
    static_candidate, _ = ir.fix_input_shapes(candidate, candidate_shapes)
    with capture_native_output():
        result = compare_layerwise(
            static_reference, static_candidate, precision,
            run_reference=onnxruntime_runner(inputs), run_candidate=onnxruntime_runner(inputs),
            reference_label=f"onnxruntime on {reference_path}", candidate_label=f"onnxruntime on {candidate_path}",
        )
    return result, label
