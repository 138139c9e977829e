"""A softmax over a classifier's classes gets classes padded to the vector width.

mcc's default CPU schedule sums a long, contiguous softmax axis in vector lanes (schedules/cpu.py,
`_vectorize_reduction_lanes`), which needs the axis to be a multiple of the lanes: TVM scalarizes
a vector loop with a guarded tail. PP-OCRv5 rec's CTC head ends in 18385 classes (1149 x 16 + 1),
and its softmax ran with lanes across the 40 time steps instead, each lane reading a row 74 KB
from the next (2.1 ms, against 0.99 ms for 18400 classes). Its classifier's matmul was padded to
18400 columns inside the kernel anyway, and cut back to 18385 before the bias.

    softmax(matmul(x, W) + b)  ->  strided_slice(softmax(matmul(x, [W | 0]) + [b | lowest]), N)

computes the same: the added classes' logits are float32's lowest value, which never is the
maximum and whose exponential underflows to zero (TVM's fast_exp clamps it to e^-88, 10^-38 next
to a sum >= 1), so the first N probabilities are unchanged. The slice fuses into the softmax's
last pass.

Applied (Relax, before legalization, CPU targets) to float32 softmaxes over the last axis of at
least `MIN_LANE_REDUCTION` classes that are not a multiple of the lanes, whose input is a matmul
by a constant [K, N] weight plus an optional constant bias, read by nothing else.
"""

from __future__ import annotations

import numpy as np


def pad_softmax_classes(mod, target):
    """(module, number of softmaxes padded); unchanged for non-CPU targets."""
    if target.kind.name != "llvm":
        return mod, 0
    from mcc.backends.tvm.channels import _lanes
    from mcc.backends.tvm.common import rewrite_functions, use_counts

    rewriter = _make_rewriter(_lanes(target), use_counts(mod))(mod)
    return rewrite_functions(mod, rewriter), rewriter.count


def _make_rewriter(lanes: int, uses: dict):
    import tvm
    from tvm import relax
    from tvm.ir.expr import GenericConst

    from mcc.backends.tvm.common import bound_value
    from mcc.backends.tvm.schedules.cpu import MIN_LANE_REDUCTION

    softmax_op = tvm.ir.Op.get("relax.nn.softmax")
    add_op = tvm.ir.Op.get("relax.add")
    matmul_op = tvm.ir.Op.get("relax.matmul")
    dequantize_op = tvm.ir.Op.get("relax.dequantize")

    def constant(expr):
        return expr.value.numpy() if isinstance(expr, GenericConst) else None

    @relax.expr_functor.mutator
    class ClassPadder(relax.PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.count = 0

        def _only_use(self, expr):
            """The call `expr` (a variable read once) is bound to, else None."""
            if not isinstance(expr, relax.Var) or uses.get(expr, 0) != 1:
                return None
            value = bound_value(self, expr)
            return value if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) else None

        def visit_call_(self, call):
            original = call
            call = self.visit_expr_post_order(call)
            if not (isinstance(call.op, tvm.ir.Op) and call.op.same_as(softmax_op)):
                return call
            replacement = self._padded(original, call)
            if replacement is None:
                return call
            self.count += 1
            return replacement

        def _padded(self, original, call):
            shape = getattr(call.ty, "shape", None)
            if str(call.ty.dtype) != "float32" or shape is None or not all(isinstance(d, tvm.tirx.IntImm) for d in shape):
                return None
            rank, classes = len(shape), int(shape[-1])
            if int(call.attrs.axis) % rank != rank - 1 or classes % lanes == 0 or classes < MIN_LANE_REDUCTION:
                return None
            logits = self._only_use(original.args[0])
            bias = np.zeros(classes, np.float32)
            product = logits
            if logits is not None and logits.op.same_as(add_op):
                found = [(constant(arg), other) for arg, other in ((logits.args[1], logits.args[0]),
                                                                    (logits.args[0], logits.args[1]))]
                found = [(value, other) for value, other in found if value is not None]
                if len(found) != 1 or found[0][0].size != classes or found[0][0].shape[-1:] != (classes,):
                    return None
                bias = found[0][0].reshape(classes).astype(np.float32)
                product = self._only_use(found[0][1])
            if product is None or not product.op.same_as(matmul_op):
                return None
            padded = classes + (-classes % lanes)
            weight = self._padded_weight(bound_value(self, product.args[1]), classes, padded)
            if weight is None:
                return None
            bias = np.concatenate([bias, np.full(padded - classes, np.finfo(np.float32).min, np.float32)])
            emit = self.builder_.emit
            scores = emit(relax.op.add(emit(relax.op.matmul(product.args[0], weight)), relax.const(bias)))
            probabilities = emit(relax.op.nn.softmax(scores, axis=-1))
            return relax.op.strided_slice(probabilities, axes=[rank - 1], begin=[0], end=[classes])

        def _padded_weight(self, weight, classes: int, padded: int):
            """The [K, N] weight with zero columns up to `padded`: a float constant, or a quantized
            one (`dequantize` of int8 columns with their scales: quantize-int8's classifier, which
            integer.py then lowers to an integer kernel); None for anything else."""
            def widen(values, fill):
                extra = np.full((*values.shape[:-1], padded - classes), fill, values.dtype)
                return np.concatenate([values, extra], axis=-1)

            values = constant(weight)
            if values is not None:
                if values.dtype != np.float32 or values.ndim != 2 or values.shape[1] != classes:
                    return None
                return relax.const(widen(values, 0))
            if not (isinstance(weight, relax.Call) and weight.op.same_as(dequantize_op)):
                return None
            quantized, scale, zero_point = (constant(arg) for arg in weight.args)
            if (quantized is None or scale is None or zero_point is None or quantized.ndim != 2
                    or quantized.shape[1] != classes or int(weight.attrs.axis) % 2 != 1
                    or scale.size not in (1, classes) or zero_point.size not in (1, classes)):
                return None
            scale = widen(np.broadcast_to(scale.reshape(-1), (classes,)), 1)
            zero_point = widen(np.broadcast_to(zero_point.reshape(-1), (classes,)), 0)
            return self.builder_.emit(relax.op.dequantize(
                relax.const(widen(quantized, 0)), relax.const(scale), relax.const(zero_point), axis=1,
                out_dtype=str(weight.attrs.out_dtype)))

    return ClassPadder
