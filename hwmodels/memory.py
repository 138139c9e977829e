"""Peak memory from liveness: an arena plan of the activations, plus the weights.

Every tensor that crosses a kernel boundary lives from the kernel that writes it (graph inputs:
from the start) to the last kernel that reads it, directly or through views (views share their
source's memory, so they extend its life; graph outputs live to the end). Tensors are placed in
one arena greedily by decreasing size at the lowest offset that does not overlap any placed
tensor alive at the same time (the greedy-by-size heuristic of TFLite's and TVM's static
planners). The arena size is what a runtime must allocate for activations; `peak_live_bytes`
(the most bytes alive at one moment) is its lower bound.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Buffer:
    name: str
    size_bytes: float
    first: int
    last: int


@dataclass(frozen=True)
class ArenaPlan:
    arena_bytes: float
    peak_live_bytes: float
    buffers: int


def plan_arena(buffers: list[Buffer]) -> ArenaPlan:
    placed: list[tuple[Buffer, float]] = []
    arena = 0.0
    for buffer in sorted(buffers, key=lambda b: (-b.size_bytes, b.first, b.name)):
        if buffer.size_bytes <= 0:
            continue
        overlapping = sorted(
            (offset, offset + other.size_bytes)
            for other, offset in placed
            if other.first <= buffer.last and buffer.first <= other.last
        )
        offset = 0.0
        for start, end in overlapping:
            if offset + buffer.size_bytes <= start:
                break
            offset = max(offset, end)
        placed.append((buffer, offset))
        arena = max(arena, offset + buffer.size_bytes)
    steps = {b.first for b in buffers} | {b.last for b in buffers}
    peak_live = max(
        (sum(b.size_bytes for b in buffers if b.first <= step <= b.last) for step in steps), default=0.0
    )
    return ArenaPlan(arena_bytes=arena, peak_live_bytes=peak_live, buffers=len(buffers))
