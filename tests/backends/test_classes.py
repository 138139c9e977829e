"""A classifier's softmax over a class count that is no multiple of the vector width: classes
padded (zero weights, the lowest float as their bias) so the softmax sums in vector lanes, the
probabilities sliced back. The artifact must compute what onnxruntime computes."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcc.backends import get_backend
from mcc.backends.tvm.integer import target_has_integer_dot
from mcc.hwmodels import load_target
from tests.conftest import ort_run

HOST = load_target("host").tvm()


def classifier(classes: int, *, quantized: bool = False, bias: bool = True, seed: int = 0):
    """x [1, 8, 64] -> MatMul (float, or QDQ with int8 weights per column) [-> Add bias] -> Softmax."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(scale=0.5, size=(64, classes)).astype(np.float32)
    inits = {"b": rng.normal(size=classes).astype(np.float32)}
    nodes = []
    source, weight_name = "x", "w"
    if quantized:
        scale = np.abs(weight).max(axis=0) / 127
        inits.update({"w_q": np.round(weight / scale).astype(np.int8), "w_s": scale.astype(np.float32),
                      "w_z": np.zeros(classes, np.int8), "x_s": np.array(0.02, np.float32),
                      "x_z": np.array(0, np.int8)})
        nodes += [helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "x_s", "x_z"], ["xd"]),
                  helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["wd"], axis=1)]
        source, weight_name = "xd", "wd"
    else:
        inits["w"] = weight
    nodes.append(helper.make_node("MatMul", [source, weight_name], ["m"]))
    logits = "m"
    if bias:
        nodes.append(helper.make_node("Add", ["m", "b"], ["a"]))
        logits = "a"
    else:
        del inits["b"]
    nodes.append(helper.make_node("Softmax", [logits], ["y"], axis=-1))
    graph = helper.make_graph(nodes, "classifier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
                              initializer=[numpy_helper.from_array(a, n) for n, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _compile_and_compare(model, tmp_path, atol):
    backend = get_backend("tvm-llvm")
    artifact = backend.compile(model, HOST, {"x": (1, 8, 64)}, tmp_path / "m.so")
    feed = {"x": np.random.default_rng(1).normal(size=(1, 8, 64)).astype(np.float32)}
    got, want = backend.load(artifact.library, model).run(feed)[0], ort_run(model, feed)[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)
    return artifact.details


@pytest.mark.parametrize("bias", [True, False])
def test_float_classifier_softmax_is_padded_and_matches_onnxruntime(bias, tmp_path):
    details = _compile_and_compare(classifier(2005, bias=bias), tmp_path, atol=1e-6)
    assert details["padded_softmax_classes"] == 1


@pytest.mark.skipif(not target_has_integer_dot(HOST), reason="this CPU has no AVX-512 VNNI")
def test_quantized_classifier_is_padded_before_its_integer_kernel(tmp_path):
    """quantize-int8's classifier: the int8 weight columns are padded (scale 1, zero point 0),
    then lowered to an integer kernel that needs no padding of its own."""
    details = _compile_and_compare(classifier(2005, quantized=True), tmp_path, atol=1e-5)
    assert details["padded_softmax_classes"] == 1 and details["integer_kernels"] == 1


@pytest.mark.parametrize("classes", [2048, 1000])
def test_whole_vectors_and_short_softmaxes_are_left_alone(classes, tmp_path):
    details = _compile_and_compare(classifier(classes), tmp_path, atol=1e-6)
    assert details["padded_softmax_classes"] == 0
