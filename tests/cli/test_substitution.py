"""Target-driven substitution end to end: a target that lacks an op, exact decompositions, and
approximations that need the user's accuracy budget (through the real console script and TVM)."""

import json
import re

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mcc.hwmodels import TARGETS_DIR


def target_without(tmp_path, name: str, ops: list[str]):
    """A copy of the host target whose device cannot run `ops`."""
    text = (TARGETS_DIR / "host.toml").read_text().replace('name = "host"', f'name = "{name}"')
    text = re.sub(r"\[support\]\n", "[support]\nexcluded_ops = " + json.dumps(ops) + "\n", text, count=1)
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def activation_model(tmp_path, op: str, opset: int):
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="dense"), helper.make_node(op, ["m"], ["y"], name="act")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
                              initializer=[numpy_helper.from_array(rng.normal(size=(16, 16)).astype(np.float32), "w")])
    path = tmp_path / f"{op.lower()}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9), path)
    return path


def test_an_op_the_target_lacks_is_decomposed_exactly(tmp_path, run_mcc):
    target = target_without(tmp_path, "host-no-gelu", ["Gelu"])
    out = tmp_path / "out"
    result = run_mcc("compile", activation_model(tmp_path, "Gelu", 20), "--target", target, "-o", out, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["validation"]["passed"] and report["lossy_rewrites"] == []
    ops = [n.op_type for n in onnx.load(out / "model.onnx").graph.node]
    assert "Gelu" not in ops and "Erf" in ops


def test_an_approximation_needs_the_budget_and_is_judged_by_it(tmp_path, run_mcc):
    target = target_without(tmp_path, "host-no-sigmoid", ["Sigmoid"])
    model = activation_model(tmp_path, "Sigmoid", 17)
    refused = run_mcc("compile", model, "--target", target, "-o", tmp_path / "refused")
    assert refused.returncode == 5
    assert refused.stderr.strip() == ("mcc: unsupported: op 'Sigmoid' at node 'act' is not supported by backend "
                                      "tvm-llvm for target 'host-no-sigmoid'")
    allowed = run_mcc("compile", model, "--target", target, "--min-sqnr-db", "15", "-o", tmp_path / "ok", "--json")
    assert allowed.returncode == 0, allowed.stderr
    report = json.loads(allowed.stdout)
    assert report["lossy_rewrites"] == ["decompose-unsupported: approximate-sigmoid at 'act'"]
    (output,) = report["validation"]["outputs"]
    assert output["passed"] and output["tolerance"] == "budget: SQNR >= 15 dB" and 15 <= output["sqnr_db"] < 60
    strict = run_mcc("compile", model, "--target", target, "--min-sqnr-db", "60", "-o", tmp_path / "strict")
    assert strict.returncode == 4 and "Traceback" not in strict.stderr
    assert "< the budget 60 dB" in strict.stdout  # the summary says which output missed the budget, by how much


def test_convinteger_compiles_exactly_on_a_backend_without_it(tmp_path, run_mcc):
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.integers(0, 256, size=(8, 3, 3, 3)).astype(np.uint8), "w"),
             numpy_helper.from_array(np.array(128, np.uint8), "x_zp"),
             numpy_helper.from_array(np.array(119, np.uint8), "w_zp")]
    graph = helper.make_graph(
        [helper.make_node("ConvInteger", ["x", "w", "x_zp", "w_zp"], ["c"], name="qconv", pads=[1, 1, 1, 1]),
         helper.make_node("Cast", ["c"], ["y"], name="to_float", to=TensorProto.FLOAT)], "g",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], initializer=inits)
    path = tmp_path / "convinteger.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    result = run_mcc("compile", path, "-o", tmp_path / "out", "--json")
    assert result.returncode == 0, result.stderr
    (output,) = json.loads(result.stdout)["validation"]["outputs"]
    assert output["passed"] and output["max_abs"] == 0.0  # integer sums, bit-exact
