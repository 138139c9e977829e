"""fold-pad: explicit zero Pads folded into Conv and AveragePool."""

import pytest

from mcc.passes.fusion.pad import FoldPad
from mcc.toolchain.passmanager import PassContext
from tests.conftest import assert_same_function, op_types, parse_model, run_pass
from tests.passes.golden import assert_golden

CONV = """
<ir_version: 8, opset_import: ["" : {opset}]>
g (float[1, 3, 7, 7] x) => (float[1, 4, {out}, {out}] y)
  <float[4, 3, 3, 3] w = {{{weights}}}, int64[8] pads = {{{pads}}}>
{{
    p = Pad<mode = "{mode}">(x, pads)
    y = Conv<pads = [1, 0, 0, 1]>(p, w)
}}
"""


def conv_model(pads="0,0,1,2,0,0,2,1", mode="constant", out=None, opset=17):
    values = ",".join(str((i % 7) / 7 - 0.5) for i in range(108))
    p = [int(v) for v in pads.split(",")]
    out = out or 7 + p[2] + p[6] + 1 - 2  # H: 7 + pad_top + pad_bottom + conv pads (1 + 0) - 2
    return parse_model(CONV.format(opset=opset, out=out, weights=values, pads=pads, mode=mode))


def test_pad_folds_into_conv_pads():
    model = conv_model()
    result = run_pass(FoldPad(), model)
    assert op_types(result.model) == ["Conv"]
    assert_same_function(model, result.model, atol=1e-5)
    assert not run_pass(FoldPad(), result.model).modified
    assert_golden("fold_pad", result.model)


@pytest.mark.parametrize("pads, mode, reason", [
    ("0,1,1,1,0,0,1,1", "constant", "the Pad pads the batch or channel axis"),
    ("0,0,1,1,0,0,1,1", "reflect", "the Pad mode is reflect, not constant"),
    ("0,0,-1,0,0,0,0,0", "constant", "the Pad crops (negative pads)"),
])
def test_must_not_fire(pads, mode, reason):
    p = [int(v) for v in pads.split(",")]
    channels_padded = p[1] + p[5]
    model_text = CONV.format(opset=17, out=7 + p[2] + p[6] - 1, pads=pads, mode=mode,
                             weights=",".join("0.1" for _ in range(4 * (3 + channels_padded) * 9)))
    model_text = model_text.replace("float[4, 3, 3, 3] w", f"float[4, {3 + channels_padded}, 3, 3] w")
    model = parse_model(model_text)
    ctx = PassContext().with_config(explain="fold-pad-into-conv")
    assert not FoldPad().run(model, ctx).modified
    assert ctx.explanations == [f"fold-pad: fold-pad-into-conv at '': {reason}"] or \
        ctx.explanations[0].endswith(reason)


AVGPOOL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 2, 6, 6] x) => (float[1, 2, 3, 3] y) <int64[8] pads = {0, 0, 1, 1, 0, 0, 1, 1}> {
    p = Pad(x, pads)
    y = AveragePool<kernel_shape = [3, 3], strides = [2, 2], count_include_pad = COUNT>(p)
}
"""


def test_pad_folds_into_averagepool_only_when_it_counts_padding():
    model = parse_model(AVGPOOL.replace("COUNT", "1"))
    result = run_pass(FoldPad(), model)
    assert op_types(result.model) == ["AveragePool"]
    assert_same_function(model, result.model)
    assert not run_pass(FoldPad(), parse_model(AVGPOOL.replace("COUNT", "0"))).modified


MAXPOOL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 2, 6, 6] x) => (float[1, 2, 3, 3] y) <int64[8] pads = {0, 0, 1, 1, 0, 0, 1, 1}> {
    r = PRODUCER(x)
    p = Pad(r, pads)
    y = MaxPool<kernel_shape = [3, 3], strides = [2, 2]>(p)
}
"""


def test_pad_folds_into_maxpool_only_after_a_non_negative_producer():
    model = parse_model(MAXPOOL.replace("PRODUCER", "Relu"))
    result = run_pass(FoldPad(), model)
    assert op_types(result.model) == ["Relu", "MaxPool"]
    assert_same_function(model, result.model)
    ctx = PassContext().with_config(explain="fold-pad-into-maxpool")
    assert not FoldPad().run(parse_model(MAXPOOL.replace("PRODUCER", "Tanh")), ctx).modified
    assert ctx.explanations[0].endswith("the padded tensor may be negative (it does not come from Relu, Sigmoid, ...)")


@pytest.mark.parametrize("pool, attrs, pads, reason", [
    ("AveragePool", "count_include_pad = 1, ceil_mode = 1", "0,0,0,0,0,0,1,1",
     "the AveragePool uses ceil_mode (the output shape would change)"),
    ("MaxPool", "ceil_mode = 1", "0,0,0,0,0,0,1,1", "the MaxPool uses ceil_mode (the output shape would change)"),
    ("MaxPool", "", "0,0,3,3,0,0,3,3", "the merged pads would not be smaller than the kernel [2, 2]"),
])
def test_pools_keep_their_output_shape_and_valid_pads(pool, attrs, pads, reason):
    p = [int(v) for v in pads.split(",")]
    size = 3 + p[2] + p[6]
    out = (size - 2) // 3 + 1 if "ceil" not in attrs else -(-(size - 2) // 3) + 1
    model = parse_model(f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 1, 3, 3] x) => (float[1, 1, {out}, {out}] y) <int64[8] pads = {{{pads}}}> {{
        r = Relu(x)
        p = Pad(r, pads)
        y = {pool}<kernel_shape = [2, 2], strides = [3, 3]{", " + attrs if attrs else ""}>(p)
    }}
    """)
    ctx = PassContext().with_config(explain=f"fold-pad-into-{pool.lower()}")
    assert not FoldPad().run(model, ctx).modified
    assert any(line.endswith(reason) for line in ctx.explanations), ctx.explanations


@pytest.mark.parametrize("auto_pad, size, stride, kernel, pads", [
    ("SAME_UPPER", 28, 1, 5, [2, 2, 2, 2]),
    ("SAME_UPPER", 8, 2, 4, [1, 1, 1, 1]),   # total 2
    ("SAME_UPPER", 7, 2, 4, [1, 1, 2, 2]),   # total 3: the odd pixel at the end
    ("SAME_LOWER", 7, 2, 4, [2, 2, 1, 1]),   # ... at the beginning
    ("VALID", 7, 2, 3, [0, 0, 0, 0]),
])
def test_auto_pad_becomes_the_explicit_pads_it_means(auto_pad, size, stride, kernel, pads):
    out = -(-size // stride) if auto_pad != "VALID" else (size - kernel) // stride + 1
    weights = ",".join(str((i % 5) / 5 - 0.4) for i in range(3 * 2 * kernel * kernel))
    model = parse_model(f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 2, {size}, {size}] x) => (float[1, 3, {out}, {out}] y, float[1, 2, {out}, {out}] z)
      <float[3, 2, {kernel}, {kernel}] w = {{{weights}}}> {{
        y = Conv<auto_pad = "{auto_pad}", strides = [{stride}, {stride}]>(x, w)
        z = MaxPool<auto_pad = "{auto_pad}", kernel_shape = [{kernel}, {kernel}], strides = [{stride}, {stride}]>(x)
    }}
    """)
    result = run_pass(FoldPad(), model)
    for node in result.model.graph.node:
        attrs = {a.name: a for a in node.attribute}
        assert "auto_pad" not in attrs
        assert list(attrs["pads"].ints) == pads, node.op_type
    assert_same_function(model, result.model, atol=1e-5)
    assert not run_pass(FoldPad(), result.model).modified


def test_auto_pad_stays_when_the_input_shape_is_symbolic():
    model = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 2, H, W] x) => (float[1, 3, H, W] y) <float[3, 2, 3, 3] w = {0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
        0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.1, 0.2, 0.3, 0.4,
        0.5, 0.6, 0.7, 0.8, 0.9, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8,
        0.9}> {
        y = Conv<auto_pad = "SAME_UPPER">(x, w)
    }
    """)
    ctx = PassContext().with_config(explain="explicit-auto-pad-conv")
    assert not FoldPad().run(model, ctx).modified
    assert any(line.endswith("the input's spatial shape or the kernel shape is not static") for line in ctx.explanations)
