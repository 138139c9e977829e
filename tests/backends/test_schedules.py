"""mcc's default CPU schedules: which rule schedules which kernel, and that the scheduled artifact
computes what onnxruntime computes (each case compiled once with the schedules, from disk)."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcc.backends import get_backend
from mcc.hwmodels import load_target
from tests.conftest import ort_run


def _model(nodes, inputs, output, initializers, opset=17):
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, [])],
        initializer=[numpy_helper.from_array(array, name) for name, array in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _weights(*shape, seed=0):
    return np.random.default_rng(seed).normal(scale=0.3, size=shape).astype(np.float32)


def conv_bias_relu():
    """3x3 convolution with padding, bias and ReLU: a padded producer and a fused epilogue."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    return _model(nodes, [("x", (1, 8, 16, 16))], "y", {"w": _weights(32, 8, 3, 3), "b": _weights(32)})


def depthwise_stride2():
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], group=16, strides=[2, 2], pads=[1, 1, 1, 1])]
    return _model(nodes, [("x", (1, 16, 15, 15))], "y", {"w": _weights(16, 1, 3, 3)})


def grouped_conv_odd_width():
    """Two groups, an output width of 55 (its vector tile is a divisor: 11 lanes)."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], group=2)]
    return _model(nodes, [("x", (1, 8, 5, 55))], "y", {"w": _weights(12, 4, 1, 1)})


def stft_like_conv1d():
    """Prime output extents (17 channels x 19 frames) and a long, strided window: no register tile."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], strides=[20])]
    return _model(nodes, [("x", (1, 1, 424))], "y", {"w": _weights(17, 1, 64)})


def gemv_gelu():
    """A matrix-vector product with a tanh-GELU epilogue that reads its input several times."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"]),
        helper.make_node("Mul", ["m", "m"], ["m2"]),
        helper.make_node("Mul", ["m2", "m"], ["m3"]),
        helper.make_node("Mul", ["m3", "k"], ["m4"]),
        helper.make_node("Add", ["m", "m4"], ["inner"]),
        helper.make_node("Tanh", ["inner"], ["t"]),
        helper.make_node("Add", ["t", "one"], ["t1"]),
        helper.make_node("Mul", ["m", "t1"], ["y"]),
    ]
    inits = {"w": _weights(64, 96), "k": np.array(0.044715, np.float32), "one": np.array(1.0, np.float32)}
    return _model(nodes, [("x", (1, 64))], "y", inits)


def batched_matmul():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    return _model(nodes, [("x", (2, 24, 40))], "y", {"w": _weights(40, 32)})


def pool_and_softmax():
    nodes = [helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[3, 3], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["p"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Softmax", ["f"], ["y"], axis=1)]
    return _model(nodes, [("x", (1, 24, 33, 33))], "y", {})


def scatter_then_packed_conv():
    """TVM's scatter kernel (a root without blocks) beside a convolution whose weights are re-laid
    out (13-wide output: channel-vector tile): SplitLayoutRewritePreproc must not see the former."""
    nodes = [helper.make_node("ScatterElements", ["x", "i", "u"], ["s"]),
             helper.make_node("Reshape", ["s", "shape"], ["r"]),
             helper.make_node("Conv", ["r", "w"], ["y"])]
    inits = {"i": np.array([[0, 1, 2]], np.int64), "u": _weights(1, 3), "shape": np.array([1, 32, 13, 13], np.int64),
             "w": _weights(32, 32, 1, 1)}
    return _model(nodes, [("x", (32 * 13, 13))], "y", inits)


def classifier_softmax():
    """PP-OCRv5 rec's head in small: 40 time steps x 120 features -> 2005 classes (no divisor
    filling a vector: padded to 2016), a bias, a softmax over the classes."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
             helper.make_node("Softmax", ["a"], ["y"], axis=2)]
    return _model(nodes, [("x", (1, 40, 120))], "y", {"w": _weights(120, 2005), "b": _weights(2005)})


def long_softmax():
    """A softmax over 2048 contiguous values per row: summed in vector lanes (`rfactor`)."""
    return _model([helper.make_node("Softmax", ["x"], ["y"], axis=2)], [("x", (1, 6, 2048))], "y", {})


def channels_last_global_mean():
    """An SE block's squeeze in small: 1x1 convolutions channels-last around a global mean over
    20 x 20 pixels of 32 contiguous channels."""
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"]), helper.make_node("GlobalAveragePool", ["a"], ["g"]),
             helper.make_node("Conv", ["g", "w1"], ["s"]), helper.make_node("Mul", ["a", "s"], ["y"])]
    return _model(nodes, [("x", (1, 16, 20, 20))], "y", {"w0": _weights(32, 16, 1, 1), "w1": _weights(32, 32, 1, 1, seed=1)})


CASES = {
    "channels_last_global_mean": (channels_last_global_mean, "reduction"),
    "classifier_softmax": (classifier_softmax, "tile-reduction"),
    "long_softmax": (long_softmax, "reduction"),
    "conv_bias_relu": (conv_bias_relu, "tile-reduction"),
    "depthwise_stride2": (depthwise_stride2, "tile-reduction"),
    "grouped_conv_odd_width": (grouped_conv_odd_width, "tile-reduction"),
    "stft_like_conv1d": (stft_like_conv1d, "dot-product"),
    "gemv_gelu": (gemv_gelu, "tile-reduction"),
    "batched_matmul": (batched_matmul, "tile-reduction"),
    "pool_and_softmax": (pool_and_softmax, "reduction"),
    "scatter_then_packed_conv": (scatter_then_packed_conv, "tile-reduction"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_scheduled_kernels_match_onnxruntime(case, tmp_path):
    build, main_rule = CASES[case]
    model = build()
    backend = get_backend("tvm-llvm")
    target = load_target("host").tvm()
    shapes = {value.name: tuple(d.dim_value for d in value.type.tensor_type.shape.dim) for value in model.graph.input}
    artifact = backend.compile(model, target, shapes, tmp_path / "m.so")
    rules = artifact.details["default_schedules"]
    if case == "scatter_then_packed_conv":  # the re-laid-out kernel was split and folded
        assert any(name.endswith("_prepacked") for name in _kernel_names(artifact.library)), rules
    assert main_rule in rules.values(), rules
    feed = {name: np.random.default_rng(1).normal(size=shape).astype(np.float32) for name, shape in shapes.items()}
    got = backend.load(artifact.library, model).run(feed)
    want = ort_run(model, feed)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-5)


def _kernel_names(library) -> list[str]:
    """Symbols of the compiled kernels in an exported library (the LLVM module's functions)."""
    import subprocess

    output = subprocess.run(["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True).stdout
    return [line.split()[-1] for line in output.splitlines() if line.strip()]


def test_schedules_can_be_turned_off_and_then_nothing_is_scheduled(tmp_path):
    model = conv_bias_relu()
    artifact = get_backend("tvm-llvm").compile(model, load_target("host").tvm(), {"x": (1, 8, 16, 16)},
                                               tmp_path / "m.so", default_schedules=False)
    assert artifact.details["default_schedules"] == {}


def test_vector_tile_is_a_divisor_that_fits_one_register():
    from mcc.backends.tvm.schedules.cpu import _vector_split

    assert _vector_split(224, 16) == 16
    assert _vector_split(55, 16) == 11
    assert _vector_split(13, 16) == 13
    assert _vector_split(97, 16) == 1  # prime: no tile (the dot-product rule takes such kernels)


def test_rows_and_vectors_of_a_tile_give_the_most_multiply_adds_per_load():
    from mcc.backends.tvm.schedules.cpu import MAX_OUTPUT_VECTOR_ACCUMULATORS, _rows_and_vectors

    assert _rows_and_vectors(13, 64) == (13, 2)  # SqueezeNet's classifier channels-last: 26 FMAs per 15 loads
    assert _rows_and_vectors(13, 63) == (13, 1)  # no pair of vectors divides 63
    assert _rows_and_vectors(112, 6) == (8, 3)  # 24 FMAs per 11 loads beats 16 rows x 1 (16 per 17)
    assert _rows_and_vectors(96, 1) == (16, 1)  # one vector: the most rows, as before
    for row_extent in range(1, 60):
        for vectors in range(1, 9):
            rows, count = _rows_and_vectors(row_extent, vectors)
            assert row_extent % rows == 0 and vectors % count == 0
            assert rows * count <= MAX_OUTPUT_VECTOR_ACCUMULATORS


def test_non_cpu_targets_are_left_alone():
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from mcc.backends.tvm.schedules import apply_default_schedules

    mod = relax.get_pipeline("zero")(from_onnx(batched_matmul(), shape_dict={"x": [2, 24, 40]}))
    _, applied = apply_default_schedules(mod, tvm.target.Target({"kind": "cuda", "arch": "sm_80"}))
    assert applied == {}


def test_filters_padded_to_the_vector_width_where_the_output_width_misses_it(tmp_path):
    """100 filters at 13 x 13 (SqueezeNet's classifier shape, smaller): padded to 112 so the
    channel-vector tile applies, the output sliced back, the result unchanged."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"]), helper.make_node("Relu", ["c"], ["y"])]
    model = _model(nodes, [("x", (1, 64, 13, 13))], "y", {"w": _weights(100, 64, 1, 1), "b": _weights(100)})
    backend = get_backend("tvm-llvm")
    artifact = backend.compile(model, load_target("host").tvm(), {"x": (1, 64, 13, 13)}, tmp_path / "m.so")
    assert artifact.details["padded_convolutions"] == 1
    feed = {"x": np.random.default_rng(1).normal(size=(1, 64, 13, 13)).astype(np.float32)}
    np.testing.assert_allclose(backend.load(artifact.library, model).run(feed)[0], ort_run(model, feed)[0],
                               rtol=1e-4, atol=1e-5)
    # 20 filters would need 12 more (60 %): left alone
    small = _model(nodes, [("x", (1, 64, 13, 13))], "y", {"w": _weights(20, 64, 1, 1), "b": _weights(20)})
    artifact = backend.compile(small, load_target("host").tvm(), {"x": (1, 64, 13, 13)}, tmp_path / "s.so")
    assert artifact.details["padded_convolutions"] == 0


@pytest.mark.parametrize("case", ["stft-conv1d", "conv2d-prime-width"])
def test_prime_output_widths_get_extra_columns_and_a_register_tile(tmp_path, case):
    """An STFT as a strided conv1d (257 filters x 97 frames, both prime, as openwakeword's
    melspectrogram) gets filters padded to 272 and 98 output columns, so the channel-vector tile
    applies instead of the dot-product rule; a 2-D convolution with a prime width 37 and its own
    padding, 2 more columns. The outputs are sliced back and unchanged."""
    from mcc.backends.tvm.channels import extra_columns

    if case == "stft-conv1d":
        shape = (1, 1, 64 + 96 * 16)
        nodes = [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[64], strides=[16])]
        initializers = {"w": _weights(257, 1, 64)}
        assert extra_columns(97) == 1
    else:
        shape = (1, 8, 5, 37)
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                 helper.make_node("Relu", ["c"], ["y"])]
        initializers = {"w": _weights(24, 8, 3, 3), "b": _weights(24)}
        assert extra_columns(37) == 2  # 39 = 13 x 3
    model = _model(nodes, [("x", shape)], "y", initializers)
    backend = get_backend("tvm-llvm")
    artifact = backend.compile(model, load_target("host").tvm(), {"x": shape}, tmp_path / "m.so")
    assert artifact.details["padded_convolutions"] == 1
    assert "dot-product" not in artifact.details["default_schedules"].values()
    feed = {"x": np.random.default_rng(2).normal(size=shape).astype(np.float32)}
    np.testing.assert_allclose(backend.load(artifact.library, model).run(feed)[0], ort_run(model, feed)[0],
                               rtol=1e-4, atol=1e-4)


def test_extra_columns_only_for_wide_outputs_without_a_tile_divisor():
    from mcc.backends.tvm.channels import extra_columns

    assert [extra_columns(w) for w in (13, 23, 24, 55, 56, 97, 109, 113, 224)] == [0, 0, 0, 0, 0, 1, 1, 4, 0]


def _scheduled(model, name_part: str, prepacked: bool = False):
    """The scheduled PrimFunc of `model`'s kernel whose name contains `name_part`."""
    from mcc.backends.tvm import common, llvm

    shapes = {value.name: tuple(d.dim_value for d in value.type.tensor_type.shape.dim) for value in model.graph.input}
    mod, _ = llvm.lower(common.import_onnx(model, shapes), load_target("host").tvm(), use_tuning_records=False)
    return next(func for gvar, func in mod.functions_items() if name_part in gvar.name_hint
                and gvar.name_hint.endswith("_prepacked") == prepacked)


def test_classifier_weights_are_read_as_panels_and_its_epilogue_per_tile():
    """The classifier's weights [120, 2016] (rows 8 KB apart) become panels [2016 / P, 120, P] of
    the tile's P columns (a multiple of the vector), folded at compile time; cutting off the padded columns and adding the bias
    run per tile, not as two more passes over the output."""
    func = _scheduled(classifier_softmax(), "matmul", prepacked=True)
    shapes = [[int(d) for d in param.ty.shape] for param in func.params]
    panels = [shape for shape in shapes if len(shape) == 3 and shape[1] == 120]
    assert len(panels) == 1 and panels[0][0] * panels[0][2] == 2016 and panels[0][2] % 16 == 0, shapes
    # one loop nest (the parallel tiles) at the root: no separate copy or bias pass
    assert func.body.block.body.__class__.__name__ == "For", func.script()


def test_long_softmax_sums_in_vector_lanes():
    func = _scheduled(long_softmax(), "softmax")
    assert "_rf" in func.script()


def depthwise_between_pointwise(channels: int):
    """1x1 -> depthwise 3x3 (padded) -> 1x1: channels-last when `channels` fills whole vectors."""
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"]),
             helper.make_node("Conv", ["a", "w1"], ["b"], group=channels, pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["b", "w2"], ["y"])]
    inits = {"w0": _weights(channels, 16, 1, 1), "w1": _weights(channels, 1, 3, 3, seed=1),
             "w2": _weights(32, channels, 1, 1, seed=2)}
    return _model(nodes, [("x", (1, 16, 20, 20))], "y", inits)


@pytest.mark.parametrize("channels", [32, 24])
def test_channels_last_depthwise_reads_its_padding_in_place(channels, tmp_path):
    """A channels-last depthwise convolution (9 multiply-adds per output) reads its zero padding
    from the input as it goes: no padded copy (`pad_temp`) is written first. In NCHW (24 channels:
    the model stays NCHW) the condition would vary along the vector lanes, and the padding stage
    stays."""
    from mcc.backends.tvm import common, llvm

    model = depthwise_between_pointwise(channels)
    mod, details = llvm.lower(common.import_onnx(model, {"x": (1, 16, 20, 20)}), load_target("host").tvm(),
                              use_tuning_records=False)
    assert details["channels_last_convolutions"] == (3 if channels == 32 else 0)
    depthwise = [func.script() for _, func in mod.functions_items()
                 if "group_conv2d" in getattr(func, "script", lambda: "")()]
    assert depthwise and all(("pad_temp" in text) == (channels == 24) for text in depthwise)
    backend = get_backend("tvm-llvm")
    artifact = backend.compile(model, load_target("host").tvm(), {"x": (1, 16, 20, 20)}, tmp_path / "m.so")
    feed = {"x": np.random.default_rng(3).normal(size=(1, 16, 20, 20)).astype(np.float32)}
    np.testing.assert_allclose(backend.load(artifact.library, model).run(feed)[0], ort_run(model, feed)[0],
                               rtol=1e-4, atol=1e-5)


def test_channels_last_global_mean_sums_whole_vectors_of_channels():
    """The mean reads its 32 contiguous channels as two vectors per pixel, accumulated inside the
    loop over the 400 pixels, not one channel at a time with the pixels a row apart."""
    import re

    func = _scheduled(channels_last_global_mean(), "mean")
    text = func.script()
    assert re.search(r"T\.parallel\(T\.int64\(2\)\)", text), text
    # the vector loop is inside the reduction loops (its block reads the input in the update)
    assert re.search(r"for \w+, \w+ in T\.grid\(T\.int64\(20\), T\.int64\(20\)\):\s+for \w+ in T\.vectorized\(T\.int64\(16\)\)", text), text


@pytest.mark.parametrize("size, channel_blocks_inner", [(56, True), (14, False)])
def test_a_large_depthwise_input_is_read_pixel_by_pixel(size, channel_blocks_inner):
    """A channels-last depthwise convolution over 64 channels (four vectors per pixel): at 56 x 56
    (784 KB of input) the four channel blocks of a pixel row run one after another, so each pass
    reads whole cache lines; at 14 x 14 (49 KB) one channel block at a time, its rows staying in
    L1 from one output row to the next."""
    import re

    from mcc.backends.tvm import common, llvm

    model = depthwise_between_pointwise(64)
    shapes = {"x": (1, 16, size, size)}
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = size
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_value = size
    mod, _ = llvm.lower(common.import_onnx(model, shapes), load_target("host").tvm(), use_tuning_records=False)
    (text,) = [func.script() for gvar, func in mod.functions_items()
               if gvar.name_hint.endswith("_prepacked") and "group_conv2d" in func.script()]
    # the channel block of a tile: the fused parallel index modulo 4 (innermost) or divided (outermost)
    v_ff = re.search(r"v_ff = T\.axis\.spatial\(T\.int64\(64\), (\w+) (%|//) T\.int64\((\d+)\)", text)
    assert v_ff, text
    assert (v_ff.group(2) == "%" and v_ff.group(3) == "4") == channel_blocks_inner, v_ff.group(0)


@pytest.mark.parametrize("channels", [32, 24])
def test_channels_last_depthwise_taps_are_unrolled(channels):
    """A channels-last depthwise 3x3 has its taps unrolled with the register tile (each input
    vector then loads once per tap row); NCHW depthwise layers (24 channels: the model stays NCHW)
    and the 1x1 convolutions around (16 input channels, as short a reduction) keep their loops."""
    import re

    from mcc.backends.tvm import common, llvm

    model = depthwise_between_pointwise(channels)
    mod, details = llvm.lower(common.import_onnx(model, {"x": (1, 16, 20, 20)}), load_target("host").tvm(),
                              use_tuning_records=False)
    channels_last = details["channels_last_convolutions"] > 0  # 32 of 16-lane vectors: yes; 24: no
    texts = {gvar.name_hint: func.script() for gvar, func in mod.functions_items()
             if gvar.name_hint.endswith("_prepacked") or "conv2d" in gvar.name_hint}
    depthwise = [text for text in texts.values() if "group_conv2d" in text]
    pointwise = [text for text in texts.values() if "conv2d" in text and "group_conv2d" not in text]
    assert depthwise and pointwise
    unrolled_taps = r"for ry in T\.unroll\(T\.int64\(3\)\):\s+for rx in T\.unroll\(T\.int64\(3\)\)"
    assert all(bool(re.search(unrolled_taps, text)) == channels_last for text in depthwise)
    assert not any(re.search(r"for rc\w* in T\.unroll\(T\.int64\(16\)\)", text) for text in pointwise)



def scaled_boxes(shape):
    """UltraFace's box decoding in small: boxes scaled, shifted and exponentiated elementwise."""
    nodes = [helper.make_node("Mul", ["x", "s"], ["m"]), helper.make_node("Add", ["m", "o"], ["a"]),
             helper.make_node("Exp", ["a"], ["y"])]
    return _model(nodes, [("x", shape)], "y", {"s": _weights(1, 1, shape[-1]), "o": _weights(*shape, seed=1)})


@pytest.mark.parametrize("shape", [(1, 30000, 4), (1, 4, 30000)])
def test_a_short_innermost_axis_is_unrolled_and_the_loop_around_it_left_whole(shape, tmp_path):
    """An elementwise kernel over [1, 30000, 4] unrolls the 4 (LLVM then vectorizes the loop around
    it with interleaved loads and stores) and shares that loop's outer part among the cores (its
    leading axis has one iteration); one over [1, 4, 30000] keeps its innermost 30000 whole."""
    import re

    from mcc.backends.tvm import common, llvm

    model = scaled_boxes(shape)
    mod, details = llvm.lower(common.import_onnx(model, {"x": shape}), load_target("host").tvm(),
                              use_tuning_records=False)
    (text,) = [func.script() for gvar, func in mod.functions_items()
               if details["default_schedules"].get(gvar.name_hint) == "injective"]
    if shape[-1] == 4:
        assert re.search(r"for \w+ in range\(T\.int64\(\d+\)\):\s+for \w+ in T\.unroll\(T\.int64\(4\)\)", text), text
        from mcc.backends.tvm.schedules.cpu import CpuInfo, _largest_divisor_at_most

        cores = CpuInfo.from_target(load_target("host").tvm()).cores
        if cores > 1:
            assert f"T.parallel(T.int64({_largest_divisor_at_most(30000, cores)}))" in text, text
    else:
        assert "T.unroll" not in text and re.search(r"in T\.grid\(T\.int64\(30000\)\)|in range\(T\.int64\(30000\)\)", text), text
    backend = get_backend("tvm-llvm")
    artifact = backend.compile(model, load_target("host").tvm(), {"x": shape}, tmp_path / "m.so")
    feed = {"x": np.random.default_rng(4).normal(size=shape).astype(np.float32)}
    np.testing.assert_allclose(backend.load(artifact.library, model).run(feed)[0], ort_run(model, feed)[0],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape, parallel", [((1, 3000, 4), False), ((1, 4, 3000), False), ((1, 4, 30000), True)])
def test_an_elementwise_kernel_runs_on_one_core_below_the_parallel_threshold(shape, parallel):
    """Starting a parallel loop costs about what an elementwise pass over MIN_PARALLEL_ELEMENTWISE_KERNEL
    values takes: a smaller elementwise kernel has no parallel loop, a larger one does."""
    from mcc.backends.tvm import common, llvm
    from mcc.backends.tvm.schedules.cpu import MIN_PARALLEL_ELEMENTWISE_KERNEL, CpuInfo

    target = load_target("host").tvm()
    if CpuInfo.from_target(target).cores < 2:
        pytest.skip("the host target has one core: no kernel gets a parallel loop")
    assert (int(np.prod(shape)) >= MIN_PARALLEL_ELEMENTWISE_KERNEL) == parallel
    mod, details = llvm.lower(common.import_onnx(scaled_boxes(shape), {"x": shape}), target, use_tuning_records=False)
    (text,) = [func.script() for gvar, func in mod.functions_items()
               if details["default_schedules"].get(gvar.name_hint) == "injective"]
    assert ("T.parallel(" in text) == parallel, text


def box_decoding(readers: int):
    """UltraFace's box decoding in small: two heads' boxes [1, 6, 4] and [1, 10, 4] concatenated,
    then the centre and size halves sliced out (two readers of the concatenation) and recombined;
    with `readers` 1 the concatenation feeds a single elementwise op."""
    c = lambda name, values: numpy_helper.from_array(np.array(values, np.int64), name)  # noqa: E731
    nodes = [helper.make_node("Concat", ["a", "b"], ["boxes"], axis=1)]
    inits = {}
    if readers == 2:
        nodes += [helper.make_node("Slice", ["boxes", "s0", "e2", "ax"], ["centre"]),
                  helper.make_node("Slice", ["boxes", "s2", "e4", "ax"], ["size"]),
                  helper.make_node("Exp", ["size"], ["wh"]),
                  helper.make_node("Mul", ["centre", "k"], ["xy"]),
                  helper.make_node("Concat", ["xy", "wh"], ["y"], axis=2)]
        inits["k"] = _weights(1, 16, 2)
    else:
        nodes += [helper.make_node("Exp", ["boxes"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 6, 4]),
                     helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 10, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 4])],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()]
        + [c("s0", [0]), c("e2", [2]), c("s2", [2]), c("e4", [4]), c("ax", [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("readers", [2, 1])
def test_a_concatenation_several_stages_read_keeps_its_own_loop_nest(readers, tmp_path):
    """Inlined into each of its readers, a concatenation repeats its branches and index arithmetic
    (UltraFace's box decoding: 157 us, 22 us kept as a stage); read once, it is inlined."""
    from mcc.backends.tvm import common, llvm

    model = box_decoding(readers)
    shapes = {"a": (1, 6, 4), "b": (1, 10, 4)}
    mod, details = llvm.lower(common.import_onnx(model, shapes), load_target("host").tvm(), use_tuning_records=False)
    (text,) = [func.script() for gvar, func in mod.functions_items()
               if details["default_schedules"].get(gvar.name_hint) == "injective"]
    # kept as a stage, the first concatenation writes a buffer of its own; read once, it is
    # inlined into the Exp and the kernel allocates nothing
    assert ("T_concat_intermediate = T.sblock_alloc_buffer" in text) == (readers == 2), text
    backend = get_backend("tvm-llvm")
    artifact = backend.compile(model, load_target("host").tvm(), shapes, tmp_path / "m.so")
    rng = np.random.default_rng(6)
    feed = {name: rng.normal(size=shape).astype(np.float32) for name, shape in shapes.items()}
    np.testing.assert_allclose(backend.load(artifact.library, model).run(feed)[0], ort_run(model, feed)[0],
                               rtol=1e-5, atol=1e-6)


def test_a_global_mean_over_contiguous_rows_sums_in_vector_lanes(tmp_path):
    """NCHW global average pool over 40 x 40: each channel's 1600 values are one contiguous run, so
    the two reduction loops are fused and summed in vector lanes (`rfactor`), not as a chain of
    1600 dependent scalar adds (PP-OCRv5 det's 96 x 80 x 80 mean: the model 0.96x)."""
    from mcc.backends.tvm import common, llvm
    from mcc.backends.tvm.schedules.cpu import CpuInfo

    model = _model([helper.make_node("GlobalAveragePool", ["x"], ["y"])], [("x", (1, 8, 40, 40))], "y", {})
    target = load_target("host").tvm()
    mod, details = llvm.lower(common.import_onnx(model, {"x": (1, 8, 40, 40)}), target, use_tuning_records=False)
    (text,) = [func.script() for gvar, func in mod.functions_items() if "mean" in gvar.name_hint]
    lanes = CpuInfo.from_target(target).lanes(32)
    assert "_rf" in text and f"T.vectorized(T.int64({lanes}))" in text, text
    backend = get_backend("tvm-llvm")
    artifact = backend.compile(model, target, {"x": (1, 8, 40, 40)}, tmp_path / "m.so")
    feed = {"x": np.random.default_rng(7).normal(size=(1, 8, 40, 40)).astype(np.float32)}
    np.testing.assert_allclose(backend.load(artifact.library, model).run(feed)[0], ort_run(model, feed)[0],
                               rtol=1e-5, atol=1e-6)


def test_an_elementwise_pad_splits_its_vector_loop_at_the_edge(tmp_path):
    """An int8 input's quantize-and-pad in small: the padded columns get a loop of their own, so the
    loop over the real ones computes without a per-element test (SqueezeNet int8 0.90x)."""
    from mcc.backends.tvm import common, llvm

    pads = numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 0, 0, 6], np.int64), "pads")
    nodes = [helper.make_node("Mul", ["x", "k"], ["m"]), helper.make_node("Round", ["m"], ["r"]),
             helper.make_node("Pad", ["r", "pads"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 224])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 64, 230])],
                              initializer=[pads, numpy_helper.from_array(np.array(0.9, np.float32), "k")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    target = load_target("host").tvm()
    mod, details = llvm.lower(common.import_onnx(model, {"x": (1, 3, 64, 224)}), target, use_tuning_records=False)
    (text,) = [func.script() for gvar, func in mod.functions_items()
               if details["default_schedules"].get(gvar.name_hint) == "injective"]
    assert "range(T.int64(224), T.int64(230))" in text, text  # the 6 padded columns, alone
    backend = get_backend("tvm-llvm")
    artifact = backend.compile(model, target, {"x": (1, 3, 64, 224)}, tmp_path / "m.so")
    feed = {"x": np.random.default_rng(8).normal(size=(1, 3, 64, 224)).astype(np.float32)}
    np.testing.assert_allclose(backend.load(artifact.library, model).run(feed)[0], ort_run(model, feed)[0],
                               rtol=1e-6, atol=1e-6)


def mnist_like_pool():
    """MNIST's first block: an 8-channel convolution, channels-last, and a 2 x 2 max pool over its
    8 contiguous channels, then the next convolution."""
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], pads=[2, 2, 2, 2]), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p", "w1"], ["y"], pads=[2, 2, 2, 2])]
    return _model(nodes, [("x", (1, 1, 28, 28))], "y", {"w0": _weights(8, 1, 5, 5), "w1": _weights(16, 8, 5, 5, seed=1)})


def test_a_pool_over_fewer_channels_than_a_vector_uses_explicit_lanes_on_one_core(tmp_path):
    """LLVM leaves a loop over 8 channels scalar (under its vector factor of 16): the pool's
    channels become 8 explicit lanes inside the 2 x 2 window, and a pool this small (6,272 values)
    runs on one core."""
    import re

    model = mnist_like_pool()
    text = _scheduled(model, "max_pool").script()
    assert re.search(r"for \w+, \w+ in T\.grid\(T\.int64\(2\), T\.int64\(2\)\):\s+for \w+ in T\.vectorized\(T\.int64\(8\)\)", text), text
    assert "T.parallel" not in text, text
    backend = get_backend("tvm-llvm")
    artifact = backend.compile(model, load_target("host").tvm(), {"x": (1, 1, 28, 28)}, tmp_path / "m.so")
    feed = {"x": np.random.default_rng(5).normal(size=(1, 1, 28, 28)).astype(np.float32)}
    np.testing.assert_allclose(backend.load(artifact.library, model).run(feed)[0], ort_run(model, feed)[0],
                               rtol=1e-4, atol=1e-5)
