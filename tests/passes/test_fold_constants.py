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
