"""remove-noops: ops that return their input unchanged."""

import pytest

from mcc.passes.simplify.identity import EliminateIdentity
from mcc.passes.simplify.noops import RemoveNoops
from mcc.toolchain.passmanager import PassContext, PassManager
from tests.conftest import assert_same_function, op_types, parse_model, run_pass
from tests.passes.golden import assert_golden

NOOPS = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 4, 6] x) => (float[1, 4, 6] y)
  <int64[3] shape = {1, 4, 6}, int64[3] starts = {0, 0, 0}, int64[3] ends = {1, 4, 1000000}, int64[3] axes = {0, 1, 2},
   int64[3] steps = {1, 1, 1}, int64[6] zeros = {0, 0, 0, 0, 0, 0}, float zero = {0.0}, float[1, 1, 6] ones = {1, 1, 1, 1, 1, 1},
   int64[3] reps = {1, 1, 1}> {
    a = Expand(x, shape)
    b = Slice(a, starts, ends, axes, steps)
    c = Pad(b, zeros)
    d = Sub(c, zero)
    e = Mul(ones, d)
    f = Tile(e, reps)
    g = Concat<axis = 0>(f)
    y = Relu(g)
}
"""


def test_every_noop_goes():
    model = parse_model(NOOPS)
    after = PassManager([RemoveNoops(), EliminateIdentity()]).run(model)[0]
    assert op_types(after) == ["Relu"]
    assert_same_function(model, after)
    assert_golden("remove_noops", after)


@pytest.mark.parametrize("line, reason", [
    ("d = Sub(zero, c)", "input 1 of Sub '' ('c') is not a constant"),  # 0 - x is not x
    ("d = Sub(c, half)", "the constant is not 0"),
])
def test_arithmetic_that_changes_values_stays(line, reason):
    text = NOOPS.replace("d = Sub(c, zero)", line).replace("float zero = {0.0}", "float zero = {0.0}, float half = {0.5}")
    model = parse_model(text)
    ctx = PassContext().with_config(explain="remove-noop-arithmetic")
    after = RemoveNoops().run(model, ctx).model
    assert "Sub" in op_types(after)
    assert any(line.endswith(f"at '-> d': {reason}") for line in ctx.explanations), ctx.explanations


def test_broadcasting_arithmetic_and_reversing_slices_stay():
    model = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 4] x) => (float[3, 4] y, float[1, 4] z)
      <float[3, 1] zeros = {0, 0, 0}, int64[1] s = {-1}, int64[1] e = {-1000}, int64[1] a = {1}, int64[1] st = {-1}> {
        y = Add(x, zeros)
        z = Slice(x, s, e, a, st)
    }
    """)
    assert not run_pass(RemoveNoops(), model).modified
