import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mcc.passes import FuseConvBatchNorm
from tests.conftest import assert_same_function, op_types, run_pass
from tests.passes.golden import assert_golden, without_weights


def conv_bn_model(with_bias: bool = True, extra_reader: bool = False, seed: int = 0, groups: int = 1) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    cin, cout = 4, 6
    weight = rng.normal(size=(cout, cin // groups, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "W")]
    conv_inputs = ["x", "W"]
    if with_bias:
        inits.append(numpy_helper.from_array(rng.normal(size=cout).astype(np.float32), "B"))
        conv_inputs.append("B")
    for name, values in (
        ("gamma", rng.uniform(0.5, 1.5, cout)), ("beta", rng.normal(size=cout)),
        ("mean", rng.normal(size=cout)), ("var", rng.uniform(0.1, 2.0, cout)),
    ):
        inits.append(numpy_helper.from_array(values.astype(np.float32), name))
    nodes = [
        helper.make_node("Conv", conv_inputs, ["c"], name="conv", pads=[1, 1, 1, 1], group=groups),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["y"], name="bn", epsilon=1e-3),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, 5, 5])]
    if extra_reader:
        nodes.append(helper.make_node("Relu", ["c"], ["z"], name="reader"))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, cout, 5, 5]))
    graph = helper.make_graph(nodes, "conv_bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, 5, 5])],
                              outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def test_folds_bn_into_conv_with_bias():
    model = conv_bn_model(with_bias=True)
    result = run_pass(FuseConvBatchNorm(), model)
    assert result.modified
    assert op_types(result.model) == ["Conv"]
    assert result.model.graph.node[0].output[0] == "y"
    assert_golden("fuse_conv_bn", without_weights(result.model))
    assert_same_function(model, result.model, atol=1e-4)


def test_folds_bn_into_conv_without_bias_and_grouped():
    model = conv_bn_model(with_bias=False, groups=2, seed=3)
    result = run_pass(FuseConvBatchNorm(), model)
    assert op_types(result.model) == ["Conv"]
    assert len(result.model.graph.node[0].input) == 3
    assert_same_function(model, result.model, atol=1e-4)


def test_must_not_fire_when_conv_output_has_other_readers():
    model = conv_bn_model(extra_reader=True)
    result = run_pass(FuseConvBatchNorm(), model)
    assert not result.modified


def test_must_not_fire_without_conv():
    model = conv_bn_model()
    model.graph.node[0].op_type = "ConvTranspose"
    result = run_pass(FuseConvBatchNorm(), model)
    assert not result.modified


def test_idempotent():
    once = run_pass(FuseConvBatchNorm(), conv_bn_model()).model
    assert not run_pass(FuseConvBatchNorm(), once).modified



def test_explicit_empty_bias_input_is_replaced_not_appended():
    model = conv_bn_model(with_bias=False)
    model.graph.node[0].input.append("")
    onnx.checker.check_model(model)
    result = run_pass(FuseConvBatchNorm(), model)
    (conv,) = result.model.graph.node
    assert len(conv.input) == 3 and conv.input[2]
    assert_same_function(model, result.model, atol=1e-4)


def test_fp16_weights_fold_in_fp16():
    from tests.conftest import to_fp16

    model = to_fp16(conv_bn_model())
    result = run_pass(FuseConvBatchNorm(), model)
    assert op_types(result.model) == ["Conv"]
    assert all(t.data_type == TensorProto.FLOAT16 for t in result.model.graph.initializer)
    assert_same_function(model, result.model, atol=2e-2, rtol=2e-2)


def test_must_not_fire_when_variance_is_negative():
    model = conv_bn_model()
    for tensor in model.graph.initializer:
        if tensor.name == "var":
            tensor.CopyFrom(numpy_helper.from_array(-np.ones(6, np.float32), "var"))
    assert not run_pass(FuseConvBatchNorm(), model).modified
