"""upsample.py: a transposed convolution whose kernel is its stride becomes a 1x1 convolution and a
depth-to-space; others stay transposed convolutions. Both match onnxruntime."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcc.backends import get_backend
from mcc.hwmodels import load_target
from tests.conftest import ort_run


def upsampling(kernel=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0), group=1, channels=(6, 4), size=(5, 7)) -> onnx.ModelProto:
    """x -> ConvTranspose(+bias) -> Sigmoid, as a detection or segmentation head upsamples."""
    rng = np.random.default_rng(0)
    cin, cout = channels
    weight = rng.standard_normal((cin, cout // group, *kernel)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    out = [(s - 1) * st + k - p0 - p1 for s, st, k, p0, p1 in zip(size, strides, kernel, pads[:2], pads[2:])]
    nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], ["t"], strides=list(strides), pads=list(pads),
                              group=group, kernel_shape=list(kernel)),
             helper.make_node("Sigmoid", ["t"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, *size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, *out])],
        initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_pointwise_weight_orders_output_channels_as_depth_to_space_reads_them():
    from mcc.backends.tvm.upsample import pointwise_weight

    weight = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)  # [c, o, i, j]
    pointwise = pointwise_weight(weight)
    assert pointwise.shape == (12, 2, 1, 1)
    for o, i, j, c in np.ndindex(3, 2, 2, 2):
        assert pointwise[o * 4 + i * 2 + j, c, 0, 0] == weight[c, o, i, j]


@pytest.mark.parametrize("case, rewritten", [
    (dict(), 1),  # 2x2 stride 2: PP-OCRv5 det's heads
    (dict(kernel=(2, 3), strides=(2, 3), channels=(3, 5)), 1),  # not square: no ONNX DepthToSpace, still exact
    (dict(kernel=(3, 3), strides=(2, 2)), 0),  # overlapping taps: stays a transposed convolution
    (dict(pads=(1, 1, 1, 1), kernel=(4, 4), strides=(4, 4)), 0),  # padding crops: stays
    (dict(group=2), 0),  # grouped: stays
])
def test_transposed_convolutions_match_onnxruntime_whether_rewritten_or_not(tmp_path, case, rewritten):
    model = upsampling(**case)
    onnx.checker.check_model(model, full_check=True)
    shape = tuple(model.graph.input[0].type.tensor_type.shape.dim[i].dim_value for i in range(4))
    backend = get_backend("tvm-llvm")
    artifact = backend.compile(model, load_target("host").tvm(), {"x": shape}, tmp_path / "m.so")
    assert artifact.details["transposed_convolutions_as_depth_to_space"] == rewritten
    feed = {"x": np.random.default_rng(1).standard_normal(shape).astype(np.float32)}
    np.testing.assert_allclose(backend.load(artifact.library, model).run(feed)[0], ort_run(model, feed)[0],
                               rtol=1e-5, atol=1e-6)


def test_non_cpu_targets_are_left_alone():
    import tvm

    from mcc.backends.tvm import common
    from mcc.backends.tvm.upsample import as_depth_to_space

    mod = common.import_onnx(upsampling(), {"x": (1, 6, 5, 7)})
    assert as_depth_to_space(mod, tvm.target.Target("cuda"))[1] == 0
