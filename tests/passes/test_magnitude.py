"""recognize-magnitude: sqrt(re^2 + im^2) over two halves of one axis -> ReduceL2."""

import pytest

from mcc.passes.fusion.magnitude import RecognizeMagnitude
from mcc.toolchain.passmanager import PassContext
from tests.conftest import assert_same_function, op_types, parse_model, run_pass
from tests.passes.golden import assert_golden

# an STFT's magnitude as silero VAD writes it: the cosine half [0, 5) and the sine half [5, 10) of
# the channels, both without the first frame
STFT = """
<ir_version: 8, opset_import: ["" : OPSET]>
g (float[1, 10, 7] x) => (float[1, 5, 6] y)
  <int64[2] s_re = {0, 1}, int64[2] e_re = {5, 9223372036854775807}, int64[2] axes = {1, 2}, int64[2] steps = {1, 1},
   int64[2] s_im = {5, 1}, int64[2] e_im = {9223372036854775807, 9223372036854775807}, float two = {2.0}> {
    re = Slice(x, s_re, e_re, axes, steps)
    im = Slice(x, s_im, e_im, axes, steps)
    re2 = Pow(re, two)
    im2 = Pow(im, two)
    sum = Add(re2, im2)
    y = Sqrt(sum)
}
"""


def _stft(opset=17, **replace) -> str:
    text = STFT.replace("OPSET", str(opset))
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


@pytest.mark.parametrize("opset", [13, 18])
def test_stft_magnitude_becomes_one_reduce_l2(opset):
    model = parse_model(_stft(opset))
    result = run_pass(RecognizeMagnitude(), model)
    assert op_types(result.model) == ["Slice", "Reshape", "ReduceL2"]
    assert_same_function(model, result.model)
    if opset == 18:
        assert_golden("recognize_magnitude", result.model)
    assert not run_pass(RecognizeMagnitude(), result.model).modified


def test_squares_as_mul_halves_in_either_order_and_no_slice_left():
    """Mul(s, s) squares, the sine half read first; the halves cover all of x, so no Slice remains."""
    model = parse_model(_stft(**{
        "re2 = Pow(re, two)": "re2 = Mul(re, re)", "im2 = Pow(im, two)": "im2 = Mul(im, im)",
        "sum = Add(re2, im2)": "sum = Add(im2, re2)",
        "int64[2] s_re = {0, 1}": "int64[2] s_re = {0, 0}", "int64[2] s_im = {5, 1}": "int64[2] s_im = {5, 0}",
        "float[1, 5, 6] y": "float[1, 5, 7] y"}))
    result = run_pass(RecognizeMagnitude(), model)
    assert op_types(result.model) == ["Reshape", "ReduceL2"]
    assert_same_function(model, result.model)


@pytest.mark.parametrize("replace, reason", [
    ({"int64[2] s_im = {5, 1}": "int64[2] s_im = {6, 1}", "float[1, 5, 6] y": "float[1, 4, 6] y",
      "e_re = {5,": "e_re = {4,"}, "not adjacent halves"),
    ({"int64[2] s_im = {5, 1}": "int64[2] s_im = {5, 2}", "float[1, 5, 6] y": "float[1, 5, 5] y",
      "e_re = {5, 9223372036854775807}": "e_re = {5, 6}"}, "differ on 2 axes"),
    ({"float two = {2.0}": "float two = {3.0}"}, "the exponent is not 2"),
    ({"float two = {2.0}": "float[1, 1, 1, 1] two = {2.0}", "float[1, 5, 6] y": "float[1, 1, 5, 6] y"},
     "broadcasts the result up a rank"),
    ({"int64[2] steps = {1, 1}": "int64[2] steps = {1, 2}", "float[1, 5, 6] y": "float[1, 5, 3] y"},
     "a step other than 1"),
    ({"float[1, 10, 7] x": "float[1, 10, N] x", "float[1, 5, 6] y": "float[1, 5, M] y"}, "not static"),
])
def test_what_is_not_a_magnitude_stays(replace, reason):
    model = parse_model(_stft(**replace))
    ctx = PassContext().with_config(explain="recognize-magnitude")
    result = RecognizeMagnitude().run(model, ctx)
    assert "ReduceL2" not in op_types(result.model)
    assert any(reason in line for line in ctx.explanations), ctx.explanations


def test_not_without_reduce_l2_in_the_target():
    ctx = PassContext(supported_ops=frozenset({"Slice", "Pow", "Add", "Sqrt", "Reshape"}))
    assert not RecognizeMagnitude().run(parse_model(_stft()), ctx).modified
