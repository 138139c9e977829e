"""Float16 models on CPUs without half-precision arithmetic are computed in float32 (backends/tvm/half.py):
the graph keeps its float16 signature, every node in between reads and writes float32, the function
is the same one, and the backend applies it exactly where the target lacks float16 arithmetic."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcc.backends import get_backend
from mcc.backends.tvm import half
from mcc.hwmodels import load_target
from tests.conftest import ort_run


def _half_model() -> onnx.ModelProto:
    """float16 input, weights, a Constant node, a ConstantOfShape, a float32 island between two
    Casts, an output that another node also reads, and an input passed straight through."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"]),
        helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array(0.5, np.float16))),
        helper.make_node("Add", ["y", "k"], ["z"]),
        helper.make_node("Shape", ["z"], ["shape"]),
        helper.make_node("ConstantOfShape", ["shape"], ["ones"],
                         value=numpy_helper.from_array(np.array([1.25], np.float16))),
        helper.make_node("Mul", ["z", "ones"], ["zo"]),
        helper.make_node("Cast", ["zo"], ["zf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["zf", "two"], ["m"]),
        helper.make_node("Cast", ["m"], ["out"], to=TensorProto.FLOAT16),
    ]
    initializers = [numpy_helper.from_array(rng.normal(scale=0.3, size=(8, 3, 3, 3)).astype(np.float16), "w"),
                    numpy_helper.from_array(rng.normal(size=8).astype(np.float16), "b"),
                    numpy_helper.from_array(np.array(2.0, np.float32), "two")]
    graph = helper.make_graph(
        nodes, "half", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 8, 16, 16]),
         helper.make_tensor_value_info("out", TensorProto.FLOAT16, [1, 8, 16, 16]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 3, 16, 16])],
        initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_a_float16_model_computes_in_float32_with_its_float16_signature():
    model = _half_model()
    converted, widened = half.float16_as_float32(model)
    assert widened == 2 + 2 + 1 + 1 + 2  # w, b; the two constants; the Cast to float16; x in, y and out out
    onnx.checker.check_model(converted)
    inferred = onnx.shape_inference.infer_shapes(converted, strict_mode=True)
    signature = [(v.name, v.type.tensor_type.elem_type) for v in list(inferred.graph.input) + list(inferred.graph.output)]
    assert signature == [(v.name, v.type.tensor_type.elem_type) for v in list(model.graph.input) + list(model.graph.output)]
    assert all(t.data_type == TensorProto.FLOAT for t in converted.graph.initializer)
    # float16 only at the edges: the input, the two casts back, nothing in between
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    assert {name for name, t in types.items() if t == TensorProto.FLOAT16} == set()
    assert {name for name, t in types.items() if t == TensorProto.FLOAT} >= {"c", "z", "zo", "zf", "m", "ones"}
    casts = [n for n in converted.graph.node if n.op_type == "Cast"]
    assert [(n.input[0], n.output[0]) for n in casts if n.attribute[0].i == TensorProto.FLOAT16] == [
        ("y" + half.FLOAT32_SUFFIX, "y"), ("out" + half.FLOAT32_SUFFIX, "out")]
    feed = {"x": np.random.default_rng(1).normal(size=(1, 3, 16, 16)).astype(np.float16)}
    want, got = ort_run(model, feed), ort_run(converted, feed)
    for w, g in zip(want, got, strict=True):
        assert g.dtype == np.float16
        np.testing.assert_allclose(g.astype(np.float32), w.astype(np.float32), rtol=1e-2, atol=1e-2)
    np.testing.assert_array_equal(got[2], feed["x"])


def test_a_float32_model_is_left_alone():
    plain = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])]))
    assert half.float16_as_float32(plain) == (plain, 0)


@pytest.mark.parametrize("triple, cpu, native", [
    ("x86_64-linux-gnu", "sapphirerapids", True),  # AVX512-FP16
    ("x86_64-linux-gnu", "znver4", False),
    ("x86_64-linux-gnu", "skylake-avx512", False),
    ("aarch64-linux-gnu", "cortex-a76", True),  # ARMv8.2 FP16
    ("aarch64-linux-gnu", "cortex-a53", False),
])
def test_which_targets_have_half_arithmetic(triple, cpu, native):
    import tvm

    target = tvm.target.Target({"kind": "llvm", "mtriple": triple, "mcpu": cpu})
    assert half.has_half_arithmetic(target) is native


def test_gpu_targets_keep_float16():
    import tvm

    assert half.has_half_arithmetic(tvm.target.Target({"kind": "cuda"}))


def test_the_host_backend_computes_float16_as_its_cpu_can(tmp_path):
    """On a CPU without float16 arithmetic (AMD Zen, Intel before Sapphire Rapids) no kernel
    computes in float16 and the report says so; with it, the model compiles as written."""
    from mcc.backends.tvm import tuning

    import platform
    from pathlib import Path

    model = _half_model()
    target = load_target("host").tvm()
    native = half.has_half_arithmetic(target)
    if platform.machine() == "x86_64":  # the CPU's own word, independent of LLVM's feature table
        assert native == ("avx512_fp16" in Path("/proc/cpuinfo").read_text().split())
    backend = get_backend("tvm-llvm")
    artifact = backend.compile(model, target, {"x": (1, 3, 16, 16)}, tmp_path / "m.so")
    assert artifact.details["float16_computed_as_float32"] == (0 if native else 8)
    feed = {"x": np.random.default_rng(2).normal(size=(1, 3, 16, 16)).astype(np.float16)}
    got = backend.load(artifact.library, model).run(feed)
    for w, g in zip(ort_run(model, feed), got, strict=True):
        assert np.asarray(g).dtype == np.float16
        np.testing.assert_allclose(np.asarray(g, np.float32), w.astype(np.float32), rtol=1e-2, atol=1e-2)
    # the kernels tuning and compilation see: the convolution's reduction runs in float16 only natively
    mod = tuning.lowered_for_tuning(model, target, {"x": (1, 3, 16, 16)})
    convolutions = [func.script() for gv, func in mod.functions_items() if "conv2d" in gv.name_hint]
    assert len(convolutions) == 1
    assert ("float16" in convolutions[0]) is native


def test_an_initializer_listed_as_an_input_is_widened_with_its_input_entry():
    """IR < 4 lists initializers among the graph inputs: the entry's type follows the widened
    tensor, or onnxruntime refuses the model."""
    model = _half_model()
    w = next(t for t in model.graph.initializer if t.name == "w")
    model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT16, list(w.dims)))
    converted, _ = half.float16_as_float32(model)
    onnx.checker.check_model(converted)
    assert {v.name: v.type.tensor_type.elem_type for v in converted.graph.input}["w"] == TensorProto.FLOAT
    feed = {"x": np.random.default_rng(3).normal(size=(1, 3, 16, 16)).astype(np.float16)}
    for w_, g in zip(ort_run(model, feed), ort_run(converted, feed), strict=True):
        np.testing.assert_allclose(g.astype(np.float32), w_.astype(np.float32), rtol=1e-2, atol=1e-2)
