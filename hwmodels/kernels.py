"""Group nodes into kernels the way TVM's FuseOps does, so fused intermediates cost no memory traffic.

TVM (Relax `FuseOps`) fuses by op pattern: an "out-elementwise-fusable" anchor (conv, matmul)
absorbs the elementwise/broadcast ops that follow it; elementwise chains fuse with each other; a
pool or reduction absorbs following elementwise ops too. A node joins the kernel just formed when it
is elementwise, its first activation input comes from that kernel, and every reader of that tensor
is elementwise (all of them can stay in the kernel; a non-fusable reader would force the tensor to
memory anyway).
Views (Reshape & co.) are free and join no kernel: TVM lowers them to no kernel.
Data movement (Transpose, Concat, Pad, ...) and "other" ops are kernels of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mcc.hwmodels.workload import NodeWork

FUSABLE_ANCHORS = {"conv", "pointwise_conv", "depthwise_conv", "matmul", "pool", "reduction", "elementwise"}


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
    """Kernels in execution order (the nodes' topological order)."""
    readers: dict[str, set[int]] = {}  # tensor -> indices of the (distinct) nodes that read it
    by_index = {work.index: work for work in works}
    for work in works:
        for name in work.inputs:
            readers.setdefault(name, set()).add(work.index)
    kernel_of: dict[str, Kernel] = {}  # tensor -> the kernel that produces it
    alias = resolve_alias(works)
    kernels: list[Kernel] = []
    for work in works:
        if work.op_class == "view":
            continue
        target = kernels[-1] if kernels and _joins(work, kernels[-1], kernel_of, alias, readers, by_index,
                                                    graph_outputs) else None
        if target is None:
            target = Kernel()
            kernels.append(target)
        target.nodes.append(work)
        for name in work.outputs:
            kernel_of[name] = target
    return kernels


def _joins(work, current: Kernel, kernel_of, alias, readers, by_index, graph_outputs) -> bool:
    """Whether an elementwise node fuses into the kernel just formed.

    Only the latest kernel can absorb it (so every other input it reads is already computed), one of
    its inputs must be produced there (not through a view; a residual Add fuses whichever operand
    the conv is), and every reader of that tensor must be elementwise too, so all of them can stay
    in the kernel (SiLU's conv -> Sigmoid -> Mul diamond).
    """
    if work.op_class != "elementwise" or not work.inputs or current.op_class not in FUSABLE_ANCHORS:
        return False
    for name in work.inputs:
        if alias.get(name, name) != name or kernel_of.get(name) is not current or name in graph_outputs:
            continue
        if all(by_index[index].op_class == "elementwise" for index in readers.get(name, ())):
            return True
    return False


def resolve_alias(works: list[NodeWork]) -> dict[str, str]:
    """view output -> the tensor whose memory it shares."""
    alias: dict[str, str] = {}
    for work in works:
        if work.op_class == "view" and work.inputs:
            source = alias.get(work.inputs[0], work.inputs[0])
            for name in work.outputs:
                alias[name] = source
    return alias
