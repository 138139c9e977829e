"""Group nodes into kernels the way TVM's FuseOps does, so fused intermediates cost no memory traffic.

TVM (Relax `FuseOps`) fuses by op pattern: an "out-elementwise-fusable" anchor (conv, matmul)
absorbs the elementwise/broadcast ops that follow it; elementwise chains fuse with each other; a
pool or reduction absorbs following elementwise ops too. A node joins its producer's kernel when
it is elementwise, its first activation input comes from that kernel, and that tensor has no
other reader (fusing a tensor that is also read elsewhere would force it to memory anyway).
Views (Reshape & co.) are free and join no kernel: TVM lowers them to no kernel.
Data movement (Transpose, Concat, Pad, ...) and "other" ops are kernels of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mcc.hwmodels.workload import NodeWork

FUSABLE_ANCHORS = {"conv", "depthwise_conv", "matmul", "pool", "reduction", "elementwise"}


@dataclass
class Kernel:
    nodes: list[NodeWork] = field(default_factory=list)

    @property
    def anchor(self) -> NodeWork:
        for node in self.nodes:
            if node.op_class != "elementwise":
                return node
        return self.nodes[0]

    @property
    def name(self) -> str:
        return self.anchor.name

    @property
    def op_class(self) -> str:
        return self.anchor.op_class

    def produced(self) -> set[str]:
        return {name for node in self.nodes for name in node.outputs}


def form_kernels(works: list[NodeWork], graph_outputs: set[str]) -> list[Kernel]:
    readers: dict[str, int] = {}
    for work in works:
        for name in work.inputs:
            readers[name] = readers.get(name, 0) + 1
    kernel_of: dict[str, Kernel] = {}  # tensor -> the kernel that produces it
    alias = resolve_alias(works)
    kernels: list[Kernel] = []
    for work in works:
        if work.op_class == "view":
            continue
        producer_kernel = None
        if work.op_class == "elementwise" and work.inputs:
            first = work.inputs[0]
            source = alias.get(first, first)
            candidate = kernel_of.get(source)
            if (
                candidate is not None
                and candidate.op_class in FUSABLE_ANCHORS
                and readers.get(first, 0) == 1
                and first not in graph_outputs
                and source == first
            ):
                producer_kernel = candidate
        if producer_kernel is None:
            producer_kernel = Kernel()
            kernels.append(producer_kernel)
        producer_kernel.nodes.append(work)
        for name in work.outputs:
            kernel_of[name] = producer_kernel
    return kernels


def resolve_alias(works: list[NodeWork]) -> dict[str, str]:
    """view output -> the tensor whose memory it shares."""
    alias: dict[str, str] = {}
    for work in works:
        if work.op_class == "view" and work.inputs:
            source = alias.get(work.inputs[0], work.inputs[0])
            for name in work.outputs:
                alias[name] = source
    return alias
