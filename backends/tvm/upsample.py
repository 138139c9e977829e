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
    from mcc.backends.tvm.common import rewrite_functions

    rewriter = _make_rewriter()(mod)
    return rewrite_functions(mod, rewriter), rewriter.count


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


def _static_shape(expr) -> list[int] | None:
    import tvm

    shape = getattr(expr.ty, "shape", None)
    if shape is None or not all(isinstance(d, tvm.tirx.IntImm) for d in shape):
        return None
    return [int(d) for d in shape]


def _make_rewriter():
    import tvm
    from tvm import relax
    from tvm.ir.expr import GenericConst

    transpose_op = tvm.ir.Op.get("relax.nn.conv2d_transpose")

    @relax.expr_functor.mutator
    class DepthToSpace(relax.PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.count = 0

        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if not (isinstance(call.op, tvm.ir.Op) and call.op.same_as(transpose_op)):
                return call
            data, weight = call.args
            if not isinstance(weight, GenericConst):
                return call
            values = weight.value.numpy()
            shape = _static_shape(data)
            if values.ndim != 4 or shape is None or len(shape) != 4 or why_not(call.attrs, values.shape):
                return call
            batch, _, height, width = shape
            _, outputs, kh, kw = values.shape
            out_dtype = str(getattr(call.ty, "dtype", "")) or str(values.dtype)
            z = self.builder_.emit(relax.op.nn.conv2d(data, relax.const(pointwise_weight(values)), out_dtype=out_dtype))
            blocks = self.builder_.emit(relax.op.reshape(z, [batch, outputs, kh, kw, height, width]))
            moved = self.builder_.emit(relax.op.permute_dims(blocks, [0, 1, 4, 2, 5, 3]))
            self.count += 1
            return relax.op.reshape(moved, [batch, outputs, height * kh, width * kw])

    return DepthToSpace
