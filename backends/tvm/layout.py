"""Float 2-D convolutions run channels-last (NHWC) on CPU targets, and the layout flows between them.

ONNX convolutions are NCHW. mcc's default CPU schedule then has two register tiles to choose from
(schedules/cpu.py, `plan_tile`): lanes along the output width, which needs a width with a divisor
filling a register, or lanes along the output channels with rows along the width. The second is
what most real layers get (widths 55, 27, 13, 7), and in NCHW each of its channel vectors is
stored as scalars, one per channel plane; the epilogue cost as much as the multiply-adds on a
1x1 convolution. onnxruntime's MLAS avoids that by running whole networks in a blocked channel
layout (NCHWc).

TVM 0.27's Relax `ConvertLayout` propagates a layout across the graph (activations, pooling,
reductions, binary ops, concatenation) and inserts transposes only where it must; its
legalization covers NHWC (and not NCHWc). In NHWC the channels are the innermost axis, so the
default schedule's output-vector tile puts its lanes on the channels with rows along the width:
contiguous vector stores, a vectorized epilogue, contiguous depthwise loads, and the weights
packed once at compile time. The input and output keep their NCHW layout (one transpose each),
and the weight transposes fold into the constants.

Measured on SqueezeNet in one process, same schedules otherwise: 0.82x the time.

Float (float32, float16) convolutions with a constant weight are converted, and so are the
integer kernels of quantized convolutions (integer.py): in NHWC each pixel's input channels are
already the 4 contiguous bytes `vpdpbusd` takes, and 16 output channels are one contiguous store
(schedules/integer.py). SqueezeNet int8: 0.83x the time of its NCHW integer kernels. Other
convolutions (grouped integer ones, runtime weights) are pinned to NCHW so the layout does not
flow into them.
"""

from __future__ import annotations

FLOAT_DTYPES = ("float32", "float16")
#: (data, weight, output) of an integer convolution (integer.py)
INTEGER_DTYPES = ("uint8", "int8", "int32")
#: (data, weight, output) of a quantized depthwise convolution (integer.py, `_exact_depthwise`)
EXACT_DEPTHWISE_DTYPES = ("uint8", "float32", "float32")
#: the whole model goes channels-last only when at least this share of its convolution work has
#: output channels filling whole vectors: with 88 or 200 channels the vectors are partial, and
#: converting only the convolutions that fit adds a transpose pair at every boundary (PP-OCRv5
#: cls: 1.23x the time converting all, 1.08x converting those that fit)
MIN_FULL_VECTOR_SHARE = 0.8
#: layout-sensitive ops that stay NCHW (the layout would otherwise flow into them from their input)
PINNED = {"relax.nn.conv2d_transpose": ("NCHW", "IOHW")}
#: the integer types a per-tensor quantize is rewritten for, with their ranges
INTEGER_RANGES = {"int8": (-128, 127), "uint8": (0, 255)}
#: elementwise binary ops whose one-element constant operands become 0-d
BINARY_OPS = ("add", "subtract", "multiply", "divide", "maximum", "minimum", "power")


def channels_last(mod, target):
    """(module, number of convolutions converted to NHWC); unchanged for non-CPU targets."""
    if target.kind.name != "llvm":
        return mod, 0
    from tvm import relax

    from mcc.backends.tvm.schedules.cpu import CpuInfo

    # dequantized constant weights (a quantized model's float convolutions: its depthwise ones on
    # targets without VNNI, where integer.py leaves them) folded to the constants the rule
    # converts: otherwise each stayed NCHW between two channels-last integer kernels, a transpose
    # pair around it
    exposed = relax.transform.FoldConstant()(_layout_transparent_ops(mod))
    share = full_vector_share(exposed, CpuInfo.from_target(target).lanes(32))
    if share is None or share < MIN_FULL_VECTOR_SHARE:
        return mod, 0

    counted = {"converted": 0}

    def desired(call):
        if call.op.name in PINNED:  # TVM 0.27 legalizes these in NCHW only
            return {call.op.name: list(PINNED[call.op.name])}
        if call.op.name != "relax.nn.conv2d":
            return {}
        if _converts(call):
            counted["converted"] += 1
            return {"relax.nn.conv2d": ["NHWC", "OHWI"]}
        return {"relax.nn.conv2d": ["NCHW", "OIHW"]}  # pinned: the layout does not flow into it

    try:
        converted = relax.transform.ConvertLayout({}, layout_cb=desired)(exposed)
    except RuntimeError:  # tvm.error.InternalError and the other TVM errors
        # TVM 0.27's layout inference refuses some graphs around the convolutions (magika's
        # layer norms over 3-D tensors: "Invalid SLayout"); they keep NCHW
        return mod, 0
    if not counted["converted"]:
        return mod, 0
    converted = _fold_transposed_pads(converted)
    # the weight transposes, on constants, become constants
    return relax.transform.FoldConstant()(converted), counted["converted"]


def full_vector_share(mod, lanes: int) -> float | None:
    """Of the multiply-adds of the convolutions `channels_last` would convert, the share in those
    whose output channels fill whole vectors (a multiple of `lanes`); None when there are none."""
    import tvm
    from tvm import relax

    conv2d = tvm.ir.Op.get("relax.nn.conv2d")
    macs = {True: 0, False: 0}

    @relax.expr_functor.visitor
    class Count(relax.PyExprVisitor):
        def visit_call_(self, call):
            super().visit_call_(call)
            if call.op.same_as(conv2d) and _converts(call):
                try:
                    out = [int(d) for d in call.ty.shape]
                    weight = [int(d) for d in call.args[1].ty.shape]
                except (TypeError, ValueError):
                    return
                macs[weight[0] % lanes == 0] += _product(out) * _product(weight[1:])

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            Count().visit_expr(func)
    total = macs[True] + macs[False]
    return macs[True] / total if total else None


def _product(values) -> int:
    result = 1
    for value in values:
        result *= value
    return result


def _converts(call) -> bool:
    """An NCHW convolution with a constant weight: float, or an integer kernel."""
    from tvm.ir.expr import GenericConst  # TVM 0.27's relax.const

    attrs = call.attrs
    data, weight = call.args[0], call.args[1]
    if (str(attrs.data_layout) != "NCHW" or str(attrs.kernel_layout) != "OIHW"
            or str(attrs.out_layout) != "NCHW"):
        return False
    if not isinstance(weight, GenericConst):
        return False
    types = [str(getattr(getattr(value, "ty", None), "dtype", "")) for value in (data, weight, call)]
    if all(dtype in FLOAT_DTYPES for dtype in types):
        return True
    # the integer kernels of quantized convolutions (integer.py: uint8 x int8 -> int32, filters
    # padded to whole vectors, input channels to groups of 4): their schedule takes NHWC too; and
    # quantized depthwise ones (uint8 data, integer-valued float32 weights, exact float sums)
    return ((tuple(types) == INTEGER_DTYPES and int(attrs.groups) == 1)
            or tuple(types) == EXACT_DEPTHWISE_DTYPES)


def _layout_transparent_ops(mod):
    """Ops the layout cannot pass rewritten into ones it can (TVM 0.27 has no layout rule for
    them): per-tensor `quantize` and `dequantize` as their elementwise formulas, `R.clip` and one-element constants
    of rank >= 1 as binary ops with 0-d bounds, and the ONNX frontend's Clip as Relax
    `maximum`/`minimum` ops: it emits them as calls to
    TVM's `topi.maximum`/`topi.minimum` kernels (call_tir), which layout conversion cannot see
    into, so each ReLU6 or hard-swish of a MobileNet-style model got a transpose on either side
    (PP-OCRv5 cls: 1.19x the time before this)."""
    import numpy as np
    import tvm
    from tvm import relax
    from tvm.ir.expr import GenericConst  # TVM 0.27's relax.const

    from mcc.backends.tvm.common import rewrite_functions

    clips = {}
    for gvar, func in mod.functions_items():
        kind = _scalar_bound_kind(func)
        if kind is not None:
            clips[gvar] = kind
    call_tir = tvm.ir.Op.get("relax.call_tir")
    clip = tvm.ir.Op.get("relax.clip")
    make = {"max": relax.op.maximum, "min": relax.op.minimum}
    binary = [tvm.ir.Op.get(f"relax.{name}") for name in BINARY_OPS]
    quantize = tvm.ir.Op.get("relax.quantize")
    dequantize = tvm.ir.Op.get("relax.dequantize")

    @relax.expr_functor.mutator
    class Expose(relax.PyExprMutator):
        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if call.op.same_as(clip):  # R.clip has no layout rule either (HardSigmoid's)
                return self._as_binary(call)
            if any(call.op.same_as(op) for op in binary):
                return self._scalar_operands(call)
            if call.op.same_as(quantize):
                return self._quantize_elementwise(call)
            if call.op.same_as(dequantize):
                return self._dequantize_elementwise(call)
            if not (call.op.same_as(call_tir) and isinstance(call.args[0], tvm.ir.GlobalVar)):
                return call
            kind = next((k for gvar, k in clips.items() if gvar.same_as(call.args[0])), None)
            if kind is None or not isinstance(call.args[1], relax.Tuple) or len(call.args[1].fields) != 2:
                return call
            return make[kind](*call.args[1].fields)

        def _as_binary(self, call):
            dtype = str(getattr(call.args[0].ty, "dtype", ""))
            bounds = [getattr(arg, "value", None) for arg in call.args[1:3]]  # PrimValues
            bounds = [getattr(bound, "value", bound) for bound in bounds]
            if not dtype.startswith("float") or any(not isinstance(b, (int, float)) for b in bounds):
                return call
            low, high = (relax.const(float(bound), dtype) for bound in bounds)
            return relax.op.minimum(relax.op.maximum(call.args[0], low), high)

        def _quantize_elementwise(self, call):
            # relax.quantize has no layout rule either: a quantized model's activations were
            # transposed to NCHW and back around each one. With one scale and zero point it is
            # what its legalization computes, in ops that have one:
            # cast(clip(round(x / scale) + zero_point, qmin, qmax))
            data, scale, zero_point = call.args
            out_dtype = str(call.attrs.out_dtype)
            if (out_dtype not in INTEGER_RANGES or str(getattr(data.ty, "dtype", "")) != "float32"
                    or not all(isinstance(arg, GenericConst) and arg.value.numpy().size == 1
                               for arg in (scale, zero_point))):
                return call
            low, high = INTEGER_RANGES[out_dtype]
            scale_value = relax.const(scale.value.numpy().reshape(()).astype("float32"))
            zero = relax.const(np.float32(zero_point.value.numpy().reshape(())))
            rounded = relax.op.add(relax.op.round(relax.op.divide(data, scale_value)), zero)
            clipped = relax.op.minimum(relax.op.maximum(rounded, relax.const(np.float32(low))),
                                       relax.const(np.float32(high)))
            return relax.op.astype(clipped, out_dtype)

        def _dequantize_elementwise(self, call):
            # the same for relax.dequantize (a quantized model's activations dequantized for
            # the float ops between integer kernels: PP-OCRv5 rec int8's depthwise convolutions
            # had a transpose pair around each, 4.8 ms of transposes): (float(x) - zero_point) * scale
            data, scale, zero_point = call.args
            if (str(getattr(data.ty, "dtype", "")) not in INTEGER_RANGES or str(call.attrs.out_dtype) != "float32"
                    or not all(isinstance(arg, GenericConst) and arg.value.numpy().size == 1
                               for arg in (scale, zero_point))):
                return call
            scale_value = relax.const(scale.value.numpy().reshape(()).astype("float32"))
            zero = relax.const(np.float32(zero_point.value.numpy().reshape(())))
            return relax.op.multiply(relax.op.subtract(relax.op.astype(data, "float32"), zero), scale_value)

        def _scalar_operands(self, call):
            # a one-element constant of rank >= 1 (PP-OCRv5's learnable affine blocks: scale and
            # bias of shape (1,)) stops the layout at a binary op; as a 0-d constant it broadcasts
            # the same and lets the layout through
            args = list(call.args)
            changed = False
            for index, arg in enumerate(args):
                other = args[1 - index]
                if (isinstance(arg, GenericConst) and 0 < arg.value.numpy().ndim <= _rank(other)
                        and arg.value.numpy().size == 1):
                    args[index] = relax.const(arg.value.numpy().reshape(()))
                    changed = True
            return relax.Call(call.op, args, call.attrs) if changed else call

    return rewrite_functions(mod, Expose(mod))


def _rank(expr) -> int:
    shape = getattr(getattr(expr, "ty", None), "shape", None)
    try:
        return len(shape)
    except TypeError:
        return -1


def _scalar_bound_kind(func) -> str | None:
    """"max" or "min" when `func` is a PrimFunc computing out = max(A, b) (or min) elementwise
    with a 0-d `b` of A's type (topi.maximum/minimum against a scalar tensor); else None."""
    from tvm import s_tir, tirx
    from tvm.ir.expr import TensorLoad

    if not isinstance(func, tirx.PrimFunc) or len(func.params) != 3:
        return None
    try:
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
    except Exception:  # not a block-structured kernel
        return None
    if len(blocks) != 1:
        return None
    store = sch.get(blocks[0]).body
    if not isinstance(store, tirx.BufferStore) or not isinstance(store.value, (tirx.Max, tirx.Min)):
        return None
    a, b = store.value.a, store.value.b
    if not (isinstance(a, TensorLoad) and isinstance(b, TensorLoad)):
        return None
    data, bound, out = func.params
    if not (a.source.same_as(data) and b.source.same_as(bound) and store.buffer.same_as(out)):
        return None
    if len(b.indices) != 0 or len(a.indices) != len(store.indices) or any(
            not i.same_as(j) for i, j in zip(a.indices, store.indices)):
        return None
    return "max" if isinstance(store.value, tirx.Max) else "min"


def _fold_transposed_pads(mod):
    """permute_dims(pad(permute_dims(x, p)), p^-1) -> pad(x) with the pad widths permuted.
    `nn.pad` has no layout rule in TVM 0.27, so the zero-point padding integer.py puts before a
    quantized convolution was transposed back to NCHW and forth."""
    import tvm
    from tvm import relax

    from mcc.backends.tvm.common import bound_value, rewrite_functions

    permute = tvm.ir.Op.get("relax.permute_dims")
    pad = tvm.ir.Op.get("relax.nn.pad")

    def axes_of(call):
        axes = call.attrs.axes
        return None if axes is None else [int(axis) for axis in axes]

    @relax.expr_functor.mutator
    class Fold(relax.PyExprMutator):
        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if not call.op.same_as(permute):
                return call
            padded = bound_value(self, call.args[0])
            if not (isinstance(padded, relax.Call) and padded.op.same_as(pad)):
                return call
            inner = bound_value(self, padded.args[0])
            if not (isinstance(inner, relax.Call) and inner.op.same_as(permute)):
                return call
            first, second = axes_of(inner), axes_of(call)
            if first is None or second is None or [first[axis] for axis in second] != list(range(len(first))):
                return call
            widths = [int(width) for width in padded.attrs.pad_width]
            pairs = [None] * len(first)
            for axis, source in enumerate(first):  # the padded tensor's axis `axis` is x's `source`
                pairs[source] = widths[2 * axis:2 * axis + 2]
            return relax.op.nn.pad(inner.args[0], [width for pair in pairs for width in pair],
                                   pad_mode=str(padded.attrs.pad_mode), pad_value=float(padded.attrs.pad_value))

    return rewrite_functions(mod, Fold(mod))
