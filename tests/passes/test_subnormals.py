"""flush-subnormals: subnormal float32/float64 constants become zero; everything else is untouched."""

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mcc.passes import FlushSubnormals
from mcc.toolchain.passmanager import PassContext, PassManager
from mcc.toolchain.pipeline import parse_pipeline
from tests.conftest import assert_same_function, ort_run, random_feed, run_pass
from tests.passes.golden import assert_golden

TINY = np.finfo(np.float32).tiny  # the smallest normal float32, 2^-126


def _conv_with_weights(weight: np.ndarray, constant: np.ndarray | None = None) -> onnx.ModelProto:
    """x -> Conv(1x1) -> y, plus y * c when `constant` is given (a Constant node)."""
    channels = weight.shape[0]
    nodes = [helper.make_node("Conv", ["x", "w"], ["conv"], name="conv")]
    if constant is not None:
        nodes += [helper.make_node("Constant", [], ["c"], name="c", value=numpy_helper.from_array(constant, "c")),
                  helper.make_node("Mul", ["conv", "c"], ["y"], name="mul")]
    else:
        nodes[0].output[0] = "y"
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, weight.shape[1], 2, 2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, channels, 2, 2])],
        [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            arrays[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return arrays


def test_flushes_subnormal_initializer_and_constant_values_keeping_their_sign():
    weight = np.array([[[[1.5]], [[TINY / 4]]], [[[-TINY / 1024]], [[-2.0]]]], np.float32)
    constant = np.array([TINY, -TINY / 2], np.float32).reshape(1, 2, 1, 1)
    model = _conv_with_weights(weight, constant)
    ctx = PassContext()
    result = FlushSubnormals().run(model, ctx)
    assert result.modified
    weights = _weights(result.model)
    np.testing.assert_array_equal(weights["w"].ravel(), [1.5, 0.0, 0.0, -2.0])
    assert np.signbit(weights["w"].ravel()[2])  # -subnormal -> -0, as flush-to-zero hardware does
    np.testing.assert_array_equal(weights["c"].ravel(), [TINY, 0.0])  # the smallest normal stays
    assert ctx.notes == ["flush-subnormals: 3 subnormal or negligible value(s) in 2 constant(s) set to zero"]
    assert_golden("flush_subnormals", result.model)
    assert_same_function(model, result.model)
    onnx.checker.check_model(result.model, full_check=True)


def test_leaves_normal_float16_and_integer_constants_alone():
    # a float16 subnormal (2^-24): CPUs compute float16 in float32, where it is a normal value
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "h"], ["y"], name="mul"), helper.make_node("Identity", ["s0"], ["s"], name="id")],
        "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT16, [4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT16, [4]),
         helper.make_tensor_value_info("s", onnx.TensorProto.INT64, [2])],
        [numpy_helper.from_array(np.array([1, 2**-24, 0.5, 2], np.float16), "h"),
         numpy_helper.from_array(np.array([1, 2], np.int64), "s0")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    assert not run_pass(FlushSubnormals(), model).modified
    assert not run_pass(FlushSubnormals(), _conv_with_weights(np.full((2, 2, 1, 1), 0.5, np.float32))).modified


def test_idempotent():
    once = run_pass(FlushSubnormals(), _conv_with_weights(np.full((2, 2, 1, 1), TINY / 8, np.float32))).model
    assert not run_pass(FlushSubnormals(), once).modified


def test_the_default_pipeline_leaves_no_subnormal_weight_after_folding_a_switched_off_channel():
    """A BatchNormalization whose gamma is 1e-39 for one channel (a channel training switched off):
    fuse-conv-bn makes that channel's weights subnormal, and the pipeline's last pass flushes them."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    gamma = np.array([1.0, 1e-39], np.float32)  # itself subnormal in float32: 1e-39 < 2^-126
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["y"], name="bn")],
        "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2, 8, 8])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(gamma, "gamma"),
         numpy_helper.from_array(np.array([0.1, 0.2], np.float32), "beta"),
         numpy_helper.from_array(np.zeros(2, np.float32), "mean"),
         numpy_helper.from_array(np.ones(2, np.float32), "var")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    folded, _ = PassManager(parse_pipeline("fuse-conv-bn")).run(model)
    subnormal = lambda a: np.count_nonzero((a != 0) & (np.abs(a) < TINY))  # noqa: E731
    assert sum(subnormal(a) for a in _weights(folded).values()) > 0  # the fold makes them
    optimized, records = PassManager(parse_pipeline("default")).run(model)
    assert sum(subnormal(a) for a in _weights(optimized).values()) == 0
    assert [r.name for r in records if r.modified][-1] == "flush-subnormals"
    feed = random_feed(model)
    np.testing.assert_allclose(ort_run(optimized, feed)[0], ort_run(model, feed)[0], rtol=1e-5, atol=1e-6)


def test_zeroes_convolution_and_matmul_weights_below_the_threshold_but_no_other_constant():
    """A dead channel's weights just above the subnormal range keep every partial sum subnormal;
    below 2^-100 they go, in Conv/MatMul weights only (a Mul by 1e-35 may be undone by a later one)."""
    small = np.float32(2.0 ** -110)
    weight = np.array([[[[small]], [[1.0]]], [[[-small]], [[2.0 ** -90]]]], np.float32)
    model = _conv_with_weights(weight, constant=np.full((1, 2, 1, 1), small, np.float32))
    result = run_pass(FlushSubnormals(), model)
    weights = _weights(result.model)
    np.testing.assert_array_equal(weights["w"].ravel(), [0.0, 1.0, 0.0, np.float32(2.0 ** -90)])
    np.testing.assert_array_equal(weights["c"], np.full((1, 2, 1, 1), small, np.float32))  # a Mul's operand
    assert_same_function(model, result.model)
    # with the threshold at 2^-120 those weights are no longer negligible
    assert not run_pass(FlushSubnormals(min_weight_log2=-120), model).modified


def test_the_threshold_option_is_checked():
    import pytest

    with pytest.raises(ValueError, match="min-weight-log2"):
        FlushSubnormals(min_weight_log2=-20)
