"""Validation of a compiled artifact against reference outputs.

Inputs are seeded random values of each input's dtype in a range that suits it (floats uniform
in [-1, 1), integers in [0, 128), booleans fair coins) or come from an `.npz` file. For every
output the metrics are:

- `max_abs`: max |candidate - reference|
- `max_rel`: max |candidate - reference| / (|reference| + atol), atol from the tolerance set,
  so elements near zero do not dominate
- `cosine`: cosine similarity of the flattened outputs (1.0 when both are all zero)
- `sqnr_db`: 10 log10(sum ref^2 / sum (cand - ref)^2); null in JSON when the outputs are identical

An output passes when max_abs <= atol + rtol * max|reference| and, where the reference carries
signal well above the absolute tolerance (RMS > 100 * atol), also cosine >= min_cosine and
sqnr_db >= min_sqnr_db. (An output whose values all sit near zero, such as a saturated sigmoid
on random inputs, has no meaningful SQNR: its error is judged by max_abs alone.) NaN/Inf must sit
at the same positions. Integer and boolean outputs must match exactly.
Tolerances are chosen by precision: the compile precision, loosened to the output's dtype.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from mcc.toolchain import ir
from mcc.toolchain.errors import UsageError


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    min_cosine: float
    min_sqnr_db: float


TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-3, min_cosine=0.99999, min_sqnr_db=60.0),
    "fp16": Tolerance(atol=1e-2, rtol=1e-2, min_cosine=0.999, min_sqnr_db=30.0),
    "int8": Tolerance(atol=5e-2, rtol=5e-2, min_cosine=0.99, min_sqnr_db=15.0),
    # int8 where the accuracy budget allows, float32 elsewhere (passes/quantize/mixed.py)
    "mixed": Tolerance(atol=5e-2, rtol=5e-2, min_cosine=0.99, min_sqnr_db=15.0),
}
_LOOSENESS = ["fp32", "fp16", "int8", "mixed"]
#: cosine/SQNR are judged only when the reference RMS exceeds this many atol
SIGNAL_FLOOR = 100.0


def loosest(*precisions: str) -> str:
    """The precision with the loosest tolerances among `precisions`."""
    return max(precisions, key=_LOOSENESS.index)


def tolerance_for(precision: str, dtype: np.dtype) -> tuple[str, Tolerance]:
    """The tolerance set for a compile precision and an output dtype (the looser of the two)."""
    if dtype.name.startswith(("float8", "float4")):
        by_dtype = "int8"  # 2-3 mantissa bits: as coarse as int8 quantization
    elif dtype in (np.float16,) or dtype.name == "bfloat16":
        by_dtype = "fp16"
    else:
        by_dtype = "fp32"
    chosen = loosest(precision, by_dtype)
    return chosen, TOLERANCES[chosen]


@dataclass
class OutputReport:
    name: str
    dtype: str
    shape: list[int]
    max_abs: float
    max_rel: float
    cosine: float
    sqnr_db: float | None
    tolerance: str
    passed: bool
    reason: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def random_inputs(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random inputs for every real graph input, in the given static shapes."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for value in ir.graph_inputs(model):
        dtype = ir.tensor_dtype(value.type.tensor_type.elem_type)
        shape = shapes[value.name]
        if dtype == np.bool_:
            array = rng.integers(0, 2, size=shape).astype(np.bool_)
        elif np.issubdtype(dtype, np.integer):
            array = rng.integers(0, index_bound(model, value.name), size=shape).astype(dtype)
        else:
            array = rng.uniform(-1.0, 1.0, size=shape).astype(dtype)
        inputs[value.name] = array
    return inputs


def index_bound(model: onnx.ModelProto, name: str, default: int = 128) -> int:
    """Exclusive upper bound for random integers fed to `name`.

    When the input indexes a constant table (Gather/GatherElements data), values stay inside it;
    otherwise [0, default).
    """
    shapes = {tensor.name: tuple(tensor.dims) for tensor in model.graph.initializer}
    bound = default
    for node in model.graph.node:
        if node.op_type in ("Gather", "GatherElements") and len(node.input) > 1 and node.input[1] == name:
            table = shapes.get(node.input[0])
            if table:
                axis = next((attr.i for attr in node.attribute if attr.name == "axis"), 0)
                bound = min(bound, table[axis])
    return max(bound, 1)


def load_inputs(path: str | Path, model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Inputs from an `.npz` file, checked against the model's inputs, dtypes and shapes."""
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single array, not named arrays (save with np.savez(path, name=array))")
        with archive:
            provided = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"--inputs {path}: cannot read as .npz ({first})") from None
    inputs = {}
    for value in ir.graph_inputs(model):
        if value.name not in provided:
            raise UsageError(f"--inputs {path}: no array for input '{value.name}' (has: {', '.join(provided) or 'none'})")
        array = provided[value.name]
        dtype = ir.tensor_dtype(value.type.tensor_type.elem_type)
        if tuple(array.shape) != tuple(shapes[value.name]):
            raise UsageError(
                f"--inputs {path}: '{value.name}' has shape {'x'.join(map(str, array.shape))}, "
                f"the model expects {'x'.join(map(str, shapes[value.name]))} (set it with --input-shape)"
            )
        if array.dtype != dtype:
            if not np.can_cast(array.dtype, dtype, casting="same_kind"):
                raise UsageError(f"--inputs {path}: '{value.name}' is {array.dtype}, the model expects {dtype}")
            array = array.astype(dtype)
        inputs[value.name] = array
    return inputs


def compare(name: str, candidate: np.ndarray, reference: np.ndarray, precision: str = "fp32",
            min_sqnr_db: float | None = None) -> OutputReport:
    """Metrics and verdict for one output.

    With `min_sqnr_db` (the user's accuracy budget, `--min-sqnr-db`) a float output passes when its
    SQNR reaches the budget and NaN/Inf sit where the reference has them, instead of meeting the
    precision's tolerance set.
    """
    label, tol = tolerance_for(precision, reference.dtype)
    shape = list(reference.shape)
    if candidate.shape != reference.shape:
        return OutputReport(name, str(reference.dtype), shape, math.inf, math.inf, 0.0, 0.0, label, False,
                            f"shape {list(candidate.shape)} != reference {shape}")
    if candidate.dtype != reference.dtype:
        return OutputReport(name, str(reference.dtype), shape, math.inf, math.inf, 0.0, 0.0, label, False,
                            f"dtype {candidate.dtype} != reference {reference.dtype}")
    if reference.size == 0:  # nothing to differ: equal shapes and dtypes are the whole comparison
        return OutputReport(name, str(reference.dtype), shape, 0.0, 0.0, 1.0, None, label, True)
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    finite = np.isfinite(ref) & np.isfinite(cand)
    same_nonfinite = bool(np.all((np.isfinite(ref) == np.isfinite(cand)) & (finite | (ref == cand) | (np.isnan(ref) & np.isnan(cand)))))
    diff = np.abs(cand[finite] - ref[finite]) if finite.any() else np.zeros(1)
    ref_f, cand_f = ref[finite], cand[finite]
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / (np.abs(ref_f) + tol.atol)).max()) if diff.size else 0.0
    norm = float(np.linalg.norm(ref_f) * np.linalg.norm(cand_f))
    if norm == 0.0:
        cosine = 1.0 if not (np.any(ref_f) or np.any(cand_f)) else 0.0
    else:
        cosine = float(np.dot(ref_f.ravel(), cand_f.ravel()) / norm)
    noise = float(np.sum((cand_f - ref_f) ** 2))
    signal = float(np.sum(ref_f**2))
    if noise == 0.0:
        sqnr = None
    elif signal == 0.0:
        sqnr = -math.inf
    else:
        sqnr = 10.0 * math.log10(signal / noise)

    # ml_dtypes' bfloat16/float8/float4 are floats numpy does not classify as floating
    exact = not (np.issubdtype(reference.dtype, np.floating) or reference.dtype.name.startswith(("bfloat16", "float8",
                                                                                                 "float4")))
    if exact:
        label = "exact"
        passed = max_abs == 0.0 and same_nonfinite
        reason = "; ".join(([] if max_abs == 0.0 else ["integer output differs"])
                           + ([] if same_nonfinite else ["NaN/Inf positions differ"]))
    elif min_sqnr_db is not None:
        label = f"budget: SQNR >= {min_sqnr_db:g} dB"
        reasons = [] if same_nonfinite else ["NaN/Inf positions differ"]
        if sqnr is not None and sqnr < min_sqnr_db:
            reasons.append(f"SQNR {sqnr:.1f} dB < the budget {min_sqnr_db:g} dB")
        passed, reason = not reasons, "; ".join(reasons)
    else:
        scale = float(np.abs(ref_f).max()) if ref_f.size else 0.0
        reasons = []
        if not same_nonfinite:
            reasons.append("NaN/Inf positions differ")
        if max_abs > tol.atol + tol.rtol * scale:
            reasons.append(f"max_abs {max_abs:.3g} > {tol.atol:g} + {tol.rtol:g} * {scale:.3g}")
        rms = math.sqrt(signal / ref_f.size) if ref_f.size else 0.0
        if rms > SIGNAL_FLOOR * tol.atol:
            if cosine < tol.min_cosine:
                reasons.append(f"cosine {cosine:.6f} < {tol.min_cosine}")
            if sqnr is not None and sqnr < tol.min_sqnr_db:
                reasons.append(f"SQNR {sqnr:.1f} dB < {tol.min_sqnr_db} dB")
        passed, reason = not reasons, "; ".join(reasons)
    return OutputReport(name, str(reference.dtype), shape, max_abs, max_rel, cosine, sqnr, label, passed, reason)
