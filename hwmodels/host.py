"""Detect the host CPU: cores, clock, vector extensions -> peak rates; apply a calibrated profile.

Peak ops per cycle per core come from the CPU flags (two FMA ports assumed, as on every
AVX-512 server core since Skylake-SP):

    avx512f      fp32: 2 ports x 16 lanes x 2 ops = 64      fp16: as fp32, or 2x with avx512_fp16
    avx2 + fma   fp32: 2 ports x  8 lanes x 2 ops = 32
    avx512_vnni  int8: 2 ports x 64 MACs x 2 ops = 256      (avx2 vnni/none: 4x fp32)
    otherwise    fp32: 8 (SSE)

`mcc calibrate --target host` measures what TVM-compiled kernels reach and stores a profile in
the user cache; `detect_host` applies it when present, and the target's sources say so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from pathlib import Path


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in info:
            info[key.strip()] = value.strip()
    return info


def ops_per_cycle(flags: set[str]) -> dict[str, float]:
    if "avx512f" in flags:
        fp32 = 64.0
    elif "avx2" in flags and "fma" in flags:
        fp32 = 32.0
    else:
        fp32 = 8.0
    # AVX512-FP16 (Sapphire Rapids on): LLVM compiles TVM's float16 kernels to native half FMAs, 32
    # lanes a register (squeezenet fp16 here: 782 vfmadd*ph, no conversion to float32; 0.65-0.72x
    # the fp32 artifact's latency, RESULTS.md host_latency). Without it float16 is converted (F16C)
    # and computed at the fp32 rate.
    fp16 = 2 * fp32 if "avx512_fp16" in flags else fp32
    int8 = 256.0 if "avx512_vnni" in flags else 4 * fp32 if "avx_vnni" in flags else 2 * fp32
    return {"fp32": fp32, "fp16": fp16, "int8": int8}


def cpu_fingerprint() -> str:
    """Identifies the CPU a calibration was measured on (model, flags, core count)."""
    info = _cpuinfo()
    text = "|".join([info.get("model name", "?"), info.get("flags", ""), str(len(os.sched_getaffinity(0)))])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_dir() -> Path:
    base = os.environ.get("MCC_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mcc"
    )
    return Path(base)


def calibration_path() -> Path:
    return cache_dir() / "calibration" / f"host-{cpu_fingerprint()}.json"


def detect_host(spec):
    """The host target with detected figures (and a calibrated profile, when one exists)."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    cores = len(os.sched_getaffinity(0))
    try:
        clock_ghz = float(info.get("cpu MHz", "")) / 1000.0
    except ValueError:
        clock_ghz = spec.clock_ghz
    per_cycle = ops_per_cycle(flags)
    peak = {precision: round(cores * clock_ghz * per_cycle[precision], 3) for precision in spec.peak_gops}
    try:
        dram_mb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (ValueError, OSError):
        dram_mb = spec.dram_mb
    description = f"{spec.description}: {info.get('model name', 'unknown CPU')}, {cores} cores @ {clock_ghz:.2f} GHz"
    l2_kib = level2_cache_kib()
    # float16 arithmetic: x86 AVX512-FP16, Arm's half-precision SIMD (/proc/cpuinfo "Features":
    # asimdhp); without it the backend computes float16 models in float32 (backends/tvm/half.py)
    features = flags | set(info.get("Features", "").split())
    computed_as = {} if features & {"avx512_fp16", "asimdhp"} else {"fp16": "fp32"}
    updated = dataclasses.replace(spec, cores=cores, clock_ghz=clock_ghz, peak_gops=peak, dram_mb=round(dram_mb, 1),
                                  cache_kib=cores * l2_kib if l2_kib else spec.cache_kib, description=description,
                                  computed_as=computed_as)
    return apply_calibration(updated)


def level2_cache_kib(cpu: int = 0) -> float | None:
    """One core's L2 cache in KiB, from Linux's sysfs (None where it does not say). The cost model
    counts the L2 of every core mcc runs on as the cache a model can stay in between runs."""
    for index in sorted(Path(f"/sys/devices/system/cpu/cpu{cpu}/cache").glob("index*")):
        try:
            if (index / "level").read_text().strip() != "2":
                continue
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        units = {"K": 1.0, "M": 1024.0, "G": 1024.0 ** 2}
        try:
            return float(size[:-1]) * units[size[-1]] if size[-1] in units else float(size) / 1024
        except ValueError:
            return None
    return None


def _curves(data: dict) -> dict[str, tuple[tuple[float, float], ...]]:
    """A profile's efficiency curves, validated: known classes, positive points, increasing lengths."""
    from mcc.hwmodels import CURVE_CLASSES

    curves = {}
    for op_class, points in data.items():
        curve = tuple((float(length), float(value)) for length, value in points)
        if op_class not in CURVE_CLASSES or not curve or any(x <= 0 or not 0 < y <= 1 for x, y in curve):
            raise ValueError(f"bad efficiency curve for {op_class!r}")
        if any(a[0] >= b[0] for a, b in zip(curve, curve[1:])):
            raise ValueError(f"efficiency curve for {op_class!r} is not sorted by reduction length")
        curves[op_class] = curve
    return curves


#: bumped whenever `mcc calibrate` changes what it measures: a profile measured otherwise is ignored
#: (2: the layout transposes the backend adds around a one-op model are no longer charged to it;
#: 3: the cache bandwidth is measured too; 4: convolutions timed with channels-last boundaries,
#: not less their instrumented transposes; 5: kernels timed off TVM's worker CPUs, and the peak scaled
#: when kernels beat the nominal clock's)
CALIBRATION_VERSION = 5


_PROFILE_OFF: list[bool] = []


@contextlib.contextmanager
def without_profile():
    """`load_target("host")` returns the host as detected, no calibration profile applied (what
    `mcc calibrate` fits against)."""
    _PROFILE_OFF.append(True)
    try:
        yield
    finally:
        _PROFILE_OFF.pop()


def apply_calibration(spec):
    path = calibration_path()
    if _PROFILE_OFF or not path.is_file():
        return spec
    try:
        profile = json.loads(path.read_text())
        from mcc.backends.tvm.schedules import SCHEDULES_VERSION

        if (profile.get("schedules_version") != SCHEDULES_VERSION
                or profile.get("calibration_version", 1) != CALIBRATION_VERSION):
            # measured with other kernels (an older mcc's schedules) or another method: the target
            # file's values describe today's kernels better; `mcc calibrate` measures them again
            return spec
        efficiency = {**spec.efficiency, **{k: float(v) for k, v in profile.get("efficiency", {}).items()}}
        sources = dict(spec.sources)
        note = f"calibrated on host by `mcc calibrate` ({profile.get('date', '?')}, {path})"
        for key in ("efficiency", "memory.dram_bandwidth_gb_s", "memory.cache_bandwidth_gb_s", "overhead.kernel_us"):
            sources[key] = note
        # the peak at the clock the calibration measured (kernels faster than the reported clock
        # allows), whatever the clock reads now
        clock_ghz = float(profile.get("effective_clock_ghz", 0.0)) or spec.clock_ghz
        if clock_ghz != spec.clock_ghz:
            sources["compute.peak_gops"] = (f"at an effective {clock_ghz:.2f} GHz measured by `mcc calibrate` "
                                            f"(/proc/cpuinfo reads {spec.clock_ghz:.2f} GHz)")
        return dataclasses.replace(
            spec,
            peak_gops={name: value * clock_ghz / spec.clock_ghz for name, value in spec.peak_gops.items()},
            efficiency=efficiency,
            bandwidth_efficiency=float(profile.get("bandwidth_efficiency", spec.bandwidth_efficiency)),
            dram_bandwidth_gb_s=float(profile.get("dram_bandwidth_gb_s", spec.dram_bandwidth_gb_s)),
            kernel_overhead_us=float(profile.get("kernel_us", spec.kernel_overhead_us)),
            efficiency_curves=_curves(profile.get("efficiency_curves", {})),
            cache_bandwidth_gb_s=float(profile.get("cache_bandwidth_gb_s", 0.0)),
            sources=sources,
        )
    except (OSError, ValueError, TypeError, AttributeError):
        return spec  # a corrupt profile is ignored; `mcc calibrate` rewrites it
