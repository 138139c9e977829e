import numpy as np
import onnx
import pytest

from mcc.passes import FoldConstants
from mcc.toolchain import ir
from tests.conftest import assert_same_function, op_types, parse_model, run_pass
from tests.passes.golden import assert_golden

# The flatten a PyTorch export writes: the target shape is computed from Shape at run time.
SHAPE_CHAIN = """
<ir_version: 8, opset_import: ["" : 17]>
flatten (float[2, 3, 4, 5] x) => (float[2, 60] y) {
    s = Shape(x)
    i0 = Constant<value = int64 {0}>()
    batch = Gather<axis = 0>(s, i0)
    axes = Constant<value = int64[1] {0}>()
    batch1 = Unsqueeze(batch, axes)
    minus1 = Constant<value = int64[1] {-1}>()
    shape = Concat<axis = 0>(batch1, minus1)
    y = Reshape(x, shape)
}
"""

# Pad amounts and Slice bounds computed from the input's shape; Expand to a computed shape.
PAD_SLICE_EXPAND = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 4, 6] x) => (float[1, 4, 8] y, float[3, 4, 6] z) {
    s = Shape(x)
    zeros = Constant<value = int64[2] {0, 0}>()
    one = Constant<value = int64[1] {1}>()
    pads = Concat<axis = 0>(zeros, one, zeros, one)
    p = Pad(x, pads)
    start = Constant<value = int64[1] {0}>()
    end = Constant<value = int64[1] {8}>()
    ax = Constant<value = int64[1] {2}>()
    y = Slice(p, start, end, ax)
    three = Constant<value = int64[1] {3}>()
    three_end = Constant<value = int64[1] {3}>()
    rest = Slice(s, one, three_end)
    target = Concat<axis = 0>(three, rest)
    z = Expand(x, target)
}
"""

NOTHING_CONSTANT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 3] x, float[2, 3] w) => (float[2, 3] y) {
    a = Add(x, w)
    y = Relu(a)
}
"""

WEIGHT_ARITHMETIC = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 4] x) => (float[1, 3] y) {
    w = Constant<value = float[3, 4] {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}>()
    wt = Transpose<perm = [1, 0]>(w)
    two = Constant<value = float {2}>()
    w2 = Mul(wt, two)
    y = MatMul(x, w2)
}
"""


def test_shape_chain_becomes_constant_reshape():
    model = parse_model(SHAPE_CHAIN)
    result = run_pass(FoldConstants(), model)
    assert result.modified
    assert op_types(result.model) == ["Reshape"]
    shape = {t.name: onnx.numpy_helper.to_array(t) for t in result.model.graph.initializer}["shape"]
    assert shape.tolist() == [2, -1]
    assert_golden("fold_constants_shape_chain", result.model)
    assert_same_function(model, result.model)


def test_pad_slice_expand_inputs_become_constants():
    model = parse_model(PAD_SLICE_EXPAND)
    result = run_pass(FoldConstants(), model)
    assert result.modified
    assert sorted(op_types(result.model)) == ["Expand", "Pad", "Slice"]
    consts = {t.name for t in result.model.graph.initializer}
    for node in result.model.graph.node:
        assert all(name in consts for name in node.input[1:] if name), node.op_type
    assert_golden("fold_constants_pad_slice_expand", result.model)
    assert_same_function(model, result.model)


def test_weight_arithmetic_folds_into_one_initializer():
    model = parse_model(WEIGHT_ARITHMETIC)
    result = run_pass(FoldConstants(), model)
    assert op_types(result.model) == ["MatMul"]
    (weight,) = result.model.graph.initializer
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(weight), np.arange(1, 13, dtype=np.float32).reshape(3, 4).T * 2)
    assert_same_function(model, result.model)


def test_must_not_fire_without_constants():
    model = parse_model(NOTHING_CONSTANT)
    result = run_pass(FoldConstants(), model)
    assert not result.modified
    assert result.model is model


def test_shape_of_dynamic_input_is_not_folded():
    dynamic = SHAPE_CHAIN.replace("float[2, 3, 4, 5] x", "float[N, 3, 4, 5] x").replace("float[2, 60] y", "float[N, 60] y")
    model = parse_model(dynamic)
    result = run_pass(FoldConstants(), model)
    # The Constant nodes fold into initializers, but Shape of a dynamic tensor must stay.
    assert "Shape" in op_types(result.model) and "Reshape" in op_types(result.model)


def test_size_cap_keeps_large_results_computed():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1] x) => (float[1024, 1024] y) {
        shape = Constant<value = int64[2] {1024, 1024}>()
        big = ConstantOfShape<value = float[1] {1}>(shape)
        y = Add(big, x)
    }
    """
    model = parse_model(text)
    result = run_pass(FoldConstants(max_size_mb=1.0), model)
    assert "ConstantOfShape" in op_types(result.model)
    result = run_pass(FoldConstants(max_size_mb=8.0), model)
    assert "ConstantOfShape" not in op_types(result.model)


def test_idempotent():
    model = parse_model(SHAPE_CHAIN)
    once = run_pass(FoldConstants(), model).model
    twice = run_pass(FoldConstants(), once)
    assert not twice.modified


@pytest.mark.parametrize("bad", [0, -1])
def test_invalid_options_are_rejected(bad):
    with pytest.raises(ValueError):
        FoldConstants(max_size_mb=bad)


def test_constants_read_only_inside_a_subgraph_stay_available():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (bool cond, float[2] x) => (float[2] y) {
        k = Constant<value = float[2] {3, 4}>()
        y = If(cond) <
            then_branch = then_g () => (float[2] t) { t = Add(x, k) },
            else_branch = else_g () => (float[2] e) { e = Sub(x, k) }
        >
    }
    """
    model = parse_model(text)
    result = run_pass(FoldConstants(), model)
    assert result.modified  # the Constant node became an initializer
    from mcc.toolchain.passmanager import verify_model

    verify_model(result.model, "fold-constants")
    assert "k" in {t.name for t in result.model.graph.initializer}
    import numpy as np

    from tests.conftest import ort_run

    for cond in (True, False):
        feed = {"cond": np.array(cond), "x": np.array([1.0, 2.0], np.float32)}
        np.testing.assert_array_equal(ort_run(result.model, feed)[0], ort_run(model, feed)[0])


def test_ir3_model_stays_valid_after_folding():
    from onnx import TensorProto, helper, numpy_helper

    from mcc.toolchain.passmanager import verify_model

    weight = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    nodes = [helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]), helper.make_node("MatMul", ["x", "wt"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3]),
                                           helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=3)
    result = run_pass(FoldConstants(), model)
    assert op_types(result.model) == ["MatMul"]
    verify_model(result.model, "fold-constants")


def test_a_node_onnxruntime_cannot_evaluate_does_not_block_the_rest():
    # onnxruntime has no int16 Relu kernel; the float weight arithmetic must still fold.
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 4] x) => (float[1, 3] y, int16[2] z) {
        w = Constant<value = float[3, 4] {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}>()
        wt = Transpose<perm = [1, 0]>(w)
        y = MatMul(x, wt)
        c = Constant<value = int16[2] {-1, 2}>()
        r = Relu(c)
        z = Add(r, c)
    }
    """
    from mcc.toolchain.passmanager import PassContext

    model = parse_model(text)
    ctx = PassContext()
    result = FoldConstants().run(model, ctx)
    assert op_types(result.model) == ["MatMul", "Relu", "Add"]
    assert any("'Relu_" in note or "Relu" in note for note in ctx.notes)


def test_non_finite_option_is_rejected():
    from mcc.toolchain.errors import UsageError
    from mcc.toolchain.pipeline import parse_pipeline

    with pytest.raises(UsageError, match="expects float"):
        parse_pipeline("fold-constants{max-size-mb=nan}")


def test_large_weight_transpose_folds_despite_the_cap():
    """Transposing a 2 MB weight does not grow the model: the cap is for results larger than their inputs."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.arange(512 * 1024, dtype=np.float32).reshape(512, 1024) / 1e5, "w")
    nodes = [helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]), helper.make_node("MatMul", ["x", "wt"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1024])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 512])], initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    result = run_pass(FoldConstants(max_size_mb=1.0), model)
    assert op_types(result.model) == ["MatMul"]
    assert_same_function(model, result.model, atol=1e-3)
