"""The target TOML schema: every field, its type and unit (in its name), and its validation.

A target file looks like this (units live in the field names):

    schema_version = 1
    name = "raspberry-pi-4"
    description = "Raspberry Pi 4 Model B (BCM2711, 4x Cortex-A72 @ 1.5 GHz)"
    device_class = "cpu"                    # cpu | gpu | mcu
    backend = "tvm-llvm"                    # the backend that compiles for it

    [tvm]
    target = { tag = "raspberry-pi/4b-aarch64" }     # a TVM 0.27 target dict (or tag)

    [compute]
    cores = 4
    clock_ghz = 1.5
    peak_gops = { fp32 = 48.0, fp16 = 48.0, int8 = 29.0 }   # 1 MAC = 2 ops

    [memory]
    dram_bandwidth_gb_s = 12.8
    dram_mb = 4096
    sram_kib = 0.0              # on-chip RAM that holds activations (MCUs)
    flash_kib = 0.0             # where weights live on MCUs
    cache_kib = 1024.0          # last-level cache

    [power]
    idle_w = 2.7
    active_w = 6.4

    [overhead]
    kernel_us = 5.0             # fixed cost of launching one kernel

    [efficiency]                # fraction of peak reached, per op class
    conv = 0.3  pointwise_conv = 0.35 (optional: 1x1 convs; defaults to conv)  depthwise_conv = 0.1
    matmul = 0.35  elementwise = 0.5  pool = 0.3
    reduction = 0.3  data_movement = 0.5  other = 0.2  bandwidth = 0.6

    [energy]
    pj_per_op = { fp32 = 2.3, fp16 = 0.75, int8 = 0.12 }
    dram_pj_per_byte = 160.0

    [support]
    precisions = ["fp32", "int8"]
    excluded_ops = []           # ops the backend has but this device cannot run

    [price]                     # optional, cloud targets
    usd_per_hour = 0.53

    [sources]                   # a source for every figure: a dotted path or a table name
    "compute.peak_gops" = "derived: 4 cores x 1.5 GHz x 8 FLOP/cycle (2x128-bit NEON FMA)"
    ...

`validate_target_data` checks all of this and reports the first problem as one line naming the
file and the field.
"""

from __future__ import annotations

import math
from typing import Any

SCHEMA_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
DEVICE_CLASSES = ("cpu", "gpu", "mcu")
BACKENDS = ("tvm-llvm", "tvm-cuda", "tvm-c")
OP_CLASSES = ("conv", "pointwise_conv", "depthwise_conv", "matmul", "elementwise", "pool", "reduction",
              "data_movement", "other")
#: op classes a target may leave out, and the class whose efficiency they then take
OPTIONAL_CLASSES = {"pointwise_conv": "conv"}

NUMBER = (int, float)

#: table -> field -> (type, required); a `dict` type means a per-precision table of numbers
FIELDS: dict[str, dict[str, tuple[Any, bool]]] = {
    "": {
        "schema_version": (int, True),
        "name": (str, True),
        "description": (str, True),
        "device_class": (str, True),
        "backend": (str, True),
        "detect_host": (bool, False),
    },
    "tvm": {"target": (dict, True)},
    "compute": {"cores": (int, True), "clock_ghz": (NUMBER, True), "peak_gops": ("per-precision", True)},
    "memory": {
        "dram_bandwidth_gb_s": (NUMBER, True),
        "dram_mb": (NUMBER, True),
        "sram_kib": (NUMBER, False),
        "flash_kib": (NUMBER, False),
        "cache_kib": (NUMBER, False),
    },
    "power": {"idle_w": (NUMBER, True), "active_w": (NUMBER, True)},
    "overhead": {"kernel_us": (NUMBER, True)},
    "efficiency": {**{name: (NUMBER, name not in OPTIONAL_CLASSES) for name in OP_CLASSES},
                   "bandwidth": (NUMBER, True)},
    "energy": {"pj_per_op": ("per-precision", True), "dram_pj_per_byte": (NUMBER, True)},
    "support": {"precisions": (list, True), "excluded_ops": (list, False), "computed_as": (dict, False)},
    "price": {"usd_per_hour": (NUMBER, False)},
}
TABLES_REQUIRED = ("tvm", "compute", "memory", "power", "overhead", "efficiency", "energy", "support")
#: figures that need no source: identifiers and switches rather than measured facts
#: figures that must be strictly positive (a zero peak or bandwidth would make time vanish)
POSITIVE = {"compute.cores", "compute.clock_ghz", "memory.dram_bandwidth_gb_s"}
UNSOURCED = {"schema_version", "name", "description", "device_class", "backend", "detect_host",
             "tvm.target", "support.excluded_ops"}


class TargetSchemaError(ValueError):
    """One line naming the field that is wrong."""


def _type_name(kind) -> str:
    if kind is NUMBER:
        return "number"
    if isinstance(kind, str):
        return "table of numbers per precision (fp32/fp16/int8)"
    return {str: "string", int: "integer", bool: "boolean", list: "list", dict: "table"}[kind]


def _check_value(path: str, value: Any, kind) -> None:
    if kind == "per-precision":
        if not isinstance(value, dict):
            raise TargetSchemaError(f"field '{path}' must be a {_type_name(kind)}")
        for precision, number in value.items():
            if precision not in PRECISIONS:
                raise TargetSchemaError(f"field '{path}.{precision}': unknown precision (use {', '.join(PRECISIONS)})")
            if isinstance(number, bool) or not isinstance(number, NUMBER) or not math.isfinite(number) or number <= 0:
                raise TargetSchemaError(f"field '{path}.{precision}' must be a finite, positive number, got {number!r}")
        if "fp32" not in value:
            raise TargetSchemaError(f"field '{path}' needs at least an fp32 entry")
        return
    if kind is NUMBER:
        if isinstance(value, bool) or not isinstance(value, NUMBER):
            raise TargetSchemaError(f"field '{path}' must be a number, got {type(value).__name__} {value!r}")
        if not math.isfinite(value) or value < 0:
            raise TargetSchemaError(f"field '{path}' must be a finite, non-negative number, got {value!r}")
        if path in POSITIVE and value <= 0:
            raise TargetSchemaError(f"field '{path}' must be positive, got {value!r}")
        return
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise TargetSchemaError(f"field '{path}' must be a {_type_name(kind)}, got {type(value).__name__} {value!r}")
    if kind is int and path in POSITIVE and value <= 0:
        raise TargetSchemaError(f"field '{path}' must be positive, got {value!r}")
    if kind is str and not value.strip():
        raise TargetSchemaError(f"field '{path}' must not be empty")
    if kind is dict and not value:
        raise TargetSchemaError(f"field '{path}' must not be empty")


def _leaf_paths(data: dict) -> list[str]:
    paths = []
    for table, fields in FIELDS.items():
        section = data if table == "" else data.get(table, {})
        for field_name, (kind, _required) in fields.items():
            if field_name in section:
                path = field_name if table == "" else f"{table}.{field_name}"
                if kind == "per-precision":
                    paths.extend(f"{path}.{precision}" for precision in section[field_name])
                else:
                    paths.append(path)
    return paths


def validate_target_data(data: dict) -> None:
    """Raise TargetSchemaError for the first missing, unknown or mistyped field or missing source."""
    known_tables = set(FIELDS) - {""} | {"sources"}
    for key, value in data.items():
        if key in FIELDS[""]:
            continue
        if key not in known_tables:
            raise TargetSchemaError(f"unknown field or table '{key}'")
        if not isinstance(value, dict):
            raise TargetSchemaError(f"'{key}' must be a table")
    for table in TABLES_REQUIRED:
        if table not in data:
            raise TargetSchemaError(f"missing table [{table}]")
    for table, fields in FIELDS.items():
        section = data if table == "" else data.get(table, {})
        for key in section:
            if table != "" and key not in fields:
                raise TargetSchemaError(f"unknown field '{table}.{key}' (known: {', '.join(fields)})")
        for field_name, (kind, required) in fields.items():
            path = field_name if table == "" else f"{table}.{field_name}"
            if field_name not in section:
                if required and (table == "" or table in data):
                    raise TargetSchemaError(f"missing field '{path}'")
                continue
            _check_value(path, section[field_name], kind)
    if data["schema_version"] != SCHEMA_VERSION:
        raise TargetSchemaError(f"schema_version {data['schema_version']} is not supported (expected {SCHEMA_VERSION})")
    if data["device_class"] not in DEVICE_CLASSES:
        raise TargetSchemaError(f"field 'device_class' must be one of {', '.join(DEVICE_CLASSES)}")
    if data["backend"] not in BACKENDS:
        raise TargetSchemaError(f"field 'backend' must be one of {', '.join(BACKENDS)}")
    for precision in data["support"]["precisions"]:
        if precision not in PRECISIONS:
            raise TargetSchemaError(f"field 'support.precisions': unknown precision '{precision}'")
        for table in ("compute.peak_gops", "energy.pj_per_op"):
            section, key = table.split(".")
            if precision not in data[section][key]:
                raise TargetSchemaError(f"field '{table}' has no '{precision}' entry, but support.precisions lists it")
    for name, value in data["efficiency"].items():
        if not 0 < value <= 1:
            raise TargetSchemaError(f"field 'efficiency.{name}' must be in (0, 1], got {value}")
    sources = data.get("sources", {})
    known_paths = {f"{table}.{name}" if table else name for table, fields in FIELDS.items() for name in fields}
    known_paths |= {table for table in FIELDS if table}
    known_paths |= {f"{path}.{precision}" for path in ("compute.peak_gops", "energy.pj_per_op") for precision in PRECISIONS}
    for key, text in sources.items():
        if not isinstance(text, str) or not text.strip():
            raise TargetSchemaError(f"source '{key}' must be a non-empty string")
        if key not in known_paths:
            raise TargetSchemaError(f"source '{key}' names no field (misspelled?)")
    if not data["support"]["precisions"]:
        raise TargetSchemaError("field 'support.precisions' must list at least one precision")
    for precision, actual in data["support"].get("computed_as", {}).items():
        for name in (precision, actual):
            if name not in PRECISIONS:
                raise TargetSchemaError(f"field 'support.computed_as.{precision}': unknown precision {name!r} "
                                        f"(use {', '.join(PRECISIONS)})")
    if not all(isinstance(op, str) for op in data["support"].get("excluded_ops", [])):
        raise TargetSchemaError("field 'support.excluded_ops' must list op names (strings)")
    if data["power"]["idle_w"] > data["power"]["active_w"]:
        raise TargetSchemaError("field 'power.idle_w' is larger than 'power.active_w'")
    for path in _leaf_paths(data):
        if path in UNSOURCED:
            continue
        parts = path.split(".")
        if not any(".".join(parts[:i]) in sources for i in range(1, len(parts) + 1)):
            raise TargetSchemaError(
                f"field '{path}' has no source (add \"{path}\" or a parent such as \"{parts[0]}\" under [sources])"
            )
