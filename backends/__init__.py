"""Backends: TVM per target family (compile, export, load, run) and onnxruntime (the reference).

Backends are looked up by the name a target's TOML gives (`backend = "tvm-llvm"`), through the
table `BACKENDS`, never by if/elif over target names.
"""

from __future__ import annotations

from mcc.backends.base import Backend, CompiledArtifact, Runner


def get_backend(name: str) -> Backend:
    from mcc.backends.tvm.llvm import TvmLlvmBackend

    backends: dict[str, type] = {TvmLlvmBackend.name: TvmLlvmBackend}
    if name not in backends:
        from mcc.toolchain.errors import UsageError

        raise UsageError(f"unknown backend '{name}'; candidates are: {', '.join(sorted(backends))}")
    return backends[name]()


__all__ = ["Backend", "CompiledArtifact", "Runner", "get_backend"]
