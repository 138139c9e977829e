import math

import numpy as np
import pytest

from mcc.toolchain.validate import compare, random_inputs
from tests.conftest import parse_model


def test_identical_outputs_pass_with_infinite_sqnr():
    x = np.linspace(-1, 1, 100, dtype=np.float32)
    report = compare("y", x.copy(), x)
    assert report.passed and report.max_abs == 0 and report.sqnr_db is None and report.cosine == pytest.approx(1.0)


def test_metrics_match_hand_computed_values():
    ref = np.array([1.0, -2.0, 3.0, 4.0], dtype=np.float32)
    cand = ref + np.array([0.0, 0.01, 0.0, -0.02], dtype=np.float32)
    report = compare("y", cand, ref)
    assert report.max_abs == pytest.approx(0.02, rel=1e-5)
    assert report.max_rel == pytest.approx(0.02 / (4.0 + 1e-4), rel=1e-4)
    signal, noise = 1 + 4 + 9 + 16, 0.01**2 + 0.02**2
    assert report.sqnr_db == pytest.approx(10 * math.log10(signal / noise), rel=1e-4)
    r64, c64 = ref.astype(np.float64), cand.astype(np.float64)
    expected_cos = float(np.dot(r64, c64) / (np.linalg.norm(r64) * np.linalg.norm(c64)))
    assert report.cosine == pytest.approx(expected_cos, rel=1e-9)
    assert not report.passed  # 0.02 > 1e-4 + 1e-3 * 4


def test_fp16_outputs_get_fp16_tolerances():
    ref = np.linspace(-4, 4, 64).astype(np.float16)
    cand = (ref.astype(np.float32) * 1.001).astype(np.float16)
    assert compare("y", cand, ref).passed
    assert compare("y", cand, ref).tolerance == "fp16"


def test_integer_outputs_must_match_exactly():
    ref = np.array([1, 2, 3], dtype=np.int64)
    assert compare("i", ref.copy(), ref).passed
    assert not compare("i", ref + np.array([0, 1, 0]), ref).passed


def test_shape_mismatch_and_nan_positions_fail():
    ref = np.ones((2, 3), dtype=np.float32)
    assert not compare("y", np.ones((3, 2), dtype=np.float32), ref).passed
    cand = ref.copy()
    cand[0, 0] = np.nan
    assert not compare("y", cand, ref).passed


def test_tiny_outputs_are_judged_by_absolute_error():
    ref = np.full(100, 1e-6, dtype=np.float32)
    cand = ref * 1.5
    report = compare("y", cand, ref)
    assert report.passed and report.sqnr_db < 60


def test_random_inputs_are_seeded_and_typed():
    model = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3] x, int64[4] i, bool[2] b) => (float[2, 3] y) { y = Relu(x) }
    """)
    shapes = {"x": (2, 3), "i": (4,), "b": (2,)}
    a, b = random_inputs(model, shapes, seed=7), random_inputs(model, shapes, seed=7)
    for name in shapes:
        np.testing.assert_array_equal(a[name], b[name])
    assert a["x"].dtype == np.float32 and a["i"].dtype == np.int64 and a["b"].dtype == np.bool_
    assert a["x"].min() >= -1 and a["x"].max() < 1 and a["i"].min() >= 0
    assert not np.array_equal(random_inputs(model, shapes, seed=8)["x"], a["x"])


def test_compare_edge_cases_found_by_the_onnx_node_sweep():
    import ml_dtypes
    import numpy as np

    from mcc.toolchain.validate import compare

    empty = compare("y", np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32))
    assert empty.passed
    wrong_dtype = compare("mask", np.ones(4, np.float32), np.ones(4, bool))
    assert not wrong_dtype.passed and wrong_dtype.reason == "dtype float32 != reference bool"
    nan = compare("i", np.array([1.0, np.nan]), np.array([1.0, 2.0]))
    assert not nan.passed and "NaN/Inf positions differ" in nan.reason
    reference = np.linspace(-2, 2, 64).astype(ml_dtypes.bfloat16)
    close = (reference.astype(np.float32) + 0.004).astype(ml_dtypes.bfloat16)
    bf16 = compare("b", close, reference)
    assert bf16.tolerance == "fp16" and bf16.passed  # a float, judged with tolerances, not bit-exactly
