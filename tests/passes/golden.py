"""Golden before/after IR: a pass's output printed as ONNX text and compared with tests/golden/.

Regenerate after an intended change with MCC_UPDATE_GOLDEN=1, then review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx

GOLDEN_DIR = Path(__file__).resolve().parent.parent / "golden"


def assert_golden(name: str, model: onnx.ModelProto) -> None:
    text = onnx.printer.to_text(model.graph) + "\n"
    path = GOLDEN_DIR / f"{name}.after.onnxtxt"
    if os.environ.get("MCC_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.is_file(), f"missing golden file {path}; run with MCC_UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text(), f"IR after the pass differs from {path.name}"


def without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose floating-point initializers are zeros: golden files then show the structure, shapes
    and integer constants (axes, sizes), and the numbers are checked numerically instead."""
    import numpy as np
    from onnx import numpy_helper

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor in copy.graph.initializer:
        array = numpy_helper.to_array(tensor)
        if array.dtype.kind == "f":
            tensor.CopyFrom(numpy_helper.from_array(np.zeros_like(array), tensor.name))
    return copy
