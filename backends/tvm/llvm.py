"""TVM for LLVM CPU targets (the host now; aarch64 cross targets later use the same phases).

Import (Relax ONNX frontend) -> DecomposeOpsForInference -> the `zero` pipeline (legalize, fuse)
-> `tvm.compile` for the target -> `export_library` to a shared object. TVM 0.27's `tvm.compile`
on CPU does no fusion by itself, hence `zero` first (see shared/notes/tvm-0.27.md, section 3).
"""

from __future__ import annotations

import time
from pathlib import Path

import onnx

from mcc.backends.base import CompiledArtifact
from mcc.backends.tvm import common


class TvmLlvmBackend:
    name = "tvm-llvm"
    min_opset = 13
    library_suffix = ".so"

    def supported_ops(self) -> frozenset[str]:
        return common.frontend_ops()

    def unsupported_nodes(self, model: onnx.ModelProto, excluded: frozenset[str] = frozenset()) -> list[onnx.NodeProto]:
        return common.unsupported_nodes(model, common.frontend_ops() - excluded)

    def compile(self, model: onnx.ModelProto, target, input_shapes: dict, library_path: Path) -> CompiledArtifact:
        import tvm
        from tvm import relax

        timings: dict[str, float] = {}
        start = time.perf_counter()
        mod = common.import_onnx(model, input_shapes)
        timings["import"] = time.perf_counter() - start

        start = time.perf_counter()
        mod = relax.transform.DecomposeOpsForInference()(mod)
        mod = relax.get_pipeline("zero")(mod)
        executable = tvm.compile(mod, target=target)
        timings["build"] = time.perf_counter() - start

        start = time.perf_counter()
        executable.export_library(str(library_path))
        timings["export"] = time.perf_counter() - start
        return CompiledArtifact(library=Path(library_path), timings_s=timings, details={"tvm_target": str(target)})

    def load(self, library_path: Path, model: onnx.ModelProto) -> common.RelaxVMRunner:
        return common.RelaxVMRunner(library_path, model, device="cpu")
