"""quantize-int8: static QDQ quantization, calibration methods that really differ, and the CLI."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from mcc.passes.quantize.int8 import QuantizeInt8, activation_qparams, calibrate_ranges
from mcc.toolchain import ir
from mcc.toolchain.driver import resolve_pipeline
from mcc.toolchain.errors import UsageError
from mcc.toolchain.passmanager import PassContext, PassManager, verify_model
from tests.conftest import EXAMPLE, EXAMPLE_INPUTS, op_types, ort_run, parse_model


def digits_calibration(path, count=64):
    from sklearn.datasets import load_digits

    images = (load_digits().images[-count:] / 16.0).astype(np.float32)[:, None]  # not the example's own input
    np.savez(path, image=images)
    return path


def _example():
    model, _ = ir.fix_input_shapes(ir.load_model(EXAMPLE), {})
    return ir.upgrade_opset(PassManager(resolve_pipeline(None)).run(model)[0], 13)


def sqnr_db(want, got):
    return 10 * np.log10(np.sum(want.astype(np.float64) ** 2) / np.sum((want.astype(np.float64) - got) ** 2))


def test_the_example_quantizes_to_qdq_with_int8_weights(tmp_path):
    model = _example()
    ctx = PassContext()
    result = QuantizeInt8(calib_data=str(digits_calibration(tmp_path / "calib.npz"))).run(model, ctx)
    verify_model(result.model, "quantize-int8")
    ops = op_types(result.model)
    assert ops.count("QuantizeLinear") == 3 and ops.count("DequantizeLinear") == 6  # 3 activations, 3 weights
    weights = [t for t in result.model.graph.initializer if t.data_type == TensorProto.INT8 and len(t.dims) > 1]
    assert len(weights) == 3 and not any(t.data_type == TensorProto.FLOAT and len(t.dims) > 1
                                         for t in result.model.graph.initializer)  # no float32 weights left
    feed = {"image": np.load(EXAMPLE_INPUTS)["image"]}
    want, got = ort_run(model, feed)[0], ort_run(result.model, feed)[0]
    assert want.argmax() == got.argmax() and sqnr_db(want, got) > 25
    assert not QuantizeInt8(calib_data=str(tmp_path / "calib.npz")).run(result.model, PassContext()).modified
    assert ctx.notes == ["quantize-int8: 3 Conv/MatMul/Gemm node(s) quantized, 3 activation(s) calibrated by "
                         "percentile on 64 sample(s)"]


def test_calibration_methods_give_different_ranges_on_heavy_tailed_data():
    model = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 256] x) => (float[1, 4] y) <float[256, 4] w = {WEIGHTS}> { y = MatMul(x, w) }
    """.replace("WEIGHTS", ",".join(["0.01"] * 1024)))
    rng = np.random.default_rng(0)
    feeds = []
    for _ in range(32):
        x = rng.normal(size=(1, 256)).astype(np.float32)
        x[0, 0] = 40.0  # a rare large outlier, as real activations have
        feeds.append({"x": x})
    ranges = {method: calibrate_ranges(model, ["x"], feeds, method, 99.0)["x"] for method in
              ("minmax", "percentile", "entropy")}  # 99th: outliers are 0.4 %
    minmax, percentile, entropy = (max(abs(low), abs(high)) for low, high in ranges.values())
    assert minmax == pytest.approx(40.0, rel=1e-3)
    assert percentile < 0.5 * minmax and entropy < 0.5 * minmax  # both clip the outlier
    assert abs(entropy - percentile) > 0.05 * percentile  # and are different methods, not aliases


def test_percentile_range_follows_the_activation_symmetry():
    """Symmetric activations: one threshold t, the percentile of |x|, range (-t, t). Asymmetric
    (the default): each tail of x cut by half the remainder, so the upper end clips less."""
    model = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 64] x) => (float[1, 4] y) <float[64, 4] w = {WEIGHTS}> { y = MatMul(x, w) }
    """.replace("WEIGHTS", ",".join(["0.01"] * 256)))
    rng = np.random.default_rng(0)
    feeds = [{"x": (rng.normal(size=(1, 64)) + 1.0).astype(np.float32)} for _ in range(16)]
    low, high = calibrate_ranges(model, ["x"], feeds, "percentile", 99.0)["x"]
    s_low, s_high = calibrate_ranges(model, ["x"], feeds, "percentile", 99.0, symmetric=True)["x"]
    minimum = min(float(feed["x"].min()) for feed in feeds)
    assert s_low == pytest.approx(max(-s_high, minimum))  # (-t, t), clipped to what was seen
    assert low > s_low and abs(low + high) > 0.5  # centred on the data, not on 0


def test_activation_qparams():
    assert activation_qparams(-1.0, 3.0, symmetric=False) == (pytest.approx(4 / 255), -128 + round(255 / 4))
    assert activation_qparams(-1.0, 3.0, symmetric=True) == (pytest.approx(3 / 127), 0)
    assert activation_qparams(0.5, 2.0, symmetric=False)[1] == -128  # 0 stays representable: the range grows to 0


def test_calibration_data_errors(tmp_path):
    model = _example()
    with pytest.raises(UsageError, match="needs calibration data"):
        QuantizeInt8().run(model, PassContext())
    np.savez(tmp_path / "wrong.npz", other=np.zeros((4, 1, 8, 8), np.float32))
    with pytest.raises(UsageError, match="no array for input 'image'; it has other"):
        QuantizeInt8(calib_data=str(tmp_path / "wrong.npz")).run(model, PassContext())
    ctx = PassContext()
    QuantizeInt8(calib_data="random", samples=8).run(model, ctx)
    assert any("RANDOM inputs" in note for note in ctx.notes)


def test_compile_at_int8_through_the_console_script(run_mcc, tmp_path):
    calib = digits_calibration(tmp_path / "calib.npz")
    out = tmp_path / "out"
    result = run_mcc("compile", EXAMPLE, "--precision", "int8", "--calib-data", calib, "--inputs", EXAMPLE_INPUTS,
                     "-o", out, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    (output,) = report["validation"]["outputs"]
    assert output["passed"] and output["tolerance"] == "int8"
    assert any(r["name"] == "quantize-int8" and r["modified"] for r in report["passes"])
    assert "calibrating" in result.stderr  # the progress bar
    saved = onnx.load(out / "model.onnx")
    assert "QuantizeLinear" in op_types(saved)
    missing = run_mcc("compile", EXAMPLE, "--precision", "int8", "-o", tmp_path / "x")
    assert missing.returncode == 2 and "needs --calib-data" in missing.stderr and not (tmp_path / "x").exists()


def test_a_folder_of_images_with_a_preprocessing_spec_calibrates(tmp_path):
    from PIL import Image

    from mcc.passes.quantize.data import load_calibration

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(5):
        Image.fromarray(rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    (folder / "preprocess.toml").write_text('resize = 10\ncrop = 8\nchannel_order = "BGR"\nscale = 0.00390625\n'
                                            'mean = [0.5, 0.5, 0.5]\n')
    model = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 3, 8, 8] x) => (float[1, 3, 8, 8] y) { y = Relu(x) }
    """)
    feeds = load_calibration(str(folder), model, samples=4)
    assert len(feeds) == 4 and feeds[0]["x"].shape == (1, 3, 8, 8) and feeds[0]["x"].dtype == np.float32
    with Image.open(folder / "0.png") as image:
        rgb = np.asarray(image.convert("RGB").resize((13, 10), Image.BILINEAR), np.float64)  # short side 12 -> 10
    expected = (rgb[1:9, 2:10, ::-1] / 256 - 0.5).transpose(2, 0, 1)  # centre crop, BGR, scale, mean
    np.testing.assert_allclose(feeds[0]["x"][0], expected, atol=1e-6)
    (folder / "preprocess.toml").write_text('crop = 8\nchanel_order = "BGR"\n')
    with pytest.raises(UsageError, match="unknown key 'chanel_order'"):
        load_calibration(str(folder), model, samples=4)
    (folder / "preprocess.toml").unlink()
    with pytest.raises(UsageError, match="needs a preprocess.toml"):
        load_calibration(str(folder), model, samples=4)


PLUGIN = '''
import numpy as np

def calibration_batches(inputs):
    (shape, dtype), = inputs.values()
    rng = np.random.default_rng(7)
    for _ in range(3):  # batches of 4 samples each
        yield {"image": rng.random((4, *shape[1:])).astype(dtype)}
'''


def test_a_python_plugin_gives_calibration_batches(tmp_path):
    from mcc.passes.quantize.data import load_calibration

    (tmp_path / "calib.py").write_text(PLUGIN)
    model = _example()
    feeds = load_calibration(str(tmp_path / "calib.py"), model, samples=10)
    assert len(feeds) == 10 and feeds[0]["image"].shape == (1, 1, 8, 8)
    expected = np.random.default_rng(7).random((4, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(feeds[1]["image"][0], expected[1])  # batches split into samples, in order
    result = QuantizeInt8(calib_data=str(tmp_path / "calib.py"), samples=12).run(model, PassContext())
    assert result.modified


@pytest.mark.parametrize("source, message", [
    ("def other(inputs):\n    return []\n", "defines no calibration_batches(inputs) function"),
    ("def calibration_batches(inputs):\n    raise OSError('dataset not mounted')\n",
     "the plugin failed: OSError: dataset not mounted"),
    ("def calibration_batches(inputs):\n    return [[1, 2]]\n", "must give dicts of input name -> array"),
    ("import numpy as np\ndef calibration_batches(inputs):\n    return [{'image': np.zeros((3, 5))}]\n",
     "not a batch of [1, 1, 8, 8]"),
])
def test_plugin_errors_are_usage_errors(tmp_path, source, message):
    (tmp_path / "calib.py").write_text(source)
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        QuantizeInt8(calib_data=str(tmp_path / "calib.py")).run(_example(), PassContext())
