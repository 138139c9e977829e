"""quantize-weights (weight-only int8) and quantize-dynamic (per-call uint8 activations,
MatMulInteger): numerics against onnxruntime on the float model, the op pattern, idempotence,
and the dynamic model compiled by TVM against onnxruntime on the same model."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcc.passes.quantize.weights import QuantizeDynamic, QuantizeWeights
from tests.conftest import op_types, ort_run, run_pass


def dense_model(trans_b=0, alpha=1.0, beta=1.0) -> onnx.ModelProto:
    """x[4, 24] -> MatMul(W1[24, 32]) -> Relu -> Gemm(W2, C) -> y[4, 10]."""
    rng = np.random.default_rng(0)
    w2 = rng.normal(size=(10, 32) if trans_b else (32, 10)).astype(np.float32)
    inits = {"w1": rng.normal(size=(24, 32)).astype(np.float32), "w2": w2,
             "c": rng.normal(size=(10,)).astype(np.float32)}
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "w2", "c"], ["y"], name="second", transB=trans_b, alpha=alpha, beta=beta)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 24])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 10])],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _sqnr_db(want, got):
    return 10 * np.log10(np.sum(want.astype(np.float64) ** 2) / np.sum((want.astype(np.float64) - got) ** 2))


FEED = {"x": np.random.default_rng(1).normal(size=(4, 24)).astype(np.float32)}


def test_weight_only_int8_keeps_float_activations():
    model = dense_model()
    result = run_pass(QuantizeWeights(), model)
    assert op_types(result.model) == ["DequantizeLinear", "MatMul", "Relu", "DequantizeLinear", "Gemm"]
    sizes = [numpy_helper.to_array(t).dtype for t in result.model.graph.initializer if len(t.dims) == 2]
    assert sizes == [np.int8, np.int8]  # the float weights are gone
    want, got = ort_run(model, FEED)[0], ort_run(result.model, FEED)[0]
    assert _sqnr_db(want, got) > 35  # int8 weights alone: ~40 dB
    assert not run_pass(QuantizeWeights(), result.model).modified


@pytest.mark.parametrize("trans_b, alpha, beta", [(0, 1.0, 1.0), (1, 0.5, 2.0)])
def test_dynamic_int8_matches_float_within_int8_error(trans_b, alpha, beta):
    model = dense_model(trans_b, alpha, beta)
    result = run_pass(QuantizeDynamic(), model)
    ops = op_types(result.model)
    assert ops.count("DynamicQuantizeLinear") == 2 and ops.count("MatMulInteger") == 2
    assert "MatMul" not in ops and "Gemm" not in ops
    want, got = ort_run(model, FEED)[0], ort_run(result.model, FEED)[0]
    assert _sqnr_db(want, got) > 25, _sqnr_db(want, got)
    assert not run_pass(QuantizeDynamic(), result.model).modified


def test_one_dynamic_quantization_per_activation():
    """Two MatMuls reading the same input share its DynamicQuantizeLinear."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "a"], ["p"]), helper.make_node("MatMul", ["x", "b"], ["q"]),
         helper.make_node("Add", ["p", "q"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        initializer=[numpy_helper.from_array(rng.normal(size=(8, 4)).astype(np.float32), n) for n in "ab"])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = run_pass(QuantizeDynamic(), model)
    assert op_types(result.model).count("DynamicQuantizeLinear") == 1


def test_dynamic_model_compiles_with_tvm_and_matches_onnxruntime(tmp_path):
    from mcc.backends import get_backend
    from mcc.hwmodels import load_target

    quantized = run_pass(QuantizeDynamic(), dense_model()).model
    backend = get_backend("tvm-llvm")
    artifact = backend.compile(quantized, load_target("host").tvm(), {"x": (4, 24)}, tmp_path / "m.so")
    got = backend.load(artifact.library, quantized).run(FEED)[0]
    np.testing.assert_allclose(got, ort_run(quantized, FEED)[0], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_blockwise_int4_weights(trans_b, tmp_path):
    from mcc.backends import get_backend
    from mcc.hwmodels import load_target
    from mcc.passes.quantize.weights import QuantizeWeightsInt4

    from mcc.toolchain.passmanager import PassContext, PassManager

    model = dense_model(trans_b)
    # through the pass manager: it upgrades the model to the pass's opset 21 first
    quantized, records = PassManager([QuantizeWeightsInt4(block_size=8)], PassContext()).run(model)
    assert [r.name for r in records if r.modified] == ["upgrade-opset", "quantize-weights-int4"]
    ints = [t for t in quantized.graph.initializer if t.data_type == TensorProto.INT4]
    assert len(ints) == 2
    dq = [n for n in quantized.graph.node if n.op_type == "DequantizeLinear"]
    assert [next(a.i for a in n.attribute if a.name == "block_size") for n in dq] == [8, 8]
    scales = {t.name: numpy_helper.to_array(t) for t in quantized.graph.initializer}
    assert scales[dq[0].input[1]].shape == (3, 32)  # W1 [24, 32]: 24 / 8 blocks along K
    assert scales[dq[1].input[1]].shape == ((10, 4) if trans_b else (4, 10))  # K = 32 on axis 1 with transB
    want, got = ort_run(model, FEED)[0], ort_run(quantized, FEED)[0]
    assert 15 < _sqnr_db(want, got) < 35  # int4: coarser than int8's ~40 dB, still the same function
    assert not run_pass(QuantizeWeightsInt4(block_size=8), quantized).modified
    # TVM cannot read int4 initializers; its backend folds the constant dequantization first
    backend = get_backend("tvm-llvm")
    artifact = backend.compile(quantized, load_target("host").tvm(), {"x": (4, 24)}, tmp_path / "m.so")
    np.testing.assert_allclose(backend.load(artifact.library, quantized).run(FEED)[0], got, rtol=1e-5, atol=1e-4)


def test_through_passes_validation_uses_int8_tolerances(run_mcc, tmp_path):
    """quantize-dynamic in --passes: the artifact is judged at int8's tolerances, not float32's."""
    import json

    onnx.save(dense_model(), tmp_path / "m.onnx")
    result = run_mcc("compile", tmp_path / "m.onnx", "--passes", "quantize-dynamic", "-o", tmp_path / "out", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["validation"]["passed"] and report["validation"]["precision"] == "int8"


def test_unknown_node_names_are_usage_errors():
    from mcc.passes.quantize.fp16 import ConvertFloat16
    from mcc.toolchain.errors import UsageError

    with pytest.raises(UsageError, match="no node named secnd"):
        run_pass(ConvertFloat16(nodes="second,secnd"), dense_model())
