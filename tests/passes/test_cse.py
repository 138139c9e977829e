"""cse: repeated computations and repeated constants merged; graph outputs, random ops and subgraphs left alone."""

from mcc.passes.simplify.cse import EliminateCommonSubexpressions
from tests.conftest import assert_same_function, op_types, parse_model, run_pass
from tests.passes.golden import assert_golden

REPEATED = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 4] x) => (float[2, 4] y, float[2, 4] z) <float one = {1.0}, float also_one = {1.0}, float two = {2.0}> {
    a = Add(x, one)
    b = Add(x, also_one)
    c = Mul(a, two)
    d = Mul(b, two)
    e = Relu(c)
    f = Relu(d)
    y = Add(e, f)
    z = Relu(d)
}
"""


def test_repeated_constants_and_nodes_merge():
    model = parse_model(REPEATED)
    result = run_pass(EliminateCommonSubexpressions(), model)
    # also_one is one; then b is a, d is c, f is e; z stays (a graph output) but reads c
    assert op_types(result.model) == ["Add", "Mul", "Relu", "Add", "Relu"]
    assert len(result.model.graph.initializer) == 2
    assert_same_function(model, result.model)
    assert not run_pass(EliminateCommonSubexpressions(), result.model).modified
    assert_golden("cse", result.model)


def test_different_attributes_are_different_computations():
    model = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 4] x) => (float[2, 4] y) {
        a = Softmax<axis = 0>(x)
        b = Softmax<axis = 1>(x)
        y = Add(a, b)
    }
    """)
    assert not run_pass(EliminateCommonSubexpressions(), model).modified


def test_random_ops_are_not_merged():
    model = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 4] x) => (float[2, 4] y) {
        a = RandomUniformLike(x)
        b = RandomUniformLike(x)
        y = Add(a, b)
    }
    """)
    assert not run_pass(EliminateCommonSubexpressions(), model).modified


def test_commutative_ops_match_in_either_order():
    model = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 4] x, float[2, 4] z) => (float[2, 4] y) {
        a = Add(x, z)
        b = Add(z, x)
        c = Sub(x, z)
        d = Sub(z, x)
        e = Mul(a, b)
        y = Add(e, Mul(c, d))
    }
    """.replace("y = Add(e, Mul(c, d))", "f = Mul(c, d)\n        y = Add(e, f)"))
    result = run_pass(EliminateCommonSubexpressions(), model)
    assert op_types(result.model) == ["Add", "Sub", "Sub", "Mul", "Mul", "Add"]  # Sub is not commutative
    assert_same_function(model, result.model)
