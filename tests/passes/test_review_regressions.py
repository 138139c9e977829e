"""Defects a review of the graph passes found (each test fails without its fix)."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcc.passes.control.constant_if import FoldConstantIf
from mcc.passes.fusion.activations import RecognizeActivations
from mcc.passes.quantize.fp16 import ConvertFloat16
from mcc.passes.quantize.int8 import QuantizeInt8
from mcc.passes.simplify.cse import EliminateCommonSubexpressions
from mcc.passes.substitute.decompose import DecomposeUnsupported
from mcc.toolchain.passmanager import PassContext, PassManager, verify_model
from mcc.toolchain.pipeline import parse_pipeline
from tests.conftest import ort_run, parse_model, run_pass


def _same(before, after, feed, atol=1e-5):
    verify_model(after, "test")
    for want, got in zip(ort_run(before, feed), ort_run(after, feed), strict=True):
        np.testing.assert_allclose(got, want, atol=atol, rtol=atol)


def test_layernorm_over_all_axes_is_refused_not_a_crash():
    model = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3] x) => (float[2, 3] y) <float two = {2.0}, float eps = {1e-5}, float g = {1.5}, float b = {0.5}> {
        mu = ReduceMean(x)
        d = Sub(x, mu)
        v = ReduceMean(Pow(d, two))
        y = Add(Mul(Div(d, Sqrt(Add(v, eps))), g), b)
    }
    """.replace("v = ReduceMean(Pow(d, two))", "sq = Pow(d, two)\n        v = ReduceMean(sq)")
       .replace("y = Add(Mul(Div(d, Sqrt(Add(v, eps))), g), b)",
                "ve = Add(v, eps)\n        sd = Sqrt(ve)\n        n = Div(d, sd)\n        s = Mul(n, g)\n"
                "        y = Add(s, b)"))
    assert not run_pass(RecognizeActivations(), model).modified


@pytest.mark.parametrize("equation, shapes, out, opset", [
    ("i,i->", [(4,), (4,)], [], 17),  # a dot product: scalar output
    ("ij->i", [(3, 4)], [3], 12),     # ReduceSum's axes are an attribute before opset 13
])
def test_einsum_scalar_outputs_and_old_opsets(equation, shapes, out, opset):
    names = ["a", "b"][:len(shapes)]
    graph = helper.make_graph([helper.make_node("Einsum", names, ["y"], equation=equation)], "g",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in zip(names, shapes)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    ctx = PassContext(supported_ops=frozenset({"Transpose", "Reshape", "MatMul", "ReduceSum", "Identity"}))
    result = DecomposeUnsupported().run(model, ctx)
    assert result.modified
    rng = np.random.default_rng(0)
    _same(model, result.model, {n: rng.normal(size=s).astype(np.float32) for n, s in zip(names, shapes)})


def test_a_constant_if_branch_returning_one_tensor_twice_feeds_both_outputs():
    model = onnx.parser.parse_model('''<ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y1, float[2] y2) <bool c = {1}> {
        y1, y2 = If(c) <then_branch = t () => (float[2] o, float[2] p) { o = Neg(x) p = Identity(o) },
                        else_branch = e () => (float[2] a, float[2] b) { a = Abs(x) b = Abs(x) }>
    }''')
    model.graph.node[0].attribute[0].g.output[1].name = "o"
    del model.graph.node[0].attribute[0].g.node[1]
    onnx.checker.check_model(model)
    result = run_pass(FoldConstantIf(), model)
    verify_model(result.model, "fold-constant-if")
    x = np.array([1.0, -2.0], np.float32)
    y1, y2 = ort_run(result.model, {"x": x})  # (onnxruntime itself mis-runs the original's repeated output)
    np.testing.assert_array_equal(y1, -x)
    np.testing.assert_array_equal(y2, -x)


def test_cse_keeps_a_node_whose_used_output_the_earlier_one_leaves_unnamed():
    model = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 1, 4, 4] x) => (float[1, 1, 2, 2] y, int64[1, 1, 2, 2] i) {
        a = MaxPool<kernel_shape = [2, 2], strides = [2, 2]>(x)
        b, i = MaxPool<kernel_shape = [2, 2], strides = [2, 2]>(x)
        y = Add(a, b)
    }
    """)
    result = run_pass(EliminateCommonSubexpressions(), model)
    verify_model(result.model, "cse")


def test_fp16_keeps_tensors_read_by_if_bodies_in_float32():
    model = parse_model('''<ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3] x, bool c) => (float[2, 3] y) <float one = {1.0}> {
        r = Relu(x)
        y = If(c) <then_branch = t () => (float[2, 3] o) { o = Add(r, one) },
                   else_branch = e () => (float[2, 3] o2) { o2 = Neg(r) }>
    }''')
    result = ConvertFloat16().run(model, PassContext())
    feed = {"x": np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32), "c": np.array(True)}
    if result.modified:
        _same(model, result.model, feed, atol=1e-2)


def test_int8_leaves_one_dimensional_weights_and_keeps_initializers_if_bodies_read():
    vector = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.ones(3, np.float32), "w")]), opset_imports=[helper.make_opsetid("", 17)])
    assert not QuantizeInt8(calib_data="random", samples=4).run(vector, PassContext()).modified
    model = parse_model('''<ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3] x, bool c) => (float[2, 4] y) <float[3, 4] w = {1,2,3,4,5,6,7,8,9,10,11,12}, float k = {2.0}> {
        mm = MatMul(x, w)
        y = If(c) <then_branch = t () => (float[2, 4] o) { o = Mul(mm, k) },
                   else_branch = e () => (float[2, 4] o2) { o2 = Neg(mm) }>
    }''')
    result = QuantizeInt8(calib_data="random", samples=4).run(model, PassContext())
    assert result.modified and "k" in {t.name for t in result.model.graph.initializer}
    verify_model(result.model, "quantize-int8")


def test_explanations_name_each_node_once_across_fixed_point_rounds():
    model = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3] x) => (float[3, 2] y) { y = Transpose<perm = [1, 0]>(x) }
    """)
    ctx = PassContext().with_config(explain="merge-transposes")
    PassManager(parse_pipeline("fixed-point(simplify-chains,cse)"), ctx).run(model)
    assert len(ctx.explanations) == len(set(ctx.explanations)) == 1
