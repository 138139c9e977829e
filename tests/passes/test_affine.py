"""fold-conv-affine: Conv followed by per-channel Mul/Add constants."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcc.passes.fusion.affine import FoldConvAffine
from mcc.toolchain.passmanager import PassContext
from tests.conftest import assert_same_function, op_types, run_pass
from tests.passes.golden import assert_golden


def conv_affine_model(ops=("Mul", "Add"), shapes=((4, 1, 1), (1, 4, 1, 1)), bias=True, dtype=np.float32):
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(dtype), "W")]
    conv_inputs = ["x", "W"]
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(size=4).astype(dtype), "b"))
        conv_inputs.append("b")
    nodes = [helper.make_node("Conv", conv_inputs, ["t0"], name="conv", pads=[1, 1, 1, 1])]
    for i, (op, shape) in enumerate(zip(ops, shapes)):
        inits.append(numpy_helper.from_array(rng.uniform(0.5, 2, size=shape).astype(dtype), f"k{i}"))
        nodes.append(helper.make_node(op, [f"t{i}", f"k{i}"], [f"t{i + 1}" if i + 1 < len(ops) else "y"], name=op.lower()))
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.FLOAT16
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", elem, [1, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", elem, [1, 4, 6, 6])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("bias", [True, False])
def test_mul_then_add_fold_into_the_conv(bias):
    model = conv_affine_model(bias=bias)
    result = run_pass(FoldConvAffine(), model)
    assert op_types(result.model) == ["Conv"]
    assert_same_function(model, result.model, atol=1e-4)
    assert not run_pass(FoldConvAffine(), result.model).modified


@pytest.mark.parametrize("shape", [(), (1,), (4, 1, 1), (1, 4, 1, 1)])
def test_scalar_and_per_channel_shapes(shape):
    model = conv_affine_model(ops=("Mul",), shapes=(shape,))
    assert op_types(run_pass(FoldConvAffine(), model).model) == ["Conv"]


def test_golden():
    assert_golden("fold_conv_affine", run_pass(FoldConvAffine(), conv_affine_model(shapes=((), ()))).model)


def test_must_not_fire_on_per_pixel_constants():
    model = conv_affine_model(ops=("Mul",), shapes=((1, 1, 6, 6),))
    ctx = PassContext().with_config(explain="fold-conv-mul")
    assert not FoldConvAffine().run(model, ctx).modified
    assert ctx.explanations == ["fold-conv-affine: fold-conv-mul at 'mul': the constant's shape [1, 1, 6, 6] is "
                                "not per output channel (4)"]


def test_fp16_stays_fp16():
    model = conv_affine_model(dtype=np.float16)
    result = run_pass(FoldConvAffine(), model)
    assert op_types(result.model) == ["Conv"]
    assert all(t.data_type == TensorProto.FLOAT16 for t in result.model.graph.initializer)
    assert_same_function(model, result.model, atol=2e-2, rtol=1e-2)
