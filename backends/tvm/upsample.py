"""A transposed convolution whose kernel is its stride becomes a 1x1 convolution and a depth-to-space.

Segmentation and detection heads upsample with `ConvTranspose(kernel = stride = 2)` (PP-OCRv5
det's two). TVM 0.27 legalizes every transposed convolution as a convolution over the input
dilated with zeros: it writes the dilated and the padded input out in two scalar passes over a
tensor 4x the input, then runs a dense 2x2 convolution of which 3 of 4 products multiply a zero.
PP-OCRv5 det's 24 -> 1 channel head at 160 x 160 took 2.86 ms for 2.5 M multiply-adds.

When the kernel equals the stride and there is no padding, every output pixel takes exactly one
kernel tap from exactly one input pixel:

    y[n, o, h*kh + i, w*kw + j] = sum over c of x[n, c, h, w] * W[c, o, i, j]

which is a 1x1 convolution to o*kh*kw + i*kw + j channels followed by moving those channels into
the kh x kw block they belong to (ONNX's DepthToSpace in CRD order):

    z = conv2d(x, W'), W'[o*kh*kw + i*kw + j, c, 0, 0] = W[c, o, i, j]
    y = reshape(permute_dims(reshape(z, [n, o, kh, kw, H, W]), [0, 1, 4, 2, 5, 3]), [n, o, H*kh, W*kw])

The same products are summed over the same channels, so the result differs only by summation
order. Applied (Relax, before the other target rewrites, CPU targets) to `conv2d_transpose` in
NCHW/IOHW with a static input shape, a constant weight, one group, no dilation, no padding and
no output padding.
"""

from __future__ import annotations

import numpy as np


def as_depth_to_space(mod, target):
    """(module, number of transposed convolutions rewritten); unchanged for non-CPU targets."""
    if target.kind.name != "llvm":
        return mod, 0
    from mcc.backends.tvm.common import rewrite_calls

    return rewrite_calls(mod, "relax.nn.conv2d_transpose", _as_depth_to_space)


def pointwise_weight(weight: np.ndarray) -> np.ndarray:
    """IOHW [c, o, kh, kw] -> OIHW [o * kh * kw, c, 1, 1], output channel o*kh*kw + i*kw + j."""
    channels, outputs, kh, kw = weight.shape
    return np.ascontiguousarray(weight.transpose(1, 2, 3, 0).reshape(outputs * kh * kw, channels, 1, 1))


def why_not(attrs, weight_shape) -> str | None:
    """The reason a conv2d_transpose call is not rewritten, or None when it is."""
    def ints(values) -> list[int]:
        return [int(v) for v in values]

    if str(attrs.data_layout) != "NCHW" or str(attrs.kernel_layout) != "IOHW" or str(attrs.out_layout) != "NCHW":
        return "not NCHW/IOHW"
    if int(attrs.groups) != 1:
        return "grouped"
    if ints(attrs.strides) != list(weight_shape[2:]):
        return "the kernel is not the stride"
    if any(ints(attrs.padding)) or any(ints(attrs.output_padding)) or ints(attrs.dilation) != [1, 1]:
        return "padded or dilated"
    return None


def _as_depth_to_space(call, builder):
    """The 1x1 convolution and depth-to-space for one conv2d_transpose call, or None."""
    from tvm import relax
    from tvm.ir.expr import GenericConst

    from mcc.backends.tvm.common import static_shape

    data, weight = call.args
    if not isinstance(weight, GenericConst):
        return None
    values = weight.value.numpy()
    shape = static_shape(data)
    if values.ndim != 4 or shape is None or len(shape) != 4 or why_not(call.attrs, values.shape):
        return None
    batch, _, height, width = shape
    _, outputs, kh, kw = values.shape
    out_dtype = str(getattr(call.ty, "dtype", "")) or str(values.dtype)
    z = builder.emit(relax.op.nn.conv2d(data, relax.const(pointwise_weight(values)), out_dtype=out_dtype))
    blocks = builder.emit(relax.op.reshape(z, [batch, outputs, kh, kw, height, width]))
    moved = builder.emit(relax.op.permute_dims(blocks, [0, 1, 4, 2, 5, 3]))
    return relax.op.reshape(moved, [batch, outputs, height * kh, width * kw])
