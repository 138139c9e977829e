"""Property tests: every built-in pass and the default pipeline, on randomly generated graphs.

For each pass and each generated model (`mcc.toolchain.graphgen`): the result passes onnx.checker
and strict shape inference, a second run reports `modified=False`, and onnxruntime computes the
same outputs as on the original model (within `FP32_RELATIVE_TOLERANCE` of the output's
magnitude). Examples are derandomized, so every run tests the same graphs.

Each pass's graphs favour the motifs it rewrites (`FAVOURED`), and `test_pass_fires_on_its_motifs`
asserts, on a fixed list of seeds, that the pass rewrote them: a property test of a pass that
never fires cannot fail. Which motifs each pass rewrote in the hypothesis examples is reported as
events: `pytest tests/property --hypothesis-show-statistics`.

The long run over thousands of seeded graphs is `tools/fuzz_passes.py`.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mcc.toolchain import graphgen, ir
from mcc.toolchain.graphgen import (FEATURES, MOTIF_NAMES, UPGRADE_TARGET_OPSET, PassCheck, check_pass, graphs,
                                    pass_transform, pipeline_transform, random_model)
from mcc.toolchain.passmanager import verify_model
from mcc.toolchain.registry import builtin_passes

#: what each pass rewrites: its graphs favour these motifs (or graph features), and it must touch one
FAVOURED: dict[str, tuple[str, ...]] = {
    "inline-initializer-inputs": ("initializer_inputs",),
    "eliminate-identity": ("identity",),
    "fold-constants": ("constant_subgraph",),
    "cse": ("duplicate",),
    "fuse-conv-bn": ("conv_bn",),
    "fold-conv-affine": ("conv_affine",),
    "fuse-gemm": ("matmul_add", "gemm_bn"),
    "fold-pad": ("pad_conv", "pad_average_pool"),
    "simplify-chains": ("transpose_chain", "reshape_chain", "cast_chain"),
    "recognize-activations": ("hardsigmoid", "hardswish", "gelu", "layer_norm"),
    "recognize-magnitude": ("magnitude",),
    "combine-parallel": ("parallel",),
    "eliminate-dead-nodes": ("dead_branch",),
    "remove-noops": ("noop",),
    "convert-float16": ("conv_bn", "matmul_add", "branch_join"),
    "quantize-weights": ("matmul_add", "gemm_bn"),
    "quantize-dynamic": ("matmul_add", "gemm_bn"),
}
#: passes the generated graphs give nothing to do, and why (their properties still hold, trivially)
NOT_GENERATED: dict[str, str] = {
    "fold-constant-if": "generated graphs have no If",
    "decompose-unsupported": "it fires only for a target lacking an op; the tests run without a target",
    "substitute-recurrent": "generated graphs have no RNN/GRU/LSTM",
    "flush-subnormals": "generated weights are normal floats (tests/passes/test_subnormals.py builds subnormal ones)",
    "quantize-weights-int4": "generated graphs are opset < 21, which has no int4 (the pass manager upgrades; "
                             "tests/passes/test_quantize_weights.py runs it so)",
}
#: passes whose rewrite leaves no node of the motif behind to see (they edit the graph's interface,
#: or only tensor types, like convert-float16, or weights, like the int8 passes)
INTERFACE_PASSES = {"inline-initializer-inputs", "eliminate-dead-nodes", "convert-float16", "quantize-weights",
                    "quantize-weights-int4", "quantize-dynamic"}
#: not run one by one: upgrade-opset changes the opset on purpose (its own test below), and
#: fixed-point is a group of other passes (run inside the default pipeline)
SEPARATELY_TESTED = {"upgrade-opset", "fixed-point"}

EXAMPLES_PER_PASS = 80
EXAMPLES_DEFAULT_PIPELINE = 150
SEEDS_PER_PASS = 20
PROPERTY_SETTINGS = settings(deadline=None, derandomize=True, database=None, print_blob=True,
                             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

PASSES_UNDER_TEST = [cls for cls in builtin_passes() if cls.name not in SEPARATELY_TESTED]
FIRING_PASSES = [cls for cls in PASSES_UNDER_TEST if cls.name not in NOT_GENERATED]


def assert_properties(name: str, outcome: PassCheck) -> None:
    assert outcome.failure is None, f"{name}: {outcome.failure}: {outcome.reason}"


def test_every_pass_has_favoured_motifs():
    untested = {cls.name for cls in PASSES_UNDER_TEST} - set(FAVOURED) - set(NOT_GENERATED)
    assert not untested, f"new built-in passes need motifs in FAVOURED (or a reason in NOT_GENERATED): {untested}"
    for motifs in FAVOURED.values():
        assert set(motifs) <= set(MOTIF_NAMES) | set(FEATURES)


@pytest.mark.parametrize("pass_cls", PASSES_UNDER_TEST, ids=lambda cls: cls.name)
@settings(PROPERTY_SETTINGS, max_examples=EXAMPLES_PER_PASS)
@given(data=st.data())
def test_pass_keeps_properties_on_random_graphs(pass_cls, data):
    model = data.draw(graphs(favour=FAVOURED.get(pass_cls.name, ())), label="model")
    outcome = check_pass(pass_cls.name, pass_transform(pass_cls()), model)
    assert_properties(pass_cls.name, outcome)
    event("modified" if outcome.modified else "not modified")
    for motif in sorted(outcome.motifs):
        event(f"rewrote {motif}")


@pytest.mark.parametrize("pass_cls", FIRING_PASSES, ids=lambda cls: cls.name)
def test_pass_fires_on_its_motifs(pass_cls):
    """On a fixed list of seeds, the pass rewrites the motifs it is for (and keeps the properties there)."""
    favoured = FAVOURED[pass_cls.name]
    rewritten: Counter[str] = Counter()
    fired = 0
    for seed in range(SEEDS_PER_PASS):
        outcome = check_pass(pass_cls.name, pass_transform(pass_cls()), random_model(seed, favour=favoured))
        assert_properties(f"{pass_cls.name} on random_model({seed}, favour={favoured})", outcome)
        fired += outcome.modified
        rewritten.update(outcome.motifs)
    assert fired, f"{pass_cls.name} fired on none of {SEEDS_PER_PASS} graphs: its properties went untested"
    if pass_cls.name not in INTERFACE_PASSES:
        assert set(rewritten) & set(favoured), f"{pass_cls.name} never rewrote {favoured}, only {dict(rewritten)}"


@settings(PROPERTY_SETTINGS, max_examples=EXAMPLES_DEFAULT_PIPELINE)
@given(model=graphs())
def test_default_pipeline_keeps_properties_on_random_graphs(model):
    outcome = check_pass("default", pipeline_transform("default"), model)
    assert_properties("default pipeline", outcome)
    event("modified" if outcome.modified else "not modified")
    for motif in sorted(outcome.motifs):
        event(f"rewrote {motif}")


@settings(PROPERTY_SETTINGS, max_examples=EXAMPLES_PER_PASS)
@given(model=graphs())
def test_upgrade_opset_keeps_properties_on_random_graphs(model):
    """upgrade-opset changes the opset on purpose; the model must stay valid and compute the same."""
    from mcc.passes.upgrade_opset import UpgradeOpset

    upgrade = UpgradeOpset(version=UPGRADE_TARGET_OPSET)
    outcome = check_pass(upgrade.to_text(), pass_transform(upgrade), model)
    assert_properties("upgrade-opset", outcome)
    assert outcome.modified and ir.opset_version(outcome.result) == UPGRADE_TARGET_OPSET


# --------------------------------------------------------------------------------------------------
# The generator itself


@settings(PROPERTY_SETTINGS, max_examples=EXAMPLES_PER_PASS)
@given(model=graphs())
def test_generated_models_are_valid_and_run(model):
    verify_model(model, "graphgen")
    outputs = graphgen.run_onnxruntime(model, graphgen.random_feed(model, 0))
    for declared, value in zip(model.graph.output, outputs, strict=True):
        assert tuple(d.dim_value for d in declared.type.tensor_type.shape.dim) == value.shape
        assert np.isfinite(value).all()
    names = [node.name for node in model.graph.node]
    assert all(names) and len(set(names)) == len(names), "every node has a unique name"


def test_random_model_is_deterministic():
    assert random_model(7).SerializeToString() == random_model(7).SerializeToString()
    assert random_model(7).SerializeToString() != random_model(8).SerializeToString()


def test_every_motif_appears_in_the_first_seeds():
    seen = {graphgen.motif_of(node.name) for seed in range(200) for node in random_model(seed).graph.node}
    assert set(MOTIF_NAMES) <= seen, f"never generated: {sorted(set(MOTIF_NAMES) - seen)}"


def test_unknown_favoured_motif_is_refused():
    with pytest.raises(ValueError, match="unknown motifs"):
        random_model(0, favour=("no-such-motif",))
