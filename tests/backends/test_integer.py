"""Quantized (QDQ) convolutions compiled to integer kernels: uint8 x int8 -> int32 with VNNI.

Each case is a QDQ model as quantize-int8 writes it; the artifact must report the integer
convolutions, schedule them with the `integer-dot` rule, and compute what onnxruntime computes on
the QDQ model (the integer arithmetic is exact, the float epilogue rounds)."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcc.backends import get_backend
from mcc.backends.tvm.integer import lower_quantized_kernels, target_has_integer_dot
from mcc.hwmodels import load_target
from tests.conftest import ort_run

HOST = load_target("host").tvm()
needs_vnni = pytest.mark.skipif(not target_has_integer_dot(HOST),
                                reason="this CPU has no AVX-512 VNNI: quantized convolutions stay float")


def qdq_conv(in_channels, out_channels, kernel, *, size=12, stride=1, pad=0, zero_point=-5, dtype=np.int8,
             seed=0, relu=True, requantize=False, column=False, group=1, per_tensor_weights=False):
    """x -> QuantizeLinear -> DequantizeLinear -> Conv(DequantizeLinear(per-channel int8 W), bias) [-> Relu]
    [-> Q -> DQ]."""
    rng = np.random.default_rng(seed)
    # column: a 1-D convolution written as 2-D, [N, C, L, 1] with a [K, 1] kernel (magika's)
    kernel_shape = (kernel, 1) if column else (kernel, kernel)
    weight = rng.normal(scale=0.3, size=(out_channels, in_channels // group, *kernel_shape))
    w_scale = np.abs(weight).reshape(out_channels, -1).max(axis=1) / 127
    if per_tensor_weights:  # one scale, ONNX's default axis
        w_scale = np.array(np.abs(weight).max() / 127)
    w_q = np.clip(np.round(weight / np.reshape(w_scale, (-1, 1, 1, 1))), -127, 127).astype(np.int8)
    inits = {
        "x_scale": np.array(0.02, np.float32), "x_zp": np.array(zero_point, dtype),
        "w_q": w_q, "w_scale": w_scale.astype(np.float32),
        "w_zp": np.zeros(w_scale.shape, np.int8),
        "b": rng.normal(size=out_channels).astype(np.float32),
        "y_scale": np.array(0.05, np.float32), "y_zp": np.array(0, np.uint8),
    }
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["wd"],
                         **({} if per_tensor_weights else {"axis": 0})),
        helper.make_node("Conv", ["xd", "wd", "b"], ["c"], strides=[stride, stride], group=group,
                         pads=[pad, 0, pad, 0] if column else [pad] * 4),
    ]
    last = "c"
    if relu:
        nodes.append(helper.make_node("Relu", ["c"], ["r"]))
        last = "r"
    if requantize:
        nodes += [helper.make_node("QuantizeLinear", [last, "y_scale", "y_zp"], ["yq"]),
                  helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zp"], ["yd"])]
        last = "yd"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                     [1, in_channels, size, 1 if column else size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
        initializer=[numpy_helper.from_array(a, n) for n, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


CASES = {
    # int8 activations with a zero point and zero padding: the integers are padded with it
    "3x3_padded_int8_zero_point": dict(in_channels=8, out_channels=32, kernel=3, pad=1),
    # an RGB image's 3 channels (padded to 4), 20 filters (padded to 32 and sliced), stride 2
    "rgb_stride2_odd_filters": dict(in_channels=3, out_channels=20, kernel=5, pad=2, stride=2, size=17),
    # uint8 activations, 1x1, requantized output (the quantize fuses into the kernel's epilogue)
    "1x1_uint8_requantized": dict(in_channels=16, out_channels=48, kernel=1, zero_point=128, dtype=np.uint8,
                                  requantize=True, relu=False),
    "wide_reduction": dict(in_channels=96, out_channels=16, kernel=3, size=13, pad=1, zero_point=0),
    # [1, 32, 60, 1] with a 5 x 1 kernel: tiled along the height
    "one_dimensional_column": dict(in_channels=32, out_channels=32, kernel=5, size=60, column=True),
    # one weight scale (DequantizeLinear's default axis 1, a scalar scale)
    "per_tensor_weight_scale": dict(in_channels=8, out_channels=16, kernel=3, pad=1, per_tensor_weights=True),
}


def _one_integer_kernel_against_onnxruntime(model, shape, tmp_path, channels_last=None):
    """(artifact output, onnxruntime output) of `model` compiled for the host, after checking that
    its one quantized op became an integer kernel scheduled by `integer-dot` (and, when given,
    whether it ran channels-last)."""
    backend = get_backend("tvm-llvm")
    artifact = backend.compile(model, HOST, {"x": shape}, tmp_path / "m.so")
    assert artifact.details["integer_kernels"] == 1
    if channels_last is not None:
        assert artifact.details["channels_last_convolutions"] == channels_last
    assert "integer-dot" in artifact.details["default_schedules"].values(), artifact.details["default_schedules"]
    feed = {"x": np.random.default_rng(1).normal(scale=1.5, size=shape).astype(np.float32)}
    return backend.load(artifact.library, model).run(feed)[0], ort_run(model, feed)[0]


@needs_vnni
@pytest.mark.parametrize("layout", ["channels-last", "nchw"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_quantized_convolution_runs_as_integer_kernel_and_matches_onnxruntime(case, layout, tmp_path, monkeypatch):
    """Both schedules of the integer convolution: channels-last (what layout.py gives a model
    whose convolutions fill whole vectors) and NCHW (a model it leaves as it is)."""
    from mcc.backends.tvm import layout as layouts

    if layout == "nchw":
        monkeypatch.setattr(layouts, "MIN_FULL_VECTOR_SHARE", 1.5)  # nothing converts
    model = qdq_conv(**CASES[case])
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    got, want = _one_integer_kernel_against_onnxruntime(model, shape, tmp_path,
                                                        channels_last=1 if layout == "channels-last" else 0)
    scale = float(np.abs(want).max())
    if CASES[case].get("requantize"):
        # both sides round to the same output grid; a value on a rounding boundary may land one
        # step apart (0.05) when the float epilogue's last bit differs
        assert np.mean(np.abs(got - want) > 1e-6) < 0.01
        np.testing.assert_allclose(got, want, atol=0.05 + 1e-6)
    else:
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale)


def test_targets_without_vnni_keep_the_float_lowering():
    import tvm

    from mcc.backends.tvm import common

    model = qdq_conv(8, 32, 3, pad=1)
    mod = common.import_onnx(model, {"x": (1, 8, 12, 12)})
    generic = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64", "num-cores": 2})
    _, count = lower_quantized_kernels(mod, generic)
    assert count == 0


@needs_vnni
def test_grouped_and_float_convolutions_are_not_rewritten():
    from mcc.backends.tvm import common

    grouped = qdq_conv(8, 32, 3, pad=1, group=2)
    _, count = lower_quantized_kernels(common.import_onnx(grouped, {"x": (1, 8, 12, 12)}), HOST)
    assert count == 0

    float_model = qdq_conv(8, 32, 3, pad=1)
    # the weight's DequantizeLinear bypassed: a float weight, nothing to lower
    float_model.graph.node[3].input[1] = "w_float"
    float_model.graph.initializer.append(numpy_helper.from_array(np.ones((32, 8, 3, 3), np.float32), "w_float"))
    _, count = lower_quantized_kernels(common.import_onnx(float_model, {"x": (1, 8, 12, 12)}), HOST)
    assert count == 0


def _conv_dtypes(mod) -> list[tuple[str, str, str]]:
    """(data, weight, output) dtypes of every conv2d call in the module's Relax functions."""
    import tvm
    from tvm import relax

    conv2d = tvm.ir.Op.get("relax.nn.conv2d")
    found = []

    @relax.expr_functor.visitor
    class Convs(relax.PyExprVisitor):
        def visit_call_(self, call):
            super().visit_call_(call)
            if call.op.same_as(conv2d):
                found.append(tuple(str(value.ty.dtype) for value in (call.args[0], call.args[1], call)))

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            Convs().visit_expr(func)
    return found


DEPTHWISE_CASES = {
    # int8 activations with a zero point, zero padding: float(x) - zero point pads with 0
    "3x3_padded_int8": dict(in_channels=32, out_channels=32, kernel=3, pad=1, group=32),
    # uint8 activations, 5x5 stride 2, requantized output (the quantize in the kernel's epilogue)
    "5x5_stride2_uint8_requantized": dict(in_channels=32, out_channels=32, kernel=5, pad=2, stride=2, size=15,
                                          zero_point=128, dtype=np.uint8, requantize=True, relu=False,
                                          group=32),
    # a channel multiplier of 2: two filters per input channel
    "multiplier_2": dict(in_channels=16, out_channels=32, kernel=3, pad=1, group=16),
    # int8 activations with zero point -128 (uint8 zero point 0): the convolution's own padding
    "3x3_zero_point_0": dict(in_channels=32, out_channels=32, kernel=3, pad=1, group=32, zero_point=-128),
}


@needs_vnni
@pytest.mark.parametrize("case", sorted(DEPTHWISE_CASES))
def test_quantized_depthwise_convolution_reads_integers_and_matches_onnxruntime(case, tmp_path):
    """A depthwise convolution has no channel reduction for vpdpbusd; its integer sums run exactly
    in float32 lanes on the uint8 activations (integer.py, `_exact_depthwise`)."""
    from mcc.backends.tvm import common

    model = qdq_conv(**DEPTHWISE_CASES[case])
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    mod, count = lower_quantized_kernels(common.import_onnx(model, {"x": shape}), HOST)
    assert count == 1
    # the convolution reads the integers themselves (uint8), with integer-valued float weights
    assert _conv_dtypes(mod) == [("uint8", "float32", "float32")]
    backend = get_backend("tvm-llvm")
    artifact = backend.compile(model, HOST, {"x": shape}, tmp_path / "m.so")
    assert artifact.details["integer_kernels"] == 1
    # 32 output channels fill whole vectors: the convolution runs channels-last (layout.py)
    assert artifact.details["channels_last_convolutions"] == 1
    feed = {"x": np.random.default_rng(1).normal(scale=1.5, size=shape).astype(np.float32)}
    got, want = backend.load(artifact.library, model).run(feed)[0], ort_run(model, feed)[0]
    if DEPTHWISE_CASES[case].get("requantize"):
        assert np.mean(np.abs(got - want) > 1e-6) < 0.01  # a rounding boundary may land a step apart
        np.testing.assert_allclose(got, want, atol=0.05 + 1e-6)
    else:
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))


@needs_vnni
def test_depthwise_kernels_too_large_for_exact_float_sums_stay_float():
    from mcc.backends.tvm import common

    # 23 x 23 = 529 taps: 529 * 255 * 128 >= 2^24, float32 would round the integer sum
    model = qdq_conv(4, 4, 23, size=25, pad=0, group=4)
    _, count = lower_quantized_kernels(common.import_onnx(model, {"x": (1, 4, 25, 25)}), HOST)
    assert count == 0


def qdq_matmul(rows, depth, columns, *, batch=None, gemm=False, zero_point=3, seed=0):
    """QuantizeLinear -> DequantizeLinear -> MatMul(DequantizeLinear(int8 W [K, N], axis 1)), or a
    Gemm with transB (W stored [N, K], axis 0) and a bias."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(scale=0.3, size=(columns, depth) if gemm else (depth, columns))
    axis = 0 if gemm else 1
    w_scale = np.abs(weight).max(axis=1 - axis) / 127
    w_q = np.clip(np.round(weight / (w_scale[:, None] if gemm else w_scale[None, :])), -127, 127).astype(np.int8)
    shape = [rows, depth] if batch is None else [batch, rows, depth]
    inits = {"x_scale": np.array(0.02, np.float32), "x_zp": np.array(zero_point, np.int8), "w_q": w_q,
             "w_scale": w_scale.astype(np.float32), "w_zp": np.zeros(columns, np.int8),
             "b": rng.normal(size=columns).astype(np.float32)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["wd"], axis=axis)]
    if gemm:
        nodes.append(helper.make_node("Gemm", ["xd", "wd", "b"], ["y"], transB=1))
    else:
        nodes.append(helper.make_node("MatMul", ["xd", "wd"], ["y"]))
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
                              initializer=[numpy_helper.from_array(a, n) for n, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, tuple(shape)


MATMUL_CASES = {
    "dense_2d": dict(rows=8, depth=64, columns=32),
    "batched_3d_odd_sizes": dict(rows=5, depth=30, columns=20, batch=2),  # K padded to 32, N to 32
    "gemm_transb_one_row": dict(rows=1, depth=96, columns=48, gemm=True),
    # more weights than data (PP-OCRv5 rec's classifier in small): the row tiles of one block of
    # columns run one after another, 4 rows x 5 vectors
    "classifier_rows_inner": dict(rows=40, depth=120, columns=1200, batch=1),
}


@needs_vnni
@pytest.mark.parametrize("case", sorted(MATMUL_CASES))
def test_quantized_matmul_runs_as_integer_kernel_and_matches_onnxruntime(case, tmp_path):
    model, shape = qdq_matmul(**MATMUL_CASES[case])
    got, want = _one_integer_kernel_against_onnxruntime(model, shape, tmp_path)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))


def test_float_channel_padding_leaves_a_quantized_weight_alone():
    """A QDQ convolution on a target without VNNI keeps its dequantized weight (a bound variable,
    not a constant): the float channel padding must pass it by, not fail on it."""
    import tvm

    from mcc.backends.tvm import channels, common

    model = qdq_conv(8, 120, 3, size=13, pad=1)  # 120 float filters at 13 wide would be padded to 128
    mod = common.import_onnx(model, {"x": (1, 8, 13, 13)})
    generic = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64", "num-cores": 2})
    _, count = channels.pad_output_channels(mod, generic)
    assert count == 0


def qdq_fire(seed=0):
    """A SqueezeNet Fire module as quantize-int8 writes it: two quantized expand convolutions
    (1x1 and 3x3) -> Relu -> Concat -> MaxPool -> QuantizeLinear -> DequantizeLinear -> a
    quantized 1x1 squeeze convolution -> Relu."""
    rng = np.random.default_rng(seed)
    inits = {"x_scale": np.array(0.02, np.float32), "x_zp": np.array(-3, np.int8),
             "p_scale": np.array(0.04, np.float32), "p_zp": np.array(-128, np.int8)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"])]

    def conv(name, source, in_channels, out_channels, kernel):
        weight = rng.normal(scale=0.3, size=(out_channels, in_channels, kernel, kernel))
        scale = np.abs(weight).reshape(out_channels, -1).max(axis=1) / 127
        inits[f"{name}_q"] = np.round(weight / scale[:, None, None, None]).astype(np.int8)
        inits[f"{name}_s"] = scale.astype(np.float32)
        inits[f"{name}_z"] = np.zeros(out_channels, np.int8)
        inits[f"{name}_b"] = rng.normal(scale=0.5, size=out_channels).astype(np.float32)
        nodes.extend([
            helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [f"{name}_w"], axis=0),
            helper.make_node("Conv", [source, f"{name}_w", f"{name}_b"], [f"{name}_c"], pads=[kernel // 2] * 4),
            helper.make_node("Relu", [f"{name}_c"], [f"{name}_r"])])
        return f"{name}_r"

    parts = [conv("e1", "xd", 16, 64, 1), conv("e3", "xd", 16, 64, 3)]
    nodes += [helper.make_node("Concat", parts, ["cat"], axis=1),
              helper.make_node("MaxPool", ["cat"], ["pool"], kernel_shape=[3, 3], strides=[2, 2]),
              helper.make_node("QuantizeLinear", ["pool", "p_scale", "p_zp"], ["pq"]),
              helper.make_node("DequantizeLinear", ["pq", "p_scale", "p_zp"], ["pd"])]
    last = conv("sq", "pd", 128, 16, 1)  # int32 partial sums: 16 x 4 bytes < 128 x 1 per pixel
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    graph = helper.make_graph(nodes, "fire", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 23, 23])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
                              initializer=[numpy_helper.from_array(a, n) for n, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _calls(mod) -> list[tuple[str, str]]:
    """(op name, result dtype) of each operator call in `mod`'s main function, in order."""
    import tvm
    from tvm import relax

    calls = []

    @relax.expr_functor.visitor
    class Calls(relax.PyExprVisitor):
        def visit_call_(self, call):
            for arg in call.args:
                self.visit_expr(arg)
            if isinstance(call.op, tvm.ir.Op):
                calls.append((call.op.name, str(getattr(call.ty, "dtype", ""))))

    Calls().visit_expr(mod["main"])
    return calls


@needs_vnni
def test_requantization_moves_above_concatenation_and_pooling(tmp_path):
    """The quantize after Concat -> MaxPool moves above both (exact: elementwise with one scale,
    and monotone), to uint8 directly (zero point + 128): the expand convolutions' epilogues write
    uint8, the concatenation and the pooling move bytes, and the squeeze convolution's integer
    kernel is distributed over the concatenated parts (partial int32 sums add exactly). The
    artifact computes what onnxruntime computes on the QDQ model."""
    from mcc.backends.tvm import common
    from mcc.backends.tvm.llvm import rewrite_for_target

    model = qdq_fire()
    lowered, count = lower_quantized_kernels(common.import_onnx(model, {"x": (1, 16, 23, 23)}), HOST)
    assert count == 3
    calls = _calls(lowered)
    assert ("relax.concat", "uint8") in calls and ("relax.nn.max_pool2d", "uint8") in calls, calls
    assert not any(op in ("relax.concat", "relax.nn.max_pool2d") and dtype == "float32" for op, dtype in calls)
    # quantizes to uint8 only: no int8 -> int16 -> uint8 conversion is left
    assert ("relax.quantize", "int8") not in calls and ("relax.astype", "int16") not in calls, calls

    rewritten, details = rewrite_for_target(common.import_onnx(model, {"x": (1, 16, 23, 23)}), HOST)
    assert details["integer_kernels"] == 3
    calls = _calls(rewritten)
    assert not any(op == "relax.concat" for op, _ in calls), calls  # pooled per part, then distributed
    assert sum(op == "relax.nn.conv2d" for op, _ in calls) == 4

    backend = get_backend("tvm-llvm")
    artifact = backend.compile(model, HOST, {"x": (1, 16, 23, 23)}, tmp_path / "fire.so")
    feed = {"x": np.random.default_rng(1).normal(scale=1.0, size=(1, 16, 23, 23)).astype(np.float32)}
    got, want = backend.load(artifact.library, model).run(feed)[0], ort_run(model, feed)[0]
    # the integer sums are exact; an intermediate value on a rounding boundary of the requantized
    # activations may land one step apart when the float epilogue's last bit differs
    assert np.mean(np.abs(got - want) > 1e-4 * np.abs(want).max()) < 0.01
    np.testing.assert_allclose(got, want, atol=0.05 * float(np.abs(want).max()))


def test_integer_register_tile_favours_multiply_adds_per_load():
    """SqueezeNet's first convolution (64 filters, 111 wide, a short 3x3x4 reduction): the tile
    with the most accumulators (1 vector x 16 pixels on 112 columns) ran 1.07 ms, 4 vectors x 6
    pixels on 114 columns 0.43 ms. Widths with a good divisor get no extra columns; a 1-D
    convolution's width of 1 none."""
    from mcc.backends.tvm.integer import _extra_columns
    from mcc.backends.tvm.schedules.integer import register_tile

    assert _extra_columns(111, 64) == 3 and register_tile(64, 114) == (4, 6)
    assert _extra_columns(55, 64) == 0 and register_tile(64, 55) == (4, 5)
    assert _extra_columns(1, 64) == 0 and register_tile(64, 1) == (4, 1)
    # PP-OCRv5 rec's 160 columns: 162 would give 7 % more multiply-adds per load, not worth the
    # padding pass the depthwise convolution before then runs; SqueezeNet's 13 -> 15 doubles them
    assert _extra_columns(160, 64) == 0 and _extra_columns(13, 256) == 2
    assert register_tile(16, 24) == (1, 24)  # one vector: all accumulators on pixels
    assert register_tile(18400, 40) == (5, 4)  # PP-OCRv5 rec's classifier: 40 rows, 1150 vectors
    for width in (37, 97, 111):  # primes and 3 x 37: never 1-pixel tiles after the extra columns
        assert register_tile(64, width + _extra_columns(width, 64))[1] > 1
