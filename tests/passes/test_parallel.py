"""combine-parallel: sibling Conv / MatMul nodes reading one input -> one node and a Split."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcc.passes import CombineParallel
from mcc.toolchain.passmanager import PassContext
from tests.conftest import assert_same_function, op_types, run_pass
from tests.passes.golden import assert_golden, without_weights


def _model(nodes, inputs, outputs, weights, opset=17):
    graph = helper.make_graph(nodes, "siblings", inputs, outputs,
                              initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def stft_model(opset=17, second_bias=False, strides=(4, 4), second_kernel=8):
    """Two 1-D convolutions over one signal, as openWakeWord's melspectrogram writes its STFT."""
    rng = np.random.default_rng(0)
    weights = {"w_re": rng.normal(size=(5, 1, 8)).astype(np.float32),
               "w_im": rng.normal(size=(5, 1, second_kernel)).astype(np.float32)}
    im_inputs = ["x", "w_im"]
    if second_bias:
        weights["b_im"] = rng.normal(size=5).astype(np.float32)
        im_inputs.append("b_im")
    frames = (64 - 8) // strides[0] + 1
    nodes = [helper.make_node("Conv", ["x", "w_re"], ["re"], name="conv_re", kernel_shape=[8], strides=[strides[0]]),
             helper.make_node("Conv", im_inputs, ["im"], name="conv_im", kernel_shape=[second_kernel],
                              strides=[strides[1]]),
             helper.make_node("Mul", ["re", "re"], ["re2"], name="sq_re"),
             helper.make_node("Mul", ["im", "im"], ["im2"], name="sq_im"),
             helper.make_node("Add", ["re2", "im2"], ["y"], name="power")]
    shape = [1, 5, frames]
    if strides[0] != strides[1] or second_kernel != 8:
        nodes[-1] = helper.make_node("Concat", ["re2", "im2"], ["y"], name="cat", axis=2)
        shape = [1, 5, None]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 64])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], weights, opset)


def test_stft_convolutions_merge_into_one_and_a_split():
    model = stft_model(second_bias=True)
    result = run_pass(CombineParallel(), model)
    assert op_types(result.model) == ["Conv", "Split", "Mul", "Mul", "Add"]
    conv = result.model.graph.node[0]
    weights = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert weights[conv.input[1]].shape == (10, 1, 8)
    # the first convolution had no bias: its half of the combined bias is zeros
    np.testing.assert_array_equal(weights[conv.input[2]][:5], 0)
    assert not {"w_re", "w_im", "b_im"} & set(weights), "the siblings' own weights are gone"
    assert_same_function(model, result.model)
    assert_golden("combine_parallel", without_weights(result.model))
    assert not run_pass(CombineParallel(), result.model).modified


def test_three_2d_convolutions_one_of_them_a_graph_output():
    rng = np.random.default_rng(1)
    weights = {f"w{i}": rng.normal(size=(c, 3, 3, 3)).astype(np.float32) for i, c in enumerate((4, 6, 2))}
    weights.update({f"b{i}": rng.normal(size=c).astype(np.float32) for i, c in enumerate((4, 6, 2))})
    nodes = [helper.make_node("Conv", ["x", f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1],
                              strides=[2, 2]) for i in range(3)]
    nodes += [helper.make_node("Relu", ["c0"], ["r0"]), helper.make_node("Sigmoid", ["c2"], ["r2"])]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, c, 4, 4])
               for n, c in (("r0", 4), ("c1", 6), ("r2", 2))]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])], outputs, weights)
    result = run_pass(CombineParallel(), model)
    assert op_types(result.model) == ["Conv", "Split", "Relu", "Sigmoid"]
    assert list(result.model.graph.node[1].output) == ["c0", "c1", "c2"]
    assert_same_function(model, result.model)


def test_matmuls_sharing_their_left_operand_merge_along_the_columns():
    """Attention's query/key/value projections: [1, 6, 8] x [8, 4] three times."""
    rng = np.random.default_rng(2)
    weights = {name: rng.normal(size=(8, 4)).astype(np.float32) for name in ("wq", "wk", "wv")}
    nodes = [helper.make_node("MatMul", ["x", w], [w[1]], name=f"proj_{w[1]}") for w in ("wq", "wk", "wv")]
    nodes += [helper.make_node("Sum", ["q", "k", "v"], ["y"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 8])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 4])], weights)
    result = run_pass(CombineParallel(), model)
    assert op_types(result.model) == ["MatMul", "Split", "Sum"]
    split = result.model.graph.node[1]
    assert next(a.i for a in split.attribute if a.name == "axis") == -1
    assert_same_function(model, result.model)


def test_old_opsets_get_split_sizes_as_an_attribute():
    model = stft_model(opset=11)
    result = run_pass(CombineParallel(), model)
    split = result.model.graph.node[1]
    assert len(split.input) == 1 and next(a.ints for a in split.attribute if a.name == "split") == [5, 5]
    onnx.checker.check_model(result.model, full_check=True)
    assert_same_function(model, result.model)


def test_matmuls_of_opsets_before_11_stay():
    """Split takes a negative axis from opset 11 on; MatMul siblings are merged only there."""
    rng = np.random.default_rng(2)
    weights = {name: rng.normal(size=(8, 4)).astype(np.float32) for name in ("wq", "wk")}
    nodes = [helper.make_node("MatMul", ["x", w], [w[1]]) for w in weights]
    nodes.append(helper.make_node("Add", ["q", "k"], ["y"]))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 8])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 4])]
    assert not run_pass(CombineParallel(), _model(nodes, inputs, outputs, weights, opset=10)).modified
    assert run_pass(CombineParallel(), _model(nodes, inputs, outputs, weights, opset=11)).modified


@pytest.mark.parametrize("build", [
    lambda: stft_model(strides=(4, 2)),  # different attributes
    lambda: stft_model(second_kernel=6),  # different kernel shapes
])
def test_siblings_that_differ_stay(build):
    model = build()
    assert not run_pass(CombineParallel(), model).modified


def test_grouped_convolutions_and_overridable_weights_stay():
    rng = np.random.default_rng(3)
    weights = {"w0": rng.normal(size=(4, 1, 3, 3)).astype(np.float32),
               "w1": rng.normal(size=(4, 1, 3, 3)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", f"w{i}"], [f"y{i}"], group=4) for i in range(2)]
    outputs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, 4, 4, 4]) for i in range(2)]
    grouped = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])], outputs, weights)
    assert not run_pass(CombineParallel(), grouped).modified

    overridable = stft_model()
    overridable.graph.input.append(helper.make_tensor_value_info("w_im", TensorProto.FLOAT, [5, 1, 8]))
    assert not run_pass(CombineParallel(), overridable).modified


def test_not_without_split_in_the_target():
    ctx = PassContext(supported_ops=frozenset({"Conv", "Mul", "Add"}))
    assert not CombineParallel().run(stft_model(), ctx).modified

