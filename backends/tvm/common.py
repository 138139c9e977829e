"""Phases shared by every TVM target family: ONNX import, op coverage, VM runner."""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from pathlib import Path

import numpy as np
import onnx

from mcc.toolchain import ir
from mcc.toolchain.errors import UnsupportedError


def use_every_core() -> None:
    """TVM's CPU thread pool gets every core this process may run on, unless TVM_NUM_THREADS is
    set. TVM's own default on x86 is half the hardware threads (it assumes hyper-threading): on a
    2-vCPU machine, one thread, half the machine, for validation, calibration and timing alike.
    The pool reads the variable when it starts, so this runs before the first kernel does."""
    os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))


#: ops the Relax ONNX frontend converts specially, outside its converter table
SPECIAL_OPS = frozenset({"If"})


def frontend_ops() -> frozenset[str]:
    """Op types TVM's Relax ONNX frontend can convert (it matches by op_type and ignores domains)."""
    from tvm.relax.frontend.onnx import onnx_frontend

    return (frozenset(onnx_frontend._get_convert_map()) | SPECIAL_OPS) - MISMAPPED_OPS


#: op names TVM's frontend converts, but as another domain's op of the same name: the default-domain
#: op is not supported (TVM's `Attention` is com.microsoft's; ONNX's opset-23 Attention fails in it)
MISMAPPED_OPS = frozenset({"Attention"})


#: ops TVM's importer has no converter for that the backend lowers itself just before importing,
#: with mcc's own `substitute-recurrent` rules (unrolled over a static sequence): the optimized
#: graph keeps one LSTM node, as onnxruntime's does, and the backend compiles it
LOWERED_OPS = frozenset({"LSTM", "GRU", "RNN"})


def backend_ops() -> frozenset[str]:
    """Op types the TVM backends compile: the frontend's and the ones mcc lowers before it."""
    return frontend_ops() | LOWERED_OPS


def lower_for_frontend(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its LOWERED_OPS nodes rewritten into ops the frontend converts (those whose
    rules apply; the others stay, and `unsupported_nodes` names them)."""
    if not any(node.op_type in LOWERED_OPS for node in model.graph.node):
        return model
    from mcc.passes.substitute.recurrent import SubstituteRecurrent
    from mcc.toolchain.passmanager import PassContext, PassManager

    lowered, _ = PassManager([SubstituteRecurrent()], PassContext(supported_ops=frontend_ops())).run(model)
    return lowered


def unsupported_nodes(model: onnx.ModelProto, supported: frozenset[str] | None = None) -> list[onnx.NodeProto]:
    """Nodes TVM cannot import (op not in `supported`, by default every op the backend compiles, or
    a LOWERED_OPS node its rule cannot lower), or in a non-standard domain it would mis-map."""
    supported = backend_ops() if supported is None else supported
    kept = set()
    if any(node.op_type in LOWERED_OPS & supported for node in model.graph.node):
        kept = {node.output[0] for node in lower_for_frontend(model).graph.node if node.op_type in LOWERED_OPS}
    return [
        node
        for node in model.graph.node
        if node.op_type not in supported or node.domain not in ir.DEFAULT_DOMAINS
        or (node.op_type in LOWERED_OPS and node.output[0] in kept)
    ]


SUBBYTE_TYPES = (onnx.TensorProto.INT4, onnx.TensorProto.UINT4)


def fold_subbyte_dequantize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant int4/uint4 (or blocked) DequantizeLinear nodes evaluated to float32 initializers.

    TVM 0.27's importer cannot read int4 initializers (it copies them as one byte per value) nor
    blocked DequantizeLinear; it folds constant weight dequantization to float anyway, so folding
    here first computes the same.
    """
    from onnx import helper, numpy_helper

    initializers = {t.name: t for t in model.graph.initializer}

    def foldable(node) -> bool:
        if node.op_type != "DequantizeLinear" or node.domain not in ir.DEFAULT_DOMAINS:
            return False
        inputs = [name for name in node.input if name]
        if not all(name in initializers for name in inputs):
            return False
        block = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "block_size"), 0)
        return initializers[node.input[0]].data_type in SUBBYTE_TYPES or block > 0

    nodes = [node for node in model.graph.node if foldable(node)]
    if not nodes:
        return model
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    values = []
    for node in nodes:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        x = numpy_helper.to_array(initializers[node.input[0]]).astype(np.float64)
        scale = numpy_helper.to_array(initializers[node.input[1]])
        zero = (numpy_helper.to_array(initializers[node.input[2]]).astype(np.float64)
                if len(node.input) > 2 and node.input[2] else np.zeros(scale.shape))
        axis, block = int(attrs.get("axis", 1)) % max(x.ndim, 1), int(attrs.get("block_size", 0))
        out_dtype = scale.dtype
        scale = scale.astype(np.float64)
        if block:
            scale = np.take(np.repeat(scale, block, axis=axis), range(x.shape[axis]), axis=axis)
            zero = np.take(np.repeat(zero, block, axis=axis), range(x.shape[axis]), axis=axis)
        elif scale.ndim == 1 and x.ndim > 1:
            shape = [-1 if i == axis else 1 for i in range(x.ndim)]
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        values.append(numpy_helper.from_array(((x - zero) * scale).astype(out_dtype), node.output[0]))
    folded_ids = {id(node) for node in nodes}
    ir.replace_body(folded.graph, [node for node in model.graph.node if id(node) not in folded_ids], values)
    return folded


def rewrite_functions(mod, rewriter):
    """Every Relax function of `mod` through `rewriter` (a relax.PyExprMutator), unused bindings
    dropped; returns the module."""
    from tvm import relax

    for gvar, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            mod[gvar] = relax.analysis.remove_all_unused(rewriter.visit_expr(func))
    return mod


def rewrite_calls(mod, op_name: str, rewrite) -> tuple:
    """Every call of the Relax op `op_name` offered to `rewrite(call, builder)`, innermost first,
    which returns the replacement (emitting any bindings it needs on `builder`) or None to keep the
    call; returns (module, number of calls replaced)."""
    import tvm
    from tvm import relax

    op = tvm.ir.Op.get(op_name)

    @relax.expr_functor.mutator
    class Rewriter(relax.PyExprMutator):
        def __init__(self, module):
            super().__init__(module)
            self.count = 0

        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if not (isinstance(call.op, tvm.ir.Op) and call.op.same_as(op)):
                return call
            replacement = rewrite(call, self.builder_)
            if replacement is None:
                return call
            self.count += 1
            return replacement

    rewriter = Rewriter(mod)
    return rewrite_functions(mod, rewriter), rewriter.count


def static_shape(expr) -> list[int] | None:
    """The static shape of a Relax tensor expression; None when unknown or symbolic."""
    from tvm import tirx

    shape = getattr(expr.ty, "shape", None)
    if shape is None or not all(isinstance(dim, tirx.IntImm) for dim in shape):
        return None
    return [int(dim) for dim in shape]


def use_counts(mod) -> dict:
    """How many times each Relax variable is read, over all functions of `mod`."""
    from tvm import relax

    counts: dict = {}

    @relax.expr_functor.visitor
    class Counter(relax.PyExprVisitor):
        def visit_var_(self, var):
            counts[var] = counts.get(var, 0) + 1

        def visit_dataflow_var_(self, var):
            counts[var] = counts.get(var, 0) + 1

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            Counter().visit_expr(func)
    return counts


def bound_value(mutator, expr):
    """The expression a dataflow variable is bound to (`expr` itself when it is none)."""
    from tvm import relax

    if isinstance(expr, relax.Var):
        bound = mutator.lookup_binding(expr)
        if bound is not None:
            return bound
    return expr


def import_onnx(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]):
    """Relax IRModule for a static-shape model; frontend refusals become UnsupportedError."""
    from tvm.relax.frontend.onnx import from_onnx

    model = fold_subbyte_dequantize(lower_for_frontend(model))

    dtypes = {}
    for value in ir.graph_inputs(model):
        dtypes[value.name] = str(ir.tensor_dtype(value.type.tensor_type.elem_type))
    try:
        with warnings.catch_warnings():
            # the importer re-runs onnx.checker and turns its findings into UserWarnings;
            # mcc has already checked the model
            warnings.simplefilter("ignore", UserWarning)
            return from_onnx(
            model,
                shape_dict={name: list(shape) for name, shape in input_shapes.items()},
                dtype_dict=dtypes,
                opset=ir.opset_version(model),
            )
    except (NotImplementedError, ValueError, TypeError, KeyError, AssertionError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedError(f"TVM's ONNX importer rejected the model: {type(exc).__name__}: {first}") from None


def _cpu_list(text: str) -> set[int]:
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if "-" in part:
            low, high = part.split("-")
            cpus.update(range(int(low), int(high) + 1))
        elif part:
            cpus.add(int(part))
    return cpus


_FREE_CPUS: dict = {}
_FREE_CPUS_LOCK = threading.Lock()


def cpus_free_of_tvm_workers() -> set[int] | None:
    """The CPUs this thread may use that no TVM worker thread is pinned to, or None (nothing
    pinned, no such CPU, or no /proc).

    TVM's thread pool pins each worker thread to one CPU and leaves the calling thread, which
    runs the first task itself, free to run anywhere. On a 2-vCPU VM Linux often leaves the
    calling thread on the worker's CPU (measured: after an in-process compile, and at random in a
    fresh process), and then both tasks share one core: a 1x1 convolution ran 97-101 us instead
    of 50 us, the time it takes on one thread, in 5 of 5 such runs; with the calling thread kept
    off the worker's CPU, 51-54 us in 3 of 3. Threads with a single-CPU affinity other than this
    one are taken to be the workers, so two threads running kernels at once (each pinned by
    this) may take each other for one: mcc runs kernels from one thread. Cached per set of
    threads, calling thread and its affinity."""
    try:
        tasks = frozenset(os.listdir("/proc/self/task"))
        allowed = os.sched_getaffinity(0)
    except OSError:
        return None
    me = str(threading.get_native_id())
    key = (tasks, me, frozenset(allowed))
    with _FREE_CPUS_LOCK:
        if key in _FREE_CPUS:
            return _FREE_CPUS[key]
    claimed: set[int] = set()
    for task in tasks - {me}:
        try:
            status = Path(f"/proc/self/task/{task}/status").read_text()
        except OSError:  # the thread ended
            continue
        for line in status.splitlines():
            if line.startswith("Cpus_allowed_list:"):
                cpus = _cpu_list(line.split(":", 1)[1])
                if len(cpus) == 1:
                    claimed |= cpus
    free = allowed - claimed
    result = free if claimed and free and free != allowed else None
    with _FREE_CPUS_LOCK:
        if len(_FREE_CPUS) > 64:  # threads come and go: keep the cache small
            _FREE_CPUS.clear()
        _FREE_CPUS[key] = result
    return result


@contextlib.contextmanager
def off_tvm_worker_cpus():
    """This thread kept off the CPUs TVM's workers are pinned to while it runs kernels
    (`cpus_free_of_tvm_workers`); its affinity is restored after, so threads it starts later
    (onnxruntime's) are not confined."""
    free = cpus_free_of_tvm_workers()
    if not free:
        yield
        return
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, free)
    except OSError:  # the cpuset changed under the cache: run unrestricted
        yield
        return
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


class RelaxVMRunner:
    """A compiled library loaded back from disk and run through the Relax VM. Kernels run with
    the calling thread off the CPUs of TVM's workers (`off_tvm_worker_cpus`)."""

    def __init__(self, library_path: Path | None, model: onnx.ModelProto | None, device: str = "cpu", *,
                 executable=None, input_names: list[str] | None = None):
        import tvm
        from tvm import relax

        use_every_core()
        self.device = tvm.device(device, 0)
        self.module = tvm.runtime.load_module(str(library_path)) if executable is None else executable
        self.vm = relax.VirtualMachine(self.module, self.device)
        self.input_names = (input_names if input_names is not None
                            else [value.name for value in ir.graph_inputs(model)])

    @classmethod
    def in_memory(cls, executable, input_names: list[str], device: str = "cpu") -> "RelaxVMRunner":
        """A runner over an executable that was never exported (`tvm.compile`'s result)."""
        return cls(None, None, device, executable=executable, input_names=input_names)

    def _arguments(self, inputs: dict[str, np.ndarray]):
        import tvm

        return [tvm.runtime.tensor(np.require(inputs[name], requirements="C"), self.device) for name in self.input_names]

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        arguments = self._arguments(inputs)
        with off_tvm_worker_cpus():
            result = self.vm["main"](*arguments)
        return _flatten(result)

    def time_ms(self, inputs: dict[str, np.ndarray], repeat: int = 20, number: int = 1) -> list[float]:
        """Per-run latencies in ms from TVM's time_evaluator (after one warm-up call)."""
        arguments = self._arguments(inputs)
        self.vm["main"](*arguments)  # starts TVM's thread pool on the first call
        evaluator = self.vm.time_evaluator("main", self.device, number=number, repeat=repeat)
        with off_tvm_worker_cpus():
            results = evaluator(*arguments).results
        return [seconds * 1000.0 for seconds in results]

    def kernel_ms(self, inputs: dict[str, np.ndarray], repeat: int = 20) -> dict[str, float]:
        """Mean ms per run spent in each function the VM calls (kernels and VM builtins), by name.

        Timed with the VM's instrument hook around each call, so each figure includes a
        microsecond or two of the hook itself; `time_ms` is the figure for the whole run. The hook
        sees only calls the VM interprets: the library must be built with exec_mode "bytecode"
        (`TvmLlvmBackend.compile`); mcc's artifacts compile the VM's function to native code.
        """
        import time

        arguments = self._arguments(inputs)
        self.vm["main"](*arguments)
        spent: dict[str, float] = {}
        started: dict[str, float] = {}

        def instrument(func, name, before_run, ret_value, *args):
            if before_run:
                started[name] = time.perf_counter()
            else:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - started[name]
            return 0

        self.vm.set_instrument(instrument)
        try:
            with off_tvm_worker_cpus():
                for _ in range(repeat):
                    self.vm["main"](*arguments)
        finally:
            self.vm.set_instrument(None)
        if not spent:
            raise RuntimeError("no call reached the VM's instrument hook: per-kernel timing needs a library "
                               "built with exec_mode='bytecode'")
        return {name: seconds * 1000.0 / repeat for name, seconds in spent.items()}


def _flatten(value) -> list[np.ndarray]:
    if hasattr(value, "numpy"):
        return [value.numpy()]
    import tvm

    if isinstance(value, tvm.runtime.ShapeTuple):  # a graph output computed as a shape (Shape(x))
        return [np.array(list(value), dtype=np.int64)]
    outputs: list[np.ndarray] = []
    for item in value:
        outputs.extend(_flatten(item))
    return outputs
