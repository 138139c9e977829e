"""TVM for LLVM CPU targets (the host now; aarch64 cross targets later use the same phases).

Import (Relax ONNX frontend; a float16 model computed in float32 on a CPU without half-precision
arithmetic, half.py) -> target rewrites (quantized ops to integer kernels, channel
concatenations distributed over the convolutions that read them, convolution filters padded to
the vector width) -> DecomposeOpsForInference, FastMathTransform, the `zero` pipeline
(legalize, fuse) -> schedules: tuning records from mcc's database where it has them (`tuning.apply_records`), mcc's
default CPU schedules for every other kernel (`schedules.apply_default_schedules`) -> `relax.build`
for the target, with small kernel buffers kept on the stack and the VM's main function compiled to
native code (stack.py) -> `export_library` to a shared object. TVM 0.27's `tvm.compile` on CPU does no
fusion and no scheduling by itself (see shared/notes/tvm-0.27.md, sections 3 and 4).
"""

from __future__ import annotations

import time
from pathlib import Path

import onnx

from mcc.backends.base import CompiledArtifact
from mcc.backends.tvm import common, stack


def import_for_target(model: onnx.ModelProto, target, input_shapes: dict):
    """(Relax module, details): the model imported as the target computes it. A float16 model on
    a CPU without half-precision arithmetic is computed in float32 (half.py); details then count
    the float16 tensors widened ("float16_computed_as_float32")."""
    from mcc.backends.tvm import half

    model, widened = half.for_target(model, target)
    return common.import_onnx(model, input_shapes), {"float16_computed_as_float32": widened}


def legalize(mod):
    """An imported Relax module legalized and fused: the kernels tuning records are keyed on.

    tanh, exp and erf become TVM's polynomial approximations (topi.fast_*): the libm calls of the
    exact forms stop vectorization (magika's GELU kernels: 2.5 -> 1.0 ms), the approximations are
    what onnxruntime's MLAS computes too, and validation measures the error.
    """
    from tvm import relax

    mod = relax.transform.DecomposeOpsForInference()(mod)
    try:
        mod = relax.transform.FastMathTransform()(mod)
    except AttributeError:
        # TVM 0.27's pass reads `.name` of every callee and fails on a call to an ExternFunc (a
        # data-dependent Expand); such a module keeps the exact forms
        pass
    mod = relax.get_pipeline("zero")(mod)
    # which kernel parameters are constants (weights): schedules, default or tuned, may re-lay
    # them out at compile time
    return relax.transform.AttachAttrLayoutFreeBuffers()(mod)


def rewrite_for_target(mod, target):
    """Relax rewrites for the target's kernels, before legalization: a classifier's softmax
    classes padded to the vector width (classes.py), quantized convolutions and matmuls to
    integer kernels (integer.py), transposed convolutions whose kernel is their stride as 1x1
    convolutions and a depth-to-space (upsample.py), channel concatenations distributed over the convolutions and
    poolings that read them (concat.py), float convolution filters padded to the vector width
    (channels.py), convolutions channels-last (layout.py), divisions by constants as
    multiplications by their reciprocals (reciprocal.py), sums over at most 4 elements as
    additions (short_sums.py). Returns (module, {"integer_kernels": n,
    "divisions_by_constants": d, "sums_as_additions": a, "distributed_concatenations": k, "padded_convolutions": m,
    "padded_softmax_classes": s, "channels_last_convolutions": c,
    "transposed_convolutions_as_depth_to_space": t})."""
    from mcc.backends.tvm import channels, classes, concat, integer, layout, reciprocal, short_sums, upsample

    mod, depth_to_space = upsample.as_depth_to_space(mod, target)
    mod, padded_softmaxes = classes.pad_softmax_classes(mod, target)
    mod, integer_kernels = integer.lower_quantized_kernels(mod, target)
    mod, distributed = concat.distribute_concatenations(mod, target)
    mod, padded = channels.pad_output_channels(mod, target)
    mod, channels_last = layout.channels_last(mod, target)
    mod, reciprocals = reciprocal.multiply_by_reciprocals(mod, target)
    mod, short = short_sums.unroll_short_sums(mod, target)
    return mod, {"integer_kernels": integer_kernels, "divisions_by_constants": reciprocals,
                 "sums_as_additions": short,
                 "distributed_concatenations": distributed,
                 "padded_convolutions": padded, "padded_softmax_classes": padded_softmaxes,
                 "channels_last_convolutions": channels_last,
                 "transposed_convolutions_as_depth_to_space": depth_to_space}


def lower(mod, target, *, default_schedules: bool = True, use_tuning_records: bool = True):
    """Legalize, fuse and schedule an imported Relax module; returns (module, details).

    `details` says which kernels got which schedule: "tuned_kernels" (records of mcc's tuning
    database) and "default_schedules" (kernel -> mcc default CPU schedule rule); the others keep
    TVM's naive loops.
    """
    from mcc.backends.tvm import schedules, tuning

    mod, rewrites = rewrite_for_target(mod, target)
    mod = legalize(mod)
    tuned: list[str] = []
    if use_tuning_records:
        mod, tuned = tuning.apply_records(mod, target, default_schedules=default_schedules)
    applied: dict[str, str] = {}
    if default_schedules:
        mod, applied = schedules.apply_default_schedules(mod, target, skip=frozenset(tuned))
    # weight re-layouts become their own kernels, evaluated on the constants now
    mod = schedules.split_relayouts(mod)
    return mod, {"tuned_kernels": sorted(tuned), "default_schedules": applied, **rewrites}


class TvmLlvmBackend:
    name = "tvm-llvm"
    min_opset = 13
    library_suffix = ".so"

    def supported_ops(self) -> frozenset[str]:
        return common.backend_ops()

    def unsupported_nodes(self, model: onnx.ModelProto, excluded: frozenset[str] = frozenset()) -> list[onnx.NodeProto]:
        return common.unsupported_nodes(model, common.backend_ops() - excluded)

    def compile(self, model: onnx.ModelProto, target, input_shapes: dict, library_path: Path,
                default_schedules: bool = True, exec_mode: str = stack.EXEC_MODE) -> CompiledArtifact:
        """`exec_mode` "bytecode" builds a library whose VM calls each kernel through its
        interpreter, so `RelaxVMRunner.kernel_ms` can time them one by one (profiling only)."""
        import tvm

        timings: dict[str, float] = {}
        start = time.perf_counter()
        mod, imported = import_for_target(model, target, input_shapes)
        timings["import"] = time.perf_counter() - start

        start = time.perf_counter()
        mod, details = lower(mod, target, default_schedules=default_schedules)
        details.update(imported)
        # the recurrent nodes the backend unrolled itself before TVM's importer (common.LOWERED_OPS)
        details["lowered_before_import"] = sorted(
            f"{node.op_type} at '{node.name}'" for node in model.graph.node if node.op_type in common.LOWERED_OPS)
        timings["schedule"] = time.perf_counter() - start

        start = time.perf_counter()
        executable = stack.compile_module(mod, target, exec_mode)
        timings["build"] = time.perf_counter() - start

        start = time.perf_counter()
        executable.export_library(str(library_path))
        timings["export"] = time.perf_counter() - start
        details["tvm_target"] = str(target)
        return CompiledArtifact(library=Path(library_path), timings_s=timings, details=details)

    def load(self, library_path: Path, model: onnx.ModelProto) -> common.RelaxVMRunner:
        return common.RelaxVMRunner(library_path, model, device="cpu")
