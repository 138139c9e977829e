"""recognize-activations: decomposed activations and LayerNorm back to single ops, when opset and target allow."""

import math

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcc.passes.fusion.activations import RecognizeActivations
from mcc.toolchain.passmanager import PassContext
from tests.conftest import assert_same_function, op_types, run_pass


def build(nodes, consts: dict, opset: int = 17, shape=(2, 3, 8), out="y"):
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in consts.items()]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, list(shape))], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10 if opset > 20 else 8)


N = helper.make_node
RELU6 = [N("Add", ["x", "three"], ["a"]), N("Clip", ["a", "zero", "six"], ["c"])]
RELU6_CONSTS = {"three": 3.0, "zero": 0.0, "six": 6.0}


def hardsigmoid_div():
    return build(RELU6 + [N("Div", ["c", "six"], ["y"])], RELU6_CONSTS)


def hardswish_relu6():
    return build(RELU6 + [N("Mul", ["x", "c"], ["m"]), N("Div", ["m", "six"], ["y"])], RELU6_CONSTS)


def hardswish_via_hardsigmoid():
    return build(RELU6 + [N("Mul", ["c", "sixth"], ["h"]), N("Mul", ["h", "x"], ["y"])],
                 {**RELU6_CONSTS, "sixth": 1 / 6})


def hardsigmoid_affine():
    return build([N("Mul", ["x", "a"], ["m"]), N("Add", ["m", "b"], ["s"]), N("Clip", ["s", "zero", "one"], ["y"])],
                 {"a": 0.2, "b": 0.5, "zero": 0.0, "one": 1.0})


def gelu_erf(opset=20, half_first=False):
    core = [N("Div", ["x", "root2"], ["d"]), N("Erf", ["d"], ["e"]), N("Add", ["e", "one"], ["p"])]
    if half_first:
        tail = [N("Mul", ["x", "half"], ["h"]), N("Mul", ["h", "p"], ["y"])]
    else:
        tail = [N("Mul", ["x", "p"], ["m"]), N("Mul", ["m", "half"], ["y"])]
    return build(core + tail, {"root2": math.sqrt(2), "one": 1.0, "half": 0.5}, opset=opset)


def gelu_tanh():
    nodes = [N("Pow", ["x", "three"], ["c"]), N("Mul", ["c", "k1"], ["c1"]), N("Add", ["x", "c1"], ["i"]),
             N("Mul", ["i", "k2"], ["s"]), N("Tanh", ["s"], ["t"]), N("Add", ["t", "one"], ["p"]),
             N("Mul", ["x", "half"], ["h"]), N("Mul", ["h", "p"], ["y"])]
    return build(nodes, {"three": 3.0, "k1": 0.044715, "k2": math.sqrt(2 / math.pi), "one": 1.0, "half": 0.5},
                 opset=20)


def layernorm(opset=17):
    axes = {"axes": [-1]} if opset < 18 else {}
    mean_inputs = ["x"] if opset < 18 else ["x", "axes"]
    nodes = [N("ReduceMean", mean_inputs, ["mu"], **axes), N("Sub", ["x", "mu"], ["d"]),
             N("Pow", ["d", "two"], ["sq"]), N("ReduceMean", ["sq"] + mean_inputs[1:], ["var"], **axes),
             N("Add", ["var", "eps"], ["ve"]), N("Sqrt", ["ve"], ["sd"]), N("Div", ["d", "sd"], ["n"]),
             N("Mul", ["n", "gamma"], ["g"]), N("Add", ["g", "beta"], ["y"])]
    rng = np.random.default_rng(0)
    consts = {"two": 2.0, "eps": 1e-5, "gamma": rng.uniform(0.5, 1.5, 8), "beta": rng.normal(size=8)}
    model = build(nodes, consts, opset=opset)
    if opset >= 18:
        model.graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), "axes"))
    return model


@pytest.mark.parametrize("factory, expected", [
    (hardsigmoid_div, ["HardSigmoid"]),
    (hardsigmoid_affine, ["HardSigmoid"]),
    (hardswish_relu6, ["HardSwish"]),
    (hardswish_via_hardsigmoid, ["HardSwish"]),
    (gelu_erf, ["Gelu"]),
    (lambda: gelu_erf(half_first=True), ["Gelu"]),
    (gelu_tanh, ["Gelu"]),
    (layernorm, ["LayerNormalization"]),
    (lambda: layernorm(opset=18), ["LayerNormalization"]),
], ids=["hardsigmoid-relu6", "hardsigmoid-affine", "hardswish-relu6", "hardswish-two-steps", "gelu-erf",
        "gelu-erf-half-first", "gelu-tanh", "layernorm-17", "layernorm-18"])
def test_recognised_and_same_function(factory, expected):
    model = factory()
    result = run_pass(RecognizeActivations(), model)
    assert op_types(result.model) == expected
    assert_same_function(model, result.model, atol=1e-5)
    assert not run_pass(RecognizeActivations(), result.model).modified


def _explain(model, rule, supported=None):
    ctx = PassContext(supported_ops=supported).with_config(explain=rule)
    result = RecognizeActivations().run(model, ctx)
    return result, ctx.explanations


def test_gelu_needs_opset_20():
    result, lines = _explain(gelu_erf(opset=17), "recognize-gelu")
    assert not result.modified
    assert "recognize-activations: recognize-gelu at '-> y': the model's opset 17 has no Gelu (added in opset 20)" \
        in lines


def test_a_target_without_the_op_keeps_the_decomposition():
    result, lines = _explain(hardswish_relu6(), "recognize-hardswish-relu6", supported=frozenset({"Mul", "Div"}))
    assert not result.modified
    assert "recognize-activations: recognize-hardswish-relu6 at '-> y': the target's backend does not support " \
        "HardSwish" in lines


def test_wrong_constants_do_not_match():
    model = hardsigmoid_div()
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.asarray(2.5, np.float32), "three"))
    result, lines = _explain(model, "recognize-hardsigmoid-relu6")
    assert not result.modified and any(line.endswith("at '-> y': the shift is not 3") for line in lines)


def test_layernorm_over_a_middle_axis_is_left_alone():
    model = layernorm()
    for node in model.graph.node:
        if node.op_type == "ReduceMean":
            node.attribute[0].ints[:] = [1]
    model.graph.initializer[2].CopyFrom(numpy_helper.from_array(np.ones(8, np.float32), "gamma"))
    result, lines = _explain(model, "recognize-layernorm")
    assert not result.modified
    assert any(line.endswith("at '-> y': the reduced axes [1] are not the last ones") for line in lines)
