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

Shapes the kernels need: input channels (the reduction K) a multiple of 4 (a VNNI group) and
output channels (columns) a multiple of 16 (one vector of int32 lanes); others are padded with zero
weights (and the output sliced back); an output width with no divisor from 6 to 24 is computed a
few columns wider; ungrouped NCHW/OIHW convolutions with scalar activation quantization and zero
weight zero points. Anything else keeps TVM's float lowering.
"""

from __future__ import annotations

import numpy as np

#: output channels of one int32 accumulator vector (AVX-512: 16 lanes)
CHANNEL_BLOCK = 16
#: input channels one VNNI multiply-add reduces per lane
REDUCTION_GROUP = 4
#: fewest output pixels of one register tile: a prime output width (1-pixel tiles store each
#: result to another cache line: squeezenet's first convolution, 109 wide, ran slower than float)
MIN_PIXEL_TILE = 6


def target_has_integer_dot(target) -> bool:
    """Whether the LLVM target has AVX-512 VNNI (u8 x s8 -> s32 dot products)."""
    from tvm.target import codegen

    try:
        return target.kind.name == "llvm" and bool(codegen.target_has_features("avx512vnni", target))
    except Exception:  # a target LLVM cannot describe
        return False


def _extra_columns(width: int) -> int:
    """Columns to add so the output width has a divisor the integer schedule can tile by (0 when
    it has one, and for narrow outputs: a 1-D convolution's width of 1 is tiled along its height)."""
    if width < 2 * MIN_PIXEL_TILE:
        return 0
    for extra in range(0, 8):
        if any((width + extra) % tile == 0 for tile in range(MIN_PIXEL_TILE, 25)):
            return extra
    return 0


def _constant(expr):
    """The numpy value of a Relax constant, else None."""
    from tvm.ir.expr import GenericConst  # TVM 0.27's relax.const

    return expr.value.numpy() if isinstance(expr, GenericConst) else None


def lower_quantized_kernels(mod, target):
    """(module, number of convolutions and matmuls rewritten to integer kernels); the module
    unchanged when the target has no integer dot product or nothing matches."""
    if not target_has_integer_dot(target):
        return mod, 0
    from mcc.backends.tvm.common import rewrite_functions

    rewriter = _make_rewriter()(mod)
    return rewrite_functions(mod, rewriter), rewriter.count


def _make_rewriter():
    import tvm
    from tvm import relax

    from mcc.backends.tvm.common import bound_value

    conv2d_op = tvm.ir.Op.get("relax.nn.conv2d")
    matmul_op = tvm.ir.Op.get("relax.matmul")
    permute_dims_op = tvm.ir.Op.get("relax.permute_dims")
    dequantize_op = tvm.ir.Op.get("relax.dequantize")

    @relax.expr_functor.mutator
    class QuantizedKernelRewriter(relax.PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.count = 0

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
            """uint8 activations, what vpdpbusd's unsigned operand needs (+ 128 for int8)."""
            if dtype == "uint8":
                return xq
            return self.builder_.emit(relax.op.astype(
                relax.op.add(relax.op.astype(xq, "int16"), relax.const(128, "int16")), "uint8"))

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
            if (int(attrs.groups) != 1 or str(attrs.data_layout) != "NCHW" or str(attrs.kernel_layout) != "OIHW"
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

            emit = self.builder_.emit
            xu = self._to_uint8(xq, x_dtype)
            padding = [int(p) for p in attrs.padding]
            strides = [int(v) for v in attrs.strides]
            dilation = [int(v) for v in attrs.dilation]
            # input channels to a multiple of 4 (an RGB image's 3): a zero weight for each added one
            extra_channels = -in_channels % REDUCTION_GROUP
            # an output width with no register-tile divisor (squeezenet's first 109) is computed
            # a few columns wider and sliced back
            in_width = int(xq.ty.shape[3])
            width = (in_width + padding[1] + padding[3] - dilation[1] * (wq.shape[3] - 1) - 1) // strides[1] + 1
            extra_columns = _extra_columns(width)
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
            scale = sx * sw
            result = relax.op.multiply(relax.op.astype(accumulated, "float32"),
                                       relax.const(scale.reshape(1, -1, 1, 1).astype(np.float32)))
            if zu != 0:
                offset = -scale * zu * wq.reshape(out_channels, -1).astype(np.int64).sum(axis=1)
                result = relax.op.add(emit(result), relax.const(offset.reshape(1, -1, 1, 1).astype(np.float32)))
            self.count += 1
            return result

    return QuantizedKernelRewriter
