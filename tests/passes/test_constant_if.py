"""fold-constant-if, and --const-input specialising an input so an If's condition folds."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcc.passes.control.constant_if import FoldConstantIf
from mcc.passes.simplify.fold_constants import FoldConstants
from mcc.toolchain import ir
from mcc.toolchain.passmanager import PassManager
from tests.conftest import op_types, ort_run, random_feed, run_pass
from tests.passes.golden import assert_golden


def sample_rate_model() -> onnx.ModelProto:
    """y = x * 2 if sr == 16000 else reshape-heavy x * 3 (branches of different structure)."""
    value = helper.make_tensor_value_info
    then_graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["t_out"], name="then_mul")], "then", [],
        [value("t_out", TensorProto.FLOAT, [1, 8])], initializer=[numpy_helper.from_array(np.float32(2.0), "two")])
    else_graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "three"], ["e_mid"], name="else_mul"),
         helper.make_node("Relu", ["e_mid"], ["e_out"], name="else_relu")], "else", [],
        [value("e_out", TensorProto.FLOAT, [1, 8])], initializer=[numpy_helper.from_array(np.float32(3.0), "three")])
    nodes = [helper.make_node("Equal", ["sr", "rate"], ["is16k"], name="eq"),
             helper.make_node("If", ["is16k"], ["y"], name="branch", then_branch=then_graph, else_branch=else_graph)]
    graph = helper.make_graph(nodes, "g", [value("x", TensorProto.FLOAT, [1, 8]), value("sr", TensorProto.INT64, [])],
                              [value("y", TensorProto.FLOAT, [1, 8])],
                              initializer=[numpy_helper.from_array(np.int64(16000), "rate")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("rate, ops", [(16000, ["Mul"]), (8000, ["Mul", "Relu"])])
def test_const_input_then_folding_inlines_the_taken_branch(rate, ops):
    model = sample_rate_model()
    specialized, constants = ir.specialize_inputs(model, {"sr": [rate]})
    assert constants["sr"].dtype == np.int64 and [v.name for v in specialized.graph.input] == ["x"]
    after, _ = PassManager([FoldConstants(), FoldConstantIf()]).run(specialized)
    assert op_types(after) == ops
    feed = random_feed(after)
    np.testing.assert_allclose(ort_run(after, feed)[0], ort_run(model, {**feed, "sr": constants["sr"]})[0])
    assert not run_pass(FoldConstantIf(), after).modified
    if rate == 8000:
        assert_golden("fold_constant_if", after)


def test_if_with_a_data_dependent_condition_stays():
    assert not run_pass(FoldConstantIf(), sample_rate_model()).modified


def test_const_input_errors():
    model = sample_rate_model()
    from mcc.toolchain.errors import UsageError

    with pytest.raises(UsageError, match="unknown input 'rate_hz'; the model's inputs are: x, sr"):
        ir.specialize_inputs(model, {"rate_hz": [1]})
    with pytest.raises(UsageError, match="the input is int64, the values are not integers"):
        ir.specialize_inputs(model, {"sr": [16000.5]})
    with pytest.raises(UsageError, match="3 values given, the input has 1"):
        ir.specialize_inputs(model, {"sr": [1, 2, 3]})
    with pytest.raises(UsageError, match="outside int64's range"):
        ir.specialize_inputs(model, {"sr": [2**63]})
    assert ir.specialize_inputs(model, {"sr": [2**63 - 1]})[1]["sr"] == 2**63 - 1  # exact, not through a float


def test_compile_with_const_input_through_the_console_script(run_mcc, tmp_path):
    path = tmp_path / "sr_model.onnx"
    onnx.save(sample_rate_model(), path)
    out = tmp_path / "out"
    result = run_mcc("compile", str(path), "--const-input", "sr=8000", "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model"]["const_inputs"] == {"sr": 8000}
    assert report["validation"]["passed"]
    assert any("takes its else branch" in note for note in report["notes"])
    assert [n.op_type for n in onnx.load(out / "model.onnx").graph.node] == ["Mul", "Relu"]
    bad = run_mcc("compile", str(path), "--const-input", "sr=abc", "-o", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "'abc' is not a number" in bad.stderr and "Traceback" not in bad.stderr
