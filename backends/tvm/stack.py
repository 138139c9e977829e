"""A CPU kernel's small fixed-size buffers live on the stack, where LLVM can keep them in registers.

TVM 0.27's `LowerTVMBuiltin` keeps an allocation on the stack only when its scope is "global" and it
is under 1 KiB (`runtime::kMaxStackAlloca`); every other buffer becomes a pair of calls into the
runtime, `TVMBackendAllocWorkspace` and `TVMBackendFreeWorkspace`. mcc's register tiles are
"local" buffers of 22-28 vectors (1.4-1.8 KiB): each tile of a convolution then called the runtime
twice, zeroed its accumulators with a `memset`, and, since LLVM cannot tell what else the
workspace pointer reaches, stored them back to memory and read them again to write the output.
As an `alloca`, the tile becomes registers (LLVM's SROA: every index is a constant once the tile
loops are unrolled), and the calls and the `memset` go.

Measured on the host, alternating in one process: SqueezeNet's 16 -> 64 3x3 convolution at
55 x 55 282 -> 257 us (0.91x); its RGB first layer, whose zero padding is read inline, 560 -> 350
us (0.63x): there the padding condition had kept the accumulators in memory.

The same pipeline computes a kernel's `nearbyint` (round half to even: quantization's rounding) as
`round` before TVM's lowering (`nearbyint_as_round`). TVM 0.27 does not declare `nearbyint`
vectorizable, so its VectorizeLoop turned every explicitly vectorized loop that rounds (an int8
convolution's requantizing epilogue) back into a scalar loop; LLVM's own vectorizer put some of
them back together, but not inside a parallel loop's body. On LLVM both intrinsics are
`llvm.nearbyint`, which rounds half to even in the default rounding mode (checked bit for bit in
the tests). Measured alone, alternating in one process: SqueezeNet int8's 64 -> 16 1x1
convolution at 55 x 55 took 22.4 us on two cores and 8.3 us on one before, 4.8 us on two after;
the whole model 0.98x, outputs identical.

`pipeline_name(target)` is the TIR pipeline to compile with: TVM's default one, with these passes
run before its lowering and just before `LowerTVMBuiltin`, for CPU targets.
"""

from __future__ import annotations

#: largest buffer (bytes) moved to the stack, and most bytes moved per kernel: LLVM allocates them
#: in the entry block of the kernel (and of its parallel body), once per call, on the calling
#: thread's stack (glibc: 8 MiB by default; musl threads get 128 KiB)
MAX_STACK_BYTES = 16 * 1024
MAX_STACK_BYTES_PER_KERNEL = 64 * 1024
#: buffer scopes a CPU kernel allocates that may live on the stack
STACK_SCOPES = ("local", "global")
#: the annotation TVM's LowerTVMBuiltin reads (transform::kDisableLowerTVMBuiltin)
_KEEP_ALLOCATION = "disable_lower_builtin"
#: the name mcc's pipeline is registered under in TVM's TIR pipeline table
PIPELINE = "mcc-cpu"


def buffer_bytes(buffer) -> int | None:
    """Size of a buffer with a constant shape, in bytes (None when a dimension is symbolic)."""
    import tvm

    elements = 1
    for dim in buffer.shape:
        if not hasattr(dim, "value"):
            return None
        elements *= int(dim.value)
    dtype = tvm.runtime.DataType(str(buffer.dtype))
    return elements * dtype.bits * dtype.lanes // 8


def on_stack(func):
    """`func` with its small fixed-size local and global allocations annotated to stay allocas
    (each at most MAX_STACK_BYTES, together at most MAX_STACK_BYTES_PER_KERNEL)."""
    import tvm
    from tvm import tirx
    from tvm_ffi.structural import structural_mutate

    budget = [MAX_STACK_BYTES_PER_KERNEL]

    def allocation(node, mutator):
        node = mutator.default_mutate(node)
        size = buffer_bytes(node.buffer)
        if (size is None or size > MAX_STACK_BYTES or size > budget[0]
                or node.buffer.scope() not in STACK_SCOPES):
            return node
        annotations = dict(node.annotations) if node.annotations else {}
        if _KEEP_ALLOCATION in annotations:
            return node
        budget[0] -= size
        annotations[_KEEP_ALLOCATION] = tvm.tirx.const(1, "bool")
        return tirx.AllocBuffer(node.buffer, annotations=annotations)

    return structural_mutate(func, [(tirx.AllocBuffer, allocation)])


def nearbyint_as_round(func):
    """`func` with every `tirx.nearbyint` call computed by `tirx.round`, which TVM vectorizes; both
    are `llvm.nearbyint` on LLVM targets (round half to even), so only CPU kernels take this."""
    import tvm
    from tvm import tirx
    from tvm_ffi.structural import structural_mutate

    nearbyint = tvm.ir.Op.get("tirx.nearbyint")

    def call(node, mutator):
        node = mutator.default_mutate(node)
        if node.op.same_as(nearbyint):
            return tirx.round(node.args[0])
        return node

    return structural_mutate(func, [(tvm.ir.Call, call)])


def _pipeline():
    import tvm
    from tvm.s_tir import pipeline as s_tir_pipeline

    lower, finalize_host, finalize_device = s_tir_pipeline.default_s_tir_pipeline()

    @tvm.tirx.transform.prim_func_pass(opt_level=0, name="mcc.NearbyintAsRound")
    def rounding(func, _mod, _ctx):
        return nearbyint_as_round(func)

    lower_rounding = tvm.ir.transform.Sequential([rounding, lower])

    @tvm.tirx.transform.prim_func_pass(opt_level=0, name="mcc.StackAllocation")
    def stack_allocation(func, _mod, _ctx):
        return on_stack(func)

    def finalize_host_on_stack():
        return tvm.ir.transform.Sequential([stack_allocation, finalize_host()])

    return lower_rounding, finalize_host_on_stack, finalize_device


def pipeline_name(target) -> str:
    """The TIR pipeline `tvm.compile` takes for `target`: mcc's for CPU targets (registered on
    first use), TVM's default for the others."""
    if target.kind.name != "llvm":
        return "default"
    from tvm.tirx import compilation_pipeline

    compilation_pipeline.PIPELINE_MAP.setdefault(PIPELINE, _pipeline)
    return PIPELINE


#: how the Relax VM runs a model's main function: "compiled" turns its instructions (kernel calls,
#: storage and tensor allocations, shape checks) into one native function instead of bytecode the
#: VM interprets. Measured on this CPU, alternating in one process, outputs identical: MNIST 8.85 ->
#: 7.88 us, silero VAD 16.8 -> 13.7 us, hey_mycroft 9.06 -> 7.82 us, alexa 7.29 -> 6.86 us;
#: squeezenet (1.53 ms) and PP-OCRv5 rec int8 (2.7 ms) unchanged within 1.2 %.
EXEC_MODE = "compiled"


def compile_module(mod, target, exec_mode: str = EXEC_MODE):
    """`relax.build(mod, target)` (what `tvm.compile` calls) with the target's TIR pipeline and the
    VM's main function compiled to native code (`EXEC_MODE`; "bytecode" for per-kernel profiling:
    the VM's instrument hook sees only the calls it interprets)."""
    from tvm import relax

    return relax.build(mod, target=target, tir_pipeline=pipeline_name(target), exec_mode=exec_mode)
