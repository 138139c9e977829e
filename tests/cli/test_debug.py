"""`mcc debug bisect` and `mcc debug compare`: the guilty pass, the guilty backend, the first diverging tensor.

Wrong passes and a wrong backend are injected on purpose, so every test can fail if the search
points anywhere else.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from mcc.toolchain.passmanager import Pass, PassResult
from mcc.toolchain.pipeline import parse_pipeline
from tests.conftest import EXAMPLE, EXAMPLE_INPUTS


def _scaled_weight(model: onnx.ModelProto, name: str, factor: float) -> onnx.ModelProto:
    result = onnx.ModelProto()
    result.CopyFrom(model)
    for tensor in result.graph.initializer:
        if tensor.name == name:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * np.float32(factor), name))
            return result
    raise AssertionError(f"no initializer {name}")


@dataclass(frozen=True)
class PerturbConvWeight(Pass):
    """Scale the second Conv's weight by 5 % (deliberately wrong)."""

    name: ClassVar[str] = "perturb-conv-weight"

    def run(self, model, ctx):
        second_conv = [node for node in model.graph.node if node.op_type == "Conv"][1]
        return PassResult(_scaled_weight(model, second_conv.input[1], 1.05), True)


@dataclass(frozen=True)
class DropEveryInitializer(Pass):
    """Delete the initializers (the result does not load in onnxruntime)."""

    name: ClassVar[str] = "drop-every-initializer"

    def run(self, model, ctx):
        result = onnx.ModelProto()
        result.CopyFrom(model)
        del result.graph.initializer[:]
        return PassResult(result, True)


class ReluBecomesSigmoidBackend:
    """A stand-in backend whose 'compiled' model computes Sigmoid where the model says Relu.

    The library is the rewritten ONNX model, run with onnxruntime; it lets the backend stage of
    bisect be tested without a real backend bug.
    """

    name = "relu-becomes-sigmoid"
    min_opset = 13
    library_suffix = ".onnx"

    def supported_ops(self) -> frozenset[str]:
        return frozenset(schema.name for schema in onnx.defs.get_all_schemas())

    def unsupported_nodes(self, model, excluded=frozenset()):
        return []

    def compile(self, model, target, input_shapes, library_path):
        wrong = onnx.ModelProto()
        wrong.CopyFrom(model)
        for node in wrong.graph.node:
            if node.op_type == "Relu":
                node.op_type = "Sigmoid"
        onnx.save(wrong, str(library_path))

    def load(self, library_path, model):
        from mcc.backends.onnxruntime import ReferenceRunner

        return ReferenceRunner(onnx.load(str(library_path)))


def _pipeline(*wrong: Pass) -> list[Pass]:
    return [*parse_pipeline("inline-initializer-inputs,fold-constants,eliminate-identity"), *wrong,
            *parse_pipeline("fuse-conv-bn,eliminate-dead-nodes")]


def test_bisect_names_the_wrong_pass_and_the_perturbed_conv_output():
    from mcc.toolchain.debug import bisect

    result = bisect(EXAMPLE, "host", _pipeline(PerturbConvWeight()), inputs_path=EXAMPLE_INPUTS)
    assert result.diverged
    bad = result.first_bad
    assert (bad.name, bad.index, bad.kind) == ("perturb-conv-weight", 4, "pass")
    assert [step.passed for step in result.steps] == [True, True, True, True, False]  # later passes never ran
    assert not result.backend_checked
    (logits,) = bad.outputs
    assert not logits.passed and logits.max_abs > 1e-3
    first = result.layerwise.first
    assert first is not None
    assert (first.tensor, first.op_type) == ("conv2_out", "Conv")
    assert first.node == first.reference_node and first.uncompared_inputs == []
    # every tensor before it (conv1 .. pool1) agreed, and the metrics say by how much it does not
    assert result.layerwise.compared >= 5
    assert first.metrics.max_abs > 1e-3 and first.metrics.cosine <= 1.0
    assert math.isfinite(first.metrics.sqnr_db) and first.metrics.sqnr_db < 60.0
    # 5 % more weight, so 5 % more output wherever the output is not tiny
    assert first.metrics.max_rel == pytest.approx(0.05, abs=0.01)
    data = result.as_dict()
    assert data["first_bad_step"]["name"] == "perturb-conv-weight"
    assert data["layerwise"]["first_diverging_tensor"]["tensor"] == "conv2_out"


def test_bisect_looks_inside_fixed_point_groups():
    from mcc.toolchain import passmanager
    from mcc.toolchain.debug import bisect

    if not hasattr(passmanager, "FixedPoint"):
        pytest.skip("no fixed-point pass groups in this tree")
    group = passmanager.FixedPoint.of([*parse_pipeline("eliminate-identity,fuse-conv-bn"), PerturbConvWeight()])
    result = bisect(EXAMPLE, "host", [*parse_pipeline("inline-initializer-inputs,fold-constants"), group],
                    inputs_path=EXAMPLE_INPUTS)
    bad = result.first_bad
    assert (bad.name, bad.kind) == ("perturb-conv-weight", "pass")
    assert [step.name for step in result.steps[-3:]] == ["eliminate-identity", "fuse-conv-bn", "perturb-conv-weight"]
    # after fuse-conv-bn the Conv writes what BatchNormalization wrote
    assert result.layerwise.first.tensor == "bn2_out" and result.layerwise.first.op_type == "Conv"


def test_bisect_reports_a_pass_whose_model_onnxruntime_rejects():
    from mcc.toolchain.debug import bisect

    result = bisect(EXAMPLE, "host", _pipeline(DropEveryInitializer()), inputs_path=EXAMPLE_INPUTS)
    assert result.first_bad.name == "drop-every-initializer"
    assert "onnxruntime cannot load" in result.first_bad.reason
    assert result.layerwise is None


def test_bisect_blames_the_backend_when_every_pass_matches():
    from mcc.toolchain.debug import bisect

    result = bisect(EXAMPLE, "host", "default", inputs_path=EXAMPLE_INPUTS, backend=ReluBecomesSigmoidBackend())
    assert result.backend_checked and all(step.passed for step in result.steps[:-1])
    bad = result.first_bad
    assert bad.kind == "backend" and bad is result.steps[-1]
    first = result.layerwise.first
    assert first is not None and first.op_type == "Relu" and first.tensor == "relu1_out", result.layerwise.as_dict()
    assert first.metrics.max_abs > 0.1


def test_bisect_finds_nothing_when_nothing_is_wrong():
    from mcc.toolchain.debug import bisect

    class FaithfulBackend(ReluBecomesSigmoidBackend):
        def compile(self, model, target, input_shapes, library_path):
            onnx.save(model, str(library_path))

    result = bisect(EXAMPLE, "host", _pipeline(), seed=3, backend=FaithfulBackend())
    assert not result.diverged and result.backend_checked and result.layerwise is None
    assert result.inputs == "random(seed=3)"


def test_layerwise_through_the_real_backend_exposes_intermediate_tensors(tmp_path):
    """The backend variant with exposed tensors compiles with TVM and agrees with onnxruntime."""
    from mcc.backends import get_backend
    from mcc.hwmodels import load_target
    from mcc.toolchain import ir
    from mcc.toolchain.debug import backend_runner, compare_layerwise, onnxruntime_runner, prepare_inputs
    from mcc.toolchain.passmanager import PassContext, PassManager

    spec = load_target("host")
    backend = get_backend(spec.backend)
    static, fixed, inputs, _ = prepare_inputs(ir.load_model(EXAMPLE), None, EXAMPLE_INPUTS, 0)
    final, _ = PassManager(parse_pipeline("default"), PassContext(supported_ops=backend.supported_ops())).run(static)
    result = compare_layerwise(final, final, run_reference=onnxruntime_runner(inputs),
                               run_candidate=backend_runner(backend, spec.tvm(), fixed.shapes, inputs, tmp_path),
                               float_only=True)
    assert not result.diverged, result.as_dict()
    assert result.compared >= 6 and [output.name for output in result.outputs] == ["logits"]


def _write_pair(tmp_path: Path, factor: float) -> tuple[Path, Path]:
    reference = tmp_path / "reference.onnx"
    candidate = tmp_path / "candidate.onnx"
    model = onnx.load(str(EXAMPLE))
    onnx.save(model, str(reference))
    onnx.save(_scaled_weight(model, "conv1.weight", factor), str(candidate))
    return reference, candidate


def test_compare_names_the_first_diverging_tensor(tmp_path, run_mcc):
    reference, candidate = _write_pair(tmp_path, 1.02)
    result = run_mcc("debug", "compare", reference, candidate, "--inputs", EXAMPLE_INPUTS)
    assert result.returncode == 4, result.stderr
    assert "first diverging tensor: 'conv1_out' from node" in result.stdout and "(Conv)" in result.stdout
    assert "SQNR" in result.stdout and "FAIL logits" in result.stdout
    (line,) = result.stderr.splitlines()
    assert line.startswith("mcc: validation failed:") and "conv1_out" in line


def test_compare_identical_models_json(tmp_path, run_mcc):
    reference, candidate = _write_pair(tmp_path, 1.0)
    result = run_mcc("debug", "compare", reference, candidate, "--json", "--seed", "7")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["diverged"] is False and report["first_diverging_tensor"] is None
    assert report["compared"] >= 10 and report["inputs"] == "random(seed=7)"
    text = run_mcc("debug", "compare", reference, candidate)
    assert text.returncode == 0 and "no divergence" in text.stdout


def test_bisect_console_script_on_a_correct_pipeline(tmp_path, run_mcc):
    """The real flow, TVM compile included: nothing diverges, exit 0, and nothing is left on disk."""
    result = run_mcc("debug", "bisect", EXAMPLE, "--target", "host", "--passes", "default",
                     "--inputs", EXAMPLE_INPUTS)
    assert result.returncode == 0, result.stderr
    assert "no divergence" in result.stdout
    assert "fuse-conv-bn" in result.stdout and "tvm-llvm compile for host" in result.stdout
    assert result.stderr == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, code, fragment", [
    (["bisect", "missing.onnx"], 3, "no such file"),
    (["compare", str(EXAMPLE), "missing.onnx"], 3, "no such file"),
    (["bisect", str(EXAMPLE), "--passes", "fuse-conv-bnn"], 2, "unknown pass 'fuse-conv-bnn'"),
    (["bisect", str(EXAMPLE), "--target", "toaster"], 2, "unknown target 'toaster'"),
    (["bisect", str(EXAMPLE), "--inputs", "missing.npz"], 2, "no such file"),
    (["compare", str(EXAMPLE), str(EXAMPLE), "--input-shape", "image=1x1x8by8"], 2, "malformed --input-shape"),
])
def test_bad_input_is_one_line(args, code, fragment, run_mcc):
    result = run_mcc("debug", *args)
    assert result.returncode == code, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("mcc: ") and fragment in line
    assert "Traceback" not in result.stderr and result.stdout == ""
