"""Shared fixtures: tiny models from ONNX text, onnxruntime comparison, the real console script."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_MODELS = REPO.parent / "shared" / "models"
EXAMPLE = REPO / "examples" / "digits_cnn.onnx"
EXAMPLE_INPUTS = REPO / "examples" / "digits_cnn_inputs.npz"


def pytest_configure(config):
    """Keep tests away from the user's cache (calibration profiles, tuning records)."""
    import tempfile

    config._mcc_cache_dir = tempfile.mkdtemp(prefix="mcc-test-cache-")
    os.environ["MCC_CACHE_DIR"] = config._mcc_cache_dir


def pytest_unconfigure(config):
    """Remove the session's cache folder (one per run would pile up in the temp folder)."""
    folder = getattr(config, "_mcc_cache_dir", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


def parse_model(text: str) -> onnx.ModelProto:
    """An onnx.ModelProto from ONNX text (onnx.parser), checked."""
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model)
    return model


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same single-input, single-output float model with fp16 weights, input and output (in place)."""
    from onnx import TensorProto, numpy_helper

    for tensor in model.graph.initializer:
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name))
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.checker.check_model(model)
    return model


def ort_run(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {k: v for k, v in inputs.items() if k in {i.name for i in session.get_inputs()}})


def random_feed(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    from mcc.toolchain import ir

    rng = np.random.default_rng(seed)
    feed = {}
    for value in ir.graph_inputs(model):
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        dtype = ir.tensor_dtype(value.type.tensor_type.elem_type)
        feed[value.name] = rng.uniform(-1, 1, size=dims).astype(dtype)
    return feed


def assert_same_function(before: onnx.ModelProto, after: onnx.ModelProto, seeds=(0, 1, 2), atol=1e-5, rtol=1e-4):
    """The rewritten model computes what the original computes (onnxruntime on random inputs)."""
    onnx.checker.check_model(after)
    onnx.shape_inference.infer_shapes(after, strict_mode=True)
    for seed in seeds:
        feed = random_feed(before, seed)
        for want, got in zip(ort_run(before, feed), ort_run(after, feed), strict=True):
            np.testing.assert_allclose(got, want, atol=atol, rtol=rtol)


def run_pass(pass_obj, model: onnx.ModelProto):
    from mcc.toolchain.passmanager import PassContext

    return pass_obj.run(model, PassContext())


def op_types(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


@pytest.fixture(scope="session")
def mcc_exe() -> str:
    """Path of the installed `mcc` console script (tests run the real entry point)."""
    path = shutil.which("mcc")
    if path is None:
        pytest.fail("the `mcc` console script is not installed; run: pip install '.[test]'")
    return path


@pytest.fixture
def run_mcc(mcc_exe, tmp_path):
    def run(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
        environment = dict(os.environ)
        environment["MCC_CRASH_DIR"] = str(tmp_path / "crashes")
        environment.update(env or {})
        return subprocess.run(
            [mcc_exe, *map(str, args)], capture_output=True, text=True, env=environment, timeout=timeout,
            cwd=tmp_path,
        )

    return run


@pytest.fixture(scope="session")
def shared_models() -> Path:
    if not SHARED_MODELS.is_dir():
        pytest.skip(f"third-party models not available: {SHARED_MODELS} is absent")
    return SHARED_MODELS
