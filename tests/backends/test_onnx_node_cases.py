"""A fixed sample of the ONNX backend node-test cases keeps the verdict the tracked table gives it.

`tools/onnx_node_tests.py --write` runs every case and records pass/fail/error/skip in
`onnx_node_results.json`; this module runs a representative sample through the same
`nodecases.run_case` and asserts each status equals the tracked one. A case that gets fixed, or one
that regresses, fails here until the table is regenerated on purpose.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mcc.toolchain import nodecases

TRACKED = Path(__file__).with_name("onnx_node_results.json")

SAMPLE = (
    # convolution
    "test_basic_conv_with_padding",
    "test_conv_with_strides_padding",
    "test_convtranspose",
    "test_convtranspose_output_shape",
    # matmul / gemm
    "test_matmul_4d",
    "test_gemm_all_attributes",
    "test_gemm_transposeA",
    # pooling
    "test_maxpool_2d_pads",
    "test_averagepool_2d_strides",
    "test_globalaveragepool",
    # elementwise and activations
    "test_add_bcast",
    "test_relu",
    "test_sigmoid",
    "test_leakyrelu",
    "test_hardswish",
    "test_gelu_tanh_1",
    "test_clip",
    "test_prelu_broadcast",
    "test_where_example",
    # reductions (axes as a runtime input: passes only as a constant)
    "test_reduce_mean_keepdims_example",
    "test_reduce_max_do_not_keepdims_example",
    # data movement
    "test_reshape_reduced_dims",
    "test_transpose_all_permutations_0",
    "test_slice",
    "test_concat_2d_axis_0",
    "test_gather_0",
    "test_squeeze",
    "test_unsqueeze_axis_0",
    "test_flatten_axis0",
    "test_split_equal_parts_1d_opset18",
    "test_expand_dim_changed",
    # softmax
    "test_softmax_axis_1",
    "test_softmax_axis_1_expanded",
    "test_logsoftmax_axis_1",
    # normalization
    "test_batchnorm_epsilon",
    "test_batchnorm_example_training_mode",
    "test_instancenorm_example",
    "test_layer_normalization_4d_axis0_expanded",
    # resize
    "test_resize_upsample_scales_nearest",
    "test_resize_downsample_scales_cubic",
    # recurrent
    "test_lstm_defaults",
    # skips: unsupported op, non-tensor input, random op
    "test_lstm_with_peepholes",
    "test_sequence_insert_at_back",
    "test_bernoulli",
    # cases that used to error in mcc's runner, passes and validation (fixed; they must stay fixed)
    "test_shape",
    "test_cast_FLOAT_to_BFLOAT16",
    "test_attention_4d",
    "test_constantofshape_int_shape_zero",
    # errors left in TVM 0.27's importer and build
    "test_pow_types_float32_int32",
    "test_eyelike_populate_off_main_diagonal",
    "test_rms_normalization_2d_axis0",
)


@pytest.fixture(scope="module")
def tracked() -> dict[str, dict]:
    return json.loads(TRACKED.read_text())


@pytest.fixture(scope="module")
def case_root(tmp_path_factory) -> Path:
    """The installed onnx's cases: shipped with the wheel, or the sample generated offline."""
    shipped = nodecases.shipped_cases_dir()
    if shipped is not None:
        return shipped
    root = tmp_path_factory.mktemp("onnx-node-cases")
    written = nodecases.generate_cases(root, select=set(SAMPLE).__contains__)
    assert {path.name for path in written} == set(SAMPLE), "a sample case is not defined by the installed onnx"
    return root


def test_tracked_table_is_well_formed_and_sample_covers_every_status(tracked):
    assert list(tracked) == sorted(tracked)
    for name, record in tracked.items():
        assert set(record) == {"op", "status", "reason"}, name
        assert record["status"] in nodecases.STATUSES, name
        assert record["status"] == "pass" or record["reason"], f"{name}: a {record['status']} needs a reason"
    missing = [name for name in SAMPLE if name not in tracked]
    assert not missing, f"sample cases missing from {TRACKED.name}: {missing}"
    assert {tracked[name]["status"] for name in SAMPLE} == set(nodecases.STATUSES)


@pytest.mark.parametrize("name", SAMPLE)
def test_case_keeps_its_tracked_status(name, case_root, tracked):
    result = nodecases.run_case(case_root / name)
    want = tracked[name]
    assert result.op == want["op"]
    assert result.status == want["status"], (
        f"{name} ({result.op}) is now '{result.status}' ({result.reason or 'no reason'}); the table says "
        f"'{want['status']}' ({want['reason'] or 'no reason'}). If this is a deliberate fix or a known "
        "regression, regenerate the table: python tools/onnx_node_tests.py --write"
    )
