"""decompose-unsupported: ops a target lacks rewritten into ops it has; approximations only within a budget."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcc.passes.substitute.decompose import DecomposeUnsupported
from mcc.toolchain.passmanager import PassContext
from tests.conftest import assert_same_function, op_types, ort_run, random_feed

BASIC = frozenset({"Add", "Sub", "Mul", "Div", "Sqrt", "Pow", "ReduceMean", "ReduceMax", "ReduceSum", "Exp", "Erf",
                   "Tanh", "Clip", "Identity", "Relu"})


def single_op(op, opset=20, shape=(2, 3, 8), inputs=("x",), consts=None, **attrs):
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in (consts or {}).items()]
    graph = helper.make_graph([helper.make_node(op, list(inputs), ["y"], name="op", **attrs)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


RNG = np.random.default_rng(0)
CASES = {
    "layernorm-17": lambda: single_op("LayerNormalization", 17, inputs=("x", "g", "b"),
                                      consts={"g": RNG.uniform(0.5, 1.5, 8), "b": RNG.normal(size=8)}, epsilon=1e-3),
    "layernorm-18-two-axes": lambda: single_op("LayerNormalization", 18, inputs=("x", "g"),
                                               consts={"g": RNG.uniform(0.5, 1.5, (3, 8))}, axis=1),
    "gelu": lambda: single_op("Gelu"),
    "gelu-tanh": lambda: single_op("Gelu", approximate="tanh"),
    "hardswish": lambda: single_op("HardSwish", 17),
    "hardsigmoid": lambda: single_op("HardSigmoid", 17, alpha=0.3, beta=0.4),
    "softmax-13": lambda: single_op("Softmax", 13, axis=1),
    "softmax-18": lambda: single_op("Softmax", 18),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_exact_decompositions_compute_the_same_function(case):
    model = CASES[case]()
    op = model.graph.node[0].op_type
    ctx = PassContext(supported_ops=BASIC)
    result = DecomposeUnsupported().run(model, ctx)
    assert result.modified and op not in op_types(result.model)
    assert set(op_types(result.model)) <= BASIC
    assert_same_function(model, result.model, atol=1e-5)
    assert not DecomposeUnsupported().run(result.model, ctx).modified


def test_nothing_is_decomposed_for_a_target_that_has_the_op_or_without_a_target():
    model = CASES["gelu"]()
    ctx = PassContext(supported_ops=BASIC | {"Gelu"}).with_config(explain="decompose-gelu")
    assert not DecomposeUnsupported().run(model, ctx).modified
    assert ctx.explanations == ["decompose-unsupported: decompose-gelu at 'op': the target's backend supports Gelu"]
    ctx = PassContext().with_config(explain="decompose-gelu")
    assert not DecomposeUnsupported().run(model, ctx).modified
    assert ctx.explanations[0].endswith("no target is known, so nothing needs substituting")


@pytest.mark.parametrize("op, atol", [("Erf", 4e-4), ("Sigmoid", 0.08)])
def test_approximations_need_the_budget_and_are_reported(op, atol):
    model = single_op(op, 17)
    supported = (BASIC - {"Erf"}) | {"HardSigmoid"} if op == "Erf" else BASIC | {"HardSigmoid"}
    ctx = PassContext(supported_ops=supported).with_config(explain=f"approximate-{op.lower()}")
    assert not DecomposeUnsupported().run(model, ctx).modified
    assert ctx.explanations[0].endswith("the rewrite is an approximation; it needs an accuracy budget (--min-sqnr-db)")
    ctx = PassContext(supported_ops=supported).with_config(allow_lossy=True)
    result = DecomposeUnsupported().run(model, ctx)
    assert op not in op_types(result.model)
    assert ctx.lossy_rewrites == [f"decompose-unsupported: approximate-{op.lower()} at 'op'"]
    feed = {"x": np.linspace(-4, 4, 48, dtype=np.float32).reshape(2, 3, 8)}
    error = np.abs(ort_run(result.model, feed)[0] - ort_run(model, feed)[0]).max()
    assert 0 < error <= atol  # an approximation: close, never exact


def two_operand_einsum(equation, shape_a, shape_b, shape_out, opset=17):
    graph = helper.make_graph(
        [helper.make_node("Einsum", ["a", "b"], ["y"], name="op", equation=equation)], "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, list(shape_a)),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, list(shape_b))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape_out))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


EINSUM_OPS = BASIC | {"Transpose", "Reshape", "MatMul"}


@pytest.mark.parametrize("equation, a, b, out", [
    ("ij,jk->ik", (3, 4), (4, 5), (3, 5)),
    ("bij,bjk->bik", (2, 3, 4), (2, 4, 5), (2, 3, 5)),
    ("bhqd,bhkd->bhqk", (1, 2, 3, 4), (1, 2, 5, 4), (1, 2, 3, 5)),
    ("bqhd,bkhd->bhqk", (2, 3, 2, 4), (2, 5, 2, 4), (2, 2, 3, 5)),
    ("ik,jk->ji", (3, 4), (5, 4), (5, 3)),
    ("i,j->ij", (3,), (4,), (3, 4)),
])
def test_einsum_becomes_matmul(equation, a, b, out):
    model = two_operand_einsum(equation, a, b, out)
    ctx = PassContext(supported_ops=EINSUM_OPS)
    result = DecomposeUnsupported().run(model, ctx)
    assert "Einsum" not in op_types(result.model) and "MatMul" in op_types(result.model)
    assert_same_function(model, result.model, atol=1e-5)


def test_single_operand_einsum_sums_and_transposes():
    graph = helper.make_graph([helper.make_node("Einsum", ["a"], ["y"], name="op", equation="ijk->ki")], "g",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    result = DecomposeUnsupported().run(model, PassContext(supported_ops=EINSUM_OPS))
    assert op_types(result.model) == ["ReduceSum", "Transpose"]
    assert_same_function(model, result.model, atol=1e-5)


@pytest.mark.parametrize("equation, a, b, out, reason", [
    ("ii,ij->ij", (3, 3), (3, 4), (3, 4), "'ii' repeats an index (a diagonal)"),
    ("...ij,jk->...ik", (2, 3, 4), (4, 5), (2, 3, 5), "the equation uses an ellipsis"),
    ("ij,jk->i", (3, 4), (4, 5), (3,), "index 'k' is summed within one operand"),
])
def test_einsum_forms_that_are_refused(equation, a, b, out, reason):
    model = two_operand_einsum(equation, a, b, out)
    ctx = PassContext(supported_ops=EINSUM_OPS).with_config(explain="decompose-einsum")
    assert not DecomposeUnsupported().run(model, ctx).modified
    assert ctx.explanations == [f"decompose-unsupported: decompose-einsum at 'op': {reason}"]


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("op", ["ConvInteger", "MatMulInteger"])
def test_integer_ops_become_exact_float64_compute(op, per_channel):
    rng = np.random.default_rng(3)
    if op == "ConvInteger":
        x_shape, w_shape, out_shape, attrs = [1, 3, 6, 6], (4, 3, 3, 3), [1, 4, 4, 4], {}
        zp_shape = (4,) if per_channel else ()
    else:
        x_shape, w_shape, out_shape, attrs = [2, 300], (300, 5), [2, 5], {}
        zp_shape = (5,) if per_channel else ()
    inits = [numpy_helper.from_array(rng.integers(0, 256, size=w_shape).astype(np.uint8), "w"),
             numpy_helper.from_array(np.array(128, np.uint8), "x_zp"),
             numpy_helper.from_array(rng.integers(0, 256, size=zp_shape).astype(np.uint8), "w_zp")]
    graph = helper.make_graph([helper.make_node(op, ["x", "w", "x_zp", "w_zp"], ["y"], name="op", **attrs)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.UINT8, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, out_shape)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    supported = frozenset({"Cast", "Sub", "Conv", "MatMul"})
    result = DecomposeUnsupported().run(model, PassContext(supported_ops=supported))
    assert op not in op_types(result.model) and set(op_types(result.model)) <= supported
    feed = {"x": rng.integers(0, 256, size=x_shape).astype(np.uint8)}
    # onnxruntime has no float64 Conv kernel: the rewritten model runs in onnx's reference evaluator
    from onnx.reference import ReferenceEvaluator

    got = ReferenceEvaluator(result.model).run(None, feed)[0]
    if op == "ConvInteger" and per_channel:  # onnxruntime's ConvInteger has no per-channel zero points
        want = ReferenceEvaluator(model).run(None, feed)[0]
    else:
        want = ort_run(model, feed)[0]
    np.testing.assert_array_equal(got, want)  # exact integers
