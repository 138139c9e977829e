"""The analytic cost model: roofline per fused kernel, liveness-planned memory, energy and price.

For a kernel k running at precision p on target T:

    compute_s(k) = sum over its nodes n of ops(n) / (peak_gops[p] * 1e9 * efficiency[class(n)])

(a calibrated host gives convolution and matmul efficiencies as curves, over reduction length for
convolutions and over the weight's smaller side for matmuls: `curve_size`, hwmodels/calibrate.py). Elementwise ops fused behind a conv or
matmul anchor (bias, activation, residual add) are its epilogue: they work on values as the
anchor produces them and are charged at the peak rate, not at the `elementwise` efficiency, which
describes standalone elementwise kernels.
    memory_s(k)  = bytes(k) / (dram_bandwidth_gb_s * 1e9 * bandwidth_efficiency)
                   (cache_bandwidth_gb_s instead when the whole model fits in cache_kib: `cache_resident`)
    time_s(k)    = max(compute_s, memory_s) + kernel_us * 1e-6         (bound: the larger term)

bytes(k) counts what crosses the kernel boundary: activations and weights read from outside the
kernel (Gather/Slice only the slice they return), and outputs read outside it or returned (a fused elementwise op after a conv does not round-trip
memory). Latency is the sum over kernels (batch 1, one kernel at a time, as the Relax VM runs).

    energy_j = ops * pj_per_op[p] * 1e-12 + bytes * dram_pj_per_byte * 1e-12 + idle_w * latency_s
    usd_per_million = usd_per_hour / 3600 * latency_s * 1e6              (cloud targets)

Precision: the whole model (`precision`: fp32, fp16, int8, or "native" for the dtypes the model
already has) or per node (`layer_precisions`, node name -> precision);
a precision the target has no peak for runs at its fp32 rate (and the estimate says so), and one
the target's backend computes in another (`computed_as`: float16 on a CPU without float16
arithmetic is widened to float32, backends/tvm/half.py) is estimated as that one throughout. The model
answers "what if" questions cheaply: nothing here compiles or runs the model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import onnx

from mcc.hwmodels import TargetSpec
from mcc.hwmodels.kernels import form_kernels, resolve_alias
from mcc.hwmodels.memory import Buffer, plan_arena
from mcc.hwmodels.workload import (MAC_CLASSES, SLICING_OPS, model_work, native_precision, qdq_precisions,
                                    tensor_bytes)
from mcc.toolchain import ir


@dataclass
class KernelEstimate:
    name: str
    ops: list[str]
    op_class: str
    precision: str
    output_shape: list[int] | None
    macs: int
    arithmetic_ops: float
    bytes: float
    compute_ms: float
    memory_ms: float
    latency_ms: float
    bound: str  # "compute" | "memory" | "overhead"


@dataclass
class Estimate:
    target: str
    precision: str
    latency_ms: float
    peak_memory_mb: float
    arena_mb: float
    weights_mb: float
    size_mb: float
    energy_mj: float
    usd_per_million: float | None
    macs: int
    kernels: list[KernelEstimate]
    fits: bool
    verdict: str
    notes: list[str] = field(default_factory=list)

    def hotspots(self, count: int = 5) -> list[KernelEstimate]:
        return sorted(self.kernels, key=lambda k: -k.latency_ms)[:count]

    def as_dict(self, with_kernels: bool = True) -> dict:
        data = asdict(self)
        if not with_kernels:
            data.pop("kernels")
        data["hotspots"] = [k.name for k in self.hotspots()]
        return data


def curve_size(node) -> float:
    """Where a node sits on its class's efficiency curve (`TargetSpec.efficiency_curves`).

    Convolutions: the reduction length, MACs per output element (input channels / groups x window).
    Matmuls: min(K, N), the smaller side of the weight: an untuned matmul walks the weight K-strided
    and is slow only when both a K-line window overflows L1 (large K) and the weight overflows L2
    (large K x N). Other classes: MACs per output element (they have no curve).
    """
    outputs = math.prod(node.output_shape) if node.output_shape else 0
    if not outputs:
        return 0.0
    if node.op_class == "matmul":
        return min(node.macs / outputs, node.output_shape[-1])
    return node.macs / outputs


def cache_resident(works, types, target: TargetSpec) -> bool:
    """Whether every weight and every activation together fit in the target's cache, so that a
    model run again and again (a service, a benchmark) reads them from cache, not DRAM. An upper
    bound of the working set: all tensors at once, none reusing another's memory."""
    if target.cache_bandwidth_gb_s <= 0 or target.cache_kib <= 0:
        return False
    names = {name for work in works for name in (*work.inputs, *work.outputs, *work.weights) if name}
    if any(ir.static_shape(types[name][1]) is None if name in types else True for name in names):
        return False  # a tensor of unknown size (a data-dependent shape): not known to fit
    return sum(tensor_bytes(name, types, "native") for name in names) <= target.cache_kib * 1024


def _precision_for(work, default: str, layer_precisions: dict[str, str] | None, types: dict) -> str:
    if layer_precisions and work.name in layer_precisions:
        return layer_precisions[work.name]
    if default == "native":
        return native_precision(work.outputs[0], types) if work.outputs else "fp32"
    return default


def estimate(
    model: onnx.ModelProto,
    target: TargetSpec,
    precision: str = "native",
    layer_precisions: dict[str, str] | None = None,
) -> Estimate:
    """Predict latency, memory, size, energy and price of a static-shape model on `target`."""
    inferred = ir.infer_shapes(model)
    works, types = model_work(inferred)
    if precision == "native":
        # a QDQ model's quantized layers read dequantized float tensors, but compute in int8
        layer_precisions = {**qdq_precisions(inferred, works), **(layer_precisions or {})}
    graph_outputs = {value.name for value in model.graph.output}
    kernels = form_kernels(works, graph_outputs)
    notes: list[str] = []

    def peak(p: str) -> float:
        if p not in target.peak_gops:
            note = f"{target.name} has no {p} rate; {p} layers are estimated at its fp32 rate"
            if note not in notes:
                notes.append(note)
            return target.peak_gops["fp32"]
        return target.peak_gops[p]

    alias = resolve_alias(works)
    readers: dict[str, set[int]] = {}  # tensor (through views) -> indices of the nodes that read it
    for work in works:
        if work.op_class != "view":
            for name in work.inputs:
                readers.setdefault(alias.get(name, name), set()).add(work.index)
    output_sources = {alias.get(name, name) for name in graph_outputs}  # outputs reached through views too
    kernel_index_of: dict[str, int] = {}
    for index, kernel in enumerate(kernels):
        for name in kernel.produced():
            kernel_index_of[name] = index

    def computed(p: str) -> str:
        """The precision the target's backend computes (and stores) `p` in."""
        actual = target.computed_as.get(p, p)
        if actual != p:
            note = (f"{target.name} computes {p} as {actual} (no {p} arithmetic): {p} layers are estimated "
                    f"with {actual} rates, bytes and weights")
            if note not in notes:
                notes.append(note)
        return actual

    bandwidth_b_s = target.dram_bandwidth_gb_s * 1e9 * target.bandwidth_efficiency
    if cache_resident(works, types, target):
        bandwidth_b_s = max(bandwidth_b_s, target.cache_bandwidth_gb_s * 1e9)
        notes.append(f"weights and activations fit in the {target.cache_kib:.0f} KiB cache: "
                     f"read at {target.cache_bandwidth_gb_s:.0f} GB/s, not the DRAM rate")
    overhead_s = target.kernel_overhead_us * 1e-6
    results: list[KernelEstimate] = []
    total_ops = total_bytes = dynamic_op_pj = 0.0
    last_read: dict[str, int] = {}
    for index, kernel in enumerate(kernels):
        kernel_precision = computed(_precision_for(kernel.anchor, precision, layer_precisions, types))
        produced = kernel.produced()
        members = {node.index for node in kernel.nodes}
        reads: dict[str, float] = {}  # tensor read from outside the kernel -> bytes read
        compute_s = 0.0
        ops = 0.0
        epilogue = kernel.anchor.op_class in MAC_CLASSES
        for node in kernel.nodes:
            node_precision = computed(_precision_for(node, kernel_precision, layer_precisions, types))
            if node.op_class == "elementwise" and epilogue:
                efficiency = 1.0  # applied to values in registers as the anchor produces them
            else:
                efficiency = target.node_efficiency(node.op_class, curve_size(node))
            rate = peak(node_precision) * 1e9 * efficiency
            compute_s += node.ops / rate if rate > 0 else 0.0
            ops += node.ops
            dynamic_op_pj += node.ops * target.pj_per_op.get(node_precision, target.pj_per_op["fp32"])
            for position, name in enumerate(node.input_names):
                source = alias.get(name, name)
                if source in produced:
                    continue
                if name in node.inputs:
                    last_read[source] = index
                size = tensor_bytes(source, types, kernel_precision)
                if position == 0 and node.op_type in SLICING_OPS and node.outputs:
                    # Gather/Slice read only what they return, not the whole table
                    size = min(size, tensor_bytes(node.outputs[0], types, kernel_precision))
                reads[source] = max(reads.get(source, 0.0), size)
        moved = sum(reads.values())
        moved += sum(
            tensor_bytes(name, types, kernel_precision)
            for node in kernel.nodes
            for name in node.outputs
            if readers.get(name, set()) - members or name in output_sources
        )
        memory_s = moved / bandwidth_b_s if bandwidth_b_s > 0 else 0.0
        time_s = max(compute_s, memory_s) + overhead_s
        bound = "compute" if compute_s >= memory_s else "memory"
        if overhead_s > max(compute_s, memory_s):
            bound = "overhead"
        total_ops += ops
        total_bytes += moved
        results.append(
            KernelEstimate(
                name=kernel.name,
                ops=[node.op_type for node in kernel.nodes],
                op_class=kernel.op_class,
                precision=kernel_precision,
                output_shape=list(kernel.nodes[-1].output_shape) if kernel.nodes[-1].output_shape else None,
                macs=sum(node.macs for node in kernel.nodes),
                arithmetic_ops=ops,
                bytes=moved,
                compute_ms=compute_s * 1e3,
                memory_ms=memory_s * 1e3,
                latency_ms=time_s * 1e3,
                bound=bound,
            )
        )

    latency_s = sum(k.latency_ms for k in results) / 1e3

    # Weights: every initializer, at the precision of the node that reads it.
    weight_precision: dict[str, str] = {}
    for work in works:
        for name in work.weights:
            weight_precision.setdefault(name, computed(_precision_for(work, precision, layer_precisions, types)))
    weights_bytes = sum(tensor_bytes(name, types, p) for name, p in weight_precision.items())

    if precision == "native":
        def buffer_precision(name: str) -> str:  # each tensor its own size, unless computed otherwise
            native = native_precision(name, types)
            return computed(native) if native in target.computed_as else "native"
    else:
        def buffer_precision(name: str) -> str:
            return computed(precision)
    buffers = _buffers(model, kernels, kernel_index_of, last_read, alias, graph_outputs, types, buffer_precision)
    plan = plan_arena(buffers)
    peak_bytes = weights_bytes + plan.arena_bytes
    energy_j = dynamic_op_pj * 1e-12 + total_bytes * target.dram_pj_per_byte * 1e-12 + target.idle_w * latency_s
    usd = target.usd_per_hour / 3600.0 * latency_s * 1e6 if target.usd_per_hour is not None else None
    fits, verdict = _memory_verdict(target, weights_bytes, plan.arena_bytes, peak_bytes)
    return Estimate(
        target=target.name,
        precision=precision if not layer_precisions else "mixed",
        latency_ms=latency_s * 1e3,
        peak_memory_mb=peak_bytes / 2**20,
        arena_mb=plan.arena_bytes / 2**20,
        weights_mb=weights_bytes / 2**20,
        size_mb=weights_bytes / 2**20,
        energy_mj=energy_j * 1e3,
        usd_per_million=usd,
        macs=sum(k.macs for k in results),
        kernels=results,
        fits=fits,
        verdict=verdict,
        notes=notes,
    )


def _buffers(model, kernels, kernel_index_of, last_read, alias, graph_outputs, types, precision_of) -> list[Buffer]:
    """Every tensor that crosses a kernel boundary, sized at `precision_of(name)`, with its lifetime."""
    end = len(kernels)
    buffers = []
    outputs_sources = {alias.get(name, name) for name in graph_outputs}
    for value in ir.graph_inputs(model):
        last = end if value.name in outputs_sources else last_read.get(value.name, 0)
        buffers.append(Buffer(value.name, tensor_bytes(value.name, types, precision_of(value.name)), 0, last))
    for name, index in kernel_index_of.items():
        last = end if name in outputs_sources else last_read.get(name)
        if last is None:
            continue  # consumed only inside its own kernel: fused away
        buffers.append(Buffer(name, tensor_bytes(name, types, precision_of(name)), index, max(last, index)))
    return buffers


def _memory_verdict(target: TargetSpec, weights_bytes: float, arena_bytes: float, peak_bytes: float) -> tuple[bool, str]:
    if target.device_class == "mcu":
        problems = []
        if target.flash_kib and weights_bytes > target.flash_kib * 1024:
            problems.append(f"weights {weights_bytes / 1024:.0f} KiB > flash {target.flash_kib:.0f} KiB")
        if target.sram_kib and arena_bytes > target.sram_kib * 1024:
            problems.append(f"activations {arena_bytes / 1024:.0f} KiB > SRAM {target.sram_kib:.0f} KiB")
        if problems:
            return False, f"does not fit {target.name}: " + "; ".join(problems)
        return True, f"fits {target.name} (weights in flash, activations in SRAM)"
    capacity = target.dram_mb * 2**20
    if capacity and peak_bytes > capacity:
        return False, f"does not fit {target.name}: needs {peak_bytes / 2**20:.1f} MB, has {target.dram_mb:.0f} MB"
    return True, f"fits {target.name} memory ({peak_bytes / 2**20:.1f} MB of {target.dram_mb:.0f} MB)"
