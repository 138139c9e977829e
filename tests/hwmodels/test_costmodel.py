"""The cost model's arithmetic, checked against values computed by hand on a synthetic target."""

import copy
import tomllib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcc.hwmodels import TARGETS_DIR, target_from_data
from mcc.hwmodels.costmodel import estimate
from mcc.hwmodels.memory import Buffer, plan_arena
from tests.conftest import parse_model


def synthetic_target(**changes):
    """Round numbers: 100 GOP/s fp32, 400 int8, 10 GB/s, conv at 50 %, everything else 100 %."""
    data = tomllib.loads((TARGETS_DIR / "host.toml").read_text())
    data = copy.deepcopy(data)
    data["detect_host"] = False
    data["compute"]["peak_gops"] = {"fp32": 100.0, "int8": 400.0}
    data["support"]["precisions"] = ["fp32", "int8"]
    data["energy"]["pj_per_op"] = {"fp32": 1.0, "int8": 0.25}
    data["energy"]["dram_pj_per_byte"] = 100.0
    data["memory"]["dram_bandwidth_gb_s"] = 10.0
    data["overhead"]["kernel_us"] = 0.1
    data["power"]["idle_w"] = 2.0
    data["price"] = {"usd_per_hour": 3.6}
    data["sources"]["price"] = "synthetic"
    for name in data["efficiency"]:
        data["efficiency"][name] = 1.0
    data["efficiency"]["conv"] = 0.5
    for key, value in changes.items():
        table, field = key.split("__")
        data[table][field] = value
    return target_from_data(data)


def conv_relu_model() -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "W")
    bias = numpy_helper.from_array(np.zeros(4, np.float32), "B")
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
                              initializer=[weight, bias])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_conv_relu_roofline_energy_price_memory_by_hand():
    # the elementwise efficiency applies to standalone elementwise kernels, not to a conv's epilogue
    result = estimate(conv_relu_model(), synthetic_target(efficiency__elementwise=0.25))
    (kernel,) = result.kernels  # the Relu fuses into the Conv's kernel
    assert kernel.ops == ["Conv", "Relu"]
    assert kernel.macs == 256 * 27  # 1x4x8x8 outputs, each 3 channels x 3x3
    assert kernel.arithmetic_ops == 2 * 6912 + 256
    # bytes: input 768 + weights 432 + bias 16 + output 1024; the Conv->Relu tensor never reaches memory
    assert kernel.bytes == 768 + 432 + 16 + 1024
    compute_s = 13824 / (100e9 * 0.5) + 256 / 100e9  # the fused Relu at the peak rate
    memory_s = 2240 / 10e9
    assert kernel.compute_ms == pytest.approx(compute_s * 1e3)
    assert kernel.memory_ms == pytest.approx(memory_s * 1e3)
    assert kernel.bound == "compute"
    latency_s = compute_s + 0.1e-6
    assert result.latency_ms == pytest.approx(latency_s * 1e3)
    energy_j = 14080 * 1e-12 + 2240 * 100e-12 + 2.0 * latency_s
    assert result.energy_mj == pytest.approx(energy_j * 1e3)
    assert result.usd_per_million == pytest.approx(3.6 / 3600 * latency_s * 1e6)
    assert result.weights_mb == pytest.approx(448 / 2**20)
    assert result.arena_mb == pytest.approx((768 + 1024) / 2**20)  # input and output alive together
    assert result.peak_memory_mb == pytest.approx((448 + 1792) / 2**20)


def test_standalone_elementwise_kernel_uses_its_class_efficiency():
    model = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 4, 8, 8] x) => (float[1, 4, 8, 8] y) { y = Relu(x) }
    """)
    (kernel,) = estimate(model, synthetic_target(efficiency__elementwise=0.25)).kernels
    assert kernel.compute_ms == pytest.approx(256 / (100e9 * 0.25) * 1e3)


def test_int8_what_if_quarters_bytes_and_uses_the_int8_rate():
    fp32 = estimate(conv_relu_model(), synthetic_target())
    int8 = estimate(conv_relu_model(), synthetic_target(), precision="int8")
    assert int8.kernels[0].bytes == fp32.kernels[0].bytes / 4
    assert int8.size_mb == pytest.approx(fp32.size_mb / 4)
    assert int8.kernels[0].compute_ms == pytest.approx(fp32.kernels[0].compute_ms / 4)
    per_layer = estimate(conv_relu_model(), synthetic_target(), layer_precisions={"conv": "int8"})
    assert per_layer.precision == "mixed" and per_layer.kernels[0].precision == "int8"


def test_a_qdq_model_is_estimated_at_int8_where_it_is_quantized():
    """quantize-int8's QDQ form: the convolution reads dequantized floats but computes in int8
    (the backends lower it to integer kernels), so the native estimate uses the int8 rate."""
    from tests.backends.test_integer import qdq_conv

    quantized = qdq_conv(8, 32, 3, pad=1)
    result = estimate(quantized, synthetic_target())
    (conv,) = [k for k in result.kernels if k.op_class == "conv"]
    assert conv.precision == "int8"
    # an explicit per-layer precision still wins over what the QDQ form implies
    conv_node = next(n.name or f"Conv_{i}" for i, n in enumerate(quantized.graph.node) if n.op_type == "Conv")
    as_float = estimate(quantized, synthetic_target(), layer_precisions={conv_node: "fp32"})
    (float_conv,) = [k for k in as_float.kernels if k.op_class == "conv"]
    assert float_conv.precision == "fp32" and float_conv.compute_ms == pytest.approx(4 * conv.compute_ms)


def test_precision_without_a_rate_falls_back_to_fp32_with_a_note():
    result = estimate(conv_relu_model(), synthetic_target(), precision="fp16")
    assert result.kernels[0].compute_ms == pytest.approx(
        estimate(conv_relu_model(), synthetic_target()).kernels[0].compute_ms)
    assert any("no fp16 rate" in note for note in result.notes)


def test_memory_bound_kernel_and_op_classes():
    model = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 16, 32, 32] x) => (float[1, 16, 16, 16] y, float[1, 16, 32, 32] z, float[1, 16, 32, 32] s) {
        y = MaxPool<kernel_shape = [2, 2], strides = [2, 2]>(x)
        z = Exp(x)
        s = Softmax<axis = 1>(x)
    }
    """)
    result = estimate(model, synthetic_target(efficiency__bandwidth=1.0))
    by_op = {k.ops[0]: k for k in result.kernels}
    elements = 16 * 32 * 32
    assert by_op["MaxPool"].arithmetic_ops == 16 * 16 * 16 * 4  # output elements x window
    assert by_op["Exp"].arithmetic_ops == 8 * elements  # transcendental weight 8
    assert by_op["Softmax"].arithmetic_ops == 4 * elements
    assert by_op["MaxPool"].bound == "memory"  # 1 op per 5 bytes: far below the ridge point
    assert by_op["MaxPool"].bytes == elements * 4 + 16 * 16 * 16 * 4


def test_depthwise_conv_is_its_own_class():
    model = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 8, 16, 16] x) => (float[1, 8, 16, 16] y) <float[8, 1, 3, 3] w = {
        1,1,1,1,1,1,1,1,1, 1,1,1,1,1,1,1,1,1, 1,1,1,1,1,1,1,1,1, 1,1,1,1,1,1,1,1,1,
        1,1,1,1,1,1,1,1,1, 1,1,1,1,1,1,1,1,1, 1,1,1,1,1,1,1,1,1, 1,1,1,1,1,1,1,1,1}> {
        y = Conv<group = 8, pads = [1, 1, 1, 1]>(x, w)
    }
    """)
    (kernel,) = estimate(model, synthetic_target(efficiency__depthwise_conv=0.25)).kernels
    assert kernel.op_class == "depthwise_conv" and kernel.macs == 8 * 16 * 16 * 9
    assert kernel.compute_ms == pytest.approx(2 * 8 * 16 * 16 * 9 / (100e9 * 0.25) * 1e3)


def test_views_are_free_and_do_not_fuse_across():
    model = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 4, 4] x) => (float[1, 16] y) <int64[2] shape = {1, 16}> {
        t = Transpose<perm = [0, 2, 1]>(x)
        r = Reshape(t, shape)
        y = Relu(r)
    }
    """)
    result = estimate(model, synthetic_target())
    assert [k.ops for k in result.kernels] == [["Transpose"], ["Relu"]]


def test_arena_plan_reuses_memory_of_dead_tensors():
    buffers = [Buffer("x", 1000, 0, 0), Buffer("a", 1000, 0, 1), Buffer("b", 1000, 1, 2), Buffer("y", 1000, 2, 3)]
    plan = plan_arena(buffers)
    assert plan.arena_bytes == 2000 and plan.peak_live_bytes == 2000
    assert plan_arena([Buffer("big", 3000, 0, 1), Buffer("small", 1000, 2, 3)]).arena_bytes == 3000


def test_microcontroller_verdict_when_activations_exceed_sram():
    data = tomllib.loads((TARGETS_DIR / "stm32l4.toml").read_text())
    spec = target_from_data(data)
    big = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 64, 128, 128] x) => (float[1, 64, 128, 128] y) { y = Relu(x) }
    """)
    result = estimate(big, spec)
    assert not result.fits and "SRAM" in result.verdict
    small = estimate(conv_relu_model(), spec)
    assert small.fits


def test_estimate_cli_and_compile_report(run_mcc, tmp_path):
    import json

    from tests.conftest import EXAMPLE

    result = run_mcc("estimate", EXAMPLE, "-t", "host", "-t", "stm32h7", "-t", "nvidia-t4")
    assert result.returncode == 0, result.stderr
    assert "hotspots:" in result.stdout and "verdict:" in result.stdout and "stm32h7" in result.stdout
    data = json.loads(run_mcc("estimate", EXAMPLE, "--precision", "int8", "--json").stdout)
    (only,) = data["estimates"]
    assert only["precision"] == "int8" and only["latency_ms"] > 0 and only["kernels"]
    compiled = run_mcc("compile", EXAMPLE, "-o", tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["estimate"]["target"] == "host" and report["estimate"]["latency_ms"] > 0
    assert compiled.returncode == 0


def test_native_precision_follows_the_model_dtypes():
    from tests.conftest import to_fp16

    model = to_fp16(conv_relu_model())
    native = estimate(model, synthetic_target())
    as_fp32 = estimate(model, synthetic_target(), precision="fp32")
    assert native.kernels[0].precision == "fp16"
    assert native.kernels[0].bytes == as_fp32.kernels[0].bytes / 2
    assert native.weights_mb == pytest.approx(as_fp32.weights_mb / 2)


def test_quantized_and_recurrent_ops_are_counted():
    from mcc.toolchain import ir
    from mcc.toolchain.stats import node_macs

    model = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (uint8[64, 128] a, int8[128, 256] b, float[5, 2, 3] x, float[1, 16, 3] w, float[1, 16, 4] r)
      => (int32[64, 256] y, float[5, 1, 2, 4] h) {
        y = MatMulInteger(a, b)
        h = LSTM<hidden_size = 4>(x, w, r)
    }
    """)
    types = ir.tensor_types(ir.infer_shapes(model))
    matmul, lstm = model.graph.node
    assert node_macs(matmul, types) == 64 * 128 * 256
    assert node_macs(lstm, types) == 5 * 2 * 1 * 16 * (3 + 4)  # seq x batch x dirs x 4*hidden x (input+hidden)
    kernels = estimate(model, synthetic_target()).kernels
    assert all(k.arithmetic_ops > 0 for k in kernels)


def test_elementwise_never_joins_a_kernel_before_one_of_its_inputs():
    model = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 1024] x, float[1, 1024] z) => (float[1, 1024] y) {
        a = Relu(x)
        t = Transpose<perm = [1, 0]>(z)
        u = Transpose<perm = [1, 0]>(t)
        y = Add(a, u)
    }
    """)
    kernels = estimate(model, synthetic_target()).kernels
    assert [k.ops for k in kernels] == [["Relu"], ["Transpose"], ["Transpose"], ["Add"]]


def test_silu_diamond_and_square_fuse_into_the_conv():
    model = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 4, 8, 8] x) => (float[1, 4, 8, 8] y) <float[4, 4, 1, 1] w = {
        1,0,0,0, 0,1,0,0, 0,0,1,0, 0,0,0,1}> {
        c = Conv(x, w)
        s = Sigmoid(c)
        m = Mul(c, s)
        y = Mul(m, m)
    }
    """)
    (kernel,) = estimate(model, synthetic_target()).kernels
    assert kernel.ops == ["Conv", "Sigmoid", "Mul", "Mul"]
    assert kernel.bytes == 4 * 64 * 4 + 16 * 4 + 4 * 64 * 4  # input + weight + output only


def test_outputs_through_views_are_written_and_pass_through_inputs_stay_alive():
    viewed = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1000] x) => (float[10, 100] y) <int64[2] shape = {10, 100}> {
        r = Exp(x)
        y = Reshape(r, shape)
    }
    """)
    (kernel,) = estimate(viewed, synthetic_target()).kernels
    assert kernel.bytes == 4000 + 4000
    passthrough = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1000] x) => (float[1000] x_out, float[1000] y) {
        x_out = Identity(x)
        a = Transpose(x)
        y = Exp(a)
    }
    """)
    result = estimate(passthrough, synthetic_target())
    assert result.arena_mb * 2**20 >= 3 * 4000  # x lives to the end, beside a and y


def test_gather_reads_only_the_rows_it_returns():
    model = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (int64[16] ids, float[30000, 256] table) => (float[16, 256] y) {
        y = Gather<axis = 0>(table, ids)
    }
    """)
    (kernel,) = estimate(model, synthetic_target()).kernels
    assert kernel.bytes == 16 * 256 * 4 + 16 * 8 + 16 * 256 * 4


def test_random_arena_plans_never_overlap_live_buffers():
    rng = np.random.default_rng(0)
    for _ in range(300):
        buffers = []
        for i in range(int(rng.integers(1, 12))):
            first = int(rng.integers(0, 10))
            buffers.append(Buffer(f"b{i}", float(rng.integers(1, 100)), first, first + int(rng.integers(0, 5))))
        plan = plan_arena(buffers)
        assert plan.arena_bytes >= plan.peak_live_bytes
        assert plan.arena_bytes <= sum(b.size_bytes for b in buffers)


def test_estimate_cli_bad_inputs(run_mcc, tmp_path):
    from tests.conftest import EXAMPLE

    board = tmp_path / "board.toml"
    board.write_text((TARGETS_DIR / "host.toml").read_text().replace("dram_bandwidth_gb_s = 20.0", "dram_bandwidth_gb_s = nan"))
    result = run_mcc("estimate", EXAMPLE, "-t", board)
    assert result.returncode == 2 and "finite" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = run_mcc("estimate", tmp_path / "missing.onnx")
    assert result.returncode == 3 and len(result.stderr.strip().splitlines()) == 1


def test_pointwise_convs_have_their_own_class_defaulting_to_conv():
    model = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 4, 8, 8] x) => (float[1, 4, 8, 8] y) <float[4, 4, 1, 1] w = {
        1,0,0,0, 0,1,0,0, 0,0,1,0, 0,0,0,1}> {
        y = Conv(x, w)
    }
    """)
    target = synthetic_target()
    assert target.efficiency["pointwise_conv"] == target.efficiency["conv"] == 0.5  # not given: conv's
    (kernel,) = estimate(model, synthetic_target(efficiency__pointwise_conv=0.25)).kernels
    assert kernel.op_class == "pointwise_conv"
    assert kernel.compute_ms == pytest.approx(2 * 4 * 4 * 64 / (100e9 * 0.25) * 1e3)


def test_calibrated_curves_place_convs_by_reduction_length_and_matmuls_by_weight_side():
    import dataclasses
    import math

    from mcc.hwmodels.costmodel import curve_size
    from mcc.hwmodels.workload import model_work
    from mcc.toolchain import ir

    weights = [numpy_helper.from_array(np.ones((4, 4, 3, 3), np.float32), "w"),
               numpy_helper.from_array(np.ones((12, 7), np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1], group=2),
             helper.make_node("MatMul", ["a", "b"], ["z"], name="matmul")]
    value = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "g", [value("x", TensorProto.FLOAT, [1, 8, 6, 6]),
                                           value("a", TensorProto.FLOAT, [2, 5, 12])],
                              [value("y", TensorProto.FLOAT, [1, 4, 6, 6]), value("z", TensorProto.FLOAT, [2, 5, 7])],
                              initializer=weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    works, _ = model_work(ir.infer_shapes(model))
    assert {work.op_type: curve_size(work) for work in works} == {"Conv": 4 * 3 * 3, "MatMul": min(12, 7)}
    curves = {"conv": ((10.0, 0.5), (40.0, 0.125)), "matmul": ((7.0, 0.05), (100.0, 0.01))}
    target = dataclasses.replace(synthetic_target(), efficiency_curves=curves)
    by_op = {kernel.ops[0]: kernel for kernel in estimate(model, target).kernels}
    t = math.log(36 / 10) / math.log(40 / 10)  # 36 lies between the points 10 and 40: log-log interpolation
    conv_efficiency = math.exp(math.log(0.5) + t * (math.log(0.125) - math.log(0.5)))
    assert by_op["Conv"].compute_ms == pytest.approx(2 * 4 * 36 * 36 / (100e9 * conv_efficiency) * 1e3)
    assert by_op["MatMul"].compute_ms == pytest.approx(2 * 2 * 5 * 7 * 12 / (100e9 * 0.05) * 1e3)


@pytest.mark.parametrize("order", ["skip, c", "c, skip"])
def test_residual_add_fuses_into_the_conv_whichever_operand_it_is(order):
    model = parse_model(f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 4, 8, 8] x) => (float[1, 4, 8, 8] y) <float[4, 4, 1, 1] w = {{
        1,0,0,0, 0,1,0,0, 0,0,1,0, 0,0,0,1}}> {{
        skip = Relu(x)
        c = Conv(skip, w)
        y = Add({order})
    }}
    """)
    assert [k.ops for k in estimate(model, synthetic_target()).kernels] == [["Relu"], ["Conv", "Add"]]


def test_a_model_that_fits_in_cache_reads_at_the_calibrated_cache_rate():
    """Run after run, a small model's weights and activations stay in cache: a calibrated cache
    bandwidth applies to it, and only when all of it (here 3 x 64 KiB) fits in `cache_kib`."""
    import dataclasses

    model = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 16, 32, 32] x) => (float[1, 16, 16, 16] y, float[1, 16, 32, 32] z) {
        y = MaxPool<kernel_shape = [2, 2], strides = [2, 2]>(x)
        z = Exp(x)
    }
    """)
    dram = synthetic_target(efficiency__bandwidth=1.0)  # 10 GB/s
    pool_bytes = (16 * 32 * 32 + 16 * 16 * 16) * 4
    assert estimate(model, dram).kernels[0].memory_ms == pytest.approx(pool_bytes / 10e9 * 1e3)
    cached = dataclasses.replace(dram, cache_bandwidth_gb_s=100.0, cache_kib=1024.0)
    result = estimate(model, cached)
    assert result.kernels[0].memory_ms == pytest.approx(pool_bytes / 100e9 * 1e3)
    assert any("fit in the 1024 KiB cache" in note for note in result.notes)
    # x, y and z are 64 + 16 + 64 KiB: one KiB short of that, DRAM again
    too_small = dataclasses.replace(cached, cache_kib=143.0)
    assert estimate(model, too_small).kernels[0].memory_ms == pytest.approx(pool_bytes / 10e9 * 1e3)
    assert estimate(model, dataclasses.replace(cached, cache_kib=144.0)).kernels[0].memory_ms < \
        estimate(model, too_small).kernels[0].memory_ms


def test_fp16_a_target_computes_as_fp32_is_estimated_as_fp32_with_a_note():
    """A CPU without float16 arithmetic: the backend widens float16 models to float32 (half.py), so the
    estimate charges float32 rates, bytes and weights, whether the model or the flag asks for fp16."""
    from tests.conftest import to_fp16

    target = synthetic_target(support__computed_as={"fp16": "fp32"})
    as_fp32 = estimate(conv_relu_model(), target)
    native = estimate(to_fp16(conv_relu_model()), target)
    assert native.kernels[0].precision == "fp32"
    assert native.latency_ms == pytest.approx(as_fp32.latency_ms)
    assert native.weights_mb == pytest.approx(as_fp32.weights_mb)
    assert native.arena_mb == pytest.approx(as_fp32.arena_mb)
    assert any("computes fp16 as fp32" in note for note in native.notes)
    assert estimate(conv_relu_model(), target, precision="fp16").latency_ms == pytest.approx(as_fp32.latency_ms)


def test_float64_tensors_keep_their_size_in_a_native_estimate():
    """Buffers of a native estimate are each tensor's own size: float64 stays 8 bytes a value."""
    model = conv_relu_model()
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.elem_type = TensorProto.DOUBLE
    for tensor in model.graph.initializer:
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name))
    as64 = estimate(model, synthetic_target(support__computed_as={"fp16": "fp32"}))
    as32 = estimate(conv_relu_model(), synthetic_target())
    assert as64.arena_mb == pytest.approx(2 * as32.arena_mb)
