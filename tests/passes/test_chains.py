"""simplify-chains: Transpose, Reshape-like and Cast chains merged or removed."""

import pytest

from mcc.passes.fusion.gemm import FuseGemm  # noqa: F401  (keeps import order stable for plugins)
from mcc.passes.simplify.chains import SimplifyChains
from mcc.passes.simplify.identity import EliminateIdentity
from mcc.toolchain.passmanager import PassContext, PassManager
from tests.conftest import assert_same_function, op_types, parse_model, run_pass
from tests.passes.golden import assert_golden

TRANSPOSES = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 3, 4, 5] x) => (float[2, 4, 5, 3] y, float[2, 3, 4, 5] z) {
    a = Transpose<perm = [0, 2, 3, 1]>(x)
    c = Transpose<perm = [0, 2, 3, 1]>(a)
    y = Transpose<perm = [0, 3, 1, 2]>(c)
    b = Transpose<perm = [0, 2, 3, 1]>(x)
    t = Transpose<perm = [0, 3, 1, 2]>(b)
    z = Relu(t)
}
"""

RESHAPES = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 6, 4] x) => (float[24] y, float[1, 6, 4] z) <int64[2] s1 = {6, 4}, int64[1] s2 = {24}, int64[1] ax = {0}> {
    a = Reshape(x, s1)
    f = Flatten<axis = 0>(a)
    y = Reshape(f, s2)
    u = Squeeze(x, ax)
    z = Unsqueeze(u, ax)
}
"""

CASTS = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[4] x, int32[4] i) => (float16[4] y, float[4] z, float[4] w, int32[4] v) {
    a = Cast<to = 11>(x)
    y = Cast<to = 10>(a)
    h = Cast<to = 10>(x)
    z = Cast<to = 1>(h)
    w = Cast<to = 1>(x)
    k = Cast<to = 7>(i)
    v = Cast<to = 6>(k)
}
"""


def _simplify(model):
    return PassManager([SimplifyChains(), EliminateIdentity()]).run(model)[0]


def test_transposes_compose_and_cancel():
    model = parse_model(TRANSPOSES)
    after = _simplify(model)
    assert op_types(after) == ["Transpose", "Relu"]  # three Transposes are one; two cancel out
    assert list(after.graph.node[0].attribute[0].ints) == [0, 2, 3, 1]
    assert_same_function(model, after)
    assert_golden("simplify_chains_transposes", after)


def test_reshape_chains_merge_and_noop_chains_vanish():
    model = parse_model(RESHAPES)
    after = _simplify(model)
    assert op_types(after) == ["Reshape", "Identity"] or op_types(after) == ["Reshape"]
    assert_same_function(model, after)
    assert not run_pass(SimplifyChains(), after).modified


def test_only_exact_cast_chains_merge():
    model = parse_model(CASTS)
    after = _simplify(model)
    # float -> double -> half is one Cast; float -> half -> float rounds and stays; float -> float and
    # int32 -> int64 -> int32 change nothing (Identity stays only because input and output are graph I/O)
    assert sorted(op_types(after)) == ["Cast", "Cast", "Cast", "Identity", "Identity"]
    assert_same_function(model, after)
    ctx = PassContext().with_config(explain="merge-casts")
    SimplifyChains().run(after, ctx)
    assert any(line.endswith("the cast float32 -> float16 loses values") for line in ctx.explanations)


@pytest.mark.parametrize("text", [TRANSPOSES, RESHAPES, CASTS], ids=["transposes", "reshapes", "casts"])
def test_idempotent(text):
    after = _simplify(parse_model(text))
    assert not run_pass(SimplifyChains(), after).modified


def test_casts_to_types_numpy_lacks_are_left_alone():
    model = parse_model("""
    <ir_version: 9, opset_import: ["" : 17]>
    g (float[4] x) => (float[4] y) {
        b = Cast<to = 16>(x)
        y = Cast<to = 1>(b)
    }
    """)
    ctx = PassContext().with_config(explain="merge-casts,remove-noop-cast")
    assert not SimplifyChains().run(model, ctx).modified  # float -> bfloat16 -> float rounds: it must stay
    assert any("not numpy types, like bfloat16" in line for line in ctx.explanations)


# found by tools/fuzz_passes.py (seed 1007): a Reshape whose shape is computed from Shape(a). Once
# the chain after it merges, that Shape is dead but still read `a`, so `a`'s Reshape merged only on
# a second run; the rewriter now drops dead nodes between sweeps
COMPUTED_SHAPE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 6, 4] x) => (float[2, 1, 12] y) <int64[2] s1 = {6, 4}, int64[1] zero = {0}, int64[1] one = {1},
                                             int64[2] rest = {2, -1}, int64[2] s3 = {2, 12}, int64[1] ax = {1}> {
    a = Reshape(x, s1)
    shape = Shape(a)
    head = Slice(shape, zero, one)
    target = Concat<axis = 0>(head, rest)
    b = Reshape(a, target)
    c = Reshape(b, s3)
    y = Unsqueeze(c, ax)
}
"""


def test_a_chain_whose_computed_shape_dies_merges_in_one_run():
    model = parse_model(COMPUTED_SHAPE)
    result = run_pass(SimplifyChains(), model)
    assert op_types(result.model) == ["Reshape"]
    assert_same_function(model, result.model)
    assert not run_pass(SimplifyChains(), result.model).modified
