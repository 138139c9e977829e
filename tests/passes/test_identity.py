from mcc.passes import EliminateIdentity
from tests.conftest import assert_same_function, op_types, parse_model, run_pass
from tests.passes.golden import assert_golden

IDENTITY_AND_DROPOUT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 8] x) => (float[2, 8] y) {
    a = Relu(x)
    b = Identity(a)
    c = Dropout(b)
    d = Sigmoid(c)
    y = Identity(d)
}
"""

TRAINING_DROPOUT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 8] x) => (float[2, 8] y, bool[2, 8] mask) {
    a = Relu(x)
    y, mask = Dropout(a)
}
"""


def test_removes_identity_and_inference_dropout_keeping_output_names():
    model = parse_model(IDENTITY_AND_DROPOUT)
    result = run_pass(EliminateIdentity(), model)
    assert result.modified
    assert op_types(result.model) == ["Relu", "Sigmoid"]
    assert [o.name for o in result.model.graph.output] == ["y"]
    assert_golden("eliminate_identity", result.model)
    assert_same_function(model, result.model)


def test_must_not_fire_when_dropout_mask_is_read():
    model = parse_model(TRAINING_DROPOUT)
    result = run_pass(EliminateIdentity(), model)
    assert not result.modified


def test_must_not_fire_when_training_mode_is_not_constant_false():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 8] x, bool training) => (float[2, 8] y) {
        r = Constant<value = float {0.5}>()
        y = Dropout(x, r, training)
    }
    """
    result = run_pass(EliminateIdentity(), parse_model(text))
    assert not result.modified


def test_identity_between_input_and_output_is_kept():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y) {
        y = Identity(x)
    }
    """
    result = run_pass(EliminateIdentity(), parse_model(text))
    assert not result.modified


def test_idempotent():
    once = run_pass(EliminateIdentity(), parse_model(IDENTITY_AND_DROPOUT)).model
    assert not run_pass(EliminateIdentity(), once).modified


def test_dropout_before_opset_7_follows_is_test():
    from onnx import TensorProto, helper

    def model(is_test):
        attrs = {} if is_test is None else {"is_test": is_test}
        graph = helper.make_graph([helper.make_node("Dropout", ["x"], ["y"], **attrs)], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)], ir_version=3)

    assert not run_pass(EliminateIdentity(), model(None)).modified  # default is_test=0: training
    assert not run_pass(EliminateIdentity(), model(0)).modified


def test_dropout_with_constant_false_training_mode_goes_after_folding():
    from mcc.toolchain.passmanager import PassManager
    from mcc.toolchain.pipeline import parse_pipeline

    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 8] x) => (float[2, 8] y) {
        r = Constant<value = float {0.5}>()
        t = Constant<value = bool {0}>()
        d = Dropout(x, r, t)
        y = Relu(d)
    }
    """
    model = parse_model(text)
    result, _ = PassManager(parse_pipeline("default")).run(model)
    assert op_types(result) == ["Relu"]
    assert_same_function(model, result)
