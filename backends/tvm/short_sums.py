"""Sums over at most 4 elements become additions of slices.

An STFT magnitude as recognize-magnitude writes it (silero VAD: `ReduceL2` over the real and
imaginary halves, an axis of 2) reaches TVM as `sqrt(sum(x * x, axis))`. A sum is a reduction,
and TVM's FuseOps gives a reduction a kernel of its own: the slice before it and the square root
after it become two more. The original graph's `sqrt(re^2 + im^2)` was one elementwise kernel, so
the pass that cut six nodes to three cost two kernel launches (silero: 24.5 against 24.2 us).

    sum(x, axis=a)  ->  x[.., 0:1, ..] + x[.., 1:2, ..] (+ ...), squeezed unless keepdims

Additions of slices are elementwise, so the whole chain fuses into one kernel again. TVM's sum
adds the elements in index order starting from +0; `0 + x0` is `x0` (but for the sign of a zero),
so the additions here, left to right in the same (row-major) order, give the same results (a sum
of negative zeros stays -0 here, +0 in TVM's).

Applied (Relax, before legalization, CPU targets) to every `sum` of a static-shape tensor whose
reduced axes hold at most `MAX_ELEMENTS` elements in all.
"""

from __future__ import annotations

import itertools

#: sums over at most this many elements are unrolled
MAX_ELEMENTS = 4


def unroll_short_sums(mod, target):
    """(module, number of sums rewritten); unchanged for non-CPU targets."""
    if target.kind.name != "llvm":
        return mod, 0
    from mcc.backends.tvm.common import rewrite_calls

    return rewrite_calls(mod, "relax.sum", _as_additions)


def _as_additions(call, builder):
    from tvm import relax

    from mcc.backends.tvm.common import static_shape

    shape = static_shape(call.args[0])
    if shape is None or not shape:
        return None
    rank = len(shape)
    axes = (sorted(int(a) % rank for a in call.attrs.axis) if call.attrs.axis is not None else list(range(rank)))
    count = 1
    for axis in axes:
        count *= shape[axis]
    if count > MAX_ELEMENTS or count < 1:
        return None
    # one slice per element, added in the reduction's index order (row-major over the axes)
    total = None
    for index in itertools.product(*(range(shape[axis]) for axis in axes)):
        part = builder.emit(relax.op.strided_slice(call.args[0], axes=axes, begin=list(index),
                                                   end=[i + 1 for i in index]))
        total = part if total is None else builder.emit(relax.op.add(total, part))
    result = total
    if not call.attrs.keepdims:
        result = relax.op.squeeze(result, axis=axes) if len(axes) < rank else relax.op.reshape(result, [])
    return result
