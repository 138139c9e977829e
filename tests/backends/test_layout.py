"""Float convolutions channels-last on CPU targets (backends/tvm/layout.py): which models convert,
that the layout flows between the convolutions (one transpose in, one out), and that the
compiled artifact still computes what onnxruntime computes."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcc.backends import get_backend
from mcc.hwmodels import load_target
from tests.conftest import ort_run


def _weights(*shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).normal(scale=0.3, size=shape).astype(dtype)


def mobilenet_block(channels: int = 16, elem=TensorProto.FLOAT):
    """A MobileNetV3-style block: stem convolution, hard-swish written with Clip, a depthwise
    convolution with ReLU6 (Clip), a squeeze-excite branch with HardSigmoid, a pointwise
    convolution, a learnable affine block and a max pool: every op the layout has to flow through."""
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    c = channels
    constants = {"three": np.array(3, dtype), "zero": np.array(0, dtype), "six": np.array(6, dtype)}
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["s"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["s", "three"], ["s3"]),
        helper.make_node("Clip", ["s3", "zero", "six"], ["sc"]),
        helper.make_node("Mul", ["s", "sc"], ["sm"]),
        helper.make_node("Div", ["sm", "six"], ["hs"]),
        helper.make_node("Conv", ["hs", "wd", "bd"], ["d"], group=c, pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["d", "zero", "six"], ["d6"]),
        helper.make_node("GlobalAveragePool", ["d6"], ["g"]),
        helper.make_node("Conv", ["g", "we1", "be1"], ["e1"]),
        helper.make_node("Relu", ["e1"], ["e1r"]),
        helper.make_node("Conv", ["e1r", "we2", "be2"], ["e2"]),
        helper.make_node("HardSigmoid", ["e2"], ["gate"], alpha=0.2, beta=0.5),
        helper.make_node("Mul", ["d6", "gate"], ["se"]),
        helper.make_node("Conv", ["se", "wp", "bp"], ["p"]),
        # a learnable affine block (PP-OCRv5): one-element scale and bias of shape (1,)
        helper.make_node("Mul", ["p", "lab_scale"], ["ps"]),
        helper.make_node("Add", ["ps", "lab_bias"], ["pa"]),
        helper.make_node("MaxPool", ["pa"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
    ]
    initializers = {
        "w0": _weights(c, 3, 3, 3, seed=1, dtype=dtype), "b0": _weights(c, seed=2, dtype=dtype),
        "wd": _weights(c, 1, 3, 3, seed=3, dtype=dtype), "bd": _weights(c, seed=4, dtype=dtype),
        "we1": _weights(c // 2, c, 1, 1, seed=5, dtype=dtype), "be1": _weights(c // 2, seed=6, dtype=dtype),
        "we2": _weights(c, c // 2, 1, 1, seed=7, dtype=dtype), "be2": _weights(c, seed=8, dtype=dtype),
        "wp": _weights(2 * c, c, 1, 1, seed=9, dtype=dtype), "bp": _weights(2 * c, seed=10, dtype=dtype),
        "lab_scale": np.array([1.5], dtype), "lab_bias": np.array([-0.25], dtype),
        **constants,
    }
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", elem, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", elem, [])],
                              initializer=[numpy_helper.from_array(v, k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _compile_and_compare(model, tmp_path, rtol=1e-4, atol=1e-4):
    backend = get_backend("tvm-llvm")
    artifact = backend.compile(model, load_target("host").tvm(), {"x": (1, 3, 32, 32)}, tmp_path / "m.so")
    dtype = helper.tensor_dtype_to_np_dtype(model.graph.input[0].type.tensor_type.elem_type)
    feed = {"x": np.random.default_rng(11).normal(size=(1, 3, 32, 32)).astype(dtype)}
    got = backend.load(artifact.library, model).run(feed)
    np.testing.assert_allclose(np.asarray(got[0], np.float32), ort_run(model, feed)[0].astype(np.float32),
                               rtol=rtol, atol=atol)
    return artifact


def _transposes_in_main(model) -> int:
    """Layout changes left in the Relax graph after the target rewrites."""
    from mcc.backends.tvm import common
    from mcc.backends.tvm.llvm import rewrite_for_target

    mod, _ = rewrite_for_target(common.import_onnx(model, {"x": (1, 3, 32, 32)}), load_target("host").tvm())
    text = mod["main"].script()
    return text.count("R.permute_dims(") + text.count("R.layout_transform(")


def test_a_mobilenet_block_runs_channels_last_with_one_transpose_each_way(tmp_path):
    model = mobilenet_block()
    artifact = _compile_and_compare(model, tmp_path)
    assert artifact.details["channels_last_convolutions"] == 5
    # the Clips (ReLU6, hard-swish), the HardSigmoid and the one-element affine constants pass the
    # layout on: only the input and the output are transposed
    assert _transposes_in_main(model) == 2


def test_float16_convolutions_convert_too(tmp_path):
    artifact = _compile_and_compare(mobilenet_block(elem=TensorProto.FLOAT16), tmp_path, rtol=2e-2, atol=2e-2)
    assert artifact.details["channels_last_convolutions"] == 5


def test_channel_counts_that_leave_vectors_partial_keep_nchw(tmp_path):
    """44 and 88 channels: most of the work would run on partial vectors (PP-OCRv5 cls ran 1.23x slower
    converted), so nothing converts."""
    from mcc.backends.tvm import common, layout

    model = mobilenet_block(channels=44)
    mod = common.import_onnx(model, {"x": (1, 3, 32, 32)})
    assert layout.full_vector_share(mod, 16) < layout.MIN_FULL_VECTOR_SHARE
    artifact = _compile_and_compare(model, tmp_path)
    assert artifact.details["channels_last_convolutions"] == 0


@pytest.mark.parametrize("kernel, converted, rewritten", [
    (3, 2, 0),  # overlapping taps: a transposed convolution, pinned to NCHW
    (2, 3, 1),  # kernel == stride: a 1x1 convolution and a depth-to-space (upsample.py), channels-last too
])
def test_a_transposed_convolution_between_channels_last_ones(tmp_path, kernel, converted, rewritten):
    """TVM 0.27 legalizes ConvTranspose in NCHW only: the layout must not flow into it (PP-OCRv5
    det's upsampling failed in the VM code generator before it was pinned). One whose kernel is
    its stride is a 1x1 convolution by then, which goes channels-last with the others."""
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("ConvTranspose", ["r", "wt"], ["u"], strides=[2, 2], kernel_shape=[kernel, kernel]),
             helper.make_node("Conv", ["u", "w1"], ["y"], pads=[1, 1, 1, 1])]
    initializers = {"w0": _weights(16, 3, 3, 3, seed=1), "wt": _weights(16, 16, kernel, kernel, seed=2),
                    "w1": _weights(32, 16, 3, 3, seed=3)}
    graph = helper.make_graph(nodes, "up", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
                              initializer=[numpy_helper.from_array(v, k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    artifact = _compile_and_compare(model, tmp_path)
    assert artifact.details["channels_last_convolutions"] == converted
    assert artifact.details["transposed_convolutions_as_depth_to_space"] == rewritten


@pytest.mark.parametrize("kind", ["max", "min"])
def test_only_scalar_bound_max_min_kernels_are_exposed(kind):
    """The ONNX frontend's Clip kernels (topi.maximum/minimum against a 0-d bound) are recognised;
    a maximum of two full tensors is not one of them."""
    from tvm import te, topi

    from mcc.backends.tvm.layout import _scalar_bound_kind

    op = topi.maximum if kind == "max" else topi.minimum
    x = te.placeholder((1, 4, 5, 5), name="x")
    scalar = te.placeholder((), name="b")
    other = te.placeholder((1, 4, 5, 5), name="o")
    assert _scalar_bound_kind(te.create_prim_func([x, scalar, op(x, scalar)])) == kind
    assert _scalar_bound_kind(te.create_prim_func([x, other, op(x, other)])) is None


def test_a_quantized_convolution_between_float_ones_keeps_the_layout(tmp_path):
    """float conv -> QuantizeLinear -> DequantizeLinear -> quantized conv (an integer kernel on
    VNNI CPUs, a float one elsewhere): the per-tensor quantize becomes elementwise ops the layout
    flows through, so only the model's input and output are transposed."""
    rng = np.random.default_rng(3)
    wq = rng.integers(-127, 128, size=(32, 16, 3, 3)).astype(np.int8)
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w1"], axis=0),
             helper.make_node("Conv", ["dq", "w1"], ["y"], pads=[1, 1, 1, 1])]
    initializers = {"w0": _weights(16, 3, 3, 3, seed=1), "b0": _weights(16, seed=2),
                    "s": np.array(0.02, np.float32), "z": np.array(-3, np.int8), "wq": wq,
                    "ws": np.full(32, 0.004, np.float32), "wz": np.zeros(32, np.int8)}
    graph = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
                              initializer=[numpy_helper.from_array(v, k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    # a value on a rounding boundary may quantize one step apart when a float's last bit differs
    artifact = _compile_and_compare(model, tmp_path, rtol=0, atol=0.02 * 0.004 * 16 * 9 * 127)
    assert artifact.details["channels_last_convolutions"] == 2
    assert _transposes_in_main(model) == 2


def test_a_quantized_depthwise_convolution_between_integer_ones_keeps_the_layout(tmp_path):
    """quantize-int8's depthwise convolution (grouped: it stays float, on dequantized operands)
    between two quantized ungrouped ones: its dequantized constant weight is folded before the
    layout rule looks, and the activations' dequantize is elementwise too, so the depthwise
    convolution goes channels-last with the others (it stayed NCHW, a transpose pair around it:
    PP-OCRv5 rec int8 spent 4.8 ms in such transposes)."""
    rng = np.random.default_rng(4)

    def qconv(name, source, out_channels, in_channels, group, pads):
        wq = rng.integers(-127, 128, size=(out_channels, in_channels // group, 3 if group > 1 else 1,
                                           3 if group > 1 else 1)).astype(np.int8)
        initializers.update({f"{name}_wq": wq, f"{name}_ws": np.full(out_channels, 0.004, np.float32),
                             f"{name}_wz": np.zeros(out_channels, np.int8)})
        return [helper.make_node("QuantizeLinear", [source, "s", "z"], [f"{name}_q"]),
                helper.make_node("DequantizeLinear", [f"{name}_q", "s", "z"], [f"{name}_dq"]),
                helper.make_node("DequantizeLinear", [f"{name}_wq", f"{name}_ws", f"{name}_wz"], [f"{name}_w"], axis=0),
                helper.make_node("Conv", [f"{name}_dq", f"{name}_w"], [f"{name}_c"], group=group, pads=pads),
                helper.make_node("Relu", [f"{name}_c"], [f"{name}_r"])]

    initializers = {"s": np.array(0.05, np.float32), "z": np.array(-3, np.int8)}
    nodes = (qconv("a", "x", 32, 4, 1, [0] * 4) + qconv("dw", "a_r", 32, 32, 32, [1] * 4)
             + qconv("b", "dw_r", 32, 32, 1, [0] * 4))
    nodes.append(helper.make_node("Identity", ["b_r"], ["y"]))
    graph = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
                              initializer=[numpy_helper.from_array(v, k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)

    from mcc.backends.tvm import common
    from mcc.backends.tvm.llvm import rewrite_for_target

    mod, details = rewrite_for_target(common.import_onnx(model, {"x": (1, 4, 16, 16)}), load_target("host").tvm())
    assert details["channels_last_convolutions"] == 3
    text = mod["main"].script()
    assert text.count("R.permute_dims(") + text.count("R.layout_transform(") == 2

    backend = get_backend("tvm-llvm")
    artifact = backend.compile(model, load_target("host").tvm(), {"x": (1, 4, 16, 16)}, tmp_path / "m.so")
    feed = {"x": np.random.default_rng(5).normal(size=(1, 4, 16, 16)).astype(np.float32)}
    got, want = backend.load(artifact.library, model).run(feed)[0], ort_run(model, feed)[0]
    # an intermediate value on a rounding boundary may quantize one step apart (0.05), which moves
    # the outputs it reaches by a weight's worth (up to 0.004 x 127) each
    assert np.mean(np.abs(got - want) > 1e-4) < 0.05
    np.testing.assert_allclose(got, want, rtol=0, atol=2 * 0.05 * 0.004 * 127)
