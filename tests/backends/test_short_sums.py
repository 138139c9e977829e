"""short_sums.py: sums over at most 4 elements become additions of slices, and fuse with their neighbours."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcc.backends import get_backend
from mcc.hwmodels import load_target
from tests.conftest import ort_run


def _model(nodes, x_shape, y_shape, initializers=()):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def stft_magnitude():
    """silero VAD's magnitude after recognize-magnitude: drop the first frame, split the 10 channels
    into real and imaginary halves, ReduceL2 over the halves (an axis of 2)."""
    consts = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
              (("starts", [1]), ("ends", [7]), ("axes", [2]), ("shape", [1, 2, 5, 6]), ("l2_axes", [1]))]
    nodes = [helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["s"]),
             helper.make_node("Reshape", ["s", "shape"], ["r"]),
             helper.make_node("ReduceL2", ["r", "l2_axes"], ["y"], keepdims=0)]
    return _model(nodes, [1, 10, 7], [1, 5, 6], consts)


def reduce_sum(shape, axes, keepdims):
    out = [1 if i in axes else d for i, d in enumerate(shape)] if keepdims else \
        [d for i, d in enumerate(shape) if i not in axes]
    nodes = [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=keepdims)]
    return _model(nodes, list(shape), out, [numpy_helper.from_array(np.array(axes, np.int64), "axes")])


CASES = {
    "magnitude": (stft_magnitude, (1, 10, 7), True),
    "three_keepdims": (lambda: reduce_sum((2, 3, 5), [1], 1), (2, 3, 5), True),
    "all_axes_of_two_by_two": (lambda: reduce_sum((2, 2), [0, 1], 0), (2, 2), True),
    "two_axes_of_two": (lambda: reduce_sum((2, 2, 6), [0, 1], 0), (2, 2, 6), True),
    "eight_stays_a_reduction": (lambda: reduce_sum((4, 8), [1], 0), (4, 8), False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_short_sums_become_elementwise_and_compute_the_same(case, tmp_path, monkeypatch):
    from mcc.backends.tvm import common, llvm, short_sums

    build, shape, unrolled = CASES[case]
    model = build()
    target = load_target("host").tvm()
    mod, details = llvm.lower(common.import_onnx(model, {"x": shape}), target, use_tuning_records=False)
    names = [gvar.name_hint for gvar, func in mod.functions_items() if hasattr(func, "body") and "main" != gvar.name_hint]
    assert details["sums_as_additions"] == (1 if unrolled else 0)
    assert any("sum" in name for name in names) != unrolled, names
    if case == "magnitude":  # slice, reshape, squares, sum and square root: one kernel
        assert len([n for n in names if n.startswith("fused_") or "sqrt" in n]) == 1, names

    backend = get_backend("tvm-llvm")
    feed = {"x": np.random.default_rng(5).normal(size=shape).astype(np.float32)}
    got = backend.load(backend.compile(model, target, {"x": shape}, tmp_path / "a.so").library, model).run(feed)[0]
    np.testing.assert_allclose(got, ort_run(model, feed)[0], rtol=1e-6, atol=1e-6)
    # bit-identical to TVM's own reduction
    monkeypatch.setattr(short_sums, "MAX_ELEMENTS", 0)
    reduced = backend.load(backend.compile(model, target, {"x": shape}, tmp_path / "b.so").library, model).run(feed)[0]
    np.testing.assert_array_equal(got, reduced)
