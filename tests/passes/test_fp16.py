"""convert-float16: half compute, float32 I/O, sensitive ops kept in float32, always a valid model."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from mcc.passes.quantize.fp16 import ConvertFloat16
from mcc.toolchain import ir
from mcc.toolchain.passmanager import PassContext, PassManager, verify_model
from mcc.toolchain.driver import resolve_pipeline
from tests.conftest import EXAMPLE, op_types, ort_run, parse_model, random_feed
from tests.passes.golden import assert_golden


def _example():
    model, _ = ir.fix_input_shapes(ir.load_model(EXAMPLE), {})
    return PassManager(resolve_pipeline(None)).run(model)[0]


def _assert_close_in_half(before, after, seeds=(0, 1)):
    verify_model(after, "convert-float16")
    for seed in seeds:
        feed = random_feed(before, seed)
        for want, got in zip(ort_run(before, feed), ort_run(after, feed), strict=True):
            assert got.dtype == want.dtype  # I/O types are kept
            np.testing.assert_allclose(got, want, atol=1e-2, rtol=1e-2 * max(1.0, float(np.abs(want).max())))


def test_the_example_computes_in_half_with_float32_io():
    model = _example()
    result = ConvertFloat16().run(model, PassContext())
    ops = op_types(result.model)
    assert ops[0] == "Cast" and ops[-1] == "Cast" and ops.count("Cast") == 2  # one in, one out
    assert [o.name for o in result.model.graph.output] == [o.name for o in model.graph.output]
    types = ir.tensor_types(ir.infer_shapes(result.model))
    conv_out = [n for n in result.model.graph.node if n.op_type == "Conv"][0].output[0]
    assert types[conv_out][0] == TensorProto.FLOAT16
    assert {t.data_type for t in result.model.graph.initializer} <= {TensorProto.FLOAT16, TensorProto.INT64}
    _assert_close_in_half(model, result.model)
    assert not ConvertFloat16().run(result.model, PassContext()).modified  # idempotent


SENSITIVE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 8] x) => (float[2, 8] y, float[2, 8] z) <float[8, 8] w = {WEIGHTS}, float[8] big = {BIG}> {
    m = MatMul(x, w)
    s = Softmax(m)
    y = Add(s, big)
    z = Mul(m, w2)
}
"""


def sensitive_model():
    weights = ",".join(str(((i * 7) % 11 - 5) / 10) for i in range(64))
    text = SENSITIVE.replace("WEIGHTS", weights).replace("BIG", ",".join(["1e6"] + ["0.5"] * 7))
    text = text.replace("z = Mul(m, w2)", "z = Mul(m, m)")
    return parse_model(text)


def test_sensitive_ops_stay_float32_shared_and_huge_weights_are_handled():
    model = sensitive_model()
    ctx = PassContext()
    result = ConvertFloat16().run(model, ctx)
    types = ir.tensor_types(ir.infer_shapes(result.model))
    softmax = next(n for n in result.model.graph.node if n.op_type == "Softmax")
    assert types[softmax.input[0]][0] == TensorProto.FLOAT  # a Cast back to float32 feeds it
    assert "convert-float16: 1 weight value(s) beyond the float16 range were clamped to +-65504" in ctx.notes
    assert any(note.startswith("convert-float16: kept in float32: Softmax") for note in ctx.notes)
    verify_model(result.model, "convert-float16")
    feed = random_feed(model, 0)
    got, want = ort_run(result.model, feed), ort_run(model, feed)
    np.testing.assert_allclose(got[1], want[1], rtol=2e-2, atol=2e-2)  # z = m * m, in half


def test_bfloat16_gives_a_valid_model():
    result = ConvertFloat16(dtype="bfloat16").run(_example(), PassContext())
    verify_model(result.model, "convert-float16")
    assert any(t.data_type == TensorProto.BFLOAT16 for t in result.model.graph.initializer)


def test_bad_dtype_is_refused():
    with pytest.raises(ValueError, match="dtype must be one of float16, bfloat16"):
        ConvertFloat16(dtype="float8")


def test_compile_at_fp16_through_the_console_script(run_mcc, tmp_path):
    from tests.conftest import EXAMPLE_INPUTS

    out = tmp_path / "out"
    result = run_mcc("compile", EXAMPLE, "--precision", "fp16", "--inputs", EXAMPLE_INPUTS, "-o", out, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    (output,) = report["validation"]["outputs"]
    assert output["passed"] and output["tolerance"] == "fp16" and output["sqnr_db"] > 40
    assert any(r["name"] == "convert-float16" and r["modified"] for r in report["passes"])
    saved = onnx.load(out / "model.onnx")
    assert saved.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # callers still feed float32
    assert report["estimate"]["precision"] == "native"
