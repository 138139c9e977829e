"""Float convolutions whose output channels miss a vector register's width get zero filters up to it.

mcc's default CPU schedule puts a convolution's vector lanes on the output width, or, when the
width has no divisor filling a register (13, 55, 109), on the output channels with the weights
packed at compile time (schedules/cpu.py, `plan_tile`). The second needs the channel count to be
a multiple of the lanes; SqueezeNet's classifier, a 512 -> 1000 1x1 convolution at 13 x 13, is
neither: it ran as 13-of-16-lane vectors at a third of the machine's peak, the model's slowest
kernel. Padding the filters to 1008 and slicing the output back lets the channel layout apply
(measured on that convolution alone: 2.2 against 3.3 ms, with 0.8 % more work).

Applied (Relax, before legalization, CPU targets) to ungrouped NCHW float convolutions with a
constant weight when the output width has no divisor of the full lane count, the channels are
not a multiple of it, and padding adds at most 1/8 more filters.
"""

from __future__ import annotations

import numpy as np

#: most extra work (added filters / filters) the padding may cost
MAX_PADDING_FRACTION = 0.125


def _lanes(target) -> int:
    from mcc.backends.tvm.schedules.cpu import CpuInfo

    return CpuInfo.from_target(target).lanes(32)


def pad_output_channels(mod, target):
    """(module, number of convolutions padded); unchanged for non-CPU targets."""
    if target.kind.name != "llvm":
        return mod, 0
    from mcc.backends.tvm.common import rewrite_functions

    rewriter = _make_rewriter(_lanes(target))(mod)
    return rewrite_functions(mod, rewriter), rewriter.count


def _make_rewriter(lanes: int):
    import tvm
    from tvm import relax
    from tvm.ir.expr import GenericConst

    from mcc.backends.tvm.common import bound_value

    conv2d_op = tvm.ir.Op.get("relax.nn.conv2d")

    @relax.expr_functor.mutator
    class ChannelPadder(relax.PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.count = 0

        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if not (isinstance(call.op, tvm.ir.Op) and call.op.same_as(conv2d_op)):
                return call
            replacement = self._padded(call)
            return call if replacement is None else replacement

        def _padded(self, call):
            attrs = call.attrs
            if (str(call.ty.dtype) != "float32" or int(attrs.groups) != 1 or str(attrs.data_layout) != "NCHW"
                    or str(attrs.kernel_layout) != "OIHW" or str(attrs.out_layout) != "NCHW"):
                return None
            weight = bound_value(self, call.args[1])
            if not isinstance(weight, GenericConst):
                return None
            values = weight.value.numpy()
            shape = [int(d) for d in call.ty.shape]
            out_channels, width = shape[1], shape[3]
            extra = -out_channels % lanes
            if (not extra or width % lanes == 0 or extra > MAX_PADDING_FRACTION * out_channels
                    or values.dtype != np.float32):
                return None
            padded = np.zeros((out_channels + extra, *values.shape[1:]), np.float32)
            padded[:out_channels] = values
            conv = self.builder_.emit(relax.op.nn.conv2d(
                call.args[0], relax.const(padded), strides=attrs.strides, padding=attrs.padding,
                dilation=attrs.dilation, data_layout="NCHW", kernel_layout="OIHW", out_dtype="float32"))
            self.count += 1
            return relax.op.strided_slice(conv, axes=[1], begin=[0], end=[out_channels])

    return ChannelPadder
