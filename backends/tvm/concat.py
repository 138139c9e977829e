"""Channel concatenations that feed a convolution or a pooling are distributed over their parts.

TVM 0.27 computes `concat` as a copy: every part is read and written once more. SqueezeNet's
Fire modules concatenate two expand convolutions along the channels and feed the result to the
next Fire's 1x1 squeeze convolution (or first to a max pool); these copies were ~0.8 ms of its
5-6 ms here. onnxruntime writes the parts in place and pays nothing. Two identities remove them:

    conv2d(concat([a, b], axis=1), W) = conv2d(a, W[:, :Ca]) + conv2d(b, W[:, Ca:])
    max_pool2d(concat([a, b], axis=1)) = concat([max_pool2d(a), max_pool2d(b)], axis=1)

The first reads each part once, as the convolution of the concatenation did, and adds the
partial results in the last convolution's epilogue (FuseOps fuses the add, the bias and the
activation into it); the partial output it writes has the convolution's channels, far fewer
than the concatenation's in a squeeze layer. It applies only there: where the output is larger
than the concatenation (SqueezeNet's 512 -> 1000 classifier), the partial outputs cost more
than the copy (measured 2.76 against 2.37 ms). The second moves the copy after the pooling, where
it is smaller, and exposes it to the first. The sum runs over the input channels in two parts
instead of one: the same function up to float rounding.

Applied (Relax, before legalization, CPU targets) where the concatenation runs along the
channels of NCHW tensors and nothing else reads it, to ungrouped float convolutions with a
constant weight, to the integer kernels of quantized ones (integer.py: uint8 parts whose int32
partial sums add exactly; a quantized SqueezeNet concatenates uint8 once its requantization moved
above the concatenation) and to max pooling.
"""

from __future__ import annotations


def distribute_concatenations(mod, target):
    """(module, number of concatenations removed or moved); unchanged for non-CPU targets."""
    if target.kind.name != "llvm":
        return mod, 0
    from mcc.backends.tvm.common import rewrite_functions, use_counts

    total = 0
    for _ in range(4):  # a pooled concatenation becomes one a convolution can take next round
        rewriter = _make_rewriter(use_counts(mod))(mod)
        mod = rewrite_functions(mod, rewriter)
        total += rewriter.count
        if not rewriter.count:
            break
    return mod, total


def _elements(shape) -> int:
    total = 1
    for dim in shape:
        total *= int(dim)
    return total


def _make_rewriter(uses: dict):
    import numpy as np
    import tvm
    from tvm import relax
    from tvm.ir.expr import GenericConst

    from mcc.backends.tvm.common import bound_value, static_shape

    conv2d_op = tvm.ir.Op.get("relax.nn.conv2d")
    max_pool_op = tvm.ir.Op.get("relax.nn.max_pool2d")
    concat_op = tvm.ir.Op.get("relax.concat")

    @relax.expr_functor.mutator
    class Distributor(relax.PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.count = 0

        def visit_call_(self, call):
            original = call
            call = self.visit_expr_post_order(call)
            if not isinstance(call.op, tvm.ir.Op):
                return call
            distribute = (self._conv if call.op.same_as(conv2d_op) else self._pool if call.op.same_as(max_pool_op)
                          else None)
            parts = None if distribute is None else self._channel_parts(original, call)
            replacement = None if parts is None else distribute(call, parts)
            if replacement is None:
                return call
            self.count += 1
            return replacement

        def _channel_parts(self, original, call):
            """The parts of the channel concatenation `call` reads (only it), or None."""
            source = original.args[0] if original.args else None
            if not isinstance(source, relax.Var) or uses.get(source, 0) != 1:
                return None
            concat = bound_value(self, call.args[0])
            if not (isinstance(concat, relax.Call) and isinstance(concat.op, tvm.ir.Op)
                    and concat.op.same_as(concat_op)):
                return None
            tensors = concat.args[0]
            if not isinstance(tensors, relax.Tuple) or len(tensors.fields) < 2:
                return None
            shapes = [static_shape(expr) for expr in (call.args[0], call, *tensors.fields)]
            if any(shape is None or len(shape) != 4 for shape in shapes) or int(concat.attrs.axis) % 4 != 1:
                return None
            return list(tensors.fields)

        def _conv(self, call, parts):
            attrs = call.attrs
            if (int(attrs.groups) != 1 or str(attrs.data_layout) != "NCHW"
                    or str(attrs.kernel_layout) != "OIHW" or str(attrs.out_layout) != "NCHW"):
                return None
            weight = bound_value(self, call.args[1])
            if not isinstance(weight, GenericConst):
                return None
            values = weight.value.numpy()
            out_dtype = str(call.ty.dtype)
            # a float convolution, or an integer kernel (integer.py: uint8 x int8 -> int32, whose
            # partial sums add exactly; each part's channels a multiple of its 4-channel groups)
            integer = out_dtype == "int32" and values.dtype == np.int8
            if not (integer or (out_dtype == "float32" and values.dtype == np.float32)):
                return None
            widths = [int(part.ty.shape[1]) for part in parts]
            if sum(widths) != values.shape[1] or (integer and any(width % 4 for width in widths)):
                return None
            # each part after the first writes and re-reads a partial output: worth it only when
            # those are smaller than the copy it saves (a squeeze layer, not a classifier that
            # widens 512 channels to 1000, where the split ran 1.16x slower)
            partial_bytes = _elements(call.ty.shape) * np.dtype(out_dtype).itemsize
            copied_bytes = _elements(call.args[0].ty.shape) * np.dtype(str(call.args[0].ty.dtype)).itemsize
            if (len(parts) - 1) * partial_bytes >= copied_bytes:
                return None
            result, start = None, 0
            for part, width in zip(parts, widths):
                piece = np.ascontiguousarray(values[:, start:start + width])
                start += width
                if result is not None:
                    result = self.builder_.emit(result)
                partial = relax.op.nn.conv2d(
                    part, relax.const(piece), strides=attrs.strides, padding=attrs.padding,
                    dilation=attrs.dilation, data_layout="NCHW", kernel_layout="OIHW", out_dtype=out_dtype)
                result = partial if result is None else relax.op.add(result, self.builder_.emit(partial))
            return result  # the last sum (or convolution) is bound where the original call was

        def _pool(self, call, parts):
            attrs = call.attrs
            if str(attrs.layout) != "NCHW" or str(attrs.out_layout) != "NCHW":
                return None
            pooled = [self.builder_.emit(relax.op.nn.max_pool2d(
                part, pool_size=attrs.pool_size, strides=attrs.strides, padding=attrs.padding,
                dilation=attrs.dilation, ceil_mode=bool(attrs.ceil_mode),
                count_include_pad=bool(attrs.count_include_pad), layout="NCHW")) for part in parts]
            return relax.op.concat(pooled, axis=1)

    return Distributor
