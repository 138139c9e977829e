"""Targets as data, and the hardware cost models that read them.

One TOML file per device under `hwmodels/targets/` (schema and units: `hwmodels/schema.py`;
where each figure comes from: `hwmodels/README.md`). `load_target` accepts a built-in name or a
path to a user's TOML file and validates it, reporting the first bad field in one line.
The `host` target detects this machine's CPU at run time (`hwmodels/host.py`).
"""

from __future__ import annotations

import bisect
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from mcc.hwmodels.schema import OP_CLASSES, OPTIONAL_CLASSES, PRECISIONS, TargetSchemaError, validate_target_data
from mcc.toolchain.errors import UsageError

TARGETS_DIR = Path(__file__).parent / "targets"
CONV_CLASSES = ("conv", "pointwise_conv", "depthwise_conv")
#: op classes whose efficiency a calibrated profile may give as a curve over reduction length
CURVE_CLASSES = (*CONV_CLASSES, "matmul")


def interpolate_log_log(points: tuple[tuple[float, float], ...], x: float) -> float:
    """y at x on the piecewise log-log line through `points` (sorted by x, positive), clamped at the ends."""
    xs = [point[0] for point in points]
    i = bisect.bisect_left(xs, x)
    if i == 0:
        return points[0][1]
    if i == len(points):
        return points[-1][1]
    (x0, y0), (x1, y1) = points[i - 1], points[i]
    t = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
    return math.exp(math.log(y0) + t * (math.log(y1) - math.log(y0)))


@dataclass(frozen=True)
class TargetSpec:
    """A validated target. Numbers carry their units in their names."""

    name: str
    description: str
    device_class: str
    backend: str
    tvm_target: dict
    cores: int
    clock_ghz: float
    peak_gops: dict[str, float]
    dram_bandwidth_gb_s: float
    dram_mb: float
    sram_kib: float
    flash_kib: float
    cache_kib: float
    idle_w: float
    active_w: float
    kernel_overhead_us: float
    efficiency: dict[str, float]
    bandwidth_efficiency: float
    pj_per_op: dict[str, float]
    dram_pj_per_byte: float
    precisions: tuple[str, ...]
    excluded_ops: tuple[str, ...] = ()
    #: precisions the backend computes in another on this target (fp16 -> fp32 on a CPU without
    #: float16 arithmetic: backends/tvm/half.py widens such models); the cost model estimates them so
    computed_as: dict[str, str] = field(default_factory=dict)
    usd_per_hour: float | None = None
    detect_host: bool = False
    #: calibrated only: op class -> (size, efficiency) points sorted by size (`costmodel.curve_size`),
    #: which replace that class's single efficiency when present (see hwmodels/calibrate.py)
    efficiency_curves: dict[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)
    #: calibrated only: GB/s of a stream that stays in cache (0: unknown, every byte at DRAM speed);
    #: a model whose weights and activations fit in `cache_kib` reads them at this rate run after run
    cache_bandwidth_gb_s: float = 0.0
    sources: dict[str, str] = field(default_factory=dict)
    path: str = ""

    def tvm(self):
        """The `tvm.target.Target`; for the host, with the detected LLVM mcpu and core count."""
        import tvm

        config = dict(self.tvm_target)
        if self.detect_host:
            detected = tvm.target.Target.from_device(tvm.cpu())
            mcpu = detected.attrs.get("mcpu")
            if mcpu:
                config.setdefault("mcpu", str(mcpu))
            config.setdefault("num-cores", self.cores)
        return tvm.target.Target(config)

    def node_efficiency(self, op_class: str, size: float) -> float:
        """Fraction of peak a node of `op_class` reaches.

        `size` places the node on its class's curve (`costmodel.curve_size`: reduction length for a
        convolution, min(K, N) for a matmul). With a calibrated curve for the class, the
        efficiency is interpolated linearly in log(size)-log(efficiency) between its points and held
        constant beyond the first and last; otherwise it is the class's single efficiency.
        """
        curve = self.efficiency_curves.get(op_class)
        if curve and size > 0:
            return interpolate_log_log(curve, size)
        return self.efficiency[op_class if op_class in self.efficiency else "other"]

    def as_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def list_targets() -> list[str]:
    return sorted(path.stem for path in TARGETS_DIR.glob("*.toml"))


def _resolve(name_or_path: str) -> Path:
    if name_or_path.endswith(".toml") or os.sep in name_or_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise UsageError(f"target file '{name_or_path}' does not exist")
        return path
    path = TARGETS_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise UsageError(f"unknown target '{name_or_path}'; candidates are: {', '.join(list_targets())}")
    return path


def target_from_data(data: dict, path: str = "") -> TargetSpec:
    """Build a TargetSpec from already-validated TOML data."""
    memory, compute, power = data["memory"], data["compute"], data["power"]
    given = data["efficiency"]
    efficiency = {name: float(given.get(name, given.get(OPTIONAL_CLASSES.get(name, name), 0.0))) for name in OP_CLASSES}
    spec = TargetSpec(
        name=data["name"],
        description=data["description"],
        device_class=data["device_class"],
        backend=data["backend"],
        tvm_target=dict(data["tvm"]["target"]),
        cores=int(compute["cores"]),
        clock_ghz=float(compute["clock_ghz"]),
        peak_gops={k: float(v) for k, v in compute["peak_gops"].items()},
        dram_bandwidth_gb_s=float(memory["dram_bandwidth_gb_s"]),
        dram_mb=float(memory["dram_mb"]),
        sram_kib=float(memory.get("sram_kib", 0.0)),
        flash_kib=float(memory.get("flash_kib", 0.0)),
        cache_kib=float(memory.get("cache_kib", 0.0)),
        idle_w=float(power["idle_w"]),
        active_w=float(power["active_w"]),
        kernel_overhead_us=float(data["overhead"]["kernel_us"]),
        efficiency=efficiency,
        bandwidth_efficiency=float(data["efficiency"]["bandwidth"]),
        pj_per_op={k: float(v) for k, v in data["energy"]["pj_per_op"].items()},
        dram_pj_per_byte=float(data["energy"]["dram_pj_per_byte"]),
        precisions=tuple(data["support"]["precisions"]),
        excluded_ops=tuple(data["support"].get("excluded_ops", ())),
        computed_as=dict(data["support"].get("computed_as", {})),
        usd_per_hour=float(data["price"]["usd_per_hour"]) if "usd_per_hour" in data.get("price", {}) else None,
        detect_host=bool(data.get("detect_host", False)),
        sources=dict(data.get("sources", {})),
        path=path,
    )
    if spec.detect_host:
        from mcc.hwmodels.host import detect_host

        spec = detect_host(spec)
    return spec


def load_target(name_or_path: str) -> TargetSpec:
    """A built-in target by name, or a user target from a `.toml` path; validated."""
    path = _resolve(name_or_path)
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"target file '{path}': invalid TOML ({exc})") from None
    try:
        validate_target_data(data)
    except TargetSchemaError as exc:
        raise UsageError(f"target file '{path}': {exc}") from None
    return target_from_data(data, str(path))


__all__ = ["PRECISIONS", "TargetSpec", "list_targets", "load_target", "target_from_data"]
