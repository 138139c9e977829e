"""Float convolutions whose output misses the register tile get zero filters, and extra columns, up to it.

mcc's default CPU schedule puts a convolution's vector lanes on the output width, or, when the
width has no divisor filling a register (13, 55, 109), on the output channels with the weights
packed at compile time (schedules/cpu.py, `plan_tile`). The second needs the channel count to be
a multiple of the lanes; SqueezeNet's classifier, a 512 -> 1000 1x1 convolution at 13 x 13, is
neither: it ran as 13-of-16-lane vectors at a third of the machine's peak, the model's slowest
kernel. Padding the filters to 1008 and slicing the output back lets the channel layout apply
(measured on that convolution alone: 2.2 against 3.3 ms, with 0.8 % more work).

The channel layout's rows run along the output width, so it also needs the width to have a
divisor of 4 or more. An STFT written as a strided conv1d (openwakeword's melspectrogram: 257
filters x 97 frames, both prime) has neither; it fell to the `dot-product` rule at ~36 GFLOP/s.
A wide output (>= 24) without such a divisor is computed a few columns wider (97 -> 98 = 7 x 14:
more right padding of the input, a stride's worth per column) and sliced back: that kernel ran
3.2x faster (0.44 against 1.4 ms for its two convolutions).

Applied (Relax, before legalization, CPU targets) to ungrouped NCHW/NCW float32/float16 convolutions with a
constant weight when the output width has no divisor of the full lane count: filters when the
channels are not a multiple of it and padding adds at most 1/8 more, columns as above.
"""

from __future__ import annotations

import numpy as np

#: most extra work (added filters / filters) the padding may cost
MAX_PADDING_FRACTION = 0.125


def extra_columns(width: int) -> int:
    """Output columns to add so a wide output with no divisor from 4 to 16 (a prime 97) gets one
    from 8 to 16, the register tile's rows; 0 when it has one or is narrower than 24."""
    if width < 24 or any(width % rows == 0 for rows in range(4, 17)):
        return 0
    return next((extra for extra in range(1, 8) if any((width + extra) % rows == 0 for rows in range(8, 17))), 0)


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

    conv_ops = {tvm.ir.Op.get("relax.nn.conv2d"): ("NCHW", "OIHW", relax.op.nn.conv2d),
                tvm.ir.Op.get("relax.nn.conv1d"): ("NCW", "OIW", relax.op.nn.conv1d)}

    @relax.expr_functor.mutator
    class ChannelPadder(relax.PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.count = 0

        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if not isinstance(call.op, tvm.ir.Op):
                return call
            layouts = next((value for op, value in conv_ops.items() if call.op.same_as(op)), None)
            replacement = None if layouts is None else self._padded(call, *layouts)
            return call if replacement is None else replacement

        def _padded(self, call, data_layout: str, kernel_layout: str, make_conv):
            attrs = call.attrs
            if (str(call.ty.dtype) not in ("float32", "float16") or int(attrs.groups) != 1 or str(attrs.data_layout) != data_layout
                    or str(attrs.kernel_layout) != kernel_layout or str(attrs.out_layout) != data_layout):
                return None
            weight = bound_value(self, call.args[1])
            if not isinstance(weight, GenericConst):
                return None
            values = weight.value.numpy()
            shape = [int(d) for d in call.ty.shape]
            out_channels, width = shape[1], shape[-1]
            if width % lanes == 0 or values.dtype != np.dtype(str(call.ty.dtype)):
                return None
            # to whole pairs of vectors where that is cheap (1000 -> 1024: a channels-last
            # tile then holds two vectors of channels per row), else to whole vectors
            extra = -out_channels % (2 * lanes)
            if extra > MAX_PADDING_FRACTION * out_channels:
                extra = -out_channels % lanes
            if extra > MAX_PADDING_FRACTION * out_channels:
                extra = 0
            columns = extra_columns(width)
            if not extra and not columns:
                return None
            padded = np.zeros((out_channels + extra, *values.shape[1:]), values.dtype)
            padded[:out_channels] = values
            padding = [int(p) for p in attrs.padding]
            padding[-1] += columns * int(attrs.strides[-1])  # the right end of the width
            conv = self.builder_.emit(make_conv(
                call.args[0], relax.const(padded), strides=attrs.strides, padding=padding,
                dilation=attrs.dilation, data_layout=data_layout, kernel_layout=kernel_layout,
                out_dtype=str(call.ty.dtype)))
            self.count += 1
            rank = len(shape)
            return relax.op.strided_slice(conv, axes=[1, rank - 1], begin=[0, 0], end=[out_channels, width])

    return ChannelPadder
