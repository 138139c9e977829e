import onnx
from onnx import TensorProto, helper, numpy_helper
import numpy as np

from mcc.passes import InlineInitializerInputs, UpgradeOpset
from mcc.toolchain import ir
from tests.conftest import assert_same_function, parse_model, run_pass
from tests.passes.golden import assert_golden


def ir3_model() -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.arange(4, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"], name="add")], "ir3",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4]), helper.make_tensor_value_info("w", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], initializer=[weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=3)


def test_initializer_inputs_become_constants():
    model = ir3_model()
    result = run_pass(InlineInitializerInputs(), model)
    assert result.modified
    assert [v.name for v in result.model.graph.input] == ["x"]
    assert result.model.ir_version >= 4
    assert_golden("inline_initializer_inputs", result.model)
    assert_same_function(model, result.model)


def test_must_not_fire_on_modern_model():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[4] x) => (float[4] y) <float[4] w = {1, 2, 3, 4}> { y = Add(x, w) }
    """
    result = run_pass(InlineInitializerInputs(), parse_model(text))
    assert not result.modified


def test_upgrade_opset_converts_slice_attributes_to_inputs():
    text = """
    <ir_version: 4, opset_import: ["" : 9]>
    g (float[4, 6] x) => (float[2, 6] y) { y = Slice<starts = [1], ends = [3], axes = [0]>(x) }
    """
    model = parse_model(text)
    result = run_pass(UpgradeOpset(version=13), model)
    assert result.modified and ir.opset_version(result.model) == 13
    (node,) = [n for n in result.model.graph.node if n.op_type == "Slice"]
    assert len(node.input) >= 3 and not node.attribute
    assert_same_function(model, result.model)
    assert not run_pass(UpgradeOpset(version=13), result.model).modified
