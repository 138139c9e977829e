"""reciprocal.py: divisions by float constants become multiplications by their reciprocals."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcc.backends import get_backend
from mcc.hwmodels import load_target
from tests.conftest import ort_run


def hardswish_and_divisions() -> onnx.ModelProto:
    """A HardSwish (divides by 6), a division by a per-channel constant and one by a runtime tensor."""
    scale = np.array([0.5, 3.0, 7.0, 0.1], np.float32).reshape(1, 4, 1, 1)
    nodes = [helper.make_node("HardSwish", ["x"], ["h"]),
             helper.make_node("Div", ["h", "scale"], ["d"]),
             helper.make_node("Div", ["d", "z"], ["y"])]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        initializer=[numpy_helper.from_array(scale, "scale")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_reciprocal_refuses_what_it_cannot_invert_closely():
    from mcc.backends.tvm.reciprocal import reciprocal

    np.testing.assert_array_equal(reciprocal(np.array([6.0, 0.25], np.float32)),
                                  np.array([1 / 6, 4.0], np.float32))
    assert reciprocal(np.array([6.0], np.float16)).dtype == np.float16
    for bad in ([0.0], [np.inf], [np.nan], [2.0e38], [1.0, 0.0]):  # 1 / 2e38 is subnormal in float32
        assert reciprocal(np.array(bad, np.float32)) is None, bad
    assert reciprocal(np.array([3], np.int32)) is None


def test_constant_divisions_become_multiplications_and_match_onnxruntime(tmp_path):
    from mcc.backends.tvm import common, llvm

    model = hardswish_and_divisions()
    shapes = {"x": (1, 4, 8, 8), "z": (1, 4, 8, 8)}
    target = load_target("host").tvm()
    mod, details = llvm.lower(common.import_onnx(model, shapes), target, use_tuning_records=False)
    # HardSwish's / 6 and / scale; the division by the runtime input z stays
    assert details["divisions_by_constants"] == 2
    kernels = [func.script() for _, func in mod.functions_items() if hasattr(func, "script") and "T.prim_func" in func.script()]
    text = "\n".join(kernels)
    assert "T.float32(6.0)) /" not in text and "/ T.float32(6.0)" not in text
    assert text.count(" / ") >= 1  # x / z

    backend = get_backend("tvm-llvm")
    artifact = backend.compile(model, target, shapes, tmp_path / "m.so")
    assert artifact.details["divisions_by_constants"] == 2
    rng = np.random.default_rng(0)
    feed = {"x": rng.normal(scale=4, size=shapes["x"]).astype(np.float32),
            "z": rng.uniform(0.5, 2.0, size=shapes["z"]).astype(np.float32)}
    np.testing.assert_allclose(backend.load(artifact.library, model).run(feed)[0], ort_run(model, feed)[0],
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["cuda", "c"])
def test_non_cpu_targets_are_left_alone(kind):
    import tvm

    from mcc.backends.tvm import common
    from mcc.backends.tvm.reciprocal import multiply_by_reciprocals

    model = hardswish_and_divisions()
    mod = common.import_onnx(model, {"x": (1, 4, 8, 8), "z": (1, 4, 8, 8)})
    _, count = multiply_by_reciprocals(mod, tvm.target.Target(kind))
    assert count == 0
