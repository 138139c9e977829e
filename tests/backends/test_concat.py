"""Channel concatenations distributed over the convolution or pooling that reads them (backends/tvm/concat.py)."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcc.backends import get_backend
from mcc.hwmodels import load_target
from tests.conftest import ort_run


def _weights(*shape, seed=0):
    return np.random.default_rng(seed).normal(scale=0.3, size=shape).astype(np.float32)


def fire(pool: bool, extra_output: bool = False, squeeze_kernel: int = 1, squeeze_stride: int = 1):
    """SqueezeNet's Fire module: 1x1 and 3x3 expand convolutions concatenated, then (a max pool and)
    the next squeeze convolution; optionally the concatenation is also a graph output."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["e1"]), helper.make_node("Relu", ["e1"], ["r1"]),
             helper.make_node("Conv", ["x", "w3", "b3"], ["e3"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["e3"], ["r3"]),
             helper.make_node("Concat", ["r1", "r3"], ["cat"], axis=1)]
    source = "cat"
    if pool:
        nodes.append(helper.make_node("MaxPool", ["cat"], ["pooled"], kernel_shape=[3, 3], strides=[2, 2]))
        source = "pooled"
    pad = squeeze_kernel // 2
    nodes += [helper.make_node("Conv", [source, "ws", "bs"], ["s"], pads=[pad] * 4, strides=[squeeze_stride] * 2),
              helper.make_node("Relu", ["s"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if extra_output:
        outputs.append(helper.make_tensor_value_info("cat", TensorProto.FLOAT, None))
    initializers = {"w1": _weights(24, 8, 1, 1, seed=1), "b1": _weights(24, seed=2), "w3": _weights(40, 8, 3, 3, seed=3),
                    "b3": _weights(40, seed=4), "ws": _weights(16, 64, squeeze_kernel, squeeze_kernel, seed=5), "bs": _weights(16, seed=6)}
    graph = helper.make_graph(nodes, "fire", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 15, 15])],
                              outputs, initializer=[numpy_helper.from_array(v, k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("pool, extra_output, kernel, stride, distributed", [
    (False, False, 1, 1, 1),  # conv(concat) -> conv + conv
    (False, False, 3, 2, 1),  # ... with the convolution's padding and stride on every part
    (True, False, 1, 1, 2),  # max_pool(concat) -> concat(max_pool, max_pool), then the conv as above
    (False, True, 1, 1, 0),  # the concatenation is a graph output too: it stays
])
def test_concatenation_distributed_and_result_unchanged(tmp_path, pool, extra_output, kernel, stride, distributed):
    model = fire(pool, extra_output, kernel, stride)
    backend = get_backend("tvm-llvm")
    artifact = backend.compile(model, load_target("host").tvm(), {"x": (1, 8, 15, 15)}, tmp_path / "m.so")
    assert artifact.details["distributed_concatenations"] == distributed
    feed = {"x": np.random.default_rng(7).normal(size=(1, 8, 15, 15)).astype(np.float32)}
    for got, want in zip(backend.load(artifact.library, model).run(feed), ort_run(model, feed), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_a_widening_convolution_keeps_its_concatenation(tmp_path):
    """A convolution whose output is larger than the concatenation it reads (a classifier widening
    64 channels to 96): the partial outputs would cost more than the copy, so nothing changes."""
    model = fire(pool=False)
    model.graph.initializer.remove(next(t for t in model.graph.initializer if t.name == "ws"))
    model.graph.initializer.remove(next(t for t in model.graph.initializer if t.name == "bs"))
    model.graph.initializer.extend([numpy_helper.from_array(_weights(96, 64, 1, 1, seed=8), "ws"),
                                    numpy_helper.from_array(_weights(96, seed=9), "bs")])
    backend = get_backend("tvm-llvm")
    artifact = backend.compile(model, load_target("host").tvm(), {"x": (1, 8, 15, 15)}, tmp_path / "m.so")
    assert artifact.details["distributed_concatenations"] == 0
    feed = {"x": np.random.default_rng(7).normal(size=(1, 8, 15, 15)).astype(np.float32)}
    np.testing.assert_allclose(backend.load(artifact.library, model).run(feed)[0], ort_run(model, feed)[0],
                               rtol=1e-4, atol=1e-4)
