import os

import networkx as nx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcc.toolchain import ir
from mcc.toolchain.errors import ModelError, UsageError
from tests.conftest import EXAMPLE, parse_model

DYNAMIC = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 3, H, 8] x) => (float[N, 3, H, 8] y) { y = Relu(x) }
"""


def save_with_external_data(tmp_path, location: str) -> str:
    weight = numpy_helper.from_array(np.arange(1024, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "ext",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1024])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1024])], initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    if location != "weights.bin":
        stored = onnx.load(str(path), load_external_data=False)
        for entry in stored.graph.initializer[0].external_data:
            if entry.key == "location":
                entry.value = location
        onnx.save(stored, str(path))
    return str(path)


def test_loads_external_data_beside_the_model(tmp_path):
    model = ir.load_model(save_with_external_data(tmp_path, "weights.bin"))
    weight = numpy_helper.to_array(model.graph.initializer[0])
    np.testing.assert_array_equal(weight, np.arange(1024, dtype=np.float32))


@pytest.mark.parametrize("location, fragment", [
    ("/etc/passwd", "absolute path"),
    ("../weights.bin", "outside the model's folder"),
    ("sub/../../weights.bin", "outside the model's folder"),
    ("missing.bin", "does not exist"),
])
def test_refuses_unsafe_or_missing_external_data(tmp_path, location, fragment):
    path = save_with_external_data(tmp_path, location)
    with pytest.raises(ModelError, match=fragment):
        ir.load_model(path)


def test_content_hash_is_stable_and_sensitive():
    a, b = ir.load_model(EXAMPLE), ir.load_model(EXAMPLE)
    assert ir.content_hash(a) == ir.content_hash(b)
    b.graph.initializer[0].raw_data = b"\0" * len(b.graph.initializer[0].raw_data)
    assert ir.content_hash(a) != ir.content_hash(b)


@pytest.mark.parametrize("text, expected", [
    ("x=1x3x224x224", ("x", (1, 3, 224, 224))),
    ("input:0=2X4", ("input:0", (2, 4))),
    ("a=b=3", ("a=b", (3,))),
])
def test_parse_input_shape(text, expected):
    assert ir.parse_input_shape(text) == expected


@pytest.mark.parametrize("text", ["x", "x=1x0", "x=1xx2", "=1x2", "x=-1", "x=1.5"])
def test_parse_input_shape_rejects_malformed(text):
    with pytest.raises(UsageError, match="malformed --input-shape"):
        ir.parse_input_shape(text)


def test_fix_input_shapes_defaults_batch_and_requires_other_dims():
    model = parse_model(DYNAMIC)
    with pytest.raises(UsageError, match=r"--input-shape x=Nx3xNx8"):
        ir.fix_input_shapes(model, {})
    fixed, info = ir.fix_input_shapes(model, {"x": (2, 3, 5, 8)})
    assert info.shapes == {"x": (2, 3, 5, 8)} and not info.assumed
    assert ir.input_dims(fixed.graph.input[0]) == (2, 3, 5, 8)
    assert [d.dim_value for d in fixed.graph.output[0].type.tensor_type.shape.dim] == [2, 3, 5, 8]

    batch_only = parse_model(DYNAMIC.replace("H", "4"))
    fixed, info = ir.fix_input_shapes(batch_only, {})
    assert info.shapes == {"x": (1, 3, 4, 8)} and info.assumed == {"x": ["dim 0 (N) = 1"]}


@pytest.mark.parametrize("requested, fragment", [
    ({"nope": (1,)}, "unknown input 'nope'"),
    ({"x": (1, 3, 4)}, "rank 3 given"),
    ({"x": (1, 4, 4, 8)}, "dim 1 is 3 in the model, 4 given"),
])
def test_fix_input_shapes_rejects_bad_requests(requested, fragment):
    with pytest.raises(UsageError, match=fragment):
        ir.fix_input_shapes(parse_model(DYNAMIC), requested)


def test_networkx_view_has_dataflow_edges():
    model = ir.load_model(EXAMPLE)
    view = ir.to_networkx(model)
    assert view.number_of_nodes() == len(model.graph.node)
    assert nx.is_directed_acyclic_graph(view)
    conv, bn = 0, 1
    assert view.has_edge(conv, bn) and view.nodes[conv]["op"] == "Conv"


def test_unsorted_acyclic_graph_is_sorted_on_load(tmp_path):
    nodes = [helper.make_node("Relu", ["a"], ["y"], name="second"), helper.make_node("Exp", ["x"], ["a"], name="first")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    path = tmp_path / "unsorted.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    model = ir.load_model(path)
    assert [n.name for n in model.graph.node] == ["first", "second"]


def test_upgrade_opset_and_unnamed_nodes_get_names():
    model = parse_model(DYNAMIC.replace('"" : 17', '"" : 11'))
    upgraded = ir.upgrade_opset(model, 17)
    assert ir.opset_version(upgraded) == 17 and upgraded.ir_version >= 8
    assert all(node.name for node in upgraded.graph.node)


def test_input_of_unknown_rank_needs_an_explicit_shape():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UsageError, match="unknown rank"):
        ir.fix_input_shapes(model, {})
    fixed, info = ir.fix_input_shapes(model, {"x": (3, 2)})
    assert info.shapes == {"x": (3, 2)}
    assert [d.dim_value for d in fixed.graph.output[0].type.tensor_type.shape.dim] == [3, 2]
