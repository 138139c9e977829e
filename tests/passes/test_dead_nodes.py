from mcc.passes import EliminateDeadNodes
from tests.conftest import assert_same_function, op_types, parse_model, run_pass
from tests.passes.golden import assert_golden

WITH_DEAD_BRANCH = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 4] x) => (float[2, 4] y) <float[4] unused_w = {1, 2, 3, 4}, float[4] b = {0, 1, 0, 1}> {
    dead1 = Mul(x, unused_w)
    dead2 = Exp(dead1)
    y = Add(x, b)
}
"""


def test_removes_dead_nodes_and_initializers():
    model = parse_model(WITH_DEAD_BRANCH)
    result = run_pass(EliminateDeadNodes(), model)
    assert result.modified
    assert op_types(result.model) == ["Add"]
    assert [t.name for t in result.model.graph.initializer] == ["b"]
    assert_golden("eliminate_dead_nodes", result.model)
    assert_same_function(model, result.model)


def test_must_not_fire_when_everything_is_live():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 4] x) => (float[2, 4] y) {
        a = Relu(x)
        y = Exp(a)
    }
    """
    model = parse_model(text)
    result = run_pass(EliminateDeadNodes(), model)
    assert not result.modified and result.model is model


def test_idempotent():
    once = run_pass(EliminateDeadNodes(), parse_model(WITH_DEAD_BRANCH)).model
    assert not run_pass(EliminateDeadNodes(), once).modified
