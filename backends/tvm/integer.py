"""Quantized convolutions and matmuls lowered to integer kernels (Relax rewrite, before legalization).

TVM 0.27 imports a QDQ model as float math: the weight's DequantizeLinear is folded to float32,
the convolution runs in float and the activation's quantize -> dequantize pair is fake-quant
(shared/notes/tvm-0.27.md, section 7), so an int8 model is no faster than its float original.
This rewrite turns

    conv2d(dequantize(xq, sx, zx), dequantize(Wq, sw[o], 0, axis=0))

into an integer convolution with int32 accumulation and a float epilogue:

    xu  = xq + 128 (as uint8, when xq is int8)          zu = zx + 128 (or zx for uint8)
    acc = conv2d(pad(xu, value=zu), Wq, out_dtype=int32)
    y   = float(acc) * (sx * sw[o]) - sx * sw[o] * zu * sum(Wq[o])

which is exact up to the float32 rounding of the epilogue: sum((xu - zu) * Wq) is the
convolution of the dequantized operands divided by sx * sw[o], and padding with zu is padding
the float input with 0. uint8 x int8 is what x86's VNNI instruction (vpdpbusd: 64 multiply-adds
of u8 x s8 into 16 int32 lanes) computes; mcc's default schedules tensorize these kernels with it
(schedules/integer.py). The rewrite applies only to targets with that instruction: elsewhere an
integer convolution would run as widened int32 multiplies, slower than float FMAs.

Matmuls the same way: `matmul(dequantize(xq), dequantize(Wq [K, N], axis=1))`, or a Gemm's
`permute_dims(dequantize(Wq [N, K], axis=0))`, become a uint8 x int8 -> int32 matmul with the
per-column epilogue float(acc) * sx * sw[n] - sx * sw[n] * zu * sum_k Wq[k, n].

A depthwise convolution (one input channel per group) has no channel reduction to group by 4:
it reads the uint8 activations (padded with the zero point), converts them in registers and
multiply-adds integer-valued float weights, which float32 lanes sum exactly (at most
kh * kw * 255 * 128 < 2^24), at FMA speed and on a quarter of the input bytes; the epilogue is
the one above, `float(acc) * (sx * sw[o]) - sx * sw[o] * zu * sum(Wq[o])`.

Before that rewrite, a per-tensor quantize moves above the channel concatenations and max
poolings it reads (`_make_hoister`), so it fuses into the epilogue of the convolution before it,
and int8 activations are quantized to uint8 directly (zero point + 128) rather than converted.

Shapes the kernels need: input channels (the reduction K) a multiple of 4 (a VNNI group) and
output channels (columns) a multiple of 16 (one vector of int32 lanes); others are padded with zero
weights (and the output sliced back); an output width without a divisor that gives the register
tile many multiply-adds per load is computed a few columns wider; ungrouped or depthwise NCHW/OIHW
convolutions with scalar activation quantization and zero weight zero points. Anything else keeps
TVM's float lowering.
"""

from __future__ import annotations

import numpy as np

#: output channels of one int32 accumulator vector (AVX-512: 16 lanes)
CHANNEL_BLOCK = 16
#: input channels one VNNI multiply-add reduces per lane
REDUCTION_GROUP = 4
#: most output columns added to give the register tile a better divisor (integer schedule)
MAX_EXTRA_COLUMNS = 7
#: ... and only when they raise the useful multiply-adds per load by this factor at least
#: (PP-OCRv5 rec int8: 160 -> 162 columns for 7 % more ran the model 5 % slower, the padding a pass
#: of its own after each depthwise convolution; SqueezeNet's 13 -> 15 columns double it)
MIN_EXTRA_COLUMN_GAIN = 1.25


def target_has_integer_dot(target) -> bool:
    """Whether the LLVM target has AVX-512 VNNI (u8 x s8 -> s32 dot products)."""
    from tvm.target import codegen

    try:
        return target.kind.name == "llvm" and bool(codegen.target_has_features("avx512vnni", target))
    except Exception:  # a target LLVM cannot describe
        return False


def _extra_columns(width: int, out_channels: int) -> int:
    """Columns to add so the integer schedule's register tile does the most useful multiply-adds
    per load (`schedules/integer.py`, `register_tile`): a width with no good divisor (a prime one
    gives 1-pixel tiles, each result stored to another cache line) is computed a few columns wider.
    0 for narrow outputs: a 1-D convolution's width of 1 is tiled along its height."""
    from mcc.backends.tvm.schedules.integer import multiply_adds_per_load

    if width < 2:
        return 0
    blocks = -(-out_channels // CHANNEL_BLOCK)

    def useful(extra: int) -> float:
        return multiply_adds_per_load(blocks * CHANNEL_BLOCK, width + extra) * width / (width + extra)

    best = max(range(MAX_EXTRA_COLUMNS + 1), key=lambda extra: (useful(extra), -extra))
    # the padded input is written by the kernel before, as a pad stage its tile cannot absorb (a
    # pass over float32 memory of its own): worth it only for a clearly better tile
    return best if useful(best) >= MIN_EXTRA_COLUMN_GAIN * useful(0) else 0


def _constant(expr):
    """The numpy value of a Relax constant, else None."""
    from tvm.ir.expr import GenericConst  # TVM 0.27's relax.const

    return expr.value.numpy() if isinstance(expr, GenericConst) else None


def lower_quantized_kernels(mod, target):
    """(module, number of convolutions and matmuls rewritten to integer kernels); the module
    unchanged when the target has no integer dot product or nothing matches."""
    if not target_has_integer_dot(target):
        return mod, 0
    from mcc.backends.tvm.common import rewrite_functions, use_counts

    for _ in range(8):  # a quantize moved above a pooling meets the concatenation next round
        hoister = _make_hoister(use_counts(mod))(mod)
        mod = rewrite_functions(mod, hoister)
        if not hoister.count:
            break
    rewriter = _make_rewriter()(mod)
    return rewrite_functions(mod, rewriter), rewriter.count


def _per_tensor(quantize) -> bool:
    """Whether a relax.quantize has one constant scale and zero point."""
    return all(value is not None and value.size == 1 for value in (_constant(arg) for arg in quantize.args[1:]))


def _make_hoister(uses: dict):
    """A mutator that moves per-tensor quantizes above the channel concatenations and max poolings
    they read (only they):

        quantize(concat([a, b])) = concat([quantize(a), quantize(b)])
        quantize(max_pool2d(x))  = max_pool2d(quantize(x))

    Both are exact: quantize is elementwise with one scale, and monotone (never decreasing), and
    an integer max pool pads with its type's lowest value as a float one pads with -inf. The
    quantize then fuses into the epilogue of the convolution before it, which writes 1-byte
    integers instead of 4-byte floats, and the concatenation and the pooling move a quarter of
    the bytes (SqueezeNet int8: its first convolution's float output was written, pooled, read
    and quantized in a separate pass)."""
    import tvm
    from tvm import relax

    from mcc.backends.tvm.common import bound_value

    quantize_op = tvm.ir.Op.get("relax.quantize")
    concat_op = tvm.ir.Op.get("relax.concat")
    max_pool_op = tvm.ir.Op.get("relax.nn.max_pool2d")

    @relax.expr_functor.mutator
    class QuantizeHoister(relax.PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.count = 0

        def visit_call_(self, call):
            original = call
            call = self.visit_expr_post_order(call)
            if not (isinstance(call.op, tvm.ir.Op) and call.op.same_as(quantize_op) and _per_tensor(call)):
                return call
            source = original.args[0]
            if not isinstance(source, relax.Var) or uses.get(source, 0) != 1:
                return call
            producer = bound_value(self, call.args[0])
            if not isinstance(producer, relax.Call) or not isinstance(producer.op, tvm.ir.Op):
                return call

            def quantized(value):
                return self.builder_.emit(relax.Call(call.op, [value, *call.args[1:]], call.attrs))

            if producer.op.same_as(max_pool_op):
                self.count += 1
                return relax.Call(producer.op, [quantized(producer.args[0])], producer.attrs)
            if producer.op.same_as(concat_op) and isinstance(producer.args[0], relax.Tuple):
                self.count += 1
                return relax.Call(producer.op, [relax.Tuple([quantized(part) for part in producer.args[0].fields])],
                                  producer.attrs)
            return call

    return QuantizeHoister


def _make_rewriter():
    import tvm
    from tvm import relax

    from mcc.backends.tvm.common import bound_value

    conv2d_op = tvm.ir.Op.get("relax.nn.conv2d")
    matmul_op = tvm.ir.Op.get("relax.matmul")
    permute_dims_op = tvm.ir.Op.get("relax.permute_dims")
    dequantize_op = tvm.ir.Op.get("relax.dequantize")
    quantize_op = tvm.ir.Op.get("relax.quantize")
    concat_op = tvm.ir.Op.get("relax.concat")
    max_pool_op = tvm.ir.Op.get("relax.nn.max_pool2d")

    @relax.expr_functor.mutator
    class QuantizedKernelRewriter(relax.PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.count = 0
            self.unsigned = {}  # int8 activation -> its uint8 version

        def _producer(self, expr):
            return bound_value(self, expr)

        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if not isinstance(call.op, tvm.ir.Op):
                return call
            if call.op.same_as(conv2d_op):
                replacement = self._integer_conv(call)
            elif call.op.same_as(matmul_op):
                replacement = self._integer_matmul(call)
            else:
                return call
            return call if replacement is None else replacement

        def _activation(self, data):
            """(xq, sx, zx, dtype) of a per-tensor dequantized activation, or None."""
            if not (isinstance(data, relax.Call) and data.op.same_as(dequantize_op)):
                return None
            xq, sx, zx = data.args
            sx, zx = _constant(sx), _constant(zx)
            dtype = str(xq.ty.dtype)
            if sx is None or zx is None or sx.size != 1 or zx.size != 1 or dtype not in ("int8", "uint8"):
                return None
            return xq, float(sx.reshape(())), int(zx.reshape(())), dtype

        def _to_uint8(self, xq, dtype):
            """uint8 activations, what vpdpbusd's unsigned operand needs (+ 128 for int8): a
            per-tensor quantize to int8 becomes one to uint8 with the zero point + 128, and a
            concatenation or max pooling of such the same of their uint8 versions (+ 128 is
            monotone); else a cast. Each int8 tensor is converted once."""
            if dtype == "uint8":
                return xq
            if xq in self.unsigned:
                return self.unsigned[xq]
            producer = self._producer(xq)
            converted = None
            if isinstance(producer, relax.Call) and isinstance(producer.op, tvm.ir.Op):
                if producer.op.same_as(quantize_op) and _per_tensor(producer):
                    zero_point = int(_constant(producer.args[2]).reshape(())) + 128
                    converted = relax.op.quantize(producer.args[0], producer.args[1],
                                                  relax.const(zero_point, "uint8"),
                                                  axis=int(producer.attrs.axis), out_dtype="uint8")
                elif producer.op.same_as(max_pool_op):
                    converted = relax.Call(producer.op, [self._to_uint8(producer.args[0], dtype)], producer.attrs)
                elif producer.op.same_as(concat_op) and isinstance(producer.args[0], relax.Tuple):
                    converted = relax.Call(producer.op, [relax.Tuple(
                        [self._to_uint8(part, dtype) for part in producer.args[0].fields])], producer.attrs)
            if converted is None:
                converted = relax.op.astype(
                    relax.op.add(relax.op.astype(xq, "int16"), relax.const(128, "int16")), "uint8")
            self.unsigned[xq] = self.builder_.emit(converted)
            return self.unsigned[xq]

        def _integer_matmul(self, call):
            """matmul(dequantize(xq), W) with W = dequantize(Wq [K, N], axis 1) or
            permute_dims(dequantize(Wq [N, K], axis 0)) (Gemm with transB)."""
            if str(call.ty.dtype) != "float32":
                return None
            data, weight = (self._producer(arg) for arg in call.args)
            activation = self._activation(data)
            if activation is None:
                return None
            xq, sx, zx, x_dtype = activation
            transposed = False
            if isinstance(weight, relax.Call) and weight.op.same_as(permute_dims_op):
                axes = weight.attrs.axes
                if axes is None or [int(a) for a in axes] != [1, 0]:
                    return None
                weight, transposed = self._producer(weight.args[0]), True
            if not (isinstance(weight, relax.Call) and weight.op.same_as(dequantize_op)):
                return None
            wq, sw, zw = (_constant(arg) for arg in weight.args)
            if any(value is None for value in (wq, sw, zw)) or wq.dtype != np.int8 or wq.ndim != 2 or np.any(zw != 0):
                return None
            axis = int(weight.attrs.axis) % 2
            if transposed:
                wq, axis = wq.T, 1 - axis
            if axis != 1 and sw.size != 1:  # scales must run along the output columns
                return None
            depth, columns = wq.shape
            sw = np.broadcast_to(sw.astype(np.float64).reshape(-1), (columns,))
            zu = zx + (128 if x_dtype == "int8" else 0)
            emit = self.builder_.emit
            xu = self._to_uint8(xq, x_dtype)
            extra_depth = -depth % REDUCTION_GROUP
            if extra_depth:  # reduction to a multiple of 4: zero weights for the added values
                rank = len(xq.ty.shape)
                xu = emit(relax.op.nn.pad(xu, [0, 0] * (rank - 1) + [0, extra_depth], pad_value=float(zu)))
            blocks = -(-columns // CHANNEL_BLOCK)
            packed = np.zeros((depth + extra_depth, blocks * CHANNEL_BLOCK), np.int8)
            packed[:depth, :columns] = wq
            accumulated = emit(relax.op.matmul(xu, relax.const(packed), out_dtype="int32"))
            if packed.shape[1] != columns:
                rank = len(xq.ty.shape)
                accumulated = emit(relax.op.strided_slice(accumulated, axes=[rank - 1], begin=[0], end=[columns]))
            scale = sx * sw
            result = relax.op.multiply(relax.op.astype(accumulated, "float32"), relax.const(scale.astype(np.float32)))
            if zu != 0:
                offset = -scale * zu * wq.astype(np.int64).sum(axis=0)
                result = relax.op.add(emit(result), relax.const(offset.astype(np.float32)))
            self.count += 1
            return result

        def _integer_conv(self, call):
            attrs = call.attrs
            if str(call.ty.dtype) != "float32":
                return None
            if (str(attrs.data_layout) != "NCHW" or str(attrs.kernel_layout) != "OIHW"
                    or str(attrs.out_layout) != "NCHW"):
                return None
            data, weight = (self._producer(arg) for arg in call.args)
            activation = self._activation(data)
            if activation is None or not (isinstance(weight, relax.Call) and weight.op.same_as(dequantize_op)):
                return None
            xq, sx, zx, x_dtype = activation
            wq, sw, zw = (_constant(arg) for arg in weight.args)
            if (any(value is None for value in (wq, sw, zw)) or wq.dtype != np.int8 or wq.ndim != 4
                    or np.any(zw != 0) or (int(weight.attrs.axis) != 0 and sw.size != 1)):
                return None  # per-channel scales must run along the output channels
            out_channels, in_channels = wq.shape[:2]
            sw = np.broadcast_to(sw.astype(np.float64).reshape(-1), (out_channels,))
            zu = zx + (128 if x_dtype == "int8" else 0)
            if int(attrs.groups) != 1:
                return self._exact_depthwise(call, xq, sx * sw, zu, x_dtype, wq)

            emit = self.builder_.emit
            xu = self._to_uint8(xq, x_dtype)
            padding = [int(p) for p in attrs.padding]
            strides = [int(v) for v in attrs.strides]
            dilation = [int(v) for v in attrs.dilation]
            # input channels to a multiple of 4 (an RGB image's 3): a zero weight for each added one
            extra_channels = -in_channels % REDUCTION_GROUP
            # an output width with no good register-tile divisor (squeezenet's first 111) is
            # computed a few columns wider and sliced back
            in_width = int(xq.ty.shape[3])
            width = (in_width + padding[1] + padding[3] - dilation[1] * (wq.shape[3] - 1) - 1) // strides[1] + 1
            extra_columns = _extra_columns(width, out_channels)
            padding[3] += extra_columns * strides[1]
            if (any(padding) and zu != 0) or extra_channels:
                # padding the float input with 0 is padding the integers with the zero point
                top, left, bottom, right = padding
                xu = emit(relax.op.nn.pad(xu, [0, 0, 0, extra_channels, top, bottom, left, right],
                                          pad_value=float(zu)))
                padding = [0, 0, 0, 0]
            blocks = -(-out_channels // CHANNEL_BLOCK)
            padded = np.zeros((blocks * CHANNEL_BLOCK, in_channels + extra_channels, *wq.shape[2:]), np.int8)
            padded[:out_channels, :in_channels] = wq
            accumulated = emit(relax.op.nn.conv2d(xu, relax.const(padded), strides=strides, padding=padding,
                                                  dilation=dilation, out_dtype="int32"))
            if padded.shape[0] != out_channels or extra_columns:
                accumulated = emit(relax.op.strided_slice(accumulated, axes=[1, 3], begin=[0, 0],
                                                          end=[out_channels, width]))
            self.count += 1
            return self._channel_epilogue(relax.op.astype(accumulated, "float32"), sx * sw, zu, wq)

        def _channel_epilogue(self, accumulated, scale, zu: int, wq):
            """A convolution's integer sums (as float32) back to the float result, per output
            channel o: `acc * scale[o] - scale[o] * zu * sum(Wq[o])`."""
            result = relax.op.multiply(accumulated, relax.const(scale.reshape(1, -1, 1, 1).astype(np.float32)))
            if zu != 0:
                offset = -scale * zu * wq.reshape(wq.shape[0], -1).astype(np.int64).sum(axis=1)
                result = relax.op.add(self.builder_.emit(result),
                                      relax.const(offset.reshape(1, -1, 1, 1).astype(np.float32)))
            return result

        def _exact_depthwise(self, call, xq, scale, zu: int, x_dtype: str, wq):
            """A quantized depthwise convolution (one input channel per group) on the uint8
            activations: `(conv2d(pad(xu, zu), float(Wq), groups) - zu * sum(Wq[o])) * (sx * sw[o])`.

            It has no channel reduction for vpdpbusd's groups of 4, and int32 multiplies
            (vpmulld) run at half the rate of float FMAs. Its products xu * Wq are integers of at
            most 255 * 128 and a sum of kh * kw of them stays below 2^24, so float32 lanes compute
            the integer sums exactly. The kernel reads uint8 (a quarter of the bytes; the
            convolution before it writes them) and converts in registers; its output is
            requantized in its epilogue. None for other grouped convolutions."""
            attrs = call.attrs
            groups = int(attrs.groups)
            taps = int(np.prod(wq.shape[2:]))
            # one input channel per group (the weight's second axis; then groups is the input's
            # channels); at most 514 taps: 514 * 255 * 128 < 2^24, every partial sum exact
            if wq.shape[1] != 1 or taps * 255 * 128 >= 2**24:
                return None
            emit = self.builder_.emit
            xu = self._to_uint8(xq, x_dtype)
            padding = [int(p) for p in attrs.padding]
            if any(padding) and zu != 0:  # the float input's 0 is the integers' zero point
                top, left, bottom, right = padding
                xu = emit(relax.op.nn.pad(xu, [0, 0, 0, 0, top, bottom, left, right], pad_value=float(zu)))
                padding = [0, 0, 0, 0]
            # uint8 data, integer-valued float32 weights: the convolution converts as it loads
            accumulated = emit(relax.op.nn.conv2d(
                xu, relax.const(wq.astype(np.float32)), strides=attrs.strides, padding=padding,
                dilation=attrs.dilation, groups=groups, out_dtype="float32"))
            self.count += 1
            return self._channel_epilogue(accumulated, scale, zu, wq)

    return QuantizedKernelRewriter
