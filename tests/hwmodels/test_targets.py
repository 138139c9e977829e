"""Targets as data: every built-in file validates; user files get one-line errors naming the field."""

import copy
import json
import tomllib

import pytest

from mcc.hwmodels import TARGETS_DIR, list_targets, load_target
from mcc.hwmodels.schema import TargetSchemaError, validate_target_data
from mcc.toolchain.errors import UsageError

REQUIRED_TARGETS = {"host", "x86-server", "raspberry-pi-4", "raspberry-pi-5", "jetson-nano", "jetson-orin-nano",
                    "jetson-agx-orin", "stm32h7", "stm32l4", "nvidia-t4", "nvidia-a100", "nvidia-h100"}


def host_data() -> dict:
    return tomllib.loads((TARGETS_DIR / "host.toml").read_text())


def test_builtin_targets_are_all_there_and_valid():
    names = set(list_targets())
    assert REQUIRED_TARGETS <= names
    for name in names:
        spec = load_target(name)
        assert spec.name == name
        assert spec.peak_gops["fp32"] > 0 and spec.dram_bandwidth_gb_s > 0
        assert spec.sources and spec.path.endswith(f"{name}.toml")


def test_microcontrollers_declare_sram_and_flash():
    for name in ("stm32h7", "stm32l4"):
        spec = load_target(name)
        assert spec.device_class == "mcu" and spec.sram_kib > 0 and spec.flash_kib > 0


def test_cloud_targets_have_a_price():
    for name in ("nvidia-t4", "nvidia-a100", "nvidia-h100"):
        assert load_target(name).usd_per_hour > 0


def test_host_is_detected():
    spec = load_target("host")
    assert spec.cores >= 1 and spec.clock_ghz > 0
    from mcc.hwmodels.host import _cpuinfo, ops_per_cycle

    flags = set(_cpuinfo().get("flags", "").split())
    per_cycle = ops_per_cycle(flags)["fp32"]
    assert spec.peak_gops["fp32"] == pytest.approx(spec.cores * spec.clock_ghz * per_cycle, rel=1e-3)
    assert str(spec.tvm().kind) == "llvm" and int(spec.tvm().attrs["num-cores"]) == spec.cores


def test_half_precision_peaks_follow_the_cpu_flags():
    from mcc.hwmodels.host import ops_per_cycle

    assert ops_per_cycle({"avx512f"}) == {"fp32": 64.0, "fp16": 64.0, "int8": 128.0}
    assert ops_per_cycle({"avx512f", "avx512_fp16", "avx512_vnni"}) == {"fp32": 64.0, "fp16": 128.0, "int8": 256.0}
    assert ops_per_cycle({"avx2", "fma"})["fp16"] == 32.0


def _mutate(path: str, value=..., delete=False) -> dict:
    data = copy.deepcopy(host_data())
    *tables, key = path.split(".")
    section = data
    for table in tables:
        section = section[table]
    if delete:
        del section[key]
    else:
        section[key] = value
    return data


@pytest.mark.parametrize("path, value, delete, fragment", [
    ("memory.dram_bandwidth_gb_s", None, True, "missing field 'memory.dram_bandwidth_gb_s'"),
    ("memory.dram_bandwidth_gb_s", "fast", False, "field 'memory.dram_bandwidth_gb_s' must be a number"),
    ("memory.bandwith_gb_s", 3.0, False, "unknown field 'memory.bandwith_gb_s'"),
    ("compute.peak_gops", {"fp32": 1.0, "fp64": 2.0}, False, "unknown precision"),
    ("efficiency.conv", 1.5, False, "must be in (0, 1]"),
    ("device_class", "toaster", False, "device_class"),
    ("sources", {}, False, "has no source"),
    ("support.precisions", ["fp32", "int4"], False, "unknown precision 'int4'"),
    ("power", None, True, "missing table [power]"),
    ("compute.cores", True, False, "must be a integer"),
    ("compute.cores", 0, False, "must be positive"),
    ("compute.peak_gops", {"fp32": float("nan")}, False, "finite, positive"),
    ("memory.dram_bandwidth_gb_s", float("inf"), False, "finite"),
    ("memory.dram_bandwidth_gb_s", 0.0, False, "must be positive"),
    ("power.idle_w", 1000.0, False, "larger than"),
    ("sources", {"memroy.dram_mb": "typo"}, False, "names no field"),
    ("description", "  ", False, "must not be empty"),
])
def test_schema_errors_name_the_field(path, value, delete, fragment):
    with pytest.raises(TargetSchemaError) as info:
        validate_target_data(_mutate(path, value, delete))
    assert fragment in str(info.value)


def test_user_target_file(tmp_path, run_mcc):
    board = tmp_path / "board.toml"
    data = host_data()
    text = (TARGETS_DIR / "host.toml").read_text().replace('name = "host"', 'name = "my-board"')
    text = text.replace("detect_host = true", "detect_host = false")
    board.write_text(text)
    spec = load_target(str(board))
    assert spec.name == "my-board" and spec.cores == data["compute"]["cores"]
    broken = tmp_path / "broken.toml"
    broken.write_text(text.replace("dram_bandwidth_gb_s = 20.0", 'dram_bandwidth_gb_s = "20"'))
    with pytest.raises(UsageError, match="broken.toml': field 'memory.dram_bandwidth_gb_s' must be a number"):
        load_target(str(broken))
    result = run_mcc("targets", "show", broken)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("name = [")
    with pytest.raises(UsageError, match="invalid TOML"):
        load_target(str(bad_toml))


def test_cli_lists_and_shows_targets(run_mcc):
    listing = run_mcc("targets")
    assert listing.returncode == 0
    for name in REQUIRED_TARGETS:
        assert name in listing.stdout
    shown = run_mcc("targets", "show", "raspberry-pi-4")
    assert shown.returncode == 0 and "dram_bandwidth_gb_s" in shown.stdout and "sources:" in shown.stdout
    data = json.loads(run_mcc("targets", "show", "nvidia-t4", "--json").stdout)
    assert data["device_class"] == "gpu" and data["sources"]
    unknown = run_mcc("targets", "show", "toaster")
    assert unknown.returncode == 2 and "unknown target 'toaster'" in unknown.stderr


@pytest.mark.parametrize("flags, features, computed_as", [
    ("avx512f avx512_vnni", "", {"fp16": "fp32"}),  # Zen 4/5, Ice Lake: float16 converted, computed in float32
    ("avx512f avx512_fp16", "", {}),  # Sapphire Rapids on
    ("", "fp asimd fphp asimdhp", {}),  # Armv8.2 cores (Cortex-A76: Raspberry Pi 5)
    ("", "fp asimd", {"fp16": "fp32"}),  # Cortex-A72 (Raspberry Pi 4)
])
def test_host_without_half_arithmetic_computes_fp16_as_fp32(monkeypatch, flags, features, computed_as):
    from mcc.hwmodels import host

    monkeypatch.setattr(host, "_cpuinfo", lambda: {"flags": flags, "Features": features, "cpu MHz": "3000.0",
                                                   "model name": "a test CPU"})
    assert host.detect_host(load_target("host")).computed_as == computed_as


@pytest.mark.parametrize("name", [n for n in list_targets() if load_target(n).backend == "tvm-llvm"])
def test_the_estimate_and_the_backend_agree_on_float16(name):
    """Every LLVM target (the host as detected, the servers and boards as written) says fp16 is
    computed as fp32 exactly where the backend widens float16 models (half.py)."""
    from mcc.backends.tvm import half

    spec = load_target(name)
    assert ("fp16" not in spec.computed_as) == half.has_half_arithmetic(spec.tvm()), spec.computed_as


def test_computed_as_must_name_precisions():
    data = host_data()
    data["support"]["computed_as"] = {"fp16": "fp8"}
    data["sources"]["support.computed_as"] = "test"
    with pytest.raises(TargetSchemaError, match="support.computed_as.fp16"):
        validate_target_data(data)
