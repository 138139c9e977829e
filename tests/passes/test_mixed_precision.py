"""--precision mixed: per-layer sensitivity, and the most sensitive layers back in float32 until the
accuracy budget holds (passes/quantize/mixed.py), through the API and the real console script."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcc.passes.quantize import mixed
from mcc.passes.quantize.int8 import QuantizeInt8
from mcc.toolchain.errors import UsageError
from mcc.toolchain.passmanager import PassContext
from tests.conftest import ort_run


def sensitive_model() -> onnx.ModelProto:
    """x -> MatMul(W1) -> Relu -> MatMul(W2) -> y. W1's first column is 1000x the others, so the
    second MatMul's input has one huge channel: its per-tensor int8 scale leaves the other channels
    a few steps (very sensitive), while the first MatMul's input quantizes well."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(16, 32)).astype(np.float32)
    w1[:, 0] *= 1000.0
    w2 = rng.normal(size=(32, 10)).astype(np.float32)
    w2[0] *= 1e-4  # the outlier channel barely reaches the output
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("MatMul", ["r", "w2"], ["y"], name="second")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _samples(count, seed):
    # positive first feature: the outlier channel is always live after the ReLU
    x = np.random.default_rng(seed).normal(size=(count, 1, 16)).astype(np.float32)
    x[:, :, :] = np.abs(x)
    return x


@pytest.fixture
def data_files(tmp_path):
    model = sensitive_model()
    calib, evaluation = _samples(64, 1), _samples(200, 2)
    labels = np.array([ort_run(model, {"x": sample})[0].argmax() for sample in evaluation])
    np.savez(tmp_path / "calib.npz", x=calib)
    np.savez(tmp_path / "eval.npz", x=evaluation, labels=labels)
    np.savez(tmp_path / "eval_nolabels.npz", x=evaluation)
    np.savez(tmp_path / "validate.npz", x=_samples(1, 3)[0])  # in the calibrated range, as real inputs are
    onnx.save(model, tmp_path / "model.onnx")
    return tmp_path


def test_fidelity_budget_keeps_the_sensitive_layer_in_float(data_files):
    model = sensitive_model()
    data = mixed.load_eval_data(data_files / "eval_nolabels.npz", model)
    result = mixed.search(model, QuantizeInt8(calib_data=str(data_files / "calib.npz")), data,
                          mixed.Budget(min_sqnr_db=25.0), PassContext())
    report = result.report
    layers = {layer["node"]: layer for layer in report["layers"]}
    assert report["all_int8"] < 25.0 <= report["chosen"], report  # the budget needed the search
    assert layers["second"]["sensitivity"] < layers["first"]["sensitivity"]
    assert layers["second"]["precision"] == "fp32" and layers["first"]["precision"] == "int8"
    assert report["budget_met"] and report["int8_layers"] == 1
    ops = [node.op_type for node in result.model.graph.node]
    assert ops.count("DequantizeLinear") == 2  # the first MatMul's activation and weight only
    # the chosen model really has the measured fidelity
    evaluation = np.load(data_files / "eval_nolabels.npz")["x"]
    want = np.concatenate([ort_run(model, {"x": s})[0].reshape(-1) for s in evaluation])
    got = np.concatenate([ort_run(result.model, {"x": s})[0].reshape(-1) for s in evaluation])
    assert abs(mixed.sqnr_db(want, got) - report["chosen"]) < 1e-3


def test_fp16_fallback_where_it_still_meets_the_budget(data_files):
    model = sensitive_model()
    data = mixed.load_eval_data(data_files / "eval_nolabels.npz", model)
    result = mixed.search(model, QuantizeInt8(calib_data=str(data_files / "calib.npz")), data,
                          mixed.Budget(min_sqnr_db=25.0), PassContext(), fallback="fp16")
    report = result.report
    assert report["fallback_precision"] == "fp16" and report["fp16_layers"] == 1 and report["fp32_layers"] == 0
    assert [layer["precision"] for layer in report["layers"]] == ["int8", "fp16"]
    second = next(node for node in result.model.graph.node if node.name == "second")
    weight = next(t for t in result.model.graph.initializer if t.name == second.input[1])
    assert weight.data_type == TensorProto.FLOAT16 and report["budget_met"]
    # a budget only float32 meets (fp16 rounds): every layer falls back, and stays float32
    strict = mixed.search(model, QuantizeInt8(calib_data=str(data_files / "calib.npz")), data,
                          mixed.Budget(min_sqnr_db=200.0), PassContext(), fallback="fp16")
    assert strict.report["fallback_precision"] == "fp32" and strict.report["fp32_layers"] == 2
    assert strict.model is model or strict.report["chosen"] is None  # the float32 model: infinite SQNR


def test_top1_budget_with_labels(data_files):
    model = sensitive_model()
    data = mixed.load_eval_data(data_files / "eval.npz", model)
    result = mixed.search(model, QuantizeInt8(calib_data=str(data_files / "calib.npz")), data,
                          mixed.Budget(max_accuracy_drop=1.0), PassContext())
    report = result.report
    assert report["fp32"] == 100.0  # the labels are the float32 model's own predictions
    assert report["all_int8"] < 99.0 and report["chosen"] >= 99.0 and report["budget_met"], report
    assert [layer["precision"] for layer in report["layers"]] == ["int8", "fp32"]
    assert report["top5"]["fp32"] == 100.0 and report["top5"]["chosen"] >= report["chosen"]
    # float32, all-int8, one per layer, one fallback step: top-5 reuses those runs
    assert report["evaluations"] == 1 + 1 + 2 + 1


def test_a_budget_int8_meets_keeps_every_layer_int8(data_files):
    model = sensitive_model()
    data = mixed.load_eval_data(data_files / "eval_nolabels.npz", model)
    result = mixed.search(model, QuantizeInt8(calib_data=str(data_files / "calib.npz")), data,
                          mixed.Budget(min_sqnr_db=-100.0), PassContext())
    assert result.report["int8_layers"] == 2 and result.report["fp32_layers"] == 0


def test_top1_needs_labels(data_files):
    model = sensitive_model()
    data = mixed.load_eval_data(data_files / "eval_nolabels.npz", model)
    with pytest.raises(UsageError, match="needs labels"):
        mixed.Evaluator(model, data, mixed.Budget(max_accuracy_drop=0.5))


def test_cli_mixed_precision_reports_the_search(run_mcc, data_files):
    result = run_mcc("compile", data_files / "model.onnx", "--precision", "mixed",
                     "--calib-data", data_files / "calib.npz", "--eval-data", data_files / "eval.npz",
                     "--max-accuracy-drop", "1", "--inputs", data_files / "validate.npz", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    search = report["precision_search"]
    assert search["budget_met"] and search["fp32_layers"] == 1 and report["validation"]["passed"]
    assert report["validation"]["precision"] == "mixed"


@pytest.mark.parametrize("args, message", [
    (["--precision", "mixed", "--calib-data", "calib.npz", "--max-accuracy-drop", "1"], "needs --eval-data"),
    (["--precision", "mixed", "--calib-data", "calib.npz", "--eval-data", "eval.npz"], "needs a budget"),
    (["--precision", "mixed", "--calib-data", "calib.npz", "--eval-data", "eval_nolabels.npz",
      "--max-accuracy-drop", "1"], "needs labels"),
    (["--precision", "fp16", "--eval-data", "eval.npz"], "apply to --precision int8 or mixed"),
    (["--precision", "int8", "--calib-data", "calib.npz", "--max-accuracy-drop", "1"], "is measured on --eval-data"),
])
def test_cli_usage_errors(run_mcc, data_files, args, message):
    args = [str(data_files / a) if a.endswith(".npz") else a for a in args]
    result = run_mcc("compile", data_files / "model.onnx", *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_int8_with_eval_data_reports_the_metric_and_enforces_the_budget(run_mcc, data_files):
    common = ["--precision", "int8", "--calib-data", data_files / "calib.npz", "--eval-data", data_files / "eval.npz",
              "--inputs", data_files / "validate.npz"]
    # this model is built to lose accuracy at int8: validation is told to accept that (--min-sqnr-db)
    measured = run_mcc("compile", data_files / "model.onnx", *common, "--min-sqnr-db", "-50", "-o", data_files / "a",
                       "--json")
    assert measured.returncode == 0, measured.stderr
    accuracy = json.loads(measured.stdout)["accuracy"]
    assert accuracy["fp32"] == 100.0 and accuracy["int8"] < 99.0 and "budget" not in accuracy
    assert accuracy["top5"]["fp32"] == 100.0
    refused = run_mcc("compile", data_files / "model.onnx", *common, "--max-accuracy-drop", "0.5",
                      "-o", data_files / "b")
    assert refused.returncode == 4, refused.stderr
    assert "misses the accuracy budget" in refused.stderr and "--precision mixed" in refused.stderr
    assert not (data_files / "b").exists()  # no half-written output


def test_tune_takes_mixed_precision(run_mcc, data_files):
    """`mcc tune --precision mixed` runs the same search as compile and tunes the kernels of the mixed model."""
    result = run_mcc("tune", data_files / "model.onnx", "--budget", "10s", "--precision", "mixed",
                     "--calib-data", data_files / "calib.npz", "--eval-data", data_files / "eval.npz",
                     "--max-accuracy-drop", "1", "--max-trials-per-task", "2", "--json",
                     env={"MCC_CACHE_DIR": str(data_files / "cache")})
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert any(note.startswith("precision search: 1 of 2 layer(s) int8") for note in payload["notes"]), payload["notes"]
    kernels = [*payload["tuning"]["tuned"], *payload["tuning"]["skipped"], *payload["tuning"]["already_in_database"]]
    # the int8 layer's requantization (to uint8 directly: TVM names its kernel after the formula)
    assert any("quantize" in name or ("round" in name and "cast" in name) for name in kernels), kernels
