"""stack.py: a CPU kernel's register tile is an alloca, not runtime workspace; results unchanged."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcc.hwmodels import load_target
from tests.conftest import ort_run


def convolution(channels=(16, 64), size=11) -> onnx.ModelProto:
    """A 3x3 convolution and ReLU whose register tile (11 columns x 2 vectors of 16 channels, 1408
    bytes) is over TVM's 1 KiB stack limit, and whose padded input (13 x 13 x 16) is small."""
    rng = np.random.default_rng(0)
    cin, cout = channels
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, size, size])],
        initializer=[numpy_helper.from_array((rng.standard_normal((cout, cin, 3, 3)) * 0.1).astype(np.float32), "w"),
                     numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _workspace_calls(executable) -> dict[str, int]:
    """Calls of TVMBackendAllocWorkspace per LLVM function (the function pointer loaded to call it)."""
    calls: dict[str, int] = {}
    function = None
    for line in _llvm_ir(executable).splitlines():
        if line.startswith("define"):
            function = line.split("@", 1)[1].split("(", 1)[0]
        if "load ptr, ptr @__TVMBackendAllocWorkspace" in line:
            calls[function] = calls.get(function, 0) + 1
    return calls


def _llvm_ir(executable) -> str:
    def modules(module):
        yield module
        for imported in module.imports:
            yield from modules(imported)

    for module in modules(executable.mod):
        try:
            source = module.inspect_source("ll")
        except Exception:
            continue
        if "conv2d" in source:
            return source
    raise AssertionError("no LLVM module with the convolution")


def test_register_tile_needs_no_runtime_workspace_and_results_are_unchanged():
    import tvm
    from tvm import relax

    from mcc.backends.tvm import common, llvm, stack

    model = convolution()
    target = load_target("host").tvm()
    mod, details = llvm.lower(common.import_onnx(model, {"x": [1, 16, 11, 11]}), target, use_tuning_records=False)
    assert "tile-reduction" in details["default_schedules"].values()
    plain = tvm.compile(mod, target=target)
    ours = stack.compile_module(mod, target)
    # the kernel the VM runs (weights pre-packed at compile time): TVM's own pipeline calls the
    # runtime for its padded input and, in the parallel body, for the tile on every tile
    def in_kernel(calls):
        return sum(n for function, n in calls.items() if "prepacked" in function or "parallel_lambda" in function)

    assert in_kernel(_workspace_calls(plain)) >= 2
    assert in_kernel(_workspace_calls(ours)) == 0
    # the unused variant packing its 36 KiB of weights per call keeps the runtime's workspace
    assert _workspace_calls(ours) == {"fused_conv2d_add_relu1_compute_": 1}

    feed = {"x": np.random.default_rng(1).standard_normal((1, 16, 11, 11)).astype(np.float32)}
    device = tvm.cpu(0)
    outputs = [relax.VirtualMachine(executable, device)["main"](tvm.runtime.tensor(feed["x"], device)).numpy()
               for executable in (plain, ours)]
    np.testing.assert_array_equal(outputs[1], outputs[0])
    np.testing.assert_allclose(outputs[1], ort_run(model, feed)[0], rtol=1e-5, atol=1e-5)


def test_only_small_fixed_size_buffers_qualify():
    import tvm

    from mcc.backends.tvm import stack

    assert stack.buffer_bytes(tvm.tirx.decl_buffer((11, 32), "float32", scope="local")) == 1408
    assert stack.buffer_bytes(tvm.tirx.decl_buffer((4,), "float32x4")) == 64
    assert stack.buffer_bytes(tvm.tirx.decl_buffer((tvm.tirx.Var("n", "int64"), 16), "float32")) is None
    assert 1408 <= stack.MAX_STACK_BYTES < 8 * 1024 * 1024


@pytest.mark.parametrize("target, expected", [
    ({"kind": "llvm"}, "mcc-cpu"),
    ({"kind": "cuda", "arch": "sm_80"}, "default"),
])
def test_cpu_targets_get_the_pipeline_others_tvms_default(target, expected):
    import tvm

    from mcc.backends.tvm import stack

    assert stack.pipeline_name(tvm.target.Target(target)) == expected


def test_rounding_in_an_explicit_vector_loop_stays_vector_and_rounds_half_to_even():
    """`nearbyint_as_round`: quantization's rounding in a `T.vectorized` loop is compiled to vector
    instructions (TVM's own pipeline scalarizes the loop) and still rounds ties to even."""
    import tvm
    from tvm.script import tirx as T

    from mcc.backends.tvm import stack

    @T.prim_func(s_tir=True)
    def quantize(x: T.Buffer((16,), "float32"), y: T.Buffer((16,), "uint8")):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        for i in T.vectorized(16):
            y[i] = T.Cast("uint8", T.min(T.max(T.nearbyint(x[i] * T.float32(0.5)), T.float32(0.0)), T.float32(255.0)))

    # why the pass exists: TVM 0.27's VectorizeLoop turns the loop back into a scalar one (LLVM
    # re-vectorizes a loop this simple by itself, but not a parallel body's tile epilogue)
    vectorize = tvm.tirx.transform.VectorizeLoop(True)
    assert "i_s in range(16)" in vectorize(tvm.IRModule({"main": quantize})).script()
    assert "T.Ramp(0, 1, 16)" in vectorize(tvm.IRModule({"main": stack.nearbyint_as_round(quantize)})).script()

    target = load_target("host").tvm()
    ours = tvm.compile(tvm.IRModule({"main": quantize}), target=target, tir_pipeline=stack.pipeline_name(target))
    ours = ours.mod if hasattr(ours, "mod") else ours
    assert "<16 x float> @llvm.nearbyint" in ours.inspect_source("ll")

    values = np.array([1.0, 3.0, 5.0, -1.0, 0.9999999, 2.0000002, 7.0, 9.0, 100.0, 101.0, 509.0, 511.0,
                       -3.0, 0.0, 2.5, 4.999999], np.float32)  # halves: ties at 0.5, 1.5, 2.5, ...
    out = tvm.runtime.tensor(np.zeros(16, np.uint8))
    ours(tvm.runtime.tensor(values), out)
    expected = np.clip(np.rint(values * np.float32(0.5)), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out.numpy(), expected)
    assert list(expected[:3]) == [0, 2, 2]  # the ties went to even: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2


def test_only_nearbyint_calls_change():
    import tvm
    from tvm.script import tirx as T

    from mcc.backends.tvm import stack

    @T.prim_func(s_tir=True)
    def kernel(x: T.Buffer((4,), "float32"), y: T.Buffer((4,), "float32")):
        for i in range(4):
            y[i] = T.nearbyint(x[i]) + T.floor(x[i]) + T.exp(x[i])

    text = stack.nearbyint_as_round(kernel).script()
    assert "T.round(" in text and "nearbyint" not in text
    assert "T.floor(" in text and "T.exp(" in text
