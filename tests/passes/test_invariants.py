"""Every built-in pass, on every sample model: checker-valid, shape-inferable, idempotent, same function."""

import pytest

from mcc.toolchain import ir
from mcc.toolchain.passmanager import verify_model
from mcc.toolchain.registry import builtin_passes
from tests.conftest import EXAMPLE, assert_same_function, parse_model, run_pass
from tests.passes.test_conv_bn import conv_bn_model
from tests.passes.test_dead_nodes import WITH_DEAD_BRANCH
from tests.passes.test_fold_constants import PAD_SLICE_EXPAND, SHAPE_CHAIN, WEIGHT_ARITHMETIC
from tests.passes.test_identity import IDENTITY_AND_DROPOUT
from tests.passes.test_initializer_inputs import ir3_model


def _example():
    model, _ = ir.fix_input_shapes(ir.load_model(EXAMPLE), {})
    return model


SAMPLES = {
    "digits-example": _example,
    "shape-chain": lambda: parse_model(SHAPE_CHAIN),
    "pad-slice-expand": lambda: parse_model(PAD_SLICE_EXPAND),
    "weight-arithmetic": lambda: parse_model(WEIGHT_ARITHMETIC),
    "identity-dropout": lambda: parse_model(IDENTITY_AND_DROPOUT),
    "dead-branch": lambda: parse_model(WITH_DEAD_BRANCH),
    "conv-bn": conv_bn_model,
    "ir3": ir3_model,
}


def assert_output_fidelity(before, after, min_sqnr_db: float, seeds=(0, 1, 2)) -> None:
    """Every output of `after` within `min_sqnr_db` of `before`'s (int8 moves every value a little:
    an elementwise tolerance would have to be loose enough to miss a wrong rewrite)."""
    import numpy as np

    from tests.conftest import ort_run, random_feed

    for seed in seeds:
        feed = random_feed(before, seed)
        for want, got in zip(ort_run(before, feed), ort_run(after, feed), strict=True):
            want = want.astype(np.float64)
            noise = np.sum((want - got) ** 2)
            sqnr = np.inf if noise == 0 else 10 * np.log10(np.sum(want ** 2) / noise)
            assert sqnr >= min_sqnr_db, f"SQNR {sqnr:.1f} dB < {min_sqnr_db} dB (seed {seed})"


@pytest.mark.parametrize("sample", sorted(SAMPLES))
@pytest.mark.parametrize("pass_cls", builtin_passes(), ids=lambda cls: cls.name)
def test_pass_keeps_invariants(pass_cls, sample):
    model = SAMPLES[sample]()
    result = run_pass(pass_cls(), model)
    verify_model(result.model, pass_cls.name)
    assert not run_pass(pass_cls(), result.model).modified, "a second run must change nothing"
    if result.modified:
        if pass_cls.name.startswith("quantize-"):  # int8 on purpose: judged by output fidelity
            assert_output_fidelity(model, result.model, min_sqnr_db=25.0)
        elif pass_cls.changes_precision:  # float16 on purpose: judged at half precision
            assert_same_function(model, result.model, atol=3e-2, rtol=3e-2)
        else:
            assert_same_function(model, result.model, atol=1e-4)
    else:
        assert result.model is model or ir.content_hash(result.model) == ir.content_hash(model)
