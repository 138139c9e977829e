"""Calibration data for quantization: an .npz, a folder of images with a TOML preprocessing spec, or `random`.

- `FILE.npz`: one array per graph input; the first axis indexes samples, each reshaped to the
  input's static shape.
- `FOLDER/`: image files (.jpg, .jpeg, .png, .bmp) in sorted name order, and `FOLDER/preprocess.toml`:

      input = "data"              # the model input they feed (default: the only input)
      resize = 256                # short side, bilinear (optional)
      crop = 224                  # centre crop to crop x crop (optional)
      channel_order = "RGB"       # or "BGR"
      scale = 0.00392156862745098 # pixels (0..255) x scale (default 1.0)
      mean = [0.485, 0.456, 0.406]  # subtracted per channel after scaling (default 0)
      std = [0.229, 0.224, 0.225]   # divided per channel (default 1)
      layout = "NCHW"             # or "NHWC"
      dtype = "float32"

- `PLUGIN.py`: a Python file defining `calibration_batches(inputs)`. `inputs` maps each graph
  input's name to its (shape, numpy dtype); the function returns (or yields) feeds, dicts of
  input name -> array. A feed may hold a batch of samples along the first axis (N x the input's
  shape); it is split into samples. For data that needs code: a dataset reader, an audio front
  end, a tokenizer. Errors in the plugin are reported as usage errors, with the plugin's message.
- `random`: seeded uniform values in [-1, 1); ranges that say nothing about real data, so the
  quantization pass notes it in the report.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import onnx

from mcc.toolchain import ir
from mcc.toolchain.errors import UsageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
SPEC_KEYS = {"input", "resize", "crop", "channel_order", "scale", "mean", "std", "layout", "dtype"}


def _input_specs(model: onnx.ModelProto) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    return {v.name: (tuple(d.dim_value for d in v.type.tensor_type.shape.dim),
                     ir.tensor_dtype(v.type.tensor_type.elem_type)) for v in ir.graph_inputs(model)}


def _from_npz(path: Path, inputs: dict, samples: int) -> list[dict[str, np.ndarray]]:
    try:
        with np.load(path) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as exc:
        raise UsageError(f"--calib-data {path}: cannot read it as .npz ({exc})") from None
    missing = sorted(set(inputs) - set(arrays))
    if missing:
        raise UsageError(f"--calib-data {path}: no array for input '{missing[0]}'; it has {', '.join(arrays) or 'none'}")
    count = min(len(arrays[name]) for name in inputs)
    feeds = []
    for index in range(min(count, samples)):
        feed = {}
        for name, (shape, dtype) in inputs.items():
            sample = np.asarray(arrays[name][index], dtype=dtype)
            if sample.size != int(np.prod(shape)):
                raise UsageError(f"--calib-data {path}: a sample of '{name}' has shape {list(sample.shape)}, "
                                 f"the input needs {list(shape)}")
            feed[name] = sample.reshape(shape)
        feeds.append(feed)
    return feeds


def read_spec(folder: Path) -> dict:
    path = folder / "preprocess.toml"
    if not path.is_file():
        raise UsageError(f"--calib-data {folder}: a folder of images needs a preprocess.toml beside them "
                         f"(see `mcc.passes.quantize.data`)")
    try:
        spec = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML ({exc})") from None
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise UsageError(f"{path}: unknown key '{unknown[0]}'; the keys are: {', '.join(sorted(SPEC_KEYS))}")
    if spec.get("channel_order", "RGB") not in ("RGB", "BGR"):
        raise UsageError(f"{path}: channel_order must be RGB or BGR")
    if spec.get("layout", "NCHW") not in ("NCHW", "NHWC"):
        raise UsageError(f"{path}: layout must be NCHW or NHWC")
    return spec


def preprocess(image, spec: dict) -> np.ndarray:
    """One PIL image -> an HWC float array, per the spec (before layout and batch)."""
    from PIL import Image

    image = image.convert("RGB")
    if "resize" in spec:
        short = int(spec["resize"])
        width, height = image.size
        ratio = short / min(width, height)
        image = image.resize((max(1, round(width * ratio)), max(1, round(height * ratio))), Image.BILINEAR)
    if "crop" in spec:
        size = int(spec["crop"])
        width, height = image.size
        left, top = (width - size) // 2, (height - size) // 2
        image = image.crop((left, top, left + size, top + size))
    array = np.asarray(image, np.float64)
    if spec.get("channel_order", "RGB") == "BGR":
        array = array[:, :, ::-1]
    array = array * float(spec.get("scale", 1.0))
    array = (array - np.asarray(spec.get("mean", 0.0), np.float64)) / np.asarray(spec.get("std", 1.0), np.float64)
    return array


def _from_images(folder: Path, inputs: dict, samples: int) -> list[dict[str, np.ndarray]]:
    spec = read_spec(folder)
    name = spec.get("input") or (next(iter(inputs)) if len(inputs) == 1 else None)
    if name not in inputs:
        raise UsageError(f"{folder / 'preprocess.toml'}: say which input the images feed (`input = ...`); the "
                         f"model's inputs are: {', '.join(inputs)}")
    if len(inputs) > 1:
        raise UsageError(f"--calib-data {folder}: images can feed a single-input model only; use an .npz")
    try:
        from PIL import Image
    except ImportError:
        raise UsageError("--calib-data with images needs Pillow: pip install pillow") from None
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:samples]
    if not files:
        raise UsageError(f"--calib-data {folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    shape, dtype = inputs[name]
    feeds = []
    for path in files:
        with Image.open(path) as image:
            array = preprocess(image, spec)
        if spec.get("layout", "NCHW") == "NCHW":
            array = array.transpose(2, 0, 1)
        array = array.astype(np.dtype(spec.get("dtype", "float32")))
        if array.size != int(np.prod(shape)):
            raise UsageError(f"--calib-data {folder}: {path.name} preprocesses to {list(array.shape)}, the input "
                             f"'{name}' needs {list(shape)} (check resize/crop/layout)")
        feeds.append({name: array.reshape(shape).astype(dtype)})
    return feeds


def load_calibration(source: str, model: onnx.ModelProto, samples: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Calibration feeds for `model` from `source` (an .npz, an image folder, a Python plugin, or
    `random`)."""
    inputs = _input_specs(model)
    if source == "random":
        rng = np.random.default_rng(seed)
        return [{name: rng.uniform(-1, 1, size=shape).astype(dtype) for name, (shape, dtype) in inputs.items()}
                for _ in range(samples)]
    path = Path(source)
    if path.is_dir():
        return _from_images(path, inputs, samples)
    if not path.is_file():
        raise UsageError(f"--calib-data {source}: no such file or folder")
    if path.suffix == ".py":
        return _from_plugin(path, inputs, samples)
    return _from_npz(path, inputs, samples)


#: the function a calibration plugin defines
PLUGIN_FUNCTION = "calibration_batches"


def _from_plugin(path: Path, inputs: dict, samples: int) -> list[dict[str, np.ndarray]]:
    """Feeds from a plugin's `calibration_batches(inputs)`, batches split into samples."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"mcc_calibration_plugin_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        function = getattr(module, PLUGIN_FUNCTION, None)
        if not callable(function):
            raise UsageError(f"--calib-data {path}: the plugin defines no {PLUGIN_FUNCTION}(inputs) function")
        batches = function({name: (shape, dtype) for name, (shape, dtype) in inputs.items()})
        feeds: list[dict[str, np.ndarray]] = []
        for batch in batches:
            if len(feeds) >= samples:
                break
            feeds.extend(_split_batch(path, batch, inputs))
    except UsageError:
        raise
    except Exception as exc:  # the plugin's own failure: the user's code, reported as such
        raise UsageError(f"--calib-data {path}: the plugin failed: {type(exc).__name__}: {exc}") from None
    if not feeds:
        raise UsageError(f"--calib-data {path}: {PLUGIN_FUNCTION} returned no feeds")
    return feeds[:samples]


def _split_batch(path: Path, batch, inputs: dict) -> list[dict[str, np.ndarray]]:
    if not isinstance(batch, dict):
        raise UsageError(f"--calib-data {path}: {PLUGIN_FUNCTION} must give dicts of input name -> array, "
                         f"not {type(batch).__name__}")
    missing = [name for name in inputs if name not in batch]
    if missing:
        raise UsageError(f"--calib-data {path}: a feed lacks input(s) {', '.join(missing)}")
    counts = set()
    arrays = {}
    for name, (shape, dtype) in inputs.items():
        array = np.asarray(batch[name])
        size = int(np.prod(shape)) if shape else 1
        if array.size % max(size, 1):
            raise UsageError(f"--calib-data {path}: input '{name}' got shape {list(array.shape)}, not a batch of "
                             f"{list(shape)}")
        arrays[name] = array.reshape((-1, *shape)).astype(dtype)
        counts.add(len(arrays[name]))
    if len(counts) != 1:
        raise UsageError(f"--calib-data {path}: a feed's inputs have different batch sizes ({sorted(counts)})")
    return [{name: arrays[name][i] for name in inputs} for i in range(counts.pop())]
