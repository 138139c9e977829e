"""How fast is the cost model? (issue 3, point 6: a 500-node model in < 100 ms)

Builds synthetic ResNet-like graphs of N nodes (Conv -> BatchNorm-free Add -> Relu blocks with
skip connections, 64 channels at 56x56), plus every model in ../shared/models that needs no
extra input shapes, and times `hwmodels.costmodel.estimate` (median of repeats, after one warm
run) on the host target and on a microcontroller target.

    python benchmarks/estimate_speed.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mcc.hwmodels import load_target
from mcc.hwmodels.costmodel import estimate
from mcc.toolchain import ir

REPO = Path(__file__).resolve().parent.parent


def synthetic_resnet(nodes: int, channels: int = 64, size: int = 56) -> onnx.ModelProto:
    """A chain of (Conv, Add-skip, Relu) blocks with about `nodes` nodes."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(channels, channels, 3, 3)).astype(np.float32) * 0.01, "w")
    graph_nodes, current = [], "x"
    for block in range(nodes // 3):
        conv, added, relu = f"c{block}", f"a{block}", f"r{block}"
        graph_nodes += [
            helper.make_node("Conv", [current, "w"], [conv], name=f"conv{block}", pads=[1, 1, 1, 1]),
            helper.make_node("Add", [conv, current], [added], name=f"add{block}"),
            helper.make_node("Relu", [added], [relu], name=f"relu{block}"),
        ]
        current = relu
    value = helper.make_tensor_value_info
    graph = helper.make_graph(graph_nodes, "synthetic", [value("x", TensorProto.FLOAT, [1, channels, size, size])],
                              [value(current, TensorProto.FLOAT, [1, channels, size, size])], initializer=[weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def time_ms(model: onnx.ModelProto, target, repeat: int) -> float:
    estimate(model, target)
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        estimate(model, target)
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    host, mcu = load_target("host"), load_target("stm32h7")
    print(f"command: python {' '.join(sys.argv)}")
    print(f"{'model':<40} {'nodes':>6} {'host ms':>9} {'stm32h7 ms':>11} {'< 100 ms':>9}")
    cases = [(f"synthetic-resnet-{n}", synthetic_resnet(n)) for n in (99, 300, 501, 999)]
    shared = REPO.parent / "shared" / "models"
    for path in sorted(shared.glob("*/*.onnx")) if shared.is_dir() else []:
        try:
            model, _ = ir.fix_input_shapes(ir.load_model(path), {})
        except Exception:  # models that need --input-shape are skipped here
            continue
        cases.append((path.name, model))
    for name, model in cases:
        host_ms, mcu_ms = time_ms(model, host, args.repeat), time_ms(model, mcu, args.repeat)
        verdict = "yes" if max(host_ms, mcu_ms) < 100 else "NO"
        print(f"{name:<40} {len(model.graph.node):>6} {host_ms:>9.1f} {mcu_ms:>11.1f} {verdict:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
